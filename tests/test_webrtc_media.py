"""
WebRTC media with real peers over loopback.  WebRTC needs Twisted's asyncio
reactor, and trial's reactor is global, so each test runs a script
(tests/webrtc_media_script.py) in a subprocess with its own asyncio reactor,
bounded in time:

- aiortc publishes an H.264 clip (made by ffmpeg) with a publish token and
  aiortc plays it with a play token, decoding frames;
- the spent play token is refused (unauthorized_access);
- ffmpeg publishes over RTMP and aiortc plays that stream over WebRTC.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.trial.unittest import TestCase

from . import procs
from .helpers import require

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "webrtc_media_script.py")


def h264_clip(ffmpeg: str, path: str) -> list[str]:
    return [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
            "-i", "testsrc=size=320x240:rate=25", "-t", "6", "-pix_fmt", "yuv420p",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0", path]


class AiortcPeers(TestCase):
    timeout = 180

    def setUp(self):
        self.ffmpeg = require("ffmpeg")
        try:
            import aiortc  # noqa: F401
        except ImportError:
            self.skipTest("aiortc not installed")

    async def test_publish_play_rtmp(self):
        clip = os.path.abspath(self.mktemp()) + ".mp4"
        made = await procs.start(h264_clip(self.ffmpeg, clip), 60).done
        self.assertEqual(made.code, 0, made.stderr)
        r = await procs.start([sys.executable, SCRIPT, clip], 120).done
        lines = [ln for ln in r.out.decode().splitlines() if ln.startswith("{")]
        self.assertTrue(lines, r.stderr)
        out = json.loads(lines[-1])
        self.assertNotIn("exception", out, r.stderr)
        # WebRTC publish with a publish token
        self.assertEqual(out["publish"]["definition"], "publish_started")
        self.assertTrue(out["live"])
        self.assertGreater(out["publishFrames"], 0)
        # WebRTC play with a play token: decoded frames
        self.assertEqual(out["play"]["notification"], "play_started")
        self.assertGreaterEqual(out["play"]["frames"], 50)
        self.assertEqual(out["play"]["size"], [320, 240])
        self.assertEqual(out["play"]["finished"], "play_finished")
        # the spent token
        self.assertEqual(out["spent"]["error"],
                         {"command": "error", "definition": "unauthorized_access",
                          "streamId": "s1"})
        # stop ends the broadcast
        self.assertEqual(out["publishStop"]["definition"], "publish_finished")
        self.assertFalse(out["liveAfterStop"])
        # RTMP in, WebRTC out
        self.assertEqual(out["rtmpPlay"]["notification"], "play_started")
        self.assertGreaterEqual(out["rtmpPlay"]["frames"], 50)
