"""
WHIP and WHEP with real clients against a C{twistd tokengate} subprocess on
the asyncio reactor, over loopback, each client bounded in time:

- aiortc publishes over WHIP with a one-time Bearer token: ffmpeg decodes
  the stream's HLS, an ffmpeg RTMP viewer and an aiortc WHEP viewer receive
  frames of it; the client's DELETE ends it and nothing is left behind;
- ffmpeg publishes over RTMP and an aiortc WHEP viewer decodes it (H.264,
  and the AAC as Opus);
- missing, spent, wrong-type and wrong-stream tokens are refused with 401
  and leave no session, no claim, and the mismatched tokens usable;
- revoking the stream's tokens ends a WHIP session and its WHEP viewer;
- GStreamer's webrtcbin publishes over WHIP with an offer without
  candidates, trickling them by PATCH (If-Match), and an RTMP viewer gets
  frames.

aiortc runs in tests/whip_client_script.py (its own asyncio loop), webrtcbin
in tests/webrtcbin_whip_client.py (the system Python's python3-gi).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.request
from typing import Any
from urllib.parse import urljoin

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests import procs
from tests.helpers import require
from tests.service import TokengateProcess
from tests.whipoffers import offer

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "whip_client_script.py")
WEBRTCBIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "webrtcbin_whip_client.py")


def clip(ffmpeg: str, path: str, seconds: int = 40) -> list[str]:
    return [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
            "-i", "testsrc=size=320x240:rate=25", "-f", "lavfi",
            "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
            "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
            "-bf", "0", "-c:a", "aac", "-b:a", "64k", path]


class _WhipProcess(TestCase):
    """
    A C{twistd tokengate} on the asyncio reactor with publish and play
    token control, and the helpers of the tests below.
    """

    timeout = 300
    #: the server's extra command-line arguments
    serverArgs: tuple[str, ...] = ()

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        try:
            import aiortc  # noqa: F401
        except ImportError:
            if os.environ.get("TOKENGATE_REQUIRE_CLIENTS"):
                raise
            self.skipTest("aiortc not installed")
        self.tg = TokengateProcess(self.mktemp(), self.serverArgs, reactor="asyncio")
        self.addCleanup(self.tg.kill)
        self.tg.start()
        code, body = self.tg.post("/rest/v2/applications/settings/LiveApp",
                                  {"publishTokenControlEnabled": True,
                                   "playTokenControlEnabled": True})
        self.assertEqual(code, 200, body)
        self.running: list[procs.Running] = []
        self.addCleanup(self._kill)

    async def _kill(self) -> None:
        for r in self.running:
            r.kill()
        for r in self.running:
            await r.done

    def start(self, argv: list[str], timeout: float) -> procs.Running:
        r = procs.start(argv, timeout)
        self.running.append(r)
        return r

    def endpoint(self, kind: str, streamId: str = "s1") -> str:
        return "{}/LiveApp/{}/{}".format(self.tg.base, kind, streamId)

    def mint(self, streamId: str = "s1", type: str = "publish") -> str:
        code, body = self.tg.get(
            "/LiveApp/rest/v2/broadcasts/{}/token?expireDate={}&type={}".format(
                streamId, int(time.time()) + 600, type))
        self.assertEqual(code, 200)
        return str(body["tokenId"])

    def validate(self, token: str, streamId: str, type: str) -> bool:
        code, body = self.tg.post("/LiveApp/rest/v2/broadcasts/validate-token",
                                  {"tokenId": token, "streamId": streamId, "type": type})
        self.assertEqual(code, 200)
        return bool(body["success"])

    def metric(self, pattern: str) -> float:
        with urllib.request.urlopen(self.tg.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search("^" + pattern + r" ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def broadcast(self, streamId: str = "s1") -> dict[str, Any]:
        code, body = self.tg.get("/LiveApp/rest/v2/broadcasts/" + streamId)
        return body if code == 200 else {}

    async def waitFor(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            await deferLater(reactor, 0.3)
        self.fail("timed out waiting for " + what + "\n" + self.tg.logText()[-3000:])

    async def result(self, running: procs.Running) -> dict[str, Any]:
        r = await running.done
        lines = [ln for ln in r.out.decode().splitlines() if ln.startswith("{")]
        self.assertTrue(lines, r.stderr[-3000:])
        out: dict[str, Any] = json.loads(lines[-1])
        self.assertNotIn("exception", out, r.stderr[-3000:])
        return out

    def hlsReady(self) -> bool:
        from tests.whip_client_script import http

        url = "{}/LiveApp/streams/s1.m3u8?token={}".format(self.tg.base,
                                                          self.mint("s1", "play"))
        code, _, body = http("GET", url)
        if code != 200:
            return False
        # the multivariant playlist: its first media playlist has segments?
        uris = [ln for ln in body.decode().splitlines() if ln and not ln.startswith("#")]
        if not uris:
            return body.count(b"#EXTINF") >= 2
        code, _, media = http("GET", urljoin(url, uris[0]))
        return code == 200 and media.count(b"#EXTINF") >= 2

    async def makeClip(self) -> str:
        path = os.path.abspath(self.mktemp()) + ".mp4"
        made = await procs.start(clip(self.ffmpeg, path), 120).done
        self.assertEqual(made.code, 0, made.stderr)
        return path

    def assertNothingLeft(self, streamId: str = "s1") -> None:
        self.assertEqual(self.metric("tokengate_whip_sessions"), 0)
        self.assertEqual(self.metric("tokengate_whep_sessions"), 0)
        self.assertEqual(self.metric("tokengate_live_streams"), 0)
        self.assertNotEqual(self.broadcast(streamId).get("status"), "broadcasting")



class WhipInterop(_WhipProcess):
    """
    aiortc as the WHIP and WHEP client.
    """

    async def test_whipToHlsRtmpWhep(self) -> None:
        """
        aiortc publishes over WHIP: 201 with Location, ETag, Accept-Patch;
        ffmpeg decodes the HLS, an RTMP viewer and a WHEP viewer get
        frames; DELETE ends it (200, then 404); the token is spent.
        """
        path = await self.makeClip()
        token = self.mint()
        publisher = self.start([sys.executable, SCRIPT, "publish", self.endpoint("whip"),
                                token, path, "25"], 150)
        await self.waitFor(lambda: self.broadcast().get("receivedBytes", 0) > 50000, 60,
                           "WHIP media in the hub")
        self.assertEqual(self.broadcast()["publishType"], "WebRTC")
        self.assertEqual(self.metric("tokengate_whip_sessions"), 1)
        # HLS, decoded by ffmpeg once its first segments are out
        await self.waitFor(self.hlsReady, 30, "the first HLS segments")
        hls = "{}/LiveApp/streams/s1.m3u8?token={}".format(self.tg.base,
                                                          self.mint("s1", "play"))
        rtmp = "rtmp://127.0.0.1:{}/LiveApp/s1?token={}".format(self.tg.rtmp,
                                                              self.mint("s1", "play"))
        viewers = [self.start([self.ffmpeg, "-nostdin", "-loglevel", "error", "-i", url,
                               "-frames:v", "25", "-f", "framemd5", "-"], 60)
                   for url in (hls, rtmp)]
        whep = self.start([sys.executable, SCRIPT, "play", self.endpoint("whep"),
                           self.mint("s1", "play"), "30", "40"], 90)
        for name, running in zip(("HLS", "RTMP"), viewers):
            r = await running.done
            self.assertEqual(r.code, 0, (name, r.stderr[-2000:]))
            frames = [ln for ln in r.out.decode().splitlines()
                      if ln and not ln.startswith("#") and ln.split(",")[0].strip() == "0"]
            self.assertEqual(len(frames), 25, name)
        seen = await self.result(whep)
        self.assertEqual(seen["status"], 201, seen)
        self.assertTrue(seen["connected"], seen)
        self.assertGreaterEqual(seen["frames"], 40, seen)
        self.assertEqual(seen["size"], [320, 240])
        self.assertEqual(seen["delete"], 200)
        out = await self.result(publisher)
        self.assertEqual(out["status"], 201, out)
        self.assertRegex(out["location"], r"^/LiveApp/whip/s1/[A-Za-z0-9_-]{32}$")
        self.assertRegex(out["etag"], r'^"[0-9a-f]+"$')
        self.assertEqual(out["acceptPatch"], "application/trickle-ice-sdpfrag")
        self.assertEqual(out["contentType"], "application/sdp")
        self.assertTrue(out["connected"], out)
        self.assertEqual(out["stateBeforeDelete"], "connected")
        self.assertEqual((out["delete"], out["deleteAgain"]), (200, 404))
        await self.waitFor(lambda: self.metric("tokengate_live_streams") == 0, 10,
                           "the stream to end")
        self.assertNothingLeft()
        self.assertFalse(self.validate(token, "s1", "publish"))  # spent
        self.assertEqual(self.metric(
            'tokengate_grants_total{action="publish",kind="onetime",protocol="whip"}'), 1)
        self.assertEqual(self.metric(
            'tokengate_grants_total{action="play",kind="onetime",protocol="whep"}'), 1)

    async def test_rtmpToWhep(self) -> None:
        """
        ffmpeg publishes over RTMP (H.264, AAC); aiortc plays it over WHEP:
        video frames and the AAC as 48 kHz Opus.
        """
        path = await self.makeClip()
        self.start([self.ffmpeg, "-nostdin", "-loglevel", "error", "-re", "-i", path,
                    "-c", "copy", "-f", "flv",
                    "rtmp://127.0.0.1:{}/LiveApp/s1?token={}".format(self.tg.rtmp,
                                                                     self.mint())], 90)
        await self.waitFor(lambda: self.broadcast().get("status") == "broadcasting", 30,
                           "the RTMP publish")
        seen = await self.result(self.start(
            [sys.executable, SCRIPT, "play", self.endpoint("whep"),
             self.mint("s1", "play"), "30", "50"], 90))
        self.assertEqual(seen["status"], 201, seen)
        self.assertTrue(seen["connected"], seen)
        self.assertGreaterEqual(seen["frames"], 50, seen)
        self.assertEqual(seen["size"], [320, 240])
        self.assertGreater(seen["audioFrames"], 0, seen)
        self.assertEqual(seen["audioRate"], 48000)
        self.assertEqual(seen["delete"], 200)
        await self.waitFor(lambda: self.metric("tokengate_whep_sessions") == 0, 10,
                           "the WHEP session to end")

    async def test_refusedTokens(self) -> None:
        """
        Missing, spent, wrong-type and wrong-stream tokens: 401 with
        WWW-Authenticate, counted; no session, no claim, the mismatched
        tokens still usable for what they were minted for.
        """
        from tests.whip_client_script import http

        spent = self.mint()
        self.assertTrue(self.validate(spent, "s1", "publish"))
        playToken, otherStream = self.mint("s1", "play"), self.mint("s2")
        cases = [(None, "missing"), (spent, "unknown"), (playToken, "wrong_type"),
                 (otherStream, "wrong_stream")]
        for token, reason in cases:
            headers = {"content-type": "application/sdp"}
            if token is not None:
                headers["authorization"] = "Bearer " + token
            code, h, body = http("POST", self.endpoint("whip"), offer().encode(), headers)
            self.assertEqual(code, 401, (reason, body))
            self.assertTrue(h["www-authenticate"][0].startswith("Bearer"))
            self.assertEqual(h["access-control-allow-origin"], ["*"])
            self.assertTrue(body.strip())
            self.assertEqual(self.metric(
                'tokengate_refusals_total{action="publish",protocol="whip",reason="%s"}'
                % reason), 1, reason)
        # WHEP of a stream that is not live: refused before the token
        code, h, body = http("POST", self.endpoint("whep"), offer("recvonly").encode(),
                             {"content-type": "application/sdp",
                              "authorization": "Bearer " + otherStream})
        self.assertEqual(code, 404, body)  # not live: decided before the token
        self.assertNothingLeft()
        self.assertTrue(self.validate(playToken, "s1", "play"))
        self.assertTrue(self.validate(otherStream, "s2", "publish"))

    async def test_revocationEndsWhip(self) -> None:
        """
        Revoking the stream's tokens (REST) ends a live WHIP session and a
        WHEP viewer of it at once: the stream is no longer live, the
        server's peer connections are closed, the resources are gone.
        """
        path = await self.makeClip()
        publisher = self.start([sys.executable, SCRIPT, "publish", self.endpoint("whip"),
                                self.mint(), path, "90"], 150)
        await self.waitFor(lambda: self.broadcast().get("receivedBytes", 0) > 50000, 60,
                           "WHIP media in the hub")
        # both clients last longer than a loaded machine may take to get here:
        # the revocation, not their own end, must be what ends them
        viewer = self.start([sys.executable, SCRIPT, "play", self.endpoint("whep"),
                             self.mint("s1", "play"), "60", "100000"], 90)
        await self.waitFor(lambda: self.metric("tokengate_whep_sessions") == 1, 30,
                           "the WHEP viewer")
        self.assertEqual(self.metric("tokengate_whip_sessions"), 1,
                         "the WHIP publisher ended before the revocation")
        req = urllib.request.Request(self.tg.base + "/LiveApp/rest/v2/broadcasts/s1/tokens",
                                     method="DELETE")
        with urllib.request.urlopen(req, timeout=10) as r:
            answer = json.loads(r.read())
        self.assertIn("2 sessions ended", answer["message"], answer)
        self.assertEqual(self.metric("tokengate_whip_sessions"), 0)
        self.assertEqual(self.metric("tokengate_whep_sessions"), 0)
        self.assertEqual(self.metric("tokengate_live_streams"), 0)
        self.assertEqual(self.metric(
            'tokengate_sessions_kicked_total{action="publish",protocol="whip",reason="revoked"}'),
            1)
        out = await self.result(publisher)
        self.assertEqual(out["status"], 201, out)
        self.assertEqual(out["delete"], 404, out)  # already ended by the server
        self.assertNotEqual(out["stateBeforeDelete"], "connected", out)
        seen = await self.result(viewer)
        self.assertEqual(seen["delete"], 404, seen)


class WebrtcbinWhip(_WhipProcess):
    """
    GStreamer's webrtcbin (the stack of simple-whip-client and whipsink) as
    a WHIP client: an RSA certificate, an offer without candidates, its
    candidates trickled by PATCH with If-Match.
    """

    def setUp(self) -> None:
        from tests.interop.test_webrtc_dtls import requireGstPython

        self.python = requireGstPython()
        super().setUp()

    async def test_whipTrickle(self) -> None:
        token = self.mint()
        publisher = self.start([self.python, WEBRTCBIN, self.endpoint("whip"), token, "12"],
                               120)
        await self.waitFor(lambda: self.broadcast().get("receivedBytes", 0) > 20000, 60,
                           "webrtcbin's media in the hub")
        rtmp = "rtmp://127.0.0.1:{}/LiveApp/s1?token={}".format(self.tg.rtmp,
                                                              self.mint("s1", "play"))
        r = await self.start([self.ffmpeg, "-nostdin", "-loglevel", "error", "-i", rtmp,
                              "-frames:v", "25", "-f", "framemd5", "-"], 60).done
        self.assertEqual(r.code, 0, r.stderr[-2000:])
        self.assertEqual(len([ln for ln in r.out.decode().splitlines()
                              if ln and not ln.startswith("#")
                              and ln.split(",")[0].strip() == "0"]), 25)
        out = await self.result(publisher)
        self.assertEqual(out["status"], 201, out)
        self.assertEqual(out["acceptPatch"], "application/trickle-ice-sdpfrag")
        self.assertTrue(out["patches"], out)
        self.assertEqual(set(out["patches"]), {204}, out)
        self.assertTrue(out.get("end"), out)
        self.assertIn("connected", out["states"], out)
        self.assertEqual(out["errors"], [], out)
        self.assertEqual(out["delete"], 200, out)
        await self.waitFor(lambda: self.metric("tokengate_live_streams") == 0, 10,
                           "the stream to end")
        self.assertNothingLeft()
