"""
The SRT listener as an adapter of the access service, in memory (a fake UDP
transport and a L{Clock} driving L{SRTListener} with real handshake packets,
see L{tests.test_hostile_srt.ListenerHarness}): every refusal known before
redemption is answered with its reject code and keeps the token, which then
publishes; the session ends its publication one way.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tokengate.srt.errors import (
    REJX_BAD_MODE,
    REJX_BAD_REQUEST,
    REJX_CONFLICT,
    REJX_DOWN,
    REJX_FORBIDDEN,
    REJX_NOTFOUND,
    REJX_UNAUTHORIZED,
)
from tokengate.srt.protocol import rejectCode
from tokengate.tokens import Outcome

from .fixtures import POLICY_OUTCOMES, RecordingPolicy
from .test_hostile_srt import ListenerHarness


class RejectCodeTests(SynchronousTestCase):
    def test_everyOutcome(self) -> None:
        """
        Every refusal has its reject code; a token refused (and a subscriber
        code missing or wrong) is 1401.
        """
        expected = {
            Outcome.NO_APP: REJX_NOTFOUND,
            Outcome.IN_USE: REJX_CONFLICT,
            Outcome.THROTTLED: REJX_DOWN,
            Outcome.UNAVAILABLE: REJX_DOWN,
            Outcome.INVALID: REJX_BAD_REQUEST,
            Outcome.DISABLED: REJX_BAD_MODE,
            Outcome.BLOCKED: REJX_FORBIDDEN,
            Outcome.CODE_IN_USE: REJX_CONFLICT,
            Outcome.UNREGISTERED: REJX_NOTFOUND,
            Outcome.ADDRESS: REJX_FORBIDDEN,
            Outcome.WEBHOOK_REFUSED: REJX_FORBIDDEN,
            Outcome.WEBHOOK_UNAVAILABLE: REJX_DOWN,
        }
        for outcome in Outcome:
            if outcome is Outcome.GRANTED:
                continue
            self.assertEqual(rejectCode(outcome), expected.get(outcome, REJX_UNAUTHORIZED),
                             outcome)


class TokenKeptTests(ListenerHarness, SynchronousTestCase):
    """
    A caller refused for a reason known before redemption keeps its token.
    """

    def assertPublishes(self, token: str, streamId: str = "s1") -> None:
        c = self.caller()
        c.call("LiveApp/{},token={}".format(streamId, token))
        self.assertEqual(c.answer()[0], "agreed")
        self.assertFalse(self.unspent(token, streamId))
        c.media()
        self.assertTrue(self.server.hub.isLive("LiveApp", streamId))

    def test_invalidStreamId(self) -> None:
        token = self.mint()
        for bad in ("LiveApp/s 1,token=", "LiveApp/.s1,token=", "LiveApp/s1/x,token=",
                    "Live App/s1,token="):
            c = self.caller()
            c.call(bad + token)
            self.assertEqual(c.answer(), ("rejected", REJX_BAD_REQUEST), bad)
        self.assertTrue(self.unspent(token))
        self.assertEqual(self.refusals("invalid"), 4)
        self.assertPublishes(token)

    def test_unknownApplication(self) -> None:
        token = self.mint()
        c = self.caller()
        c.call("NoSuchApp/s1,token=" + token)
        self.assertEqual(c.answer(), ("rejected", REJX_NOTFOUND))
        self.assertTrue(self.unspent(token))
        self.assertEqual(self.refusals("no_app"), 1)
        self.assertPublishes(token)

    def test_playOverSrt(self) -> None:
        token = self.mint()
        c = self.caller()
        c.call("#!::r=LiveApp/s1,m=request,token=" + token)
        self.assertEqual(c.answer(), ("rejected", REJX_BAD_MODE))
        self.assertTrue(self.unspent(token))
        self.assertEqual(self.refusals("disabled"), 1)
        self.assertPublishes(token)

    def test_streamInUse(self) -> None:
        """
        A stream claimed by an admitted caller (not yet live) and then live:
        both refuse with 1409, the token kept.
        """
        first = self.caller()
        first.call("LiveApp/s1,token=" + self.mint())
        self.assertEqual(first.answer()[0], "agreed")
        token = self.mint()
        c = self.caller()
        c.call("LiveApp/s1,token=" + token)
        self.assertEqual(c.answer(), ("rejected", REJX_CONFLICT))
        first.media()
        c = self.caller()
        c.call("LiveApp/s1,token=" + token)
        self.assertEqual(c.answer(), ("rejected", REJX_CONFLICT))
        self.assertTrue(self.unspent(token))
        self.assertEqual(self.refusals("in_use"), 2)
        # the first publisher leaves: the token publishes
        (session,) = self.srt.sessions.values()
        session.end("test")
        self.assertFalse(self.server.hub.isTaken("LiveApp", "s1"))
        self.assertPublishes(token)

    def test_tokenRefusedIsSpentOrUnknown(self) -> None:
        """
        For contrast: a token for another stream is refused with 1401 and
        still publishes its own stream.
        """
        token = self.mint("s2")
        c = self.caller()
        c.call("LiveApp/s1,token=" + token)
        self.assertEqual(c.answer(), ("rejected", REJX_UNAUTHORIZED))
        self.assertTrue(self.unspent(token))
        self.assertPublishes(token, "s2")


class PublicationTests(ListenerHarness, SynchronousTestCase):
    """
    The session ends its publication (stream, grant) one way, whatever ends
    it.
    """

    def admitted(self) -> tuple:
        c = self.caller()
        c.call("LiveApp/s1,token=" + self.mint())
        self.assertEqual(c.answer()[0], "agreed")
        (session,) = self.srt.sessions.values()
        return c, session

    def test_endAfterMedia(self) -> None:
        c, session = self.admitted()
        c.media()
        publication = session.publication
        self.assertIsNotNone(publication.stream)
        self.assertEqual(len(self.server.gate.registry.grants("LiveApp", "s1")), 1)
        session.end("test")
        self.assertTrue(publication.ended)
        self.assertFalse(self.server.hub.isLive("LiveApp", "s1"))
        self.assertEqual(self.server.gate.registry.grants("LiveApp", "s1"), [])
        self.assertEqual(self.server.hub.record("LiveApp", "s1").status, "finished")
        self.assertEqual(self.srt.sessions, {})

    def test_tickerOnlyWithSessions(self) -> None:
        """
        The listener's 10 ms ticker runs while there are sessions: an idle
        SRT port schedules nothing.
        """
        self.assertEqual(self.clock.getDelayedCalls(), [])
        c, session = self.admitted()
        self.assertTrue(self.srt._ticker.running)
        c.media()
        session.end("test")
        self.assertFalse(self.srt._ticker.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        c, session = self.admitted()
        self.assertTrue(self.srt._ticker.running)

    def test_kickAfterMedia(self) -> None:
        c, session = self.admitted()
        c.media()
        self.assertEqual(self.server.gate.registry.kickTokenSessions("LiveApp", "s1"), 1)
        self.assertTrue(session.ended)
        self.assertFalse(self.server.hub.isLive("LiveApp", "s1"))
        self.assertEqual(self.srt.sessions, {})

    def test_applicationDeletedBeforeMedia(self) -> None:
        """
        The application goes (its sessions are kicked, its claims dropped):
        the caller is shut down and nothing goes live.
        """
        c, session = self.admitted()
        self.server.apps.delete("LiveApp")
        self.assertTrue(session.ended)
        self.assertFalse(self.server.hub.isTaken("LiveApp", "s1"))
        self.assertIsNone(self.server.hub.record("LiveApp", "s1"))


class PolicyPlumbingTests(ListenerHarness, SynchronousTestCase):
    """
    The security policies are told what the caller's stream id carries
    (token, subscriber id and code, its other keys), in both forms; each
    refusal is its reject code, the token kept.
    """

    def setUp(self) -> None:
        self.policy = RecordingPolicy()
        self.extraPolicies = [self.policy]
        super().setUp()

    def asked(self) -> tuple:
        r = self.policy.last
        return (r.protocol, r.action, r.app, r.streamId, r.token, r.subscriberId,
                r.subscriberCode, r.params)

    def test_referenceForm(self) -> None:
        token = self.mint()
        c = self.caller()
        c.call("LiveApp/s1,token={},subscriberId=sub-1,subscriberCode=123456,x=a%2Cb".format(
            token))
        self.assertEqual(c.answer()[0], "agreed")
        self.assertEqual(self.asked(), ("srt", "publish", "LiveApp", "s1", token, "sub-1",
                                        "123456", (("x", "a,b"),)))

    def test_accessControlForm(self) -> None:
        token = self.mint()
        c = self.caller()
        c.call("#!::r=LiveApp/s1,m=publish,t={},subscriberId=sub-1,subscriberCode=123456,"
               "s=sess".format(token))
        self.assertEqual(c.answer()[0], "agreed")
        self.assertEqual(self.asked(), ("srt", "publish", "LiveApp", "s1", token, "sub-1",
                                        "123456", (("s", "sess"),)))

    def test_withoutSubscriber(self) -> None:
        token = self.mint()
        c = self.caller()
        c.call("LiveApp/s1,token=" + token)
        self.assertEqual(c.answer()[0], "agreed")
        self.assertEqual(self.asked()[4:], (token, None, None, ()))

    def test_absurdLengthsInvalid(self) -> None:
        token = self.mint()
        c = self.caller()
        c.call("LiveApp/s1,token={},subscriberCode={}".format(token, "1" * 100))
        self.assertEqual(c.answer(), ("rejected", REJX_BAD_REQUEST))
        c = self.caller()
        c.call("LiveApp/s1,token={},".format(token) + ",".join("k{}=v".format(i)
                                                                for i in range(33)))
        self.assertEqual(c.answer(), ("rejected", REJX_BAD_REQUEST))
        self.assertEqual(self.policy.asked, [])
        self.assertTrue(self.unspent(token))
        self.assertEqual(self.refusals("invalid"), 2)

    def test_refusals(self) -> None:
        token = self.mint()
        for outcome in POLICY_OUTCOMES:
            self.policy.outcome = outcome
            c = self.caller()
            c.call("LiveApp/s1,token={},subscriberId=sub-1,subscriberCode=123456".format(token))
            self.assertEqual(c.answer(), ("rejected", rejectCode(outcome)), outcome)
            self.assertEqual(self.refusals(outcome.value), 1, outcome)
            self.assertTrue(self.unspent(token), outcome)
            self.assertFalse(self.server.hub.isTaken("LiveApp", "s1"), outcome)
        self.assertEqual([rejectCode(o) for o in POLICY_OUTCOMES],
                         [REJX_FORBIDDEN, REJX_UNAUTHORIZED, REJX_CONFLICT, REJX_NOTFOUND,
                          REJX_FORBIDDEN, REJX_FORBIDDEN, REJX_DOWN])
        self.policy.outcome = None
        c = self.caller()
        c.call("LiveApp/s1,token=" + token)
        self.assertEqual(c.answer()[0], "agreed")
        self.assertFalse(self.unspent(token))
