"""
C{acceptOnlyStreamsInDataStore} and C{allowedPublisherCIDR} over the
WebSocket signalling with a real WebRTC publisher (aiortc, in
tests/webrtc_publish_script.py), against a C{twistd} subprocess on the
asyncio reactor: an unregistered stream is answered
C{not_allowed_unregistered_streams} and its token kept; a created one
publishes with it; a publisher outside the networks is refused.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.request

from twisted.trial.unittest import TestCase

from tests import procs
from tests.helpers import require
from tests.interop.test_webrtc_media import h264_clip
from tests.service import TokengateProcess

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "webrtc_publish_script.py")
SETTINGS = "/rest/v2/applications/settings/LiveApp"


class AiortcDatastoreTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        try:
            import aiortc  # noqa: F401
        except ImportError:
            if os.environ.get("TOKENGATE_REQUIRE_CLIENTS"):
                raise
            self.skipTest("aiortc not installed")
        self.tg = TokengateProcess(self.mktemp(), reactor="asyncio")
        self.addCleanup(self.tg.kill)
        self.tg.start()
        self.ws = "ws://127.0.0.1:{}/LiveApp/websocket".format(self.tg.http)

    def settings(self, **values: object) -> None:
        code, body = self.tg.post(SETTINGS, values)
        self.assertEqual((code, body["success"]), (200, True), body)

    def mint(self, streamId: str) -> str:
        code, body = self.tg.get(
            "/LiveApp/rest/v2/broadcasts/{}/token?expireDate={}&type=publish".format(
                streamId, int(time.time()) + 600))
        self.assertEqual(code, 200)
        return str(body["tokenId"])

    def refusals(self, reason: str) -> float:
        with urllib.request.urlopen(self.tg.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r'tokengate_refusals_total\{action="publish",protocol="webrtc",'
                      r'reason="%s"\} ([0-9.]+)' % reason, text)
        return float(m.group(1)) if m else 0.0

    async def publish(self, *streams: str) -> dict[str, str]:
        clip = os.path.abspath(self.mktemp()) + ".mp4"
        made = await procs.start(h264_clip(self.ffmpeg, clip), 60).done
        self.assertEqual(made.code, 0, made.stderr)
        r = await procs.start([sys.executable, SCRIPT, clip, self.ws, *streams], 120).done
        lines = [ln for ln in r.out.decode().splitlines() if ln.startswith("{")]
        self.assertTrue(lines, r.stderr[-3000:])
        answers: dict[str, str] = json.loads(lines[-1])
        self.assertNotIn("exception", answers, r.stderr[-3000:])
        return answers

    async def test_onlyCreatedStreams(self) -> None:
        self.settings(publishTokenControlEnabled=True, acceptOnlyStreamsInDataStore=True)
        token = self.mint("cam1")
        answers = await self.publish("cam1:" + token)
        self.assertEqual(answers, {"cam1": "not_allowed_unregistered_streams"})
        self.assertEqual(self.refusals("unregistered"), 1)
        code, _ = self.tg.post("/LiveApp/rest/v2/broadcasts/create", {"streamId": "cam1"})
        self.assertEqual(code, 200)
        answers = await self.publish("cam1:" + token)
        self.assertEqual(answers, {"cam1": "publish_started"})

    async def test_publisherCIDR(self) -> None:
        self.settings(publishTokenControlEnabled=True, allowedPublisherCIDR="10.0.0.0/8")
        token = self.mint("cam2")
        answers = await self.publish("cam2:" + token)
        self.assertEqual(answers, {"cam2": "unauthorized_access"})
        self.assertEqual(self.refusals("address"), 1)
        self.settings(publishTokenControlEnabled=True, allowedPublisherCIDR="127.0.0.1/32")
        answers = await self.publish("cam2:" + token)
        self.assertEqual(answers, {"cam2": "publish_started"})
