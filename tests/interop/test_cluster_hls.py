"""
HLS and DASH without sticky sessions, between real tokengate processes
(C{twistd tokengate}, distinct loopback ports) on one real redis-server:
ffmpeg publishes RTMP at A (the origin); ffmpeg plays HLS, then DASH,
through a round-robin HTTP proxy written here, which sends each request
to the other node in turn, with one play token each.

Every node serves the origin's packager output (B fetches it from A over
the internal media channel), so the playlists and segment names are the
same on both, and a player that moves between them plays: frames decoded,
and both nodes served segments.  Chromium plays play.html through the same
proxy: hls.js in low-latency mode (LL-HLS blocking reloads, forwarded by
B to A) and dash.js.
"""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests import procs
from tests.fixtures import frames, test_clip
from tests.helpers import require
from tests.redisserver import start_redis_server
from tests.service import TokengateProcess

SETTINGS = "/rest/v2/applications/settings/LiveApp"
CLUSTER_SECRET = "c" * 40
SESSION_SECRET = "s" * 40

#: request headers the proxy passes on (hop-by-hop ones are not)
_PASSED = (b"host", b"cookie", b"range", b"user-agent", b"accept")
_RETURNED = (b"content-type", b"set-cookie", b"cache-control", b"content-range",
             b"accept-ranges", b"location")


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def metric(tg: TokengateProcess, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(tg.base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") \
        + r" ([0-9.e+]+)"
    m = re.search(pattern, text)
    return float(m.group(1)) if m else 0.0


class RoundRobin(Resource):
    """
    A reverse proxy sending each request to the next backend in turn, and
    remembering (backend index, path, status) of each.
    """

    isLeaf = True

    def __init__(self, backends: list[str]) -> None:
        super().__init__()
        from twisted.web.client import Agent, HTTPConnectionPool

        self.backends = backends
        self.turn = 0
        self.log: list[tuple[int, str, int]] = []
        #: the query of each request, in the order of L{log}
        self.queries: list[str] = []
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, connectTimeout=5, pool=self.pool)

    def render(self, request: Any) -> Any:
        from twisted.web.client import readBody
        from twisted.web.http_headers import Headers

        index = self.turn % len(self.backends)
        self.turn += 1
        headers = Headers()
        for name in _PASSED:
            values = request.requestHeaders.getRawHeaders(name)
            if values:
                headers.setRawHeaders(name, values)
        url = self.backends[index].encode("ascii") + request.uri
        d = self.agent.request(request.method, url, headers)

        def answered(response: Any) -> "Deferred[None]":
            request.setResponseCode(response.code)
            for name in _RETURNED:
                values = response.headers.getRawHeaders(name)
                if values:
                    request.responseHeaders.setRawHeaders(name, values)
            path = request.uri.split(b"?", 1)[0].decode("ascii", "replace")
            self.log.append((index, path, response.code))
            self.queries.append(request.uri.partition(b"?")[2].decode("ascii", "replace"))
            body = readBody(response)

            def write(data: bytes) -> None:
                if not request._disconnected:
                    if request.method != b"HEAD":
                        request.write(data)
                    request.finish()

            return body.addCallback(write)

        def failed(f: Any) -> None:
            if not request._disconnected:
                request.setResponseCode(502)
                request.finish()

        d.addCallback(answered).addErrback(failed)
        return NOT_DONE_YET

    def segments(self, node: int, extension: str = ".m4s") -> int:
        """
        Segments (or parts) node C{node} answered 200.
        """
        return sum(1 for i, path, code in self.log
                   if i == node and path.endswith(extension) and code == 200)


def segmentNames(playlist: str) -> list[str]:
    """
    The segment URIs of a media playlist, their query left out.
    """
    return [line.split("?", 1)[0] for line in playlist.splitlines()
            if line and not line.startswith("#")]


class NoStickySessionsTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        redis = start_redis_server(self)
        self.nodes = []
        for _ in range(2):
            tg = TokengateProcess(self.mktemp(), extra=(
                "--store", redis.url, "--cluster-secret", CLUSTER_SECRET,
                "--session-secret", SESSION_SECRET))
            tg.extra = tg.extra + ("--node-address", "127.0.0.1:{}".format(tg.http))
            self.addCleanup(tg.kill)
            tg.start(timeout=60)
            self.nodes.append(tg)
        self.a, self.b = self.nodes
        for tg in self.nodes:
            self.waitUntil(lambda tg=tg: "LiveApp" in tg.get("/rest/v2/applications")[1].get(
                "applications", []), 20, "the applications read from redis")
        self.proxy = RoundRobin([self.a.base, self.b.base])
        self.port = reactor.listenTCP(0, Site(self.proxy), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.proxy.pool.closeCachedConnections)
        self.running: list[procs.Running] = []
        self.addCleanup(self._killClients)

    @property
    def proxyBase(self) -> str:
        return "http://127.0.0.1:{}".format(self.port.getHost().port)

    async def _killClients(self) -> None:
        for r in self.running:
            r.kill()
        for r in self.running:
            await r.done

    def waitUntil(self, predicate: Any, timeout: float, what: str) -> None:
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout:
                self.fail("not within {}s: {}".format(timeout, what))
            time.sleep(0.1)

    def mint(self, tg: TokengateProcess, streamId: str = "cam1") -> str:
        code, body = tg.get(
            "/LiveApp/rest/v2/broadcasts/{}/token?expireDate={}&type=play".format(
                streamId, int(time.time()) + 600))
        self.assertEqual(code, 200, body)
        return str(body["tokenId"])

    def run_(self, argv: list[str], timeout: float) -> procs.Running:
        r = procs.start(argv, timeout=timeout)
        self.running.append(r)
        return r

    def broadcasting(self, tg: TokengateProcess) -> bool:
        code, body = tg.get("/LiveApp/rest/v2/broadcasts/cam1")
        return code == 200 and body["status"] == "broadcasting"

    async def _publish(self) -> None:
        code, body = self.b.post(SETTINGS, {"playTokenControlEnabled": True,
                                            "dashMuxingEnabled": True})
        self.assertEqual((code, body["success"]), (200, True), body)
        self.waitUntil(lambda: self.a.get(SETTINGS)[1]["dashMuxingEnabled"], 5,
                       "the settings at A")
        url = "rtmp://127.0.0.1:{}/LiveApp/cam1".format(self.a.rtmp)
        self.run_([self.ffmpeg, "-hide_banner", "-nostdin", "-re", "-stream_loop", "-1",
                   "-i", test_clip(), "-c", "copy", "-f", "flv", url], 200)
        self.waitUntil(lambda: self.broadcasting(self.b), 30, "cam1 broadcasting at B")
        # a few segments made at A
        await sleep(5)

    def get(self, url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=20) as r:
                return r.status, r.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    async def test_hls(self) -> None:
        await self._publish()
        # the same segment names on both nodes, one session credential
        code, multivariant = self.get("{}/LiveApp/streams/cam1.m3u8?token={}".format(
            self.a.base, self.mint(self.a)))
        self.assertEqual(code, 200, multivariant)
        credential = re.search(r"tgs=([^\s&\"]+)", multivariant)
        self.assertIsNotNone(credential, multivariant)
        assert credential is not None
        path = "/LiveApp/streams/cam1/video.m3u8?tgs=" + credential.group(1)
        for attempt in range(10):
            codeA, atA = self.get(self.a.base + path)
            codeB, atB = self.get(self.b.base + path)
            self.assertEqual((codeA, codeB), (200, 200), (atA, atB))
            if segmentNames(atA) == segmentNames(atB):
                break
            await sleep(0.3)  # a segment was made between the two requests
        self.assertEqual(segmentNames(atA), segmentNames(atB))
        self.assertGreaterEqual(len(segmentNames(atA)), 2, atA)
        # B's playlist as A's, but for the credential each wrote
        self.assertEqual(re.sub(r"tgs=[^\s&\"]+", "", atA), re.sub(r"tgs=[^\s&\"]+", "", atB))

        # ffmpeg through the round-robin proxy, one play token
        result = await self.run_([
            self.ffmpeg, "-hide_banner", "-nostdin", "-i",
            "{}/LiveApp/streams/cam1.m3u8?token={}".format(self.proxyBase, self.mint(self.b)),
            "-t", "6", "-f", "null", "-"], 90).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertGreater(frames(result.stderr), 100, result.stderr[-2000:])
        self.assertGreater(self.proxy.segments(0), 0, self.proxy.log)
        self.assertGreater(self.proxy.segments(1), 0, self.proxy.log)
        self.assertEqual([entry for entry in self.proxy.log if entry[2] != 200], [])
        # B served them from A's packager, not from a packager of its own
        self.assertGreater(metric(self.b, "tokengate_edge_media_requests_total",
                                  'result="fetched"'), 0)
        self.assertGreater(metric(self.a, "tokengate_media_requests_total",
                                  'outcome="served"'), 0)
        self.assertEqual(metric(self.a, "tokengate_media_requests_total",
                                'outcome="forbidden"'), 0)

    async def test_dash(self) -> None:
        await self._publish()
        result = await self.run_([
            self.ffmpeg, "-hide_banner", "-nostdin", "-i",
            "{}/LiveApp/streams/cam1/cam1.mpd?token={}".format(self.proxyBase,
                                                               self.mint(self.a)),
            "-t", "6", "-f", "null", "-"], 90).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertGreater(frames(result.stderr), 100, result.stderr[-2000:])
        self.assertGreater(self.proxy.segments(0), 0, self.proxy.log)
        self.assertGreater(self.proxy.segments(1), 0, self.proxy.log)
        self.assertGreater(metric(self.b, "tokengate_edge_media_requests_total",
                                  'result="fetched"'), 0)

    async def _browser(self, tech: str) -> None:
        from tests import browser as chromium

        require("chromium")
        await self._publish()
        b = await chromium.launch(self)
        page = await b.open("{}/LiveApp/play.html?id=cam1&playOrder={}&token={}".format(
            self.proxyBase, tech, self.mint(self.a)))
        await page.wait_for(
            "window.tokengateState && window.tokengateState.status === 'playing'", 60)
        start = await page.evaluate("document.querySelector('video').currentTime")
        await page.wait_for(
            "document.querySelector('video').currentTime > {}".format(start + 4), 40)
        await b.close()
        self.assertGreater(self.proxy.segments(0), 0, self.proxy.log)
        self.assertGreater(self.proxy.segments(1), 0, self.proxy.log)
        self.assertGreater(metric(self.b, "tokengate_edge_media_requests_total",
                                  'result="fetched"'), 0)

    async def test_chromiumLowLatencyHls(self) -> None:
        await self._browser("hls")
        # blocking reloads reached both nodes, and were answered
        blocking = [(entry, query) for entry, query in zip(self.proxy.log, self.proxy.queries)
                    if entry[1].endswith(".m3u8") and "_HLS_msn=" in query]
        self.assertTrue(any(entry[0] == 1 and entry[2] == 200 for entry, _ in blocking),
                        self.proxy.log)
        self.assertTrue(any(entry[0] == 0 and entry[2] == 200 for entry, _ in blocking),
                        self.proxy.log)

    async def test_chromiumDash(self) -> None:
        await self._browser("dash")
