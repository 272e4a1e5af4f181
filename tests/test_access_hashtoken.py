"""
Tests for L{tokengate.access.hashtoken}.
"""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.access.hashtoken import hashToken, verifyHashToken

streamIds = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,40}", fullmatch=True)
roles = st.sampled_from(["publish", "play"])
secrets = st.text(min_size=1, max_size=40)


class HashTokenTests(SynchronousTestCase):
    def test_vectors(self) -> None:
        """
        Ant Media's formula as in its testHashControl (streamId +
        "publish" + "secret"); the expected values come from coreutils:
        C{printf 'stream1publishsecret' | sha256sum}.
        """
        self.assertEqual(hashToken("stream1", "publish", "secret"),
                         "d9ca58420ee6b06eac8eaabfc6acbd2b22de4210a30e7e40639cf5a5280c441e")
        self.assertEqual(hashToken("stream1", "play", "secret"),
                         "233e10ece077265fccae9207490faee00192690096b0a7d5a6211cfde327643e")

    def test_refusesBadArguments(self) -> None:
        self.assertRaises(ValueError, hashToken, "s", "publish_play", "secret")
        self.assertRaises(ValueError, hashToken, "s", "publish", "")

    def test_verify(self) -> None:
        token = hashToken("stream1", "publish", "secret")
        self.assertTrue(verifyHashToken(token, "stream1", "publish", "secret"))
        self.assertFalse(verifyHashToken(token, "stream1", "play", "secret"))
        self.assertFalse(verifyHashToken(token, "stream2", "publish", "secret"))
        self.assertFalse(verifyHashToken(token, "stream1", "publish", "secret2"))
        self.assertFalse(verifyHashToken(token.upper(), "stream1", "publish", "secret"))
        self.assertFalse(verifyHashToken(token + "0", "stream1", "publish", "secret"))
        self.assertFalse(verifyHashToken(token[:-1], "stream1", "publish", "secret"))
        self.assertFalse(verifyHashToken(token.encode(), "stream1", "publish", "secret"))
        self.assertFalse(verifyHashToken(None, "stream1", "publish", "secret"))

    def test_emptySecretVerifiesNothing(self) -> None:
        """
        With no secret the "token" is sha256(streamId + role), which anyone
        can compute: refused.
        """
        unsalted = hashlib.sha256(b"stream1publish").hexdigest()
        self.assertFalse(verifyHashToken(unsalted, "stream1", "publish", ""))

    @given(streamIds, roles, secrets, streamIds, roles)
    def test_onlyItsStreamAndRole(self, streamId: str, role: str, secret: str,
                                  otherId: str, otherRole: str) -> None:
        token = hashToken(streamId, role, secret)
        self.assertTrue(verifyHashToken(token, streamId, role, secret))
        self.assertEqual(verifyHashToken(token, otherId, otherRole, secret),
                         (otherId, otherRole) == (streamId, role))
