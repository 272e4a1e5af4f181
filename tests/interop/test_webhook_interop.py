"""
Authorization webhooks with real clients against tokengate as operators run
it (a C{twistd} subprocess, L{tests.service.TokengateProcess}) and a real
HTTP receiver started by the test (L{tests.httpreceiver}): ffmpeg over RTMP
and SRT, ffmpeg playing HLS, and a WebSocket (Autobahn) publisher, each
allowed and refused; a refused token is kept.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from typing import Any, Optional

from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests import procs
from tests.fixtures import test_clip
from tests.helpers import require
from tests.httpreceiver import Receiver, hang
from tests.interop.test_srt_interop import ts_clip
from tests.service import TokengateProcess

REFUSED = "You are not allowed to publish the stream."


class WebhookInteropBase(TestCase):
    """
    A receiver, and tokengate (on C{reactorName}) asking it about LiveApp's
    publishes and plays, both with one-time token control.
    """

    timeout = 240
    reactorName: Optional[str] = None

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        self.receiver = Receiver().start(self)
        self.running: list[procs.Running] = []
        self.tg = TokengateProcess(self.mktemp(), extra=("--webhook-timeout", "1"),
                                   reactor=self.reactorName)
        self.addCleanup(self.tg.kill)
        self.addCleanup(self._killClients)
        self.tg.start()
        code, body = self.tg.post("/rest/v2/applications/settings/LiveApp", {
            "publishTokenControlEnabled": True, "playTokenControlEnabled": True,
            "webhookAuthenticateURL": self.receiver.url("/publish"),
            "webhookPlayAuthUrl": self.receiver.url("/play")})
        self.assertEqual((code, body["success"]), (200, True), body)

    async def _killClients(self) -> None:
        for r in self.running:
            r.kill()
        for r in self.running:
            await r.done

    def start(self, argv: list[str], timeout: float = 60.0) -> procs.Running:
        r = procs.start(argv, timeout)
        self.running.append(r)
        return r

    async def rest(self, path: str) -> tuple[int, Any]:
        result: tuple[int, Any] = await deferToThread(self.tg.get, path)
        return result

    async def mint(self, type: str, streamId: str = "s1") -> str:
        code, body = await self.rest(
            "/LiveApp/rest/v2/broadcasts/{}/token?expireDate={}&type={}".format(
                streamId, int(time.time()) + 600, type))
        self.assertEqual(code, 200)
        token: str = body["tokenId"]
        return token

    async def policyRefusals(self, reason: str) -> float:
        def fetch() -> str:
            with urllib.request.urlopen(self.tg.base + "/metrics", timeout=10) as r:
                text: str = r.read().decode()
                return text
        text = await deferToThread(fetch)
        m = re.search(r'tokengate_policy_refusals_total\{mechanism="webhook",reason="%s"\} '
                      r'([0-9.]+)' % reason, text)
        return float(m.group(1)) if m else 0.0

    def received(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.receiver.received if r.path == path]

    def rtmpPublish(self, path: str, clip: Optional[str] = None,
                    realtime: bool = False) -> procs.Running:
        argv = [self.ffmpeg, "-hide_banner", "-nostdin"]
        if realtime:
            argv.append("-re")
        argv += ["-i", clip or test_clip(), "-c", "copy", "-f", "flv",
                 "rtmp://127.0.0.1:{}{}".format(self.tg.rtmp, path)]
        return self.start(argv)

    def srtPublish(self, streamid: str) -> procs.Running:
        url = "srt://127.0.0.1:{}?streamid={}&linger=3".format(self.tg.srt, streamid)
        return self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-re", "-i", ts_clip(3),
                           "-c", "copy", "-f", "mpegts", url])

    async def waitLive(self, streamId: str = "s1", timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, body = await self.rest("/LiveApp/rest/v2/broadcasts/" + streamId)
            if code == 200 and body.get("status") == "broadcasting":
                return
            await task.deferLater(reactor, 0.2)
        self.fail("{} never went live".format(streamId))


class WebhookInterop(WebhookInteropBase):
    async def test_rtmpPublish(self) -> None:
        """
        ffmpeg's RTMP publish: the webhook gets Ant Media's JSON; a 403
        refuses with RTMP's publish refusal and keeps the token, which then
        publishes once the webhook answers 200.
        """
        token = await self.mint("publish")
        self.receiver.answers["/publish"] = (403, {}, b"no")
        result = await self.rtmpPublish("/LiveApp/s1?token=" + token + "&x=1").done
        self.assertNotEqual(result.code, 0)
        self.assertIn(REFUSED, result.stderr)
        [body] = self.received("/publish")
        self.assertEqual(body, {"appName": "LiveApp", "name": "s1", "streamId": "s1",
                                "mode": "live", "token": token, "queryParams": "{x=1}"})
        self.assertEqual(await self.policyRefusals("webhook_refused"), 1)
        self.receiver.answers["/publish"] = (200, {}, b"")
        result = await self.rtmpPublish("/LiveApp/s1?token=" + token).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertEqual(len(self.received("/publish")), 2)
        self.assertNotIn(token, self.tg.logText())

    async def test_rtmpPublishWebhookSlowOrDown(self) -> None:
        """
        A webhook that does not answer in time, then one that is down: both
        refuse (fail closed), the token kept.
        """
        token = await self.mint("publish")
        self.receiver.answers["/publish"] = hang
        start = time.monotonic()
        result = await self.rtmpPublish("/LiveApp/s1?token=" + token).done
        self.assertNotEqual(result.code, 0)
        self.assertIn(REFUSED, result.stderr)
        self.assertLess(time.monotonic() - start, 30)
        self.assertEqual(await self.policyRefusals("webhook_unavailable"), 1)
        await self.receiver.stop()
        result = await self.rtmpPublish("/LiveApp/s1?token=" + token).done
        self.assertNotEqual(result.code, 0)
        self.assertEqual(await self.policyRefusals("webhook_unavailable"), 2)
        code, body = await deferToThread(
            self.tg.post, "/LiveApp/rest/v2/broadcasts/validate-token",
            {"tokenId": token, "streamId": "s1", "type": "publish"})
        self.assertTrue(body["success"], "the token was kept until now")

    async def test_srtPublish(self) -> None:
        require("ffmpeg")
        token = await self.mint("publish")
        self.receiver.answers["/publish"] = (403, {}, b"")
        result = await self.srtPublish("LiveApp/s1,token=" + token).done
        self.assertNotEqual(result.code, 0)
        self.assertIn("REJECT", result.stderr)
        [body] = self.received("/publish")
        self.assertEqual((body["mode"], body["streamId"], body["token"]), ("live", "s1", token))
        self.receiver.answers["/publish"] = (200, {}, b"")
        result = await self.srtPublish("LiveApp/s1,token=" + token).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertEqual(await self.policyRefusals("webhook_refused"), 1)

    async def test_hlsPlay(self) -> None:
        """
        ffmpeg plays HLS: the play webhook is asked (mode play) when the
        playlist opens the session; a 403 keeps the play token.
        """
        self.receiver.answers["/publish"] = (200, {}, b"")
        publisher = self.rtmpPublish("/LiveApp/s1?token=" + await self.mint("publish"),
                                     clip=test_clip(30), realtime=True)
        await self.waitLive()
        # the first segments (hlsTime 2 s)
        await task.deferLater(reactor, 6)
        token = await self.mint("play")
        url = "http://127.0.0.1:{}/LiveApp/streams/s1.m3u8?token={}".format(self.tg.http, token)
        play = [self.ffmpeg, "-hide_banner", "-nostdin", "-i", url, "-t", "2", "-f", "null", "-"]
        self.receiver.answers["/play"] = (403, {}, b"")
        result = await self.start(play).done
        self.assertNotEqual(result.code, 0)
        self.assertIn("403", result.stderr)
        [body] = self.received("/play")
        self.assertEqual((body["mode"], body["streamId"], body["token"]), ("play", "s1", token))
        self.receiver.answers["/play"] = (200, {}, b"")
        result = await self.start(play).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertEqual(len(self.received("/play")), 2, "asked once per session")
        publisher.kill()



class WebSocketWebhookInterop(WebhookInteropBase):
    """
    The WebSocket signalling of a tokengate on the asyncio reactor (its
    WebRTC engine up), with an Autobahn client.
    """

    reactorName = "asyncio"

    async def test_websocketPublish(self) -> None:
        try:
            import aiortc  # noqa: F401
        except ImportError:
            self.skipTest("aiortc not installed")
        from tests.test_webrtc_signalling import WS

        token = await self.mint("publish")
        self.receiver.answers["/publish"] = (403, {}, b"")
        ws = await WS("ws://127.0.0.1:{}/LiveApp/websocket".format(self.tg.http)).open()
        self.addCleanup(ws.proto.dropConnection)
        ws.send(command="publish", streamId="s1", token=token)
        message = await ws.expect(command="error", timeout=15)
        self.assertEqual((message["definition"], message["streamId"]),
                         ("unauthorized_access", "s1"))
        [body] = self.received("/publish")
        self.assertEqual((body["mode"], body["token"]), ("live", token))
        # the socket stays usable: the same token, once the webhook allows
        self.receiver.answers["/publish"] = (200, {}, b"")
        ws.send(command="publish", streamId="s1", token=token)
        await ws.expect(command="start", streamId="s1", timeout=15)
        self.assertEqual(len(self.received("/publish")), 2)
        self.assertEqual(await self.policyRefusals("webhook_refused"), 1)
