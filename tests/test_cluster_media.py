"""
The internal media channel (L{tokengate.cluster.media}), its origin side
(L{tokengate.cluster.mediaorigin.MediaResource}) and its edge side
(L{tokengate.cluster.remote.RemoteMedia}), in memory: a real packager fed
with a clip on a L{Clock}, the origin's resource behind L{StubTreq}, or a
fake origin whose answers the test controls.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from tokengate.access.outbound import Outbound, OutboundError
from tokengate.apps import Applications
from tokengate.cluster.feed import checkFeedCredential, feedCredential, feedKey
from tokengate.cluster.media import (
    LOCATION_MARKER,
    QUERY_MARKER,
    decorateHls,
    decorateMpd,
    documentEnded,
    objectName,
    parseObject,
)
from tokengate.cluster.mediaorigin import MediaResource
from tokengate.cluster.origin import FeedResource
from tokengate.cluster.registry import MemoryLocator, StreamLocation
from tokengate.cluster.remote import MAX_OBJECT, RemoteMedia
from tokengate.media.hub import Hub
from tokengate.media.packager import Packager
from tokengate.metrics import Metrics

from tests.fixtures import test_clip
from tests.helpers import require
from tests.test_playback import feed

KEY = feedKey("k" * 40)
ORIGIN = StreamLocation("origin-node", "origin.invalid:5080", "RTMP", 1000.0)


class _Outputs:
    def __init__(self) -> None:
        self.packagers: dict[tuple[str, str], Any] = {}

    def packager(self, app: str, streamId: str) -> Optional[Any]:
        return self.packagers.get((app, streamId))

    def recordingPath(self, app: str, streamId: str) -> Optional[str]:
        return None


def _feedMore(stream: Any, start_ms: int, until_ms: int) -> None:
    """
    Push the clip's frames from C{start_ms} to C{until_ms} (both kinds).
    """
    from tokengate.media.flv import iter_flv_tags

    with open(test_clip(8), "rb") as f:
        data = f.read()
    for tag in iter_flv_tags(data):
        if tag.timestamp < start_ms or tag.tag_type not in (8, 9):
            continue
        if tag.timestamp >= until_ms:
            break
        body = bytes(tag.data)
        if body[1:2] == b"\x00":
            continue  # a configuration, sent already
        if tag.tag_type == 9:
            stream.videoReceived(tag.timestamp, body)
        else:
            stream.audioReceived(tag.timestamp, body)


def _livePackager(clock: Clock, until_ms: int = 5000) -> tuple[Packager, Any, Hub]:
    """
    A packager of a live stream fed the first C{until_ms} ms of a clip.
    """
    hub = Hub(clock)
    packager = Packager("LiveApp", "cam1", clock, segmentTarget=1.0, partTarget=0.5,
                        windowSegments=3)
    stream = hub.publish("LiveApp", "cam1", "RTMP")
    packager.attach(stream)
    feed(stream, test_clip(8), until_ms=until_ms)
    return packager, stream, hub


class DecorationTests(SynchronousTestCase):
    """
    An origin's undecorated documents, decorated at the edge, are exactly
    what the packager writes for a local viewer.
    """

    def setUp(self) -> None:
        require("ffmpeg")
        self.clock = Clock()
        self.clock.advance(time.time())
        self.packager, self.stream, _ = _livePackager(self.clock)

    @settings(max_examples=60, deadline=None)
    @given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=80),
           st.one_of(st.none(), st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e),
                                        min_size=1, max_size=80)))
    def test_sameAsLocal(self, query: str, location: Optional[str]) -> None:
        p = self.packager
        for kind in ("video", "audio"):
            self.assertEqual(decorateHls(p.hlsMedia(kind, QUERY_MARKER), query),
                             p.hlsMedia(kind, query))
        self.assertEqual(decorateHls(p.hlsMultivariant(QUERY_MARKER), query),
                         p.hlsMultivariant(query))
        self.assertEqual(decorateMpd(p.dashMpd(QUERY_MARKER, LOCATION_MARKER), query, location),
                         p.dashMpd(query, location))

    def test_ended(self) -> None:
        p = self.packager
        self.assertFalse(documentEnded("media", p.hlsMedia("video", QUERY_MARKER)))
        self.assertFalse(documentEnded("dash", p.dashMpd(QUERY_MARKER, LOCATION_MARKER)))
        self.stream.end()
        self.assertTrue(documentEnded("media", p.hlsMedia("video", QUERY_MARKER)))
        self.assertTrue(documentEnded("dash", p.dashMpd(QUERY_MARKER, LOCATION_MARKER)))


class ObjectNameTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        for what, details in [("hls", ()), ("dash", ()), ("media", ("video",)),
                              ("media", ("audio",)), ("resource", ("video", "init.mp4")),
                              ("resource", ("audio", "init-3.mp4")),
                              ("resource", ("video", "12.m4s")),
                              ("resource", ("audio", "12.3.m4s"))]:
            name = objectName(what, details)
            assert name is not None
            self.assertEqual(parseObject(name.split("/")), (what, details))

    def test_others(self) -> None:
        self.assertIsNone(objectName("vod", ()))
        self.assertIsNone(objectName("resource", ("text", "1.m4s")))
        self.assertIsNone(objectName("resource", ("video", "../x")))
        for parts in (["x.m3u8"], ["video", "1.ts"], ["video", "a", "b"], [], ["..", "1.m4s"],
                      ["video", "1234567890.m4s"]):
            self.assertIsNone(parseObject(parts))


def _site(resource: Resource) -> Resource:
    root, internal, v1 = Resource(), Resource(), Resource()
    root.putChild(b"internal", internal)
    internal.putChild(b"v1", v1)
    v1.putChild(b"media", resource)
    return root


class OriginTests(SynchronousTestCase):
    """
    The origin's resource and the edge's fetcher over it (L{StubTreq}).
    """

    def setUp(self) -> None:
        require("ffmpeg")
        self.clock = Clock()
        self.clock.advance(time.time())
        self.packager, self.stream, self.hub = _livePackager(self.clock)
        self.outputs = _Outputs()
        self.outputs.packagers[("LiveApp", "cam1")] = self.packager
        self.originMetrics = Metrics()
        self.resource = MediaResource(self.outputs, self.clock, self.originMetrics, KEY)
        self.stub = StubTreq(_site(self.resource))
        self.metrics = Metrics()
        self.remote = self.edge(KEY)

    def edge(self, key: bytes, metrics: Optional[Metrics] = None) -> RemoteMedia:
        locator = MemoryLocator(localNodeId="edge-node")
        locator.locations[("LiveApp", "cam1")] = ORIGIN
        outbound = Outbound(self.clock, 10.0, MAX_OBJECT, client=self.stub)
        return RemoteMedia(locator, outbound, key, self.clock,
                           metrics if metrics is not None else self.metrics,
                           Applications(None), wallClock=self.clock.seconds)

    def fetch(self, name: str, msn: Optional[int] = None, part: Optional[int] = None,
              remote: Optional[RemoteMedia] = None) -> Any:
        d = (remote or self.remote).fetch("LiveApp", "cam1", name, msn, part)
        self.stub.flush()
        return self.successResultOf(d)

    def served(self, outcome: str = "served") -> float:
        return self.originMetrics.registry.get_sample_value(
            "tokengate_media_requests_total", {"outcome": outcome}) or 0.0

    def result(self, name: str, metrics: Optional[Metrics] = None) -> float:
        return (metrics or self.metrics).registry.get_sample_value(
            "tokengate_edge_media_requests_total", {"result": name}) or 0.0

    def test_documentsUndecorated(self) -> None:
        answer = self.fetch("video.m3u8")
        self.assertEqual(answer.code, 200)
        text = answer.body.decode()
        self.assertEqual(text, self.packager.hlsMedia("video", QUERY_MARKER))
        self.assertEqual(decorateHls(text, "tgs=x"), self.packager.hlsMedia("video", "tgs=x"))
        self.assertEqual(self.fetch("main.m3u8").body.decode(),
                         self.packager.hlsMultivariant(QUERY_MARKER))
        self.assertEqual(self.fetch("main.mpd").body.decode(),
                         self.packager.dashMpd(QUERY_MARKER, LOCATION_MARKER))

    def test_segmentsCachedByteForByte(self) -> None:
        for name, data in [("video/init.mp4", self.packager.init("video")),
                           ("video/1.m4s", self.packager.segment("video", 1)),
                           ("audio/2.m4s", self.packager.segment("audio", 2)),
                           ("video/2.1.m4s", self.packager.part("video", 2, 1))]:
            self.assertIsNotNone(data)
            self.assertEqual(self.fetch(name).body, data)
            self.assertEqual(self.fetch(name).body, data)
        # each fetched once; the second of each from the cache
        self.assertEqual(self.served(), 4)
        self.assertEqual(self.result("fetched"), 4)
        self.assertEqual(self.result("hit"), 4)
        self.assertGreater(self.remote.cachedBytes, 0)

    def test_notHeld(self) -> None:
        self.assertEqual(self.fetch("video/999999.m4s").code, 404)
        self.assertEqual(self.served("not_found"), 1)
        self.outputs.packagers.clear()
        self.assertEqual(self.fetch("video/1.m4s").code, 404)
        self.assertEqual(self.served("not_live"), 1)
        self.assertEqual(self.result("not_found"), 2)

    def test_blockingReloadForwarded(self) -> None:
        msn, part = self.packager.edge("video")
        d = self.remote.fetch("LiveApp", "cam1", "video.m3u8", msn + 1, 0)
        self.stub.flush()
        self.assertNoResult(d)
        _feedMore(self.stream, 5000, 7000)
        self.stub.flush()
        answer = self.successResultOf(d)
        self.assertEqual(answer.code, 200)
        self.assertIn("{}.0.m4s".format(msn + 1), answer.body.decode())

    def test_blockingReloadBounded(self) -> None:
        msn, _ = self.packager.edge("video")
        d = self.remote.fetch("LiveApp", "cam1", "video.m3u8", msn + 1, 0)
        self.stub.flush()
        self.clock.advance(2.9)  # 3 segment targets of 1 s
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.stub.flush()
        # answered as it is, as a viewer's blocking reload would be
        self.assertEqual(self.successResultOf(d).body.decode(),
                         self.packager.hlsMedia("video", QUERY_MARKER))

    def test_liveEdgeSegmentWaitsForItsEnd(self) -> None:
        msn, _ = self.packager.edge("video")
        d = self.remote.fetch("LiveApp", "cam1", "video/{}.m4s".format(msn), None, None)
        self.stub.flush()
        self.assertNoResult(d)
        _feedMore(self.stream, 5000, 7000)
        self.stub.flush()
        self.assertEqual(self.successResultOf(d).body, self.packager.segment("video", msn))

    def test_pastTheEnd(self) -> None:
        self.stream.end()
        msn, _ = self.packager.edge("video")
        self.assertEqual(self.fetch("video/{}.m4s".format(msn + 1)).code, 204)

    def test_credentialRefused(self) -> None:
        metrics = Metrics()
        other = self.edge(feedKey("x" * 40), metrics)
        self.assertEqual(self.fetch("video/1.m4s", remote=other).code, 404)
        self.assertEqual(self.served("forbidden"), 1)
        self.assertEqual(metrics.registry.get_sample_value(
            "tokengate_edge_media_failures_total", {"reason": "status"}), 1)

    def test_withoutClusterSecretNothingIsServed(self) -> None:
        self.resource._key = None
        self.assertEqual(self.fetch("video/1.m4s").code, 404)
        self.assertEqual(self.served("forbidden"), 1)

    def test_purposesKeptApart(self) -> None:
        expiry = int(self.clock.seconds()) + 30
        media = feedCredential(KEY, "LiveApp", "cam1", "n", expiry, "media")
        feedOnly = feedCredential(KEY, "LiveApp", "cam1", "n", expiry)
        now = self.clock.seconds()
        self.assertTrue(checkFeedCredential(KEY, "LiveApp", "cam1", "n", expiry, media, now,
                                            "media"))
        self.assertFalse(checkFeedCredential(KEY, "LiveApp", "cam1", "n", expiry, media, now))
        self.assertFalse(checkFeedCredential(KEY, "LiveApp", "cam1", "n", expiry, feedOnly,
                                             now, "media"))
        # a feed credential on the media channel
        headers = {"x-tokengate-node": ["n"], "x-tokengate-expires": [str(expiry)],
                   "authorization": ["TokengateMedia " + feedOnly]}
        d = self.stub.get("http://origin.invalid/internal/v1/media/LiveApp/cam1/video/1.m4s",
                          headers=headers)
        self.stub.flush()
        self.assertEqual(self.successResultOf(d).code, 403)
        # and a media credential on the feed
        feedSite = Resource()
        internal, v1 = Resource(), Resource()
        feedSite.putChild(b"internal", internal)
        internal.putChild(b"v1", v1)
        v1.putChild(b"feed", FeedResource(self.hub, self.clock, Metrics(), KEY))
        stub = StubTreq(feedSite)
        headers["authorization"] = ["TokengateFeed " + media]
        d = stub.get("http://origin.invalid/internal/v1/feed/LiveApp/cam1", headers=headers)
        stub.flush()
        self.assertEqual(self.successResultOf(d).code, 403)


class _FakeOutbound:
    """
    An origin whose answers the test gives: each request waits for
    L{answer}.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], Optional[float], Deferred[Any]]] = []

    def request(self, method: str, url: str, data: Optional[bytes] = None,
                headers: Optional[dict[str, str]] = None,
                timeout: Optional[float] = None) -> "Deferred[tuple[int, bytes]]":
        d: Deferred[tuple[int, bytes]] = Deferred()
        self.requests.append((url, dict(headers or {}), timeout, d))
        return d

    def answer(self, index: int, code: int = 200, body: bytes = b"x") -> None:
        self.requests[index][3].callback((code, body))


