"""
The cred seam: checkers, realm, grants, throttling, the gate.
"""

from __future__ import annotations

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tokengate.access.sessions import IPlayGrant, IPublishGrant
from tokengate.apps import Applications
from tokengate.auth import (
    IStreamCredentials,
    Refused,
    StreamCredentials,
    Throttle,
    build_gate,
    mint_jwt,
)
from tokengate.metrics import Metrics
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import Outcome, StoredToken, new_token

from .helpers import NOW, clock_at

KEY = "k" * 32


class Mind:
    protocolName = "rtmp"
    peerHost = "192.0.2.1"

    def __init__(self):
        self.kicked = []

    def kick(self, reason):
        self.kicked.append(reason)


class GateTests(SynchronousTestCase):
    def setUp(self):
        self.clock = clock_at()
        self.apps = Applications(None)
        self.store = MemoryTokenStore()
        self.metrics = Metrics()
        self.gate = build_gate(self.apps, self.store, self.clock, self.metrics, kickOnExpiry=True)

    def mint(self, streamId="s1", type="publish", expire=NOW + 60, room=None):
        t = new_token(streamId, type, expire, room)
        self.store.add(StoredToken.fromToken("LiveApp", t))
        return t.tokenId

    def creds(self, token=None, streamId="s1", action="publish", peer="192.0.2.1", app="LiveApp"):
        return StreamCredentials(app, streamId, action, token, peer, "rtmp")

    def refused(self, creds):
        return self.failureResultOf(self.gate.login(creds), Refused).value.outcome

    def test_credentials(self):
        c = self.creds("secret-token")
        verifyObject(IStreamCredentials, c)
        self.assertNotIn("secret-token", repr(c))

    def test_noControlNoToken(self):
        grant = self.successResultOf(self.gate.login(self.creds()))
        self.assertEqual(grant.kind, "none")
        self.assertTrue(IPublishGrant.providedBy(grant))
        verifyObject(IPlayGrant, grant)

    def test_oneTime(self):
        self.apps.replace("LiveApp", publishTokenControlEnabled=True, playTokenControlEnabled=True)
        token = self.mint()
        self.assertEqual(self.refused(self.creds()), Outcome.MISSING)
        self.assertEqual(self.refused(self.creds(token, streamId="s2")), Outcome.WRONG_STREAM)
        self.assertEqual(self.refused(self.creds(token, action="play")), Outcome.WRONG_TYPE)
        self.assertEqual(self.refused(self.creds("x" * 5000)), Outcome.INVALID)
        mind = Mind()
        grant = self.successResultOf(self.gate.login(self.creds(token), mind))
        self.assertEqual((grant.kind, grant.protocol, grant.peer), ("onetime", "rtmp", "192.0.2.1"))
        self.assertEqual(self.refused(self.creds(token)), Outcome.UNKNOWN)
        self.assertEqual(self.gate.registry.grants("LiveApp", "s1"), [grant])
        grant.logout()
        grant.logout()
        self.assertEqual(self.gate.registry.grants("LiveApp", "s1"), [])
        self.assertEqual(mind.kicked, [])

    def test_expiredOneTime(self):
        self.apps.replace("LiveApp", playTokenControlEnabled=True)
        token = self.mint(type="play", expire=NOW + 5)
        self.clock.advance(5)
        self.assertEqual(self.refused(self.creds(token, action="play")), Outcome.EXPIRED)

    def test_unknownApp(self):
        self.assertEqual(self.refused(self.creds(app="Nope")), Outcome.NO_APP)

    def test_jwt(self):
        self.apps.replace("LiveApp", playJwtControlEnabled=True, jwtStreamSecretKey=KEY)
        good = mint_jwt(KEY, "s1", "play", NOW + 10)
        # publish has no token control here: admitted without a token
        self.assertEqual(self.successResultOf(self.gate.login(self.creds(action="publish"))).kind, "none")
        self.assertEqual(self.refused(self.creds(mint_jwt(KEY, "s1", "publish", NOW + 10), action="play")),
                         Outcome.WRONG_TYPE)
        self.assertEqual(self.refused(self.creds(mint_jwt(KEY, "s2", "play", NOW + 10), action="play")),
                         Outcome.WRONG_STREAM)
        self.assertEqual(self.refused(self.creds(mint_jwt("z" * 32, "s1", "play", NOW + 10), action="play")),
                         Outcome.INVALID)
        self.assertEqual(self.refused(self.creds("not.a.jwt", action="play")), Outcome.INVALID)
        # reusable until it expires; expiry kicks live sessions when asked
        mind = Mind()
        g1 = self.successResultOf(self.gate.login(self.creds(good, action="play"), mind))
        g2 = self.successResultOf(self.gate.login(self.creds(good, action="play")))
        self.assertEqual((g1.kind, g2.kind), ("jwt", "jwt"))
        self.clock.advance(10)
        self.assertEqual(mind.kicked, ["expired"])
        self.assertTrue(g1.ended and g2.ended)
        self.assertEqual(self.refused(self.creds(good, action="play")), Outcome.EXPIRED)

    def test_precheckKeepsToken(self):
        self.apps.replace("LiveApp", publishTokenControlEnabled=True)
        token = self.mint()
        live = {"s1"}
        async def precheck(c):
            return Outcome.IN_USE if c.streamId in live else None

        d = self.gate.login(self.creds(token), precheck=precheck)
        self.assertEqual(self.failureResultOf(d, Refused).value.outcome, Outcome.IN_USE)
        live.clear()
        self.successResultOf(self.gate.login(self.creds(token), precheck=precheck))

    def test_kick(self):
        mind = Mind()
        grant = self.successResultOf(self.gate.login(self.creds(), mind))
        self.assertEqual(self.gate.registry.kickAll("shutdown"), 1)
        self.assertEqual(mind.kicked, ["shutdown"])
        self.assertTrue(grant.ended)
        self.assertEqual(self.gate.registry.kickAll("shutdown"), 0)

    def test_noTokenInLogs(self):
        self.apps.replace("LiveApp", publishTokenControlEnabled=True)
        token = self.mint()
        with capturedLogs() as events:
            self.refused(self.creds(token, streamId="s2"))
            self.successResultOf(self.gate.login(self.creds(token)))
            self.refused(self.creds(token))
        from twisted.logger import formatEvent

        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertIn("wrong_stream", text)
        self.assertNotIn(token, text)

    def test_metrics(self):
        self.apps.replace("LiveApp", publishTokenControlEnabled=True)
        self.refused(self.creds())
        self.successResultOf(self.gate.login(self.creds(self.mint())))
        text = self.metrics.render().decode()
        self.assertIn('tokengate_refusals_total{action="publish",protocol="rtmp",reason="missing"} 1.0', text)
        self.assertIn('tokengate_grants_total{action="publish",kind="onetime",protocol="rtmp"} 1.0', text)
        self.assertIn('tokengate_sessions{action="publish",protocol="rtmp"} 1.0', text)


