"""
TOTP subscribers enforced through the access service
(L{tokengate.access.subscriberpolicy}), on a L{Clock} and a
L{MemorySubscriberStore}; codes made by pyotp, an independent TOTP.
"""

from __future__ import annotations

import base64

import pyotp
from attrs import evolve
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from tokengate.access.service import AccessRequest, AccessService, Refused
from tokengate.access.subscriberpolicy import SubscriberPolicy
from tokengate.access.subscribers import MemorySubscriberStore, Subscriber
from tokengate.apps import Applications, AppSettings
from tokengate.auth import attemptOf, build_gate
from tokengate.media.hub import Hub
from tokengate.metrics import Metrics
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import PLAY, PUBLISH, Outcome, StoredToken, new_token

from .helpers import NOW, clock_at

SECRET_PUBLISH = "publish-secret"
SECRET_PLAY = "play-secret-2"
B32 = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def derivedB32(secret: str, subscriberId: str, streamId: str, type: str) -> str:
    """
    Ant Media's derivation, written again for the test (ASCII inputs):
    the text padded with X to a multiple of 8, Base32.
    """
    text = secret + subscriberId + streamId + type
    text += "X" * (-len(text) % 8)
    return base64.b32encode(text.encode("ascii")).decode("ascii")


def code(b32: str, at: float, period: int = 60) -> str:
    return pyotp.TOTP(b32, interval=period).at(at)


class Mind:
    protocolName = "rtmp"
    peerHost = "192.0.2.1"

    def __init__(self):
        self.kicked = []

    def kick(self, reason):
        self.kicked.append(reason)


class Lookup:
    """
    Settings as given, not validated (to combine what the REST API would
    refuse, and show what the service does with it).
    """

    def __init__(self, **apps):
        self.apps = apps

    def get(self, name):
        return self.apps.get(name)