class _Locator(MemoryLocator):
    """
    A L{MemoryLocator} whose C{locate} a test may replace.
    """

    def __init__(self, localNodeId: str) -> None:
        super().__init__(localNodeId=localNodeId)
        self.locate = super().locate  # type: ignore[method-assign]


class EdgeTests(SynchronousTestCase):
    """
    L{RemoteMedia}'s cache, collapsing, bounds and failures, against a fake
    origin.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.locator = _Locator("edge-node")
        self.locator.locations[("LiveApp", "cam1")] = ORIGIN
        self.origin = _FakeOutbound()
        self.metrics = Metrics()
        apps = Applications(None)
        apps.replace("LiveApp", hlsTime="4")
        self.remote = RemoteMedia(self.locator, self.origin, KEY, self.clock,  # type: ignore
                                  self.metrics, apps, maxBytes=4000,
                                  wallClock=self.clock.seconds)

    def fetch(self, name: str, msn: Optional[int] = None,
              part: Optional[int] = None) -> "Deferred[Any]":
        return self.remote.fetch("LiveApp", "cam1", name, msn, part)

    def test_request(self) -> None:
        d = self.fetch("video.m3u8", 12, 3)
        url, headers, timeout, _ = self.origin.requests[0]
        self.assertEqual(url, "http://origin.invalid:5080/internal/v1/media/LiveApp/cam1/"
                              "video.m3u8?_HLS_msn=12&_HLS_part=3")
        # the blocking bound of the application (3 segment targets of 4 s) and a margin
        self.assertEqual(timeout, 17.0)
        self.assertEqual(headers["x-tokengate-node"], "edge-node")
        self.assertTrue(checkFeedCredential(
            KEY, "LiveApp", "cam1", "edge-node", int(headers["x-tokengate-expires"]),
            headers["authorization"][len("TokengateMedia "):], self.clock.seconds(), "media"))
        self.origin.answer(0, body=b"#EXTM3U\n")
        self.assertEqual(self.successResultOf(d).body, b"#EXTM3U\n")

    def test_collapsed(self) -> None:
        first, second = self.fetch("video/3.m4s"), self.fetch("video/3.m4s")
        self.assertEqual(len(self.origin.requests), 1)
        self.origin.answer(0, body=b"segment")
        self.assertEqual(self.successResultOf(first).body, b"segment")
        self.assertEqual(self.successResultOf(second).body, b"segment")
        self.assertEqual(self.successResultOf(self.fetch("video/3.m4s")).body, b"segment")
        self.assertEqual(len(self.origin.requests), 1)

    def test_documentsKeptBriefly(self) -> None:
        d = self.fetch("video.m3u8")
        self.origin.answer(0, body=b"one")
        self.successResultOf(d)
        self.assertEqual(self.successResultOf(self.fetch("video.m3u8")).body, b"one")
        self.assertEqual(len(self.origin.requests), 1)
        self.clock.advance(0.3)
        d = self.fetch("video.m3u8")
        self.assertEqual(len(self.origin.requests), 2)
        self.origin.answer(1, body=b"two")
        self.assertEqual(self.successResultOf(d).body, b"two")
        # a blocking reload is another document
        self.fetch("video.m3u8", 5)
        self.assertEqual(len(self.origin.requests), 3)

    def test_cacheBounded(self) -> None:
        for n in range(6):
            d = self.fetch("video/{}.m4s".format(n))
            self.origin.answer(n, body=bytes([n]) * 900)
            self.successResultOf(d)
        self.assertLessEqual(self.remote.cachedBytes, 4000)
        # the oldest were dropped, the newest kept
        self.fetch("video/0.m4s")
        self.assertEqual(len(self.origin.requests), 7)
        self.successResultOf(self.fetch("video/5.m4s"))
        self.assertEqual(len(self.origin.requests), 7)
        # an object over a quarter of the cache is served, not kept
        d = self.fetch("video/9.m4s")
        self.origin.answer(7, body=b"y" * 1001)
        self.assertEqual(len(self.successResultOf(d).body), 1001)
        self.fetch("video/9.m4s")
        self.assertEqual(len(self.origin.requests), 9)

    def test_keyedByPublication(self) -> None:
        d = self.fetch("video/1.m4s")
        self.origin.answer(0, body=b"old")
        self.successResultOf(d)
        # republished (a new packager numbers from 1 again)
        self.locator.locations[("LiveApp", "cam1")] = StreamLocation(
            "origin-node", "origin.invalid:5080", "RTMP", 2000.0)
        self.clock.advance(1.1)
        d = self.fetch("video/1.m4s")
        self.assertEqual(len(self.origin.requests), 2)
        self.origin.answer(1, body=b"new")
        self.assertEqual(self.successResultOf(d).body, b"new")

    def test_originFails(self) -> None:
        self.origin.request = lambda *a, **k: fail(OutboundError("unreachable"))  # type: ignore
        self.assertEqual(self.successResultOf(self.fetch("video/1.m4s")).code, 404)
        self.assertEqual(self.metrics.registry.get_sample_value(
            "tokengate_edge_media_failures_total", {"reason": "unreachable"}), 1)
        # the registry is asked again at once, and without it no origin is
        asked = []
        self.locator.locations.clear()
        self.locator.locate = lambda app, s: asked.append(s) or succeed(None)  # type: ignore
        self.assertEqual(self.successResultOf(self.fetch("video/1.m4s")).code, 404)
        self.assertEqual(asked, ["cam1"])

    def test_busy(self) -> None:
        self.origin.request = lambda *a, **k: fail(OutboundError("busy"))  # type: ignore
        self.assertEqual(self.successResultOf(self.fetch("video/1.m4s")).code, 503)

    def test_lastOriginAfterTheRegistryForgot(self) -> None:
        d = self.fetch("video.m3u8")
        self.origin.answer(0)
        self.successResultOf(d)
        del self.locator.locations[("LiveApp", "cam1")]
        # the publisher left: its origin still has the final playlists
        self.clock.advance(30)
        self.fetch("video.m3u8")
        self.assertEqual(len(self.origin.requests), 2)
        self.origin.answer(1)
        # for a minute
        self.clock.advance(31)
        self.assertEqual(self.successResultOf(self.fetch("main.mpd")).code, 404)
        self.assertEqual(len(self.origin.requests), 2)

    def test_registryDown(self) -> None:
        d = self.fetch("video.m3u8")
        self.origin.answer(0)
        self.successResultOf(d)
        self.locator.down = True
        self.clock.advance(2)
        self.fetch("video.m3u8")
        self.assertEqual(len(self.origin.requests), 2)
        self.assertEqual(self.metrics.registry.get_sample_value(
            "tokengate_edge_media_failures_total", {"reason": "locator"}), 1)

    def test_notPackagedHere(self) -> None:
        self.locator.locations[("LiveApp", "cam1")] = StreamLocation(
            "edge-node", "edge.invalid:5080", "RTMP", 1.0)
        self.assertEqual(self.successResultOf(self.fetch("video/1.m4s")).code, 404)
        self.assertEqual(self.origin.requests, [])

    def test_otherAnswers(self) -> None:
        d = self.fetch("video/1.m4s")
        self.origin.answer(0, 500, b"oops")
        self.assertEqual(self.successResultOf(d).code, 404)
        d = self.fetch("video/2.m4s")
        self.origin.answer(1, 204, b"")
        self.assertEqual(self.successResultOf(d).code, 204)
        # neither kept
        self.fetch("video/1.m4s")
        self.assertEqual(len(self.origin.requests), 3)


class TwoNodes(TestCase):
    """
    Two nodes in one process (L{Server}s sharing an in-memory stream
    registry and token store, each with its real HTTP site on a loopback
    port).
    """

    timeout = 60

    def node(self, backend: Any, store: Any) -> Any:
        from twisted.internet import reactor

        from tokengate.access.outbound import newHTTPClient
        from tokengate.config import ServerConfig
        from tokengate.server import Server, buildSite
        from tests.service import free_port

        http = free_port()
        server = Server(apps=Applications(None), store=store, clock=reactor,
                        streamBackend=backend,
                        mediaOutbound=Outbound(reactor, 10.0, MAX_OBJECT,
                                               client=newHTTPClient(reactor)),
                        config=ServerConfig(clusterSecret="o" * 40, sessionSecret="s" * 40,
                                            nodeAddress="127.0.0.1:{}".format(http)))
        server.apps.replace("LiveApp", playTokenControlEnabled=True, hlsTime="1")
        port = reactor.listenTCP(http, buildSite(server, engine=object()),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(server.streams.stop)
        self.addCleanup(server.outputs.close)
        assert server.puller is not None
        self.addCleanup(server.puller.stopAll)
        self.bases[id(server)] = "http://127.0.0.1:{}/LiveApp/streams/".format(http)
        self.ports[id(server)] = port
        return server

    def base(self, server: Any) -> str:
        return self.bases[id(server)]

    def setUp(self) -> None:
        from twisted.internet import reactor

        from tokengate.cluster.registry import MemoryBackend
        from tokengate.store.memory import MemoryTokenStore
        from tests.helpers import http_client

        require("ffmpeg")
        store = MemoryTokenStore()
        backend = MemoryBackend(reactor)
        self.bases: dict[int, str] = {}
        self.ports: dict[int, Any] = {}
        self.origin = self.node(backend, store)
        self.edge = self.node(backend, store)
        self.http = http_client(self)

    def mint(self, server: Any) -> str:
        from tokengate.tokens import StoredToken, new_token

        t = new_token("cam1", "play", int(time.time()) + 600)
        server.store.add(StoredToken.fromToken("LiveApp", t))
        return t.tokenId

    async def get(self, url: str) -> tuple[int, bytes]:
        r = await self.http.get(url)
        return r.code, await r.content()

    async def originLive(self) -> Any:
        """
        The origin publishes cam1 (six seconds of a clip); its packager.
        """
        await self.origin.streams.claim("LiveApp", "cam1", "RTMP")
        stream = self.origin.hub.publish("LiveApp", "cam1", "RTMP")
        self.addCleanup(stream.end)
        feed(stream, test_clip(8), until_ms=6000)
        self.stream = stream
        return self.origin.outputs.packager("LiveApp", "cam1")

    async def session(self, node: Any) -> str:
        """
        A session admitted at C{node} with a play token: its query.
        """
        code, body = await self.get(self.base(node) + "cam1.m3u8?token=" + self.mint(node))
        self.assertEqual(code, 200, body)
        return body.decode().split("video.m3u8?", 1)[1].split("\n", 1)[0]


class TwoNodesTests(TwoNodes):
    """
    The edge's HLS is the origin's, and it packages nothing itself.
    """

    async def test_edgeServesTheOrigins(self) -> None:
        packager = await self.originLive()

        code, body = await self.get(self.base(self.edge) + "cam1.m3u8?token=" + self.mint(self.edge))
        self.assertEqual(code, 200, body)
        # admitted at the edge (its pull started), packaged at the origin only
        self.assertTrue(self.edge.hub.isLive("LiveApp", "cam1"))
        self.assertIsNone(self.edge.outputs.packager("LiveApp", "cam1"))
        query = body.decode().split("video.m3u8?", 1)[1].split('"', 1)[0].split("\n", 1)[0]
        self.assertTrue(query.startswith("tgs="), body)
        code, atEdge = await self.get(self.base(self.edge) + "cam1/video.m3u8?" + query)
        self.assertEqual(code, 200, atEdge)
        code, atOrigin = await self.get(self.base(self.origin) + "cam1/video.m3u8?" + query)
        self.assertEqual(code, 200, atOrigin)
        # the same playlist, each with the credential it issued
        import re

        def anonymous(text: str) -> str:
            return re.sub(r"tgs=[^\s\"&]+", "tgs=X", text)

        self.assertEqual(anonymous(packager.hlsMedia("video", "tgs=X")),
                         anonymous(atEdge.decode()))
        self.assertEqual(anonymous(atOrigin.decode()), anonymous(atEdge.decode()))
        # a segment through the edge is the origin's, byte for byte
        code, data = await self.get(self.base(self.edge) + "cam1/video/2.m4s?" + query)
        self.assertEqual((code, data), (200, packager.segment("video", 2)))
        # without a session: refused, whatever node
        code, _ = await self.get(self.base(self.edge) + "cam1/video/2.m4s")
        self.assertEqual(code, 403)

    async def test_segmentOnANodeWithoutThePull(self) -> None:
        packager = await self.originLive()
        query = await self.session(self.origin)
        # the edge never admitted this session, nor pulls the stream: the
        # session's credential is good, the segment comes from the origin
        code, data = await self.get(self.base(self.edge) + "cam1/video/1.m4s?" + query)
        self.assertEqual((code, data), (200, packager.segment("video", 1)))
        self.assertFalse(self.edge.hub.isLive("LiveApp", "cam1"))

    async def test_originGone(self) -> None:
        await self.originLive()
        query = await self.session(self.edge)
        # the origin's HTTP goes away (its registry entry not yet expired)
        await self.ports[id(self.origin)].stopListening()
        code, body = await self.get(self.base(self.edge) + "cam1/video.m3u8?" + query)
        self.assertEqual(code, 404, body)
        self.assertIn(b"Stream is not live", body)
        code, _ = await self.get(self.base(self.edge) + "cam1/video/3.m4s?" + query)
        self.assertEqual(code, 404)
        self.assertGreaterEqual(self.edge.metrics.registry.get_sample_value(
            "tokengate_edge_media_failures_total", {"reason": "unreachable"}), 1)


class OutputsTests(SynchronousTestCase):
    """
    A node packages what is published to it, not what it pulls.
    """

    def test_pulledNotPackaged(self) -> None:
        from tokengate.media.hub import PULLED
        from tokengate.media.outputs import Outputs

        clock = Clock()
        hub = Hub(clock)
        apps = Applications(None)
        apps.replace("LiveApp", dashMuxingEnabled=True)
        outputs = Outputs(apps, hub, clock, Metrics(), None)
        local = hub.publish("LiveApp", "cam1", "RTMP")
        self.assertIsNotNone(outputs.packager("LiveApp", "cam1"))
        local.end()
        # kept a while after its end (players finish) ...
        self.assertIsNotNone(outputs.packager("LiveApp", "cam1"))
        # ... unless the stream is now another node's
        hub.publish("LiveApp", "cam1", PULLED)
        self.assertIsNone(outputs.packager("LiveApp", "cam1"))
        hub.publish("LiveApp", "cam2", PULLED)
        self.assertIsNone(outputs.packager("LiveApp", "cam2"))
