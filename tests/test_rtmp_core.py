"""
The sans-IO RTMP connection: handshake, chunk parsing, limits,
acknowledgements, the writer, and a client against a server replaying
ffmpeg 5.1's publish sequence (synthetic and captured from a real ffmpeg).
"""

from __future__ import annotations

import os
import random
import struct
from collections import Counter

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.rtmp import amf0
from tokengate.rtmp.amf0 import UNDEFINED, ECMAArray
from tokengate.rtmp.core import (
    CLIENT,
    SERVER,
    Abort,
    Acknowledgement,
    AudioData,
    Command,
    DataMessage,
    HandshakeComplete,
    RTMPConnection,
    RTMPProtocolError,
    SetChunkSize,
    SetPeerBandwidth,
    UnknownMessage,
    UserControl,
    VideoData,
    WindowAckSize,
    encode_message,
)

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "ffmpeg51-publish-c2s.bin")
HS = 1536


def fixed_random(n: int) -> bytes:
    return bytes(i * 7 & 0xFF for i in range(n))


# ------------------------------------------------------------ raw chunks


def basic(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes([fmt << 6 | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    return bytes([fmt << 6 | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])


def u24(value: int) -> bytes:
    return value.to_bytes(3, "big")


def ext(value: int) -> bytes:
    return value.to_bytes(4, "big") if value >= 0xFFFFFF else b""


def h0(csid, ts, length, type_id, sid=0) -> bytes:
    return (
        basic(0, csid)
        + u24(min(ts, 0xFFFFFF))
        + u24(length)
        + bytes([type_id])
        + sid.to_bytes(4, "little")
        + ext(ts)
    )


def h1(csid, delta, length, type_id) -> bytes:
    return basic(1, csid) + u24(min(delta, 0xFFFFFF)) + u24(length) + bytes([type_id]) + ext(delta)


def h2(csid, delta) -> bytes:
    return basic(2, csid) + u24(min(delta, 0xFFFFFF)) + ext(delta)


def h3(csid, extended=None) -> bytes:
    return basic(3, csid) + (b"" if extended is None else extended.to_bytes(4, "big"))


def control(type_id: int, payload: bytes) -> bytes:
    return h0(2, 0, len(payload), type_id) + payload


def ready_server(**kwargs) -> RTMPConnection:
    """
    A server past the handshake (with a C2 that does not echo S1).
    """
    server = RTMPConnection(SERVER, **kwargs)
    server.receive_data(b"\x03" + bytes(HS))
    server.data_to_send()
    assert server.receive_data(bytes(HS)) == [HandshakeComplete()]
    return server


def feed(conn: RTMPConnection, data: bytes, pieces) -> list:
    events = []
    for start, end in pieces:
        events += conn.receive_data(data[start:end])
    return events


def cuts_to_pieces(cuts, length):
    points = sorted({0, length, *(c for c in cuts if 0 <= c <= length)})
    return list(zip(points, points[1:]))


class Pair:
    """
    A client and a server talking through memory, keeping what the client
    sent and what each side received.
    """

    def __init__(self):
        self.client = RTMPConnection(CLIENT, random_bytes=fixed_random)
        self.server = RTMPConnection(SERVER, random_bytes=fixed_random)
        self.wire: list[bytes] = []
        self.server_events: list = []
        self.client_events: list = []

    def pump(self):
        while True:
            to_server = self.client.data_to_send()
            to_client = self.server.data_to_send()
            if not to_server and not to_client:
                return
            if to_server:
                self.wire.append(to_server)
                self.server_events += self.server.receive_data(to_server)
            if to_client:
                self.client_events += self.client.receive_data(to_client)

    def take(self):
        server_events, client_events = self.server_events, self.client_events
        self.server_events, self.client_events = [], []
        return server_events, client_events


# ---------------------------------------------------- ffmpeg publish session

NAME = "StreamId?token=T"
FFMPEG_CONNECT = {
    "app": "App",
    "type": "nonprivate",
    "flashVer": "FMLE/3.0 (compatible; Lavf59.27.100)",
    "tcUrl": "rtmp://127.0.0.1:19350/App",
}
METADATA = ECMAArray(
    duration=0.0,
    width=1280.0,
    height=720.0,
    videodatarate=2441.40625,
    framerate=30.0,
    videocodecid=7.0,
    audiodatarate=125.0,
    audiosamplerate=44100.0,
    audiosamplesize=16.0,
    stereo=True,
    audiocodecid=10.0,
    encoder="Lavf59.27.100",
    filesize=0.0,
)
AVCC = bytes.fromhex("0164001fffe1001b6764001facd9405005bb011000000300100000030320f183196001000568ebecb22c")
CONNECT_RESULT = (
    {"fmsVer": "FMS/3,0,1,123", "capabilities": 31},
    {
        "level": "status",
        "code": "NetConnection.Connect.Success",
        "description": "Connection succeeded.",
        "objectEncoding": 0,
    },
)
BASE = 0xFFFFF0  # media timestamps cross 0xFFFFFF


def media(seed: int, size: int, head: bytes) -> bytes:
    return head + random.Random(seed).randbytes(size - len(head))


def ffmpeg_publish(pair: Pair):
    """
    Run ffmpeg 5.1's publish sequence (csids and all) with the replies of
    protocol-facts.md; return the events the server is expected to see.
    """
    client, server = pair.client, pair.server
    expected = [HandshakeComplete()]

    def command(csid, sid, name, txn, obj, *args):
        client.send_message(csid, sid, 20, 0, amf0.encode(name, txn, obj, *args))
        expected.append(Command(sid, 0, name, float(txn), obj, args))

    def av(csid, type_id, ts, payload, encoded=False):
        if encoded:
            data = encode_message(csid, 1, type_id, ts, payload, client.out_chunk_size)
            client.send_encoded(csid, 1, ts, data)
        else:
            client.send_message(csid, 1, type_id, ts, payload)
        kind = VideoData if type_id == 9 else AudioData
        expected.append(kind(1, ts & 0xFFFFFFFF, payload))

    command(3, 0, "connect", 1, FFMPEG_CONNECT)
    pair.pump()
    server.send_window_ack_size(2500000)
    server.send_set_peer_bandwidth(2500000, 2)
    server.send_set_chunk_size(4096)
    server.send_command(0, "_result", 1, *CONNECT_RESULT)
    command(3, 0, "releaseStream", 2, None, NAME)
    command(3, 0, "FCPublish", 3, None, NAME)
    command(3, 0, "createStream", 4, None)
    pair.pump()
    server.send_command(0, "_result", 2, None)
    server.send_command(0, "_result", 3, None)
    server.send_command(0, "_result", 4, None, 1)
    command(8, 1, "publish", 5, None, NAME, "live")
    pair.pump()
    server.send_stream_begin(1)
    server.send_status(1, "status", "NetStream.Publish.Start", f"{NAME} is now published.")
    server.send_command(1, "_result", 5, None)
    pair.pump()

    client.send_message(4, 1, 18, 0, amf0.encode("@setDataFrame", "onMetaData", METADATA))
    expected.append(DataMessage(1, 0, ("@setDataFrame", "onMetaData", METADATA)))
    av(6, 9, 0, b"\x17\x00\x00\x00\x00" + AVCC)
    av(4, 8, 0, b"\xaf\x00\x11\x88")
    # Still at chunk size 128: messages of several chunks.
    av(6, 9, 0, media(1, 700, b"\x17\x01\x00\x00\x00"))
    av(4, 8, 0, media(2, 300, b"\xaf\x01"))
    av(6, 9, 33, media(3, 129, b"\x27\x01\x00\x00\x00"))
    client.send_set_chunk_size(4096)
    expected.append(SetChunkSize(4096))
    av(6, 9, BASE, media(4, 10000, b"\x17\x01\x00\x00\x00"))
    av(4, 8, BASE + 5, media(5, 400, b"\xaf\x01"))
    av(6, 9, BASE + 33, media(6, 5000, b"\x27\x01\x00\x00\x00"))  # > 0xFFFFFF
    # fmt 0 with an extended timestamp, repeated on its fmt 3 chunks
    av(6, 9, BASE + 66, media(7, 9000, b"\x27\x01\x00\x00\x00"), encoded=True)
    av(4, 8, BASE + 28, media(8, 4097, b"\xaf\x01"), encoded=True)
    av(6, 9, BASE + 99, media(9, 4096, b"\x27\x01\x00\x00\x00"))
    av(4, 8, BASE + 51, media(10, 8192 + 1, b"\xaf\x01"))
    av(6, 9, 0xFFFFFFFF, media(11, 4200, b"\x27\x01\x00\x00\x00"))
    av(6, 9, 0x1_0000_0020, media(12, 300, b"\x27\x01\x00\x00\x00"))  # wraps
    av(6, 9, 0x1_0000_0020, b"\x17\x02\x00\x00\x00")
    command(3, 0, "FCUnpublish", 6, None, NAME)
    command(3, 0, "deleteStream", 7, None, 1.0)
    pair.pump()
    return expected


_SESSION = None


def publish_session():
    """
    (bytes the client sent, the server's events, the client's events).
    """
    global _SESSION
    if _SESSION is None:
        pair = Pair()
        expected = ffmpeg_publish(pair)
        _SESSION = (b"".join(pair.wire), expected, pair.server_events, pair.client_events)
    return _SESSION


def replay(data: bytes, pieces=None) -> list:
    server = RTMPConnection(SERVER, random_bytes=fixed_random)
    if pieces is None:
        return server.receive_data(data)
    return feed(server, data, pieces)


# ------------------------------------------------------------------ tests


class HandshakeTests(SynchronousTestCase):
    def test_server_answers_c0c1_at_once(self):
        server = RTMPConnection(SERVER)
        c1 = os.urandom(HS)
        self.assertEqual(server.receive_data(b"\x03" + c1), [])
        out = server.data_to_send()
        self.assertEqual(len(out), 1 + 2 * HS)
        self.assertEqual(out[0], 3)
        s1, s2 = out[1 : 1 + HS], out[1 + HS :]
        self.assertEqual(s1[4:8], b"\x00\x00\x00\x00")
        self.assertEqual(s2, c1)
        self.assertEqual(server.data_to_send(), b"")
        self.assertFalse(server.handshake_complete)
        self.assertEqual(server.receive_data(s1), [HandshakeComplete()])
        self.assertTrue(server.handshake_complete)
        self.assertIs(server.handshake_echo_ok, True)

    def test_server_byte_by_byte(self):
        server = RTMPConnection(SERVER, random_bytes=fixed_random)
        c1 = bytes(range(256)) * 6
        for byte in b"\x03" + c1:
            self.assertEqual(server.receive_data(bytes([byte])), [])
        out = server.data_to_send()
        self.assertEqual(out[1 + HS :], c1)
        events = []
        for byte in out[1 : 1 + HS]:
            events += server.receive_data(bytes([byte]))
        self.assertEqual(events, [HandshakeComplete()])

    def test_c2_mismatch_is_only_noted(self):
        server = ready_server()
        self.assertIs(server.handshake_echo_ok, False)
        server.receive_data(control(5, struct.pack(">I", 1000)))

    def test_bad_version(self):
        for role in (SERVER, CLIENT):
            conn = RTMPConnection(role)
            exc = self.assertRaises(RTMPProtocolError, conn.receive_data, b"\x06")
            self.assertIn("version 6", str(exc))
            self.assertRaises(RTMPProtocolError, conn.receive_data, b"\x03")

    def test_client_sends_c0c1_on_construction(self):
        client = RTMPConnection(CLIENT)
        out = client.data_to_send()
        self.assertEqual(len(out), 1 + HS)
        self.assertEqual(out[0], 3)
        self.assertEqual(out[5:9], bytes(4))
        self.assertEqual(client.data_to_send(), b"")

    def test_client_answers_s1(self):
        client = RTMPConnection(CLIENT)
        c1 = client.data_to_send()[1:]
        s1 = os.urandom(HS)
        self.assertEqual(client.receive_data(b"\x03" + s1 + c1), [HandshakeComplete()])
        self.assertEqual(client.data_to_send(), s1)
        self.assertIs(client.handshake_echo_ok, True)
        client = RTMPConnection(CLIENT)
        self.assertEqual(client.receive_data(b"\x03" + s1 + s1), [HandshakeComplete()])
        self.assertIs(client.handshake_echo_ok, False)

    def test_chunk_output_held_until_handshake(self):
        client = RTMPConnection(CLIENT)
        client.send_command(0, "connect", 1, {"app": "App"})
        self.assertEqual(len(client.data_to_send()), 1 + HS)
        client.send_window_ack_size(5000)
        client.receive_data(b"\x03" + bytes(2 * HS))
        out = client.data_to_send()
        self.assertEqual(out[:HS], bytes(HS))  # C2 first
        server = ready_server()
        self.assertEqual(
            server.receive_data(out[HS:]),
            [Command(0, 0, "connect", 1.0, {"app": "App"}, ()), WindowAckSize(5000)],
        )

    def test_server_holds_chunk_output_until_c2(self):
        server = RTMPConnection(SERVER)
        server.send_window_ack_size(2500000)
        self.assertEqual(server.data_to_send(), b"")
        server.receive_data(b"\x03" + bytes(HS))
        self.assertEqual(len(server.data_to_send()), 1 + 2 * HS)
        server.send_set_peer_bandwidth(2500000)
        self.assertEqual(server.data_to_send(), b"")
        server.receive_data(bytes(HS))
        self.assertEqual(
            RTMPConnection(CLIENT).receive_data(b"\x03" + bytes(2 * HS) + server.data_to_send()),
            [HandshakeComplete(), WindowAckSize(2500000), SetPeerBandwidth(2500000, 2)],
        )

    def test_handshake_and_chunks_in_one_call(self):
        server = RTMPConnection(SERVER)
        server.receive_data(b"\x03" + bytes(HS))
        self.assertEqual(
            server.receive_data(bytes(HS) + control(5, struct.pack(">I", 7))),
            [HandshakeComplete(), WindowAckSize(7)],
        )
        self.assertEqual(server.bytes_received, 1 + 2 * HS + 16)

    def test_empty_data(self):
        self.assertEqual(RTMPConnection(SERVER).receive_data(b""), [])

    def test_role(self):
        self.assertRaises(ValueError, RTMPConnection, "peer")


class FfmpegPublishTests(SynchronousTestCase):
    """
    A client sending exactly what ffmpeg 5.1 sends when publishing, and a
    server answering as protocol-facts.md says.
    """

    def test_server_events(self):
        wire, expected, server_events, client_events = publish_session()
        self.assertEqual(server_events, expected)
        self.assertEqual(replay(wire), expected)

    def test_client_events(self):
        wire, expected, server_events, client_events = publish_session()
        connect_result = Command(
            0,
            0,
            "_result",
            1.0,
            {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
            (
                {
                    "level": "status",
                    "code": "NetConnection.Connect.Success",
                    "description": "Connection succeeded.",
                    "objectEncoding": 0.0,
                },
            ),
        )
        self.assertEqual(
            client_events,
            [
                HandshakeComplete(),
                WindowAckSize(2500000),
                SetPeerBandwidth(2500000, 2),
                SetChunkSize(4096),
                connect_result,
                Command(0, 0, "_result", 2.0, None, ()),
                Command(0, 0, "_result", 3.0, None, ()),
                Command(0, 0, "_result", 4.0, None, (1.0,)),
                UserControl(0, b"\x00\x00\x00\x01"),
                Command(
                    1,
                    0,
                    "onStatus",
                    0.0,
                    None,
                    (
                        {
                            "level": "status",
                            "code": "NetStream.Publish.Start",
                            "description": f"{NAME} is now published.",
                        },
                    ),
                ),
                Command(1, 0, "_result", 5.0, None, ()),
            ],
        )

    def test_metadata_is_an_ecma_array(self):
        wire, expected, server_events, client_events = publish_session()
        [data] = [e for e in server_events if isinstance(e, DataMessage)]
        self.assertIs(type(data.values[2]), ECMAArray)

    def test_byte_by_byte(self):
        wire, expected, _, _ = publish_session()
        self.assertEqual(replay(wire, [(i, i + 1) for i in range(len(wire))]), expected)

    @given(st.data())
    def test_any_split(self, data):
        wire, expected, _, _ = publish_session()
        cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=60))
        self.assertEqual(replay(wire, cuts_to_pieces(cuts, len(wire))), expected)

    @given(st.lists(st.integers(1, 40), min_size=1, max_size=20))
    def test_small_pieces(self, sizes):
        wire, expected, _, _ = publish_session()
        pieces, start, i = [], 0, 0
        while start < len(wire):
            end = min(start + sizes[i % len(sizes)], len(wire))
            pieces.append((start, end))
            start, i = end, i + 1
        self.assertEqual(replay(wire, pieces), expected)

    @given(st.binary(min_size=1, max_size=600), st.integers(0, 6))
    def test_garbage_after_handshake(self, garbage, messages):
        """
        Garbage after a valid handshake (and maybe some valid messages)
        raises RTMPProtocolError or nothing, never anything else.
        """
        wire, expected, _, _ = publish_session()
        server = RTMPConnection(SERVER, random_bytes=fixed_random)
        prefix = wire[: 1 + 2 * HS]
        server.receive_data(prefix)
        if messages:
            # the first few messages after the handshake, at chunk size 128
            server.receive_data(wire[1 + 2 * HS : 1 + 2 * HS + 140 * messages])
        try:
            server.receive_data(garbage)
        except RTMPProtocolError:
            pass

    @given(st.data())
    def test_mutations(self, data):
        """
        Flipping bytes of the valid stream after the handshake raises only
        RTMPProtocolError.
        """
        wire, expected, _, _ = publish_session()
        raw = bytearray(wire)
        for _ in range(data.draw(st.integers(1, 8))):
            index = data.draw(st.integers(1 + 2 * HS, len(raw) - 1))
            raw[index] = data.draw(st.integers(0, 255))
        cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=5))
        try:
            replay(bytes(raw), cuts_to_pieces(cuts, len(raw)))
        except RTMPProtocolError:
            pass


