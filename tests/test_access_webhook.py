"""
Tests for L{tokengate.access.webhook} against a real HTTP receiver on
127.0.0.1: allow, deny, slow, down, too large, busy, and the JSON sent.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.httpreceiver import Receiver, chunked, closedPortURL, hang, hangInBody, reactor
from tokengate.access.outbound import Outbound, checkURL, newHTTPClient
from tokengate.access.webhook import (
    DEFAULT_TIMEOUT,
    MAX_BODY,
    AuthorizationWebhook,
    Verdict,
    WebhookRequest,
    fromSettings,
    javaMapText,
)

TOKEN = "tok-SECRET-4711"
CODE = "918273"

REQUEST = WebhookRequest(
    appName="LiveApp", streamId="stream1", mode="live", token=TOKEN, subscriberId="alice",
    subscriberCode=CODE, metaData="m", queryParams=[("token", TOKEN), ("x", "1")])


class BodyTests(SynchronousTestCase):
    def test_antMediaFields(self) -> None:
        self.assertEqual(REQUEST.toJSON(), {
            "appName": "LiveApp", "name": "stream1", "streamId": "stream1", "mode": "live",
            "token": TOKEN, "subscriberId": "alice", "subscriberCode": CODE, "metaData": "m",
            "queryParams": "{token=%s, x=1}" % TOKEN,
        })

    def test_nullsOmitted(self) -> None:
        self.assertEqual(WebhookRequest("LiveApp", "s", "play").toJSON(),
                         {"appName": "LiveApp", "name": "s", "streamId": "s", "mode": "play"})

    def test_javaMapText(self) -> None:
        self.assertEqual(javaMapText([]), "{}")
        self.assertEqual(javaMapText([("a", "1"), ("b", "2"), ("a", "3")]), "{a=3, b=2}")

    def test_secretsNotInRepr(self) -> None:
        self.assertNotIn(TOKEN, repr(REQUEST))
        self.assertNotIn(CODE, repr(REQUEST))

    def test_url(self) -> None:
        for good in ["http://127.0.0.1:8080/hook", "https://example.com/a?key=1"]:
            self.assertEqual(checkURL(good), good)
        for bad in ["", "ftp://x/", "http://", "/relative", "http://a b/", "http://x:99999/",
                    "http://x/\n", "http://\u00e9.com/", "http://x/" + "a" * 3000, None]:
            self.assertRaises(ValueError, checkURL, bad)
        self.assertIsNone(fromSettings("", reactor))
        self.assertRaises(ValueError, fromSettings, "file:///etc/passwd", reactor)

    def test_timeoutBounded(self) -> None:
        self.assertRaises(ValueError, Outbound, reactor, 0, 10)
        self.assertRaises(ValueError, Outbound, reactor, 61, 10)


class ReceiverTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.receiver = Receiver().start(self)
        self.events: list[dict[str, Any]] = []
        observer: Any = self.events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def webhook(self, path: str, **kw: Any) -> AuthorizationWebhook:
        return AuthorizationWebhook(self.receiver.url(path), reactor, **kw)

    def assertNoSecretLogged(self) -> None:
        for event in self.events:
            text = formatEvent(event) + repr(event)
            self.assertNotIn(TOKEN, text)
            self.assertNotIn(CODE, text)

    async def test_allow(self) -> None:
        self.receiver.answers["/hook"] = (200, {}, b"")
        outcome = await self.webhook("/hook").authorize(REQUEST)
        self.assertEqual((outcome.verdict, outcome.status, outcome.allowed),
                         (Verdict.ALLOWED, 200, True))
        [sent] = self.receiver.received
        self.assertEqual((sent.method, sent.path), ("POST", "/hook"))
        self.assertEqual(sent.headers["content-type"], ["application/json"])
        self.assertEqual(json.loads(sent.body), REQUEST.toJSON())

    async def test_deny(self) -> None:
        self.receiver.answers["/hook"] = (403, {}, b"no")
        outcome = await self.webhook("/hook").authorize(REQUEST)
        self.assertEqual((outcome.verdict, outcome.status, outcome.allowed),
                         (Verdict.DENIED, 403, False))
        self.assertTrue(any("webhook refused" in formatEvent(e) for e in self.events))
        self.assertNoSecretLogged()

    async def test_onlyTwoHundredAllows(self) -> None:
        self.receiver.answers["/204"] = (204, {}, b"")
        self.receiver.answers["/302"] = (302, {"Location": self.receiver.url("/ok")}, b"")
        self.receiver.answers["/ok"] = (200, {}, b"")
        self.receiver.answers["/500"] = (500, {}, b"")
        for path, status in [("/204", 204), ("/302", 302), ("/500", 500)]:
            outcome = await self.webhook(path).authorize(REQUEST)
            self.assertEqual((outcome.verdict, outcome.status), (Verdict.DENIED, status))
        # the redirect was not followed
        self.assertEqual([r.path for r in self.receiver.received], ["/204", "/302", "/500"])

    async def test_slowRealTimeout(self) -> None:
        self.receiver.answers["/slow"] = hang
        start = reactor.seconds()
        outcome = await self.webhook("/slow", timeout=0.3).authorize(REQUEST)
        self.assertEqual((outcome.verdict, outcome.allowed), (Verdict.TIMEOUT, False))
        self.assertLess(reactor.seconds() - start, 5)
        self.assertNoSecretLogged()

    async def test_slowBody(self) -> None:
        """
        A receiver that sends 200 and then stalls in the body: the timeout
        still refuses, and the connection is closed (the receiver's cleanup
        would otherwise find it open).
        """
        self.receiver.answers["/slow"] = hangInBody
        outbound = Outbound(reactor, 0.3, MAX_BODY)
        webhook = AuthorizationWebhook(self.receiver.url("/slow"), reactor, outbound=outbound)
        outcome = await webhook.authorize(REQUEST)
        self.assertEqual(outcome.verdict, Verdict.TIMEOUT)
        for _ in range(100):
            if not self.receiver.connections():
                break
            await _sleep(0.01)
        self.assertEqual(self.receiver.connections(), 0)

    async def test_slowOnAClock(self) -> None:
        """
        The default timeout, on a Clock: nothing is decided before 3 s, a
        refusal at 3 s, and the request's connection is closed.
        """
        self.receiver.answers["/slow"] = hang
        clock = Clock()
        outbound = Outbound(clock, DEFAULT_TIMEOUT, MAX_BODY, client=newHTTPClient(reactor))
        webhook = AuthorizationWebhook(self.receiver.url("/slow"), reactor, outbound=outbound)
        d = webhook.authorize(REQUEST)
        for _ in range(500):
            if self.receiver.received:
                break
            await _sleep(0.01)
        self.assertEqual(len(self.receiver.received), 1)
        clock.advance(DEFAULT_TIMEOUT - 0.01)
        self.assertNoResult(d)
        clock.advance(0.01)
        outcome = self.successResultOf(d)
        self.assertEqual(outcome.verdict, Verdict.TIMEOUT)
        self.assertEqual(outbound.inFlight, 0)

    async def test_down(self) -> None:
        url = await closedPortURL("/hook")
        outcome = await AuthorizationWebhook(url, reactor).authorize(REQUEST)
        self.assertEqual((outcome.verdict, outcome.allowed), (Verdict.UNREACHABLE, False))
        self.assertNoSecretLogged()

    async def test_bodyTooLarge(self) -> None:
        self.receiver.answers["/big"] = (200, {}, b"x" * (MAX_BODY + 1))
        self.receiver.answers["/chunked"] = chunked(MAX_BODY + 8192)
        for path in ["/big", "/chunked"]:
            outcome = await self.webhook(path).authorize(REQUEST)
            self.assertEqual(outcome.verdict, Verdict.TOO_LARGE, path)

    async def test_busy(self) -> None:
        self.receiver.answers["/slow"] = hang
        webhook = self.webhook("/slow", timeout=0.5, maxInFlight=1)
        first = webhook.authorize(REQUEST)
        second = await webhook.authorize(REQUEST)
        self.assertEqual(second.verdict, Verdict.BUSY)
        self.assertEqual((await first).verdict, Verdict.TIMEOUT)


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)
