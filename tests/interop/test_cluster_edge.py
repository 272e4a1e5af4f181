"""
Edge pull between real tokengate processes (C{twistd tokengate}, distinct
loopback ports) on one real redis-server, with ffmpeg as publisher and
players:

 - ffmpeg publishes RTMP at A (the origin); ffmpeg plays HLS and RTMP from
   B (the edge) with play tokens minted at A and at B: B pulls the stream
   once (one feed from A, whatever its viewers) and serves both from the
   pulled copy;
 - a play token spent at B is refused at A (tokens are redeemed once,
   cluster-wide);
 - kill -9 A: B's RTMP viewer ends within L{DEATH_BOUND} seconds;
 - ffmpeg republishes the stream at B: a new viewer at B plays it (now
   local).
"""

from __future__ import annotations

import time

from tests import procs
from tests.fixtures import frames, test_clip
from tests.helpers import require
from tests.interop.clusternodes import SETTINGS, ClusterNodes, metric, sleep
from tests.service import TokengateProcess

#: seconds from the origin's SIGKILL to the end of an edge's RTMP viewer:
#: the puller's retries (0.5 + 1 + 2 + 4 s of backoff, or the registry
#: entry's expiry, 6 s, whichever first) and ffmpeg noticing the end
DEATH_BOUND = 12.0


class EdgePullTests(ClusterNodes):
    nodeCount = 2
    nodeReactor = None

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        super().setUp()
        self.a, self.b = self.nodes

    def publisher(self, tg: TokengateProcess, path: str) -> procs.Running:
        url = "rtmp://127.0.0.1:{}{}".format(tg.rtmp, path)
        return self.client([self.ffmpeg, "-hide_banner", "-nostdin", "-re", "-stream_loop", "-1",
                            "-i", test_clip(), "-c", "copy", "-f", "flv", url], 150)

    def player(self, url: str, seconds: float, timeout: float = 60) -> procs.Running:
        return self.client([self.ffmpeg, "-hide_banner", "-nostdin", "-i", url, "-t",
                            str(seconds), "-f", "null", "-"], timeout)

    async def test_edgePull(self) -> None:
        code, body = self.b.post(SETTINGS, {"playTokenControlEnabled": True})
        self.assertEqual((code, body["success"]), (200, True), body)
        self.waitUntil(lambda: self.a.get(SETTINGS)[1]["playTokenControlEnabled"], 5,
                       "the setting at A")
        origin = self.publisher(self.a, "/LiveApp/cam1")
        self.waitUntil(lambda: self.broadcasting(self.b), 30, "cam1 broadcasting at B")
        await sleep(1)

        # HLS from B with a token minted at A; RTMP from B with one minted at B
        hlsToken = self.mint(self.a, "play")
        hls = self.player("{}/LiveApp/streams/cam1.m3u8?token={}".format(self.b.base, hlsToken),
                          3)
        rtmp = self.player("rtmp://127.0.0.1:{}/LiveApp/cam1?token={}".format(
            self.b.rtmp, self.mint(self.b, "play")), 3)
        for result in (await hls.done, await rtmp.done):
            self.assertEqual(result.code, 0, result.stderr[-2000:])
            self.assertGreater(frames(result.stderr), 50, result.stderr[-2000:])
        # one pull, one feed, shared by both viewers
        self.assertEqual(metric(self.b, "tokengate_edge_pull_results_total",
                                result="started"), 1)
        self.assertEqual(metric(self.a, "tokengate_feed_requests_total",
                                outcome="served"), 1)
        # media came through the pull (the RTMP viewer's 3 s of it: the
        # edge's HLS is the origin's packager output, not the pulled copy)
        self.assertGreater(metric(self.b, "tokengate_edge_pull_bytes_total"), 20_000)
        # B reports the stream as A's, pulled or not
        code, body = self.b.get("/LiveApp/rest/v2/broadcasts/cam1")
        self.assertEqual((code, body["status"], body["originAdress"], body["publishType"]),
                         (200, "broadcasting", "127.0.0.1:{}".format(self.a.http), "RTMP"))
        listed = self.b.get("/LiveApp/rest/v2/broadcasts/list/0/10")[1]
        self.assertEqual([(b["streamId"], b["originAdress"]) for b in listed],
                         [("cam1", "127.0.0.1:{}".format(self.a.http))])

        # the token spent at B is refused at A
        again = await self.player("{}/LiveApp/streams/cam1.m3u8?token={}".format(
            self.a.base, hlsToken), 1).done
        self.assertNotEqual(again.code, 0)
        self.assertIn("403", again.stderr)

        # kill -9 A: B's viewer ends within the bound
        viewer = self.player("rtmp://127.0.0.1:{}/LiveApp/cam1?token={}".format(
            self.b.rtmp, self.mint(self.b, "play")), 60, timeout=90)
        await self.eventually(lambda: frames(viewer.stderrSoFar()) > 25, 20, "the viewer plays")
        self.a.kill()
        killed = time.monotonic()
        result = await viewer.done
        took = time.monotonic() - killed
        self.assertLess(took, DEATH_BOUND, result.stderr[-1500:])
        self.assertFalse(self.broadcasting(self.b))
        origin.kill()
        await origin.done

        # republished at B (once A's entry expired): a new viewer at B plays
        republish = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            republish = self.publisher(self.b, "/LiveApp/cam1")
            await sleep(2)
            if self.broadcasting(self.b):
                break
            republish.kill()
            await republish.done
        self.assertTrue(self.broadcasting(self.b), "republished at B")
        result = await self.player("rtmp://127.0.0.1:{}/LiveApp/cam1?token={}".format(
            self.b.rtmp, self.mint(self.b, "play")), 2).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertGreater(frames(result.stderr), 25)
