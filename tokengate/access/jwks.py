# -*- test-case-name: tests.test_access_jwks -*-
"""
RS256 JWTs verified with keys from a JWKS URL (Ant Media's C{jwksURL}).

Ant Media (C{filter/JWTFilter.java}) fetches the key set at every REST
call (C{UrlJwkProvider} without a cache), takes the key named by the
token's C{kid} and checks only the RS256 signature: no C{exp} is required
and an expired token passes.  tokengate:

  - B{requires C{exp}} and checks it (and C{nbf} when present) on its own
    clock, with a small leeway; C{aud} and C{iss} are checked when the
    caller names them;
  - accepts B{only RS256}: the header's C{alg} must be C{RS256} before any
    key is looked at, so C{alg: none} and the HS256-with-the-public-key
    confusion are refused whatever the library would do; keys must be
    C{kty: RSA} of at least 2048 bits, with C{use} C{sig} and C{alg}
    C{RS256} when they say;
  - B{caches} the key set for C{ttl} seconds and refreshes it when the
    time is up; a token naming an unknown C{kid} makes it fetch again
    (key rotation), at most once per C{minRefetchInterval}, and
    concurrent verifications share one fetch;
  - B{fails closed on an outage}: with no key set ever fetched, every
    token is refused (C{jwks_unavailable}); when a refresh fails, the last
    key set stays usable for C{grace} seconds after its expiry, then is
    dropped and every token is refused until a fetch succeeds;
  - reads the key set through L{tokengate.jsonvalue.readJSON}, at most
    L{MAX_JWKS_BODY} bytes and L{MAX_KEYS} keys, over the bounded requests
    of L{tokengate.access.outbound} (a timeout for the whole exchange, no
    redirects).

A token without C{kid} is verified with the set's only key when it has
exactly one (as Ant Media's provider does), and refused otherwise.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Protocol

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import RSAAlgorithm
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer

from tokengate.access.outbound import Outbound, OutboundError, checkURL
from tokengate.jsonvalue import JSONError, readJSON
from tokengate.logsafe import Logger

#: the longest JWT accepted, characters
MAX_TOKEN = 8192
#: the longest key set read, bytes
MAX_JWKS_BODY = 256 * 1024
#: the most keys kept from one set
MAX_KEYS = 64
#: the smallest RSA modulus accepted, bits
MIN_RSA_BITS = 2048
#: the longest C{kid}
MAX_KID = 256
#: the most key sources (distinct C{jwksURL}s) kept at once
MAX_SOURCES = 64

log = Logger()


class JWTRefused(Exception):
    """
    A JWT that is not accepted.

    @ivar reason: a metrics label: C{too_large}, C{malformed},
        C{algorithm}, C{unknown_key}, C{jwks_unavailable}, C{signature},
        C{missing_exp}, C{expired}, C{not_yet_valid}, C{claims}.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IJWTKeySource(Interface):
    """
    Where the public keys of RS256 JWTs come from.
    """

    def keyFor(kid: Optional[str]) -> "Deferred[RSAPublicKey]":
        """
        The public key for a token's C{kid} (C{str} or L{None}).

        @return: a L{Deferred} firing with the key (a C{cryptography} RSA
            public key) or failing with L{JWTRefused}
            (C{unknown_key}, C{jwks_unavailable}).
        """

    def seconds() -> float:
        """
        The time by which C{exp} and C{nbf} are judged.
        """


class KeySource(Protocol):
    """
    L{IJWTKeySource} as mypy sees it.
    """

    def keyFor(self, kid: Optional[str]) -> "Deferred[RSAPublicKey]": ...

    def seconds(self) -> float: ...


