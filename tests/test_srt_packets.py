"""
Tests for L{tokengate.srt.packets}: every packet type round-trips, the
handshakes a real ffmpeg 5.1 (libsrt 1.5.1) caller sent decode as
protocol-facts.md describes, sequence and timestamp arithmetic wraps, and
garbage raises only SRTProtocolError.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.srt import packets as P
from tokengate.srt.errors import SRTProtocolError
from tokengate.srt.packets import (
    Ack,
    AckAck,
    DataPacket,
    DropReq,
    Handshake,
    HandshakeExtension,
    HSReq,
    KeepAlive,
    Nak,
    PeerError,
    Shutdown,
    UnknownControl,
    decode_packet,
    encode_packet,
)

# Captured on this Debian 12 machine from
#   ffmpeg -i x.ts -c copy -f mpegts "srt://127.0.0.1:PORT?streamid=App/stream1,token=GOOD"
# against a Python socket: the induction, then the conclusion (the listener
# had answered the induction with cookie 0x12345678).
FFMPEG_INDUCTION = bytes.fromhex(
    "80000000000000000000015200000000"
    "000000040000000215d1ec14000005dc0000200000000001398a0617000000000100007f"
    "000000000000000000000000"
)
FFMPEG_CONCLUSION = bytes.fromhex(
    "80000000000000000000032e00000000"
    "000000050000000515d1ec14000005dc00002000ffffffff398a061712345678"
    "0100007f000000000000000000000000"
    "0001000300010501000000bf00780000"
    "000500062f707041657274732c316d61656b6f744f473d6e0000444f"
)
SID_WORDS = bytes.fromhex("2f707041 65727473 2c316d61 656b6f74 4f473d6e 0000444f".replace(" ", ""))


class RealHandshakeTests(SynchronousTestCase):
    def test_induction(self):
        hs = decode_packet(FFMPEG_INDUCTION)
        self.assertIsInstance(hs, Handshake)
        self.assertEqual(len(FFMPEG_INDUCTION), 64)
        self.assertEqual(
            (hs.version, hs.enc_flags, hs.ext_flags, hs.mss, hs.ffs, hs.reqtype, hs.cookie, hs.dst),
            (4, 0, P.UDT_DGRAM, 1500, 8192, P.URQ_INDUCTION, 0, 0),
        )
        self.assertEqual(hs.isn, 0x15D1EC14)
        self.assertEqual(hs.socket_id, 0x398A0617)
        self.assertEqual(hs.peer_ip[:4], b"\x01\x00\x00\x7f")
        self.assertEqual(P.decode_peer_ip(hs.peer_ip), "127.0.0.1")
        self.assertEqual(hs.extensions, ())
        self.assertEqual(hs.encode(), FFMPEG_INDUCTION)

    def test_conclusion(self):
        hs = decode_packet(FFMPEG_CONCLUSION)
        self.assertEqual(len(FFMPEG_CONCLUSION), 108)
        self.assertEqual(
            (hs.version, hs.ext_flags, hs.reqtype, hs.cookie, hs.dst),
            (5, P.HS_EXT_HSREQ | P.HS_EXT_CONFIG, P.URQ_CONCLUSION, 0x12345678, 0),
        )
        self.assertEqual([e.cmd for e in hs.extensions], [P.EXT_HSREQ, P.EXT_SID])
        hsreq = HSReq.decode(hs.extension(P.EXT_HSREQ).data)
        self.assertEqual(hsreq, HSReq(0x010501, 0xBF, 120, 0))
        sid = hs.extension(P.EXT_SID).data
        self.assertEqual(sid, SID_WORDS)
        self.assertEqual(P.decode_stream_id(sid), "App/stream1,token=GOOD")
        self.assertEqual(hs.timestamp, 0x32E)
        self.assertEqual(hs.encode(), FFMPEG_CONCLUSION)


class StreamIdTests(SynchronousTestCase):
    def test_wordReversal(self):
        self.assertEqual(P.decode_stream_id(SID_WORDS), "App/stream1,token=GOOD")
        self.assertEqual(P.encode_stream_id("App/stream1,token=GOOD"), SID_WORDS)

    def test_padding(self):
        for n in range(0, 9):
            s = "abcdefgh"[:n]
            enc = P.encode_stream_id(s)
            self.assertEqual(len(enc) % 4, 0)
            self.assertEqual(P.decode_stream_id(enc), s)

    def test_utf8(self):
        self.assertEqual(P.decode_stream_id(P.encode_stream_id("Äpp/ström")), "Äpp/ström")

    def test_limits(self):
        P.encode_stream_id("x" * 512)
        self.assertRaises(SRTProtocolError, P.encode_stream_id, "x" * 513)
        self.assertRaises(SRTProtocolError, P.decode_stream_id, b"x" * 516)
        self.assertRaises(SRTProtocolError, P.decode_stream_id, b"abc")
        self.assertRaises(SRTProtocolError, P.decode_stream_id, b"\xff\xfe\xfd\xfc")
        self.assertRaises(SRTProtocolError, P.encode_stream_id, b"bytes")

    @given(st.text(max_size=128))
    def test_roundTrip(self, s):
        s = s.rstrip("\0")
        if len(s.encode("utf-8", "surrogatepass")) > 512:
            return
        try:
            enc = P.encode_stream_id(s)
        except SRTProtocolError:
            return  # lone surrogates
        self.assertEqual(P.decode_stream_id(enc), s)


class PeerIPTests(SynchronousTestCase):
    def test_v4(self):
        self.assertEqual(P.encode_peer_ip("127.0.0.1"), b"\x01\x00\x00\x7f" + bytes(12))
        self.assertEqual(P.encode_peer_ip("10.1.2.3")[:4], bytes([3, 2, 1, 10]))
        self.assertEqual(P.decode_peer_ip(P.encode_peer_ip("192.168.7.9")), "192.168.7.9")

    def test_v6(self):
        for a in ("::1", "2001:db8::7", "fe80::1:2:3:4"):
            self.assertEqual(P.decode_peer_ip(P.encode_peer_ip(a)), a)

    def test_bad(self):
        self.assertRaises(SRTProtocolError, P.encode_peer_ip, "localhost")
        self.assertRaises(SRTProtocolError, P.decode_peer_ip, b"short")


class SequenceTests(SynchronousTestCase):
    def test_add(self):
        self.assertEqual(P.seq_add(5, 3), 8)
        self.assertEqual(P.seq_add(0x7FFFFFFF, 1), 0)
        self.assertEqual(P.seq_add(0x7FFFFFFE, 5), 3)
        self.assertEqual(P.seq_add(2, -5), 0x7FFFFFFD)

    def test_diffAndCmp(self):
        self.assertEqual(P.seq_diff(0, 0x7FFFFFFF), 1)
        self.assertEqual(P.seq_diff(0x7FFFFFFF, 0), -1)
        self.assertEqual(P.seq_diff(10, 3), 7)
        self.assertEqual(P.seq_cmp(0, 0x7FFFFFF0), 1)
        self.assertEqual(P.seq_cmp(0x7FFFFFF0, 0), -1)
        self.assertEqual(P.seq_cmp(9, 9), 0)

    def test_unwrap(self):
        self.assertEqual(P.seq_unwrap(2, 0x7FFFFFFE), 0x80000002)
        self.assertEqual(P.seq_unwrap(0x7FFFFFFE, 0x80000002), 0x7FFFFFFE)
        self.assertEqual(P.seq_unwrap(5, 3), 5)

    @given(st.integers(0, P.SEQ_MASK), st.integers(-(2**30) + 1, 2**30 - 1))
    def test_properties(self, a, n):
        b = P.seq_add(a, n)
        self.assertEqual(P.seq_diff(b, a), n)
        self.assertEqual(P.seq_cmp(b, a), (n > 0) - (n < 0))
        self.assertEqual(P.seq_unwrap(b, a), a + n)

    @given(st.integers(0, 2**40), st.integers(-(2**31) + 1, 2**31 - 1))
    def test_timestamps(self, ref, delta):
        t = ref + delta
        if t < 0:
            return
        self.assertEqual(P.ts_unwrap(t & P.TS_MASK, ref), t)

    def test_timestampWrap(self):
        self.assertEqual(P.ts_unwrap(10, 0xFFFFFFF0), 0x10000000A)
        self.assertEqual(P.ts_unwrap(0xFFFFFFF0, 0x10000000A), 0xFFFFFFF0)


ALL = [
    DataPacket(5, 1, b"payload", 1000, 77),
    DataPacket(P.SEQ_MASK, (1 << 26) - 1, b"", P.TS_MASK, 0xFFFFFFFF, P.PB_FIRST, True, 2, True),
    Handshake(4, 0, 2, 1, 1500, 8192, 1, 9, 0, bytes(16)),
    Handshake(
        5, 2, 5, 1, 1500, 8192, -1, 9, 0xDEADBEEF, P.encode_peer_ip("::1"),
        [HandshakeExtension(1, HSReq(0x010501, 0xBF, 120, 0).encode()),
         HandshakeExtension(5, P.encode_stream_id("a/b"))], 33, 44,
    ),  # fmt: skip
    Handshake(5, 0, 1, 1, 1500, 8192, 2401, 9, 1, bytes(16)),
    KeepAlive(1, 2),
    Ack(7, 100),
    Ack(7, 100, 1000, 500, 8192),
    Ack(7, 100, 1000, 500, 8192, 190, 5000),
    Ack(7, 100, 1000, 500, 8192, 190, 5000, 250000, 99, 98),
    Nak([(1, 1), (5, 9), (P.SEQ_MASK, P.SEQ_MASK)], 3, 4),
    Nak([(P.SEQ_MASK - 1, 3)]),
    Shutdown(5, 6),
    AckAck(12, 3, 4),
    DropReq(9, 100, 120, 1, 2),
    PeerError(4000, 1, 2),
    UnknownControl(0x7FFF, 3, 4, b"abcd", 5, 6),
    UnknownControl(4, 0, 0, b"", 5, 6),
]


class RoundTripTests(SynchronousTestCase):
    def test_all(self):
        for packet in ALL:
            data = encode_packet(packet)
            self.assertEqual(decode_packet(data), packet, packet)
            self.assertEqual(packet.encode(), data)

    def test_ackKinds(self):
        self.assertEqual(Ack(1, 2).kind, "light")
        self.assertEqual(Ack(1, 2, 3, 4, 5).kind, "small")
        self.assertEqual(Ack(1, 2, 3, 4, 5, 6, 7, 8).kind, "full")
        self.assertEqual(len(Ack(1, 2).encode()), 20)
        self.assertEqual(len(Ack(1, 2, 3, 4, 5).encode()), 32)
        self.assertEqual(len(Ack(1, 2, 3, 4, 5, 6, 7, 8).encode()), 44)

    def test_padded(self):
        for packet in (KeepAlive(), Shutdown(), AckAck(1), PeerError(1)):
            self.assertEqual(len(packet.encode()), 20)

    def test_headerBits(self):
        data = DataPacket(0x12345, 77, b"x", 0xAABBCCDD, 0x11223344, P.PB_SOLO, False, 0, True).encode()
        w0, w1, ts, dst = struct.unpack(">IIII", data[:16])
        self.assertEqual(w0, 0x12345)
        self.assertEqual(w1, 0xC0000000 | 1 << 26 | 77)
        self.assertEqual((ts, dst), (0xAABBCCDD, 0x11223344))
        self.assertEqual(P.peek_dst(data), 0x11223344)
        self.assertFalse(P.is_control(data))
        ctrl = AckAck(5).encode()
        self.assertEqual(struct.unpack(">I", ctrl[:4])[0], 0x80060000)
        self.assertTrue(P.is_control(ctrl))

    def test_nakWire(self):
        data = Nak([(5, 5), (10, 12)]).encode()[16:]
        self.assertEqual(struct.unpack(">3I", data), (5, 0x8000000A, 12))
        self.assertEqual(P.decode_loss_list(data), ((5, 5), (10, 12)))

    def test_dropreqWire(self):
        data = DropReq(3, 10, 12).encode()
        self.assertEqual(struct.unpack(">IIIIII", data), (0x80070000, 3, 0, 0, 10, 12))

    def test_rejectReqtype(self):
        # libsrt handshake.h: URQFailure(reason) = URQ_FAILURE_TYPES (1000) + reason
        self.assertEqual(P.reject_reqtype(1401), 2401)
        self.assertEqual(P.reject_reqtype(11), 1011)
        self.assertEqual(P.reject_code(2401), 1401)
        self.assertEqual(P.reject_code(P.URQ_CONCLUSION), None)
        self.assertRaises(SRTProtocolError, P.reject_reqtype, -1)


class MalformedTests(SynchronousTestCase):
    def test_short(self):
        for n in range(16):
            self.assertRaises(SRTProtocolError, decode_packet, bytes(n))
        self.assertRaises(SRTProtocolError, P.peek_dst, b"abc")

    def test_truncatedHandshake(self):
        self.assertRaises(SRTProtocolError, decode_packet, FFMPEG_INDUCTION[:63])

    def test_badExtension(self):
        # HSREQ announcing 4 words but carrying 3
        bad = FFMPEG_CONCLUSION[:64] + b"\x00\x01\x00\x04" + bytes(12)
        self.assertRaises(SRTProtocolError, decode_packet, bad)
        self.assertRaises(SRTProtocolError, decode_packet, FFMPEG_CONCLUSION[:64] + b"\x00\x01")

    def test_hsv4IgnoresTrailer(self):
        hs = decode_packet(FFMPEG_INDUCTION + b"junk!")
        self.assertEqual(hs.extensions, ())

    def test_badAck(self):
        for n in (0, 8, 12, 20):
            data = P.HEADER.pack(0x80020000, 1, 0, 0) + bytes(n)
            self.assertRaises(SRTProtocolError, decode_packet, data)

    def test_badNak(self):
        head = P.HEADER.pack(0x80030000, 0, 0, 0)
        self.assertRaises(SRTProtocolError, decode_packet, head + struct.pack(">I", 0x80000005))
        self.assertRaises(SRTProtocolError, decode_packet, head + b"\x00\x00\x01")
        self.assertRaises(
            SRTProtocolError, decode_packet, head + struct.pack(">II", 0x80000005, 0x80000007)
        )
        self.assertRaises(SRTProtocolError, decode_packet, head + struct.pack(">II", 0x80000009, 3))

    def test_badDropReq(self):
        self.assertRaises(SRTProtocolError, decode_packet, P.HEADER.pack(0x80070000, 0, 0, 0) + bytes(4))

    def test_badEncode(self):
        bad = [
            DataPacket(-1, 0, b""),
            DataPacket(0, 1 << 26, b""),
            DataPacket(0, 0, "text"),
            DataPacket(0, 0, b"", 1 << 32),
            Handshake(5, 1 << 16, 0, 0, 0, 0, 0, 0, 0),
            Handshake(5, 0, 0, 0, 0, 0, 1 << 31, 0, 0),
            Handshake(5, 0, 0, 0, 0, 0, 0, 0, 0, bytes(16), [HandshakeExtension(1, b"abc")]),
            Ack(1, 1 << 31),
            Ack(1, 2, 3),
            Ack(1, 2, 3, 4, 5, 6),
            Nak([(1 << 31, 1)]),
            HSReq(1, 2, 1 << 16, 0),
            UnknownControl(1 << 15, 0, 0, b""),
            KeepAlive("now"),
        ]
        for packet in bad:
            self.assertRaises(SRTProtocolError, encode_packet, packet)
        self.assertRaises(SRTProtocolError, encode_packet, object())
        self.assertRaises(SRTProtocolError, Handshake, 5, 0, 0, 0, 0, 0, 0, 0, 0, b"short")

    @given(st.binary(max_size=200))
    def test_garbage(self, data):
        try:
            packet = decode_packet(data)
        except SRTProtocolError:
            return
        # whatever decodes re-encodes without raising anything else
        try:
            encode_packet(packet)
        except SRTProtocolError:
            pass

    @given(st.binary(min_size=16, max_size=120), st.integers(0, 0x7FFF))
    def test_garbageControl(self, data, ctype):
        data = struct.pack(">I", 0x80000000 | ctype << 16) + data[4:]
        try:
            decode_packet(data)
        except SRTProtocolError:
            pass

    @given(st.binary(max_size=120))
    def test_garbageHandshake(self, tail):
        data = FFMPEG_CONCLUSION[:64] + tail
        try:
            hs = decode_packet(data)
        except SRTProtocolError:
            return
        self.assertEqual(decode_packet(hs.encode()), hs)


@st.composite
def packets(draw):
    u32 = st.integers(0, 0xFFFFFFFF)
    seq = st.integers(0, P.SEQ_MASK)
    ts, dst = draw(u32), draw(u32)
    kind = draw(st.integers(0, 8))
    if kind == 0:
        return DataPacket(
            draw(seq), draw(st.integers(0, (1 << 26) - 1)), draw(st.binary(max_size=64)), ts, dst,
            draw(st.integers(0, 3)), draw(st.booleans()), draw(st.integers(0, 3)), draw(st.booleans()),
        )  # fmt: skip
    if kind == 1:
        exts = draw(
            st.lists(
                st.builds(
                    HandshakeExtension,
                    st.integers(0, 0xFFFF),
                    st.binary(max_size=32).map(lambda b: b + bytes(-len(b) % 4)),
                ),
                max_size=4,
            )
        )
        return Handshake(
            5, draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)), draw(u32), draw(u32),
            draw(u32), draw(st.integers(-(2**31), 2**31 - 1)), draw(u32), draw(u32),
            draw(st.binary(min_size=16, max_size=16)), exts, ts, dst,
        )  # fmt: skip
    if kind == 2:
        words = draw(st.lists(u32, min_size=7, max_size=7))
        n = draw(st.sampled_from([1, 4, 6, 7]))
        fields = words[1:n] + [None] * (7 - n)
        return Ack(draw(u32), draw(seq), *fields, ts, dst)
    if kind == 3:
        ranges = draw(
            st.lists(st.tuples(seq, st.integers(0, 1000)), max_size=20).map(
                lambda rs: [(a, P.seq_add(a, n)) for a, n in rs]
            )
        )
        return Nak(ranges, ts, dst)
    if kind == 4:
        return DropReq(draw(u32), draw(seq), draw(seq), ts, dst)
    if kind == 5:
        return AckAck(draw(u32), ts, dst)
    if kind == 6:
        return PeerError(draw(u32), ts, dst)
    if kind == 7:
        return draw(st.sampled_from([KeepAlive(ts, dst), Shutdown(ts, dst)]))
    return UnknownControl(
        draw(st.sampled_from([4, 9, 100, 0x7FFF])), draw(st.integers(0, 0xFFFF)), draw(u32),
        draw(st.binary(max_size=40)), ts, dst,
    )  # fmt: skip


class PropertyTests(SynchronousTestCase):
    @given(packets())
    def test_roundTrip(self, packet):
        self.assertEqual(decode_packet(encode_packet(packet)), packet)
