"""
The internal feed (C{/internal/v1/feed/...}) against hostile clients, on a
real C{twistd tokengate} origin with a cluster secret and ffmpeg
publishing:

 - a flood of feed requests without a valid credential: every one 403,
   counted, nothing served, and the server's RSS within L{FLOOD_RSS_BOUND};
 - "edges" holding a valid credential that never read: each is dropped
   within the congestion bound (L{tokengate.cluster.origin.MAX_CONGESTION}
   seconds, or L{tokengate.cluster.origin.MAX_CONGESTED_BYTES} written to
   its full connection), counted, and the server's RSS afterwards within
   L{SLOW_RSS_BOUND} of before.
"""

from __future__ import annotations

import http.client
import re
import socket
import time
import urllib.request

from twisted.trial.unittest import TestCase

from tokengate.cluster.feed import feedCredential, feedKey
from tokengate.cluster.origin import MAX_CONGESTED_BYTES, MAX_CONGESTION

from tests import procs
from tests.fixtures import test_clip
from tests.helpers import require
from tests.interop.test_hostile_http import _rss
from tests.service import TokengateProcess

SECRET = "h" * 40
FLOOD = 1500
FLOOD_RSS_BOUND = 4 * 1024 * 1024
SLOW_EDGES = 12
#: what the edges that do not read may leave behind: each one's bound
#: (MAX_CONGESTED_BYTES written to its full connection), twice (Twisted's
#: transport joins its pending writes into one buffer), and a margin;
#: unbounded, 12 edges of a 3 MB/s stream would hold ~36 MB more each
#: second, over 500 MB by the time it is measured (STUCK seconds)
SLOW_RSS_BOUND = SLOW_EDGES * 2 * MAX_CONGESTED_BYTES + 16 * 1024 * 1024
STUCK = MAX_CONGESTION + 5


def metric(tg: TokengateProcess, name: str, labels: str) -> float:
    with urllib.request.urlopen(tg.base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(re.escape(name) + r"\{" + re.escape(labels) + r"\} ([0-9.e+]+)", text)
    return float(m.group(1)) if m else 0.0


class _Origin(TestCase):
    """
    An origin with a cluster secret, ffmpeg publishing C{clip()} to it.
    """

    timeout = 180

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        self.tg = TokengateProcess(self.mktemp(), extra=("--cluster-secret", SECRET))
        self.addCleanup(self.tg.kill)
        self.tg.start(timeout=60)
        clip = self.clip()
        self.publisher = procs.start(
            # quiet: this test blocks the reactor that would read its output
            [self.ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-nostats", "-re", "-stream_loop", "-1", "-i",
             clip, "-c", "copy", "-f", "flv",
             "rtmp://127.0.0.1:{}/LiveApp/s1".format(self.tg.rtmp)], timeout=150)
        self.addCleanup(self._stop)
        deadline = time.monotonic() + 30
        while self.tg.get("/LiveApp/rest/v2/broadcasts/s1")[0] != 200:
            if time.monotonic() > deadline:
                self.fail("s1 not live")
            time.sleep(0.2)

    def clip(self) -> str:
        return test_clip()

    async def _stop(self) -> None:
        self.publisher.kill()
        await self.publisher.done

    def headers(self, node="edge", expiry=None, key=None, stream="s1"):
        expiry = expiry or int(time.time()) + 30
        credential = feedCredential(key or feedKey(SECRET), "LiveApp", stream, node, expiry)
        return {"X-Tokengate-Node": node, "X-Tokengate-Expires": str(expiry),
                "Authorization": "TokengateFeed " + credential}



class FeedFloodTests(_Origin):
    def test_unauthenticatedFlood(self) -> None:
        before = _rss(self.tg.proc.pid)
        wrong = [{}, self.headers(key=feedKey("x" * 40)), self.headers(stream="s2"),
                 self.headers(expiry=int(time.time()) - 3600),
                 dict(self.headers(), Authorization="TokengateFeed " + "0" * 64)]
        connection = http.client.HTTPConnection("127.0.0.1", self.tg.http, timeout=10)
        codes = set()
        for i in range(FLOOD):
            connection.request("GET", "/internal/v1/feed/LiveApp/s1",
                               headers=wrong[i % len(wrong)])
            response = connection.getresponse()
            codes.add(response.status)
            body = response.read()
            self.assertNotIn(b"FLV", body)
        connection.close()
        after = _rss(self.tg.proc.pid)
        self.assertEqual(codes, {403})
        self.assertEqual(metric(self.tg, "tokengate_feed_requests_total", 'outcome="forbidden"'),
                         FLOOD)
        self.assertLess(after - before, FLOOD_RSS_BOUND,
                        "RSS grew from {} to {}".format(before, after))



class StuckEdgesTests(_Origin):
    def clip(self) -> str:
        """
        A 3 MB/s stream (lossless noise): it fills a stuck connection's
        kernel buffers within seconds.
        """
        import os
        import subprocess

        clip = os.path.join(self.tg.dataDir, "noise.flv")
        subprocess.run([self.ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i",
                        "nullsrc=s=320x240:r=25,geq=lum='random(1)*255':cb=128:cr=128",
                        "-t", "3", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0",
                        "-g", "25", "-pix_fmt", "yuv420p", "-f", "flv", clip],
                       check=True, timeout=60)
        return clip

    def test_edgesThatDoNotRead(self) -> None:
        before = _rss(self.tg.proc.pid)
        socks = []
        for _ in range(SLOW_EDGES):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", self.tg.http))
            lines = ["GET /internal/v1/feed/LiveApp/s1 HTTP/1.1", "Host: origin"]
            lines += ["{}: {}".format(k, v) for k, v in self.headers().items()]
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            socks.append(s)
        try:
            # stuck for STUCK seconds: every one is dropped by then
            time.sleep(STUCK)
            after = _rss(self.tg.proc.pid)
            self.assertEqual(metric(self.tg, "tokengate_feed_dropped_total", 'reason="slow"'),
                             SLOW_EDGES)
        finally:
            for s in socks:
                s.close()
        self.assertEqual(metric(self.tg, "tokengate_feed_requests_total", 'outcome="served"'),
                         SLOW_EDGES)
        self.assertLess(after - before, SLOW_RSS_BOUND,
                        "RSS grew from {} to {}".format(before, after))
        # the origin still serves an edge that reads
        connection = http.client.HTTPConnection("127.0.0.1", self.tg.http, timeout=10)
        connection.request("GET", "/internal/v1/feed/LiveApp/s1", headers=self.headers())
        response = connection.getresponse()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.read(3), b"FLV")
        connection.close()
