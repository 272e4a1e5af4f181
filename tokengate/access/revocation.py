# -*- test-case-name: tests.test_revocation,tests.test_cluster,tests.interop.test_cluster -*-
"""
The revocation service: one L{Revoker} per process, with a transport.

The REST revocations (C{DELETE .../tokens}, C{DELETE .../sessions}) and
blocks of TOTP subscribers (C{PUT .../subscribers/{sid}/block/...}) call
L{Revoker.revokeTokens}, L{Revoker.revokeSessions} and
L{Revoker.blockSubscriber}, which always act on this node at once, then tell
the other nodes of the cluster through the transport:

* L{LocalTransport} (memory and SQLite stores): no other node;
* L{RedisTransport} (Redis store): one Lua script records the revocation in
  Redis and PUBLISHes it on a channel; every node SUBSCRIBEs to that
  channel (L{tokengate.redisclient.RedisClient.subscribe}, the client the
  token store uses) and hands the events of the other nodes to its
  L{Revoker}.

What ending sessions on this node means:

* a stream's I{token sessions}: the registry's grants of the stream that a
  token admitted (C{kind != "none"}; when catching up, only those started
  up to the revocation's time);
* a stream's I{viewing sessions}: the registry's play grants of the stream
  (HTTP playback grants included: their mind's kick revokes that session's
  credential, once), and C{signer.revokeStream(app, streamId, when)}, which
  refuses the playback credentials of sessions started up to C{when} that
  other nodes issued;
* a stream's I{subscriber sessions}: the registry's grants of the stream
  that a TOTP subscriber opened, for one action or both (kicked
  C{"blocked"}; the block itself lives in the subscriber store, which
  refuses the subscriber's new connections).

Events are JSON objects::

    {"v": 1, "kind": "tokens" | "sessions" | "subscriber", "app": ...,
     "streamId": ..., "time": <unix seconds, the revoking node's clock>,
     "origin": <node id>}

and, for C{subscriber} only, C{"subscriberId"} and C{"action"}
(C{"publish"}, C{"play"}, or null for both).  A node of an older version
drops a C{subscriber} event as of an unknown kind (counted malformed).

A node ignores its own events (C{origin} is random per process).  An event
that is too long, not JSON, of an unknown kind or version, or whose
application is not one of this node's, is dropped and counted (nothing of it
is logged but its size).

Pub/sub is fire-and-forget: a node whose subscription is down misses the
events published meanwhile.  So every revocation is also kept in a sorted
set, member C{"{kind}:{q(app)}:{q(streamId)}"} (for C{subscriber}:
C{"subscriber:{q(app)}:{q(streamId)}:{q(subscriberId)}:{action or ''}"}),
score the time::

    {P}revoked                ZSET  (entries older than the longest
                                    lifetime of a playback credential are
                                    dropped; the key expires after it)

and each time a node's subscription is (again) in place it reads that set
and ends what was admitted before each recorded time (L{Revoker.catchUp}).
Catching up uses the revoking node's clock: keep the nodes' clocks in sync
(NTP), as credential expiry already requires.

The channel is C{{P}revocations:{db}}: pub/sub ignores the database number,
so the channel names it.

When Redis is unreachable, a revocation still acts on this node, the REST
call answers as before (within the client's timeout), and the failure is
counted (C{tokengate_cluster_revocations_total{direction="failed"}}) and
logged: the other nodes learn nothing of it, except that their HTTP
playback credentials and token sessions were not ended.
"""

from __future__ import annotations

import json
import math
import secrets
from typing import TYPE_CHECKING, Any, Container, Iterable, Optional, Protocol, Sequence, TypeVar
from urllib.parse import quote, unquote

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from tokengate.logsafe import Logger
from tokengate.metrics import Metrics
from tokengate.tokens import PUBLISH

if TYPE_CHECKING:
    from tokengate.redisclient import RedisClient, RedisSubscription

TOKENS = "tokens"
SESSIONS = "sessions"
SUBSCRIBER = "subscriber"
PUBLISHERS = "publishers"
KINDS = (TOKENS, SESSIONS, SUBSCRIBER, PUBLISHERS)
#: what a C{subscriber} revocation ends: one action, or both (None)
SUBSCRIBER_ACTIONS = ("publish", "play", None)
VERSION = 1