class CapturedFfmpegTests(SynchronousTestCase):
    """
    The server-bound bytes of a real ffmpeg 5.1.9 publish, captured with a
    throwaway listener (testsrc 320x240, sine, libx264 + aac, 0.8 s).
    """

    def setUp(self):
        with open(FIXTURE, "rb") as f:
            self.wire = f.read()

    def test_events(self):
        events = replay(self.wire)
        commands = [(e.stream_id, e.name, e.transaction_id, e.args) for e in events if isinstance(e, Command)]
        self.assertEqual(
            commands,
            [
                (0, "connect", 1.0, ()),
                (0, "releaseStream", 2.0, (NAME,)),
                (0, "FCPublish", 3.0, (NAME,)),
                (0, "createStream", 4.0, ()),
                (1, "publish", 5.0, (NAME, "live")),
                (0, "FCUnpublish", 6.0, (NAME,)),
                (0, "deleteStream", 7.0, (1.0,)),
            ],
        )
        self.assertEqual(events[1].command_object["flashVer"], "FMLE/3.0 (compatible; Lavf59.27.100)")
        self.assertEqual(events[0], HandshakeComplete())
        self.assertIn(SetChunkSize(4096), events)
        counts = Counter(type(e).__name__ for e in events)
        self.assertEqual(counts["VideoData"], 10)
        self.assertEqual(counts["AudioData"], 37)
        [meta] = [e for e in events if isinstance(e, DataMessage)]
        self.assertEqual(meta.values[:2], ("@setDataFrame", "onMetaData"))
        self.assertEqual(meta.values[2]["videocodecid"], 7.0)
        video = [e for e in events if isinstance(e, VideoData)]
        self.assertEqual(video[0].payload[:2], b"\x17\x00")
        self.assertEqual(video[-1].payload, b"\x17\x02\x00\x00\x00")
        self.assertTrue(any(len(v.payload) > 4096 for v in video))
        self.assertEqual([v.timestamp for v in video], [0, 23, 123, 223, 323, 423, 523, 623, 723, 723])

    @given(st.lists(st.integers(0, 29232), max_size=40))
    def test_any_split(self, cuts):
        expected = replay(self.wire)
        self.assertEqual(replay(self.wire, cuts_to_pieces(cuts, len(self.wire))), expected)


