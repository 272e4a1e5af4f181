"""
tokengate as operators run it: a ``twistd`` subprocess on loopback.
"""

from __future__ import annotations

import os
import subprocess
import time

from twisted.trial.unittest import TestCase

from tests.service import ROOT, TokengateProcess


class ServiceTests(TestCase):
    timeout = 120

    def setUp(self):
        self.dir = self.mktemp()
        self.tg = TokengateProcess(self.dir)
        self.addCleanup(self.tg.kill)

    def mint(self, streamId="s1", type="play"):
        code, body = self.tg.get(
            "/LiveApp/rest/v2/broadcasts/{}/token?expireDate={}&type={}".format(
                streamId, int(time.time()) + 600, type
            )
        )
        self.assertEqual(code, 200)
        return body["tokenId"]

    def validate(self, tokenId, streamId="s1", type="play"):
        code, body = self.tg.post(
            "/LiveApp/rest/v2/broadcasts/validate-token",
            {"tokenId": tokenId, "streamId": streamId, "type": type},
        )
        self.assertEqual(code, 200)
        return body["success"]

    def test_killNineKeepsTokens(self):
        """
        Tokens minted before a kill -9 are still there after a restart, and a
        token redeemed before it stays spent.
        """
        self.tg.start()
        kept = [self.mint() for _ in range(20)]
        spent = self.mint()
        self.assertTrue(self.validate(spent))
        code, _ = self.tg.post("/rest/v2/applications/settings/LiveApp",
                               {"playTokenControlEnabled": True})
        self.tg.kill()
        self.tg.start()
        for t in kept:
            self.assertTrue(self.validate(t))
        self.assertFalse(self.validate(spent))
        code, settings = self.tg.get("/rest/v2/applications/settings/LiveApp")
        self.assertTrue(settings["playTokenControlEnabled"])
        # twistd ends by re-raising the SIGTERM it got: a clean stop
        self.assertIn(self.tg.stop(), (0, -15))
        log = self.tg.logText()
        for t in kept + [spent]:
            self.assertNotIn(t, log)

    def test_portInUse(self):
        self.tg.start()
        other = TokengateProcess(self.mktemp(), http=self.tg.http)
        os.makedirs(other.dataDir)
        proc = subprocess.run(other.argv(), cwd=ROOT, capture_output=True, timeout=60)
        self.assertEqual(proc.returncode, 1)
        self.assertIn(
            "tokengate: cannot listen for HTTP on tcp:{}:interface=127.0.0.1".format(self.tg.http),
            proc.stderr.decode() + other.logText(),
        )
        self.assertIn("Address already in use", proc.stderr.decode() + other.logText())


class ClusterTests(TestCase):
    """
    Two tokengate processes on one Redis.
    """

    timeout = 120

    def setUp(self):
        from tests.redisserver import start_redis_server

        self.redis = start_redis_server(self)
        self.nodes = []
        for _ in range(2):
            node = TokengateProcess(self.mktemp(), extra=("--store", self.redis.url))
            self.addCleanup(node.kill)
            self.nodes.append(node.start())

    def test_exactlyOnceAcrossNodes(self):
        from concurrent.futures import ThreadPoolExecutor

        a, b = self.nodes
        for round_ in range(5):
            code, token = a.get("/LiveApp/rest/v2/broadcasts/s1/token?expireDate={}&type=play".format(
                int(time.time()) + 600))
            self.assertEqual(code, 200)
            probe = {"tokenId": token["tokenId"], "streamId": "s1", "type": "play"}
            with ThreadPoolExecutor(16) as pool:
                results = list(pool.map(
                    lambda node: node.post("/LiveApp/rest/v2/broadcasts/validate-token", probe),
                    [a, b] * 16,
                ))
            self.assertEqual([code for code, _ in results], [200] * 32)
            self.assertEqual(sum(body["success"] for _, body in results), 1, round_)

    def test_redisDownThenBack(self):
        a, b = self.nodes
        path = "/LiveApp/rest/v2/broadcasts/s1/token?expireDate={}&type=play".format(
            int(time.time()) + 600)
        code, token = a.get(path)
        self.assertEqual(code, 200)
        self.redis.stop()
        code, body = a.get(path)
        self.assertEqual((code, body["message"]), (503, "Token store is unavailable, try again later"))
        code, body = b.post("/LiveApp/rest/v2/broadcasts/validate-token",
                            {"tokenId": token["tokenId"], "streamId": "s1", "type": "play"})
        self.assertEqual(code, 503)
        self.redis.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            code, _ = a.get(path)
            if code == 200:
                break
            time.sleep(0.3)
        self.assertEqual(code, 200)
