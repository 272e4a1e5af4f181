"""
Hostile HTTP clients against a real C{twistd tokengate} (issue 10, finding 6):
hundreds of slowloris connections from one address, and the per-address
limit on the RTMP and HTTPS listeners. The in-memory tests of the same
findings are in L{tests.test_hostile_http}.
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
import time
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from tests.interop.test_store_redis import _write_certificates
from tests.service import TokengateProcess, free_port


def _rss(pid: int) -> int:
    with open("/proc/{}/status".format(pid)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _closed(sock: socket.socket, received: Optional[bytearray] = None) -> Optional[bytes]:
    """
    Everything the server sent on C{sock} once it has closed it, or None
    while it is open (what it sent so far is kept in C{received}).
    """
    if received is None:
        received = bytearray()
    for _ in range(64):
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in (errno.ECONNRESET, errno.EPIPE):
                return bytes(received)
            raise
        if not data:
            return bytes(received)
        received += data
    return None


class SlowlorisProcessTests(SynchronousTestCase):
    """
    Hundreds of slowloris connections from one address against
    C{twistd tokengate}: the limit closes the excess at once, the deadline
    closes the rest with a 408, and the server's memory stays put.
    """

    LIMIT = 64
    CONNECTIONS = 400
    TIMEOUT = 2.0
    #: growth of the server's RSS allowed during the flood
    RSS_BOUND = 8 * 1024 * 1024

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = free_port()
        # a listen backlog above the flood, so that no connect waits for a
        # SYN retry (the deadline would then free slots during the flood)
        self.tg = TokengateProcess(os.path.join(directory, "data"), http=port, extra=(
            "--http", "tcp:{}:interface=127.0.0.1:backlog=1024".format(port),
            "--store", "memory", "--max-connections-per-address", str(self.LIMIT),
            "--http-request-timeout", str(self.TIMEOUT),
        )).start()
        self.addCleanup(self.tg.stop)

    def test_flood(self) -> None:
        assert self.tg.proc is not None
        pid = self.tg.proc.pid
        # warm the server up (imports, first request paths) before measuring
        for _ in range(3):
            self.assertEqual(self.tg.get("/rest/v2/applications")[0], 200)
        before = _rss(pid)
        socks: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in socks])
        started = time.monotonic()
        for _ in range(self.CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", self.tg.http), timeout=5)
            s.setblocking(False)
            socks.append(s)
        self.assertLess(time.monotonic() - started, self.TIMEOUT / 2, "connecting was slow")
        results: dict[int, bytes] = {}
        received = [bytearray() for _ in socks]
        sent = 0
        request = b"GET /LiveApp/streams/x.m3u8 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: "
        deadline = started + self.TIMEOUT + 10.0
        peak = before
        while len(results) < len(socks) and time.monotonic() < deadline:
            # one more header byte on every open connection, every 0.25 s
            for i, s in enumerate(socks):
                if i in results:
                    continue
                try:
                    s.send(request[sent % len(request):][:1])
                except OSError:
                    pass
            sent += 1
            select.select([s for i, s in enumerate(socks) if i not in results], [], [], 0.25)
            for i, s in enumerate(socks):
                if i not in results:
                    got = _closed(s, received[i])
                    if got is not None:
                        results[i] = got
            peak = max(peak, _rss(pid))
        elapsed = time.monotonic() - started
        self.assertEqual(len(results), len(socks),
                         "{} connections still open after {:.1f} s".format(
                             len(socks) - len(results), elapsed))
        timedOut = [r for r in results.values() if r.startswith(b"HTTP/1.1 408 ")]
        self.assertEqual(len(timedOut), self.LIMIT)
        self.assertLess(elapsed, self.TIMEOUT + 8.0)
        self.assertLess(peak - before, self.RSS_BOUND,
                        "RSS grew {} bytes".format(peak - before))
        # both counted; the limit's refusals warned about once, not per connection
        metrics = self._metrics()
        self.assertEqual(metrics[("http", "connect", "address_limit")],
                         self.CONNECTIONS - self.LIMIT)
        self.assertEqual(metrics[("http", "request", "request_timeout")], self.LIMIT)
        self.assertLessEqual(self.tg.logText().count("refusing connections from"), 2)
        # and the address is served again
        self.assertEqual(self.tg.get("/rest/v2/applications")[0], 200)

    def _metrics(self) -> dict[tuple[str, str, str], float]:
        import urllib.request

        with urllib.request.urlopen(self.tg.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        found = {}
        for m in re.finditer(r'tokengate_refusals_total\{action="(\w+)",protocol="(\w+)",'
                             r'reason="(\w+)"\} ([0-9.e+]+)', text):
            found[(m.group(2), m.group(1), m.group(3))] = float(m.group(4))
        return found


class ListenerLimitProcessTests(SynchronousTestCase):
    """
    The same limit on the RTMP and HTTPS listeners of a real server: the
    connections past it are closed at once (under HTTPS before any TLS
    handshake), the others stay open and the HTTPS site still answers.
    """

    LIMIT = 4

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.ca, cert, key, _ = _write_certificates(directory)
        self.https = free_port()
        self.tg = TokengateProcess(os.path.join(directory, "data"), extra=(
            "--store", "memory", "--max-connections-per-address", str(self.LIMIT),
            "--https", "ssl:{}:interface=127.0.0.1".format(self.https),
            "--certificate", cert, "--private-key", key,
        )).start()
        self.addCleanup(self.tg.stop)

    def flood(self, port: int) -> tuple[list[socket.socket], list[socket.socket]]:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5)
                 for _ in range(self.LIMIT + 6)]
        self.addCleanup(lambda: [s.close() for s in socks])
        time.sleep(0.5)
        closed, open_ = [], []
        for s in socks:
            s.setblocking(False)
            (closed if _closed(s) is not None else open_).append(s)
        return closed, open_

    def test_rtmpAndHttps(self) -> None:
        import ssl
        import urllib.request

        closed, open_ = self.flood(self.tg.rtmp)
        self.assertEqual((len(closed), len(open_)), (6, self.LIMIT))
        closed, open_ = self.flood(self.https)
        self.assertEqual((len(closed), len(open_)), (6, self.LIMIT))
        for s in open_:
            s.close()
        time.sleep(0.5)
        context = ssl.create_default_context(cafile=self.ca)
        with urllib.request.urlopen("https://127.0.0.1:{}/time".format(self.https),
                                    timeout=10, context=context) as r:
            self.assertEqual(r.status, 200)
        with urllib.request.urlopen(self.tg.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        for protocol in ("rtmp", "https"):
            self.assertIn('tokengate_refusals_total{action="connect",protocol="%s",'
                          'reason="address_limit"} 6.0' % protocol, text)
