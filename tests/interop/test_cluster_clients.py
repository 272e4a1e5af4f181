"""
Three real tokengate processes (A, B, C: C{twistd tokengate} on distinct
loopback ports, asyncio reactor) and one real redis-server; ffmpeg
publishes RTMP at A, real clients play from the edges B and C:

 - ffmpeg plays DASH from B and from C; Chromium (play.html) plays WebRTC
   (WebSocket signalling) from B and WHEP from C, decoding frames; each
   edge pulls the stream once;
 - a play token spent at B is refused at C;
 - C{DELETE .../sessions} at C ends the viewers at B and C (the publisher
   at A goes on);
 - redis-server stopped: the viewers at B and C keep receiving frames;
   a new play at B and a new publish at C are refused C{unavailable}
   (counted); redis-server started again (empty: no persistence): without
   a restart of any node, the registry names A again and a new play at B
   plays;
 - C{DELETE .../tokens} at C kicks the publisher at A;
 - republished at C: a new viewer at B plays it (pulled from its new
   origin); kill -9 C: RTMP viewers at A and B end within L{DEATH_BOUND}.
"""

from __future__ import annotations

import time
from typing import Any

from tests import browser as chromium
from tests.fixtures import frames
from tests.helpers import require
from tests.interop.clusternodes import SETTINGS, ClusterNodes, metric, sleep
from tests.service import TokengateProcess

#: video frames a play page's peer connection decoded (a page expression
#: in place of PC)
FRAMES_DECODED = ("(function (pc) { if (!pc) { return 0; } return pc.getStats().then("
                  "function (s) { var n = 0; s.forEach(function (r) { if (r.type === "
                  "'inbound-rtp' && r.kind === 'video') { n = r.framesDecoded || 0; } });"
                  " return n; }); })(PC)")
WEBRTC_PC = "window.tokengateWebRTC && window.tokengateWebRTC.pc"
WHEP_PC = "window.tokengateWHEP && window.tokengateWHEP.pc"

#: seconds within which a revocation at one node ends sessions on another
#: (a pub/sub message; generous for a loaded machine)
REVOKE_BOUND = 10.0

#: seconds from the origin's SIGKILL to the end of an edge's RTMP viewer
#: (as in test_cluster_edge: 0.5 + 1 + 2 + 4 s of retries or the registry
#: entry's 6 s expiry, whichever first, and ffmpeg noticing)
DEATH_BOUND = 12.0


