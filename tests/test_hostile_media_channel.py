"""
The internal media channel (issue 14: HLS and DASH on every node) against
hostile clients:

 - anyone but a node of the cluster asking the origin's
   C{/internal/v1/media}: forged, malformed, oversized or replayed
   credentials, odd paths: 403 or 404, counted, nothing served, nothing
   waited for;
 - a viewer asking a node without the stream for segments that do not
   exist: each reaches the origin, but the session's futile-request
   allowance bounds them (the session ends with 410, its credential stops
   working there, no more requests reach the origin).
"""

from __future__ import annotations

import time
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tokengate.cluster.feed import feedCredential, feedKey
from tokengate.cluster.mediaorigin import MediaResource
from tokengate.metrics import Metrics
from tokengate.web.playback import FUTILE_LIMIT

from tests.helpers import require
from tests.test_cluster_media import TwoNodes, _livePackager, _Outputs, _site

KEY = feedKey("k" * 40)
URL = "http://origin.invalid/internal/v1/media/"


class ForgedRequestsTests(SynchronousTestCase):
    def setUp(self) -> None:
        require("ffmpeg")
        self.clock = Clock()
        self.clock.advance(time.time())
        self.packager, self.stream, _ = _livePackager(self.clock)
        outputs = _Outputs()
        outputs.packagers[("LiveApp", "cam1")] = self.packager
        self.metrics = Metrics()
        self.stub = StubTreq(_site(MediaResource(outputs, self.clock, self.metrics, KEY)))

    def ask(self, path: str, headers: dict[str, list[str]]) -> Any:
        d = self.stub.get(URL + path, headers=headers)
        self.stub.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response.code, body

    def headers(self, node: str = "n", expiry: Any = None, credential: Any = None,
                streamId: str = "cam1", scheme: str = "TokengateMedia ") -> dict[str, list[str]]:
        if expiry is None:
            expiry = int(self.clock.seconds()) + 30
        if credential is None:
            credential = feedCredential(KEY, "LiveApp", streamId, node, int(expiry), "media") \
                if str(expiry).isdigit() else "0" * 64
        return {"x-tokengate-node": [node], "x-tokengate-expires": [str(expiry)],
                "authorization": [scheme + credential]}

    def outcome(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(
            "tokengate_media_requests_total", {"outcome": name}) or 0.0

    def test_forged(self) -> None:
        now = int(self.clock.seconds())
        forged = [
            {},
            self.headers(credential="0" * 64),
            self.headers(credential="g" * 64),
            self.headers(credential=""),
            self.headers(scheme="TokengateFeed "),
            self.headers(scheme="Bearer "),
            self.headers(expiry=now - 600),  # replayed long after
            self.headers(expiry=now + 3600),  # made to last
            self.headers(expiry="-5"),
            self.headers(expiry="1e9"),
            self.headers(expiry="9" * 30),
            self.headers(node="n" * 300),
            self.headers(streamId="cam2"),  # another stream's
            {"x-tokengate-node": ["n"], "x-tokengate-expires": [str(now + 30)],
             "authorization": ["TokengateMedia " + feedCredential(
                 feedKey("x" * 40), "LiveApp", "cam1", "n", now + 30, "media")]},
            {"x-tokengate-node": ["n"], "x-tokengate-expires": [str(now + 30)],
             "authorization": ["TokengateMedia " + feedCredential(
                 KEY, "LiveApp", "cam1", "n", now + 30)]},  # a feed credential
        ]
        for headers in forged:
            self.assertEqual(self.ask("LiveApp/cam1/video/1.m4s", headers),
                             (403, b"Forbidden\n"), headers)
        self.assertEqual(self.outcome("forbidden"), len(forged))
        self.assertEqual(self.outcome("served"), 0)

    def test_oddPaths(self) -> None:
        for path in ["LiveApp/cam1/video/../1.m4s", "LiveApp/cam1/text/1.m4s",
                     "LiveApp/cam1/video/1.ts", "LiveApp/cam1/x.m3u8", "LiveApp/cam1",
                     "LiveApp/cam1/video/1/2/3", "LiveApp/%ff/video/1.m4s",
                     "LiveApp/cam1/video/9999999999.m4s", "LiveApp/cam1/video.m3u8%00"]:
            code, _ = self.ask(path, self.headers())
            self.assertIn(code, (403, 404), path)
        self.assertEqual(self.outcome("served"), 0)

    def test_blockingWaitsBounded(self) -> None:
        # far ahead of the live edge: waits as a viewer's would, at most
        # three segment targets, then answered as it is; nothing left held
        d = self.stub.get(URL + "LiveApp/cam1/video.m3u8?_HLS_msn=999999&_HLS_part=0",
                          headers=self.headers())
        self.stub.flush()
        self.assertNoResult(d)
        self.assertEqual(len(self.packager._waiters["video"]), 1)
        self.clock.advance(3.01)
        self.stub.flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(self.packager._waiters["video"], [])
        # a segment far ahead: none, at once
        msn, _ = self.packager.edge("video")
        code, _ = self.ask("LiveApp/cam1/video/{}.m4s".format(msn + 5), self.headers())
        self.assertEqual(code, 404)
        self.assertEqual(self.packager._waiters["video"], [])

    def test_askerGoesAway(self) -> None:
        # a blocking request whose asker disconnects leaves no waiter
        d = self.stub.get(URL + "LiveApp/cam1/video.m3u8?_HLS_msn=999999",
                          headers=self.headers())
        self.stub.flush()
        self.assertEqual(len(self.packager._waiters["video"]), 1)
        d.cancel()
        self.stub.flush()
        self.failureResultOf(d)
        self.assertEqual(self.packager._waiters["video"], [])


class FutileFloodTests(TwoNodes):
    async def test_segmentsThatDoNotExist(self) -> None:
        await self.originLive()
        query = await self.session(self.origin)
        codes = []
        for n in range(FUTILE_LIMIT + 5):
            code, _ = await self.get(self.base(self.edge) + "cam1/video/{}.m4s?{}".format(
                900 + n, query))
            codes.append(code)
        self.assertEqual(codes[:FUTILE_LIMIT], [404] * FUTILE_LIMIT)
        self.assertEqual(codes[FUTILE_LIMIT], 410)
        self.assertEqual(set(codes[FUTILE_LIMIT + 1:]), {403})
        # the origin was asked once per futile request, no more
        self.assertEqual(self.origin.metrics.registry.get_sample_value(
            "tokengate_media_requests_total", {"outcome": "not_found"}), FUTILE_LIMIT + 1)
