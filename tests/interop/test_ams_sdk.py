"""
Ant Media Server's own JavaScript SDK (C{@antmedia/webrtc_adaptor} from
npm, as its users load it) against tokengate, in headless Chromium with a
fake camera: a client written for the reference server publishes and plays
with one-time tokens unchanged, and sees the reference error for a bad
token and for an application whose C{webRTCEnabled} is off.

The SDK is fetched by C{npm ci} into C{tests/ams_sdk/node_modules} (locked
by C{tests/ams_sdk/package-lock.json}) the first time this runs; npm is
required.  The tokengate server runs in a subprocess on the asyncio
reactor (tests/webrtc_media_script.py C{serve}); the page that loads the
SDK is served by this test on another loopback port (the SDK talks to
tokengate's WebSocket only).
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data, File

from tests import mediaserver, procs
from tests.helpers import require

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SDK_DIR = os.path.join(TESTS, "ams_sdk")
SDK_JS = os.path.join(SDK_DIR, "node_modules", "@antmedia", "webrtc_adaptor", "dist",
                      "browser", "webrtc_adaptor.js")
#: the SDK's browser bundle expects mediapipe's global (its virtual
#: background plugin), as the reference server's sample pages load it
SELFIE_JS = os.path.join(SDK_DIR, "node_modules", "@mediapipe", "selfie_segmentation",
                         "selfie_segmentation.js")

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>AMS SDK</title></head>
<body>
<video id="localVideo" autoplay muted playsinline></video>
<video id="remoteVideo" autoplay muted playsinline></video>
<script src="/selfie_segmentation.js"></script>
<script src="/webrtc_adaptor.js"></script>
<script>
window.sdk = {events: [], errors: [], information: []};
// One adaptor as the SDK's own samples make it: publish, or play.
window.start = function (url, mode, streamId, token) {
  var play = mode === 'play';
  var adaptor = new webrtc_adaptor.WebRTCAdaptor({
    websocket_url: url,
    isPlayMode: play,
    mediaConstraints: play ? {video: false, audio: false} : {video: true, audio: true},
    peerconnection_config: {iceServers: []},
    sdp_constraints: {OfferToReceiveAudio: false, OfferToReceiveVideo: false},
    localVideoId: play ? undefined : 'localVideo',
    remoteVideoId: play ? 'remoteVideo' : undefined,
    callback: function (info, obj) {
      sdk.events.push(mode + ':' + info);
      if (info === 'initialized') {
        if (play) { adaptor.play(streamId, token); } else { adaptor.publish(streamId, token); }
      }
    },
    callbackError: function (error, message) {
      sdk.errors.push(mode + ':' + error);
      if (message && message.information) {
        sdk.information.push(mode + ':' + error + ':' + message.information);
      }
    }
  });
  window[mode] = adaptor;
};
</script>
</body></html>
"""


