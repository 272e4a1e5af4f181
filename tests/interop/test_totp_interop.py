"""
TOTP subscribers with real clients against a real tokengate (a C{twistd}
subprocess, L{tests.service.TokengateProcess}), over loopback: ffmpeg
publishing over RTMP (query and path forms) and SRT, ffmpeg playing HLS and
RTMP, Ant Media's own JavaScript SDK in headless Chromium over the
WebSocket; codes made by pyotp (an independent TOTP) from Ant Media's key
derivation, or read from the REST API; blocking through the REST API ends
a live ffmpeg publisher.

Publishing needs both a hash token and a subscriber code (the two
mechanisms combined, both must pass).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

import pyotp
from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data, File

from tests import procs
from tests.fixtures import frames, test_clip
from tests.helpers import require
from tests.service import TokengateProcess

PUBLISH_SECRET = "publish secret"
PLAY_SECRET = "play secret"
HASH_SECRET = "a hash secret of 24 chars"
B32 = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
REFUSED = "You are not allowed to publish the stream."
REFUSED_PLAY = "You are not allowed to play the stream due to security."


def derivedB32(secret: str, subscriberId: str, streamId: str, type: str) -> str:
    """
    Ant Media's key for a subscriber not recorded through REST, written
    again for the test (ASCII inputs): the text padded with X to a multiple
    of 8, in Base32.
    """
    text = secret + subscriberId + streamId + type
    text += "X" * (-len(text) % 8)
    return base64.b32encode(text.encode("ascii")).decode("ascii")


def code(subscriberId: str, streamId: str, type: str = "publish") -> str:
    secret = PUBLISH_SECRET if type == "publish" else PLAY_SECRET
    return pyotp.TOTP(derivedB32(secret, subscriberId, streamId, type), interval=60).now()


def wrong(good: str) -> str:
    return "{:06d}".format((int(good) + 500000) % 10**6)


def hashToken(streamId: str, role: str) -> str:
    return hashlib.sha256((streamId + role + HASH_SECRET).encode()).hexdigest()


def ts_clip(seconds: int) -> str:
    """
    The test clip as MPEG-TS (for SRT callers).
    """
    path = os.path.join(tempfile.mkdtemp(prefix="tg-totp-"), "clip.ts")
    subprocess.run([require("ffmpeg"), "-v", "error", "-y", "-i", test_clip(seconds),
                    "-c", "copy", "-bsf:v", "h264_mp4toannexb", "-f", "mpegts", path],
                   check=True, timeout=60)
    return path


class TOTPInterop(TestCase):
    """
    One tokengate process per test, LiveApp with TOTP for publish and play
    and hash tokens for publish.
    """

    timeout = 180
    reactorName: Any = None

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        self.tg = TokengateProcess(self.mktemp(), reactor=self.reactorName).start(timeout=60)
        self.addCleanup(self.tg.stop)
        self.running: list[procs.Running] = []
        self.addCleanup(self._killClients)
        code_, answer = self.tg.post("/rest/v2/applications/settings/LiveApp", {
            "enableTimeTokenForPublish": True, "enableTimeTokenForPlay": True,
            "timeTokenSecretForPublish": PUBLISH_SECRET,
            "timeTokenSecretForPlay": PLAY_SECRET,
            "hashControlPublishEnabled": True, "tokenHashSecret": HASH_SECRET})
        self.assertEqual((code_, answer["success"]), (200, True), answer)
        self.rtmpBase = "rtmp://127.0.0.1:{}".format(self.tg.rtmp)

    async def _killClients(self) -> None:
        for r in self.running:
            r.kill()
        for r in self.running:
            await r.done

    def start(self, argv: list[str], timeout: float = 60.0) -> procs.Running:
        r = procs.start(argv, timeout)
        self.running.append(r)
        return r

    def publish(self, path: str, seconds: int = 4, realtime: bool = False) -> procs.Running:
        argv = [self.ffmpeg, "-hide_banner", "-nostdin"]
        if realtime:
            argv.append("-re")
        argv += ["-i", test_clip(seconds), "-c", "copy", "-f", "flv", self.rtmpBase + path]
        return self.start(argv, 90)

    def put(self, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(self.tg.base + path, data=b"", method="PUT")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def refusals(self, protocol: str, reason: str) -> float:
        with urllib.request.urlopen(self.tg.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r'tokengate_refusals_total\{action="(?:publish|play)",protocol="%s",'
                      r'reason="%s"\} ([0-9.]+)' % (protocol, reason), text)
        return float(m.group(1)) if m else 0.0

    async def waitStatus(self, streamId: str, status: str = "broadcasting",
                         timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        answer: Any = None
        while time.monotonic() < deadline:
            code_, answer = self.tg.get("/LiveApp/rest/v2/broadcasts/" + streamId)
            if code_ == 200 and answer["status"] == status:
                return answer
            await task.deferLater(reactor, 0.2)
        self.fail("{} is not {}: {}".format(streamId, status, answer))


class RTMPTests(TOTPInterop):
    async def test_publishQueryAndPathForms(self) -> None:
        """
        ffmpeg publishes with a hash token and a subscriber code, in the
        query form and in Ant Media's path form; a wrong code, or a good
        code without the hash token, is refused with the security answer.
        """
        h1, h2 = hashToken("s1", "publish"), hashToken("s2", "publish")
        result = await self.publish("/LiveApp/s1?token={}&subscriberId=alice&subscriberCode={}"
                                    .format(h1, wrong(code("alice", "s1")))).done
        self.assertNotEqual(result.code, 0)
        self.assertIn(REFUSED, result.stderr)
        self.assertEqual(self.refusals("rtmp", "bad_code"), 1)
        result = await self.publish("/LiveApp/s1?subscriberId=alice&subscriberCode={}"
                                    .format(code("alice", "s1"))).done
        self.assertNotEqual(result.code, 0)
        self.assertIn(REFUSED, result.stderr)
        self.assertEqual(self.refusals("rtmp", "missing"), 1)
        result = await self.publish("/LiveApp/s1?token={}&subscriberId=alice&subscriberCode={}"
                                    .format(h1, code("alice", "s1"))).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertEqual((await self.waitStatus("s1", "finished"))["publishType"], "RTMP")
        result = await self.publish("/LiveApp/s2/{}/alice/{}".format(
            h2, code("alice", "s2"))).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        await self.waitStatus("s2", "finished")
        code_, events = self.tg.get("/LiveApp/rest/v2/broadcasts/s2/connection-events/0/10")
        self.assertEqual([(e["subscriberId"], e["eventType"], e["eventProtocol"])
                          for e in events],
                         [("alice", "connected", "rtmp"), ("alice", "disconnected", "rtmp")])

    async def test_blockKicksLivePublisher(self) -> None:
        """
        Blocking the subscriber through REST ends its live ffmpeg publisher
        at once; its next publish is refused as blocked.
        """
        path = "/LiveApp/s1?token={}&subscriberId=alice&subscriberCode={}"
        started = time.monotonic()
        pub = self.publish(path.format(hashToken("s1", "publish"), code("alice", "s1")),
                           seconds=30, realtime=True)
        await self.waitStatus("s1")
        code_, answer = self.put("/LiveApp/rest/v2/broadcasts/s1/subscribers/alice/block/60/"
                                 "publish")
        self.assertEqual((code_, answer["success"], answer["dataId"]), (200, True, "1"))
        result = await pub.done
        self.assertFalse(result.timedOut)
        self.assertLess(time.monotonic() - started, 25, result.stderr[-2000:])
        await self.waitStatus("s1", "finished")
        result = await self.publish(path.format(hashToken("s1", "publish"),
                                                code("alice", "s1"))).done
        self.assertNotEqual(result.code, 0)
        self.assertIn("Subscriber alice is blocked to publish stream.", result.stderr)
        self.assertEqual(self.refusals("rtmp", "blocked"), 1)


class PlayTests(TOTPInterop):
    async def test_hlsAndRtmpPlay(self) -> None:
        """
        ffmpeg plays HLS with a recorded subscriber's code (read from the
        REST API, the same as pyotp's) in the query; a wrong code is a 403;
        over RTMP one code plays on one connection at a time.
        """
        pub = self.publish("/LiveApp/s1?token={}&subscriberId=alice&subscriberCode={}".format(
            hashToken("s1", "publish"), code("alice", "s1")), seconds=40, realtime=True)
        self.addCleanup(pub.kill)
        await self.waitStatus("s1")
        code_, answer = self.tg.post("/LiveApp/rest/v2/broadcasts/s1/subscribers", {
            "subscriberId": "bobby", "type": "play", "b32Secret": B32})
        self.assertEqual((code_, answer["success"]), (200, True), answer)
        code_, answer = self.tg.get("/LiveApp/rest/v2/broadcasts/s1/subscribers/bobby/totp")
        bobby = answer["dataId"]
        self.assertIn(bobby, [pyotp.TOTP(B32, interval=60).at(time.time() + d)
                              for d in (-1, 0, 1)])
        await task.deferLater(reactor, 5)  # a few segments
        hls = "http://127.0.0.1:{}/LiveApp/streams/s1.m3u8?subscriberId={}&subscriberCode={}"
        result = await self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-i",
                                   hls.format(self.tg.http, "bobby", wrong(bobby)),
                                   "-t", "2", "-f", "null", "-"], 60).done
        self.assertNotEqual(result.code, 0)
        self.assertIn("403", result.stderr)
        self.assertEqual(self.refusals("hls", "bad_code"), 1)
        result = await self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-i",
                                   hls.format(self.tg.http, "bobby", bobby),
                                   "-t", "2", "-f", "null", "-"], 60).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertGreater(frames(result.stderr), 20)
        # RTMP: carol (derived from the play secret) on one connection at once
        rtmp = "{}/LiveApp/s1?subscriberId=carol&subscriberCode={}".format(
            self.rtmpBase, code("carol", "s1", "play"))
        first = self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-re", "-i", rtmp,
                            "-t", "8", "-f", "null", "-"], 60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "frame=" not in first.stderrSoFar():
            await task.deferLater(reactor, 0.2)
        second = await self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-i", rtmp,
                                   "-t", "2", "-f", "null", "-"], 60).done
        self.assertNotEqual(second.code, 0)
        self.assertIn(REFUSED_PLAY, second.stderr)
        self.assertEqual(self.refusals("rtmp", "code_in_use"), 1)
        result = await first.done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertGreater(frames(result.stderr), 50)


class SRTTests(TOTPInterop):
    async def test_srtPublish(self) -> None:
        """
        ffmpeg publishes over SRT with the hash token and the subscriber's
        code in the stream id; a wrong code is rejected; a blocked
        subscriber is rejected too.
        """
        clip = ts_clip(4)
        streamid = "LiveApp/s3,token={},subscriberId=alice,subscriberCode={}"

        def srt(sid: str) -> procs.Running:
            url = "srt://127.0.0.1:{}?streamid={}&linger=3".format(self.tg.srt, sid)
            return self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-re", "-i", clip,
                               "-c", "copy", "-f", "mpegts", url], 60)

        token = hashToken("s3", "publish")
        result = await srt(streamid.format(token, wrong(code("alice", "s3")))).done
        self.assertNotEqual(result.code, 0)
        self.assertIn("REJECT", result.stderr)
        self.assertEqual(self.refusals("srt", "bad_code"), 1)
        result = await srt(streamid.format(token, code("alice", "s3"))).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertEqual((await self.waitStatus("s3", "finished"))["publishType"], "SRT")
        code_, answer = self.put("/LiveApp/rest/v2/broadcasts/s3/subscribers/alice/block/60/"
                                 "publish_play")
        self.assertEqual((code_, answer["success"]), (200, True))
        result = await srt(streamid.format(token, code("alice", "s3"))).done
        self.assertNotEqual(result.code, 0)
        self.assertIn("REJECT", result.stderr)
        self.assertEqual(self.refusals("srt", "blocked"), 1)


TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SDK_DIR = os.path.join(TESTS, "ams_sdk")
SDK_JS = os.path.join(SDK_DIR, "node_modules", "@antmedia", "webrtc_adaptor", "dist",
                      "browser", "webrtc_adaptor.js")
SELFIE_JS = os.path.join(SDK_DIR, "node_modules", "@mediapipe", "selfie_segmentation",
                         "selfie_segmentation.js")

#: a page that loads Ant Media's SDK and publishes as its samples do, with
#: a subscriber id and code
PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>AMS SDK</title></head>
<body>
<video id="localVideo" autoplay muted playsinline></video>
<script src="/selfie_segmentation.js"></script>
<script src="/webrtc_adaptor.js"></script>
<script>
window.sdk = {events: [], errors: []};
window.start = function (url, streamId, subscriberId, subscriberCode) {
  var adaptor = new webrtc_adaptor.WebRTCAdaptor({
    websocket_url: url,
    mediaConstraints: {video: true, audio: true},
    peerconnection_config: {iceServers: []},
    sdp_constraints: {OfferToReceiveAudio: false, OfferToReceiveVideo: false},
    localVideoId: 'localVideo',
    callback: function (info) {
      sdk.events.push(info);
      if (info === 'initialized') {
        adaptor.publish(streamId, undefined, subscriberId, subscriberCode);
      }
    },
    callbackError: function (error) { sdk.errors.push(error); }
  });
  window.adaptor = adaptor;
};
</script>
</body></html>
"""


