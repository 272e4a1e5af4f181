"""
RFC 9725 (WHIP) and WHEP conformance of C{/{App}/whip/{streamId}} and
C{/{App}/whep/{streamId}}, in memory: the real site on a loopback port,
treq as the client, a test-double media engine (signalling only; real
media is in tests/interop/test_whip.py).  Status codes, headers, Location
and DELETE, PATCH and its ETag rules, CORS, every refusal (401/403/404/409/
415/400/429/503) with the token kept where the access service keeps it, and
sessions ended by kicks, revocation, application deletion and timeouts,
with nothing left behind.
"""

from __future__ import annotations

import re
import time
from typing import Any, Optional, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from tokengate.apps import Applications
from tokengate.config import ServerConfig
from tokengate.server import Server, buildSite
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import Outcome, StoredToken, new_token
from tokengate.webrtc import whip
from tokengate.webrtc.whipwire import MAX_OFFER

from tests.fixtures import POLICY_OUTCOMES, RecordingPolicy
from tests.helpers import http_client
from tests.whipoffers import CANDIDATE, fragment, offer

LOCATION = re.compile(r"^/LiveApp/(whip|whep)/([A-Za-z0-9_.-]+)/([A-Za-z0-9_-]{32})$")


class FakePeer:
    def __init__(self, engine: "FakeEngine", events: Any, kind: str) -> None:
        self.engine = engine
        self.events = events
        self.kind = kind
        self.candidates: list[Any] = []
        self.closed = False

    def answer(self, sdp: str) -> Deferred:
        if self.engine.failWith is not None:
            return fail(self.engine.failWith)
        if self.engine.connect:
            reactor.callLater(0, self.events.connected)
        if self.engine.hang:
            return Deferred()
        return succeed("v=0\r\nfake-answer to " + self.kind + "\r\n")

    def addCandidate(self, candidate: str, mid: Any, label: Any) -> Deferred:
        self.candidates.append((candidate, mid, label))
        return succeed(None)

    def close(self) -> Deferred:
        self.closed = True
        return succeed(None)


class FakeEngine:
    available = True
    reason = ""

    def __init__(self) -> None:
        self.peers: list[FakePeer] = []
        self.failWith: Optional[Exception] = None
        self.connect = True
        self.hang = False

    def publisher(self, stream: Any, events: Any) -> FakePeer:
        self.peers.append(FakePeer(self, events, "publish"))
        return self.peers[-1]

    def player(self, stream: Any, events: Any) -> FakePeer:
        self.peers.append(FakePeer(self, events, "play"))
        return self.peers[-1]


class Slots(Exception):
    definition = "highResourceUsage"


class WhipBase(TestCase):
    timeout = 30
    extraPolicies: Sequence[Any] = ()
    perAddress = 256

    def setUp(self) -> None:
        config = ServerConfig(iceServers=["stun:127.0.0.1:3478",
                                          "turn:127.0.0.1:3478?transport=udp"],
                              turnSecret="s3cret", maxConnectionsPerAddress=self.perAddress)
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=reactor,
                             config=config, extraPolicies=self.extraPolicies)
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True,
                                 playTokenControlEnabled=True)
        self.engine = FakeEngine()
        self.site = buildSite(self.server, engine=self.engine)
        self.endpoints: whip.WhipEndpoints = self.site.resource._whip
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = "http://127.0.0.1:{}".format(self.port.getHost().port)
        self.http = http_client(self)
        self.addCleanup(self._end)

    async def _end(self) -> None:
        for s in list(self.endpoints.sessions.values()):
            await self.endpoints.end(s, "test over")
        for s in self.server.hub.liveStreams():
            s.end()

    def mint(self, streamId: str = "s1", type: str = "publish") -> str:
        t = new_token(streamId, type, int(time.time()) + 600)
        self.server.store.add(StoredToken.fromToken("LiveApp", t))
        return t.tokenId

    async def post(self, kind: str = "whip", streamId: str = "s1", token: Optional[str] = None,
                   body: Optional[str] = None, contentType: str = "application/sdp",
                   query: str = "", app: str = "LiveApp",
                   headers: Optional[dict[str, str]] = None) -> tuple[Any, bytes]:
        h = {"content-type": contentType}
        if token is not None:
            h["authorization"] = "Bearer " + token
        h.update(headers or {})
        if body is None:
            body = offer("sendonly" if kind == "whip" else "recvonly")
        r = await self.http.post("{}/{}/{}/{}{}".format(self.base, app, kind, streamId, query),
                                 data=body.encode("utf-8"), headers=h)
        return r, await r.content()

    async def call(self, method: str, path: str, body: bytes = b"",
                   headers: Optional[dict[str, str]] = None) -> tuple[Any, bytes]:
        r = await self.http.request(method, self.base + path, data=body or None,
                                    headers=headers or {})
        return r, await r.content()

    def header(self, r: Any, name: str) -> Optional[str]:
        values = r.headers.getRawHeaders(name)
        return values[0].decode() if values and isinstance(values[0], bytes) else (
            values[0] if values else None)

    def refusals(self, kind: str, action: str, reason: str) -> float:
        return self.server.metrics.refusals.labels(kind, action, reason)._value.get()

    async def publish(self, streamId: str = "s1") -> str:
        r, body = await self.post(streamId=streamId, token=self.mint(streamId))
        self.assertEqual(r.code, 201, body)
        location = self.header(r, "location")
        assert location is not None
        return location

    def assertNothingLeft(self, streamId: str = "s1") -> None:
        self.assertEqual(self.endpoints.sessions, {})
        self.assertFalse(self.server.hub.isTaken("LiveApp", streamId))
        self.assertEqual(self.server.gate.registry.grants("LiveApp"), [])

    def assertCors(self, r: Any) -> None:
        self.assertEqual(self.header(r, "access-control-allow-origin"), "*")
        exposed = self.header(r, "access-control-expose-headers") or ""
        for name in ("location", "etag", "link", "accept-patch"):
            self.assertIn(name, exposed)


