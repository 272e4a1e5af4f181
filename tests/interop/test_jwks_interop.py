"""
JWKS-verified stream JWTs end to end: a real C{twistd tokengate} process
whose application names a C{jwksURL} served by a real HTTP server started
by the test on 127.0.0.1, and ffmpeg publishing over RTMP with an RS256
JWT signed by the test's private key (PyJWT and cryptography).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from twisted.trial.unittest import TestCase

from tests import procs
from tests.fixtures import test_clip
from tests.helpers import http_client, require
from tests.httpreceiver import Receiver, closedPortURL
from tests.service import TokengateProcess

REFUSED = "You are not allowed to publish the stream."
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def streamJWT(key: rsa.RSAPrivateKey, kid: str, streamId: str = "s1",
              type: str = "publish") -> str:
    return pyjwt.encode({"streamId": streamId, "type": type, "exp": int(time.time()) + 600},
                        key, algorithm="RS256", headers={"kid": kid})


class JWKSPublishTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        self.clip = test_clip()
        self.receiver = Receiver().start(self)
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(KEY.public_key()))
        jwk["kid"] = "k1"
        self.receiver.answers["/jwks"] = (200, {"Content-Type": "application/json"},
                                          json.dumps({"keys": [jwk]}).encode())
        self.tg = TokengateProcess(self.mktemp())
        self.addCleanup(self.tg.kill)
        self.tg.start()
        self.running: list[Any] = []
        self.addCleanup(self._killPublishers)
        self.client = http_client(self)

    async def _killPublishers(self) -> None:
        for r in self.running:
            r.kill()
        for r in self.running:
            await r.done

    async def settings(self, **changes: Any) -> None:
        r = await self.client.post(self.tg.base + "/rest/v2/applications/settings/LiveApp",
                                   data=json.dumps(changes).encode(),
                                   headers={"content-type": "application/json"})
        body = json.loads(await r.content())
        self.assertEqual((r.code, body["success"]), (200, True), body)

    async def get(self, path: str) -> tuple[int, bytes]:
        r = await self.client.get(self.tg.base + path)
        return r.code, await r.content()

    async def publish(self, token: str) -> procs.Result:
        argv = [self.ffmpeg, "-hide_banner", "-nostdin", "-i", self.clip, "-c", "copy",
                "-f", "flv", "rtmp://127.0.0.1:{}/LiveApp/s1?token={}".format(self.tg.rtmp, token)]
        running = procs.start(argv, 60)
        self.running.append(running)
        return await running.done

    async def refusals(self, reason: str) -> float:
        code, text = await self.get("/metrics")
        self.assertEqual(code, 200)
        m = re.search(r'tokengate_refusals_total\{action="publish",protocol="rtmp",'
                      r'reason="%s"\} ([0-9.]+)' % reason, text.decode())
        return float(m.group(1)) if m else 0.0

    async def test_admittedWithTheKeys(self) -> None:
        await self.settings(publishJwtControlEnabled=True, jwksURL=self.receiver.url("/jwks"))
        good = streamJWT(KEY, "k1")
        result = await self.publish(good)
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        code, body = await self.get("/LiveApp/rest/v2/broadcasts/s1")
        self.assertEqual(code, 200)
        self.assertEqual((json.loads(body)["status"], json.loads(body)["publishType"]),
                         ("finished", "RTMP"))
        self.assertEqual([r.path for r in self.receiver.received], ["/jwks"])
        # a JWT signed by another key, or naming an unknown key, is refused
        for token in (streamJWT(OTHER_KEY, "k1"), streamJWT(KEY, "k2"),
                      streamJWT(KEY, "k1", type="play")):
            result = await self.publish(token)
            self.assertNotEqual(result.code, 0)
            self.assertIn(REFUSED, result.stderr)
        self.assertEqual(await self.refusals("invalid"), 2)
        self.assertEqual(await self.refusals("wrong_type"), 1)
        self.assertNotIn(good, self.tg.logText())

    async def test_refusedWhenTheKeysAreDown(self) -> None:
        await self.settings(publishJwtControlEnabled=True, jwksURL=await closedPortURL("/jwks"))
        result = await self.publish(streamJWT(KEY, "k1"))
        self.assertNotEqual(result.code, 0)
        self.assertIn(REFUSED, result.stderr)
        self.assertEqual(await self.refusals("unavailable"), 1)
        # the same server with the keys reachable again admits the same JWT
        await self.settings(publishJwtControlEnabled=True, jwksURL=self.receiver.url("/jwks"))
        result = await self.publish(streamJWT(KEY, "k1"))
        self.assertEqual(result.code, 0, result.stderr[-2000:])
