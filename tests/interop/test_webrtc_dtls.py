"""
DTLS with GStreamer's webrtcbin 1.22 (the stack of simple-whip-client and
GStreamer's whipsink) as a client of the WebSocket signalling, over
loopback: tests/webrtcbin_client.py run with the system Python (python3-gi),
bounded in time, against the WebRTC-capable test server
(L{tests.mediaserver}).

webrtcbin makes an RSA certificate.  As publisher it offers
C{a=setup:actpass} and the server answers C{a=setup:active}: webrtcbin is
the DTLS server, and the server's DTLS client must offer an ECDHE-RSA suite
(aiortc alone offers only ECDHE-ECDSA ones: "no shared cipher").  As player
it answers the server's offer with C{a=setup:active}: the server is the
DTLS server, with its ECDSA certificate.
"""

from __future__ import annotations

import json
import os
import subprocess

from twisted.internet import reactor, task
from twisted.trial.unittest import SkipTest, TestCase

from tests import mediaserver, procs
from tests.helpers import require

CLIENT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "webrtcbin_client.py")

#: the Python with GStreamer's introspection (python3-gi, GstWebRTC)
SYSTEM_PYTHON = "/usr/bin/python3"


#: the GStreamer elements the client uses (nicesrc and nicesink, which
#: webrtcbin makes for ICE, are gstreamer1.0-nice's; gst-inspect-1.0
#: --exists does not find them, their plugin's version not being
#: GStreamer's)
ELEMENTS = ("webrtcbin", "nicesrc", "nicesink", "dtlssrtpenc", "videotestsrc", "openh264enc",
            "h264parse", "rtph264pay", "audiotestsrc", "opusenc", "rtpopuspay", "decodebin",
            "avdec_h264")

_CHECK = """
import sys, gi
gi.require_version('Gst', '1.0'); gi.require_version('GstSdp', '1.0')
gi.require_version('GstWebRTC', '1.0')
from gi.repository import Gst, GstSdp, GstWebRTC
Gst.init(None)
missing = [e for e in sys.argv[1:] if Gst.ElementFactory.find(e) is None]
print(' '.join(missing))
sys.exit(1 if missing else 0)
"""