class ReceiveIntoTests(SynchronousTestCase):
    """
    C{receive_into} hands over what C{receive_data} returns, in the same
    order, media as calls and no event objects.
    """

    def setUp(self):
        with open(FIXTURE, "rb") as f:
            self.wire = f.read()

    def into(self, conn: RTMPConnection, data: bytes, pieces) -> list:
        got: list = []

        def media(type_id, stream_id, timestamp, payload):
            self.assertIs(type(payload), bytes)
            got.append(("media", type_id, stream_id, timestamp, payload))

        for start, end in pieces:
            conn.receive_into(data[start:end], media, got.append)
        return got

    @staticmethod
    def flatten(events: list) -> list:
        out: list = []
        for e in events:
            if isinstance(e, (AudioData, VideoData)):
                out.append(("media", 9 if isinstance(e, VideoData) else 8, e.stream_id,
                            e.timestamp, e.payload))
            else:
                out.append(e)
        return out

    def test_captured_ffmpeg(self):
        expected = self.flatten(replay(self.wire))
        self.assertEqual(sum(1 for e in expected if type(e) is tuple), 47)
        got = self.into(RTMPConnection(SERVER, random_bytes=fixed_random), self.wire,
                        [(0, len(self.wire))])
        self.assertEqual(got, expected)

    @given(st.lists(st.integers(0, 29232), max_size=40))
    def test_any_split(self, cuts):
        expected = self.flatten(replay(self.wire))
        got = self.into(RTMPConnection(SERVER, random_bytes=fixed_random), self.wire,
                        cuts_to_pieces(cuts, len(self.wire)))
        self.assertEqual(got, expected)

    def test_zero_length_media(self):
        server = ready_server()
        got = self.into(server, h0(6, 5, 0, 8, 1) + h0(7, 6, 0, 9, 1), [(0, 24)])
        self.assertEqual(got, [("media", 8, 1, 5, b""), ("media", 9, 1, 6, b"")])

    def test_error_keeps_what_was_handed_over(self):
        server = ready_server(max_message_size=100)
        data = h0(6, 1, 3, 8, 1) + b"abc" + h0(7, 2, 101, 9, 1)
        got: list = []
        self.assertRaises(RTMPProtocolError, server.receive_into, data,
                          lambda *m: got.append(m), got.append)
        self.assertEqual(got, [(8, 1, 1, b"abc")])
        self.assertRaises(RTMPProtocolError, server.receive_into, b"x", got.append, got.append)

    def test_callback_error_kills_the_connection(self):
        server = ready_server()

        def media(*args):
            raise ZeroDivisionError()

        self.assertRaises(ZeroDivisionError, server.receive_into, h0(6, 1, 1, 8, 1) + b"a",
                          media, lambda e: None)
        self.assertRaises(RTMPProtocolError, server.receive_data, h0(6, 1, 1, 8, 1) + b"a")