class Created(WhipBase):
    async def test_created(self) -> None:
        """
        A WHIP POST with a Bearer token: 201 with the answer, an
        unguessable Location, an ETag, Accept-Patch, a Link per STUN/TURN
        URI (TURN with time-limited credentials), CORS; the stream is live
        and the session is a whip grant.
        """
        token = self.mint()
        r, body = await self.post(token=token)
        self.assertEqual(r.code, 201, body)
        self.assertEqual(body, b"v=0\r\nfake-answer to publish\r\n")
        self.assertEqual(self.header(r, "content-type"), "application/sdp")
        m = LOCATION.match(self.header(r, "location") or "")
        self.assertIsNotNone(m, self.header(r, "location"))
        assert m is not None
        self.assertEqual(m.group(1, 2), ("whip", "s1"))
        self.assertIn(m.group(3), self.endpoints.sessions)
        etag = self.header(r, "etag") or ""
        self.assertRegex(etag, r'^"[0-9a-f]{24}"$')
        self.assertEqual(self.header(r, "accept-patch"), "application/trickle-ice-sdpfrag")
        links = r.headers.getRawHeaders("link")
        self.assertEqual(links[0], '<stun:127.0.0.1:3478>; rel="ice-server"')
        self.assertRegex(links[1], r'^<turn:127.0.0.1:3478\?transport=udp>; rel="ice-server"; '
                                   r'username="[0-9]+:tokengate"; credential="[A-Za-z0-9+/=]+"; '
                                   r'credential-type="password"$')
        self.assertCors(r)
        self.assertTrue(self.server.hub.isLive("LiveApp", "s1"))
        self.assertEqual(self.server.hub.get("LiveApp", "s1").publishType, "WebRTC")
        [grant] = self.server.gate.registry.grants("LiveApp", "s1")
        self.assertEqual((grant.protocol, grant.action, grant.kind),
                         ("whip", "publish", "onetime"))
        self.assertEqual(self.server.metrics.grants.labels("whip", "publish", "onetime")
                         ._value.get(), 1)
        self.assertEqual(self.endpoints.count("whip"), 1)
        # the token was redeemed: spent
        r, body = await self.post(streamId="s2", token=token)
        self.assertEqual(r.code, 401)

    async def test_tokenInQuery(self) -> None:
        r, body = await self.post(query="?token=" + self.mint())
        self.assertEqual(r.code, 201, body)

    async def test_bearerAnyCase(self) -> None:
        r, body = await self.post(headers={"authorization": "bEaReR " + self.mint()})
        self.assertEqual(r.code, 201, body)

    async def test_delete(self) -> None:
        """
        DELETE on the Location ends the session: 200, peer closed, stream
        no longer live, grant gone; then 404.
        """
        location = await self.publish()
        r, _ = await self.call("DELETE", location)
        self.assertEqual(r.code, 200)
        self.assertCors(r)
        self.assertTrue(self.engine.peers[0].closed)
        self.assertNothingLeft()
        r, body = await self.call("DELETE", location)
        self.assertEqual(r.code, 404, body)

    async def test_sessionPathMustMatch(self) -> None:
        location = await self.publish()
        sessionId = location.rsplit("/", 1)[1]
        for path in ("/LiveApp/whip/s2/" + sessionId, "/LiveApp/whep/s1/" + sessionId,
                     "/Other/whip/s1/" + sessionId, "/LiveApp/whip/s1/" + "A" * 32,
                     "/LiveApp/whip/s1/../s1"):
            r, _ = await self.call("DELETE", path)
            self.assertEqual(r.code, 404, path)
        self.assertEqual(len(self.endpoints.sessions), 1)

    async def test_options(self) -> None:
        """
        OPTIONS (a CORS preflight) on the endpoint and on a session.
        """
        r, _ = await self.call("OPTIONS", "/LiveApp/whip/s1", headers={
            "origin": "http://example.org", "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type"})
        self.assertEqual(r.code, 204)
        self.assertCors(r)
        allowed = self.header(r, "access-control-allow-headers") or ""
        for name in ("authorization", "content-type", "if-match"):
            self.assertIn(name, allowed)
        self.assertIn("POST", self.header(r, "access-control-allow-methods") or "")
        self.assertEqual(self.header(r, "accept-post"), "application/sdp")
        self.assertIsNone(r.headers.getRawHeaders("link"))  # no TURN credentials unasked
        location = await self.publish()
        r, _ = await self.call("OPTIONS", location)
        self.assertEqual(r.code, 204)
        methods = self.header(r, "access-control-allow-methods") or ""
        self.assertIn("PATCH", methods)
        self.assertIn("DELETE", methods)
        self.assertEqual(self.header(r, "accept-patch"), "application/trickle-ice-sdpfrag")

    async def test_methods(self) -> None:
        r, body = await self.call("GET", "/LiveApp/whip/s1")
        self.assertEqual(r.code, 405)
        self.assertEqual(self.header(r, "allow"), "OPTIONS, POST")
        location = await self.publish()
        r, _ = await self.call("POST", location, b"x", {"content-type": "application/sdp"})
        self.assertEqual(r.code, 405)
        self.assertEqual(self.header(r, "allow"), "OPTIONS, PATCH, DELETE")
        r, _ = await self.call("GET", location)
        self.assertEqual(r.code, 405)
        r, _ = await self.call("DELETE", "/LiveApp/whip/s1/a/b")
        self.assertEqual(r.code, 404)


