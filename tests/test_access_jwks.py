"""
Tests for L{tokengate.access.jwks}: RS256 JWTs against keys served by a
real HTTP server on 127.0.0.1 (RSA keys made here with C{cryptography}).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, Optional

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.httpreceiver import Receiver, closedPortURL, reactor
from tokengate.access.jwks import (
    MAX_JWKS_BODY,
    IJWTKeySource,
    JWKSKeySource,
    JWKSSources,
    JWTRefused,
    parseJWKS,
    verify,
)
from tokengate.access.outbound import Outbound, newHTTPClient

KEY_A = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_B = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SMALL = rsa.generate_private_key(public_exponent=65537, key_size=1024)
NOW = 1_700_000_000


def publicJWK(key: rsa.RSAPrivateKey, kid: Optional[str], **extra: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def jwks(*keys: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps({"keys": list(keys)}).encode()


def sign(key: rsa.RSAPrivateKey, kid: Optional[str], **claims: Any) -> str:
    claims.setdefault("exp", NOW + 600)
    headers = {"kid": kid} if kid is not None else {}
    return pyjwt.encode(claims, key, algorithm="RS256", headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def handMade(header: dict[str, Any], claims: dict[str, Any], secret: Optional[bytes]) -> str:
    """
    A JWT built by hand (PyJWT refuses to make the forgeries tested here).
    """
    signingInput = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = b"" if secret is None else hmac.new(secret, signingInput.encode(),
                                                    hashlib.sha256).digest()
    return signingInput + "." + b64(signature)


class ParseTests(SynchronousTestCase):
    def test_usableKeysOnly(self) -> None:
        ec_key = ec.generate_private_key(ec.SECP256R1())
        from jwt.algorithms import ECAlgorithm

        private = json.loads(RSAAlgorithm.to_jwk(KEY_B))
        private["kid"] = "private"
        doc = {"keys": [
            publicJWK(KEY_A, "a", alg="RS256", use="sig"),
            publicJWK(KEY_A, "a", alg="RS256"),  # a duplicate kid: the first stays
            publicJWK(KEY_B, "enc", use="enc"),
            publicJWK(KEY_B, "rs512", alg="RS512"),
            publicJWK(SMALL, "small"),
            private,
            dict(json.loads(ECAlgorithm.to_jwk(ec_key.public_key())), kid="ec"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            "not a key",
        ]}
        keys = parseJWKS(json.dumps(doc).encode())
        self.assertEqual(list(keys), ["a"])

    def test_refused(self) -> None:
        for body in [b"", b"[]", b'{"keys":{}}', b'{"keys":[]}', b"\xff",
                     b'{"keys":[[[[[[[[]]]]]]]]}', json.dumps({"keys": [
                         publicJWK(SMALL, "small")]}).encode()]:
            self.assertRaises(ValueError, parseJWKS, body)


class SourceTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.receiver = Receiver().start(self)
        self.receiver.answers["/jwks"] = jwks(publicJWK(KEY_A, "a"))
        self.clock = Clock()
        self.clock.advance(NOW)

    def source(self, url: Optional[str] = None) -> JWKSKeySource:
        outbound = Outbound(self.clock, 3.0, MAX_JWKS_BODY, client=newHTTPClient(reactor))
        return JWKSKeySource(url or self.receiver.url("/jwks"), self.clock, ttl=300,
                             minRefetchInterval=30, grace=600, outbound=outbound)

    async def refused(self, source: JWKSKeySource, token: object, reason: str) -> None:
        with self.assertRaises(JWTRefused) as e:
            await verify(source, token)
        self.assertEqual(e.exception.reason, reason)

    async def test_valid(self) -> None:
        source = self.source()
        self.assertTrue(verifyObject(IJWTKeySource, source))
        claims = await verify(source, sign(KEY_A, "a", streamId="s1", type="publish"))
        self.assertEqual((claims["streamId"], claims["type"]), ("s1", "publish"))
        # cached: a second token needs no fetch
        await verify(source, sign(KEY_A, "a"))
        self.assertEqual(source.fetches, 1)
        self.assertEqual([r.path for r in self.receiver.received], ["/jwks"])

    async def test_wrongKey(self) -> None:
        await self.refused(self.source(), sign(KEY_B, "a"), "signature")

    async def test_unknownKidThenRotation(self) -> None:
        source = self.source()
        await verify(source, sign(KEY_A, "a"))
        self.receiver.answers["/jwks"] = jwks(publicJWK(KEY_B, "b"))
        # an unknown kid within the refetch interval: refused without a fetch
        self.clock.advance(29)
        await self.refused(source, sign(KEY_B, "b"), "unknown_key")
        self.assertEqual(source.fetches, 1)
        # after it: one fetch finds the new key; the retired one is gone
        self.clock.advance(1)
        await verify(source, sign(KEY_B, "b"))
        self.assertEqual(source.fetches, 2)
        await self.refused(source, sign(KEY_A, "a"), "unknown_key")
        self.assertEqual(source.fetches, 2)

    async def test_refreshAfterTTL(self) -> None:
        source = self.source()
        await verify(source, sign(KEY_A, "a", exp=NOW + 10_000))
        self.clock.advance(299)
        await verify(source, sign(KEY_A, "a", exp=NOW + 10_000))
        self.assertEqual(source.fetches, 1)
        self.clock.advance(1)
        await verify(source, sign(KEY_A, "a", exp=NOW + 10_000))
        self.assertEqual(source.fetches, 2)

    async def test_downFromTheStart(self) -> None:
        source = self.source(await closedPortURL("/jwks"))
        await self.refused(source, sign(KEY_A, "a"), "jwks_unavailable")
        # a second token within the interval does not fetch again
        await self.refused(source, sign(KEY_A, "a"), "jwks_unavailable")
        self.assertEqual(source.fetches, 1)

    async def test_outageAfterGrace(self) -> None:
        """
        The key set outlives a failing refresh for the grace period, then
        everything is refused until a fetch succeeds.
        """
        source = self.source()
        token = sign(KEY_A, "a", exp=NOW + 100_000)
        await verify(source, token)
        self.receiver.answers["/jwks"] = (500, {}, b"down")
        self.clock.advance(300)
        await verify(source, token)  # the refresh failed; the stale set is used
        self.assertEqual(source.fetches, 2)
        self.clock.advance(599)
        await verify(source, token)
        self.clock.advance(1)
        await self.refused(source, token, "jwks_unavailable")
        self.receiver.answers["/jwks"] = jwks(publicJWK(KEY_A, "a"))
        self.clock.advance(30)
        await verify(source, token)

    async def test_badDocumentIsAnOutage(self) -> None:
        self.receiver.answers["/jwks"] = (200, {}, b'{"keys": [}')
        await self.refused(self.source(), sign(KEY_A, "a"), "jwks_unavailable")
        self.receiver.answers["/jwks"] = (200, {}, b"x" * (MAX_JWKS_BODY + 1))
        await self.refused(self.source(), sign(KEY_A, "a"), "jwks_unavailable")

    async def test_algorithmConfusion(self) -> None:
        """
        C{alg: none} and HS256 signed with the public key (PEM or the
        JWK's modulus) are refused before any key is used.
        """
        source = self.source()
        claims = {"exp": NOW + 600, "streamId": "s1"}
        pem = KEY_A.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        for token in [
            handMade({"alg": "none", "kid": "a"}, claims, None),
            handMade({"alg": "None", "kid": "a"}, claims, None),
            handMade({"alg": "HS256", "kid": "a"}, claims, pem),
            handMade({"alg": "HS256", "kid": "a", "typ": "JWT"}, claims,
                     json.dumps(publicJWK(KEY_A, "a")).encode()),
            handMade({"kid": "a"}, claims, pem),
            sign(KEY_A, "a").replace(sign(KEY_A, "a").split(".")[0],
                                     b64(b'{"alg":"RS512","kid":"a"}')),
        ]:
            await self.refused(source, token, "algorithm")
        self.assertEqual(source.fetches, 0)

    async def test_claims(self) -> None:
        source = self.source()
        unsigned = pyjwt.encode({"streamId": "s"}, KEY_A, algorithm="RS256",
                                headers={"kid": "a"})
        await self.refused(source, unsigned, "missing_exp")
        await self.refused(source, sign(KEY_A, "a", exp=NOW - 31), "expired")
        await verify(source, sign(KEY_A, "a", exp=NOW - 29))  # within the leeway
        await self.refused(source, sign(KEY_A, "a", exp="tomorrow"), "claims")
        await self.refused(source, sign(KEY_A, "a", nbf=NOW + 60), "not_yet_valid")
        with self.assertRaises(JWTRefused) as e:
            await verify(source, sign(KEY_A, "a", aud="other"), audience="tokengate")
        self.assertEqual(e.exception.reason, "claims")
        await verify(source, sign(KEY_A, "a", aud="tokengate"), audience="tokengate")

    async def test_malformed(self) -> None:
        source = self.source()
        for token in ["", "a.b", "a.b.c", "..", None, 42, b"x.y.z"]:
            await self.refused(source, token, "malformed")
        await self.refused(source, "a" * 9000, "too_large")
        good = sign(KEY_A, "a")
        await self.refused(source, good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
                           "signature")

    async def test_noKid(self) -> None:
        source = self.source()
        await verify(source, sign(KEY_A, None))
        self.receiver.answers["/jwks"] = jwks(publicJWK(KEY_A, "a"), publicJWK(KEY_B, "b"))
        self.clock.advance(300)
        await self.refused(source, sign(KEY_A, None), "unknown_key")

    async def test_oneFetchForConcurrentTokens(self) -> None:
        source = self.source()
        first = verify(source, sign(KEY_A, "a"))
        second = verify(source, sign(KEY_A, "a"))
        await first
        await second
        self.assertEqual(source.fetches, 1)
        self.assertEqual(len(self.receiver.received), 1)


class SourcesTests(SynchronousTestCase):
    """
    L{JWKSSources}: one key source per URL, shared, at most C{maxSources}.
    """

    def test_onePerURL(self) -> None:
        sources = JWKSSources(Clock(), client=newHTTPClient(reactor))
        a = sources.sourceFor("http://127.0.0.1:1/a")
        self.assertIs(sources.sourceFor("http://127.0.0.1:1/a"), a)
        self.assertIsNot(sources.sourceFor("http://127.0.0.1:1/b"), a)
        self.assertEqual(len(sources), 2)
        self.assertEqual(a.url, "http://127.0.0.1:1/a")

    def test_bounded(self) -> None:
        sources = JWKSSources(Clock(), maxSources=3, client=newHTTPClient(reactor))
        first = sources.sourceFor("http://127.0.0.1:1/0")
        for n in range(1, 3):
            sources.sourceFor("http://127.0.0.1:1/{}".format(n))
        self.assertIs(sources.sourceFor("http://127.0.0.1:1/0"), first)  # now the newest
        for n in range(3, 10):
            sources.sourceFor("http://127.0.0.1:1/{}".format(n))
        self.assertEqual(len(sources), 3)
        self.assertIsNot(sources.sourceFor("http://127.0.0.1:1/0"), first)

    def test_badURL(self) -> None:
        sources = JWKSSources(Clock(), client=newHTTPClient(reactor))
        self.assertRaises(ValueError, sources.sourceFor, "file:///etc/passwd")
        self.assertEqual(len(sources), 0)
