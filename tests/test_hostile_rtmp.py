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

In memory (string transports, a fake clock) for the rules, and as floods
against a real C{twistd} subprocess whose RSS is read from /proc before and
after, with a stated bound.
"""

from __future__ import annotations

import socket
import struct
import time
import tracemalloc
from typing import Any, Callable, Optional

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

from .helpers import clock_at
from .test_rtmp_core import ready_server
from .service import TokengateProcess
from .test_rtmp_protocol import AAC_HEADER, AVC_HEADER, Peer, inter, key

#: the RSS growth a flood may cause in the server (the old code grew by
#: 691 MB for finding 5 and by 205 MB for finding 11)
RSS_BOUND = 50 * 1024 * 1024


def rss(pid: int) -> int:
    """
    @return: the resident set size of process C{pid}, in bytes.
    """
    with open("/proc/{}/status".format(pid)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for {}".format(pid))


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


class RawClient:
    """
    A blocking RTMP client on a real socket (L{RTMPConnection} as client),
    every wait bounded.
    """

    def __init__(self, port: int, rcvbuf: Optional[int] = None, timeout: float = 20.0) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.conn = RTMPConnection(CLIENT)
        self.events: list[Any] = []
        self.timeout = timeout
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def until(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError("timed out; events: {!r}".format(self.events[-5:]))
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("closed by the server; events: {!r}".format(
                    self.events[-5:]))
            self.events.extend(self.conn.receive_data(data))
            self.flush()

    def status(self, code: str) -> bool:
        return any(isinstance(e, Command) and e.name == "onStatus" and e.args
                   and e.args[0].get("code") == code for e in self.events)

    def result(self, txn: float) -> bool:
        return any(isinstance(e, Command) and e.name in ("_result", "_error")
                   and e.transaction_id == txn for e in self.events)

    def connect(self, app: str = "LiveApp") -> None:
        self.conn.send_command(0, "connect", 1, {"app": app,
                                                 "tcUrl": "rtmp://127.0.0.1/" + app})
        self.flush()
        self.until(lambda: self.result(1))

    def start(self, action: str, name: str) -> None:
        self.connect()
        self.conn.send_command(0, "createStream", 2, None)
        self.flush()
        self.until(lambda: self.result(2))
        if action == "publish":
            self.conn.send_command(1, "publish", 3, None, name, "live")
            code = "NetStream.Publish.Start"
        else:
            self.conn.send_command(1, "play", 3, None, name, -2000.0)
            code = "NetStream.Play.Start"
        self.flush()
        self.until(lambda: self.status(code))

    def sendRaw(self, data: bytes) -> bool:
        """
        @return: whether C{data} was sent (False: the server closed).
        """
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()


class ProcessFloodMixin:
    """
    A real tokengate process, its RSS before a flood, and the assertion
    after it.
    """

    def startServer(self: Any) -> TokengateProcess:
        tg = TokengateProcess(self.mktemp())
        self.addCleanup(tg.kill)
        tg.start()
        # Warm up (imports, first allocations) before the baseline.
        warm = RawClient(tg.rtmp)
        warm.connect()
        warm.close()
        time.sleep(0.5)
        return tg

    def assertGrowthBounded(self: Any, tg: TokengateProcess, before: int) -> None:
        after = rss(tg.proc.pid)
        self.assertLess(after - before, RSS_BOUND,
                        "RSS grew by {:.1f} MB".format((after - before) / 1e6))


class ChunkSizeFloodProcessTests(ProcessFloodMixin, SynchronousTestCase):
    """
    Finding 5 against a real server process.
    """

    def test_tinyChunksWithoutAToken(self) -> None:
        """
        Three connections that only C{connect}, set a chunk size of 2 and
        send two 4 MiB messages in 2-byte chunks (12.6 MB each, 37.7 MB in
        all; the old code grew by 691 MB) are closed early and the server
        grows by less than L{RSS_BOUND}.
        """
        tg = self.startServer()
        before = rss(tg.proc.pid)
        clients = []
        closed = 0
        length = 4 * 1024 * 1024
        block = b"\xc6xx" * 20000  # fmt 3 chunks of 2 bytes on csid 6
        for _ in range(3):
            c = RawClient(tg.rtmp)
            clients.append(c)
            c.connect()
            ok = c.sendRaw(fmt0(2, 4, 1, stream_id=0) + struct.pack(">I", 2))
            for csid in (6, 7):
                chunk = bytes([0xC0 | csid])
                ok = ok and c.sendRaw(fmt0(csid, length, 9) + b"xx")
                blk = block if csid == 6 else block.replace(b"\xc6", chunk)
                sent = 2
                while ok and sent + 40000 < length:
                    ok = c.sendRaw(blk)
                    sent += 40000
            closed += not ok
        time.sleep(1.0)
        self.assertGrowthBounded(tg, before)
        self.assertEqual(closed, 3)
        for c in clients:
            c.close()
        log = tg.logText()
        self.assertIn("bad RTMP from", log)


class StalledPlayerProcessTests(ProcessFloodMixin, SynchronousTestCase):
    """
    Finding 11 against a real server process: five players that never
    read, one publisher sending 1 MiB messages that every player is sent.
    """

    def flood(self, send: Callable[[RawClient, int], None], count: int = 40) -> bool:
        """
        Run the flood; assert the server's growth is bounded.

        @return: whether the server closed the publisher.
        """
        tg = self.startServer()
        pub = RawClient(tg.rtmp)
        pub.start("publish", "s1")
        pub.conn.send_video(1, 0, AVC_HEADER)
        pub.conn.send_video(1, 0, key())
        pub.flush()
        players = []
        for _ in range(5):
            p = RawClient(tg.rtmp, rcvbuf=4096)
            p.start("play", "s1")
            players.append(p)  # and never read again
        time.sleep(0.5)
        before = rss(tg.proc.pid)
        pub.conn.send_set_chunk_size(65536)
        closed = False
        for i in range(count):
            send(pub, i)
            try:
                pub.flush()
            except OSError:
                closed = True
                break
        # The publisher is sent acknowledgements; read them (not to stall it).
        pub.sock.settimeout(0.2)
        end = time.monotonic() + 3.0
        while time.monotonic() < end and not closed:
            try:
                closed = not pub.sock.recv(65536)
            except socket.timeout:
                pass
            except OSError:
                closed = True
        self.assertGrowthBounded(tg, before)
        for p in players + [pub]:
            p.close()
        return closed

    def test_metadataFlood(self) -> None:
        """
        40 C{onMetaData} messages of 1 MiB (the old code grew by 205 MB):
        over the 256 KiB bound of AMF messages, the publisher is closed.
        """
        big = "m" * (1024 * 1024)

        def send(pub: RawClient, i: int) -> None:
            pub.conn.send_data(1, 0, "@setDataFrame", "onMetaData",
                               amf0.ECMAArray({"n": float(i), "pad": big}))

        self.assertTrue(self.flood(send))

    def test_metadataWithinTheBoundsFlood(self) -> None:
        """
        400 C{onMetaData} messages just under the 64 KiB metadata bound
        (120 MB for five stalled players): the publisher stays, the players'
        share is bounded by the congestion rule.
        """
        pad = "m" * 60000

        def send(pub: RawClient, i: int) -> None:
            pub.conn.send_data(1, 0, "@setDataFrame", "onMetaData",
                               amf0.ECMAArray({"n": float(i), "pad": pad}))

        self.assertFalse(self.flood(send, count=400))

    def test_configFlood(self) -> None:
        """
        40 AVC sequence headers of 1 MiB: the write path of configuration,
        like that of metadata, obeys the congestion rule.
        """

        def send(pub: RawClient, i: int) -> None:
            pub.conn.send_video(1, 0, AVC_HEADER + bytes([i]) * (1024 * 1024))

        self.assertFalse(self.flood(send))