class ChunkParsingTests(SynchronousTestCase):
    def test_chunk_stream_id_forms(self):
        for csid, size in ((3, 1), (63, 1), (64, 2), (319, 2), (320, 3), (65599, 3)):
            server = ready_server()
            header = h0(csid, 5, 2, 9, 1)
            self.assertEqual(len(header), size + 11)
            self.assertEqual(server.receive_data(header + b"ab"), [VideoData(1, 5, b"ab")])
            # and the writer agrees
            self.assertEqual(encode_message(csid, 1, 9, 5, b"ab"), header + b"ab")

    def test_formats_and_deltas(self):
        server = ready_server()
        data = (
            h0(6, 1000, 3, 9, 1) + b"abc"
            + h1(6, 40, 2, 8) + b"de"
            + h2(6, 20) + b"fg"
            + h3(6) + b"hi"
        )
        self.assertEqual(
            server.receive_data(data),
            [
                VideoData(1, 1000, b"abc"),
                AudioData(1, 1040, b"de"),
                AudioData(1, 1060, b"fg"),
                AudioData(1, 1080, b"hi"),
            ],
        )

    def test_fmt3_after_fmt0_uses_the_timestamp_as_delta(self):
        server = ready_server()
        self.assertEqual(
            server.receive_data(h0(6, 100, 1, 9) + b"a" + h3(6) + b"b" + h3(6) + b"c"),
            [VideoData(0, 100, b"a"), VideoData(0, 200, b"b"), VideoData(0, 300, b"c")],
        )

    def test_extended_timestamp_on_continuations(self):
        server = ready_server()
        ts = 0x12345678
        payload = bytes(range(200)) + bytes(100)
        data = h0(6, ts, 300, 9, 1) + payload[:128] + h3(6, ts) + payload[128:256] + h3(6, ts) + payload[256:]
        self.assertEqual(server.receive_data(data), [VideoData(1, ts, payload)])
        # a new message started by a fmt 3 chunk adds the extended value
        self.assertEqual(
            server.receive_data(h0(7, ts, 1, 9) + b"x" + h3(7, ts) + b"y"),
            [VideoData(0, ts, b"x"), VideoData(0, (2 * ts) & 0xFFFFFFFF, b"y")],
        )

    def test_extended_delta(self):
        server = ready_server()
        data = (
            h0(6, 10, 1, 9) + b"a"
            + h1(6, 0x1000000, 1, 9) + b"b"
            + h3(6, 0x1000000) + b"c"
            + h2(6, 0xFFFFFF) + b"d"
        )
        self.assertEqual(
            server.receive_data(data),
            [
                VideoData(0, 10, b"a"),
                VideoData(0, 10 + 0x1000000, b"b"),
                VideoData(0, 10 + 0x2000000, b"c"),
                VideoData(0, 10 + 0x2000000 + 0xFFFFFF, b"d"),
            ],
        )

    def test_timestamp_wraps(self):
        server = ready_server()
        self.assertEqual(
            server.receive_data(h0(6, 0xFFFFFFF0, 1, 9) + b"a" + h2(6, 0x20) + b"b"),
            [VideoData(0, 0xFFFFFFF0, b"a"), VideoData(0, 0x10, b"b")],
        )

    def test_interleaved_chunk_streams(self):
        server = ready_server()
        video = bytes(range(256)) + b"V" * 44
        audio = b"A" * 200
        data = (
            h0(6, 40, 300, 9, 1) + video[:128]
            + h0(4, 41, 200, 8, 1) + audio[:128]
            + h3(6) + video[128:256]
            + h3(4) + audio[128:]
            + h3(6) + video[256:]
        )
        self.assertEqual(
            server.receive_data(data),
            [AudioData(1, 41, audio), VideoData(1, 40, video)],
        )

    def test_set_chunk_size_between_chunks(self):
        server = ready_server()
        video = b"v" * 400
        data = (
            h0(6, 0, 400, 9) + video[:128]
            + control(1, struct.pack(">I", 256))
            + h3(6) + video[128:384]
            + h3(6) + video[384:]
        )
        self.assertEqual(server.receive_data(data), [SetChunkSize(256), VideoData(0, 0, video)])
        self.assertEqual(server.in_chunk_size, 256)

    def test_set_chunk_size_limits(self):
        for size in (0, 0x80000000, 0xFFFFFFFF):
            server = ready_server()
            self.assertRaises(
                RTMPProtocolError, server.receive_data, control(1, struct.pack(">I", size))
            )
        server = ready_server()
        self.assertRaises(RTMPProtocolError, server.receive_data, control(1, b"\x00\x01"))
        server = ready_server()
        big = b"z" * 70000
        self.assertEqual(
            server.receive_data(control(1, struct.pack(">I", 0x7FFFFFFF)) + h0(6, 0, len(big), 9) + big),
            [SetChunkSize(0x7FFFFFFF), VideoData(0, 0, big)],
        )

    def test_header_needs_a_type_0_first(self):
        for chunk in (h3(6) + b"x", h2(6, 1) + b"x", h1(6, 1, 1, 9) + b"x"):
            server = ready_server()
            self.assertRaises(RTMPProtocolError, server.receive_data, chunk)

    def test_new_header_in_the_middle_of_a_message(self):
        server = ready_server()
        start = h0(6, 0, 200, 9) + b"a" * 128
        self.assertRaises(RTMPProtocolError, server.receive_data, start + h0(6, 0, 201, 9))
        server = ready_server()
        self.assertRaises(RTMPProtocolError, server.receive_data, start + h1(6, 0, 199, 9))
        # Same length: ffmpeg continues the message, so do we.
        server = ready_server()
        self.assertEqual(
            server.receive_data(start + h1(6, 5, 200, 9) + b"b" * 72),
            [VideoData(0, 0, b"a" * 128 + b"b" * 72)],
        )

    def test_zero_length_message(self):
        server = ready_server()
        self.assertEqual(
            server.receive_data(h0(6, 3, 0, 9) + h3(6) + h0(6, 9, 1, 8) + b"x"),
            [VideoData(0, 3, b""), VideoData(0, 6, b""), AudioData(0, 9, b"x")],
        )

    def test_oversize_message(self):
        server = ready_server(max_message_size=1000)
        server.receive_data(encode_message(6, 0, 9, 0, b"a" * 1000))
        exc = self.assertRaises(RTMPProtocolError, server.receive_data, h0(6, 0, 1001, 9))
        self.assertIn("1001", str(exc))
        self.assertRaises(RTMPProtocolError, server.receive_data, b"")
        server = ready_server(max_message_size=1000)
        server.receive_data(h0(6, 0, 10, 9) + b"a" * 10)
        self.assertRaises(RTMPProtocolError, server.receive_data, h1(6, 0, 1001, 9))
        server = ready_server()
        self.assertRaises(RTMPProtocolError, server.receive_data, h0(6, 0, 4 * 1024 * 1024 + 1, 9))

    def test_too_many_chunk_streams(self):
        server = ready_server(max_chunk_streams=4)
        for csid in (2, 3, 4, 5):
            server.receive_data(h0(csid, 0, 1, 9) + b"x")
        server.receive_data(h0(5, 0, 1, 9) + b"x")
        self.assertRaises(RTMPProtocolError, server.receive_data, h0(6, 0, 1, 9) + b"x")
        server = ready_server()
        data = b"".join(h0(csid, 0, 1, 9) + b"x" for csid in range(2, 66))
        self.assertEqual(len(server.receive_data(data)), 64)
        self.assertRaises(RTMPProtocolError, server.receive_data, h0(66, 0, 1, 9) + b"x")

    def test_pending_bytes_limit(self):
        server = ready_server(max_pending_bytes=1000)
        data = b"".join(h0(csid, 0, 400, 9) + b"x" * 128 for csid in range(3, 12))
        self.assertRaises(RTMPProtocolError, server.receive_data, data)
        # completed messages give their bytes back (a 900-byte message held
        # in 7 pieces of 128 costs 896 + 7 * PIECE_COST = 1232)
        server = ready_server(max_pending_bytes=1300)
        for _ in range(10):
            server.receive_data(h0(6, 0, 900, 9) + b"x" * 128)
            for _ in range(6):
                server.receive_data(h3(6) + b"x" * 128)
            server.receive_data(h3(6) + b"x" * 4)

    def test_abort(self):
        server = ready_server()
        events = server.receive_data(
            h0(6, 7, 300, 9) + b"a" * 128 + control(2, struct.pack(">I", 6)) + h0(6, 8, 2, 9) + b"ok"
        )
        self.assertEqual(events, [Abort(6), VideoData(0, 8, b"ok")])
        # a fmt 3 chunk after an abort starts a new message
        events = server.receive_data(
            h0(6, 100, 200, 9) + b"a" * 128 + control(2, struct.pack(">I", 6)) + h3(6) + b"b" * 128 + h3(6) + b"c" * 72
        )
        self.assertEqual(events, [Abort(6), VideoData(0, 200, b"b" * 128 + b"c" * 72)])
        # unknown chunk streams are fine
        self.assertEqual(server.receive_data(control(2, struct.pack(">I", 99))), [Abort(99)])

    def test_control_messages(self):
        server = ready_server()
        self.assertEqual(
            server.receive_data(
                control(3, struct.pack(">I", 123456))
                + control(4, b"\x00\x06\x00\x00\x01\x02")
                + control(4, b"\x00\x03\x00\x00\x00\x01\x00\x00\x0b\xb8")
                + control(5, struct.pack(">I", 2500000))
                + control(6, struct.pack(">IB", 5000000, 0))
                + control(6, struct.pack(">I", 5000000))
            ),
            [
                Acknowledgement(123456),
                UserControl(6, b"\x00\x00\x01\x02"),
                UserControl(3, b"\x00\x00\x00\x01\x00\x00\x0b\xb8"),
                WindowAckSize(2500000),
                SetPeerBandwidth(5000000, 0),
                SetPeerBandwidth(5000000, 2),
            ],
        )
        for type_id, payload in ((2, b"\x00"), (3, b""), (4, b"\x00"), (5, b"\x00\x00\x00"), (6, b"\x01")):
            server = ready_server()
            self.assertRaises(RTMPProtocolError, server.receive_data, control(type_id, payload))

    def test_amf3_variants(self):
        server = ready_server()
        command = b"\x00" + amf0.encode("connect", 1, {"app": "a"})
        data = b"\x00" + amf0.encode("onMetaData", ECMAArray(width=1.0))
        self.assertEqual(
            server.receive_data(
                h0(3, 0, len(command), 17) + command + h0(5, 4, len(data), 15, 1) + data
            ),
            [
                Command(0, 0, "connect", 1.0, {"app": "a"}, ()),
                DataMessage(1, 4, ("onMetaData", ECMAArray(width=1.0))),
            ],
        )
        for type_id in (15, 17):
            server = ready_server()
            self.assertRaises(RTMPProtocolError, server.receive_data, h0(3, 0, 0, type_id))

    def test_commands(self):
        def parse(payload):
            return ready_server().receive_data(h0(3, 0, len(payload), 20) + payload)

        self.assertEqual(
            parse(amf0.encode("onBWDone")), [Command(0, 0, "onBWDone", 0.0, None, ())]
        )
        self.assertEqual(
            parse(amf0.encode("x", None, None, UNDEFINED)),
            [Command(0, 0, "x", 0.0, None, (UNDEFINED,))],
        )
        for bad in (amf0.encode(1.0), amf0.encode("x", "1"), b"", b"\x02\x00\x05ab"):
            self.assertRaises(RTMPProtocolError, parse, bad)

    def test_unknown_message(self):
        server = ready_server()
        self.assertEqual(
            server.receive_data(h0(9, 77, 3, 22, 1) + b"agg"),
            [UnknownMessage(22, 1, 77, b"agg")],
        )

    def test_dead_after_error(self):
        server = ready_server()
        self.assertRaises(RTMPProtocolError, server.receive_data, h3(9) + b"x")
        exc = self.assertRaises(RTMPProtocolError, server.receive_data, h0(6, 0, 1, 9) + b"x")
        self.assertIn("already failed", str(exc))

    def test_partial_header_kept(self):
        server = ready_server()
        data = h0(320, 0xFFFFFFF, 5, 9, 3) + b"hello" + h3(320, 0xFFFFFFF) + b"again"
        events = []
        for i in range(len(data)):
            events += server.receive_data(data[i : i + 1])
        self.assertEqual(
            events,
            [VideoData(3, 0xFFFFFFF, b"hello"), VideoData(3, 0x1FFFFFFE, b"again")],
        )

    def test_accepts_buffers(self):
        server = ready_server()
        data = h0(6, 0, 2, 9) + b"ab"
        self.assertEqual(server.receive_data(bytearray(data)), [VideoData(0, 0, b"ab")])
        self.assertEqual(server.receive_data(memoryview(data)), [VideoData(0, 0, b"ab")])


