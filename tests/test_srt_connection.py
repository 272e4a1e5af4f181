"""
Tests for L{tokengate.srt.streamid}, L{tokengate.srt.handshake},
L{tokengate.srt.connection} and L{tokengate.srt.receiver}: stream id forms, the listener's
handshake (cookies, idempotent replies, rejections), the receiver
connection (loss, reordering, duplicates, NAK, DROPREQ, too-late drop,
wrap-around, ACK cadence, keepalive, idle timeout, bounded buffers). Real
callers (ffmpeg and srt-live-transmit) against the sans-IO listener on a
plain UDP socket are in L{tests.interop.test_srt_connection}.
"""

from __future__ import annotations

import itertools
import zlib
from typing import Optional

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.srt import packets as P
from tokengate.srt.connection import Listener
from tokengate.srt.errors import (
    REJ_CONGESTION,
    REJ_FILTER,
    REJ_MESSAGEAPI,
    REJ_RESOURCE,
    REJ_ROGUE,
    REJ_UNSECURE,
    REJ_VERSION,
    REJX_BAD_REQUEST,
    REJX_UNAUTHORIZED,
    SRTProtocolError,
)
from tokengate.srt.handshake import Drop, NeedsAuthorization, Pending, Rejected, Reply
from tokengate.srt.receiver import Closed, Connection, Payload
from tokengate.srt.streamid import BadStreamId, StreamRequest, parse_stream_id
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
    Shutdown,
    decode_packet,
)

from .test_srt_packets import FFMPEG_CONCLUSION, FFMPEG_INDUCTION

# ---------------------------------------------------------------------------
# Stream ids
# ---------------------------------------------------------------------------


class StreamIdTests(SynchronousTestCase):
    def test_reference(self):
        self.assertEqual(
            parse_stream_id("App/stream1,token=GOOD"),
            StreamRequest("App", "stream1", "GOOD", "publish", {}),
        )

    def test_referenceExtras(self):
        r = parse_stream_id("LiveApp/s1,token=T,subscriberId=sub,subscriberCode=123456")
        self.assertEqual((r.app, r.stream_id, r.token, r.mode), ("LiveApp", "s1", "T", "publish"))
        self.assertEqual((r.subscriberId, r.subscriberCode, r.extra), ("sub", "123456", {}))
        r = parse_stream_id("LiveApp/s1,subscriberCode=123456,x=1,subscriberId=sub,y=2")
        self.assertEqual((r.token, r.subscriberId, r.subscriberCode, list(r.extra.items())),
                         (None, "sub", "123456", [("x", "1"), ("y", "2")]))
        r = parse_stream_id("#!::r=LiveApp/s1,m=publish,subscriberId=sub,subscriberCode=654321")
        self.assertEqual((r.subscriberId, r.subscriberCode), ("sub", "654321"))
        r = parse_stream_id("LiveApp/s1,subscriberId=,subscriberCode=")
        self.assertEqual((r.subscriberId, r.subscriberCode), (None, None))

    def test_tokenAndCodeNotInRepr(self):
        r = parse_stream_id("LiveApp/s1,token=SECRETTOKEN,subscriberId=sub,subscriberCode=123456")
        self.assertNotIn("SECRETTOKEN", repr(r))
        self.assertNotIn("123456", repr(r))

    def test_noToken(self):
        self.assertEqual(parse_stream_id("App/s1").token, None)
        self.assertEqual(parse_stream_id("App/s1,token=").token, None)

    def test_tAlias(self):
        self.assertEqual(parse_stream_id("App/s1,t=X").token, "X")
        r = parse_stream_id("App/s1,token=A,t=B")
        self.assertEqual((r.token, r.extra), ("A", {"t": "B"}))

    def test_percentDecoding(self):
        # ffmpeg passes streamid through undecoded (protocol-facts 2)
        r = parse_stream_id("App/s%2D1,token=a%2Fb%2C%3Dc,subscriberId=x%40y")
        self.assertEqual((r.stream_id, r.token, r.subscriberId), ("s-1", "a/b,=c", "x@y"))

    def test_accessControl(self):
        self.assertEqual(
            parse_stream_id("#!::r=App/s1,m=publish,token=T"),
            StreamRequest("App", "s1", "T", "publish", {}),
        )
        self.assertEqual(parse_stream_id("#!::u=bob,r=App/s1,m=request,t=T").mode, "request")
        r = parse_stream_id("#!::u=bob,r=App/s1,t=T,s=sess")
        self.assertEqual((r.mode, r.token, r.extra), ("request", "T", {"s": "sess"}))

    def test_bad(self):
        bad = [
            "",
            "App",
            "App/",
            "/s1",
            "App/s1/x",
            "App/s1,token",
            "App/s1,=x",
            "App/s1,token=a,token=b",
            "#!::m=publish,token=T",
            "#!::r=App/s1,m=bidirectional",
            "#!::r=App",
            "#!::r=App/s1,,",
            "App/s1,token=%ff%fe",
            "App/s1\n,token=T",
            "App/" + "x" * 510,
            "App/" + "x" * 129,
            "App/s%201",
            "App/..",
            b"App/s1",
        ]
        for raw in bad:
            e = self.assertRaises(BadStreamId, parse_stream_id, raw)
            self.assertIsInstance(e, SRTProtocolError)
            self.assertEqual(e.code, 1400)
        parse_stream_id("App/" + "x" * 128)

    @given(st.text(max_size=100))
    def test_garbage(self, raw):
        try:
            r = parse_stream_id(raw)
        except BadStreamId:
            return
        self.assertIn(r.mode, ("publish", "request"))
        self.assertTrue(r.app and r.stream_id)

    @given(st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,19}", fullmatch=True),
           st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40))
    def test_percentRoundTrip(self, stream, token):
        """
        Any valid stream id and any token survive percent-encoding.
        """
        from urllib.parse import quote

        r = parse_stream_id(f"App/{quote(stream, safe='')},token={quote(token, safe='')}")
        self.assertEqual((r.stream_id, r.token), (stream, token))

    def test_percentEncodedSlash(self):
        """
        A "/" in a stream id is refused, percent-encoded or not.
        """
        for raw in ("App/a%2Fb,token=1", "App/a/b,token=1", "App%2Fx/b,token=1"):
            self.assertRaises(BadStreamId, parse_stream_id, raw)


