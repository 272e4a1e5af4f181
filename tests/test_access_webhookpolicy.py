"""
The authorization webhooks as a policy of the access service
(L{tokengate.access.webhookpolicy}): in memory (StubTreq on a Clock), then
against a real HTTP receiver on 127.0.0.1 in four modes: allow, deny, slow,
down.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests.helpers import NOW, clock_at
from tests.httpreceiver import Receiver, closedPortURL, reactor
from tokengate.access.outbound import Outbound
from tokengate.access.service import AccessRequest, AccessService, Refused
from tokengate.access.webhook import MAX_BODY
from tokengate.access.webhookpolicy import WebhookPolicy
from tokengate.apps import Applications, AppSettings
from tokengate.auth import build_gate
from tokengate.config import ServerConfig
from tokengate.jsonvalue import JSONError
from tokengate.media.hub import Hub
from tokengate.metrics import Metrics
from tokengate.server import Server, buildSite
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import PLAY, PUBLISH, Outcome, StoredToken, new_token

HOOK = "http://127.0.0.1:9/hook"
PLAY_HOOK = "http://127.0.0.1:9/play"
CODE = "918273"


class Mind:
    def __init__(self, protocol: str = "rtmp") -> None:
        self.protocolName = protocol
        self.peerHost = "192.0.2.1"
        self.kicked: list[str] = []

    def kick(self, reason: str) -> None:
        self.kicked.append(reason)


class Hook(Resource):
    """
    The webhook, in memory: records each request's JSON and answers
    C{status}, or holds the request when C{status} is None.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.status: Optional[int] = 200
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[bytes] = []
        self.held: list[Any] = []

    def render_POST(self, request: Any) -> Any:
        self.paths.append(request.path)
        self.bodies.append(json.loads(request.content.read()))
        if self.status is None:
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        return b""