class Refusals(WhipBase):
    async def assertRefused(self, code: int, r: Any, body: bytes, reason: str) -> None:
        self.assertEqual(r.code, code, body)
        self.assertEqual(self.header(r, "content-type"), "text/plain; charset=utf-8")
        self.assertTrue(body.strip(), "no reason in the body")
        self.assertCors(r)
        if code == 401:
            self.assertTrue((self.header(r, "www-authenticate") or "").startswith("Bearer"))

    async def test_tokens(self) -> None:
        """
        Missing, unknown, spent, another type's and another stream's
        tokens: 401 with WWW-Authenticate: Bearer, counted, nothing left.
        """
        spent = self.mint()
        location = await self.post(token=spent)
        await self.call("DELETE", self.header(location[0], "location") or "")
        cases = [(None, "missing"), ("nope", "unknown"), (spent, "unknown"),
                 (self.mint("s1", "play"), "wrong_type"), (self.mint("s2"), "wrong_stream")]
        for token, reason in cases:
            r, body = await self.post(token=token)
            await self.assertRefused(401, r, body, reason)
            self.assertEqual(self.header(r, "www-authenticate"), 'Bearer realm="tokengate"' + (
                ', error="invalid_token"' if token is not None else ""))
        for reason, count in (("missing", 1), ("unknown", 2), ("wrong_type", 1),
                              ("wrong_stream", 1)):
            self.assertEqual(self.refusals("whip", "publish", reason), count, reason)
        self.assertNothingLeft()
        # and for WHEP
        await self.publish()
        r, body = await self.post("whep", token=self.mint("s1", "publish"))
        await self.assertRefused(401, r, body, "wrong_type")
        self.assertEqual(self.refusals("whep", "play", "wrong_type"), 1)
        self.assertEqual(self.endpoints.count("whep"), 0)

    async def test_badAuthorization(self) -> None:
        token = self.mint()
        r, body = await self.post(headers={"authorization": "Basic " + token})
        await self.assertRefused(401, r, body, "invalid")
        r, body = await self.post(token=token)
        self.assertEqual(r.code, 201, body)

    async def test_inUse(self) -> None:
        """
        409 while the stream is live; the token is kept.
        """
        location = await self.publish()
        token = self.mint()
        r, body = await self.post(token=token)
        await self.assertRefused(409, r, body, "in_use")
        self.assertEqual(self.refusals("whip", "publish", "in_use"), 1)
        await self.call("DELETE", location)
        r, body = await self.post(token=token)
        self.assertEqual(r.code, 201, body)

    async def test_contentType(self) -> None:
        token = self.mint()
        r, body = await self.post(token=token, contentType="application/json")
        await self.assertRefused(415, r, body, "content_type")
        self.assertEqual(self.refusals("whip", "publish", "content_type"), 1)
        r, body = await self.post(token=token)
        self.assertEqual(r.code, 201, body)

    async def test_badOffer(self) -> None:
        """
        An offer the server cannot answer: 400 with the reason before the
        token is looked at (kept); one the engine fails to answer after
        admission: 400, the session and the claim are gone.
        """
        token = self.mint()
        for sdp in ("hello", offer("recvonly"), offer(video="AV1", audio="G722")):
            r, body = await self.post(token=token, body=sdp)
            await self.assertRefused(400, r, body, "offer")
        self.assertIn(b"Bad offer", body)
        r, body = await self.post(token=token, body="v=0\r\n" + "a=x" * MAX_OFFER)
        self.assertEqual(r.code, 413, body)
        self.assertEqual(self.engine.peers, [])
        self.engine.failWith = ValueError("None is not in list")
        r, body = await self.post(token=token)
        await self.assertRefused(400, r, body, "offer")
        self.assertTrue(self.engine.peers[0].closed)
        self.assertNothingLeft()

    async def test_noTranscodingSlot(self) -> None:
        self.engine.failWith = Slots()
        r, body = await self.post(token=self.mint())
        await self.assertRefused(503, r, body, "highResourceUsage")
        self.assertEqual(self.refusals("whip", "publish", "highResourceUsage"), 1)
        self.assertNothingLeft()

    async def test_answerDeadline(self) -> None:
        clock = Clock()
        self.endpoints.clock = clock
        self.engine.hang = True
        d = Deferred.fromCoroutine(self.post(token=self.mint()))
        while not self.engine.peers:
            await deferLater(reactor, 0.01)
        clock.advance(whip.ANSWER_TIMEOUT)
        r, body = await d
        await self.assertRefused(503, r, body, "answer_timeout")
        self.assertNothingLeft()

    async def test_unknownApp(self) -> None:
        r, body = await self.post(app="Nope", token=self.mint())
        await self.assertRefused(404, r, body, "no_app")
        self.assertEqual(self.refusals("whip", "publish", "no_app"), 1)
        r, body = await self.post("whep", app="Nope", token="x")
        await self.assertRefused(404, r, body, "no_app")

    async def test_invalidStreamId(self) -> None:
        token = self.mint()
        r, body = await self.post(streamId=".hidden", token=token)
        await self.assertRefused(400, r, body, "invalid")
        self.assertEqual(self.refusals("whip", "publish", "invalid"), 1)

    async def test_disabled(self) -> None:
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True,
                                 webRTCEnabled=False)
        token = self.mint()
        r, body = await self.post(token=token)
        await self.assertRefused(403, r, body, "disabled")
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True,
                                 webRTCEnabled=True)
        r, body = await self.post(token=token)
        self.assertEqual(r.code, 201, body)

    async def test_noMedia(self) -> None:
        self.engine.available = False
        self.engine.reason = "needs the asyncio reactor"
        token = self.mint()
        r, body = await self.post(token=token)
        await self.assertRefused(503, r, body, "no_media")
        self.assertIn(b"asyncio", body)
        self.engine.available = True
        r, body = await self.post(token=token)
        self.assertEqual(r.code, 201, body)

    async def test_whepNotLive(self) -> None:
        token = self.mint("s1", "play")
        r, body = await self.post("whep", token=token)
        await self.assertRefused(404, r, body, "not_live")
        await self.publish()
        r, body = await self.post("whep", token=token)
        self.assertEqual(r.code, 201, body)

    async def test_whepOffer(self) -> None:
        await self.publish()
        token = self.mint("s1", "play")
        r, body = await self.post("whep", token=token, body=offer("recvonly", video="VP8"))
        await self.assertRefused(400, r, body, "offer")
        r, body = await self.post("whep", token=token, body=offer("sendonly"))
        await self.assertRefused(400, r, body, "offer")
        r, body = await self.post("whep", token=token)
        self.assertEqual(r.code, 201, body)