# ---------------------------------------------------------------------------
# Listener
# ---------------------------------------------------------------------------

PEER = ("127.0.0.1", 40000)
NOW = 1_800_000_030.0  # 30 s into a minute
CALLER = 0x398A0617
ISN = 0x15D1EC14


def conclusion(cookie: int, *, sid: Optional[str] = "App/s1,token=GOOD", socket_id=CALLER,
               version=5, hsreq=HSReq(0x010501, 0xBF, 120, 0), extra=(), ext_flags=None,
               timestamp=0x32E) -> Handshake:  # fmt: skip
    exts = []
    if hsreq is not None:
        exts.append(HandshakeExtension(P.EXT_HSREQ, hsreq.encode()))
    if sid is not None:
        exts.append(HandshakeExtension(P.EXT_SID, P.encode_stream_id(sid)))
    exts.extend(extra)
    if ext_flags is None:
        ext_flags = P.HS_EXT_HSREQ | (P.HS_EXT_CONFIG if sid is not None else 0)
    return Handshake(
        version, 0, ext_flags, ISN, 1500, 8192, P.URQ_CONCLUSION, socket_id, cookie,
        P.encode_peer_ip("127.0.0.1"), exts, timestamp, 0,
    )  # fmt: skip


def with_cookie(data: bytes, cookie: int) -> bytes:
    return data[:44] + cookie.to_bytes(4, "big") + data[48:]


