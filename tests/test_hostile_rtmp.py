"""
Hostile RTMP clients (issue 10, findings 5 and 11, and RTMP's deadlines).

Finding 5: connections that only C{connect} and then send with a Set Chunk
Size of 2 grew the server by ~18x the bytes they sent; the parser now
charges every byte it holds (per-chunk bookkeeping included) to a budget
that is small until a publish or play is admitted.

Finding 11: RTMP players that never read buffered the publisher's metadata
without limit; metadata is now bounded in size and every write to an RTMP
connection obeys one congestion rule (bytes queued while congested, time
congested).

In memory (string transports, a fake clock) for the rules; the floods
against a real C{twistd} subprocess, whose RSS is read from /proc before and
after with a stated bound, are in L{tests.interop.test_hostile_rtmp}.
"""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase

from tokengate.apps import Applications
from tokengate.rtmp import amf0
from tokengate.rtmp.core import (
    CLIENT,
    SERVER,
    Command,
    RTMPConnection,
    RTMPProtocolError,
    VideoData,
    encode_message,
)
from tokengate.rtmp.protocol import (
    ADMISSION_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    MAX_CONGESTED_BYTES,
    MAX_CONGESTION,
    MAX_AMF_MESSAGE,
    MAX_METADATA_BYTES,
    UNADMITTED_MAX_PENDING,
    RTMPFactory,
)
from tokengate.server import Server
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import StoredToken, new_token

from .fixtures import RecordingPolicy
from .helpers import clock_at
from .test_rtmp_core import ready_server
from .test_rtmp_protocol import AAC_HEADER, AVC_HEADER, Peer, inter, key


def fmt0(csid: int, length: int, type_id: int, stream_id: int = 1, ts: int = 0) -> bytes:
    """
    A type 0 chunk header (C{csid} < 64).
    """
    return (bytes([csid]) + ts.to_bytes(3, "big") + length.to_bytes(3, "big")
            + bytes([type_id]) + struct.pack("<I", stream_id))


def tinyChunks(csid: int, length: int, count: int) -> bytes:
    """
    The first C{count} 2-byte chunks of a C{length}-byte video message on
    C{csid}, after a Set Chunk Size of 2.
    """
    return (fmt0(2, 4, 1, stream_id=0) + struct.pack(">I", 2) + fmt0(csid, length, 9)
            + b"ab" + (bytes([0xC0 | csid]) + b"cd") * (count - 1))


def dropped(server: Server, reason: str) -> float:
    return server.metrics.registry.get_sample_value(
        "tokengate_connections_dropped_total", {"protocol": "rtmp", "reason": reason}) or 0.0


