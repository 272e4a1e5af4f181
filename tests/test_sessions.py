"""
Playback session credentials.
"""

import os

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.web.sessions import (
    InvalidCredential,
    SessionSigner,
    cookie_name,
    load_or_create_secret,
)

NOW = 1_800_000_000.0


class SignerTests(SynchronousTestCase):
    def setUp(self):
        self.signer = SessionSigner(b"s" * 32, idle=120, vodIdle=3600)

    def test_roundTrip(self):
        s = self.signer.new("LiveApp", "s1", "hls", NOW)
        cred = self.signer.issue(s, NOW + 10)
        got = self.signer.check(cred, "LiveApp", "s1", NOW + 20)
        self.assertEqual((got.sessionId, got.started, got.issued), (s.sessionId, NOW, NOW + 10))
        self.assertRegex(cred, r"^[A-Za-z0-9_.-]+$")

    def test_scopedToStream(self):
        cred = self.signer.issue(self.signer.new("LiveApp", "s1", "hls", NOW), NOW)
        self.assertRaises(InvalidCredential, self.signer.check, cred, "LiveApp", "s2", NOW)
        self.assertRaises(InvalidCredential, self.signer.check, cred, "Other", "s1", NOW)

    def test_idleExpiry(self):
        s = self.signer.new("LiveApp", "s1", "hls", NOW)
        cred = self.signer.issue(s, NOW)
        self.signer.check(cred, "LiveApp", "s1", NOW + 119)
        self.assertRaises(InvalidCredential, self.signer.check, cred, "LiveApp", "s1", NOW + 120)
        # a fresh credential for the same session keeps it going
        self.signer.check(self.signer.issue(s, NOW + 200), "LiveApp", "s1", NOW + 250)
        vod = self.signer.issue(self.signer.new("LiveApp", "s1", "vod", NOW), NOW)
        self.signer.check(vod, "LiveApp", "s1", NOW + 3000)

    def test_forgedOrOtherSecret(self):
        cred = self.signer.issue(self.signer.new("LiveApp", "s1", "hls", NOW), NOW)
        other = SessionSigner(b"t" * 32)
        self.assertRaises(InvalidCredential, other.check, cred, "LiveApp", "s1", NOW)
        body, mac = cred.split(".")
        self.assertRaises(InvalidCredential, self.signer.check, body + "." + mac[::-1], "LiveApp", "s1", NOW)
        # the same secret on another node accepts it
        SessionSigner(b"s" * 32).check(cred, "LiveApp", "s1", NOW)

    def test_revocation(self):
        s1 = self.signer.new("LiveApp", "s1", "hls", NOW)
        s2 = self.signer.new("LiveApp", "s1", "hls", NOW)
        self.signer.revokeSession(s1.sessionId, NOW + 1)
        self.assertRaises(InvalidCredential, self.signer.check, self.signer.issue(s1, NOW + 2), "LiveApp", "s1", NOW + 2)
        self.signer.check(self.signer.issue(s2, NOW + 2), "LiveApp", "s1", NOW + 2)
        self.signer.revokeStream("LiveApp", "s1", NOW + 3)
        self.assertRaises(InvalidCredential, self.signer.check, self.signer.issue(s2, NOW + 4), "LiveApp", "s1", NOW + 4)
        later = self.signer.new("LiveApp", "s1", "hls", NOW + 5)
        self.signer.check(self.signer.issue(later, NOW + 5), "LiveApp", "s1", NOW + 5)
        # an earlier revocation (a late one from another node) changes nothing
        mid = self.signer.new("LiveApp", "s1", "hls", NOW + 2)
        self.signer.revokeStream("LiveApp", "s1", NOW + 1)
        self.assertRaises(InvalidCredential, self.signer.check, self.signer.issue(mid, NOW + 4), "LiveApp", "s1", NOW + 4)
        self.signer.check(self.signer.issue(later, NOW + 5), "LiveApp", "s1", NOW + 5)
        self.signer.forgetRevocations(NOW + 10_000)

    @given(st.text(max_size=300))
    def test_garbage(self, text):
        try:
            self.signer.check(text, "LiveApp", "s1", NOW)
        except InvalidCredential:
            pass
        else:
            self.fail("accepted garbage")

    def test_cookieName(self):
        self.assertNotEqual(cookie_name("A", "s1"), cookie_name("A", "s2"))
        self.assertRegex(cookie_name("A", "s1"), r"^tgs_[0-9a-f]{12}$")

    def test_secretFile(self):
        path = self.mktemp()
        a = load_or_create_secret(path)
        self.assertEqual(load_or_create_secret(path), a)
        self.assertGreaterEqual(len(a), 32)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