class SubscriberPolicyTests(SynchronousTestCase):
    def setUp(self):
        self.clock = clock_at()
        self.apps = Applications(None)
        self.apps.create("OtherApp")
        for app in ("LiveApp", "OtherApp"):
            self.apps.replace(app, enableTimeTokenForPublish=True, enableTimeTokenForPlay=True,
                              timeTokenSecretForPublish=SECRET_PUBLISH,
                              timeTokenSecretForPlay=SECRET_PLAY)
        self.subscribers = MemorySubscriberStore(self.clock)
        self.build(self.apps)

    def build(self, apps):
        self.metrics = Metrics()
        self.tokens = MemoryTokenStore()
        self.gate = build_gate(apps, self.tokens, self.clock, self.metrics)
        self.hub = Hub(self.clock)
        self.access = AccessService(apps, self.gate, self.hub,
                                    policies=[SubscriberPolicy(self.subscribers, self.clock)])

    def request(self, action=PUBLISH, subscriberId="alice", subscriberCode=None, app="LiveApp",
                streamId="s1", token=None, protocol=None, peer="192.0.2.1"):
        if subscriberCode is None and subscriberId is not None:
            secret = SECRET_PUBLISH if action == PUBLISH else SECRET_PLAY
            subscriberCode = code(derivedB32(secret, subscriberId, streamId, action),
                                  self.clock.seconds())
        return AccessRequest(app, streamId, action,
                             protocol or ("rtmp" if action == PUBLISH else "hls"),
                             peer, token, subscriberId=subscriberId,
                             subscriberCode=subscriberCode)

    def publish(self, *a, **kw):
        mind = Mind()
        return self.access.publish(self.request(PUBLISH, *a, **kw), mind), mind

    def play(self, *a, **kw):
        mind = Mind()
        return self.access.play(self.request(PLAY, *a, **kw), mind), mind

    def refusal(self, d):
        return self.failureResultOf(d, Refused).value.outcome

    def live(self, app="LiveApp", streamId="s1"):
        return self.subscribers._state.get((app, streamId, "alice"))

    # --- admitted ------------------------------------------------------------------

    def test_derivedCodeAdmitted(self):
        """
        A subscriber nobody recorded, with the code of the key derived from
        the application's secret for the action, is admitted; its grant
        names it, and the session holds one live connection until it ends.
        """
        d, _ = self.publish()
        publication = self.successResultOf(d)
        self.assertEqual((publication.grant.subscriberId, publication.grant.kind),
                         ("alice", "none"))
        self.assertEqual(self.live().live, 1)
        events = self.successResultOf(self.subscribers.connectionEvents("LiveApp", "s1", 0, 10))
        self.assertEqual([(e.eventType, e.type, e.eventProtocol) for e in events],
                         [("connected", "publish", "rtmp")])
        publication.end()
        self.assertIsNone(self.live())
        events = self.successResultOf(self.subscribers.connectionEvents("LiveApp", "s1", 0, 10))
        self.assertEqual([e.eventType for e in events], ["connected", "disconnected"])

    def test_neighbouringStepsAdmitted(self):
        """
        The code of the previous or next period passes (clock skew); two
        periods away does not.
        """
        for delta, outcome in ((-60, None), (60, None), (-120, Outcome.BAD_CODE),
                               (120, Outcome.BAD_CODE)):
            c = code(derivedB32(SECRET_PUBLISH, "alice", "s1", PUBLISH), NOW + delta)
            d, _ = self.publish(subscriberCode=c)
            if outcome is None:
                self.successResultOf(d).end()
            else:
                self.assertEqual(self.refusal(d), outcome, delta)

    def test_recordedSubscriber(self):
        """
        A subscriber recorded with its own b32Secret and period uses them
        (not the application's); a play subscriber may not publish, a
        publish subscriber may also play.
        """
        self.successResultOf(self.subscribers.addSubscriber("LiveApp", Subscriber(
            "alice", "s1", PUBLISH, b32Secret=B32, totpExpiryPeriodSeconds=30)))
        self.successResultOf(self.subscribers.addSubscriber("LiveApp", Subscriber(
            "bobby", "s1", PLAY, b32Secret=B32)))
        derived = code(derivedB32(SECRET_PUBLISH, "alice", "s1", PUBLISH), NOW)
        d, _ = self.publish(subscriberCode=derived)
        self.assertEqual(self.refusal(d), Outcome.BAD_CODE)
        d, _ = self.publish(subscriberId="bobby", subscriberCode=code(B32, NOW))
        self.assertEqual(self.refusal(d), Outcome.BAD_CODE)
        d, _ = self.publish(subscriberCode=code(B32, NOW, 30))
        publication = self.successResultOf(d)
        publication.start()
        d, _ = self.play(subscriberId="bobby", subscriberCode=code(B32, NOW))
        self.successResultOf(d).end()
        publication.end()
        # alice (publish) may also play
        self.hub.publish("LiveApp", "s1", "RTMP")
        d, _ = self.play(subscriberCode=code(B32, NOW, 30))
        self.successResultOf(d)

    def test_offApplicationAsksNothing(self):
        """
        An application without TOTP for the action admits without a
        subscriber; the other direction still demands one.
        """
        self.apps.replace("LiveApp", enableTimeTokenForPublish=False)
        d, _ = self.publish(subscriberId=None)
        self.successResultOf(d).start()
        d, _ = self.play(subscriberId=None)
        self.assertEqual(self.refusal(d), Outcome.BAD_CODE)
        policy = SubscriberPolicy(self.subscribers, self.clock)
        settings = self.apps.get("LiveApp")
        self.assertEqual((policy.applies(settings, PUBLISH), policy.applies(settings, PLAY)),
                         (False, True))

    # --- refused ------------------------------------------------------------------

    def test_badCodes(self):
        """
        A missing id or code, a wrong code, a code for the other action or
        stream, a malformed id, a code of an unset secret: BAD_CODE,
        counted under the subscriber mechanism.
        """
        good = code(derivedB32(SECRET_PUBLISH, "alice", "s1", PUBLISH), NOW)
        wrong = "{:06d}".format((int(good) + 1) % 10**6)
        cases = [
            dict(subscriberId=None, subscriberCode=None),
            dict(subscriberCode=""),
            dict(subscriberId="", subscriberCode=good),
            dict(subscriberCode=wrong),
            dict(subscriberCode=" " + good[1:]),
            dict(subscriberCode=code(derivedB32(SECRET_PLAY, "alice", "s1", PLAY), NOW)),
            dict(subscriberCode=code(derivedB32(SECRET_PUBLISH, "alice", "s2", PUBLISH), NOW)),
            dict(subscriberId="a/b=c", subscriberCode=good),
        ]
        for i, kw in enumerate(cases):
            # one address each: the throttle would slow one address down
            d, _ = self.publish(peer="192.0.2.{}".format(10 + i), **kw)
            self.assertEqual(self.refusal(d), Outcome.BAD_CODE, kw)
        self.apps.replace("LiveApp", timeTokenSecretForPublish="")
        d, _ = self.publish(subscriberCode=good, peer="192.0.2.99")
        self.assertEqual(self.refusal(d), Outcome.BAD_CODE)
        self.assertEqual(self.metrics.policyRefusals.labels(
            "subscriber", "bad_code")._value.get(), len(cases) + 1)
        self.assertEqual(self.metrics.refusals.labels("rtmp", "publish", "bad_code")._value.get(),
                         len(cases) + 1)
        self.assertEqual(self.subscribers._state, {})

    def test_expiredCode(self):
        """
        A code goes stale two periods later.
        """
        request = self.request()
        self.clock.advance(120)
        self.assertEqual(self.refusal(self.access.publish(request, Mind())), Outcome.BAD_CODE)

    def test_secondConnectionRefused(self):
        """
        One subscriber code on two live connections at once: the second is
        refused (CODE_IN_USE, not counted against the address); once the
        first ends, the code works again.
        """
        self.hub.publish("LiveApp", "s1", "RTMP")
        first = self.successResultOf(self.play()[0])
        d, _ = self.play(protocol="rtmp")
        self.assertEqual(self.refusal(d), Outcome.CODE_IN_USE)
        first.end()
        self.successResultOf(self.play()[0])

    def test_olderCodeReplayRefused(self):
        """
        Once a subscriber used the code of a step, the previous step's code
        (still in the window) is refused.
        """
        self.successResultOf(self.subscribers.addSubscriber("LiveApp", Subscriber(
            "carol", "s2", PUBLISH, b32Secret=B32)))
        self.clock.advance(60)
        self.successResultOf(self.publish(subscriberId="carol", streamId="s2",
                                          subscriberCode=code(B32, NOW + 60))[0]).end()
        d, _ = self.publish(subscriberId="carol", streamId="s2", subscriberCode=code(B32, NOW))
        self.assertEqual(self.refusal(d), Outcome.BAD_CODE)
        self.successResultOf(self.publish(subscriberId="carol", streamId="s2",
                                          subscriberCode=code(B32, NOW + 60))[0])

    def test_blocked(self):
        """
        A blocked subscriber is refused (BLOCKED) for the blocked type
        only; the block ends by itself.
        """
        self.successResultOf(self.subscribers.blockSubscriber("LiveApp", "s1", "alice",
                                                              PUBLISH, 30))
        d, _ = self.publish()
        self.assertEqual(self.refusal(d), Outcome.BLOCKED)
        stream = self.hub.publish("LiveApp", "s1", "RTMP")
        self.successResultOf(self.play()[0]).end()
        stream.end()
        self.clock.advance(31)
        self.successResultOf(self.publish()[0])

    def test_kickReleases(self):
        """
        Kicking a subscriber's sessions (what a block does) ends them, tells
        their minds, and frees the subscriber's connection.
        """
        d, mind = self.publish()
        publication = self.successResultOf(d)
        publication.start()
        self.assertEqual(self.gate.registry.kickSubscriber("LiveApp", "s1", "alice", PLAY), 0)
        self.assertEqual(self.gate.registry.kickSubscriber("LiveApp", "s1", "alice", PUBLISH), 1)
        self.assertEqual(mind.kicked, ["blocked"])
        self.assertIsNone(self.live())
        publication.end()
        self.assertIsNone(self.live())

    def test_perApplication(self):
        """
        LiveApp/s1 and OtherApp/s1 have different subscribers: alice holds
        one connection in each, and a block in one leaves the other alone.
        """
        live = self.successResultOf(self.publish()[0])
        other = self.successResultOf(self.publish(app="OtherApp")[0])
        self.successResultOf(self.subscribers.blockSubscriber("OtherApp", "s1", "alice",
                                                              "publish_play", 60))
        live.end()
        other.end()
        self.successResultOf(self.publish()[0])
        d, _ = self.publish(app="OtherApp")
        self.assertEqual(self.refusal(d), Outcome.BLOCKED)

    def test_storeDown(self):
        """
        A subscriber store that cannot answer refuses (UNAVAILABLE): fail
        closed.
        """
        self.subscribers.getSubscriber = lambda *a: fail(OSError("down"))
        d, _ = self.publish()
        self.assertEqual(self.refusal(d), Outcome.UNAVAILABLE)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_storeFull(self):
        """
        A store that cannot track another subscriber refuses (UNAVAILABLE).
        """
        self.subscribers = MemorySubscriberStore(self.clock, maxSubscribers=0)
        self.build(self.apps)
        d, _ = self.publish()
        self.assertEqual(self.refusal(d), Outcome.UNAVAILABLE)

    def test_refusalKeepsToken(self):
        """
        The policy runs before the token: a refused code leaves a one-time
        token unspent (settings the REST API refuses to combine, given
        directly to show the order).
        """
        settings = evolve(AppSettings(), publishTokenControlEnabled=True,
                          enableTimeTokenForPublish=True,
                          timeTokenSecretForPublish=SECRET_PUBLISH)
        self.build(Lookup(LiveApp=settings))
        token = new_token("s1", PUBLISH, NOW + 60)
        self.tokens.add(StoredToken.fromToken("LiveApp", token))
        d, _ = self.publish(subscriberCode="000000", token=token.tokenId)
        self.assertEqual(self.refusal(d), Outcome.BAD_CODE)
        publication = self.successResultOf(self.publish(token=token.tokenId)[0])
        self.assertEqual(publication.grant.kind, "onetime")
        publication.end()
        self.assertEqual(self.refusal(self.publish(token=token.tokenId)[0]), Outcome.UNKNOWN)
        # the spent token released the subscriber's connection it had taken
        self.assertIsNone(self.live())

    def test_withHashToken(self):
        """
        TOTP with hash tokens: both must pass.
        """
        from tokengate.access.hashtoken import hashToken

        self.apps.replace("LiveApp", hashControlPublishEnabled=True,
                          tokenHashSecret="a hash secret of 20")
        good = hashToken("s1", PUBLISH, "a hash secret of 20")
        self.assertEqual(self.refusal(self.publish(token=good, subscriberCode="000000")[0]),
                         Outcome.BAD_CODE)
        self.assertEqual(self.refusal(self.publish(token="0" * 64)[0]), Outcome.INVALID)
        self.assertIsNone(self.live())
        publication = self.successResultOf(self.publish(token=good)[0])
        self.assertEqual(publication.grant.kind, "hash")
        self.assertEqual(publication.grant.subscriberId, "alice")

    def test_eachCodeIsAnAttempt(self):
        """
        The throttle tells codes apart: trying many codes for one subscriber
        is many attempts, not one.
        """
        a = self.request(subscriberCode="000001").credentials()
        b = self.request(subscriberCode="000002").credentials()
        self.assertNotEqual(attemptOf(a), attemptOf(b))
        self.assertNotIn("000001", repr(a))
        for i in range(5):
            d, _ = self.publish(subscriberCode="{:06d}".format(i))
            self.assertEqual(self.refusal(d), Outcome.BAD_CODE)
        # five wrong codes: the address now waits before its next try
        d, _ = self.publish(subscriberCode="999999")
        self.assertNoResult(d)
        self.clock.advance(10)
        self.assertEqual(self.refusal(d), Outcome.BAD_CODE)