class ListenerTests(SynchronousTestCase):
    def setUp(self):
        self.ids = itertools.count(1001)
        self.factoryCalls = 0

        def factory():
            self.factoryCalls += 1
            return next(self.ids)

        self.listener = Listener(b"secret", factory)

    def cookie(self, now=NOW, offset=0):
        return self.listener.cookie(PEER, now, offset)

    def decide(self, hs, now=NOW, peer=PEER):
        return self.listener.handle_handshake(hs.encode() if isinstance(hs, Handshake) else hs, peer, now)

    def assertNoState(self):
        self.assertEqual(self.listener.pending_count, 0)
        self.assertEqual(self.listener.connections, {})
        self.assertEqual(self.listener._accepted, {})
        self.assertEqual(self.listener._rejected, {})

    def test_induction(self):
        decision = self.decide(FFMPEG_INDUCTION)
        self.assertIsInstance(decision, Reply)
        reply = decode_packet(decision.data)
        self.assertEqual(
            (reply.version, reply.enc_flags, reply.ext_flags, reply.reqtype),
            (5, 0, P.SRT_MAGIC_CODE, P.URQ_INDUCTION),
        )
        self.assertEqual((reply.isn, reply.mss, reply.ffs), (ISN, 1500, 8192))
        self.assertEqual((reply.dst, reply.socket_id), (CALLER, CALLER))
        self.assertEqual(reply.cookie, self.cookie())
        self.assertEqual(reply.peer_ip, decode_packet(FFMPEG_INDUCTION).peer_ip)
        self.assertEqual(len(decision.data), 64)
        self.assertNoState()

    def test_inductionFlood(self):
        for port in range(1000):
            self.assertIsInstance(self.listener.handle_handshake(FFMPEG_INDUCTION, ("10.0.0.1", port), NOW), Reply)
        self.assertNoState()
        self.assertEqual(self.factoryCalls, 0)

    def test_cookies(self):
        c = {self.listener.cookie(("127.0.0.1", port), NOW) for port in range(100)}
        self.assertEqual(len(c), 100)
        self.assertNotEqual(self.cookie(), self.cookie(offset=-1))
        self.assertEqual(self.cookie(NOW), self.cookie(NOW + 29))
        other = Listener(b"other", lambda: 1)
        self.assertNotEqual(other.cookie(PEER, NOW), self.cookie())

    def test_badCookie(self):
        for cookie in (0, self.cookie() ^ 1, self.cookie(offset=-2), self.cookie(offset=1)):
            decision = self.decide(conclusion(cookie))
            self.assertIsInstance(decision, Drop)
            self.assertIsNone(decision.data)
        # the right cookie from another address is wrong too
        self.assertIsInstance(self.decide(conclusion(self.cookie()), peer=("127.0.0.1", 40001)), Drop)
        self.assertNoState()

    def test_previousMinuteCookie(self):
        old = self.cookie()
        decision = self.decide(conclusion(old), now=NOW + 60)
        self.assertIsInstance(decision, NeedsAuthorization)
        self.assertIsInstance(self.decide(conclusion(old, socket_id=5), now=NOW + 120), Drop)

    def test_realConclusion(self):
        data = with_cookie(FFMPEG_CONCLUSION, self.cookie())
        decision = self.decide(data)
        self.assertIsInstance(decision, NeedsAuthorization)
        self.assertEqual(decision.request, StreamRequest("App", "stream1", "GOOD", "publish", {}))
        self.assertEqual(decision.stream_id, "App/stream1,token=GOOD")
        self.assertEqual((decision.peer, decision.caller_socket_id), (PEER, CALLER))
        self.assertEqual((decision.srt_version, decision.srt_flags, decision.latency_ms), (0x010501, 0xBF, 120))
        self.assertIsNone(decision.error)
        self.assertIsNone(decision.data)
        # repeats while it is being authorized: Pending, no second decision
        for _ in range(5):
            self.assertEqual(self.decide(data), Pending(PEER, CALLER))
        self.assertEqual(self.listener.pending_count, 1)
        self.assertEqual(self.factoryCalls, 0)

    def test_answerBy(self):
        """
        The answer is due by the caller's connect timeout (3 s) counted from
        the start of its connect, which the conclusion's timestamp tells
        (microseconds since then), less the 0.5 s margin; never before the
        conclusion arrived.
        """
        cases = [(814, 2.5 - 0.000814), (1_000_000, 1.5), (2_600_000, 0.0),
                 (0xFFFFFFFF, 0.0)]
        for i, (timestamp, left) in enumerate(cases):
            hs = conclusion(self.cookie(), socket_id=CALLER + i, timestamp=timestamp)
            decision = self.decide(hs)
            self.assertAlmostEqual(decision.answer_by, NOW + left, places=6)
        listener = Listener(b"secret", lambda: 5, connect_timeout=10.0, answer_margin=1.0)
        hs = conclusion(listener.cookie(PEER, NOW), timestamp=2_000_000)
        self.assertAlmostEqual(listener.handle_handshake(hs.encode(), PEER, NOW).answer_by,
                               NOW + 7.0)

    def test_accept(self):
        data = with_cookie(FFMPEG_CONCLUSION, self.cookie())
        decision = self.decide(data)
        reply, conn = self.listener.accept(decision, NOW + 0.05)
        hs = decode_packet(reply)
        self.assertEqual(
            (hs.version, hs.enc_flags, hs.ext_flags, hs.reqtype),
            (5, 0, P.HS_EXT_HSREQ, P.URQ_CONCLUSION),
        )
        self.assertEqual((hs.dst, hs.socket_id, hs.isn, hs.mss), (CALLER, 1001, ISN, 1500))
        self.assertEqual(hs.cookie, self.cookie())
        self.assertEqual(P.decode_peer_ip(hs.peer_ip), "127.0.0.1")
        self.assertEqual([e.cmd for e in hs.extensions], [P.EXT_HSRSP])
        hsrsp = HSReq.decode(hs.extension(P.EXT_HSRSP).data)
        self.assertEqual(hsrsp.srt_version, 0x010501)
        self.assertEqual(
            hsrsp.flags,
            P.OPT_TSBPDSND | P.OPT_TSBPDRCV | P.OPT_TLPKTDROP | P.OPT_NAKREPORT | P.OPT_REXMITFLG,
        )
        self.assertEqual((hsrsp.recv_latency, hsrsp.send_latency), (120, 120))
        self.assertEqual((conn.socket_id, conn.peer_socket_id, conn.peer, conn.next_seq), (1001, CALLER, PEER, ISN))
        self.assertEqual(conn.request.token, "GOOD")
        self.assertIs(self.listener.connections[1001], conn)
        self.assertIs(self.listener.lookup(1001, PEER), conn)
        self.assertIsNone(self.listener.lookup(1001, ("127.0.0.1", 1)))
        self.assertIsNone(self.listener.lookup(1002))
        # repeats: the same agreement, byte for byte, no new socket id
        for _ in range(3):
            self.assertEqual(self.decide(data, now=NOW + 0.3), Reply(reply))
        self.assertEqual(self.factoryCalls, 1)
        self.assertEqual(self.listener.pending_count, 0)
        # a repeat sent to the connection itself gets it too
        self.assertEqual(conn.receive(data, NOW + 0.4), [])
        self.assertEqual(conn.data_to_send(), [reply])
        # resolving twice is a bug
        self.assertRaises(ValueError, self.listener.accept, decision, NOW)
        self.assertRaises(ValueError, self.listener.reject, decision, 1401)

    def test_latencies(self):
        hs = conclusion(self.cookie(), hsreq=HSReq(0x010501, 0xBF, 300, 200))
        _, conn = self.listener.accept(self.decide(hs), NOW)
        reply = decode_packet(self.decide(hs).data)
        hsrsp = HSReq.decode(reply.extension(P.EXT_HSRSP).data)
        self.assertEqual((hsrsp.recv_latency, hsrsp.send_latency), (200, 300))
        self.assertEqual(conn.latency_ms, 200)
        # a caller without TSBPD, without the rexmit flag
        hs = conclusion(self.cookie(), socket_id=77, hsreq=HSReq(0x010501, P.OPT_NAKREPORT, 0, 0))
        reply, conn = self.listener.accept(self.decide(hs), NOW)
        hsrsp = HSReq.decode(decode_packet(reply).extension(P.EXT_HSRSP).data)
        self.assertEqual(hsrsp.flags, P.OPT_TLPKTDROP | P.OPT_NAKREPORT)
        self.assertFalse(conn.tsbpd)
        self.assertFalse(conn.rexmit_flag)

    def test_reject(self):
        data = with_cookie(FFMPEG_CONCLUSION, self.cookie())
        decision = self.decide(data)
        reply = self.listener.reject(decision, REJX_UNAUTHORIZED, NOW)
        hs = decode_packet(reply)
        caller = decode_packet(data)
        self.assertEqual(hs.reqtype, 2401)
        self.assertEqual(P.reject_code(hs.reqtype), 1401)
        self.assertEqual(hs.dst, CALLER)
        self.assertEqual(hs.extensions, ())
        self.assertEqual(len(reply), 64)
        self.assertEqual(hs.cif()[:20], caller.cif()[:20])
        self.assertEqual(hs.cif()[24:], caller.cif()[24:])
        self.assertEqual(self.factoryCalls, 0)
        self.assertEqual(self.listener.connections, {})
        # the same rejection for repeats, for a while
        self.assertEqual(self.decide(data, NOW + 5), Reply(reply))
        later = self.decide(data, NOW + 11)
        self.assertIsInstance(later, NeedsAuthorization)
        self.assertEqual(decode_packet(self.listener.reject(later, 11, NOW + 11)).reqtype, 1011)

    def test_rejectionCacheBounded(self):
        self.listener.max_rejections = 3
        for sid in range(10):
            self.listener.reject(self.decide(conclusion(self.cookie(), socket_id=sid + 1)), 1401, NOW)
        self.assertEqual(len(self.listener._rejected), 3)
        self.assertIsInstance(self.decide(conclusion(self.cookie(), socket_id=10)), Reply)
        self.assertIsInstance(self.decide(conclusion(self.cookie(), socket_id=1)), NeedsAuthorization)

    def test_badStreamId(self):
        for i, sid in enumerate(("nonsense", None, "#!::m=publish")):
            decision = self.decide(conclusion(self.cookie(), sid=sid, socket_id=i + 1))
            self.assertIsInstance(decision, NeedsAuthorization)
            self.assertIsNone(decision.request)
            self.assertIsInstance(decision.error, BadStreamId)
            self.assertEqual(decision.error.code, REJX_BAD_REQUEST)
            self.assertRaises(ValueError, self.listener.accept, decision, NOW)
            reply = self.listener.reject(decision, decision.error.code, NOW)
            self.assertEqual(decode_packet(reply).reqtype, 2400)
        # not UTF-8
        hs = conclusion(self.cookie(), sid=None, socket_id=9,
                        extra=[HandshakeExtension(P.EXT_SID, b"\xff\xfe\xfd\xfc")])  # fmt: skip
        decision = self.decide(hs)
        self.assertIsInstance(decision.error, BadStreamId)

    def test_listenerRejections(self):
        cookie = self.cookie()
        cases = [
            (conclusion(cookie, extra=[HandshakeExtension(P.EXT_KMREQ, bytes(16))]), REJ_UNSECURE),
            (conclusion(cookie, ext_flags=P.HS_EXT_HSREQ | P.HS_EXT_KMREQ | P.HS_EXT_CONFIG), REJ_UNSECURE),
            (conclusion(cookie, version=4), REJ_VERSION),
            (conclusion(cookie, hsreq=None), REJ_ROGUE),
            (conclusion(cookie, extra=[HandshakeExtension(P.EXT_HSREQ, b"")], hsreq=None), REJ_ROGUE),
            (conclusion(cookie, hsreq=HSReq(0x010201, 0xBF, 120, 0)), REJ_VERSION),
            (conclusion(cookie, hsreq=HSReq(0x010501, 0xBF | P.OPT_STREAM, 120, 0)), REJ_MESSAGEAPI),
            (conclusion(cookie, extra=[HandshakeExtension(P.EXT_CONGESTION, P.encode_stream_id("file"))]), REJ_CONGESTION),
            (conclusion(cookie, extra=[HandshakeExtension(P.EXT_FILTER, P.encode_stream_id("fec"))]), REJ_FILTER),
        ]  # fmt: skip
        for i, (hs, code) in enumerate(cases):
            hs = Handshake(*[getattr(hs, f.name) for f in Handshake.__attrs_attrs__][:7], 100 + i,
                           *[getattr(hs, f.name) for f in Handshake.__attrs_attrs__][8:])  # fmt: skip
            decision = self.decide(hs)
            self.assertIsInstance(decision, Rejected, code)
            self.assertEqual(decision.code, code)
            reply = decode_packet(decision.data)
            self.assertEqual(reply.reqtype, 1000 + code)
            self.assertEqual(reply.dst, 100 + i)
            # and again for repeats
            self.assertEqual(self.decide(hs), Reply(decision.data))
        ok = conclusion(cookie, socket_id=500,
                        extra=[HandshakeExtension(P.EXT_CONGESTION, P.encode_stream_id("live"))])  # fmt: skip
        self.assertIsInstance(self.decide(ok), NeedsAuthorization)
        self.assertEqual(self.factoryCalls, 0)

    def test_maxConnections(self):
        self.listener.max_connections = 2
        first = self.decide(conclusion(self.cookie(), socket_id=1))
        second = self.decide(conclusion(self.cookie(), socket_id=2))
        third = self.decide(conclusion(self.cookie(), socket_id=3))
        self.assertIsInstance(third, Rejected)
        self.assertEqual(third.code, REJ_RESOURCE)
        _, conn = self.listener.accept(first, NOW)
        self.listener.reject(second, 1401, NOW)
        self.assertIsInstance(self.decide(conclusion(self.cookie(), socket_id=4)), NeedsAuthorization)
        self.assertIsInstance(self.decide(conclusion(self.cookie(), socket_id=5)), Rejected)
        # a closed connection frees its place once removed (or found closed)
        conn.close(NOW)
        self.assertIsInstance(self.decide(conclusion(self.cookie(), socket_id=6)), NeedsAuthorization)
        self.assertNotIn(conn.socket_id, self.listener.connections)

    def test_remove(self):
        hs = conclusion(self.cookie())
        reply, conn = self.listener.accept(self.decide(hs), NOW)
        self.listener.remove(conn)
        self.assertEqual(self.listener.connections, {})
        self.assertIsInstance(self.decide(hs), NeedsAuthorization)

    def test_pendingExpires(self):
        hs = conclusion(self.cookie())
        decision = self.decide(hs)
        self.assertEqual(self.listener.pending_count, 1)
        self.decide(FFMPEG_INDUCTION, now=NOW + 31)
        self.assertEqual(self.listener.pending_count, 0)
        # a late answer still works, and the connection's timers start then
        reply, conn = self.listener.accept(decision, NOW + 32)
        self.assertEqual(decode_packet(reply).socket_id, conn.socket_id)
        self.assertEqual(conn.tick(NOW + 32.5), [])
        self.assertFalse(conn.closed)
        self.assertEqual(decode_packet(conn.close(NOW + 34)).timestamp, 2_000_000)

    def test_otherPackets(self):
        self.assertIsInstance(self.decide(KeepAlive().encode()), Drop)
        self.assertIsInstance(self.decide(DataPacket(1, 1, b"x").encode()), Drop)
        waveahand = decode_packet(FFMPEG_INDUCTION)
        waveahand = Handshake(5, 0, 0, 1, 1500, 8192, P.URQ_WAVEAHAND, 1, 0)
        self.assertIsInstance(self.decide(waveahand), Drop)
        odd = Handshake(3, 0, 2, 1, 1500, 8192, P.URQ_INDUCTION, 1, 0)
        self.assertIsInstance(self.decide(odd), Drop)
        self.assertRaises(SRTProtocolError, self.decide, b"\x80\x00\x00\x00" + bytes(20))
        self.assertNoState()

    def test_socketIdFactory(self):
        listener = Listener(b"s", lambda: 0)
        decision = listener.handle_handshake(conclusion(listener.cookie(PEER, NOW)).encode(), PEER, NOW)
        self.assertRaises(ValueError, listener.accept, decision, NOW)
        listener = Listener(b"s", lambda: 7)
        for sid in (1, 2):
            d = listener.handle_handshake(conclusion(listener.cookie(PEER, NOW), socket_id=sid).encode(), PEER, NOW)
            if sid == 1:
                listener.accept(d, NOW)
            else:
                self.assertRaises(ValueError, listener.accept, d, NOW)

    @given(st.binary(max_size=200))
    def test_garbage(self, data):
        try:
            self.listener.handle_handshake(data, PEER, NOW)
        except SRTProtocolError:
            pass
        self.assertEqual(self.listener.connections, {})

    @given(st.binary(max_size=120))
    def test_garbageExtensions(self, tail):
        data = with_cookie(FFMPEG_CONCLUSION, self.cookie())[:64]
        caller = zlib.crc32(tail).to_bytes(4, "big")  # a caller socket id per example
        data = data[:40] + caller + data[44:] + tail
        try:
            decision = self.listener.handle_handshake(data, PEER, NOW)
        except SRTProtocolError:
            return
        if isinstance(decision, NeedsAuthorization):
            if decision.error is None:
                self.listener.accept(decision, NOW)
            else:
                self.listener.reject(decision, decision.error.code, NOW)


