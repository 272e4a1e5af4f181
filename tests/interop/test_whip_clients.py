"""
WHIP and WHEP from browsers: headless Chromium with a fake camera against a
C{twistd tokengate} subprocess on the asyncio reactor, over loopback.

- Third-party clients from npm, as their users load them (locked by
  C{tests/whip_clients/package-lock.json}, fetched by C{npm ci} into
  C{tests/whip_clients/node_modules} the first time this runs): Medooze's
  C{whip-whep} (C{whip.js}, C{whep.js}: ES modules, loaded as they are) and
  Eyevinn's C{@eyevinn/whip-web-client} and C{@eyevinn/webrtc-player} (its
  C{whep} adapter), which ship CommonJS for bundlers only and are bundled
  here by C{esbuild} (locked with them).  Their page is served by this test
  on another loopback port, so they go through tokengate's CORS as any
  page on another origin would.  Each publishes over WHIP with a one-time
  Bearer token (ffmpeg decodes the stream's HLS), plays over WHEP a stream
  that ffmpeg publishes over RTMP (the page decodes frames), and reports a
  spent token's 401 as it reports refusals.
- tokengate's own pages: C{/{App}/whip.html} publishes over WHIP (trickle
  by PATCH with If-Match, Stop DELETEs), play.html with
  C{playOrder=whep,...} plays over WHEP, shows a refused token's error, and
  falls back to HLS (token kept) when WebRTC is off for the application.

npm, Chromium and ffmpeg are required (skipped, naming them, unless
C{TOKENGATE_REQUIRE_CLIENTS=1}).
"""

from __future__ import annotations

import json
import os
import tempfile
import shutil
import time
from typing import Any
from urllib.parse import urljoin

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data, File

from tests import procs
from tests.helpers import require
from tests.interop.test_whip import _WhipProcess

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENTS = os.path.join(TESTS, "whip_clients")
MODULES = os.path.join(CLIENTS, "node_modules")
WHIP_WHEP = os.path.join(MODULES, "whip-whep")
ESBUILD = os.path.join(MODULES, ".bin", "esbuild")
#: the Eyevinn packages' entry points, bundled into one global each
BUNDLES = {
    "whip-web-client.js": ("@eyevinn/whip-web-client/dist/whip-client.m.js", "EyevinnWHIP"),
    "webrtc-player.js": ("@eyevinn/webrtc-player/dist/main.js", "EyevinnPlayer"),
}

#: Chromium with a fake camera and microphone, permission granted
CAMERA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>WHIP/WHEP clients</title></head>
<body>
<video id="v" autoplay muted playsinline></video>
<script src="/whip-web-client.js"></script>
<script src="/webrtc-player.js"></script>
<script type="module">
import {WHIPClient} from '/whip-whep/whip.js';
import {WHEPClient} from '/whip-whep/whep.js';
window.out = {errors: [], events: [], requests: []};
// what each client asks tokengate, and the answers: [method, status]
var realFetch = window.fetch;
window.fetch = function (url, init) {
  var method = (init && init.method) || 'GET';
  return realFetch.apply(window, arguments).then(function (r) {
    out.requests.push([method, r.status]);
    return r;
  }, function (e) { out.requests.push([method, 0]); throw e; });
};
window.onerror = function (m) { out.errors.push(String(m)); };
var realError = console.error;
console.error = function () {
  out.errors.push([].map.call(arguments, String).join(' '));
  realError.apply(console, arguments);
};

async function camera() {
  return navigator.mediaDevices.getUserMedia({video: true, audio: true});
}

function watch(pc) {
  out.pc = pc;
  pc.addEventListener('connectionstatechange', function () {
    out.events.push('pc:' + pc.connectionState);
  });
}