class InMemoryTests(SynchronousTestCase):
    """
    The policy in the access service, its HTTP in memory on a Clock.
    """

    def setUp(self) -> None:
        self.clock = clock_at()
        self.apps = Applications(None)
        self.apps.replace("LiveApp", publishTokenControlEnabled=True,
                          playTokenControlEnabled=True, webhookAuthenticateURL=HOOK,
                          webhookPlayAuthUrl=PLAY_HOOK)
        self.store = MemoryTokenStore()
        self.metrics = Metrics()
        self.gate = build_gate(self.apps, self.store, self.clock, self.metrics)
        self.hub = Hub(self.clock)
        self.hook = Hook()
        self.stub = StubTreq(self.hook)
        self.outbound = Outbound(self.clock, 3.0, MAX_BODY, 8, client=self.stub)
        self.policy = WebhookPolicy(self.outbound, self.clock, maxInFlightPerApp=2)
        self.access = AccessService(self.apps, self.gate, self.hub, policies=[self.policy])
        self.events: list[dict[str, Any]] = []
        observer: Any = self.events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def mint(self, action: str = PUBLISH, streamId: str = "s1", app: str = "LiveApp") -> str:
        t = new_token(streamId, action, NOW + 60)
        self.store.add(StoredToken.fromToken(app, t))
        return t.tokenId

    def request(self, token: Optional[str], action: str = PUBLISH, protocol: str = "rtmp",
                **kw: Any) -> AccessRequest:
        return AccessRequest(kw.pop("app", "LiveApp"), kw.pop("streamId", "s1"), action,
                             protocol, "192.0.2.1", token, **kw)

    def publish(self, token: Optional[str], **kw: Any) -> Deferred[Any]:
        return self.access.publish(self.request(token, **kw), Mind())

    def refusal(self, d: Deferred[Any]) -> Outcome:
        outcome: Outcome = self.failureResultOf(d, Refused).value.outcome
        return outcome

    def test_allowSendsAntMediaJSON(self) -> None:
        token = self.mint()
        d = self.publish(token, subscriberId="alice", subscriberCode=CODE,
                         params=[("token", token), ("x", "1")])
        self.stub.flush()
        publication = self.successResultOf(d)
        self.assertEqual(self.hook.paths, [b"/hook"])
        self.assertEqual(self.hook.bodies, [{
            "appName": "LiveApp", "name": "s1", "streamId": "s1", "mode": "live",
            "token": token, "subscriberId": "alice", "subscriberCode": CODE,
            "queryParams": "{token=%s, x=1}" % token}])
        self.assertEqual(self.store._tokens, {}, "the token was redeemed")
        publication.end()

    def test_denyKeepsToken(self) -> None:
        """
        A webhook that says no refuses before the token is redeemed: the
        same token is admitted once the webhook says yes.
        """
        token = self.mint()
        self.hook.status = 403
        d = self.publish(token)
        self.stub.flush()
        self.assertEqual(self.refusal(d), Outcome.WEBHOOK_REFUSED)
        self.assertEqual(len(self.store._tokens), 1, "the token is kept")
        self.assertEqual(self.metrics.policyRefusals.labels(
            "webhook", "webhook_refused")._value.get(), 1)
        self.hook.status = 200
        d = self.publish(token)
        self.stub.flush()
        self.successResultOf(d).end()
        self.assertEqual(self.store._tokens, {})
        for event in self.events:
            self.assertNotIn(token, formatEvent(event) + repr(event))

    def test_everyStatusButTwoHundredRefuses(self) -> None:
        token = self.mint()
        for status in (201, 204, 301, 302, 400, 401, 404, 500, 503):
            self.hook.status = status
            d = self.publish(token)
            self.stub.flush()
            self.assertEqual(self.refusal(d), Outcome.WEBHOOK_REFUSED, status)
        self.assertEqual(len(self.store._tokens), 1)

    def test_timeoutOnClock(self) -> None:
        """
        A webhook that does not answer: nothing is decided before the
        timeout, then the request is refused as unavailable, the token kept,
        nothing left in flight.
        """
        token = self.mint()
        self.hook.status = None
        d = self.publish(token)
        self.stub.flush()
        self.assertEqual(len(self.hook.held), 1)
        self.clock.advance(2.99)
        self.assertNoResult(d)
        self.assertEqual(self.policy.inFlight("LiveApp"), 1)
        self.clock.advance(0.01)
        self.assertEqual(self.refusal(d), Outcome.WEBHOOK_UNAVAILABLE)
        self.assertEqual(len(self.store._tokens), 1)
        self.assertEqual((self.policy.inFlight("LiveApp"), self.outbound.inFlight), (0, 0))
        self.assertEqual(self.metrics.policyRefusals.labels(
            "webhook", "webhook_unavailable")._value.get(), 1)

    def test_deadlineShortensTheWait(self) -> None:
        """
        A request that must be answered by a deadline (an SRT caller's
        connect timeout) is refused by then.
        """
        self.hook.status = None
        d = self.access.publish(self.request(self.mint(), protocol="srt",
                                             deadline=self.clock.seconds() + 1.0), Mind("srt"))
        self.stub.flush()
        self.clock.advance(0.99)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.assertEqual(self.refusal(d), Outcome.WEBHOOK_UNAVAILABLE)
        self.assertEqual(self.policy.inFlight("LiveApp"), 0)

    def test_perApplicationBound(self) -> None:
        """
        One application's slow webhook takes at most its share of the calls
        in flight: one more is refused at once, another application's goes
        on.
        """
        self.apps.create("Other")
        self.apps.replace("Other", webhookAuthenticateURL=HOOK)
        self.hook.status = None
        held = [self.publish(None, app="Other", streamId="s{}".format(i)) for i in range(2)]
        self.stub.flush()
        third = self.publish(None, app="Other", streamId="s3")
        self.assertEqual(self.refusal(third), Outcome.WEBHOOK_UNAVAILABLE)
        self.assertEqual(len(self.hook.bodies), 2, "the third was not sent")
        mine = self.publish(self.mint())
        self.stub.flush()
        self.assertEqual(len(self.hook.bodies), 3)
        self.clock.advance(3)
        for d in held + [mine]:
            self.assertEqual(self.refusal(d), Outcome.WEBHOOK_UNAVAILABLE)

    def test_playAsksThePlayWebhook(self) -> None:
        self.hub.publish("LiveApp", "s1", "RTMP")
        token = self.mint(PLAY)
        d = self.access.play(self.request(token, PLAY, "hls", params=[("token", token)]),
                             Mind("hls"))
        self.stub.flush()
        self.successResultOf(d).end()
        self.assertEqual(self.hook.paths, [b"/play"])
        self.assertEqual(self.hook.bodies[0]["mode"], "play")
        self.assertNotIn("subscriberId", self.hook.bodies[0])

    def test_noWebhookNoCall(self) -> None:
        self.apps.replace("LiveApp", webhookAuthenticateURL="", webhookPlayAuthUrl="")
        token = self.mint()
        self.successResultOf(self.publish(token)).end()
        self.hub.publish("LiveApp", "s1", "RTMP")
        self.successResultOf(self.access.play(self.request(self.mint(PLAY), PLAY),
                                              Mind())).end()
        self.assertEqual(self.hook.bodies, [])

    def test_onlyTheDirectionsWebhook(self) -> None:
        """
        A publish webhook alone leaves plays alone, and the other way round.
        """
        self.apps.replace("LiveApp", webhookAuthenticateURL="")
        self.successResultOf(self.publish(self.mint())).start()
        self.assertEqual(self.hook.bodies, [])
        self.hook.status = 403
        d = self.access.play(self.request(self.mint(PLAY), PLAY), Mind())
        self.stub.flush()
        self.assertEqual(self.refusal(d), Outcome.WEBHOOK_REFUSED)
        self.assertEqual(self.hook.paths, [b"/play"])

    def test_slowWebhookDoesNotHoldTheStream(self) -> None:
        """
        While one publisher waits on the webhook, another may take the
        stream; the first is then refused before its token is redeemed.
        """
        self.hook.status = None
        first = self.mint()
        d1 = self.publish(first)
        self.stub.flush()
        d2 = self.publish(self.mint())
        self.stub.flush()
        [held1, held2] = self.hook.held
        held2.setResponseCode(200)
        held2.finish()
        self.stub.flush()
        self.successResultOf(d2).start()
        held1.setResponseCode(200)
        held1.finish()
        self.stub.flush()
        self.assertEqual(self.refusal(d1), Outcome.IN_USE)
        self.assertEqual(len(self.store._tokens), 1, "the first publisher's token is kept")

    def test_badStoredURLRefuses(self) -> None:
        """
        A URL that is not one (settings refuse it; one stored by hand is
        refused at use): fail closed, nothing sent.
        """
        settings = AppSettings(webhookAuthenticateURL="ftp://x/")
        d = Deferred.fromCoroutine(self.policy.admit(self.request(None), settings))
        self.assertEqual(self.refusal(d), Outcome.WEBHOOK_UNAVAILABLE)
        self.assertEqual(self.hook.bodies, [])