class AcknowledgementTests(SynchronousTestCase):
    def setUp(self):
        self.pair = Pair()
        self.pair.pump()
        self.server, self.client = self.pair.server, self.pair.client
        self.pair.take()

    def test_window(self):
        # The handshake alone is more than the window: acknowledged at once.
        self.client.send_window_ack_size(1000)
        self.pair.pump()
        server_events, client_events = self.pair.take()
        self.assertEqual(server_events, [WindowAckSize(1000)])
        self.assertEqual(self.server.ack_window, 1000)
        self.assertEqual(client_events, [Acknowledgement(self.server.bytes_received)])
        first = self.server.bytes_received
        self.client.send_video(1, 0, b"x" * 500)
        self.pair.pump()
        self.assertEqual(self.pair.take()[1], [])
        self.client.send_video(1, 0, b"x" * 500)
        self.pair.pump()
        [ack] = self.pair.take()[1]
        self.assertEqual(ack, Acknowledgement(self.server.bytes_received))
        self.assertGreaterEqual(ack.sequence - first, 1000)
        # one acknowledgement per receive_data call, however many windows
        self.client.send_video(1, 0, b"x" * 5000)
        self.pair.pump()
        self.assertEqual(self.pair.take()[1], [Acknowledgement(self.server.bytes_received)])

    def test_no_window_no_acks(self):
        self.client.send_video(1, 0, b"x" * 100000)
        self.pair.pump()
        self.assertEqual(len(self.pair.take()[1]), 0)
        self.client.send_window_ack_size(0)
        self.client.send_video(1, 0, b"x" * 100000)
        self.pair.pump()
        self.assertEqual(self.pair.take()[1], [])

    def test_sequence_wraps(self):
        self.server.bytes_received = 0xFFFFFFFF - 10
        self.client.send_window_ack_size(5)
        self.pair.pump()
        [ack] = self.pair.take()[1]
        self.assertEqual(ack.sequence, self.server.bytes_received & 0xFFFFFFFF)
        self.assertLess(ack.sequence, 100)