class ThrottleTests(SynchronousTestCase):
    def test_manyFailuresStillAnswered(self):
        """
        An address with more failures than 2**excess can hold as a float
        (over a thousand distinct attempts within a half-life) waits the
        longest delay; the throttle does not raise.
        """
        clock = clock_at()
        throttle = Throttle(clock)
        for i in range(1100):
            throttle.failed("192.0.2.9", str(i).encode())
        self.assertEqual(throttle.delay("192.0.2.9"), throttle.maxDelay)

    def setUp(self):
        self.clock = clock_at()
        self.apps = Applications(None)
        self.apps.replace("LiveApp", playTokenControlEnabled=True)
        self.store = MemoryTokenStore()
        self.throttle = Throttle(self.clock, threshold=5, halfLife=60, base=0.25, maxDelay=4,
                                 maxPending=3)
        self.gate = build_gate(self.apps, self.store, self.clock, Metrics(), throttle=self.throttle)

    def attempt(self, peer, token="nope"):
        return self.gate.login(StreamCredentials("LiveApp", "s1", "play", token, peer, "srt"))

    def test_onlyTheAbuserIsSlowed(self):
        for i in range(5):
            self.failureResultOf(self.attempt("198.51.100.7", "guess%d" % i), Refused)
        # the sixth attempt from the abuser waits before it is checked
        d = self.attempt("198.51.100.7")
        self.assertNoResult(d)
        # another address with a valid token is answered at once
        t = new_token("s1", "play", NOW + 60)
        self.store.add(StoredToken.fromToken("LiveApp", t))
        self.successResultOf(self.attempt("203.0.113.1", t.tokenId))
        self.clock.advance(0.25)
        self.assertEqual(self.failureResultOf(d, Refused).value.outcome, Outcome.UNKNOWN)

    def test_delayGrowsAndIsBounded(self):
        for _ in range(5):
            self.throttle.failed("a")
        self.assertEqual(self.throttle.delay("a"), 0.25)
        for _ in range(20):
            self.throttle.failed("a")
        self.assertEqual(self.throttle.delay("a"), 4)
        # forgets: the score halves every minute
        self.clock.advance(60 * 6)
        self.assertEqual(self.throttle.delay("a"), 0)

    def test_pendingBounded(self):
        for _ in range(10):
            self.throttle.failed("a")
        waiting = [self.attempt("a") for _ in range(3)]
        e = self.failureResultOf(self.attempt("a"), Refused)
        self.assertEqual(e.value.outcome, Outcome.THROTTLED)
        self.clock.advance(5)
        for d in waiting:
            self.failureResultOf(d, Refused)

    def test_repeatsCountOnce(self):
        """
        A client retrying the same refused request (srt-live-transmit
        retries a rejected call by itself) feeds the throttle once; each
        different attempt counts.
        """
        for _ in range(20):
            self.failureResultOf(self.attempt("a", "nope"), Refused)
        self.assertEqual(self.throttle.score("a"), 1)
        self.failureResultOf(self.attempt("a", "other"), Refused)
        self.assertEqual(self.throttle.score("a"), 2)
        # the same token for another stream is another attempt
        d = self.gate.login(StreamCredentials("LiveApp", "s2", "play", "nope", "a", "srt"))
        self.failureResultOf(d, Refused)
        self.assertEqual(self.throttle.score("a"), 3)
        # another address trying the same is counted for that address
        self.failureResultOf(self.attempt("b", "nope"), Refused)
        self.assertEqual(self.throttle.score("b"), 1)

    def test_repeatCountsAgainAfterTheWindow(self):
        t = Throttle(self.clock, halfLife=1e9, repeatWindow=10)
        self.assertTrue(t.failed("a", b"x"))
        self.clock.advance(9)
        self.assertFalse(t.failed("a", b"x"))
        self.clock.advance(1)
        self.assertTrue(t.failed("a", b"x"))
        self.assertAlmostEqual(t.score("a"), 2)
        # without an attempt, every failure counts
        self.assertTrue(t.failed("a"))
        self.assertTrue(t.failed("a"))
        self.assertAlmostEqual(t.score("a"), 4)

    def test_attemptsBounded(self):
        t = Throttle(self.clock, maxTracked=100)
        for i in range(1000):
            t.failed("a", b"%d" % i)
        self.assertEqual(len(t._attempts), 100)

    def test_refusalsNameNoTokenInMemory(self):
        """
        The throttle remembers attempts by a digest, not the token.
        """
        self.failureResultOf(self.attempt("a", "secret-token-value"), Refused)
        self.assertNotIn(b"secret-token-value", repr(self.throttle._attempts).encode())

    def test_deadlineRefusesAtOnce(self):
        """
        A client with a deadline (an SRT caller's connect timeout) is not
        held past it: refused at once as throttled, its token kept.
        """
        t = new_token("s1", "play", NOW + 600)
        self.store.add(StoredToken.fromToken("LiveApp", t))
        for i in range(7):
            self.throttle.failed("a", b"%d" % i)
        self.assertEqual(self.throttle.delay("a"), 1.0)
        creds = StreamCredentials("LiveApp", "s1", "play", t.tokenId, "a", "srt")
        d = self.gate.login(creds, deadline=NOW + 0.5)
        self.assertEqual(self.failureResultOf(d, Refused).value.outcome, Outcome.THROTTLED)
        # not counted as a failure, and the token still admits once the wait fits
        self.assertEqual(self.throttle.delay("a"), 1.0)
        d = self.gate.login(creds, deadline=NOW + 1.0)
        self.assertNoResult(d)
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d).kind, "onetime")

    def test_tableBounded(self):
        t = Throttle(self.clock, maxTracked=100)
        for i in range(1000):
            t.failed("10.0.{}.{}".format(i // 256, i % 256))
        self.assertEqual(len(t._scores), 100)

    def test_validClientNeverDelayed(self):
        t = new_token("s1", "play", NOW + 60)
        self.store.add(StoredToken.fromToken("LiveApp", t))
        self.assertEqual(self.throttle.delay("203.0.113.1"), 0)
        self.successResultOf(self.attempt("203.0.113.1", t.tokenId))