def _usableKey(jwk: object) -> Optional[tuple[Optional[str], RSAPublicKey]]:
    """
    (kid, public key) of one JWKS entry that tokengate may use, or L{None}.
    """
    if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
        return None
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", "RS256") != "RS256":
        return None
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID):
        return None
    if "d" in jwk:
        # a private key has no business in a public key set
        return None
    try:
        key = RSAAlgorithm.from_jwk(jwk)
    except (pyjwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(key, RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        return None
    return kid, key


def parseJWKS(body: bytes) -> dict[Optional[str], RSAPublicKey]:
    """
    The usable keys of a JWKS document by C{kid}.

    @raise ValueError: when the document is not a JSON object with a
        C{keys} array, or has no usable key.
    """
    try:
        doc = readJSON(body, maxDepth=4)
    except JSONError as e:
        raise ValueError("the key set is not JSON: {}".format(e))
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("the key set has no keys array")
    keys: dict[Optional[str], RSAPublicKey] = {}
    entries = doc["keys"]
    assert isinstance(entries, list)
    for entry in entries[:MAX_KEYS]:
        usable = _usableKey(entry)
        if usable is not None and usable[0] not in keys:
            keys[usable[0]] = usable[1]
    if not keys:
        raise ValueError("the key set has no usable RS256 key")
    return keys


@implementer(IJWTKeySource)
class JWKSKeySource:
    """
    Keys from a JWKS URL, cached and refreshed.

    @param url: the C{jwksURL}.
    @param reactor: connections, and the clock of the cache and of
        C{exp} (a L{twisted.internet.task.Clock} in tests, with an
        C{outbound} on the real reactor).
    @param ttl: seconds a fetched key set is used before it is refreshed.
    @param minRefetchInterval: the least seconds between two fetches (an
        unknown C{kid}, a failing URL).
    @param grace: seconds past C{ttl} that a key set stays usable while
        refreshes fail.
    @param timeout: seconds for one fetch.
    """

    def __init__(self, url: str, reactor: Any, ttl: float = 300.0,
                 minRefetchInterval: float = 30.0, grace: float = 600.0,
                 timeout: float = 3.0, outbound: Optional[Outbound] = None) -> None:
        self.url = checkURL(url, "jwksURL")
        self._clock = reactor
        self.ttl = ttl
        self.minRefetchInterval = minRefetchInterval
        self.grace = grace
        self._outbound = outbound if outbound is not None else Outbound(
            reactor, timeout, MAX_JWKS_BODY, maxInFlight=1)
        self._keys: dict[Optional[str], RSAPublicKey] = {}
        self._fetchedAt: Optional[float] = None
        self._attemptedAt: Optional[float] = None
        self._waiters: Optional[list[Deferred[None]]] = None
        self.fetches = 0

    def seconds(self) -> float:
        return float(self._clock.seconds())

    def _usable(self, now: float) -> bool:
        return self._fetchedAt is not None and now < self._fetchedAt + self.ttl + self.grace

    def _mayFetch(self, now: float) -> bool:
        return self._attemptedAt is None or now >= self._attemptedAt + self.minRefetchInterval

    def keyFor(self, kid: Optional[str]) -> "Deferred[RSAPublicKey]":
        return Deferred.fromCoroutine(self._keyFor(kid))

    async def _keyFor(self, kid: Optional[str]) -> RSAPublicKey:
        now = self.seconds()
        stale = self._fetchedAt is None or now >= self._fetchedAt + self.ttl
        if (stale or self._find(kid) is None) and (
                self._waiters is not None or self._mayFetch(now)):
            # a fetch under way is waited for, whenever it started
            await self._refresh()
            now = self.seconds()
        if not self._usable(now):
            if self._keys:
                log.warn("the key set of jwksURL is older than its ttl and grace and could "
                         "not be refreshed: JWTs are refused")
                self._keys = {}
            raise JWTRefused("jwks_unavailable")
        key = self._find(kid)
        if key is None:
            raise JWTRefused("unknown_key")
        return key

    def _find(self, kid: Optional[str]) -> Optional[RSAPublicKey]:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        """
        Fetch the key set (one fetch at a time; others wait for it).
        """
        if self._waiters is not None:
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            await waiter
            return
        self._waiters = []
        self._attemptedAt = self.seconds()
        self.fetches += 1
        try:
            status, body = await self._outbound.request("GET", self.url, None,
                                                        {"Accept": "application/json"})
            if status != 200:
                raise ValueError("HTTP {}".format(status))
            keys = parseJWKS(body)
        except (OutboundError, ValueError) as e:
            log.warn("fetching the key set of jwksURL failed: {reason}", reason=str(e))
        else:
            self._keys = keys
            self._fetchedAt = self.seconds()
        finally:
            waiters, self._waiters = self._waiters, None
            for w in waiters:
                w.callback(None)


class KeySources(Protocol):
    """
    What a verifier of JWTs needs: the key source of a C{jwksURL}
    (L{JWKSSources}).
    """

    def sourceFor(self, url: str) -> KeySource: ...


class JWKSSources:
    """
    One L{JWKSKeySource} per C{jwksURL}, shared by everything that verifies
    JWTs (the stream JWT checker, the REST API's JWT filter), so that one
    URL is fetched and cached once however many applications and requests
    use it.  At most C{maxSources} are kept, the least recently used
    dropped first (its key set is fetched again when next needed).

    Built by the composition root with the reactor.

    @param reactor: connections and the clock (see L{JWKSKeySource}).
    @param client: the treq client of every source (by default each makes
        its own, L{tokengate.access.outbound.newHTTPClient}).
    @param options: L{JWKSKeySource}'s C{ttl}, C{minRefetchInterval},
        C{grace} and C{timeout}.
    """

    def __init__(self, reactor: Any, maxSources: int = MAX_SOURCES,
                 client: Optional[HTTPClient] = None, ttl: float = 300.0,
                 minRefetchInterval: float = 30.0, grace: float = 600.0,
                 timeout: float = 3.0) -> None:
        self._reactor = reactor
        self.maxSources = maxSources
        self._client = client
        self._ttl = ttl
        self._minRefetchInterval = minRefetchInterval
        self._grace = grace
        self._timeout = timeout
        self._sources: OrderedDict[str, JWKSKeySource] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def sourceFor(self, url: str) -> JWKSKeySource:
        """
        The key source of C{url}.

        @raise ValueError: when C{url} is not an http or https URL (the
            settings refuse such a C{jwksURL} before it gets here).
        """
        source = self._sources.get(url)
        if source is not None:
            self._sources.move_to_end(url)
            return source
        outbound = Outbound(self._reactor, self._timeout, MAX_JWKS_BODY, maxInFlight=1,
                            client=self._client)
        source = JWKSKeySource(url, self._reactor, ttl=self._ttl,
                               minRefetchInterval=self._minRefetchInterval,
                               grace=self._grace, outbound=outbound)
        self._sources[url] = source
        while len(self._sources) > self.maxSources:
            self._sources.popitem(last=False)
        return source


def _number(claims: dict[str, Any], name: str) -> Optional[float]:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JWTRefused("claims")
    return float(value)


async def verifyJWT(source: KeySource, token: object, leeway: float = 30.0,
                    audience: Optional[str] = None, issuer: Optional[str] = None
                    ) -> dict[str, Any]:
    """
    Verify an RS256 JWT.

    @param source: where its key comes from.
    @param token: the compact JWT as presented.
    @param leeway: seconds of clock skew allowed on C{exp} and C{nbf}.
    @param audience: when given, C{aud} must name it.
    @param issuer: when given, C{iss} must be it.
    @return: the claims.
    @raise JWTRefused: with the reason.
    """
    if not isinstance(token, str) or not token:
        raise JWTRefused("malformed")
    if len(token) > MAX_TOKEN:
        raise JWTRefused("too_large")
    try:
        header = pyjwt.get_unverified_header(token)
    except pyjwt.InvalidTokenError:
        raise JWTRefused("malformed")
    if header.get("alg") != "RS256":
        raise JWTRefused("algorithm")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID):
        raise JWTRefused("malformed")
    key = await source.keyFor(kid)
    try:
        claims: dict[str, Any] = pyjwt.decode(
            token, key, algorithms=["RS256"], audience=audience, issuer=issuer,
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                     "verify_aud": audience is not None, "verify_iss": issuer is not None,
                     "require": ["exp"]})
    except pyjwt.MissingRequiredClaimError:
        raise JWTRefused("missing_exp")
    except pyjwt.InvalidSignatureError:
        raise JWTRefused("signature")
    except (pyjwt.InvalidAudienceError, pyjwt.InvalidIssuerError):
        raise JWTRefused("claims")
    except pyjwt.InvalidTokenError:
        raise JWTRefused("malformed")
    now = source.seconds()
    exp = _number(claims, "exp")
    if exp is None:
        raise JWTRefused("missing_exp")
    if not now < exp + leeway:
        raise JWTRefused("expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and now < nbf - leeway:
        raise JWTRefused("not_yet_valid")
    return claims


def verify(source: KeySource, token: object, **kw: Any) -> "Deferred[dict[str, Any]]":
    """
    L{verifyJWT} as a L{Deferred}.
    """
    return Deferred.fromCoroutine(verifyJWT(source, token, **kw))
