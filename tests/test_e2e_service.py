"""
tokengate as operators run it: a ``twistd`` subprocess on loopback.
"""

from __future__ import annotations

import os
import subprocess
import time

from twisted.trial.unittest import TestCase

from .service import ROOT, TokengateProcess


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
