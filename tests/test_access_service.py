"""
The access service: the one door of every protocol's publish and play.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tokengate.access.service import (
    MAX_PARAMS,
    MAX_PARAMS_CHARS,
    MAX_SUBSCRIBER_CODE,
    MAX_SUBSCRIBER_ID,
    AccessRequest,
    AccessService,
    Publication,
    Refused,
    Viewing,
)
from tokengate.apps import Applications
from tokengate.auth import build_gate
from tokengate.media.hub import Hub
from tokengate.metrics import Metrics
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import PLAY, PUBLISH, Outcome, StoredToken, new_token

from .fixtures import RecordingPolicy
from .helpers import NOW, clock_at


class Mind:
    def __init__(self, protocol="rtmp"):
        self.protocolName = protocol
        self.peerHost = "192.0.2.1"
        self.kicked = []

    def kick(self, reason):
        self.kicked.append(reason)


class SlowStore(MemoryTokenStore):
    """
    A memory store whose redemptions wait until released.
    """

    def __init__(self):
        super().__init__()
        self.waiting = []

    def redeem(self, digest, probe):
        d = Deferred()
        self.waiting.append(d)
        d.addCallback(lambda _: MemoryTokenStore.redeem(self, digest, probe))
        return d


class AccessServiceTests(SynchronousTestCase):
    def setUp(self, store=None):
        self.clock = clock_at()
        self.apps = Applications(None)
        self.apps.replace("LiveApp", publishTokenControlEnabled=True,
                          playTokenControlEnabled=True, dashMuxingEnabled=True)
        self.store = store if store is not None else MemoryTokenStore()
        self.metrics = Metrics()
        self.gate = build_gate(self.apps, self.store, self.clock, self.metrics)
        self.hub = Hub(self.clock)
        self.recorded = set()
        self.access = AccessService(self.apps, self.gate, self.hub,
                                    lambda app, streamId: (app, streamId) in self.recorded)

    def mint(self, streamId="s1", type=PUBLISH):
        t = new_token(streamId, type, NOW + 60)
        self.store.add(StoredToken.fromToken("LiveApp", t))
        return t.tokenId

    def request(self, action, protocol, token=None, streamId="s1", app="LiveApp"):
        return AccessRequest(app, streamId, action, protocol, "192.0.2.1", token)

    def refusal(self, d):
        return self.failureResultOf(d, Refused).value.outcome

    def refusals(self, protocol, action, outcome):
        return self.metrics.refusals.labels(protocol, action, outcome.value)._value.get()

    def live(self, streamId="s1"):
        publication = self.successResultOf(
            self.access.publish(self.request(PUBLISH, "rtmp", self.mint(streamId), streamId),
                                Mind()))
        publication.start()
        return publication

    def test_publishClaimsThenStarts(self):
        publication = self.successResultOf(
            self.access.publish(self.request(PUBLISH, "srt", self.mint()), Mind("srt")))
        self.assertIsInstance(publication, Publication)
        self.assertTrue(self.hub.isTaken("LiveApp", "s1"))
        self.assertFalse(self.hub.isLive("LiveApp", "s1"))
        stream = publication.start()
        self.assertEqual(stream.publishType, "SRT")
        self.assertIs(self.hub.get("LiveApp", "s1"), stream)
        publication.end()
        publication.end()
        self.assertFalse(self.hub.isTaken("LiveApp", "s1"))
        self.assertTrue(publication.grant.ended)
        self.assertEqual(self.gate.registry.grants("LiveApp"), [])

    def test_unstartedPublicationReleasesItsClaim(self):
        publication = self.successResultOf(
            self.access.publish(self.request(PUBLISH, "srt", self.mint()), Mind("srt")))
        publication.end()
        self.assertFalse(self.hub.isTaken("LiveApp", "s1"))
        self.assertRaises(Exception, publication.start)

    def test_play(self):
        self.live()
        viewing = self.successResultOf(
            self.access.play(self.request(PLAY, "hls", self.mint(type=PLAY)), Mind("hls")))
        self.assertIsInstance(viewing, Viewing)
        self.assertIs(viewing.stream, self.hub.get("LiveApp", "s1"))
        viewing.end()
        self.assertTrue(viewing.grant.ended)

    def test_refusalsBeforeRedemptionKeepTheToken(self):
        """
        Every reason known before redemption refuses at once, is counted,
        and leaves the token usable.
        """
        publishToken = self.mint("s2")
        cases = [
            (self.request(PUBLISH, "rtmp", publishToken, streamId="../s2"), Outcome.INVALID),
            (self.request(PUBLISH, "rtmp", publishToken, streamId="s2", app="Nope"),
             Outcome.NO_APP),
            (self.request(PUBLISH, "hls", publishToken, streamId="s2"), Outcome.INVALID),
        ]
        self.live("s1")
        cases.append((self.request(PUBLISH, "rtmp", self.mint("s1")), Outcome.IN_USE))
        playToken = self.mint("s3", PLAY)
        cases += [
            (self.request(PLAY, "rtmp", playToken, streamId="s3"), Outcome.NOT_LIVE),
            (self.request(PLAY, "vod", playToken, streamId="s3"), Outcome.NOT_LIVE),
        ]
        for request, outcome in cases:
            call = self.access.publish if request.action == PUBLISH else self.access.play
            self.assertEqual(self.refusal(call(request, Mind())), outcome, request)
            self.assertEqual(self.refusals(request.protocol, request.action, outcome), 1)
        # the tokens still work
        self.live("s2")
        self.live("s3")
        self.successResultOf(self.access.play(self.request(PLAY, "rtmp", playToken, "s3"),
                                              Mind()))

    def test_switches(self):
        """
        The application's switches refuse their protocol as C{disabled},
        before the token is looked at.
        """
        self.live()
        switches = [
            ("webRTCEnabled", PUBLISH, "webrtc"),
            ("webRTCEnabled", PLAY, "webrtc"),
            ("rtmpPlaybackEnabled", PLAY, "rtmp"),
            ("hlsMuxingEnabled", PLAY, "hls"),
            ("dashMuxingEnabled", PLAY, "dash"),
        ]
        base = dict(publishTokenControlEnabled=True, playTokenControlEnabled=True,
                    dashMuxingEnabled=True)
        for switch, action, protocol in switches:
            self.apps.replace("LiveApp", **{**base, switch: False})
            streamId = "w1" if action == PUBLISH else "s1"
            token = self.mint(streamId, action)
            request = self.request(action, protocol, token, streamId)
            call = self.access.publish if action == PUBLISH else self.access.play
            self.assertEqual(self.refusal(call(request, Mind(protocol))), Outcome.DISABLED,
                             switch)
            self.apps.replace("LiveApp", **{**base, switch: True})
            session = self.successResultOf(call(request, Mind(protocol)))
            session.end()

    def test_vod(self):
        self.recorded.add(("LiveApp", "old"))
        token = self.mint("old", PLAY)
        viewing = self.successResultOf(
            self.access.play(self.request(PLAY, "vod", token, "old"), Mind("vod")))
        self.assertIsNone(viewing.stream)

    def test_spentTokenRefused(self):
        self.live()
        token = self.mint(type=PLAY)
        self.successResultOf(self.access.play(self.request(PLAY, "rtmp", token), Mind()))
        self.assertEqual(self.refusal(self.access.play(self.request(PLAY, "rtmp", token),
                                                       Mind())), Outcome.UNKNOWN)

    def test_actionMismatchRefused(self):
        request = self.request(PLAY, "rtmp", self.mint())
        self.assertEqual(self.refusal(self.access.publish(request, Mind())), Outcome.INVALID)

    def test_refuseCountsAdapterRefusals(self):
        self.access.refuse(AccessRequest("LiveApp", "x" * 5000, PUBLISH, "srt", "192.0.2.9"),
                           Outcome.INVALID)
        self.assertEqual(self.refusals("srt", PUBLISH, Outcome.INVALID), 1)


class RaceTests(SynchronousTestCase):
    """
    What changes while a token is being redeemed.
    """

    def setUp(self):
        AccessServiceTests.setUp(self, SlowStore())

    mint = AccessServiceTests.mint
    request = AccessServiceTests.request
    refusal = AccessServiceTests.refusal

    def release(self):
        waiting, self.store.waiting = self.store.waiting, []
        for d in waiting:
            d.callback(None)

    def test_publishRace(self):
        """
        Two publishers redeeming at once: the second to finish loses the
        claim, its grant ends and it is refused as C{in_use}.
        """
        first = self.access.publish(self.request(PUBLISH, "rtmp", self.mint()), Mind())
        second = self.access.publish(self.request(PUBLISH, "srt", self.mint()), Mind())
        self.release()
        publication = self.successResultOf(first)
        self.assertEqual(self.refusal(second), Outcome.IN_USE)
        self.assertEqual([g.protocol for g in self.gate.registry.grants("LiveApp", "s1")],
                         ["rtmp"])
        publication.end()

    def test_playOfAStreamThatEnded(self):
        publication = self.access.publish(self.request(PUBLISH, "rtmp", self.mint()), Mind())
        self.release()
        publication = self.successResultOf(publication)
        publication.start()
        d = self.access.play(self.request(PLAY, "rtmp", self.mint(type=PLAY)), Mind())
        publication.end()
        self.release()
        self.assertEqual(self.refusal(d), Outcome.NOT_LIVE)
        self.assertEqual(self.gate.registry.grants("LiveApp", "s1"), [])


class HashTokenTests(SynchronousTestCase):
    """
    Ant Media's hash tokens, through the one door: every protocol.
    """

    SECRET = "h" * 20

    def setUp(self):
        AccessServiceTests.setUp(self)
        self.apps.replace("LiveApp", publishTokenControlEnabled=False,
                          playTokenControlEnabled=False, hashControlPublishEnabled=True,
                          hashControlPlayEnabled=True, tokenHashSecret=self.SECRET,
                          dashMuxingEnabled=True)

    request = AccessServiceTests.request
    refusal = AccessServiceTests.refusal

    def test_everyProtocol(self):
        from tokengate.access.hashtoken import hashToken

        publish = hashToken("s1", PUBLISH, self.SECRET)
        for protocol in ("rtmp", "srt", "webrtc"):
            self.assertEqual(self.refusal(self.access.publish(
                self.request(PUBLISH, protocol, hashToken("s1", PLAY, self.SECRET)),
                Mind(protocol))), Outcome.INVALID)
            self.assertEqual(self.refusal(self.access.publish(
                self.request(PUBLISH, protocol, None), Mind(protocol))), Outcome.MISSING)
            publication = self.successResultOf(self.access.publish(
                self.request(PUBLISH, protocol, publish), Mind(protocol)))
            self.assertEqual(publication.grant.kind, "hash")
            publication.end()
        # reusable: the same token publishes again, and it plays nothing
        publication = self.successResultOf(self.access.publish(
            self.request(PUBLISH, "rtmp", publish), Mind()))
        publication.start()
        play = hashToken("s1", PLAY, self.SECRET)
        for protocol in ("rtmp", "webrtc", "hls", "dash"):
            self.assertEqual(self.refusal(self.access.play(
                self.request(PLAY, protocol, publish), Mind(protocol))), Outcome.INVALID)
            self.assertEqual(self.refusal(self.access.play(
                self.request(PLAY, protocol, hashToken("s2", PLAY, self.SECRET)),
                Mind(protocol))), Outcome.INVALID)
            for _ in range(2):
                viewing = self.successResultOf(self.access.play(
                    self.request(PLAY, protocol, play), Mind(protocol)))
                self.assertEqual(viewing.grant.kind, "hash")
                viewing.end()

    def test_secretChangeInvalidates(self):
        from tokengate.access.hashtoken import hashToken

        token = hashToken("s1", PUBLISH, self.SECRET)
        self.apps.replace("LiveApp", hashControlPublishEnabled=True,
                          tokenHashSecret="another secret of 20")
        self.assertEqual(self.refusal(self.access.publish(
            self.request(PUBLISH, "rtmp", token), Mind())), Outcome.INVALID)


class Policy:
    """
    A policy the test drives: refuses with C{outcome} when set, else admits
    holding a lease whose releases are counted.
    """

    mechanism = "test"

    def applies(self, settings, action):
        return True

    def __init__(self):
        self.outcome = None
        self.asked = []
        self.released = 0
        self.pending = None

    async def admit(self, request, settings):
        self.asked.append(request)
        if self.pending is not None:
            await self.pending
        if self.outcome is not None:
            raise Refused(self.outcome)

        def release():
            self.released += 1
        return release


class PolicyTests(SynchronousTestCase):
    """
    The security policies run after the checks, before the token, in
    order; what they hold is released when the session ends.
    """

    def setUp(self):
        self.clock = clock_at()
        self.apps = Applications(None)
        self.apps.replace("LiveApp", publishTokenControlEnabled=True)
        self.store = MemoryTokenStore()
        self.metrics = Metrics()
        self.gate = build_gate(self.apps, self.store, self.clock, self.metrics)
        self.hub = Hub(self.clock)
        self.first, self.second = Policy(), Policy()
        self.access = AccessService(self.apps, self.gate, self.hub,
                                    policies=[self.first, self.second])

    def mint(self):
        t = new_token("s1", PUBLISH, NOW + 60)
        self.store.add(StoredToken.fromToken("LiveApp", t))
        return t.tokenId

    def publish(self, token, subscriberId=None):
        return self.access.publish(
            AccessRequest("LiveApp", "s1", PUBLISH, "rtmp", "192.0.2.1", token,
                          subscriberId=subscriberId), Mind())

    def test_refusalKeepsTokenAndStops(self):
        token = self.mint()
        self.first.outcome = Outcome.ADDRESS
        d = self.publish(token)
        self.assertEqual(self.failureResultOf(d, Refused).value.outcome, Outcome.ADDRESS)
        self.assertEqual(self.second.asked, [])
        self.assertEqual(self.metrics.policyRefusals.labels(
            "publisherAddress", "address")._value.get(), 1)
        self.first.outcome = None
        self.successResultOf(self.publish(token))

    def test_laterRefusalReleasesEarlierHolds(self):
        token = self.mint()
        self.second.outcome = Outcome.WEBHOOK_REFUSED
        self.failureResultOf(self.publish(token), Refused)
        self.assertEqual(self.first.released, 1)

    def test_spentTokenReleasesHolds(self):
        token = self.mint()
        self.successResultOf(self.publish(token)).end()
        self.failureResultOf(self.publish(token), Refused)
        self.assertEqual((self.first.released, self.second.released), (2, 2))

    def test_holdsReleasedOnEndAndKick(self):
        publication = self.successResultOf(self.publish(self.mint(), subscriberId="sub1"))
        self.assertEqual(self.first.released, 0)
        publication.start()
        self.assertEqual(publication.grant.subscriberId, "sub1")
        self.assertEqual(self.gate.registry.kickSubscriber("LiveApp", "s1", "other"), 0)
        self.assertEqual(self.gate.registry.kickSubscriber("LiveApp", "s1", "sub1"), 1)
        self.assertEqual((self.first.released, self.second.released), (1, 1))
        publication.end()
        self.assertEqual(self.first.released, 1)

    def test_checksAgainAfterAPolicyWaits(self):
        """
        A policy that takes time (a webhook) does not let a second publisher
        through: the stream claimed meanwhile is refused before its token is
        redeemed, holds released.
        """
        self.first.pending = Deferred()
        token = self.mint()
        d1 = self.publish(token)
        self.first.pending, pending = None, self.first.pending
        d2 = self.publish(self.mint())
        self.successResultOf(d2).start()
        pending.callback(None)
        self.assertEqual(self.failureResultOf(d1, Refused).value.outcome, Outcome.IN_USE)
        self.assertEqual(self.first.released, 1)
        self.assertEqual(len(self.store._tokens), 1, "the waiting publisher's token is kept")


class BoundsTests(SynchronousTestCase):
    """
    A subscriber id, code or parameters longer than any client needs are
    refused as invalid before any policy or token is asked (the token
    kept); within the bounds they reach the policies as given.
    """

    def setUp(self):
        self.clock = clock_at()
        self.apps = Applications(None)
        self.apps.replace("LiveApp", publishTokenControlEnabled=True)
        self.store = MemoryTokenStore()
        self.metrics = Metrics()
        self.gate = build_gate(self.apps, self.store, self.clock, self.metrics)
        self.policy = RecordingPolicy()
        self.access = AccessService(self.apps, self.gate, Hub(self.clock),
                                    policies=[self.policy])
        t = new_token("s1", PUBLISH, NOW + 60)
        self.store.add(StoredToken.fromToken("LiveApp", t))
        self.token = t.tokenId

    def publish(self, **kw):
        return self.access.publish(
            AccessRequest("LiveApp", "s1", PUBLISH, "rtmp", "192.0.2.1", self.token, **kw),
            Mind())

    def test_absurd(self):
        for kw in ({"subscriberId": "a" * (MAX_SUBSCRIBER_ID + 1)},
                   {"subscriberCode": "1" * (MAX_SUBSCRIBER_CODE + 1)},
                   {"params": [("k", "v" * MAX_PARAMS_CHARS)]},
                   {"params": [("k" * 300, "v" * 300)] * 20},
                   {"params": [("k", "v")] * (MAX_PARAMS + 1)}):
            self.assertEqual(self.failureResultOf(self.publish(**kw), Refused).value.outcome,
                             Outcome.INVALID, kw)
        self.assertEqual(self.policy.asked, [])
        self.assertEqual(len(self.store._tokens), 1)

    def test_withinBoundsAsGiven(self):
        """
        Not judged here: a subscriber id outside the subscriber grammar and
        a code that is not six digits reach the policy as sent.
        """
        kw = {"subscriberId": "a" * MAX_SUBSCRIBER_ID, "subscriberCode": "x" * MAX_SUBSCRIBER_CODE,
              "params": [("k", "v" * (MAX_PARAMS_CHARS - MAX_PARAMS))]
              + [("k", "")] * (MAX_PARAMS - 1)}
        self.successResultOf(self.publish(**kw))
        r = self.policy.last
        self.assertEqual((r.subscriberId, r.subscriberCode, r.params),
                         (kw["subscriberId"], kw["subscriberCode"], tuple(kw["params"])))
        self.assertNotIn("x" * 10, repr(r))


class AdmissionRequiredTests(SynchronousTestCase):
    """
    Whether an application admits an action: a token demanded, or a policy
    that applies to it.
    """

    def test_admissionRequired(self):
        apps = Applications(None)
        apps.create("Open")
        apps.create("Tokens")
        apps.replace("Tokens", playTokenControlEnabled=True)
        clock = clock_at()
        gate = build_gate(apps, MemoryTokenStore(), clock, Metrics())
        bare = AccessService(apps, gate, Hub(clock))
        self.assertFalse(bare.admissionRequired("Open", PLAY))
        self.assertTrue(bare.admissionRequired("Tokens", PLAY))
        self.assertFalse(bare.admissionRequired("Tokens", PUBLISH))
        self.assertTrue(bare.admissionRequired("Nope", PLAY))
        policed = AccessService(apps, gate, Hub(clock),
                                policies=[RecordingPolicy(actions=frozenset({PLAY}))])
        self.assertTrue(policed.admissionRequired("Open", PLAY))
        self.assertFalse(policed.admissionRequired("Open", PUBLISH))


class KickCountTests(SynchronousTestCase):
    """
    L{SessionRegistry.kick} counts the sessions live when asked, also
    those that end on their own while others are kicked.
    """

    def test_cascade(self):
        from tokengate.access.sessions import Grant, SessionRegistry

        clock = clock_at()
        registry = SessionRegistry(Metrics(), clock)

        def grant(action, mind):
            g = Grant(app="LiveApp", streamId="s1", action=action, protocol="whip",
                      peer="192.0.2.1", kind="onetime", digest=None, expires=None, mind=mind,
                      registry=registry, started=clock.seconds())
            registry.add(g)
            return g

        viewer = grant(PLAY, Mind())

        class Publisher(Mind):
            def kick(self, reason):
                super().kick(reason)
                viewer.logout()  # the stream ends: its player leaves

        publisher = grant(PUBLISH, Publisher())
        # the publisher first: the viewer ends before its turn, and counts
        self.assertEqual(registry.kick([publisher, viewer], "revoked"), 2)
        self.assertTrue(viewer.ended)
        self.assertEqual(registry.kick([publisher, viewer], "revoked"), 0)