class SettingsTests(SynchronousTestCase):
    def test_urlsChecked(self) -> None:
        for name in ("webhookAuthenticateURL", "webhookPlayAuthUrl"):
            for bad in ("ftp://x/", "not a url", "http://", "/hook", "http://x:99999/",
                        "http://x/" + "a" * 3000):
                with self.assertRaises(JSONError) as caught:
                    AppSettings.fromJSON({name: bad})
                self.assertIn(name, str(caught.exception))
                self.assertNotIn("ftp://x", str(caught.exception))
            settings, ignored = AppSettings.fromJSON({name: "https://example.com/a?key=1"})
            self.assertEqual((getattr(settings, name), ignored), ("https://example.com/a?key=1", []))
            self.assertEqual(getattr(AppSettings.fromJSON({name: ""})[0], name), "")
            self.assertEqual(AppSettings().asJSON()[name], "")

    def test_composition(self) -> None:
        """
        The composition root registers the webhook policy last, with the
        configured timeout.
        """
        server = Server.inMemory(Clock(), config=ServerConfig(webhookTimeout=7.0))
        policy = server.access._policies[-1]
        self.assertIsInstance(policy, WebhookPolicy)
        assert isinstance(policy, WebhookPolicy)
        self.assertEqual(policy._outbound.timeout, 7.0)


