"""
Hostile RTMP clients against a real C{twistd} subprocess (issue 10,
findings 5 and 11): floods whose effect on the server's RSS, read from /proc
before and after, must stay within a stated bound. The rules themselves are
tested in memory in L{tests.test_hostile_rtmp}.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any, Callable, Optional

from twisted.trial.unittest import SynchronousTestCase

from tokengate.rtmp import amf0
from tokengate.rtmp.core import CLIENT, Command, RTMPConnection

from tests.service import TokengateProcess
from tests.test_hostile_rtmp import fmt0
from tests.test_rtmp_protocol import AVC_HEADER, key


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