#: longest event accepted, bytes
MAX_EVENT_BYTES = 4096
#: longest application or stream id in an event
MAX_NAME_LENGTH = 1024
#: most recorded revocations read when catching up
CATCHUP_LIMIT = 10_000
#: seconds between attempts to catch up while Redis does not answer
CATCHUP_RETRY = 5.0
#: seconds a revocation is kept beyond the longest life of a playback
#: credential (a margin for clocks)
HORIZON_MARGIN = 60.0

# KEYS: the revocation record
# ARGV: member, time, oldest time kept, key lifetime in ms, channel, event
_RECORD = """
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not old or tonumber(old) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('PUBLISH', ARGV[5], ARGV[6])
"""

# KEYS: the revocation record
# ARGV: oldest time wanted, most entries
_RECENT = """
return redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', ARGV[1],
                  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
"""


def _q(s: str) -> str:
    return quote(s, safe="", errors="surrogatepass")


def _unq(s: str) -> str:
    return unquote(s, errors="surrogatepass")


class MalformedEvent(ValueError):
    """
    A revocation event that is not one.
    """


@frozen
class Revocation:
    """
    One revocation, as the nodes of a cluster tell each other.

    @ivar kind: L{TOKENS} (end the stream's token sessions), L{SESSIONS}
        (end its viewing sessions), L{SUBSCRIBER} (end a blocked
        subscriber's sessions of the stream) or L{PUBLISHERS} (end its
        publishers: its broadcast was deleted).
    @ivar time: when it was made, unix seconds on the revoking node's clock.
    @ivar origin: the revoking node's id.
    @ivar subscriberId: the subscriber (L{SUBSCRIBER} only).
    @ivar action: C{"publish"} or C{"play"}, or None for both
        (L{SUBSCRIBER} only).
    """

    kind: str
    app: str
    streamId: str
    time: float
    origin: str
    subscriberId: Optional[str] = None
    action: Optional[str] = None


def encodeEvent(revocation: Revocation) -> str:
    """
    The event telling the other nodes of a revocation.

    @raise MalformedEvent: if it would be longer than L{MAX_EVENT_BYTES}.
    """
    fields: dict[str, Any] = {
        "v": VERSION, "kind": revocation.kind, "app": revocation.app,
        "streamId": revocation.streamId, "time": revocation.time,
        "origin": revocation.origin}
    if revocation.kind == SUBSCRIBER:
        fields["subscriberId"] = revocation.subscriberId
        fields["action"] = revocation.action
    event = json.dumps(fields, separators=(",", ":"))
    if len(event.encode("utf-8", "surrogatepass")) > MAX_EVENT_BYTES:
        raise MalformedEvent("too long")
    return event


def parseEvent(message: Any) -> Revocation:
    """
    The revocation an event tells, checked.

    @raise MalformedEvent: if it is not a well-formed event.
    """
    if isinstance(message, str):
        raw = message.encode("utf-8", "surrogatepass")
    elif isinstance(message, (bytes, bytearray)):
        raw = bytes(message)
    else:
        raise MalformedEvent("not a string")
    if len(raw) > MAX_EVENT_BYTES:
        raise MalformedEvent("too long ({} bytes)".format(len(raw)))
    try:
        # server-authored JSON (another node's), size-capped above
        event = json.loads(raw)
    except (ValueError, RecursionError):
        raise MalformedEvent("not JSON ({} bytes)".format(len(raw)))
    if not isinstance(event, dict):
        raise MalformedEvent("not a JSON object")
    if event.get("v") != VERSION:
        raise MalformedEvent("unknown version")
    kind = event.get("kind")
    if kind not in KINDS:
        raise MalformedEvent("unknown kind")
    for name in ("app", "streamId", "origin"):
        value = event.get(name)
        if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LENGTH:
            raise MalformedEvent("bad {}".format(name))
    when = event.get("time")
    if (
        isinstance(when, bool)
        or not isinstance(when, (int, float))
        or not math.isfinite(when)
        or when < 0
    ):
        raise MalformedEvent("bad time")
    subscriberId, action = None, None
    if kind == SUBSCRIBER:
        subscriberId, action = event.get("subscriberId"), event.get("action")
        if not isinstance(subscriberId, str) or not 0 < len(subscriberId) <= MAX_NAME_LENGTH:
            raise MalformedEvent("bad subscriberId")
        if action not in SUBSCRIBER_ACTIONS:
            raise MalformedEvent("bad action")
    return Revocation(kind, event["app"], event["streamId"], float(when), event["origin"],
                      subscriberId, action)