class ReceiverTests(TestCase):
    """
    The policy of a whole server graph against a real HTTP receiver.
    """

    timeout = 30

    def setUp(self) -> None:
        self.receiver = Receiver().start(self)
        self.server = Server.inMemory(reactor, config=ServerConfig(webhookTimeout=1.0))
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True,
                                 playTokenControlEnabled=True,
                                 webhookAuthenticateURL=self.receiver.url("/publish"),
                                 webhookPlayAuthUrl=self.receiver.url("/play"))

    def mint(self, action: str) -> str:
        t = new_token("s1", action, int(time.time()) + 600)
        self.server.store.add(StoredToken.fromToken("LiveApp", t))
        return t.tokenId

    async def ask(self, action: str, token: str) -> Optional[Outcome]:
        request = AccessRequest("LiveApp", "s1", action, "rtmp" if action == PUBLISH else "hls",
                                "127.0.0.1", token, subscriberId="bob",
                                params=[("token", token), ("a", "b c")])
        try:
            if action == PUBLISH:
                publication = await self.server.access.publish(request, Mind())
                publication.start()
                self.addCleanup(publication.end)
            else:
                viewing = await self.server.access.play(request, Mind("hls"))
                self.addCleanup(viewing.end)
        except Refused as e:
            return e.outcome
        return None

    def lastJSON(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.receiver.received[-1].body)
        return body

    async def test_allow(self) -> None:
        self.receiver.answers["/publish"] = (200, {}, b"")
        self.receiver.answers["/play"] = (200, {}, b"ok")
        token = self.mint(PUBLISH)
        self.assertIsNone(await self.ask(PUBLISH, token))
        self.assertEqual(self.lastJSON(), {
            "appName": "LiveApp", "name": "s1", "streamId": "s1", "mode": "live",
            "token": token, "subscriberId": "bob", "queryParams": "{token=%s, a=b c}" % token})
        self.assertEqual(self.receiver.received[-1].headers["content-type"],
                         ["application/json"])
        token = self.mint(PLAY)
        self.assertIsNone(await self.ask(PLAY, token))
        self.assertEqual(self.receiver.received[-1].path, "/play")
        self.assertEqual(self.lastJSON()["mode"], "play")
        self.assertEqual(self.lastJSON()["token"], token)

    async def test_deny(self) -> None:
        self.receiver.answers["/publish"] = (403, {}, b"no")
        token = self.mint(PUBLISH)
        self.assertEqual(await self.ask(PUBLISH, token), Outcome.WEBHOOK_REFUSED)
        self.receiver.answers["/publish"] = (200, {}, b"")
        self.assertIsNone(await self.ask(PUBLISH, token), "the refused token was kept")
        self.assertEqual(len(self.receiver.received), 2)

    async def test_slow(self) -> None:
        """
        A receiver that answers 200 after the timeout: refused at the
        timeout, the token kept, the connection closed.
        """
        def late(request: Any) -> Any:
            def answer() -> None:
                request.setResponseCode(200)
                request.finish()
            call = reactor.callLater(1.5, answer)
            # the client's timeout closes the connection first
            request.notifyFinish().addBoth(lambda _: call.active() and call.cancel())
            return NOT_DONE_YET

        self.receiver.answers["/play"] = late
        self.server.hub.publish("LiveApp", "s1", "RTMP")
        token = self.mint(PLAY)
        start = reactor.seconds()
        self.assertEqual(await self.ask(PLAY, token), Outcome.WEBHOOK_UNAVAILABLE)
        self.assertTrue(0.9 <= reactor.seconds() - start < 1.5, reactor.seconds() - start)
        for _ in range(100):
            if not self.receiver.connections():
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.receiver.connections(), 0)
        self.receiver.answers["/play"] = (200, {}, b"")
        self.assertIsNone(await self.ask(PLAY, token), "the token was kept")

    async def test_down(self) -> None:
        self.server.apps.replace("LiveApp", webhookAuthenticateURL=await closedPortURL("/p"))
        token = self.mint(PUBLISH)
        self.assertEqual(await self.ask(PUBLISH, token), Outcome.WEBHOOK_UNAVAILABLE)
        self.assertEqual(self.server.metrics.policyRefusals.labels(
            "webhook", "webhook_unavailable")._value.get(), 1)