class AntMediaSDK(TestCase):
    timeout = 180

    async def ensureSDK(self) -> None:
        if os.path.isfile(SDK_JS):
            return
        npm = require("npm")
        r = await procs.start([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund",
                               "--prefix", SDK_DIR], 150).done
        self.assertEqual(r.code, 0, r.stderr)
        self.assertTrue(os.path.isfile(SDK_JS), "npm ci did not install " + SDK_JS)

    async def test_publish_play_refuse(self) -> None:
        import treq

        from tests import browser as browser_mod

        require("chromium")
        await self.ensureSDK()
        web, ports = await mediaserver.serve(self)
        ws = "ws://127.0.0.1:{}/LiveApp/websocket".format(ports["http"])

        root = Resource()
        root.putChild(b"", Data(PAGE, "text/html; charset=utf-8"))
        root.putChild(b"webrtc_adaptor.js", File(SDK_JS, defaultType="text/javascript"))
        root.putChild(b"selfie_segmentation.js", File(SELFIE_JS, defaultType="text/javascript"))
        site = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(site.stopListening)
        page_url = "http://127.0.0.1:{}/".format(site.getHost().port)

        def mint(streamId: str, type: str) -> Any:
            return mediaserver.mint(web, streamId, type)

        b = await browser_mod.launch(self, args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])

        # publish with a publish token
        pub = await b.open(page_url)
        await pub.evaluate("start({}, 'publish', 'sdk1', {})".format(
            json.dumps(ws), json.dumps(await mint("sdk1", "publish"))))
        await pub.wait_for("sdk.events.indexOf('publish:publish_started') >= 0 || "
                           "sdk.errors.length > 0", timeout=40)
        self.assertEqual(await pub.evaluate("sdk.errors"), [], pub.debug())
        resp = await treq.get("{}/LiveApp/rest/v2/broadcasts/sdk1".format(web), persistent=False)
        self.assertEqual(json.loads(await resp.content())["status"], "broadcasting")

        # play it with a play token: the remote video element shows frames
        play = await b.open(page_url)
        await play.evaluate("start({}, 'play', 'sdk1', {})".format(
            json.dumps(ws), json.dumps(await mint("sdk1", "play"))))
        await play.wait_for("sdk.events.indexOf('play:play_started') >= 0 || "
                            "sdk.errors.length > 0", timeout=40)
        self.assertEqual(await play.evaluate("sdk.errors"), [], play.debug())
        frames = await play.wait_for(
            "(function () { var v = document.getElementById('remoteVideo');"
            " var q = v.getVideoPlaybackQuality();"
            " return q.totalVideoFrames > 10 && v.currentTime > 0.5 ? q.totalVideoFrames : 0; })()",
            timeout=30)
        self.assertGreater(frames, 10)

        # a spent or unknown token: the reference error, through the SDK
        bad = await b.open(page_url)
        await bad.evaluate("start({}, 'play', 'sdk1', '123456')".format(json.dumps(ws)))
        await bad.wait_for("sdk.errors.length > 0", timeout=30)
        self.assertIn("play:unauthorized_access", await bad.evaluate("sdk.errors"))
        self.assertNotIn("play:play_started", await bad.evaluate("sdk.events"))

        # webRTCEnabled false: play and publish refused as the reference
        # server does, the tokens kept; they work once it is on again
        async def webRTC(enabled: bool) -> None:
            url = "{}/rest/v2/applications/settings/LiveApp".format(web)
            settings = json.loads(await (await treq.get(url, persistent=False)).content())
            settings["webRTCEnabled"] = enabled
            resp = await treq.post(url, json.dumps(settings).encode(),
                                   headers={b"content-type": [b"application/json"]},
                                   persistent=False)
            self.assertEqual(json.loads(await resp.content())["success"], True)

        await webRTC(False)
        playToken = await mint("sdk1", "play")
        off = await b.open(page_url)
        await off.evaluate("start({}, 'play', 'sdk1', {})".format(
            json.dumps(ws), json.dumps(playToken)))
        await off.wait_for("sdk.errors.length > 0", timeout=30)
        self.assertEqual(await off.evaluate("sdk.information"),
                         ["play:no_stream_exist:webrtc_not_enabled"], off.debug())
        publishToken = await mint("sdk2", "publish")
        offPub = await b.open(page_url)
        await offPub.evaluate("start({}, 'publish', 'sdk2', {})".format(
            json.dumps(ws), json.dumps(publishToken)))
        await offPub.wait_for("sdk.errors.length > 0", timeout=30)
        self.assertIn("publish:webrtc_not_enabled", await offPub.evaluate("sdk.errors"))
        await webRTC(True)
        again = await b.open(page_url)
        await again.evaluate("start({}, 'play', 'sdk1', {})".format(
            json.dumps(ws), json.dumps(playToken)))
        await again.wait_for("sdk.events.indexOf('play:play_started') >= 0 || "
                             "sdk.errors.length > 0", timeout=40)
        self.assertEqual(await again.evaluate("sdk.errors"), [], again.debug())

        # stop: the SDK's stop ends the broadcast
        await pub.evaluate("publish.stop('sdk1')")
        await pub.wait_for("sdk.events.indexOf('publish:publish_finished') >= 0", timeout=20)
