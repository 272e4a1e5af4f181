"""
Applications and their persisted settings.
"""

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from tokengate.apps import AppSettings, Applications, SettingsError, address_allowed, parse_cidrs


class ApplicationsTests(SynchronousTestCase):
    def test_defaultsPersisted(self):
        path = os.path.join(self.mktemp(), "apps.json")
        apps = Applications(path)
        self.assertEqual(list(apps), ["LiveApp", "WebRTCAppEE"])
        apps.replace("LiveApp", playTokenControlEnabled=True)
        apps.create("Mine")
        again = Applications(path)
        self.assertEqual(list(again), ["LiveApp", "Mine", "WebRTCAppEE"])
        self.assertTrue(again.get("LiveApp").playTokenControlEnabled)
        again.delete("Mine")
        self.assertEqual(list(Applications(path)), ["LiveApp", "WebRTCAppEE"])
        with open(path) as f:
            self.assertIn("applications", json.load(f))

    def test_listeners(self):
        apps = Applications(None)
        seen = []
        apps.onChange(lambda name, s: seen.append((name, s is not None)))
        apps.create("A")
        apps.delete("A")
        self.assertEqual(seen, [("A", True), ("A", False)])

    def test_names(self):
        apps = Applications(None)
        for bad in ("", "rest", "METRICS", "a/b", "a" * 65, "a.b"):
            self.assertRaises(SettingsError, apps.create, bad)

    def test_tokenKind(self):
        s = AppSettings(publishTokenControlEnabled=True, playJwtControlEnabled=True,
                        jwtStreamSecretKey="k" * 32)
        s.validate()
        self.assertEqual(s.tokenKind("publish"), "onetime")
        self.assertEqual(s.tokenKind("play"), "jwt")
        self.assertIsNone(AppSettings().tokenKind("play"))


class CIDRTests(SynchronousTestCase):
    def test_loopbackFamilies(self):
        nets = parse_cidrs("127.0.0.1")
        self.assertTrue(address_allowed("127.0.0.1", nets))
        self.assertTrue(address_allowed("::1", nets))
        self.assertTrue(address_allowed("::ffff:127.0.0.1", nets))
        self.assertFalse(address_allowed("127.0.0.2", nets))
        self.assertFalse(address_allowed("10.0.0.1", nets))
        self.assertFalse(address_allowed("not-an-ip", nets))

    def test_networks(self):
        nets = parse_cidrs("10.0.0.0/8, 2001:db8::/32")
        self.assertTrue(address_allowed("10.1.2.3", nets))
        self.assertTrue(address_allowed("2001:db8::5", nets))
        self.assertFalse(address_allowed("11.0.0.1", nets))