class ParserBudgetTests(SynchronousTestCase):
    """
    The sans-IO parser holds bytes, not chunks: per-chunk bookkeeping is
    charged to its budget and tiny chunks are coalesced.
    """

    def test_tinyChunksHitTheBudgetEarly(self) -> None:
        """
        A 4 MiB message in 2-byte chunks fails as a limit before the parser
        holds more than its budget (the old parser held ~43 bytes of objects
        per 2 bytes of payload, up to ~350 MB for its 8 MiB budget).
        """
        server = ready_server(max_pending_bytes=64 * 1024)
        data = tinyChunks(6, 4 * 1024 * 1024, 100_000)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        fed = 0
        with self.assertRaises(RTMPProtocolError) as caught:
            for i in range(0, len(data), 4096):
                server.receive_data(data[i : i + 4096])
                fed += 4096
                self.assertLessEqual(server.pending_bytes, 64 * 1024)
        self.assertTrue(caught.exception.limit)
        self.assertLess(fed, 3 * 64 * 1024)
        self.assertLess(tracemalloc.get_traced_memory()[1], 2 * 1024 * 1024)

    def test_tinyChunksWithinTheBudgetParse(self) -> None:
        """
        A peer with a tiny chunk size still gets its budget's worth of
        bytes, held in about as many bytes of memory.
        """
        length = 1024 * 1024
        server = ready_server(max_pending_bytes=length + 64 * 1024)
        data = tinyChunks(6, length, length // 2)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        events = []
        last = len(data) - 3
        for i in range(0, last, 65536):
            events += server.receive_data(data[i : min(i + 65536, last)])
        held = tracemalloc.get_traced_memory()[0] - before
        self.assertEqual([e for e in events if isinstance(e, VideoData)], [])
        self.assertLess(held, 1.3 * length)
        self.assertLessEqual(server.pending_bytes, length + 64 * 1024)
        events = server.receive_data(data[last:])
        self.assertEqual(events, [VideoData(1, 0, b"ab" + b"cd" * (length // 2 - 1))])
        self.assertEqual(server.pending_bytes, 0)

    def test_limitAndMalformedAreTold(self) -> None:
        server = ready_server(max_message_size=1000)
        with self.assertRaises(RTMPProtocolError) as caught:
            server.receive_data(fmt0(6, 1001, 9))
        self.assertTrue(caught.exception.limit)
        server = ready_server()
        with self.assertRaises(RTMPProtocolError) as caught:
            server.receive_data(b"\xc6x")  # fmt 3 on a chunk stream never opened
        self.assertFalse(caught.exception.limit)

    def test_amfBoundApartFromMedia(self) -> None:
        server = ready_server(max_amf_message_size=100)
        self.assertEqual(server.receive_data(encode_message(6, 1, 9, 0, bytes(2000))),
                         [VideoData(1, 0, bytes(2000))])
        payload = amf0.encode("x" * 200)
        with self.assertRaises(RTMPProtocolError) as caught:
            server.receive_data(encode_message(5, 0, 18, 0, payload))
        self.assertTrue(caught.exception.limit)

    @given(
        chunk=st.integers(1, 300),
        lengths=st.lists(st.integers(0, 3000), min_size=1, max_size=6),
        cuts=st.lists(st.integers(0, 30000), max_size=20),
    )
    def test_reassemblyAndAccounting(self, chunk: int, lengths: list[int],
                                     cuts: list[int]) -> None:
        """
        Whatever the chunk size and the read boundaries, messages come out
        whole, the bytes held never exceed the budget and go back to 0.
        """
        client = RTMPConnection(CLIENT)
        server = RTMPConnection(SERVER, max_pending_bytes=50_000)
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
        client.send_set_chunk_size(chunk)
        payloads = [bytes([i % 251]) * n for i, n in enumerate(lengths)]
        for i, payload in enumerate(payloads):
            client.send_video(1, i, payload)
        wire = client.data_to_send()
        points = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
        events = []
        for a, b in zip(points, points[1:]):
            events += server.receive_data(wire[a:b])
            self.assertLessEqual(server.pending_bytes, 50_000)
        self.assertEqual([e.payload for e in events if isinstance(e, VideoData)], payloads)
        self.assertEqual(server.pending_bytes, 0)


class _Harness:
    """
    A server and its RTMP factory on a fake clock, with a publisher and
    players of C{LiveApp/s1} (no tokens).
    """

    def setUp(self: Any) -> None:
        self.clock = clock_at()
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(),
                             clock=self.clock)
        self.factory = RTMPFactory(self.server.access, self.server.clock, self.server.metrics)

    def publisher(self: Any) -> Peer:
        pub = Peer(self)
        pub.publish("s1")
        pub.media(video=[(0, AVC_HEADER), (0, key())], audio=[(0, AAC_HEADER)])
        return pub

    def player(self: Any) -> Peer:
        player = Peer(self, "192.0.2.20")
        player.connect()
        player.command("play", 3, None, "s1", -2000.0, stream_id=1)
        self.assertEqual(player.statuses()[-1]["code"], "NetStream.Play.Start")
        return player


class InMemoryTests(_Harness, SynchronousTestCase):
    """
    The protocol's budgets, deadlines and congestion rule over string
    transports on a fake clock.
    """

    # --- budgets -------------------------------------------------------------

    def test_unadmittedTinyChunkFlood(self) -> None:
        """
        A connection that only connected and floods 2-byte chunks is closed
        before it is held more than its small budget, and counted.
        """
        peer = Peer(self)
        peer.connect()
        data = tinyChunks(6, 4 * 1024 * 1024, 200_000)
        for i in range(0, len(data), 65536):
            if not peer.transport.connected:
                break
            peer.proto.dataReceived(data[i : i + 65536])
            self.assertLessEqual(peer.proto.conn.pending_bytes, UNADMITTED_MAX_PENDING)
        self.assertFalse(peer.transport.connected)
        self.assertLess(i, 3 * UNADMITTED_MAX_PENDING)
        self.assertEqual(dropped(self.server, "limit"), 1)

    def test_unadmittedBigMessage(self) -> None:
        """
        Before admission a message over 32 KiB is refused; an admitted
        publisher may send the parser's full 4 MiB.
        """
        peer = Peer(self)
        peer.connect()
        peer.client.send_data(0, 0, "x" * 40000)
        peer.pump()
        self.assertFalse(peer.transport.connected)
        self.assertEqual(dropped(self.server, "limit"), 1)
        pub = self.publisher()
        big = bytes([0x17, 0x01]) + b"k" * (3 * 1024 * 1024)
        pub.media(video=[(40, big)])
        self.assertTrue(pub.transport.connected)
        self.assertEqual(self.server.hub.get("LiveApp", "s1").gop[0].body, big)

    def test_amfMessagesBoundApart(self) -> None:
        """
        An admitted publisher may send 4 MiB of video, but a command or data
        message over L{MAX_AMF_MESSAGE} (decoded AMF takes many times its
        size) closes it.
        """
        pub = self.publisher()
        many = amf0.ECMAArray({str(i): None for i in range(60000)})
        self.assertGreater(len(amf0.encode(many)), MAX_AMF_MESSAGE)
        pub.client.send_data(1, 0, "@setDataFrame", "onMetaData", many)
        pub.pump()
        self.assertFalse(pub.transport.connected)
        self.assertEqual(dropped(self.server, "limit"), 1)

    def test_metadataBound(self) -> None:
        """
        C{onMetaData} over L{MAX_METADATA_BYTES} is ignored (counted); the
        stream keeps the last metadata within the bound.
        """
        pub = self.publisher()
        pub.client.send_data(1, 0, "@setDataFrame", "onMetaData", {"width": 320.0})
        pub.pump()
        pub.client.send_data(1, 0, "@setDataFrame", "onMetaData",
                             amf0.ECMAArray({"pad": "p" * MAX_METADATA_BYTES}))
        pub.pump()
        self.assertTrue(pub.transport.connected)
        self.assertEqual(self.server.hub.get("LiveApp", "s1").metadata, {"width": 320.0})
        self.assertEqual(self.server.metrics.registry.get_sample_value(
            "tokengate_refusals_total",
            {"protocol": "rtmp", "action": "metadata", "reason": "too_large"}), 1)

    # --- deadlines -------------------------------------------------------------

    def test_handshakeTrickle(self) -> None:
        """
        One handshake byte a second does not keep a connection past
        L{HANDSHAKE_TIMEOUT}.
        """
        peer = Peer(self)
        hs = b"\x03" + bytes(3072)
        for i in range(30):
            if not peer.transport.connected:
                break
            peer.proto.dataReceived(hs[i : i + 1])
            self.clock.advance(1)
        self.assertEqual(i, int(HANDSHAKE_TIMEOUT))
        self.assertEqual(dropped(self.server, "handshake_timeout"), 1)

    def test_connectedButNeverAdmitted(self) -> None:
        """
        A connection that connected and keeps sending pings (never idle) is
        closed L{ADMISSION_TIMEOUT} after it connected.
        """
        peer = Peer(self)
        peer.connect()
        for i in range(60):
            if not peer.transport.connected:
                break
            peer.client.send_user_control(6, b"\0\0\0\1")
            peer.pump()
            self.clock.advance(1)
        self.assertEqual(i, int(ADMISSION_TIMEOUT))
        self.assertEqual(dropped(self.server, "admission_timeout"), 1)

    def test_createStreamsThenIdle(self) -> None:
        """
        Streams are bounded per connection, and an idle connection closes.
        """
        peer = Peer(self)
        peer.connect()
        for txn in range(3, 20):
            peer.command("createStream", txn, None)
        results = [e for e in peer.events if isinstance(e, Command) and e.name == "_result"
                   and e.transaction_id >= 2]
        self.assertEqual(len(results), 8)
        self.clock.advance(ADMISSION_TIMEOUT)
        self.assertFalse(peer.transport.connected)

    def test_admittedOutliveTheDeadline(self) -> None:
        pub = self.publisher()
        player = self.player()
        for t in range(1, 8):
            self.clock.advance(10)
            pub.media(video=[(t * 1000, key(t))])
            player.pump()
        self.assertTrue(pub.transport.connected and player.transport.connected)
        # a publisher that goes silent is dropped as idle
        self.clock.advance(31)
        self.assertFalse(pub.transport.connected)
        self.assertEqual(dropped(self.server, "idle_timeout"), 1)

    # --- the congestion rule -----------------------------------------------------

    def test_metadataAndConfigWaitForTheKeyframe(self) -> None:
        """
        A congested player is sent no metadata or sequence header; when it
        recovers, the next keyframe comes after the current ones.
        """
        pub = self.publisher()
        player = self.player()
        player.events.clear()
        player.proto.pauseProducing()
        new_avc = AVC_HEADER + b"\x01"
        pub.client.send_data(1, 0, "@setDataFrame", "onMetaData", {"width": 640.0})
        pub.media(video=[(40, new_avc), (40, inter())])
        self.assertEqual(player.transport.value(), b"")
        player.proto.resumeProducing()
        pub.media(video=[(80, inter())])
        self.assertEqual(player.transport.value(), b"")
        pub.media(video=[(120, key(3))])
        player.pump()
        got = [(type(e).__name__, getattr(e, "payload", None) or e.values[1])
               for e in player.events]
        self.assertEqual(got, [("DataMessage", {"width": 640.0}),
                               ("VideoData", new_avc), ("AudioData", AAC_HEADER),
                               ("VideoData", key(3))])

    def test_congestedWithoutFramesIsCut(self) -> None:
        """
        The time rule does not wait for a frame: a player congested for
        L{MAX_CONGESTION} is closed while only metadata flows.
        """
        pub = self.publisher()
        player = self.player()
        other = self.player()
        player.proto.pauseProducing()
        for i in range(int(MAX_CONGESTION) + 1):
            pub.client.send_data(1, 0, "@setDataFrame", "onMetaData", {"n": float(i)})
            pub.pump()
            self.clock.advance(1)
        self.assertFalse(player.transport.connected)
        self.assertTrue(other.transport.connected and pub.transport.connected)
        self.assertEqual(dropped(self.server, "slow_reader"), 1)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {"rtmp": 1})

    def test_bytesQueuedWhileCongested(self) -> None:
        """
        Any write counts: a client that does not read but makes the server
        answer (pings) is closed after L{MAX_CONGESTED_BYTES}.
        """
        pub = self.publisher()
        pub.proto.pauseProducing()
        pub.client.send_user_control(6, b"\0\0\0\1")
        ping = pub.client.data_to_send()
        written = len(pub.transport.value())
        for _ in range(MAX_CONGESTED_BYTES // 10):
            if not pub.transport.connected:
                break
            pub.proto.dataReceived(ping)
        self.assertFalse(pub.transport.connected)
        self.assertLessEqual(len(pub.transport.value()) - written, MAX_CONGESTED_BYTES)
        self.assertEqual(dropped(self.server, "slow_reader"), 1)
        self.assertFalse(self.server.hub.isLive("LiveApp", "s1"))


class _SlowTransport(StringTransportWithDisconnection):
    """
    A transport whose C{loseConnection} waits for a buffer that does not
    drain (the peer does not read); only C{abortConnection} closes it.
    """

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        StringTransportWithDisconnection.loseConnection(self)


class ClosingTests(_Harness, SynchronousTestCase):
    def test_closeOfACongestedPlayerIsBounded(self) -> None:
        """
        A player told the stream ended while its socket is full is closed
        within L{MAX_CONGESTION}, its producer unregistered first (a paused
        streaming producer keeps a Twisted transport open forever).
        """
        pub = self.publisher()
        player = Peer(self, "192.0.2.20")
        slow = _SlowTransport(peerAddress=player.transport.getPeer())
        slow.protocol = player.proto
        player.proto.transport = slow
        player.proto._tcp = slow  # the transport it cached when connected
        player.transport = slow
        slow.registerProducer(player.proto, True)
        player.connect()
        player.command("play", 3, None, "s1", -2000.0, stream_id=1)
        player.proto.pauseProducing()
        pub.transport.loseConnection()
        self.clock.advance(0.2)
        self.assertTrue(slow.disconnecting)
        self.assertIsNone(slow.producer)
        self.assertTrue(slow.connected)
        # its buffer drains a little: the congestion timer is off, not the close
        player.proto.resumeProducing()
        self.clock.advance(MAX_CONGESTION)
        self.assertFalse(slow.connected)
        self.assertEqual(dropped(self.server, "slow_reader"), 1)


class SubscriberFieldsTests(SynchronousTestCase):
    """
    Issue 12's request fields from a hostile RTMP client: a name carrying
    thousands of query pairs, or a subscriber id and code as long as the
    unadmitted message bound allows, is refused as malformed (counted
    C{invalid}) before any policy or token is asked (the token kept), and
    only that client is closed.
    """

    def setUp(self) -> None:
        self.clock = clock_at()
        self.policy = RecordingPolicy()
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=self.clock,
                             extraPolicies=[self.policy])
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True)
        self.factory = RTMPFactory(self.server.access, self.server.clock, self.server.metrics)

    def test_floodedNames(self) -> None:
        token = new_token("s1", "publish", int(self.clock.seconds()) + 60)
        self.server.store.add(StoredToken.fromToken("LiveApp", token))
        names = [
            "s1?token={}&".format(token.tokenId) + "&".join("k{}=v".format(i)
                                                            for i in range(4000)),
            "s1/{}/{}/123456".format(token.tokenId, "a" * 20000),
            "s1?token={}&subscriberCode={}".format(token.tokenId, "9" * 20000),
        ]
        bystander = Peer(self, "192.0.2.99")
        bystander.connect()
        for name in names:
            self.assertLess(len(name), 32 * 1024)
            peer = Peer(self)
            peer.publish(name)
            status = peer.statuses()[-1]
            self.assertEqual(status["code"], "NetStream.Publish.BadName")
            self.clock.advance(0.2)
            self.assertFalse(peer.transport.connected)
        self.assertEqual(self.policy.asked, [])
        self.assertEqual(self.server.metrics.refusals.labels("rtmp", "publish", "invalid")
                         ._value.get(), len(names))
        self.assertTrue(bystander.transport.connected)
        # the token was kept
        peer = Peer(self)
        peer.publish("s1?token=" + token.tokenId)
        self.assertEqual(peer.statuses()[-1]["code"], "NetStream.Publish.Start")
        self.assertEqual(self.policy.last.params, ())
