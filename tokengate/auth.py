# -*- test-case-name: tests.test_auth -*-
"""
The one seam between every protocol and the token policy.

A protocol builds L{StreamCredentials} (application, stream id, action,
token, peer, protocol) and calls L{Gate.login} with itself as the I{mind}.
The gate throttles abusive addresses, asks the admission prechecks (is the
stream already live, is it live at all), then logs in through a
L{twisted.cred.portal.Portal}: L{PolicyChecker} picks the checker the
application demands (none, L{OneTimeTokenChecker} or L{JwtTokenChecker}) and
the registry's L{tokengate.access.sessions.GateRealm} returns a
L{tokengate.access.sessions.Grant} that the protocol keeps, and whose
C{logout} it calls when it disconnects.  The server ends a session with the
grant's C{kick}, which calls the mind's C{kick} so the protocol ends it its
own way (see L{tokengate.access.sessions}).

Refusals are L{Refused} errors that carry an L{Outcome}: the reason, for
logs and metrics.  Clients are told only the reference server's strings.
Token values never reach a log line.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Optional, Sequence, Union

import jwt as pyjwt
from attrs import evolve, field, frozen
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from zope.interface import Attribute, implementer

from tokengate.access.sessions import (
    GRANT_INTERFACES,
    Admission,
    GateRealm,
    Grant,
    IPlayGrant,
    SessionRegistry,
)
from tokengate.access.hashtoken import verifyHashToken
from tokengate.access.jwks import JWTRefused, KeySources, verifyJWT
from tokengate.apps import Applications, AppSettings
from tokengate.logsafe import Logger
from tokengate.metrics import Metrics
from tokengate.store import ITokenStore, StoreUnavailable
from tokengate.tokens import (
    MAX_EXPIRE_SECONDS,
    MAX_TOKEN_LENGTH,
    MECHANISMS,
    Outcome,
    Probe,
    digest,
)


#: what a checker answers (cred's avatar id: bytes, or () for anonymous)
AvatarId = Union[bytes, tuple[()]]


# --- credentials ---------------------------------------------------------


class IStreamCredentials(ICredentials):
    """
    A request to publish or play one stream of one application.
    """

    app = Attribute("The application name.")
    streamId = Attribute("The stream id.")
    action = Attribute("'publish' or 'play'.")
    token = Attribute("The token presented, or None.")
    peer = Attribute("The client's address (host), for throttling and logs.")
    protocol = Attribute("rtmp, srt, webrtc, hls, dash, vod, rest: for metrics.")
    roomId = Attribute("The conference room named by the request, or None.")
    subscriberId = Attribute("The TOTP subscriber named by the request, or None.")
    subscriberCode = Attribute("The subscriber's TOTP code, or None (never logged).")


@implementer(IStreamCredentials)
@frozen
class StreamCredentials:
    app: str
    streamId: str
    action: str
    token: Optional[str] = field(default=None, repr=False)
    peer: str = ""
    protocol: str = "unknown"
    roomId: Optional[str] = None
    subscriberId: Optional[str] = None
    subscriberCode: Optional[str] = field(default=None, repr=False)


class Refused(UnauthorizedLogin):
    """
    A refused login, with the reason for logs and metrics.
    """

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome


# --- checkers ----------------------------------------------------------------


def _presented(creds: IStreamCredentials) -> str:
    token = creds.token
    if not token:
        raise Refused(Outcome.MISSING)
    if len(token) > MAX_TOKEN_LENGTH:
        raise Refused(Outcome.INVALID)
    return str(token)


@implementer(ICredentialsChecker)
class OneTimeTokenChecker:
    """
    Redeems one-time tokens through the token store, atomically.
    """

    credentialInterfaces = (IStreamCredentials,)

    def __init__(self, store: ITokenStore, clock: IReactorTime) -> None:
        self._store = store
        self._clock = clock

    def requestAvatarId(self, creds: IStreamCredentials) -> "Deferred[AvatarId]":
        return Deferred.fromCoroutine(self._redeem(creds))

    async def redeem(self, creds: IStreamCredentials) -> Outcome:
        token = _presented(creds)
        probe = Probe(
            app=creds.app,
            streamId=creds.streamId,
            type=creds.action,
            roomId=creds.roomId or None,
            now=self._clock.seconds(),
        )
        try:
            return await self._store.redeem(digest(token), probe)
        except StoreUnavailable:
            return Outcome.UNAVAILABLE

    async def _redeem(self, creds: IStreamCredentials) -> AvatarId:
        outcome = await self.redeem(creds)
        if outcome is not Outcome.GRANTED:
            raise Refused(outcome)
        return Admission(
            creds.app, creds.streamId, creds.action, "onetime", digest(str(creds.token))
        ).toAvatarId()


def mint_jwt(secret: str, streamId: str, type: str, expireDate: int,
             roomId: Optional[str] = None) -> str:
    """
    A stream JWT as the reference server mints it: HS256 over the
    application's C{jwtStreamSecretKey}, claims C{streamId}, C{type}, C{exp}.
    """
    claims: dict[str, Any] = {"streamId": streamId, "type": type, "exp": expireDate}
    if roomId:
        claims["roomId"] = roomId
    return pyjwt.encode(claims, secret, algorithm="HS256")


def check_jwt(secret: str, token: str, now: float,
              maxLifetime: Optional[float] = None) -> dict[str, Any]:
    """
    Verify an HS256 JWT and its expiry against C{now}.

    The JWT must carry an C{exp} (a finite number of unix seconds) after
    C{now} and below L{MAX_EXPIRE_SECONDS} (what a mint accepts): one
    without it would be valid for ever, so it is refused (the reference
    server checks C{exp} only when present; tokengate is stricter).

    @param maxLifetime: when given, an C{exp} more than this many seconds
        after C{now} is refused too (management JWTs: a leaked one stays
        usable for a bounded time).
    @raise Refused: with L{Outcome.EXPIRED} or L{Outcome.INVALID}.
    """
    try:
        claims = pyjwt.decode(
            token, secret, algorithms=["HS256"], options={"verify_exp": False}
        )
    except pyjwt.InvalidTokenError:
        raise Refused(Outcome.INVALID)
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not (
            0 < exp < MAX_EXPIRE_SECONDS):
        # no exp, not a number, NaN, or past what a mint accepts (milliseconds)
        raise Refused(Outcome.INVALID)
    if not now < exp:
        raise Refused(Outcome.EXPIRED)
    if maxLifetime is not None and exp > now + maxLifetime:
        raise Refused(Outcome.INVALID)
    return claims


class _SettingsTokenChecker:
    """
    A checker of reusable tokens verified against the application's own
    settings (a secret), not the store: L{JwtTokenChecker},
    L{HashTokenChecker}.
    """

    credentialInterfaces = (IStreamCredentials,)

    def __init__(self, apps: Applications) -> None:
        self._apps = apps

    def requestAvatarId(self, creds: IStreamCredentials) -> "Deferred[AvatarId]":
        return Deferred.fromCoroutine(self._checkPresented(creds))

    async def _checkPresented(self, creds: IStreamCredentials) -> AvatarId:
        token = _presented(creds)
        settings = self._apps.get(creds.app)
        if settings is None:
            raise Refused(Outcome.NO_APP)
        return self._check(creds, token, settings)

    def _check(self, creds: IStreamCredentials, token: str,
               settings: AppSettings) -> AvatarId:
        """
        Admit C{token} for C{creds} under C{settings}, or raise L{Refused}.
        """
        raise NotImplementedError()


#: how a refusal of an RS256 JWT verified with a jwksURL's keys is counted:
#: an outage of the key set is L{Outcome.UNAVAILABLE} (the client is not
#: guessing), an expired token L{Outcome.EXPIRED}, anything else (unknown
#: kid, another algorithm, a bad signature, no exp) L{Outcome.INVALID}
JWKS_OUTCOMES = {"jwks_unavailable": Outcome.UNAVAILABLE, "expired": Outcome.EXPIRED}


async def verifyJWKSToken(keys: KeySources, url: str, token: str,
                          maxLifetime: Optional[float] = None) -> dict[str, Any]:
    """
    Verify an RS256 JWT with the keys of C{url} (a C{jwksURL}): C{exp}
    required (L{tokengate.access.jwks.verifyJWT}).

    @param maxLifetime: when given, an C{exp} more than this many seconds
        ahead is refused too (management JWTs).
    @return: the claims.
    @raise Refused: with L{JWKS_OUTCOMES}' outcome.
    """
    source = keys.sourceFor(url)
    try:
        claims = await verifyJWT(source, token)
    except JWTRefused as e:
        raise Refused(JWKS_OUTCOMES.get(e.reason, Outcome.INVALID))
    exp = claims["exp"]
    if not 0 < exp < MAX_EXPIRE_SECONDS or (
            maxLifetime is not None and exp > source.seconds() + maxLifetime):
        raise Refused(Outcome.INVALID)
    return claims


@implementer(ICredentialsChecker)
class JwtTokenChecker(_SettingsTokenChecker):
    """
    Checks stream JWTs (reusable until they expire): HS256 over the
    application's C{jwtStreamSecretKey}, or RS256 with the keys of its
    C{jwksURL} when it names one (fetched through C{keys}; an outage of
    the key set refuses, L{Outcome.UNAVAILABLE}).  The same claims rules
    either way: C{exp} required, C{type} the action, C{streamId} the
    stream (or C{roomId} the request's room).
    """

    def __init__(self, apps: Applications, clock: IReactorTime,
                 keys: Optional[KeySources] = None) -> None:
        super().__init__(apps)
        self._clock = clock
        self._keys = keys

    async def _checkPresented(self, creds: IStreamCredentials) -> AvatarId:
        token = _presented(creds)
        settings = self._apps.get(creds.app)
        if settings is None:
            raise Refused(Outcome.NO_APP)
        if settings.jwksURL:
            if self._keys is None:
                raise Refused(Outcome.UNAVAILABLE)
            claims = await verifyJWKSToken(self._keys, settings.jwksURL, token)
        else:
            claims = check_jwt(settings.jwtStreamSecretKey, token, self._clock.seconds())
        return self._admit(creds, token, claims)

    def _admit(self, creds: IStreamCredentials, token: str,
               claims: dict[str, Any]) -> AvatarId:
        if claims.get("type") != creds.action:
            raise Refused(Outcome.WRONG_TYPE)
        if claims.get("streamId") != creds.streamId:
            room = claims.get("roomId")
            if not (room and creds.roomId and room == creds.roomId):
                raise Refused(Outcome.WRONG_STREAM)
        return Admission(
            creds.app, creds.streamId, creds.action, "jwt", digest(token), float(claims["exp"]),
        ).toAvatarId()


@implementer(ICredentialsChecker)
class HashTokenChecker(_SettingsTokenChecker):
    """
    Checks Ant Media's hash tokens (L{tokengate.access.hashtoken}):
    reusable, bound to the stream and the action, verified against the
    application's C{tokenHashSecret}.
    """

    def _check(self, creds: IStreamCredentials, token: str,
               settings: AppSettings) -> AvatarId:
        if not verifyHashToken(token, creds.streamId, creds.action, settings.tokenHashSecret):
            raise Refused(Outcome.INVALID)
        return Admission(creds.app, creds.streamId, creds.action, "hash",
                         digest(token)).toAvatarId()


@implementer(ICredentialsChecker)
class PolicyChecker:
    """
    The checker the portal knows: applies the application's settings and
    delegates to the one-time, the JWT or the hash checker, or admits
    without a token when the application has no token control for the
    action.
    """

    credentialInterfaces = (IStreamCredentials,)

    def __init__(self, apps: Applications, onetime: OneTimeTokenChecker,
                 jwt: JwtTokenChecker, hash: "HashTokenChecker") -> None:
        self._apps = apps
        self._checkers: dict[str, OneTimeTokenChecker | JwtTokenChecker | HashTokenChecker] = {
            "onetime": onetime, "jwt": jwt, "hash": hash}

    def requestAvatarId(self, creds: IStreamCredentials) -> "Deferred[AvatarId]":
        settings = self._apps.get(creds.app)
        if settings is None:
            return Deferred.fromCoroutine(_raise(Refused(Outcome.NO_APP)))
        if creds.action not in GRANT_INTERFACES:
            return Deferred.fromCoroutine(_raise(Refused(Outcome.INVALID)))
        kind = settings.tokenKind(creds.action)
        if kind is None:
            return succeed(Admission(creds.app, creds.streamId, creds.action, "none",
                                     subscriberId=creds.subscriberId).toAvatarId())
        d = self._checkers[kind].requestAvatarId(creds)
        if creds.subscriberId:
            d.addCallback(_withSubscriber, creds.subscriberId)
        return d


def _withSubscriber(avatarId: AvatarId, subscriberId: str) -> AvatarId:
    """
    What a checker admitted, with the request's subscriber (so the grant
    knows whom to kick when the subscriber is blocked).
    """
    if not isinstance(avatarId, bytes):
        return avatarId
    return evolve(Admission.fromAvatarId(avatarId), subscriberId=subscriberId).toAvatarId()


async def _raise(e: Exception) -> AvatarId:
    raise e


# --- throttling --------------------------------------------------------------


class Throttle:
    """
    Slows down addresses that keep failing, and only them.

    Each address has a failure score that halves every C{halfLife} seconds.
    Below C{threshold} nothing happens; above it each attempt from that
    address waits C{base * 2**(score - threshold)} seconds (at most
    C{maxDelay}) before it is even checked, and an address with more than
    C{maxPending} attempts waiting is refused at once.  Addresses that never
    fail are never delayed; the table holds at most C{maxTracked} addresses.

    A failure is counted once per I{attempt}: the same attempt (the same
    credentials, say) failing again from the same address within
    C{repeatWindow} seconds of when it was counted adds nothing, so a client
    that retries by itself (srt-live-transmit, an encoder reconnecting, a
    player refetching) is not taken for a guesser; every different attempt
    counts.  At most C{maxTracked} attempts are remembered.

    A client that cannot wait for ever (an SRT caller gives up after its
    connect timeout) passes a deadline to L{admit}: an attempt the throttle
    would hold past it is refused at once instead.
    """

    def __init__(self, clock: IReactorTime, threshold: float = 5.0, halfLife: float = 60.0,
                 base: float = 0.25, maxDelay: float = 4.0, maxPending: int = 8,
                 maxTracked: int = 100_000, repeatWindow: float = 300.0) -> None:
        self._clock = clock
        self.threshold = threshold
        self.halfLife = halfLife
        self.base = base
        self.maxDelay = maxDelay
        self.maxPending = maxPending
        self.maxTracked = maxTracked
        self.repeatWindow = repeatWindow
        self._scores: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._pending: dict[str, int] = {}
        # (peer, attempt) -> when it was counted, oldest first
        self._attempts: OrderedDict[tuple[str, bytes], float] = OrderedDict()

    def score(self, peer: str) -> float:
        entry = self._scores.get(peer)
        if entry is None:
            return 0.0
        score, when = entry
        halves = (self._clock.seconds() - when) / self.halfLife
        return score * math.pow(0.5, halves)

    def delay(self, peer: str) -> float:
        excess = self.score(peer) - self.threshold
        if excess < 0:
            return 0.0
        # the exponent capped: past a thousand failures 2**excess overflows
        return min(self.maxDelay, self.base * math.pow(2.0, min(excess, 64.0)))

    def failed(self, peer: str, attempt: Optional[bytes] = None) -> bool:
        """
        Count a failure of C{peer}; C{attempt} (any bytes that identify what
        was tried, e.g. a digest of the credentials) makes a repeat of it
        within C{repeatWindow} count once.  Whether it was counted.
        """
        now = self._clock.seconds()
        if attempt is not None:
            attempts = self._attempts
            while attempts:
                oldest = next(iter(attempts.values()))
                if oldest + self.repeatWindow > now:
                    break
                attempts.popitem(last=False)
            key = (peer, attempt)
            if key in attempts:
                return False
            attempts[key] = now
            while len(attempts) > self.maxTracked:
                attempts.popitem(last=False)
        score = self.score(peer) + 1.0
        self._scores[peer] = (score, self._clock.seconds())
        self._scores.move_to_end(peer)
        while len(self._scores) > self.maxTracked:
            self._scores.popitem(last=False)
        return True

    async def admit(self, peer: str, deadline: Optional[float] = None) -> None:
        """
        Wait as long as this address must; raise L{Refused} with
        L{Outcome.THROTTLED} when too many of its attempts already wait, or
        when the wait would end after C{deadline} (the clock's time by which
        the client must have its answer: it is then refused at once, while
        it still listens).
        """
        wait = self.delay(peer)
        if wait <= 0:
            return
        if deadline is not None and self._clock.seconds() + wait > deadline:
            raise Refused(Outcome.THROTTLED)
        pending = self._pending.get(peer, 0)
        if pending >= self.maxPending:
            raise Refused(Outcome.THROTTLED)
        self._pending[peer] = pending + 1
        try:
            await deferLater(self._clock, wait)
        finally:
            left = self._pending[peer] - 1
            if left:
                self._pending[peer] = left
            else:
                del self._pending[peer]


#: Refusal reasons that say nothing about the client's honesty.
_NOT_SUSPICIOUS = frozenset(
    {Outcome.THROTTLED, Outcome.UNAVAILABLE, Outcome.NO_APP, Outcome.IN_USE,
     Outcome.NOT_LIVE, Outcome.DISABLED, Outcome.BLOCKED, Outcome.CODE_IN_USE,
     Outcome.UNREGISTERED, Outcome.ADDRESS, Outcome.WEBHOOK_UNAVAILABLE}
)


# --- the entry point -------------------------------------------------------------


#: the access service's checks after any throttle wait: None, or a refusal
Precheck = Callable[[IStreamCredentials], Awaitable[Optional[Outcome]]]


class Gate:
    """
    The single entry point every protocol calls to publish or play.
    """

    _log = Logger()

    def __init__(self, portal: Portal, registry: SessionRegistry, throttle: Throttle,
                 metrics: Metrics, apps: Optional[Applications] = None,
                 onetime: Optional[OneTimeTokenChecker] = None) -> None:
        self._portal = portal
        self._apps = apps
        self._onetime = onetime
        self.registry = registry
        self._throttle = throttle
        self._metrics = metrics

    async def validate(self, creds: IStreamCredentials) -> Outcome:
        """
        Redeem a one-time token without admitting a session (the REST
        C{validate-token}, which consumes it like the reference server):
        counted like a login, never throttled (the management API is
        protected by its own rules).  L{Outcome.UNAVAILABLE} when the store
        could not answer.
        """
        if self._onetime is None:
            outcome = Outcome.UNAVAILABLE
        else:
            outcome = await self._onetime.redeem(creds)
        if outcome is Outcome.GRANTED:
            self._metrics.grants.labels(creds.protocol, creds.action, "onetime").inc()
        else:
            self.refused(creds, outcome)
        return outcome

    def refused(self, creds: IStreamCredentials, outcome: Outcome,
                attempt: Optional[bytes] = None) -> None:
        """
        Count and log a refusal (also for refusals decided by a protocol
        before it reaches the gate, such as a malformed stream id).

        Suspicious refusals feed the throttle once per attempt: C{attempt}
        identifies what was tried (by default the credentials: application,
        stream, action, room and token), so a client retrying the same
        refused request is counted once.  A protocol that refuses before it
        has credentials passes what the client sent (an SRT stream id, say).
        """
        self._metrics.refusals.labels(creds.protocol, creds.action, outcome.value).inc()
        self._metrics.policyRefusals.labels(MECHANISMS.get(outcome, "request"),
                                            outcome.value).inc()
        if outcome not in _NOT_SUSPICIOUS and creds.peer:
            self._throttle.failed(creds.peer, attempt if attempt is not None
                                  else attemptOf(creds))
        self._log.info(
            "refused {protocol} {action} of {app}/{streamId} from {peer}: {reason}",
            protocol=creds.protocol,
            action=creds.action,
            app=creds.app,
            streamId=creds.streamId,
            peer=creds.peer,
            reason=outcome.value,
        )

    def login(self, creds: IStreamCredentials, mind: Optional[Any] = None,
              deadline: Optional[float] = None,
              precheck: Optional[Precheck] = None) -> "Deferred[Grant]":
        """
        Admit C{creds} (fire with a L{Grant}) or fail with L{Refused}.
        C{mind} should provide L{IKickable} and may have C{protocolName} and
        C{peerHost}.  C{deadline}, when given, is the clock's time by which
        the client must have its answer (an SRT caller's connect timeout): a
        throttled attempt that would wait past it is refused at once as
        L{Outcome.THROTTLED}, its token untouched.  C{precheck}, when given,
        runs (awaited) after any throttle wait and before the token is looked
        at: an outcome it returns refuses the login, the token untouched (the
        access service's checks).
        """
        return Deferred.fromCoroutine(self._login(creds, mind, deadline, precheck))

    async def _login(self, creds: IStreamCredentials, mind: Optional[Any],
                     deadline: Optional[float] = None,
                     precheck: Optional[Precheck] = None) -> Grant:
        try:
            if creds.peer:
                await self._throttle.admit(creds.peer, deadline)
            if precheck is not None:
                outcome = await precheck(creds)
                if outcome is not None:
                    raise Refused(outcome)
            interface = GRANT_INTERFACES.get(creds.action, IPlayGrant)
            mind = mind if mind is not None else _Mind(creds.protocol, creds.peer)
            _, avatar, _ = await self._portal.login(creds, mind, interface)
        except Refused as e:
            self.refused(creds, e.outcome)
            raise
        if not isinstance(avatar, Grant):
            raise TypeError("the gate's realm answered {!r}, not a grant".format(avatar))
        grant = avatar
        self._metrics.grants.labels(creds.protocol, creds.action, grant.kind).inc()
        self._log.info(
            "admitted {protocol} {action} of {app}/{streamId} from {peer} ({kind})",
            protocol=creds.protocol,
            action=creds.action,
            app=creds.app,
            streamId=creds.streamId,
            peer=creds.peer,
            kind=grant.kind,
        )
        return grant


def attemptOf(creds: IStreamCredentials) -> bytes:
    """
    What identifies an attempt for the throttle: a digest of the credentials
    (so no token is kept in memory in the clear).
    """
    # the subscriber and its code too: each code tried is an attempt
    what = json.dumps([creds.app, creds.streamId, creds.action, creds.roomId, creds.token,
                       creds.subscriberId, creds.subscriberCode])
    return hashlib.sha256(what.encode("utf-8", "surrogatepass")).digest()[:16]


@frozen
class _Mind:
    protocolName: str
    peerHost: str

    def kick(self, reason: str) -> None:
        pass


def build_gate(apps: Applications, store: ITokenStore, clock: IReactorTime,
               metrics: Metrics, kickOnExpiry: bool = False,
               throttle: Optional[Throttle] = None,
               keys: Optional[KeySources] = None) -> Gate:
    """
    @param keys: the key sources of the applications' C{jwksURL}s (without
        them, a JWT of an application with a C{jwksURL} is refused as
        L{Outcome.UNAVAILABLE}).
    """
    registry = SessionRegistry(metrics, clock, kickOnExpiry=kickOnExpiry)
    onetime = OneTimeTokenChecker(store, clock)
    jwt = JwtTokenChecker(apps, clock, keys)
    portal = Portal(GateRealm(registry), [PolicyChecker(apps, onetime, jwt,
                                                        HashTokenChecker(apps))])
    return Gate(portal, registry, throttle or Throttle(clock), metrics, apps, onetime)


def credentials_for(app: str, streamId: str, action: str, token: Optional[str],
                    peer: str, protocol: str, roomId: Optional[str] = None) -> StreamCredentials:
    return StreamCredentials(app, streamId, action, token or None, peer, protocol, roomId)


__all__: Sequence[str] = [
    "IStreamCredentials", "StreamCredentials", "Refused",
    "OneTimeTokenChecker", "JwtTokenChecker", "PolicyChecker", "Throttle", "Gate",
    "build_gate", "mint_jwt", "check_jwt",
]