class ThreeNodeClientsTests(ClusterNodes):
    timeout = 300

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        require("chromium")
        super().setUp()
        self.a, self.b, self.c = self.nodes

    def publisher(self, tg: TokengateProcess, streamId: str, token: str,
                  seconds: int = 200) -> Any:
        """
        ffmpeg publishing test pattern and tone over RTMP, without B-frames
        (WebRTC viewers get the video as it is).
        """
        return self.client([
            self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "info", "-re",
            "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
            "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
            "-bf", "0", "-c:a", "aac", "-b:a", "64k", "-f", "flv",
            "rtmp://127.0.0.1:{}/LiveApp/{}?token={}".format(tg.rtmp, streamId, token)],
            seconds + 30)

    def player(self, url: str, seconds: float, timeout: float = 60) -> Any:
        return self.client([self.ffmpeg, "-hide_banner", "-nostdin", "-i", url,
                            "-t", str(seconds), "-f", "null", "-"], timeout)

    def rtmpUrl(self, tg: TokengateProcess, token: str, streamId: str = "cam1") -> str:
        return "rtmp://127.0.0.1:{}/LiveApp/{}?token={}".format(tg.rtmp, streamId, token)

    def dashUrl(self, tg: TokengateProcess, token: str) -> str:
        return "{}/LiveApp/streams/cam1/cam1.mpd?token={}".format(tg.base, token)

    async def decoded(self, page: Any, pc: str) -> int:
        return int(await page.evaluate(FRAMES_DECODED.replace("PC", pc)) or 0)

    async def plays(self, page: Any, pc: str, tech: str, minimum: int = 25) -> int:
        """
        The page plays over C{tech} and its peer connection decodes more
        than C{minimum} video frames; how many it decoded.
        """
        await page.wait_for("window.tokengateState.status === 'playing' || "
                            "window.tokengateState.status === 'error'", timeout=60)
        self.assertEqual((await page.evaluate("window.tokengateState.tech"),
                          await page.evaluate("window.tokengateState.status")),
                         (tech, "playing"), page.debug())
        n = 0
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            n = await self.decoded(page, pc)
            if n > minimum:
                return n
            await sleep(0.5)
        self.fail("{} decoded {} frames\n{}".format(tech, n, page.debug()))

    def viewers(self, tg: TokengateProcess) -> float:
        return metric(tg, "tokengate_sessions", action="play")

    async def test_playersRevocationRedisDown(self) -> None:
        self.configure(self.b, publishTokenControlEnabled=True, playTokenControlEnabled=True,
                       dashMuxingEnabled=True)
        origin = self.publisher(self.a, "cam1", self.mint(self.b, "publish"))
        self.waitUntil(lambda: self.broadcasting(self.b) and self.broadcasting(self.c), 30,
                       "cam1 broadcasting at B and C")

        # Chromium: WebRTC (WebSocket signalling) at B, WHEP at C; ffmpeg:
        # DASH at B and at C; tokens minted on other nodes than the one
        # that redeems them
        browser = await chromium.launch(self)
        webrtcB = await browser.open("{}/LiveApp/play.html?id=cam1&playOrder=webrtc&token={}"
                                     .format(self.b.base, self.mint(self.c, "play")))
        whepC = await browser.open("{}/LiveApp/play.html?id=cam1&playOrder=whep&token={}"
                                   .format(self.c.base, self.mint(self.a, "play")))
        dashToken = self.mint(self.a, "play")
        dashB = self.player(self.dashUrl(self.b, dashToken), 3, timeout=90)
        dashC = self.player(self.dashUrl(self.c, self.mint(self.b, "play")), 3, timeout=90)
        await self.plays(webrtcB, WEBRTC_PC, "webrtc")
        await self.plays(whepC, WHEP_PC, "whep")
        for result in (await dashB.done, await dashC.done):
            self.assertEqual(result.code, 0, result.stderr[-2000:])
            self.assertGreater(frames(result.stderr), 50, result.stderr[-2000:])
        # each edge pulled the stream once, whatever its viewers
        for edge in (self.b, self.c):
            self.assertEqual(metric(edge, "tokengate_edge_pull_results_total", result="started"),
                             1)
        self.assertEqual(metric(self.a, "tokengate_feed_requests_total", outcome="served"), 2)
        self.assertEqual(metric(self.c, "tokengate_whep_sessions"), 1)

        # the DASH token spent at B is refused at C
        again = await self.player(self.dashUrl(self.c, dashToken), 1).done
        self.assertNotEqual(again.code, 0)
        self.assertIn("403", again.stderr)

        # DELETE .../sessions at C ends the viewers at B (WebRTC) and C
        # (WHEP), and the DASH sessions there (alive until idle, though
        # ffmpeg left); the publisher at A goes on
        self.assertEqual((self.viewers(self.b), self.viewers(self.c)), (2, 2))
        code, body = self.delete(self.c, "/LiveApp/rest/v2/broadcasts/cam1/sessions")
        self.assertEqual((code, body["success"]), (200, True), body)
        await self.eventually(lambda: self.viewers(self.b) == 0 and self.viewers(self.c) == 0,
                              REVOKE_BOUND, "the viewers at B and C ended")
        await webrtcB.wait_for("window.tokengateState.status === 'error'", timeout=REVOKE_BOUND)
        self.assertEqual(metric(self.c, "tokengate_whep_sessions"), 0)
        self.assertTrue(self.broadcasting(self.a))
        self.assertFalse(origin.done.called)

        # new viewers: Chromium over WebRTC at B, ffmpeg over RTMP at C
        webrtcB2 = await browser.open("{}/LiveApp/play.html?id=cam1&playOrder=webrtc&token={}"
                                      .format(self.b.base, self.mint(self.b, "play")))
        rtmpC = self.player(self.rtmpUrl(self.c, self.mint(self.c, "play")), 150, timeout=180)
        await self.plays(webrtcB2, WEBRTC_PC, "webrtc")
        await self.eventually(lambda: frames(rtmpC.stderrSoFar()) > 25, 30,
                              lambda: "the RTMP viewer at C plays:\n" + rtmpC.stderrSoFar()[-1500:])
        playLater = self.mint(self.b, "play")
        publishLater = self.mint(self.c, "publish", "cam2")

        # Redis down: the viewers keep receiving frames
        self.redis.stop()
        downAt = time.monotonic()
        before = (await self.decoded(webrtcB2, WEBRTC_PC), frames(rtmpC.stderrSoFar()))
        # new admissions fail closed: a play at B, a publish at C
        refused = await self.player(self.rtmpUrl(self.b, playLater), 2, timeout=30).done
        self.assertNotEqual(refused.code, 0, refused.stderr[-1500:])
        self.assertEqual(metric(self.b, "tokengate_refusals_total", action="play",
                                reason="unavailable"), 1)
        refused = await self.publisher(self.c, "cam2", publishLater, seconds=5).done
        self.assertNotEqual(refused.code, 0, refused.stderr[-1500:])
        self.assertEqual(metric(self.c, "tokengate_refusals_total", action="publish",
                                reason="unavailable"), 1)
        await sleep(max(0.0, 8 - (time.monotonic() - downAt)))  # past the registry's 6 s TTL
        after = (await self.decoded(webrtcB2, WEBRTC_PC), frames(rtmpC.stderrSoFar()))
        self.assertGreater(after[0], before[0] + 50, "WebRTC at B during the outage")
        self.assertGreater(after[1], before[1] + 50, "RTMP at C during the outage")
        self.assertGreater(metric(self.a, "tokengate_cluster_registry_errors_total",
                                  operation="refresh"), 0)

        # Redis back, empty (no persistence), on the same port: no node is
        # restarted; the registry names A again, and a new play at B plays
        self.redis.start()
        self.waitUntil(lambda: self.broadcast(self.c).get("originAdress")
                       == "127.0.0.1:{}".format(self.a.http), 15,
                       "A's entry written again")

        def minted() -> bool:
            code, _ = self.b.get("/LiveApp/rest/v2/broadcasts/cam1/token?expireDate={}"
                                 "&type=play".format(int(time.time()) + 600))
            return code == 200
        self.waitUntil(minted, 15, "minting again at B")
        result = await self.player(self.rtmpUrl(self.b, self.mint(self.b, "play")), 2).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertGreater(frames(result.stderr), 25, result.stderr[-2000:])
        self.assertEqual(await webrtcB2.evaluate("window.tokengateState.status"), "playing")
        # the settings changed through B before the outage are still in
        # force everywhere (the empty Redis was seeded with them, not with
        # the nodes' start-up settings): a play without a token is refused
        for tg in self.nodes:
            self.assertTrue(tg.get(SETTINGS)[1]["playTokenControlEnabled"])
        tokenless = await self.player("rtmp://127.0.0.1:{}/LiveApp/cam1".format(self.b.rtmp),
                                      2, timeout=30).done
        self.assertNotEqual(tokenless.code, 0, tokenless.stderr[-1500:])

        # DELETE .../tokens at C kicks the publisher at A, and with it the
        # edges' viewers
        code, body = self.delete(self.c, "/LiveApp/rest/v2/broadcasts/cam1/tokens")
        self.assertEqual(code, 200, body)
        kickedAt = time.monotonic()
        await origin.done
        self.assertLess(time.monotonic() - kickedAt, REVOKE_BOUND)
        self.assertGreaterEqual(metric(self.a, "tokengate_sessions_kicked_total",
                                       action="publish", reason="revoked"), 1)
        ended = await rtmpC.done
        self.assertLess(time.monotonic() - kickedAt, REVOKE_BOUND + 10, ended.stderr[-1500:])
        self.waitUntil(lambda: not self.broadcasting(self.b), 10, "cam1 ended at B")

        # republished at C: a new viewer at B plays it, pulled from C
        self.publisher(self.c, "cam1", self.mint(self.a, "publish"), seconds=60)
        await self.eventually(lambda: self.broadcast(self.b).get("originAdress")
                              == "127.0.0.1:{}".format(self.c.http), 20,
                              "cam1 republished at C")
        served = metric(self.c, "tokengate_feed_requests_total", outcome="served")
        result = await self.player(self.rtmpUrl(self.b, self.mint(self.b, "play")), 2).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertGreater(frames(result.stderr), 25, result.stderr[-2000:])
        self.assertEqual(metric(self.c, "tokengate_feed_requests_total", outcome="served"),
                         served + 1)

        # kill -9 C, the origin now: the viewers at A and B end within the
        # bound (the pulls' retries or the registry entry's expiry)
        viewers = [self.player(self.rtmpUrl(tg, self.mint(tg, "play")), 60, timeout=90)
                   for tg in (self.a, self.b)]
        for viewer in viewers:
            await self.eventually(lambda viewer=viewer: frames(viewer.stderrSoFar()) > 25, 30,
                                  "the viewers at A and B play")
        self.c.kill()
        killed = time.monotonic()
        for viewer in viewers:
            result = await viewer.done
            self.assertLess(time.monotonic() - killed, DEATH_BOUND, result.stderr[-1500:])
            self.assertFalse(result.timedOut)
        self.assertFalse(self.broadcasting(self.a) or self.broadcasting(self.b))