class SettingsTests(SynchronousTestCase):
    """
    The TOTP settings: Ant Media's names and defaults, and its rule that
    TOTP is one of the token types (not beside one-time or JWT tokens).
    """

    def test_defaults(self):
        s = AppSettings()
        self.assertEqual((s.enableTimeTokenForPublish, s.enableTimeTokenForPlay,
                          s.timeTokenSecretForPublish, s.timeTokenSecretForPlay,
                          s.timeTokenPeriod), (False, False, "", "", 60))

    def test_combinations(self):
        from tokengate.apps import SettingsError

        for direction in ("Publish", "Play"):
            totp = {"enableTimeToken" + "For" + direction: True}
            for other in ({direction.lower() + "TokenControlEnabled": True},
                          {direction.lower() + "JwtControlEnabled": True,
                           "jwtStreamSecretKey": "k" * 32}):
                with self.assertRaises(SettingsError) as e:
                    AppSettings.fromJSON(dict(totp, **other))
                self.assertIn("TOTP cannot be combined", str(e.exception))
            hashed = "hashControl" + direction + "Enabled"
            settings, _ = AppSettings.fromJSON(dict(totp, **{hashed: True,
                                                            "tokenHashSecret": "x" * 16}))
            self.assertTrue(settings.requiresSubscriber(direction.lower()))

    def test_period(self):
        from tokengate.jsonvalue import JSONError

        self.assertEqual(AppSettings.fromJSON({"timeTokenPeriod": 30})[0].timeTokenPeriod, 30)
        for bad in (9, 86401, "60", True, 60.0):
            self.assertRaises(JSONError, AppSettings.fromJSON, {"timeTokenPeriod": bad})
        settings, repairs = AppSettings.fromStored({"timeTokenPeriod": 5}, "LiveApp")
        self.assertEqual((settings.timeTokenPeriod, len(repairs)), (10, 1))