class WriterTests(SynchronousTestCase):
    def setUp(self):
        self.conn = ready_server()

    def test_fmt0_then_fmt1(self):
        self.conn.send_video(1, 1000, b"abc")
        self.conn.send_video(1, 1040, b"de")
        self.conn.send_video(2, 1080, b"f")
        self.conn.send_video(2, 1000, b"g")  # backwards: fmt 0
        self.assertEqual(
            self.conn.data_to_send(),
            h0(7, 1000, 3, 9, 1) + b"abc"
            + h1(7, 40, 2, 9) + b"de"
            + h0(7, 1080, 1, 9, 2) + b"f"
            + h0(7, 1000, 1, 9, 2) + b"g",
        )

    def test_continuation_chunks(self):
        payload = bytes(range(256)) + b"x" * 44
        self.conn.send_audio(1, 5, payload)
        self.assertEqual(
            self.conn.data_to_send(),
            h0(6, 5, 300, 8, 1) + payload[:128] + h3(6) + payload[128:256] + h3(6) + payload[256:],
        )

    def test_extended_timestamp_repeated(self):
        payload = b"y" * 200
        self.conn.send_video(1, 0x1000000, payload)
        self.conn.send_video(1, 0x1000010, payload)
        self.assertEqual(
            self.conn.data_to_send(),
            h0(7, 0x1000000, 200, 9, 1) + payload[:128] + h3(7, 0x1000000) + payload[128:]
            + h1(7, 0x10, 200, 9) + payload[:128] + h3(7) + payload[128:],
        )

    def test_big_delta_uses_fmt0(self):
        self.conn.send_video(1, 0, b"a")
        self.conn.send_video(1, 0xFFFFFF, b"b")
        self.assertEqual(
            self.conn.data_to_send(),
            h0(7, 0, 1, 9, 1) + b"a" + h0(7, 0xFFFFFF, 1, 9, 1) + b"b",
        )

    def test_set_chunk_size_switches_after(self):
        self.conn.send_set_chunk_size(200)
        self.conn.send_video(0, 0, b"z" * 300)
        self.assertEqual(self.conn.out_chunk_size, 200)
        self.assertEqual(
            self.conn.data_to_send(),
            h0(2, 0, 4, 1) + struct.pack(">I", 200)
            + h0(7, 0, 300, 9) + b"z" * 200 + h3(7) + b"z" * 100,
        )
        for bad in (0, 0x80000000):
            self.assertRaises(ValueError, self.conn.send_set_chunk_size, bad)

    def test_control_helpers(self):
        conn = self.conn
        conn.send_window_ack_size(2500000)
        conn.send_set_peer_bandwidth(2500000, 2)
        conn.send_acknowledgement(0x1_0000_0005)
        conn.send_user_control(6, b"\x00\x00\x00\x09")
        conn.send_stream_begin(1)
        conn.send_stream_eof(1)
        conn.send_abort(6)
        self.assertEqual(
            conn.data_to_send(),
            h0(2, 0, 4, 5) + struct.pack(">I", 2500000)
            + h1(2, 0, 5, 6) + struct.pack(">IB", 2500000, 2)
            + h1(2, 0, 4, 3) + struct.pack(">I", 5)
            + h1(2, 0, 6, 4) + b"\x00\x06\x00\x00\x00\x09"
            + h1(2, 0, 6, 4) + b"\x00\x00\x00\x00\x00\x01"
            + h1(2, 0, 6, 4) + b"\x00\x01\x00\x00\x00\x01"
            + h1(2, 0, 4, 2) + struct.pack(">I", 6),
        )

    def test_commands_and_data(self):
        conn = self.conn
        conn.send_command(0, "_result", 4, None, 1)
        conn.send_status(1, "error", "NetStream.Publish.Rejected", "bad token")
        conn.send_status(1, "status", "NetStream.Play.Start", "go", details="s1")
        conn.send_data(1, 0, "onMetaData", ECMAArray(width=2.0))
        conn.send_audio(1, 3, b"\xaf\x01")
        server = ready_server()
        out = conn.data_to_send()
        self.assertEqual(out[0] & 0x3F, 3)
        self.assertEqual(
            server.receive_data(out),
            [
                Command(0, 0, "_result", 4.0, None, (1.0,)),
                Command(
                    1, 0, "onStatus", 0.0, None,
                    ({"level": "error", "code": "NetStream.Publish.Rejected", "description": "bad token"},),
                ),
                Command(
                    1, 0, "onStatus", 0.0, None,
                    ({"level": "status", "code": "NetStream.Play.Start", "description": "go", "details": "s1"},),
                ),
                DataMessage(1, 0, ("onMetaData", ECMAArray(width=2.0))),
                AudioData(1, 3, b"\xaf\x01"),
            ],
        )

    def test_encode_message(self):
        payload = bytes(range(256)) * 40
        data = encode_message(7, 1, 9, 0x1234567, payload, 4096)
        self.assertEqual(
            data,
            h0(7, 0x1234567, len(payload), 9, 1)
            + payload[:4096] + h3(7, 0x1234567) + payload[4096:8192] + h3(7, 0x1234567) + payload[8192:],
        )
        self.assertEqual(encode_message(7, 1, 9, 0x1234567 + 2**32, payload, 4096), data)
        self.assertEqual(encode_message(5, 0, 18, 0, b"ab"), h0(5, 0, 2, 18) + b"ab")
        for args in (
            (1, 0, 9, 0, b""),
            (65600, 0, 9, 0, b""),
            (3, -1, 9, 0, b""),
            (3, 2**32, 9, 0, b""),
            (3, 0, 256, 0, b""),
            (3, 0, 9, 0, bytes(0x1000000)),
        ):
            self.assertRaises(ValueError, encode_message, *args)
        self.assertRaises(ValueError, encode_message, 3, 0, 9, 0, b"", 0)

    def test_send_encoded(self):
        self.conn.send_set_chunk_size(4096)
        payload = b"k" * 5000
        shared = encode_message(7, 1, 9, 1000, payload, self.conn.out_chunk_size)
        self.conn.send_encoded(7, 1, 1000, shared)
        self.conn.send_video(1, 1033, b"p")
        server = ready_server()
        server.receive_data(control(1, struct.pack(">I", 4096)))
        out = self.conn.data_to_send()
        self.assertIn(h1(7, 33, 1, 9) + b"p", out)
        self.assertEqual(
            server.receive_data(out),
            [SetChunkSize(4096), VideoData(1, 1000, payload), VideoData(1, 1033, b"p")],
        )

    def test_payload_is_copied_when_mutable(self):
        payload = bytearray(b"abc")
        self.conn.send_video(0, 0, payload)
        payload[0] = ord("X")
        self.assertTrue(self.conn.data_to_send().endswith(b"abc"))

    def test_invalid_sends(self):
        self.assertRaises(ValueError, self.conn.send_message, 1, 0, 9, 0, b"")
        self.assertRaises(ValueError, self.conn.send_message, 3, 0, 300, 0, b"")
        self.assertRaises(ValueError, self.conn.send_message, 3, 0, 9, 0, bytes(0x1000000))
        self.assertRaises(TypeError, self.conn.send_command, 0, "x", 1, {"k": b"bytes"})