class WebRTCTests(TOTPInterop):
    """
    Ant Media's JavaScript SDK (as in L{tests.interop.test_ams_sdk}) in
    headless Chromium with a fake camera publishes with a subscriber id
    and code; a blocked subscriber gets Ant Media's C{user_blocked}.
    """

    reactorName = "asyncio"

    def setUp(self) -> None:
        try:
            import aiortc  # noqa: F401
        except ImportError:
            self.skipTest("aiortc not installed")
        require("chromium")
        if not os.path.isfile(SDK_JS):
            # tests.interop.test_ams_sdk fetches it (npm ci) when it runs
            require("npm")
            r = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund",
                                "--prefix", SDK_DIR], capture_output=True, timeout=150)
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        super().setUp()
        # WebRTC publishers need no hash token here
        code_, answer = self.tg.post("/rest/v2/applications/settings/LiveApp", {
            "enableTimeTokenForPublish": True, "timeTokenSecretForPublish": PUBLISH_SECRET})
        self.assertEqual(answer["success"], True, answer)

    async def test_sdkPublishAndUserBlocked(self) -> None:
        from tests import browser as browser_mod

        root = Resource()
        root.putChild(b"", Data(PAGE, "text/html; charset=utf-8"))
        root.putChild(b"webrtc_adaptor.js", File(SDK_JS, defaultType="text/javascript"))
        root.putChild(b"selfie_segmentation.js", File(SELFIE_JS, defaultType="text/javascript"))
        site = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(site.stopListening)
        page = "http://127.0.0.1:{}/".format(site.getHost().port)
        ws = "ws://127.0.0.1:{}/LiveApp/websocket".format(self.tg.http)
        b = await browser_mod.launch(self, args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])

        async def publish(subscriberId: str, streamId: str, subscriberCode: str) -> Any:
            p = await b.open(page)
            await p.evaluate("start({}, {}, {}, {})".format(
                json.dumps(ws), json.dumps(streamId), json.dumps(subscriberId),
                json.dumps(subscriberCode)))
            await p.wait_for("sdk.events.indexOf('publish_started') >= 0 || "
                             "sdk.errors.length > 0", timeout=40)
            return p

        p = await publish("alice", "w1", wrong(code("alice", "w1")))
        self.assertEqual(await p.evaluate("sdk.errors"), ["unauthorized_access"])
        p = await publish("alice", "w1", code("alice", "w1"))
        self.assertEqual(await p.evaluate("sdk.errors"), [], p.debug())
        await self.waitStatus("w1")
        code_, answer = self.put("/LiveApp/rest/v2/broadcasts/w1/subscribers/alice/block/60/"
                                 "publish")
        self.assertEqual((code_, answer["dataId"]), (200, "1"))
        await self.waitStatus("w1", "finished")
        p = await publish("alice", "w1", code("alice", "w1"))
        self.assertEqual(await p.evaluate("sdk.errors"), ["user_blocked"])
        self.assertEqual(self.refusals("webrtc", "blocked"), 1)