def requireGstPython() -> str:
    """
    The system Python, when it imports GStreamer's WebRTC bindings and
    finds the client's L{ELEMENTS}; skip (naming what is missing)
    otherwise, a failure under C{TOKENGATE_REQUIRE_CLIENTS}.
    """
    message = ""
    if not os.path.exists(SYSTEM_PYTHON):
        message = SYSTEM_PYTHON + " not installed"
    else:
        r = subprocess.run([SYSTEM_PYTHON, "-c", _CHECK, *ELEMENTS], capture_output=True,
                           timeout=60)
        if r.returncode != 0 and r.stdout.strip():
            message = "GStreamer elements not installed: " + r.stdout.decode().strip()
        elif r.returncode != 0:
            last = (r.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
            message = ("python3-gi with GstWebRTC (gir1.2-gst-plugins-bad-1.0) not installed: "
                       + last)
    if message:
        if os.environ.get("TOKENGATE_REQUIRE_CLIENTS"):
            raise AssertionError(message)
        raise SkipTest(message)
    return SYSTEM_PYTHON


class Webrtcbin(TestCase):

    timeout = 180

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        try:
            import aiortc  # noqa: F401
        except ImportError:
            self.skipTest("aiortc not installed")
        self.python = requireGstPython()

    async def client(self, mode: str, web: str, streamId: str, token: str,
                     seconds: float) -> dict:
        """
        Run the webrtcbin client to its end: its summary.
        """
        url = web.replace("http://", "ws://") + "/LiveApp/websocket"
        r = await procs.start([self.python, CLIENT, mode, url, streamId, token, str(seconds)],
                              seconds + 40).done
        lines = [ln for ln in r.out.decode().splitlines() if ln.startswith("{")]
        self.assertTrue(lines and "states" in json.loads(lines[-1]), r.stderr)
        return json.loads(lines[-1])

    async def status(self, web: str, streamId: str) -> str:
        import treq

        resp = await treq.get("{}/LiveApp/rest/v2/broadcasts/{}".format(web, streamId),
                              persistent=False)
        return json.loads(await resp.content()).get("status", "")

    async def waitBroadcasting(self, web: str, streamId: str, running: procs.Running) -> None:
        for _ in range(150):
            if await self.status(web, streamId) == "broadcasting":
                return
            if running.done.called:
                break
            await task.deferLater(reactor, 0.1)
        self.fail("{} never went live: {}".format(streamId, running.stderrSoFar()[-2000:]))

    async def test_publisher(self) -> None:
        """
        webrtcbin publishes H.264 and Opus with a publish token: the DTLS
        handshake with its RSA certificate succeeds, the stream goes live and
        ffmpeg decodes its HLS (with a play token).
        """
        web, _ = await mediaserver.serve(self)
        url = web.replace("http://", "ws://") + "/LiveApp/websocket"
        token = await mediaserver.mint(web, "gst1", "publish")
        # GStreamer's DTLS errors (OpenSSL's reason) on the client's stderr
        env = dict(os.environ, GST_DEBUG="dtlsconnection:1", GST_DEBUG_NO_COLOR="1")
        pub = procs.start([self.python, CLIENT, "publish", url, "gst1", token, "25"], 70, env)
        self.addCleanup(lambda: (pub.kill(), pub.done)[1])
        for _ in range(300):
            if b"publish_started" in b"".join(pub.proto.out) or pub.done.called:
                break
            await task.deferLater(reactor, 0.1)
        if b"publish_started" not in b"".join(pub.proto.out):
            pub.kill()
            result = await pub.done
            self.fail("webrtcbin did not publish: {}\n{}".format(
                result.out.decode().strip().splitlines()[-1:],
                "\n".join(ln for ln in result.stderr.splitlines() if "ssl" in ln.lower())))
        self.assertEqual(await self.status(web, "gst1"), "broadcasting")
        play = await mediaserver.mint(web, "gst1", "play")
        frames, errors = 0, ""
        for _ in range(20):
            r = await procs.start([
                self.ffmpeg, "-nostdin", "-loglevel", "error",
                "-i", "{}/LiveApp/streams/gst1.m3u8?token={}".format(web, play),
                "-map", "0:v:0", "-frames:v", "25", "-f", "framemd5", "-"], 40).done
            frames = sum(1 for ln in r.out.decode().splitlines()
                         if ln and not ln.startswith("#"))
            errors = r.stderr.replace(play, "<token>")
            if frames >= 25:
                break
            await task.deferLater(reactor, 0.5)
        self.assertGreaterEqual(frames, 25, errors)
        result = await pub.done
        lines = [ln for ln in result.out.decode().splitlines() if ln.startswith("{")]
        summary = json.loads(lines[-1])
        self.assertEqual(summary["errors"], [], result.stderr[-4000:])
        self.assertIn("connected", summary["states"])
        self.assertNotIn("failed", summary["states"])
        self.assertEqual(summary["notifications"][:1], ["publish_started"])
        self.assertEqual(summary["localSetup"], ["a=setup:actpass"])
        self.assertEqual(summary["remoteSetup"], ["a=setup:active"])

    async def test_player(self) -> None:
        """
        ffmpeg publishes over RTMP; webrtcbin plays it with a play token
        (the server is the DTLS server) and decodes its video.
        """
        web, ports = await mediaserver.serve(self)
        token = await mediaserver.mint(web, "rtmp1", "publish")
        ff = procs.start([
            self.ffmpeg, "-nostdin", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-f", "lavfi",
            "-i", "sine=frequency=440:sample_rate=44100", "-t", "40", "-pix_fmt", "yuv420p",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0",
            "-c:a", "aac", "-f", "flv",
            "rtmp://127.0.0.1:{}/LiveApp/rtmp1?token={}".format(ports["rtmp"], token)], 60)
        self.addCleanup(lambda: (ff.kill(), ff.done)[1])
        await self.waitBroadcasting(web, "rtmp1", ff)
        summary = await self.client("play", web, "rtmp1",
                                    await mediaserver.mint(web, "rtmp1", "play"), 12)
        self.assertEqual(summary["errors"], [])
        self.assertIn("connected", summary["states"])
        self.assertEqual(summary["notifications"][:1], ["play_started"])
        self.assertEqual(summary["remoteSetup"], ["a=setup:actpass"])
        self.assertEqual(summary["localSetup"], ["a=setup:active"])
        self.assertGreaterEqual(summary["frames"], 100)
        self.assertEqual(summary["size"], [320, 240])