class Policies(WhipBase):
    def setUp(self) -> None:
        self.policy = RecordingPolicy()
        self.extraPolicies = [self.policy]
        super().setUp()

    async def test_refusals(self) -> None:
        """
        Every security policy's refusal: 403 (503 when the webhook does
        not answer), counted as whip/whep, the token kept; the request's
        subscriber fields and other parameters reach the policy.
        """
        token = self.mint()
        for outcome in POLICY_OUTCOMES:
            self.policy.outcome = outcome
            r, body = await self.post(token=token,
                                      query="?subscriberId=sub-1&subscriberCode=123456&x=1")
            expected = 503 if outcome is Outcome.WEBHOOK_UNAVAILABLE else 403
            self.assertEqual(r.code, expected, (outcome, body))
            self.assertEqual(body.decode().strip(), whip.refusalStatus(outcome)[1])
            self.assertEqual(self.refusals("whip", "publish", outcome.value), 1, outcome)
        asked = self.policy.asked[-1]
        self.assertEqual((asked.protocol, asked.subscriberId, asked.subscriberCode, asked.params),
                         ("whip", "sub-1", "123456", (("x", "1"),)))
        self.policy.outcome = None
        r, body = await self.post(token=token)
        self.assertEqual(r.code, 201, body)
        playToken = self.mint("s1", "play")
        self.policy.outcome = Outcome.BLOCKED
        r, body = await self.post("whep", token=playToken)
        self.assertEqual((r.code, body.decode().strip()), (403, "Subscriber is blocked"))
        self.assertEqual(self.refusals("whep", "play", "blocked"), 1)
        self.policy.outcome = None
        r, body = await self.post("whep", token=playToken)
        self.assertEqual(r.code, 201, body)
        self.assertEqual(self.policy.asked[-1].protocol, "whep")