# ---------------------------------------------------------------------------
# Connection (receiver)
# ---------------------------------------------------------------------------

PEER_ID = 7
LOCAL_ID = 9
T0 = 1000.0


def data(seq, ts=0, payload=None, rexmit=False) -> bytes:
    seq &= P.SEQ_MASK
    return DataPacket(seq, 1, payload if payload is not None else b"<%d>" % seq, ts & P.TS_MASK,
                      LOCAL_ID, retransmitted=rexmit).encode()  # fmt: skip


def payloads(events) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Payload))


def expected(seqs) -> bytes:
    return b"".join(b"<%d>" % (s & P.SEQ_MASK) for s in seqs)


def decoded(datagrams) -> list:
    return [decode_packet(d) for d in datagrams]


class ConnectionTests(SynchronousTestCase):
    def make(self, isn=100, now=T0, **kw) -> Connection:
        self.conn = Connection(PEER_ID, LOCAL_ID, isn, now, **kw)
        return self.conn

    def assertInvariants(self, conn):
        lost = conn._lost
        if lost:
            self.assertGreaterEqual(min(lost), conn._next)
            self.assertLessEqual(max(lost), conn._highest)
        self.assertFalse(lost & set(conn._buf))
        self.assertNotIn(conn._next, conn._buf)
        if conn._buf:
            self.assertIn(conn._highest, conn._buf)
            self.assertGreaterEqual(min(conn._buf), conn._next)
        else:
            self.assertEqual(conn._highest, conn._next - 1)
            self.assertEqual(lost, set())
        self.assertEqual(conn._buf_bytes, sum(len(v[0]) for v in conn._buf.values() if v))

    def test_inOrder(self):
        conn = self.make()
        out = []
        for i in range(100, 110):
            events = conn.receive(data(i), T0)
            self.assertEqual(len(events), 1)
            out += events
        self.assertEqual(payloads(out), expected(range(100, 110)))
        self.assertEqual(conn.next_seq, 110)
        self.assertEqual(conn.data_to_send(), [])
        s = conn.stats()
        self.assertEqual((s.packets_received, s.packets_lost, s.packets_duplicate), (10, 0, 0))
        self.assertEqual(s.bytes_received, len(expected(range(100, 110))))
        self.assertEqual(s.bytes_delivered, s.bytes_received)

    def test_lossAndNak(self):
        conn = self.make()
        out = conn.receive(data(100), T0) + conn.receive(data(101), T0)
        self.assertEqual(conn.receive(data(104), T0 + 0.001), [])
        naks = decoded(conn.data_to_send())
        self.assertEqual(naks, [Nak([(102, 103)], naks[0].timestamp, PEER_ID)])
        self.assertEqual(conn.lost_sequences, [102, 103])
        self.assertEqual(conn.receive(data(103, rexmit=True), T0 + 0.002), [])
        self.assertEqual(conn.data_to_send(), [])
        self.assertEqual(conn.lost_sequences, [102])
        self.assertInvariants(conn)
        events = conn.receive(data(102, rexmit=True), T0 + 0.003)
        self.assertEqual(len(events), 1)  # one Payload for everything released
        out += events
        self.assertEqual(payloads(out), expected(range(100, 105)))
        s = conn.stats()
        self.assertEqual((s.packets_lost, s.packets_retransmitted, s.naks_sent), (2, 2, 1))
        self.assertInvariants(conn)

    def test_duplicates(self):
        conn = self.make()
        conn.receive(data(100), T0)
        self.assertEqual(conn.receive(data(100), T0), [])
        conn.receive(data(102), T0)
        self.assertEqual(conn.receive(data(102), T0), [])
        self.assertEqual(conn.receive(data(50), T0), [])
        self.assertEqual(conn.stats().packets_duplicate, 3)

    def test_rexmitFlagOnlyWhenAgreed(self):
        conn = self.make(rexmit_flag=False)
        conn.receive(data(100, rexmit=True), T0)
        self.assertEqual(conn.stats().packets_retransmitted, 0)

    @given(st.lists(st.integers(0, 59), min_size=60, max_size=200), st.randoms(use_true_random=False))
    def test_reorderedDuplicated(self, extra, rnd):
        """
        Any arrival order, with duplicates, gives the exact byte stream once
        everything has arrived; NAKs name only missing packets.
        """
        for isn in (100, P.SEQ_MASK - 30):
            conn = self.make(isn=isn)
            seqs = [isn + i for i in range(60)] + [isn + i for i in extra]
            rnd.shuffle(seqs)
            seen = set()
            out = []
            for s in seqs:
                out += conn.receive(data(s), T0)
                seen.add(s)
                for nak in decoded(conn.data_to_send()):
                    for a, b in nak.ranges:
                        for k in range(P.seq_unwrap(a, isn), P.seq_unwrap(b, isn) + 1):
                            self.assertNotIn(k, seen)
                self.assertInvariants(conn)
            self.assertEqual(payloads(out), expected(range(isn, isn + 60)))
            self.assertEqual(conn.stats().packets_duplicate, len(seqs) - 60)
            self.assertEqual(conn.lost_sequences, [])
            self.assertEqual(conn.buffered_packets, 0)

    def test_periodicNak(self):
        conn = self.make(tsbpd=False)  # no too-late drop to end the gap
        conn.receive(data(100), T0)
        conn.receive(data(102), T0)
        self.assertEqual(len(conn.data_to_send()), 1)
        naks = []
        t = T0
        for _ in range(100):  # one second
            t += 0.01
            naks += [p for p in decoded(conn.tick(t)) if isinstance(p, Nak)]
        # RTT 100 ms, RTTVar 50 ms before any ACKACK: every 300 ms
        self.assertEqual(len(naks), 3)
        self.assertTrue(all(n.ranges == ((101, 101),) for n in naks))
        # a measured RTT of 1 ms: every 20 ms (the floor)
        ack = [p for p in decoded(conn.tick(t + 1)) if isinstance(p, Ack)]
        conn._acks[99] = (t, 101)
        conn.receive(AckAck(99).encode(), t + 0.001)
        self.assertEqual(conn.rtt_us, 1000)
        t += 2
        naks = []
        for _ in range(100):
            t += 0.01
            naks += [p for p in decoded(conn.tick(t)) if isinstance(p, Nak)]
        self.assertTrue(30 <= len(naks) <= 50, len(naks))
        conn.receive(data(101), t)
        self.assertEqual([p for p in decoded(conn.tick(t + 1)) if isinstance(p, Nak)], [])
        del ack

    def test_nakRangesAndSize(self):
        conn = self.make(isn=0)
        for s in range(0, 2000, 2):  # every other packet lost: 1000 ranges
            conn.receive(data(s), T0)
        nak = [p for p in decoded(conn.tick(T0 + 1)) if isinstance(p, Nak)][0]
        self.assertLessEqual(len(nak.encode()), 1500 - 28)
        self.assertEqual(nak.ranges[0], (1, 1))
        self.assertTrue(all(a == b for a, b in nak.ranges))

    def test_dropreq(self):
        conn = self.make()
        out = conn.receive(data(100), T0)
        conn.receive(data(103), T0)
        out += conn.receive(DropReq(5, 101, 102, 0, LOCAL_ID).encode(), T0)
        self.assertEqual(payloads(out), expected([100, 103]))
        self.assertEqual(conn.lost_sequences, [])
        self.assertEqual(conn.stats().packets_dropped, 2)
        self.assertInvariants(conn)
        # late arrivals of dropped packets are duplicates
        self.assertEqual(conn.receive(data(101), T0), [])
        # a drop request for the future, beyond a gap not yet seen
        conn.receive(DropReq(6, 107, 108, 0, LOCAL_ID).encode(), T0)
        self.assertEqual(conn.lost_sequences, [104, 105, 106])
        self.assertInvariants(conn)
        out = conn.receive(data(104), T0) + conn.receive(data(106), T0) + conn.receive(data(105), T0)
        self.assertEqual(payloads(out), expected([104, 105, 106]))
        out = conn.receive(data(109), T0)
        self.assertEqual(payloads(out), expected([109]))
        # a stale drop request changes nothing
        self.assertEqual(conn.receive(DropReq(1, 10, 20, 0, LOCAL_ID).encode(), T0), [])
        self.assertEqual(conn.next_seq, 110)
        self.assertInvariants(conn)

    def test_tooLateDrop(self):
        # latency 120 ms; the conclusion (ts 0) arrived at T0
        conn = self.make(latency_ms=120)
        conn.receive(data(100, ts=0), T0)
        conn.receive(data(102, ts=20_000), T0 + 0.02)
        conn.receive(data(103, ts=30_000), T0 + 0.03)
        conn.tick(T0 + 0.1)
        self.assertEqual(conn.take_events(), [])
        conn.tick(T0 + 0.139)
        self.assertEqual(conn.take_events(), [])
        conn.tick(T0 + 0.141)  # 102 plays at T0 + 0.020 + 0.120
        events = conn.take_events()
        self.assertEqual(payloads(events), expected([102, 103]))
        self.assertEqual(conn.stats().packets_dropped, 1)
        self.assertEqual(conn.lost_sequences, [])
        self.assertInvariants(conn)
        # the next ACK acknowledges past the gap
        acks = [p for p in decoded(conn.tick(T0 + 0.2)) if isinstance(p, Ack)]
        self.assertEqual(acks[-1].last_ack_seq, 104)
        # the lost packet arriving after all is a duplicate
        self.assertEqual(conn.receive(data(101, ts=10_000), T0 + 0.2), [])

    def test_tickPayloadBeforeLaterReceive(self):
        """Payload a tick released is never overtaken by a later receive()."""
        conn = self.make(latency_ms=120)
        conn.receive(data(100, ts=0), T0)
        conn.receive(data(102, ts=20_000), T0 + 0.02)
        conn.tick(T0 + 0.15)  # releases 102; the adapter did not collect it
        events = conn.receive(data(103, ts=30_000), T0 + 0.15)
        self.assertEqual(payloads(events), expected([102, 103]))
        self.assertEqual(conn.take_events(), [])

    def test_tooLateDropSeveralGaps(self):
        conn = self.make(latency_ms=100)
        for s, ts in ((100, 0), (102, 20_000), (104, 40_000), (106, 300_000)):
            conn.receive(data(s, ts=ts), T0 + ts / 1e6)
        conn.tick(T0 + 0.15)
        self.assertEqual(payloads(conn.take_events()), expected([102, 104]))
        self.assertEqual(conn.lost_sequences, [105])
        conn.tick(T0 + 0.41)
        self.assertEqual(payloads(conn.take_events()), expected([106]))
        self.assertEqual(conn.stats().packets_dropped, 3)

    def test_noTsbpdNoDrop(self):
        conn = self.make(tsbpd=False)
        conn.receive(data(100), T0)
        conn.receive(data(102), T0)
        conn.tick(T0 + 4)
        self.assertEqual(conn.take_events(), [])
        self.assertEqual(conn.lost_sequences, [101])

    def test_sequenceWrap(self):
        isn = P.SEQ_MASK - 3
        conn = self.make(isn=isn)
        seqs = [isn + i for i in range(10)]
        out = []
        for s in seqs:
            if s not in (P.SEQ_MASK, P.SEQ_MASK + 1, P.SEQ_MASK + 2):
                out += conn.receive(data(s), T0)
        nak = decoded(conn.data_to_send())[0]
        self.assertEqual(nak.ranges, ((P.SEQ_MASK, 1),))
        self.assertEqual(conn.lost_sequences, [P.SEQ_MASK, 0, 1])
        for s in (P.SEQ_MASK + 2, P.SEQ_MASK, P.SEQ_MASK + 1):
            out += conn.receive(data(s), T0)
        self.assertEqual(payloads(out), expected(seqs))
        self.assertEqual(conn.next_seq, 6)
        acks = [p for p in decoded(conn.tick(T0 + 0.01)) if isinstance(p, Ack)]
        self.assertEqual(acks[0].last_ack_seq, 6)

    def test_timestampWrap(self):
        """The sender's clock wraps 32 bits between packets; TSBPD does not notice."""
        hs_ts = P.TS_MASK - 50_000  # 50 ms before the wrap
        conn = self.make(hs_timestamp=hs_ts, latency_ms=120)
        conn.receive(data(100, ts=hs_ts + 10_000), T0 + 0.01)
        conn.receive(data(102, ts=hs_ts + 100_000), T0 + 0.1)  # wrapped: small on the wire
        self.assertLess(decode_packet(data(102, ts=hs_ts + 100_000)).timestamp, 60_000)
        conn.tick(T0 + 0.2)
        self.assertEqual(conn.take_events(), [])
        conn.tick(T0 + 0.221)
        self.assertEqual(payloads(conn.take_events()), expected([102]))
        # hours later, many wraps: still continuous
        t, ts, seq = T0, hs_ts, 103
        for _ in range(2000):
            t += 3.0
            ts += 3_000_000
            conn.receive(data(seq, ts=ts), t)
            conn.receive(KeepAlive().encode(), t)
            seq += 1
        conn.receive(data(seq + 1, ts=ts + 10_000), t + 0.01)
        conn.tick(t + 0.125)
        self.assertEqual(conn.take_events(), [])
        conn.tick(t + 0.131)
        self.assertEqual(payloads(conn.take_events()), expected([seq + 1]))

    def test_ackCadence(self):
        conn = self.make()
        acks = []
        t = T0
        seq = 100
        for ms in range(100):  # 1 packet per ms, tick every ms
            t = T0 + ms / 1000
            conn.receive(data(seq, ts=ms * 1000), t)
            seq += 1
            acks += [p for p in decoded(conn.tick(t)) if isinstance(p, Ack)]
        self.assertEqual(len(acks), 10)
        self.assertEqual([a.ack_number for a in acks], list(range(1, 11)))
        self.assertEqual([a.kind for a in acks], ["full"] * 10)
        self.assertEqual(acks[-1].last_ack_seq, 100 + 91)
        last = acks[-1]
        self.assertEqual((last.dst, last.rtt, last.rtt_var), (PEER_ID, 100_000, 50_000))
        self.assertEqual(last.buffer_available, 8192)
        # no new data and no ACKACK: again after RTT + 4 RTTVar (300 ms)
        t += 0.01
        acks = [p for p in decoded(conn.tick(t)) if isinstance(p, Ack)]
        self.assertEqual(acks[0].last_ack_seq, 200)
        again = []
        for i in range(1, 40):
            again += [p for p in decoded(conn.tick(t + i / 100)) if isinstance(p, Ack)]
        self.assertEqual(len(again), 1)
        self.assertEqual(again[0].last_ack_seq, 200)
        # once the sender confirms it: silence (then keepalives)
        conn.receive(AckAck(again[0].ack_number).encode(), t + 0.4)
        quiet = []
        for i in range(41, 100):
            quiet += decoded(conn.tick(t + i / 100))
        self.assertEqual(quiet, [])
        self.assertEqual([type(p) for p in decoded(conn.tick(t + 1.5))], [KeepAlive])

    def test_ackRates(self):
        conn = self.make()
        for i in range(200):
            conn.receive(data(100 + i, payload=b"x" * 1000), T0 + i / 200)
            conn.tick(T0 + i / 200)
        ack = [p for p in decoded(conn.tick(T0 + 1.01)) if isinstance(p, Ack)][0]
        self.assertTrue(150 <= ack.packet_rate <= 250, ack.packet_rate)
        self.assertTrue(150_000 <= ack.byte_rate <= 250_000, ack.byte_rate)
        self.assertGreaterEqual(ack.bandwidth, ack.packet_rate)

    def test_rtt(self):
        conn = self.make()
        conn.receive(data(100), T0)
        ack = decoded(conn.tick(T0))[0]
        conn.receive(AckAck(ack.ack_number).encode(), T0 + 0.004)
        self.assertEqual((conn.rtt_us, conn.rtt_var_us), (4000, 2000))
        conn.receive(data(101), T0 + 0.01)
        ack = decoded(conn.tick(T0 + 0.01))[0]
        conn.receive(AckAck(ack.ack_number).encode(), T0 + 0.012)
        # libsrt: RTTVar = (3 RTTVar + |RTT - sample|) / 4, RTT = (7 RTT + sample) / 8
        self.assertEqual((conn.rtt_us, conn.rtt_var_us), ((7 * 4000 + 2000) // 8, (3 * 2000 + 2000) // 4))
        # unknown or repeated ACKACKs are ignored
        conn.receive(AckAck(ack.ack_number).encode(), T0 + 0.5)
        conn.receive(AckAck(12345).encode(), T0 + 0.5)
        self.assertEqual(conn.rtt_us, 3750)
        self.assertEqual(conn.stats().rtt_us, 3750)

    def test_keepalive(self):
        conn = self.make()
        t = T0
        sent = []
        for i in range(1, 300):
            t = T0 + i / 100
            conn.receive(KeepAlive().encode(), t)  # the peer is alive
            sent += [(t, p) for p in decoded(conn.tick(t))]
        self.assertEqual([type(p) for _, p in sent], [KeepAlive, KeepAlive])
        self.assertAlmostEqual(sent[0][0], T0 + 1.0, places=6)
        self.assertEqual(sent[0][1].dst, PEER_ID)
        self.assertEqual(conn.take_events(), [])
        self.assertFalse(conn.closed)

    def test_idleTimeout(self):
        conn = self.make()
        conn.receive(data(100), T0)
        conn.tick(T0 + 4.99)
        self.assertEqual(conn.take_events(), [])
        out = decoded(conn.tick(T0 + 5.0))
        self.assertEqual(conn.take_events(), [Closed("peer idle timeout")])
        self.assertEqual(type(out[-1]), Shutdown)
        self.assertTrue(conn.closed)
        self.assertEqual(conn.close_reason, "peer idle timeout")
        self.assertEqual(conn.receive(data(101), T0 + 5.1), [])
        self.assertEqual(conn.tick(T0 + 6), [])
        self.assertEqual(conn.take_events(), [])

    def test_shutdownIn(self):
        conn = self.make()
        self.assertEqual(conn.receive(Shutdown(0, LOCAL_ID).encode(), T0), [Closed("peer shutdown")])
        self.assertTrue(conn.closed)
        self.assertEqual(conn.receive(data(100), T0), [])
        self.assertEqual(conn.tick(T0 + 10), [])

    def test_shutdownOut(self):
        conn = self.make()
        packet = decode_packet(conn.close(T0 + 1.5))
        self.assertEqual(packet, Shutdown(1_500_000, PEER_ID))
        self.assertTrue(conn.closed)
        self.assertEqual(conn.tick(T0 + 2), [])

    def test_boundedBuffer(self):
        conn = self.make(receive_buffer=16)
        conn.receive(data(100), T0)
        self.assertEqual(conn.receive(data(101 + 16), T0), [])
        self.assertEqual(conn.stats().packets_overflow, 1)
        self.assertEqual(conn.lost_sequences, [])
        conn.receive(data(101 + 15), T0)
        self.assertEqual(len(conn.lost_sequences), 15)
        ack = [p for p in decoded(conn.tick(T0)) if isinstance(p, Ack)][0]
        self.assertEqual(ack.buffer_available, 0)
        self.assertInvariants(conn)

    def test_boundedBytes(self):
        conn = self.make(max_buffer_bytes=3000)
        conn.receive(data(100), T0)
        conn.receive(data(102, payload=b"a" * 1400), T0)
        conn.receive(data(103, payload=b"b" * 1400), T0)
        self.assertEqual(conn.receive(data(104, payload=b"c" * 1400), T0), [])
        self.assertEqual(conn.stats().packets_overflow, 1)
        self.assertInvariants(conn)
        out = conn.receive(data(101), T0)
        self.assertEqual(payloads(out), expected([101]) + b"a" * 1400 + b"b" * 1400)
        self.assertEqual(conn.receive(data(104, payload=b"c" * 1400), T0)[0].data, b"c" * 1400)

    def test_malformed(self):
        conn = self.make()
        for bad in (b"", b"short", Nak([]).encode()[:16] + b"\x80\x00\x00\x01",
                    P.HEADER.pack(0x80020000, 1, 0, LOCAL_ID) + bytes(8),
                    P.HEADER.pack(0x80070000, 1, 0, LOCAL_ID) + bytes(4)):  # fmt: skip
            self.assertRaises(SRTProtocolError, conn.receive, bad, T0)
        self.assertEqual(conn.receive(data(100), T0), [Payload(b"<100>")])

    @given(st.lists(st.binary(max_size=60), max_size=20))
    def test_garbage(self, datagrams):
        conn = self.make()
        conn.receive(data(100), T0)
        for d in datagrams:
            try:
                conn.receive(d, T0)
            except SRTProtocolError:
                pass
            self.assertInvariants(conn)
        conn.tick(T0 + 0.5)

    @given(st.lists(st.tuples(st.integers(0, 80), st.booleans(), st.integers(0, 3)), max_size=150))
    def test_randomTraffic(self, script):
        """Arbitrary mixes of data, drops and ticks keep the state consistent and the output in order."""
        conn = self.make(latency_ms=50, receive_buffer=64)
        t = T0
        out = []
        for offset, tick, kind in script:
            t += 0.005
            if kind == 3:
                out += conn.receive(DropReq(1, 100 + offset, 100 + offset + 2, 0, LOCAL_ID).encode(), t)
            else:
                out += conn.receive(data(100 + offset, ts=int((t - T0) * 1e6) - 5000 * kind), t)
            if tick:
                conn.tick(t)
                out += conn.take_events()
            self.assertInvariants(conn)
        delivered = payloads(out)
        seqs = [int(x) for x in delivered.replace(b">", b"").split(b"<")[1:]]
        self.assertEqual(seqs, sorted(set(seqs)))