class HTTPPlaybackTests(SynchronousTestCase):
    """
    HTTP playback asks the play webhook once per viewing session, with or
    without play token control: without a session, nothing is served.
    """

    def setUp(self) -> None:
        self.clock = clock_at()
        self.hook = Hook()
        self.stub = StubTreq(self.hook)
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(),
                             clock=self.clock,
                             webhookOutbound=Outbound(self.clock, 3.0, MAX_BODY, 8,
                                                      client=self.stub))
        self.server.apps.replace("LiveApp", webhookPlayAuthUrl=PLAY_HOOK)
        self.http = StubTreq(buildSite(self.server).resource)
        stream = self.server.hub.publish("LiveApp", "s1", "RTMP")
        self.addCleanup(stream.end)

    def get(self, path: str) -> Any:
        async def run() -> Any:
            r = await self.http.get("http://127.0.0.1:5080/LiveApp/streams/" + path)
            return r.code, await r.content()

        d = Deferred.fromCoroutine(run())
        for _ in range(20):
            if d.called:
                break
            self.http.flush()
            self.stub.flush()
        return self.successResultOf(d)

    def viewers(self) -> int:
        return self.server.hub.viewers("LiveApp", "s1").get("hls", 0)

    def test_withoutTokenControl(self) -> None:
        self.hook.status = 403
        code, body = self.get("s1.m3u8?x=1")
        self.assertEqual(code, 403)
        [body] = self.hook.bodies
        self.assertEqual({k: body[k] for k in ("appName", "name", "streamId", "mode")},
                         {"appName": "LiveApp", "name": "s1", "streamId": "s1", "mode": "play"})
        self.assertNotIn("token", body)
        self.assertEqual(self.viewers(), 0)
        # a segment without a session is not served either
        self.assertEqual(self.get("s1/video/1.m4s")[0], 403)
        self.assertEqual(len(self.hook.bodies), 1)
        self.hook.status = 200
        self.get("s1.m3u8")
        self.assertEqual((len(self.hook.bodies), self.viewers()), (2, 1))

    def test_withTokenControl(self) -> None:
        self.server.apps.replace("LiveApp", playTokenControlEnabled=True,
                                 webhookPlayAuthUrl=PLAY_HOOK)
        t = new_token("s1", PLAY, NOW + 60)
        self.server.store.add(StoredToken.fromToken("LiveApp", t))
        self.hook.status = 403
        self.assertEqual(self.get("s1.m3u8?token=" + t.tokenId)[0], 403)
        self.assertEqual(self.hook.bodies[0]["token"], t.tokenId)
        self.hook.status = 200
        self.get("s1.m3u8?token=" + t.tokenId)
        self.assertEqual(self.viewers(), 1, "the refused token was kept")

    def test_noWebhookNoAdmission(self) -> None:
        self.server.apps.replace("LiveApp", webhookPlayAuthUrl="")
        self.get("s1.m3u8")
        self.assertEqual((self.hook.bodies, self.viewers()), ([], 0))