class Patch(WhipBase):
    async def patch(self, location: str, body: str,
                    headers: Optional[dict[str, str]] = None) -> tuple[Any, bytes]:
        h = {"content-type": "application/trickle-ice-sdpfrag"}
        h.update(headers or {})
        return await self.call("PATCH", location, body.encode(), h)

    async def test_trickle(self) -> None:
        """
        Candidates in a fragment reach the peer with their mid (204, no
        ETag: RFC 9725 4.3.1); If-Match is required (428 without it), C{*}
        or the ETag match, another tag is 412; a new ufrag or password (an
        ICE restart) is 422.
        """
        r, _ = await self.post(token=self.mint())
        location, etag = self.header(r, "location") or "", self.header(r, "etag") or ""
        peer = self.engine.peers[0]
        r, body = await self.call("PATCH", location, fragment().encode(),
                                  {"content-type": "application/trickle-ice-sdpfrag"})
        self.assertEqual(r.code, 428, body)
        self.assertEqual(peer.candidates, [])
        r, body = await self.patch(location, fragment(), {"if-match": etag})
        self.assertEqual(r.code, 204, body)
        self.assertIsNone(self.header(r, "etag"))
        self.assertCors(r)
        self.assertEqual(peer.candidates, [(CANDIDATE, "0", 0)])
        for match in ("*", '"other", ' + etag, etag):
            r, body = await self.patch(location, fragment(), {"if-match": match})
            self.assertEqual(r.code, 204, (match, body))
        self.assertEqual(len(peer.candidates), 4)
        r, body = await self.patch(location, fragment(), {"if-match": '"other"'})
        self.assertEqual(r.code, 412, body)
        r, body = await self.patch(location, fragment(ufrag="nEwU"), {"if-match": "*"})
        self.assertEqual(r.code, 422, body)
        r, body = await self.patch(location, fragment(pwd="n" * 24), {"if-match": etag})
        self.assertEqual(r.code, 422, body)
        r, body = await self.patch(location, "a=candidate:1 1 udp\r\n", {"if-match": etag})
        self.assertEqual(r.code, 400, body)
        r, body = await self.call("PATCH", location, fragment().encode(),
                                  {"content-type": "application/sdp", "if-match": etag})
        self.assertEqual(r.code, 415, body)
        self.assertEqual(len(peer.candidates), 4)
        # the session is still there
        r, _ = await self.call("DELETE", location)
        self.assertEqual(r.code, 200)
        r, body = await self.patch(location, fragment())
        self.assertEqual(r.code, 404, body)

