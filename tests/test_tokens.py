"""
The token rules, unit and property tests.
"""


from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.tokens import (
    MSG_BAD_TYPE,
    MSG_DEFINE,
    MSG_MILLIS,
    MSG_PAST,
    PLAY,
    PUBLISH,
    TOKEN_DIGITS,
    Outcome,
    Probe,
    RequestError,
    StoredToken,
    Token,
    check_mint_request,
    digest,
    judge,
    mint_token_id,
    new_token,
)

NOW = 1_800_000_000

names = st.text(alphabet="abcdefgh12-_", min_size=1, max_size=6)
types = st.sampled_from([PLAY, PUBLISH])
rooms = st.none() | st.sampled_from(["r1", "r2"])


class MintTests(SynchronousTestCase):
    def test_format(self):
        ids = {mint_token_id() for _ in range(1000)}
        self.assertEqual(len(ids), 1000)
        for t in ids:
            self.assertRegex(t, r"^[0-9]{%d}$" % TOKEN_DIGITS)
            # safe inside an RTMP stream name and an SRT streamid
            self.assertFalse(set(t) & set(",=&/?#%+ "))
        self.assertGreaterEqual(TOKEN_DIGITS * 3.3219, 128)
        self.assertLessEqual(TOKEN_DIGITS, 64)

    def test_json(self):
        t = Token("1" * 40, "s1", NOW, PLAY)
        self.assertEqual(
            list(t.asJSON()), ["tokenId", "streamId", "expireDate", "type", "roomId"]
        )
        self.assertNotIn("1" * 40, repr(t))

    def test_storedKeepsDigest(self):
        t = new_token("s1", PLAY, NOW + 1)
        s = StoredToken.fromToken("LiveApp", t)
        self.assertEqual(s.digest, digest(t.tokenId))
        self.assertNotIn(t.tokenId, repr(s))
        self.assertNotIn(t.tokenId, str(s.asListedJSON()))
        self.assertTrue(s.asListedJSON()["tokenId"].startswith(t.tokenId[:6]))


class MintRequestTests(SynchronousTestCase):
    def check(self, message, *args):
        e = self.assertRaises(RequestError, check_mint_request, *args)
        self.assertEqual(str(e), message)

    def test_reference_order(self):
        self.check(MSG_DEFINE, None, PLAY, NOW + 5, NOW)
        self.check(MSG_DEFINE, "s", None, NOW + 5, NOW)
        self.check(MSG_DEFINE, "s", PLAY, None, NOW)
        self.check(MSG_DEFINE, "s", PLAY, 0, NOW)
        self.check(MSG_DEFINE, "s", "bogus", 0, NOW)
        self.check(MSG_BAD_TYPE, "s", "Play", NOW + 5, NOW)
        self.check(MSG_BAD_TYPE, "s", "bogus", NOW + 5, NOW)

    def test_millisAndPast(self):
        self.check(MSG_MILLIS, "s", PLAY, NOW * 1000, NOW)
        self.check(MSG_PAST, "s", PLAY, NOW, NOW)
        self.check(MSG_PAST, "s", PLAY, NOW - 100, NOW)
        check_mint_request("s", PLAY, NOW + 1, NOW)


class JudgeTests(SynchronousTestCase):
    def stored(self, streamId="s1", type=PLAY, expire=NOW + 10, room=None, app="A"):
        return StoredToken(app, "d", "h", streamId, expire, type, room)

    def test_rules(self):
        p = Probe("A", "s1", PLAY, None, NOW)
        self.assertEqual(judge(None, p), (Outcome.UNKNOWN, False))
        self.assertEqual(judge(self.stored(), p), (Outcome.GRANTED, True))
        self.assertEqual(judge(self.stored(app="B"), p), (Outcome.UNKNOWN, False))
        self.assertEqual(judge(self.stored(type=PUBLISH), p), (Outcome.WRONG_TYPE, False))
        self.assertEqual(judge(self.stored(streamId="s2"), p), (Outcome.WRONG_STREAM, False))
        self.assertEqual(judge(self.stored(expire=NOW), p), (Outcome.EXPIRED, False))

    @given(names, types, st.integers(-5, 5), rooms, names, types, rooms)
    def test_properties(self, streamId, type_, dt, room, pStream, pType, pRoom):
        stored = self.stored(streamId, type_, NOW + dt, room)
        outcome, consume = judge(stored, Probe("A", pStream, pType, pRoom, NOW))
        granted = outcome is Outcome.GRANTED
        # granted only with the right type, before expiry
        if granted:
            self.assertEqual(type_, pType)
            self.assertLess(NOW, NOW + dt)
        # only a plain token that matched everything is consumed
        self.assertEqual(consume, granted and room is None)
        if room is None:
            self.assertEqual(granted, type_ == pType and dt > 0 and streamId == pStream)
        else:
            self.assertEqual(
                granted,
                type_ == pType and dt > 0 and (streamId == pStream or pRoom == room),
            )
