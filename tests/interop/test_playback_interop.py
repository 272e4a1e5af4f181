"""
Playback through one token with real clients over loopback: ffmpeg publishes
over RTMP; ffmpeg reads HLS and DASH, ffprobe reads the MP4 recording, and
headless Chromium plays play.html (hls.js, dash.js, MP4).
"""

from __future__ import annotations

import json
import os

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase


from tests import procs
from tests.fixtures import InProcessMedia, frames, test_clip
from tests.helpers import http_client, require


class LiveServer(procs.ClientsMixin, InProcessMedia, TestCase):
    timeout = 180
    tokenType = "play"

    def setUp(self):
        self.ffmpeg = require("ffmpeg")
        self.serveMedia(playTokenControlEnabled=True, hlsMuxingEnabled=True,
                        dashMuxingEnabled=True, mp4MuxingEnabled=True)
        self.startClients()

    def publish(self, seconds=30, streamId="s1"):
        url = "rtmp://127.0.0.1:{}/LiveApp/{}".format(self.rtmp.getHost().port, streamId)
        return self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-re", "-i",
                           test_clip(seconds), "-c", "copy", "-f", "flv", url])

    async def waitPlaylist(self, streamId="s1"):
        def ready():
            p = self.server.outputs.packager("LiveApp", streamId)
            return p is not None and p.hlsMultivariant("") is not None \
                and (p.edge("video") or (0, 0))[0] >= 2
        await self.waitFor(ready, 30, "the first segments")


class FFmpegClientTests(LiveServer):
    async def _readLive(self, url_path):
        pub = self.publish(40)
        await self.waitPlaylist()
        token = self.mint()
        reader = self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-v", "info",
                             "-i", self.web + url_path + "?token=" + token,
                             "-t", "11", "-f", "null", "-"], timeout=90)
        await task.deferLater(reactor, 4)
        # the same token from another address (another viewer): refused
        other = http_client(self, source="127.0.0.2")
        r2 = await other.get(self.web + url_path + "?token=" + token)
        self.assertEqual(r2.code, 403, await r2.content())
        # a token that was never minted, from a second ffmpeg: refused
        second = self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-i",
                             self.web + url_path + "?token=" + "1" * 40, "-t", "2",
                             "-f", "null", "-"])
        r2 = await second.done
        self.assertNotEqual(r2.code, 0)
        self.assertIn("HTTP error 403", r2.stderr)
        result = await reader.done
        self.assertEqual(result.code, 0, result.stderr[-1500:])
        self.assertFalse(result.timedOut)
        # ffmpeg 5.1's DASH reader re-reads a segment after some manifest
        # refreshes (it rounds the current time to whole seconds), so it may
        # count more frames than it played; at least 10 s must decode.
        self.assertGreaterEqual(frames(result.stderr), 250, result.stderr[-1500:])
        self.assertRegex(result.stderr, r"time=00:00:1[01]")
        self.assertNotIn("HTTP error", result.stderr[:20000])
        pub.kill()
        return result

    async def test_hls(self):
        result = await self._readLive("/LiveApp/streams/s1.m3u8")
        self.assertIn("Video: h264", result.stderr)

    async def test_dash(self):
        result = await self._readLive("/LiveApp/streams/s1/s1.mpd")
        self.assertIn("Video: h264", result.stderr)

    async def test_vod(self):
        ffprobe = require("ffprobe")
        pub = self.publish(12)
        r = await pub.done
        self.assertEqual(r.code, 0, r.stderr[-2000:])
        path = self.server.outputs.recordingPath("LiveApp", "s1")
        await self.waitFor(lambda: os.path.exists(path), 30, "the recording")
        token = self.mint()
        probe = self.start([ffprobe, "-v", "error", "-show_entries", "format=duration",
                            "-count_packets", "-show_entries", "stream=nb_read_packets,codec_name",
                            "-of", "json", self.web + "/LiveApp/streams/s1.mp4?token=" + token])
        result = await probe.done
        self.assertEqual(result.code, 0, result.stderr)
        info = json.loads(result.out)
        self.assertApproximates(float(info["format"]["duration"]), 12.0, 0.5)
        self.assertEqual(sorted(s["codec_name"] for s in info["streams"]), ["aac", "h264"])
        # from another address the spent token is refused
        other = http_client(self, source="127.0.0.2")
        again = await other.get(self.web + "/LiveApp/streams/s1.mp4?token=" + token)
        self.assertEqual(again.code, 403)


class BrowserTests(LiveServer):
    """
    play.html in headless Chromium against the real server.
    """

    async def _play(self, tech, token, expect_error=False):
        from tests import browser as chromium

        b = await chromium.launch(self)
        url = "{}/LiveApp/play.html?id=s1&playOrder={}&token={}".format(self.web, tech, token)
        page = await b.open(url)
        if expect_error:
            await page.wait_for("window.tokengateState && window.tokengateState.status === 'error'", 30)
            return await page.evaluate("document.querySelector('#error').textContent")
        await page.wait_for("window.tokengateState && window.tokengateState.status === 'playing'", 40)
        start = await page.evaluate("document.querySelector('video').currentTime")
        await page.wait_for(
            "document.querySelector('video').currentTime > {}".format(start + 3), 30)
        await page.screenshot(os.path.join(self.dataDir, tech + ".png"))
        await b.close()
        return None

    async def test_liveHlsAndDash(self):
        require("chromium")
        self.publish(60)
        await self.waitPlaylist()
        await self._play("hls", self.mint())
        await self._play("dash", self.mint())
        spent = self.mint()
        await self._play("hls", spent)
        # the session it opened ends (the viewer left and it was revoked):
        # the spent token opens nothing more
        registry = self.server.gate.registry
        registry.kick([g for g in registry.grants("LiveApp", "s1") if g.action == "play"],
                      "revoked")
        text = await self._play("hls", spent, expect_error=True)
        self.assertIn("Not authorized", text)
        text = await self._play("dash", "", expect_error=True)
        self.assertIn("Not authorized", text)

    async def test_vod(self):
        require("chromium")
        pub = self.publish(12)
        await pub.done
        path = self.server.outputs.recordingPath("LiveApp", "s1")
        await self.waitFor(lambda: os.path.exists(path), 30, "the recording")
        await self._play("vod", self.mint())
        text = await self._play("vod", "nope", expect_error=True)
        self.assertIn("Not authorized", text)
