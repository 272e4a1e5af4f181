"""
The REST API's protection, as Ant Media's C{IPFilter} and C{JWTFilter}
(both mapped on C{/rest/*}): each filter that is on must pass.  In memory
through StubTreq; the JWTs of an application with a C{jwksURL} are RS256,
verified with keys served by StubTreq and by a real HTTP server on
127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any, Optional

import jwt as pyjwt
from attrs import evolve
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.test.requesthelper import DummyRequest

from tests.fixtures import restAPI
from tests.helpers import NOW, FromPeer, clock_at, http_client, json_body
from tests.httpreceiver import Receiver, closedPortURL, reactor
from tokengate.access.jwks import JWKSSources
from tokengate.access.outbound import newHTTPClient
from tokengate.auth import Refused, StreamCredentials
from tokengate.config import ServerConfig
from tokengate.server import Server
from tokengate.tokens import Outcome
from tokengate.web.rest import RestAPI

BASE = "http://127.0.0.1:5080"
APP_SECRET = "a" * 32
SERVER_SECRET = "m" * 32
INSIDE = "127.0.0.1"
OUTSIDE = "203.0.113.9"
APP_PATHS = ("/LiveApp/rest/v2/broadcasts/s1/tokens/list/0/10",
             "/LiveApp/rest/v2/broadcasts/s1/token?expireDate={}&type=play".format(NOW + 60))
SERVER_PATHS = ("/rest/v2/applications", "/rest/v2/applications/settings/LiveApp", "/metrics",
                # an unknown application and a path no route takes get the
                # server's protection: nothing is revealed to outsiders
                "/Nope/rest/v2/broadcasts/s1/tokens/list/0/10", "/nothing/here")

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def publicJWK(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = kid
    return jwk


def rs256(key: rsa.RSAPrivateKey, kid: str, exp: float, **claims: Any) -> str:
    return pyjwt.encode(dict(claims, exp=int(exp)), key, algorithm="RS256",
                        headers={"kid": kid})


class JWKSResource(Resource):
    """
    A JWKS URL served in memory: the key set, or an outage.
    """

    isLeaf = True

    def __init__(self, *keys: dict[str, Any]) -> None:
        super().__init__()
        self.keys = list(keys)
        self.down = False
        self.requests = 0

    def render_GET(self, request: Any) -> bytes:
        self.requests += 1
        if self.down:
            request.setResponseCode(503)
            return b"down"
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"keys": self.keys}).encode()


class Harness:
    """
    A server on a Clock whose jwksURLs all answer from one in-memory
    L{JWKSResource} (key C{k1}), its REST API, and calls from any address.
    """

    def setUpHarness(self) -> None:
        self.clock = clock_at()
        self.jwks = JWKSResource(publicJWK(KEY, "k1"))
        self.build()

    def build(self, config: Optional[ServerConfig] = None) -> None:
        keys = JWKSSources(self.clock, client=StubTreq(self.jwks))
        self.server = Server.inMemory(clock=self.clock, config=config or ServerConfig(),
                                      jwks=keys)
        self.resource = restAPI(self.server).resource()

    async def call(self, path: str, host: str = INSIDE, token: Optional[str] = None
                   ) -> tuple[int, Any]:
        treq = StubTreq(FromPeer(self.resource, host))
        headers = {"Authorization": "Bearer " + token} if token is not None else {}
        r = await treq.get(BASE + path, headers=headers)
        body = await r.content()
        try:
            return r.code, json.loads(body)
        except ValueError:
            return r.code, body

    def refusals(self, reason: str) -> float:
        value = self.server.metrics.registry.get_sample_value(
            "tokengate_rest_refusals_total", {"reason": reason})
        return value or 0.0


class ProtectionBase(Harness, TestCase):
    def setUp(self) -> None:
        self.setUpHarness()


def hs256(secret: str, exp: float = NOW + 600) -> str:
    return pyjwt.encode({"exp": exp}, secret, algorithm="HS256")


class MatrixTests(ProtectionBase):
    """
    Every combination of the filters' switches, the caller's address and
    its JWT, on the application's calls and on the server's.
    """

    TOKENS = {"valid": lambda secret: hs256(secret),
              "invalid": lambda secret: hs256("x" * 32),
              "expired": lambda secret: hs256(secret, NOW - 1),
              "missing": lambda secret: None}

    async def test_appMatrix(self) -> None:
        checked = 0
        for ipFilter, jwtFilter, host, jwt in itertools.product(
                (True, False), (True, False), (INSIDE, OUTSIDE), sorted(self.TOKENS)):
            settings = evolve(self.server.apps.get("LiveApp"), ipFilterEnabled=ipFilter,
                              jwtControlEnabled=jwtFilter, jwtSecretKey=APP_SECRET)
            if not ipFilter and not jwtFilter:
                # refused by the settings (nothing would protect the API) ...
                self.assertRaises(Exception, self.server.apps.update, "LiveApp", settings)
                # ... and were such settings stored anyway, nothing is let in
                self.server.apps._apps["LiveApp"] = settings
            else:
                self.server.apps.update("LiveApp", settings)
            token = self.TOKENS[jwt](APP_SECRET)
            ipPasses = not ipFilter or host == INSIDE
            jwtPasses = not jwtFilter or jwt == "valid"
            allowed = ipPasses and jwtPasses and (ipFilter or jwtFilter)
            case = (ipFilter, jwtFilter, host, jwt)
            for path in APP_PATHS:
                code, body = await self.call(path, host, token)
                if allowed:
                    self.assertEqual(code, 200, case)
                else:
                    self.assertEqual(code, 403, case)
                    self.assertEqual(body["message"], "Not allowed IP" if not ipPasses
                                     or not (ipFilter or jwtFilter)
                                     else "Invalid App JWT Token", case)
                checked += 1
        self.assertEqual(checked, 2 * 2 * 2 * 4 * len(APP_PATHS))

    async def test_serverMatrix(self) -> None:
        checked = 0
        for jwtFilter, host, jwt in itertools.product((True, False), (INSIDE, OUTSIDE),
                                                       sorted(self.TOKENS)):
            self.build(ServerConfig(restJwtSecretKey=SERVER_SECRET if jwtFilter else ""))
            token = self.TOKENS[jwt](SERVER_SECRET)
            ipPasses = host == INSIDE
            allowed = ipPasses and (not jwtFilter or jwt == "valid")
            for path in SERVER_PATHS:
                code, body = await self.call(path, host, token)
                case = (jwtFilter, host, jwt, path)
                if allowed:
                    self.assertIn(code, (200, 404), case)
                    if path.startswith("/Nope"):
                        self.assertEqual(body["message"], "Application not found")
                else:
                    self.assertEqual(code, 403, case)
                    self.assertEqual(body["message"], "Not allowed IP" if not ipPasses
                                     else "Invalid App JWT Token", case)
                checked += 1
        self.assertEqual(checked, 2 * 2 * 4 * len(SERVER_PATHS))

    async def test_appRulesNotServerRules(self) -> None:
        """
        An application's calls follow its own filters, not the server's,
        and the server's calls follow the server's: an application that
        opens its API to a network opens only its own calls.
        """
        self.build(ServerConfig(restJwtSecretKey=SERVER_SECRET))
        self.server.apps.replace("LiveApp", remoteAllowedCIDR="203.0.113.0/24")
        self.assertEqual((await self.call(APP_PATHS[0], OUTSIDE))[0], 200)
        self.assertEqual((await self.call(APP_PATHS[0], INSIDE))[0], 403)
        self.assertEqual((await self.call("/rest/v2/applications", OUTSIDE,
                                          hs256(SERVER_SECRET)))[0], 403)
        self.assertEqual((await self.call("/rest/v2/applications", INSIDE,
                                          hs256(SERVER_SECRET)))[0], 200)

    async def test_encodedPathsKeepTheirScope(self) -> None:
        """
        The scope is found as the router finds the route: a percent-encoded
        path reaches the same route under the same protection.
        """
        self.server.apps.replace("LiveApp", jwtControlEnabled=True, jwtSecretKey=APP_SECRET)
        for path in ("/LiveApp/%72est/v2/broadcasts/s1/tokens/list/0/10",
                     "/%4CiveApp/rest/v2/broadcasts/s1/tokens/list/0/10"):
            code, body = await self.call(path)
            self.assertEqual((code, body["message"]), (403, "Invalid App JWT Token"), path)
            code, _ = await self.call(path, token=hs256(APP_SECRET))
            self.assertEqual(code, 200, path)

    async def test_refusalsCounted(self) -> None:
        self.server.apps.replace("LiveApp", jwtControlEnabled=True, jwtSecretKey=APP_SECRET)
        await self.call(APP_PATHS[0], OUTSIDE, hs256(APP_SECRET))
        await self.call(APP_PATHS[0], INSIDE)
        await self.call(APP_PATHS[0], INSIDE, hs256("x" * 32))
        self.assertEqual((self.refusals("ip"), self.refusals("invalid_jwt")), (1, 2))

    def test_everyApplicationRouteNamesItsApplication(self) -> None:
        """
        The guard finds an application's protection by the route's
        C{appName}: every route under C{/<...>/} must call it that, or it
        would get the server's protection instead of the application's.
        """
        rules = list(RestAPI.app.url_map.iter_rules())
        perApp = [r for r in rules if r.rule.startswith("/<")]
        self.assertGreater(len(perApp), 5)
        for rule in perApp:
            self.assertTrue(rule.rule.startswith("/<string:appName>/rest/"), rule.rule)


class SettingsTests(ProtectionBase):
    PATH = "/rest/v2/applications/settings/LiveApp"

    async def post(self, body: Any) -> tuple[int, Any]:
        r = await StubTreq(self.resource).post(BASE + self.PATH, data=json.dumps(body).encode())
        return r.code, await json_body(r)

    async def test_ipFilterOffNeedsTheJwtFilter(self) -> None:
        code, body = await self.post({"ipFilterEnabled": False})
        self.assertEqual((code, body["success"]), (200, False))
        self.assertIn("ipFilterEnabled can be false only with jwtControlEnabled", body["message"])
        self.assertTrue(self.server.apps.get("LiveApp").ipFilterEnabled)
        code, body = await self.post({"ipFilterEnabled": False, "jwtControlEnabled": True,
                                      "jwtSecretKey": APP_SECRET})
        self.assertEqual((code, body["success"]), (200, True))
        code, settings = await self.call(self.PATH)
        self.assertIs(settings["ipFilterEnabled"], False)
        self.assertIs(settings["jwtControlEnabled"], True)

    async def test_jwksURL(self) -> None:
        code, settings = await self.call(self.PATH)
        self.assertEqual((settings["jwksURL"], settings["ipFilterEnabled"]), ("", True))
        for bad in ("ftp://example.com/jwks", "not a url", "http://", "https://a b/",
                    "http://example.com:99999/"):
            code, body = await self.post({"jwksURL": bad})
            self.assertEqual((code, body["success"]), (400, False), bad)
            self.assertEqual(body["message"], "jwksURL must be an http or https URL")
        self.assertEqual(self.server.apps.get("LiveApp").jwksURL, "")
        # with a jwksURL, neither JWT filter needs its HS256 secret
        code, body = await self.post({"jwksURL": "https://idp.example.com/jwks.json",
                                      "jwtControlEnabled": True,
                                      "publishJwtControlEnabled": True})
        self.assertEqual((code, body["success"]), (200, True))
        code, settings = await self.call(self.PATH)
        self.assertEqual(settings["jwksURL"], "https://idp.example.com/jwks.json")
        code, body = await self.post({"jwtControlEnabled": True})
        self.assertEqual((code, body["success"]), (200, False))
        self.assertIn("jwtSecretKey must be at least 32 characters (or set jwksURL)",
                      body["message"])

    async def test_noHS256MintWithJwks(self) -> None:
        """
        An application whose JWTs are verified with a jwksURL's keys does
        not mint HS256 stream JWTs it would refuse.
        """
        self.server.apps.replace("LiveApp", jwksURL="https://idp.example.com/jwks.json",
                                 jwtStreamSecretKey=APP_SECRET)
        code, body = await self.call(
            "/LiveApp/rest/v2/broadcasts/s1/jwt-token?expireDate={}&type=play".format(NOW + 60))
        self.assertEqual(code, 400)
        self.assertIn("jwksURL", body["message"])


class JWKSRestTests(ProtectionBase):
    """
    REST JWTs verified with the keys of the application's jwksURL (served
    in memory by StubTreq).
    """

    def setUp(self) -> None:
        super().setUp()
        self.server.apps.replace("LiveApp", jwtControlEnabled=True,
                                 jwksURL="http://jwks.example/keys")

    async def test_rs256(self) -> None:
        good = rs256(KEY, "k1", NOW + 600)
        self.assertEqual((await self.call(APP_PATHS[0], token=good))[0], 200)
        for token in (rs256(OTHER_KEY, "k1", NOW + 600),  # the wrong key
                      rs256(KEY, "k2", NOW + 600),  # an unknown kid
                      rs256(KEY, "k1", NOW - 60),  # expired
                      pyjwt.encode({"exp": NOW + 600}, APP_SECRET, algorithm="HS256",
                                   headers={"kid": "k1"}),  # not RS256
                      "garbage", None):
            code, body = await self.call(APP_PATHS[0], token=token)
            self.assertEqual((code, body["message"]), (403, "Invalid App JWT Token"), token)
        # the address filter still applies
        code, body = await self.call(APP_PATHS[0], OUTSIDE, good)
        self.assertEqual((code, body["message"]), (403, "Not allowed IP"))
        # the key set was fetched once (and again for the unknown kid)
        self.assertLessEqual(self.jwks.requests, 2)

    async def test_outageFailsClosed(self) -> None:
        self.jwks.down = True
        code, body = await self.call(APP_PATHS[0], token=rs256(KEY, "k1", NOW + 600))
        self.assertEqual((code, body["message"]),
                         (503, "The JWT keys (jwksURL) are unavailable, try again later"))
        self.assertEqual(self.refusals("jwks_unavailable"), 1)

    async def test_lifetimeBound(self) -> None:
        far = rs256(KEY, "k1", NOW + 30 * 86400)
        self.assertEqual((await self.call(APP_PATHS[0], token=far))[0], 403)

    async def test_oneSourcePerURL(self) -> None:
        self.server.apps.create("Other")
        self.server.apps.replace("Other", jwtControlEnabled=True,
                                 jwksURL="http://jwks.example/keys")
        token = rs256(KEY, "k1", NOW + 600)
        for app in ("LiveApp", "Other", "LiveApp"):
            code, _ = await self.call(
                "/{}/rest/v2/broadcasts/s1/tokens/list/0/10".format(app), token=token)
            self.assertEqual(code, 200)
        self.assertEqual((self.jwks.requests, len(self.server.jwks)), (1, 1))


class JWKSStreamTests(ProtectionBase):
    """
    Stream JWTs (publishJwtControlEnabled/playJwtControlEnabled) verified
    with the keys of the application's jwksURL, through the gate.
    """

    def setUp(self) -> None:
        super().setUp()
        self.server.apps.replace("LiveApp", publishJwtControlEnabled=True,
                                 jwksURL="http://jwks.example/keys")

    async def login(self, token: Optional[str], streamId: str = "s1",
                    action: str = "publish", roomId: Optional[str] = None,
                    peer: str = "10.0.0.1") -> Any:
        creds = StreamCredentials("LiveApp", streamId, action, token, peer, "rtmp", roomId)
        return await self.server.gate.login(creds)

    async def refused(self, token: Optional[str], **kw: Any) -> Outcome:
        try:
            grant = await self.login(token, **kw)
        except Refused as e:
            return e.outcome
        grant.logout()
        self.fail("admitted")

    async def test_admitted(self) -> None:
        grant = await self.login(rs256(KEY, "k1", NOW + 600, streamId="s1", type="publish"))
        self.assertEqual((grant.kind, grant.streamId), ("jwt", "s1"))
        grant.logout()
        grant = await self.login(rs256(KEY, "k1", NOW + 600, streamId="other", type="publish",
                                       roomId="r1"), roomId="r1")
        grant.logout()

    async def test_refused(self) -> None:
        claims = {"streamId": "s1", "type": "publish"}
        for n, (token, outcome) in enumerate((
                (rs256(KEY, "k1", NOW + 600, streamId="s2", type="publish"), Outcome.WRONG_STREAM),
                (rs256(KEY, "k1", NOW + 600, streamId="s1", type="play"), Outcome.WRONG_TYPE),
                (rs256(KEY, "k1", NOW - 60, **claims), Outcome.EXPIRED),
                (rs256(OTHER_KEY, "k1", NOW + 600, **claims), Outcome.INVALID),
                (rs256(KEY, "nope", NOW + 600, **claims), Outcome.INVALID),
                (pyjwt.encode(dict(claims, exp=NOW + 600), APP_SECRET, algorithm="HS256"),
                 Outcome.INVALID),
                (pyjwt.encode(claims, KEY, algorithm="RS256", headers={"kid": "k1"}),
                 Outcome.INVALID),
                (None, Outcome.MISSING))):
            # one address each: the throttle would make a guesser wait
            peer = "10.0.1.{}".format(n)
            self.assertEqual(await self.refused(token, peer=peer), outcome, token)

    async def test_outageIsUnavailable(self) -> None:
        self.jwks.down = True
        token = rs256(KEY, "k1", NOW + 600, streamId="s1", type="publish")
        self.assertEqual(await self.refused(token), Outcome.UNAVAILABLE)
        text = self.server.metrics.render().decode()
        self.assertIn('reason="unavailable"', text)
        # an outage is not taken for guessing
        self.assertEqual(self.server.gate._throttle.score("10.0.0.1"), 0)

    async def test_noKeySourcesFailsClosed(self) -> None:
        from tokengate.auth import JwtTokenChecker

        checker = JwtTokenChecker(self.server.apps, self.clock)
        creds = StreamCredentials("LiveApp", "s1", "publish",
                                  rs256(KEY, "k1", NOW + 600, streamId="s1", type="publish"))
        e = await self.assertFailure(checker.requestAvatarId(creds), Refused)
        self.assertEqual(e.outcome, Outcome.UNAVAILABLE)


class RealJWKSServerTests(TestCase):
    """
    The REST API's JWT filter against a JWKS served by a real HTTP server
    on 127.0.0.1, fetched over TCP (the composition root's L{JWKSSources}
    on the real reactor).
    """

    timeout = 30

    def setUp(self) -> None:
        self.receiver = Receiver().start(self)
        self.receiver.answers["/jwks"] = (
            200, {"Content-Type": "application/json"},
            json.dumps({"keys": [publicJWK(KEY, "k1")]}).encode())
        self.server = Server.inMemory(clock=reactor, jwks=JWKSSources(reactor))
        port = reactor.listenTCP(0, Site(restAPI(self.server).resource()),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = "http://127.0.0.1:{}".format(port.getHost().port)
        self.client = http_client(self)

    async def call(self, token: Optional[str]) -> tuple[int, Any]:
        headers = {"Authorization": "Bearer " + token} if token else {}
        r = await self.client.get(self.base + APP_PATHS[0], headers=headers)
        return r.code, await json_body(r)

    async def test_acceptedAndRefused(self) -> None:
        self.server.apps.replace("LiveApp", jwtControlEnabled=True,
                                 jwksURL=self.receiver.url("/jwks"))
        now = time.time()
        self.assertEqual((await self.call(rs256(KEY, "k1", now + 600)))[0], 200)
        self.assertEqual((await self.call(rs256(OTHER_KEY, "k1", now + 600)))[0], 403)
        self.assertEqual((await self.call(rs256(KEY, "k9", now + 600)))[0], 403)
        # fetched once and cached (an unknown kid refetches at most every 30 s)
        self.assertEqual(len([r for r in self.receiver.received if r.path == "/jwks"]), 1)

    async def test_serverDown(self) -> None:
        url = await closedPortURL("/jwks")
        self.server.apps.replace("LiveApp", jwtControlEnabled=True, jwksURL=url)
        code, body = await self.call(rs256(KEY, "k1", time.time() + 600))
        self.assertEqual((code, body["message"]),
                         (503, "The JWT keys (jwksURL) are unavailable, try again later"))


class _Hanging(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        request.notifyFinish().addErrback(lambda _: None)
        return NOT_DONE_YET


class PendingCheckTests(TestCase):
    """
    A REST call whose JWT waits for the key set: answered when the fetch
    ends (503 when it times out); a client that left meanwhile is not
    written to.
    """

    def setUp(self) -> None:
        self.clock = clock_at()
        keys = JWKSSources(self.clock, client=StubTreq(_Hanging()))
        self.server = Server.inMemory(clock=self.clock, jwks=keys)
        self.server.apps.replace("LiveApp", jwtControlEnabled=True,
                                 jwksURL="http://jwks.example/keys")
        self.guard = restAPI(self.server).resource()

    def request(self) -> DummyRequest:
        request = DummyRequest(APP_PATHS[0].lstrip("/").split("/"))
        request.postpath = [p.encode() for p in request.postpath]
        request.client = IPv4Address("TCP", INSIDE, 40000)
        request.requestHeaders.setRawHeaders(
            b"authorization", [rs256(KEY, "k1", NOW + 600).encode()])
        return request

    def test_answeredWhenTheFetchEnds(self) -> None:
        request = self.request()
        self.assertIs(self.guard.render(request), NOT_DONE_YET)
        self.assertEqual((request.written, request.finished), ([], 0))
        self.clock.advance(4)  # the fetch's 3 s timeout
        self.assertEqual((request.responseCode, request.finished), (503, 1))
        self.assertIn(b"jwksURL", b"".join(request.written))

    def test_clientLeft(self) -> None:
        request = self.request()
        self.guard.render(request)
        request.processingFailed(Failure(ConnectionDone()))
        self.clock.advance(4)
        self.assertEqual((request.written, request.finished, request.responseCode),
                         ([], 0, None))