// Medooze whip-whep, as its README and demo use it
window.medoozePublish = async function (url, token) {
  var stream = await camera();
  var pc = new RTCPeerConnection();
  watch(pc);
  stream.getTracks().forEach(function (t) { pc.addTrack(t); });
  var whip = window.client = new WHIPClient();
  try {
    await whip.publish(pc, url, token);
    out.events.push('published');
  } catch (e) { out.errors.push(String(e && e.message || e)); }
};
window.medoozeView = async function (url, token) {
  var pc = new RTCPeerConnection();
  watch(pc);
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  pc.ontrack = function (e) {
    if (e.track.kind === 'video') { document.getElementById('v').srcObject = e.streams[0] || new MediaStream([e.track]); }
  };
  var whep = window.client = new WHEPClient();
  try {
    await whep.view(pc, url, token);
    out.events.push('viewing');
  } catch (e) { out.errors.push(String(e && e.message || e)); }
};
window.medoozeStop = async function () { await window.client.stop(); out.events.push('stopped'); };

// Eyevinn whip-web-client, as its README uses it
window.eyevinnPublish = async function (url, token) {
  var stream = await camera();
  var client = window.client = new EyevinnWHIP.WHIPClient({
    endpoint: url, opts: {iceServers: [], authkey: token}
  });
  watch(client.peer);
  await client.ingest(stream);
  out.events.push('ingesting');
};
window.eyevinnStop = async function () { await window.client.destroy(); out.events.push('stopped'); };