def _member(revocation: Revocation) -> str:
    """
    A revocation's member in the recorded set.
    """
    member = "{}:{}:{}".format(revocation.kind, _q(revocation.app), _q(revocation.streamId))
    if revocation.kind == SUBSCRIBER:
        member += ":{}:{}".format(_q(revocation.subscriberId or ""), revocation.action or "")
    return member


def _fromMember(member: str, when: float) -> Revocation:
    """
    The revocation a recorded member tells (without its origin).

    @raise ValueError: when it is not one.
    """
    parts = member.split(":")
    kind = parts[0]
    if kind in (TOKENS, SESSIONS, PUBLISHERS) and len(parts) == 3:
        return Revocation(kind, _unq(parts[1]), _unq(parts[2]), when, "")
    if kind == SUBSCRIBER and len(parts) == 5 and parts[3]:
        action = parts[4] or None
        if action not in SUBSCRIBER_ACTIONS:
            raise ValueError("bad action")
        return Revocation(kind, _unq(parts[1]), _unq(parts[2]), when, "", _unq(parts[3]),
                          action)
    raise ValueError("not a recorded revocation")


# --- what the revoker acts on ---------------------------------------------------


class RevocableGrant(Protocol):
    """
    What the revoker reads of a session's grant.
    """

    @property
    def action(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def started(self) -> float: ...

    @property
    def subscriberId(self) -> Optional[str]: ...


G = TypeVar("G", bound=RevocableGrant)


class SessionsOfStreams(Protocol[G]):
    """
    The session registry, as the revoker uses it.
    """

    def grants(self, app: str, streamId: Optional[str] = None) -> Sequence[G]: ...

    def kick(self, grants: Iterable[G], reason: str) -> int: ...


class CredentialRevocations(Protocol):
    """
    The playback credentials' revocations (the session signer's).
    """

    def revokeStream(self, app: str, streamId: str, now: float) -> None: ...


class RevocationTransport(Protocol):
    """
    How a L{Revoker} tells the other nodes, and hears from them.
    """

    def start(self, revoker: "Revoker") -> None:
        """
        Begin handing the other nodes' events to C{revoker.received}, and
        recorded revocations to C{revoker.catchUp} after any gap.
        """

    def announce(self, revocation: Revocation) -> "Deferred[bool]":
        """
        Tell the other nodes.

        @return: fires with whether any other node could be told (C{False}
            when there is no cluster), or fails.
        """

    def stop(self) -> "Deferred[None]":
        """
        Stop hearing from the other nodes.
        """


# --- the service ---------------------------------------------------------------------


class Revoker:
    """
    Revocation on this node and across the cluster.  See the module
    docstring.
    """

    log = Logger()

    def __init__(
        self,
        *,
        registry: SessionsOfStreams[Any],
        credentials: CredentialRevocations,
        apps: Container[str],
        clock: IReactorTime,
        metrics: Metrics,
        transport: Optional[RevocationTransport] = None,
        nodeId: Optional[str] = None,
    ) -> None:
        """
        @param registry: the session registry (grants by stream, and the one
            way to end them).
        @param credentials: where playback credentials are revoked (the
            session signer).
        @param apps: this node's applications (events for others are
            ignored).
        @param transport: how the other nodes are told; a
            L{LocalTransport} by default.
        @param nodeId: this process' id in events (random by default).
        """
        self._registry = registry
        self._credentials = credentials
        self._apps = apps
        self._clock = clock
        self.transport: RevocationTransport = (
            transport if transport is not None else LocalTransport()
        )
        self._counter = metrics.counter(
            "tokengate_cluster_revocations",
            "Revocation events sent to, received from, and failed to reach the "
            "other nodes of the cluster, or received malformed",
            ["direction"],
        )
        #: this process' id in revocation events
        self.nodeId = nodeId if nodeId is not None else secrets.token_hex(8)

    def count(self, direction: str) -> None:
        self._counter.labels(direction).inc()

    # --- what the REST API calls --------------------------------------------------

    def revokeTokens(self, app: str, streamId: str) -> "Deferred[int]":
        """
        End the stream's live sessions admitted by a token, here at once and
        on the other nodes.  (Deleting the tokens is the store's business.)

        @return: fires with the number of sessions ended here once the
            other nodes were told (or that failed); never fails.
        """
        now = self._clock.seconds()
        kicked = self.endTokenSessions(app, streamId)
        return self._announce(TOKENS, app, streamId, now).addCallback(lambda _: kicked)

    def revokeSessions(self, app: str, streamId: str) -> "Deferred[int]":
        """
        End every viewing session of the stream started up to now, here at
        once and on the other nodes.

        @return: as L{revokeTokens}.
        """
        now = self._clock.seconds()
        kicked = self.endViewingSessions(app, streamId, now)
        return self._announce(SESSIONS, app, streamId, now).addCallback(lambda _: kicked)

    def blockSubscriber(self, app: str, streamId: str, subscriberId: str,
                        action: Optional[str]) -> "Deferred[int]":
        """
        End the live sessions of the stream that a (now blocked) TOTP
        subscriber opened, for C{action} (or both when None), here at once
        and on the other nodes.

        @return: as L{revokeTokens}.
        """
        now = self._clock.seconds()
        kicked = self.endSubscriberSessions(app, streamId, subscriberId, action)
        return self._announce(SUBSCRIBER, app, streamId, now, subscriberId,
                              action).addCallback(lambda _: kicked)

    def stopPublishers(self, app: str, streamId: str) -> "Deferred[int]":
        """
        End the stream's publishing sessions (its broadcast was deleted),
        here at once and on the other nodes.

        @return: as L{revokeTokens}.
        """
        now = self._clock.seconds()
        kicked = self.endPublishingSessions(app, streamId)
        return self._announce(PUBLISHERS, app, streamId, now).addCallback(lambda _: kicked)

    # --- acting on this node ----------------------------------------------------

    def endPublishingSessions(self, app: str, streamId: str,
                              before: Optional[float] = None) -> int:
        """
        End the stream's publishers (started up to C{before}, when given).

        @return: how many were ended.
        """
        registry = self._registry
        return registry.kick(
            [g for g in registry.grants(app, streamId)
             if g.action == PUBLISH and (before is None or g.started <= before)],
            "deleted",
        )

    def endSubscriberSessions(self, app: str, streamId: str, subscriberId: str,
                              action: Optional[str], before: Optional[float] = None) -> int:
        """
        End the stream's sessions that C{subscriberId} opened, for
        C{action} (both when None), started up to C{before} when given.

        @return: how many were ended.
        """
        registry = self._registry
        return registry.kick(
            [
                g
                for g in registry.grants(app, streamId)
                if g.subscriberId == subscriberId
                and (action is None or g.action == action)
                and (before is None or g.started <= before)
            ],
            "blocked",
        )

    def endTokenSessions(self, app: str, streamId: str, before: Optional[float] = None) -> int:
        """
        End the stream's sessions that a token admitted (started up to
        C{before}, when given).

        @return: how many were ended.
        """
        registry = self._registry
        return registry.kick(
            [
                g
                for g in registry.grants(app, streamId)
                if g.kind != "none" and (before is None or g.started <= before)
            ],
            "revoked",
        )

    def endViewingSessions(
        self, app: str, streamId: str, when: float, onlyBefore: bool = False
    ) -> int:
        """
        End the stream's players (every one, or those started up to C{when}
        when C{onlyBefore}), HTTP playback sessions included, and refuse the
        playback credentials of its sessions started up to C{when} wherever
        they were issued.

        @return: how many sessions of this node were ended.
        """
        registry = self._registry
        kicked = registry.kick(
            [
                g
                for g in registry.grants(app, streamId)
                if g.action == "play" and (not onlyBefore or g.started <= when)
            ],
            "revoked",
        )
        self._credentials.revokeStream(app, streamId, when)
        return kicked

    # --- telling the other nodes ---------------------------------------------------

    def _announce(self, kind: str, app: str, streamId: str, when: float,
                  subscriberId: Optional[str] = None,
                  action: Optional[str] = None) -> "Deferred[None]":
        revocation = Revocation(kind, app, streamId, when, self.nodeId, subscriberId, action)
        d = maybeDeferred(self.transport.announce, revocation)

        def sent(told: bool) -> None:
            if told:
                self.count("sent")

        def failed(f: Failure) -> None:
            self.count("failed")
            if f.check(MalformedEvent):
                self.log.warn("revocation of a stream with a too long name not propagated")
                return
            self.log.warn(
                "revoking {kind} of {app}/{stream} acted on this node only: "
                "telling the cluster failed: {error}",
                kind=kind, app=app, stream=streamId, error=f.getErrorMessage(),
            )

        return d.addCallbacks(sent, failed)

    # --- hearing from them -------------------------------------------------------------

    def received(self, message: Any) -> None:
        """
        Apply an event of another node (as it came, unchecked).
        """
        try:
            revocation = parseEvent(message)
        except MalformedEvent as e:
            self.count("malformed")
            self.log.warn("ignored a malformed revocation event: {why}", why=str(e))
            return
        if revocation.origin == self.nodeId:
            return
        self.count("received")
        app, streamId = revocation.app, revocation.streamId
        if app not in self._apps:
            return
        if revocation.kind == TOKENS:
            n = self.endTokenSessions(app, streamId)
        elif revocation.kind == SUBSCRIBER:
            assert revocation.subscriberId is not None
            n = self.endSubscriberSessions(app, streamId, revocation.subscriberId,
                                           revocation.action)
        elif revocation.kind == PUBLISHERS:
            n = self.endPublishingSessions(app, streamId)
        else:
            when = max(revocation.time, self._clock.seconds())
            n = self.endViewingSessions(app, streamId, when)
        self.log.info(
            "{kind} of {app}/{stream} revoked by another node: {n} sessions ended here",
            kind=revocation.kind, app=app, stream=streamId, n=n,
        )

    def catchUp(self, revocations: Iterable[Revocation]) -> int:
        """
        Apply the recorded revocations, after missing events: end only what
        was admitted before each.

        @return: the number of sessions ended.
        """
        n = 0
        for r in revocations:
            if r.app not in self._apps:
                continue
            if r.kind == TOKENS:
                n += self.endTokenSessions(r.app, r.streamId, before=r.time)
            elif r.kind == SESSIONS:
                n += self.endViewingSessions(r.app, r.streamId, r.time, onlyBefore=True)
            elif r.kind == PUBLISHERS:
                n += self.endPublishingSessions(r.app, r.streamId, before=r.time)
            elif r.kind == SUBSCRIBER and r.subscriberId is not None:
                n += self.endSubscriberSessions(r.app, r.streamId, r.subscriberId, r.action,
                                                before=r.time)
        if n:
            self.log.info("caught up on missed revocations: {n} sessions ended", n=n)
        return n

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """
        Hear from the other nodes (again, after L{stop}).
        """
        self.transport.start(self)

    def stop(self) -> "Deferred[None]":
        return self.transport.stop()


# --- transports -------------------------------------------------------------------


class LocalTransport:
    """
    No cluster: nobody to tell, nobody to hear from.
    """

    def start(self, revoker: Revoker) -> None:
        pass

    def announce(self, revocation: Revocation) -> "Deferred[bool]":
        return succeed(False)

    def stop(self) -> "Deferred[None]":
        return succeed(None)


class RedisTransport:
    """
    Revocations through the Redis that the token store uses: published on
    a channel and recorded in a sorted set.  See the module docstring.
    """

    log = Logger()

    def __init__(
        self,
        client: RedisClient,
        clock: IReactorTime,
        horizon: float,
        keepalive: float = 15.0,
    ) -> None:
        """
        @param client: the Redis client layer (shared with the token store).
        @param horizon: seconds a revocation matters: the longest life of a
            playback credential, plus L{HORIZON_MARGIN}.
        @param keepalive: seconds between PINGs on the subscription (set
            before L{start}).
        """
        self._client = client
        self._clock = clock
        self.horizon = horizon
        self.keepalive = keepalive
        self.channel = "{}revocations:{}".format(client.prefix, client.db)
        self.recordKey = client.prefix + "revoked"
        self._revoker: Optional[Revoker] = None
        self._subscription: Optional[RedisSubscription] = None
        self._catchingUp: Optional[Deferred[int]] = None
        self._retry: Optional[IDelayedCall] = None
        self._stopped = False

    @property
    def client(self) -> RedisClient:
        return self._client

    @property
    def subscription(self) -> Optional[RedisSubscription]:
        return self._subscription

    @property
    def subscribed(self) -> bool:
        """
        Whether the subscription is in place now.
        """
        return self._subscription is not None and self._subscription.subscribed

    @property
    def catchingUp(self) -> bool:
        """
        Whether the recorded revocations are being read.
        """
        return self._catchingUp is not None

    # --- sending -------------------------------------------------------------------------

    def announce(self, revocation: Revocation) -> "Deferred[bool]":
        event = encodeEvent(revocation)
        member = _member(revocation)
        when = float(revocation.time)
        d = self._client.eval(
            _RECORD,
            [self.recordKey],
            [member, repr(when), repr(when - self.horizon),
             str(int(self.horizon * 1000)), self.channel, event],
        )
        return d.addCallback(lambda _: True)

    # --- receiving --------------------------------------------------------------------

    def _received(self, message: Any) -> None:
        if self._revoker is not None:
            self._revoker.received(message)

    def _subscribed(self) -> None:
        self.catchUp()

    def catchUp(self) -> "Deferred[int]":
        """
        Read the recorded revocations and hand them to the revoker.

        @return: fires with the number of sessions ended; never fails (it
            tries again later while Redis does not answer).
        """
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        now = self._clock.seconds()
        d: Deferred[Any] = self._client.eval(
            _RECENT, [self.recordKey], [repr(float(now - self.horizon)), CATCHUP_LIMIT]
        )
        self._catchingUp = d

        def apply(flat: Any) -> int:
            revocations = []
            bad = 0
            for i in range(0, len(flat) - 1, 2):
                member, score = flat[i], flat[i + 1]
                try:
                    when = float(score)
                    if not math.isfinite(when):
                        raise ValueError("not a time")
                    revocations.append(_fromMember(str(member), when))
                except ValueError:
                    bad += 1
            if bad:
                self.log.warn("ignored {n} malformed recorded revocations", n=bad)
            if self._revoker is None:
                return 0
            return self._revoker.catchUp(revocations)

        def failed(f: Failure) -> int:
            if self._stopped:
                return 0
            self.log.warn(
                "catching up on revocations failed, trying again in {delay}s: {error}",
                delay=CATCHUP_RETRY, error=f.getErrorMessage(),
            )
            self._retry = self._clock.callLater(CATCHUP_RETRY, self.catchUp)
            return 0

        def done(result: Any) -> Any:
            if self._catchingUp is d:
                self._catchingUp = None
            return result

        return d.addCallbacks(apply, failed).addBoth(done)

    # --- life cycle -------------------------------------------------------------------

    def start(self, revoker: Revoker) -> None:
        """
        Subscribe (again, after L{stop}); catch up once subscribed.
        """
        self._revoker = revoker
        if self._subscription is None:
            self._stopped = False
            self._subscription = self._client.subscribe(
                self.channel, self._received, self._subscribed, keepalive=self.keepalive
            )

    def stop(self) -> "Deferred[None]":
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._catchingUp is not None:
            self._catchingUp.cancel()
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return succeed(None)
        return subscription.close()


__all__ = ["Revoker", "Revocation", "RevocationTransport", "LocalTransport",
           "RedisTransport", "parseEvent", "encodeEvent", "MalformedEvent", "KINDS",
           "TOKENS", "SESSIONS", "SUBSCRIBER", "PUBLISHERS", "HORIZON_MARGIN"]