class Ending(WhipBase):
    async def test_revokeTokens(self) -> None:
        """
        Revoking the stream's tokens ends its WHIP and WHEP sessions: the
        peer connections close, the resources are gone.
        """
        location = await self.publish()
        r, body = await self.post("whep", token=self.mint("s1", "play"))
        self.assertEqual(r.code, 201, body)
        viewer = self.header(r, "location") or ""
        ended = await self.server.revoker.revokeTokens("LiveApp", "s1")
        self.assertEqual(ended, 2)
        self.assertTrue(all(p.closed for p in self.engine.peers))
        self.assertNothingLeft()
        for path in (location, viewer):
            r, _ = await self.call("DELETE", path)
            self.assertEqual(r.code, 404)

    async def test_revokeSessions(self) -> None:
        await self.publish()
        r, body = await self.post("whep", token=self.mint("s1", "play"))
        self.assertEqual(r.code, 201, body)
        await self.server.revoker.revokeSessions("LiveApp", "s1")
        self.assertEqual(self.endpoints.count("whep"), 0)
        self.assertTrue(self.engine.peers[1].closed)

    async def test_appDeleted(self) -> None:
        await self.publish()
        self.server.apps.delete("LiveApp")
        self.assertTrue(self.engine.peers[0].closed)
        self.assertEqual(self.endpoints.sessions, {})

    async def test_peerEnded(self) -> None:
        """
        The peer connection failing ends the session and the publication.
        """
        location = await self.publish()
        self.engine.peers[0].events.ended("failed")
        self.assertNothingLeft()
        r, _ = await self.call("DELETE", location)
        self.assertEqual(r.code, 404)

    async def test_connectedStays(self) -> None:
        clock = Clock()
        self.endpoints.clock = clock
        await self.publish()
        await deferLater(reactor, 0.01)  # the fake peer connects
        clock.advance(whip.CONNECT_TIMEOUT * 2)
        self.assertEqual(self.endpoints.count("whip"), 1)

    async def test_gauges(self) -> None:
        await self.publish()
        text = self.server.metrics.render().decode()
        self.assertIn("tokengate_whip_sessions 1.0", text)
        self.assertIn("tokengate_whep_sessions 0.0", text)


class ClientGone(WhipBase):
    def setUp(self) -> None:
        self.policy = RecordingPolicy()
        self.extraPolicies = [self.policy]
        super().setUp()

    async def test_goneDuringAdmission(self) -> None:
        """
        A client that leaves while its publish is being admitted (a policy
        waits): once admitted, the session ends at once, the claim and what
        the policy held are released, no peer connection is made.
        """
        from twisted.internet.protocol import ClientCreator, Protocol

        self.policy.pending = Deferred()
        body = offer().encode()
        proto = await ClientCreator(reactor, Protocol).connectTCP(
            "127.0.0.1", self.port.getHost().port)
        proto.transport.write(
            b"POST /LiveApp/whip/s1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
            b"Authorization: Bearer " + self.mint().encode() +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        while not self.policy.asked:
            await deferLater(reactor, 0.01)
        proto.transport.loseConnection()
        await deferLater(reactor, 0.05)
        pending, self.policy.pending = self.policy.pending, None
        pending.callback(None)
        await deferLater(reactor, 0.05)
        self.assertEqual(self.engine.peers, [])
        self.assertNothingLeft()
        self.assertEqual(self.policy.released, 1)

    async def test_releasedOnDelete(self) -> None:
        location = await self.publish()
        self.assertEqual(self.policy.released, 0)
        await self.call("DELETE", location)
        self.assertEqual(self.policy.released, 1)