// Eyevinn webrtc-player with its WHEP adapter, as its README uses it
window.eyevinnView = async function (url, token) {
  var video = document.getElementById('v');
  var player = window.client = new EyevinnPlayer.WebRTCPlayer({
    video: video, type: 'whep', iceServers: []
  });
  player.on('no-media', function () { out.events.push('no-media'); });
  player.on('initial-connection-failed', function () { out.events.push('initial-connection-failed'); });
  player.on('peer-connection-failed', function () { out.events.push('peer-connection-failed'); });
  player.on('connect-error', function () { out.events.push('connect-error'); });
  try {
    await player.load(new URL(url), 'Bearer ' + token);
    watch(player.peer);
    out.events.push('loaded');
  } catch (e) { out.errors.push(String(e && e.message || e)); }
};
window.ready = true;
</script>
</body></html>
"""

#: frames the page's video element decoded, once it plays
DECODED = ("(function () { var v = document.getElementById('v');"
           " var q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;"
           " return q && q.totalVideoFrames > 25 && v.currentTime > 1"
           " ? {frames: q.totalVideoFrames, width: v.videoWidth} : null; })()")

#: video frames decoded by a peer connection, from its getStats
FRAMES_DECODED = ("(function (pc) { return pc.getStats().then(function (s) { var n = 0;"
                  " s.forEach(function (r) { if (r.type === 'inbound-rtp' && r.kind === 'video')"
                  " { n = r.framesDecoded || 0; } }); return n; }); })({})")

#: video frames a publisher's peer connection sent
FRAMES_SENT = ("(function (pc) { return pc.getStats().then(function (s) { var n = 0;"
               " s.forEach(function (r) { if (r.type === 'outbound-rtp' && r.kind === 'video')"
               " { n = r.framesEncoded || 0; } }); return n; }); })({})")


async def ensureClients(testcase: Any) -> None:
    """
    C{npm ci} the locked clients (once), skipping without npm.
    """
    wanted = [os.path.join(WHIP_WHEP, "whip.js"), ESBUILD] + [
        os.path.join(MODULES, entry) for entry, _ in BUNDLES.values()]
    if all(os.path.exists(p) for p in wanted):
        return
    npm = require("npm")
    r = await procs.start([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund",
                           "--prefix", CLIENTS], 240).done
    testcase.assertEqual(r.code, 0, r.stderr)
    for path in wanted:
        testcase.assertTrue(os.path.exists(path), "npm ci did not install " + path)


async def bundle(testcase: Any) -> str:
    """
    The Eyevinn packages bundled by esbuild into a temporary directory.
    """
    out = tempfile.mkdtemp(prefix="tg-whip-clients-")
    testcase.addCleanup(shutil.rmtree, out, True)
    for name, (entry, globalName) in BUNDLES.items():
        r = await procs.start([ESBUILD, os.path.join(MODULES, entry), "--bundle",
                               "--format=iife", "--global-name=" + globalName,
                               "--log-level=warning", "--outfile=" + os.path.join(out, name)],
                              120).done
        testcase.assertEqual(r.code, 0, r.stderr)
    return out


class _Browsers(_WhipProcess):
    """
    The server of L{_WhipProcess}, Chromium with a fake camera, an RTMP
    publisher, and the helpers of the tests below.
    """

    timeout = 300

    async def browser(self) -> Any:
        from tests import browser as browser_mod

        require("chromium")
        return await browser_mod.launch(self, args=CAMERA)

    def rtmpPublish(self, streamId: str, seconds: int = 90) -> procs.Running:
        """
        ffmpeg publishing test pattern and tone over RTMP, without B-frames
        (which would make WebRTC viewers wait for a transcoding slot).
        """
        return self.start([
            self.ffmpeg, "-nostdin", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
            "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
            "-bf", "0", "-c:a", "aac", "-b:a", "64k", "-f", "flv",
            "rtmp://127.0.0.1:{}/LiveApp/{}?token={}".format(
                self.tg.rtmp, streamId, self.mint(streamId, "publish"))], seconds + 30)

    async def live(self, streamId: str) -> None:
        await self.waitFor(lambda: self.broadcast(streamId).get("status") == "broadcasting",
                           30, streamId + " to be live")

    def hlsHas(self, streamId: str) -> bool:
        from tests.whip_client_script import http

        url = "{}/LiveApp/streams/{}.m3u8?token={}".format(
            self.tg.base, streamId, self.mint(streamId, "play"))
        code, _, body = http("GET", url)
        if code != 200:
            return False
        uris = [ln for ln in body.decode().splitlines() if ln and not ln.startswith("#")]
        if not uris:
            return body.count(b"#EXTINF") >= 2
        code, _, media = http("GET", urljoin(url, uris[0]))
        return code == 200 and media.count(b"#EXTINF") >= 2

    async def assertHlsDecodes(self, streamId: str) -> None:
        """
        ffmpeg decodes 25 video frames of the stream's HLS.
        """
        await self.live(streamId)
        await self.waitFor(lambda: self.hlsHas(streamId), 40, "HLS segments of " + streamId)
        url = "{}/LiveApp/streams/{}.m3u8?token={}".format(
            self.tg.base, streamId, self.mint(streamId, "play"))
        r = await self.start([self.ffmpeg, "-nostdin", "-loglevel", "error", "-i", url,
                              "-frames:v", "25", "-f", "framemd5", "-"], 60).done
        self.assertEqual(r.code, 0, r.stderr[-2000:])
        frames = [ln for ln in r.out.decode().splitlines()
                  if ln and not ln.startswith("#") and ln.split(",")[0].strip() == "0"]
        self.assertEqual(len(frames), 25)
        self.assertEqual(self.broadcast(streamId)["publishType"], "WebRTC")

    async def framesDecoded(self, page: Any, pc: str, minimum: int = 25,
                            timeout: float = 40) -> int:
        """
        Wait until the peer connection C{pc} (a page expression) has
        decoded more than C{minimum} video frames.
        """
        expr = FRAMES_DECODED.replace("({})", "(" + pc + ")")
        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            n = await page.evaluate(expr) or 0
            if n > minimum:
                return int(n)
            await deferLater(reactor, 0.5)
        self.fail("{} decoded {} frames\n{}".format(pc, n, page.debug()))

    async def streamEnds(self, streamId: str) -> None:
        await self.waitFor(lambda: self.broadcast(streamId).get("status") != "broadcasting",
                           20, streamId + " to end")
        await self.waitFor(lambda: self.metric("tokengate_whip_sessions") == 0, 20,
                           "the WHIP session to end")


class ThirdPartyClients(_Browsers):
    """
    Medooze's whip-whep and Eyevinn's WHIP and WHEP clients.
    """

    async def clientPage(self, browser: Any) -> Any:
        await ensureClients(self)
        bundles = await bundle(self)
        root = Resource()
        root.putChild(b"", Data(PAGE, "text/html; charset=utf-8"))
        medooze = Resource()
        for name in ("whip.js", "whep.js"):
            medooze.putChild(name.encode(), File(os.path.join(WHIP_WHEP, name),
                                                 defaultType="text/javascript"))
        root.putChild(b"whip-whep", medooze)
        for name in BUNDLES:
            root.putChild(name.encode(), File(os.path.join(bundles, name),
                                              defaultType="text/javascript"))
        site = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(site.stopListening)
        self.pageURL = "http://127.0.0.1:{}/".format(site.getHost().port)
        return await self.open(browser)

    async def open(self, browser: Any) -> Any:
        page = await browser.open(self.pageURL)
        await page.wait_for("window.ready === true", timeout=20)
        return page

    async def test_medooze(self) -> None:
        """
        whip-whep's WHIPClient publishes (its candidates trickled by PATCH
        with If-Match), ffmpeg decodes the HLS, its stop() DELETEs; its
        WHEPClient plays an RTMP stream; a spent token is its "Request
        rejected with status 401".
        """
        b = await self.browser()
        pub = await self.clientPage(b)
        token = self.mint("m1", "publish")
        await pub.evaluate("medoozePublish({}, {})".format(
            json.dumps(self.endpoint("whip", "m1")), json.dumps(token)), timeout=30)
        await pub.wait_for("out.events.indexOf('pc:connected') >= 0 || out.errors.length",
                           timeout=40)
        self.assertEqual(await pub.evaluate("out.errors"), [], pub.debug())
        await self.assertHlsDecodes("m1")
        # the client trickled its candidates: PATCH with If-Match, 204
        requests = await pub.evaluate("out.requests")
        self.assertEqual(requests[0], ["POST", 201])
        self.assertIn(["PATCH", 204], requests)
        self.assertEqual({tuple(r) for r in requests[1:]}, {("PATCH", 204)})
        self.assertGreater(await pub.evaluate(FRAMES_SENT.replace("({})", "(out.pc)")), 25)

        ff = self.rtmpPublish("r1")
        await self.live("r1")
        play = await self.open(b)
        playToken = self.mint("r1", "play")
        await play.evaluate("medoozeView({}, {})".format(
            json.dumps(self.endpoint("whep", "r1")), json.dumps(playToken)), timeout=30)
        await play.wait_for("out.events.indexOf('viewing') >= 0 || out.errors.length", timeout=30)
        self.assertEqual(await play.evaluate("out.errors"), [], play.debug())
        await self.framesDecoded(play, "out.pc")
        seen = await play.wait_for(DECODED, timeout=30)
        self.assertEqual(seen["width"], 320)

        # the spent play token, as whip-whep reports a refusal
        spent = await self.open(b)
        await spent.evaluate("medoozeView({}, {})".format(
            json.dumps(self.endpoint("whep", "r1")), json.dumps(playToken)), timeout=30)
        self.assertEqual(await spent.evaluate("out.errors"),
                         ["Request rejected with status 401"])

        # stop() closes the peer connection, then DELETEs: tokengate may
        # have ended the session when the connection went (then 404)
        await pub.evaluate("medoozeStop()", timeout=20)
        await self.streamEnds("m1")
        method, status = (await pub.evaluate("out.requests"))[-1]
        self.assertEqual(method, "DELETE")
        self.assertIn(status, (200, 404))
        await play.evaluate("medoozeStop()", timeout=20)
        await self.waitFor(lambda: self.metric("tokengate_whep_sessions") == 0, 20,
                           "the WHEP session to end")
        # the spent publish token
        again = await self.open(b)
        await again.evaluate("medoozePublish({}, {})".format(
            json.dumps(self.endpoint("whip", "m1")), json.dumps(token)), timeout=30)
        self.assertEqual(await again.evaluate("out.errors"),
                         ["Request rejected with status 401"])
        ff.kill()

    async def test_eyevinn(self) -> None:
        """
        @eyevinn/whip-web-client publishes (ffmpeg decodes the HLS), its
        destroy() DELETEs; @eyevinn/webrtc-player's WHEP adapter plays an
        RTMP stream; a spent token is refused 401, which each logs as it
        logs refusals.
        """
        b = await self.browser()
        pub = await self.clientPage(b)
        token = self.mint("e1", "publish")
        await pub.evaluate("eyevinnPublish({}, {})".format(
            json.dumps(self.endpoint("whip", "e1")), json.dumps(token)), timeout=30)
        await pub.wait_for("out.events.indexOf('pc:connected') >= 0 || out.errors.length",
                           timeout=40)
        self.assertEqual(await pub.evaluate("out.errors"), [], pub.debug())
        await self.assertHlsDecodes("e1")
        # it asks the endpoint with OPTIONS whether PATCH is allowed there
        # (it is not: PATCH is the session's), so it does not trickle and
        # offers once its candidates are gathered
        self.assertEqual(await pub.evaluate("out.requests"), [["OPTIONS", 204], ["POST", 201]])

        ff = self.rtmpPublish("r2")
        await self.live("r2")
        play = await self.open(b)
        playToken = self.mint("r2", "play")
        await play.evaluate("eyevinnView({}, {})".format(
            json.dumps(self.endpoint("whep", "r2")), json.dumps(playToken)), timeout=30)
        await play.wait_for("out.events.indexOf('loaded') >= 0 || out.errors.length", timeout=30)
        self.assertEqual(await play.evaluate("out.errors"), [], play.debug())
        seen = await play.wait_for(DECODED, timeout=40)
        self.assertEqual(seen["width"], 320)
        await self.framesDecoded(play, "out.pc")

        # the spent play token: webrtc-player logs the status and emits
        # initial-connection-failed
        spentPlay = await self.open(b)
        await spentPlay.evaluate("eyevinnView({}, {})".format(
            json.dumps(self.endpoint("whep", "r2")), json.dumps(playToken)), timeout=30)
        await spentPlay.wait_for("out.events.indexOf('initial-connection-failed') >= 0",
                                 timeout=30)
        self.assertIn("WebRTC-player sendAnswer response: 401",
                      await spentPlay.evaluate("out.errors"))

        await pub.evaluate("eyevinnStop()", timeout=20)
        await self.streamEnds("e1")
        self.assertEqual((await pub.evaluate("out.requests"))[-1], ["DELETE", 200])

        # the spent publish token: whip-web-client logs the refusal with its
        # status and reason, and never connects
        spent = await self.open(b)
        await spent.evaluate("eyevinnPublish({}, {})".format(
            json.dumps(self.endpoint("whip", "e1")), json.dumps(token)), timeout=30)
        errors = await spent.wait_for("out.errors.length ? out.errors : null", timeout=30)
        self.assertIn("401", errors[0])
        self.assertIn("Invalid or missing token", errors[0])
        self.assertNotEqual(self.broadcast("e1").get("status"), "broadcasting")
        ff.kill()


class OwnPages(_Browsers):
    """
    C{/{App}/whip.html} and play.html's WHEP technology, with STUN and
    TURN servers configured (nothing listens there: the candidates over
    loopback connect), which the pages take from the answers' C{Link}
    headers.
    """

    serverArgs = ("--ice-servers", "stun:127.0.0.1:9,turn:127.0.0.1:9?transport=udp",
                  "--turn-secret", "not-a-real-secret")

    async def test_whipPageAndWhepPlayer(self) -> None:
        b = await self.browser()
        web = self.tg.base

        # the WHIP publish page publishes; ffmpeg decodes the HLS
        pub = await b.open("{}/LiveApp/whip.html?id=w1&token={}".format(web, self.mint("w1")))
        await pub.wait_for("window.tokengatePublishState.status === 'publishing' || "
                           "window.tokengatePublishState.status === 'error'", timeout=40)
        self.assertEqual(await pub.evaluate("window.tokengatePublishState.status"),
                         "publishing", pub.debug())
        await self.assertHlsDecodes("w1")
        # its candidates went by PATCH with If-Match: 204 each
        patches = await pub.evaluate("window.tokengatePublishState.session.patches")
        self.assertTrue(patches, pub.debug())
        self.assertEqual(set(patches), {204})
        # the Link headers' STUN and TURN servers (TURN with time-limited
        # credentials) were in the configuration before gathering
        servers = await pub.evaluate("window.tokengatePublishState.pc.getConfiguration()"
                                     ".iceServers")
        self.assertEqual([s["urls"] for s in servers],
                         [["stun:127.0.0.1:9"], ["turn:127.0.0.1:9?transport=udp"]], servers)
        self.assertRegex(servers[1]["username"], r"^[0-9]+:")
        self.assertTrue(servers[1]["credential"])

        # play.html over WHEP: an RTMP stream, frames decoded in the page
        self.rtmpPublish("r3")
        await self.live("r3")
        play = await b.open("{}/LiveApp/play.html?id=r3&playOrder=whep,hls&token={}".format(
            web, self.mint("r3", "play")))
        await play.wait_for("window.tokengateState.status === 'playing' || "
                            "window.tokengateState.status === 'error'", timeout=40)
        self.assertEqual(await play.evaluate("window.tokengateState.tech"), "whep",
                         play.debug())
        await self.framesDecoded(play, "window.tokengateWHEP.pc")
        t0 = await play.evaluate("document.getElementById('video').currentTime")
        await deferLater(reactor, 1.5)
        self.assertGreater(await play.evaluate("document.getElementById('video').currentTime"),
                           t0)
        self.assertEqual(self.metric("tokengate_whep_sessions"), 1)

        # a refused token: the error, no other technology tried
        bad = await b.open("{}/LiveApp/play.html?id=r3&playOrder=whep,hls&token=123456".format(
            web))
        await bad.wait_for("window.tokengateState.status === 'error'", timeout=30)
        state = await bad.evaluate("window.tokengateState")
        self.assertIn("Not authorized", state["error"])
        self.assertEqual([(a["tech"], a["kind"]) for a in state["attempts"]],
                         [("whep", "auth")], state)
        badpub = await b.open("{}/LiveApp/whip.html?id=w2&token=nope".format(web))
        await badpub.wait_for("window.tokengatePublishState.status === 'error'", timeout=30)
        self.assertIn("Not authorized",
                      await badpub.evaluate("window.tokengatePublishState.error"))

        # leaving play.html ends its WHEP session (a DELETE on pagehide)
        await play.close()
        await self.waitFor(lambda: self.metric("tokengate_whep_sessions") == 0, 20,
                           "the WHEP session to end")
        # Stop on the publish page DELETEs its WHIP session: the stream ends
        await pub.evaluate("document.getElementById('stop').click()")
        await self.streamEnds("w1")
        self.assertEqual(await pub.wait_for("window.tokengatePublishState.session.deleted"), 200)

        # webRTCEnabled off: WHEP is refused 403 with the token kept, and
        # play.html plays the stream over HLS with that token
        code, body = self.tg.post("/rest/v2/applications/settings/LiveApp",
                                  {"publishTokenControlEnabled": True,
                                   "playTokenControlEnabled": True,
                                   "webRTCEnabled": False})
        self.assertEqual(code, 200, body)
        off = await b.open("{}/LiveApp/play.html?id=r3&playOrder=whep,hls&token={}".format(
            web, self.mint("r3", "play")))
        await off.wait_for("window.tokengateState.status === 'playing' || "
                           "window.tokengateState.status === 'error'", timeout=60)
        state = await off.evaluate("window.tokengateState")
        self.assertEqual((state["status"], state["tech"]), ("playing", "hls"), state)
        self.assertEqual([(a["tech"], a["kind"]) for a in state["attempts"]],
                         [("whep", "other")], state)
        self.assertIn("403", state["attempts"][0]["detail"])