messages = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from([3, 4, 6, 7, 63, 64, 319, 320, 65599]),
            st.sampled_from([0, 1, 0xFFFFFFFF]),
            st.sampled_from([8, 9, 22, 0]),
            st.one_of(
                st.integers(0, 100),
                st.integers(0xFFFFF0, 0x1000010),
                st.integers(0, 2**32 - 1),
            ),
            st.binary(max_size=600),
        ),
        st.sampled_from([1, 64, 128, 4096, 0x7FFFFFFF]),  # a chunk size change
    ),
    max_size=25,
)


class RoundTripTests(SynchronousTestCase):
    @given(messages, st.lists(st.integers(0, 20000), max_size=20), st.booleans())
    def test_writer_to_parser(self, items, cuts, encoded):
        """
        Whatever the writer sends, the parser reads back, however the bytes
        are split.
        """
        client = RTMPConnection(CLIENT, random_bytes=fixed_random)
        server = RTMPConnection(SERVER, random_bytes=fixed_random)
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
        expected = [HandshakeComplete()]
        for item in items:
            if isinstance(item, int):
                client.send_set_chunk_size(item)
                expected.append(SetChunkSize(item))
                continue
            csid, sid, type_id, ts, payload = item
            if encoded and csid % 2:
                data = encode_message(csid, sid, type_id, ts, payload, client.out_chunk_size)
                client.send_encoded(csid, sid, ts, data)
            else:
                client.send_message(csid, sid, type_id, ts, payload)
            kind = {8: AudioData, 9: VideoData}.get(type_id)
            if kind is None:
                expected.append(UnknownMessage(type_id, sid, ts, payload))
            else:
                expected.append(kind(sid, ts, payload))
        wire = client.data_to_send()
        self.assertEqual(feed(server, wire, cuts_to_pieces(cuts, len(wire))), expected)
