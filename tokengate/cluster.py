# -*- test-case-name: tests.test_cluster -*-
"""
Revocation across a cluster.

The REST revocations (C{DELETE .../tokens}, C{DELETE .../sessions}) go
through a L{RevocationBus}, which always acts on this node at once and
tells the other nodes of the cluster:

* L{RevocationBus} (memory and SQLite stores): this node only;
* L{RedisRevocationBus} (Redis store): one Lua script records the
  revocation in Redis and PUBLISHes it on a channel; every node SUBSCRIBEs
  to that channel on a dedicated connection (the store's address, TLS and
  credentials) and applies the events of the other nodes.

Events are JSON objects::

    {"v": 1, "kind": "tokens" | "sessions", "app": ..., "streamId": ...,
     "time": <unix seconds, the revoking node's clock>, "origin": <node id>}

A node ignores its own events (C{origin} is random per process).  An event
that is too long, not JSON, of an unknown kind or version, or whose
application is not one of this node's, is dropped and counted (nothing of it
is logged but its size).

Pub/sub is fire-and-forget: a node whose subscription is down misses the
events published meanwhile.  So every revocation is also kept in a sorted
set, member C{"{kind}:{q(app)}:{q(streamId)}"}, score the time::

    {P}revoked                ZSET  (entries older than the longest
                                    lifetime of a playback credential are
                                    dropped; the key expires after it)

and each time a node's subscription is (again) in place it reads that set
and ends what was admitted before each recorded time: the stream's HTTP
playback sessions (their credentials are refused), and its players
("sessions") or its token-admitted sessions ("tokens").  Catching up uses
the revoking node's clock: keep the nodes' clocks in sync (NTP), as
credential expiry already requires.

The channel is C{{P}revocations:{db}}: pub/sub ignores the database number,
so the channel names it.

When Redis is unreachable, a revocation still acts on this node, the REST
call answers as before (within the store's timeout), and the failure is
counted (C{tokengate_cluster_revocations_total{direction="failed"}}) and
logged: the other nodes learn nothing of it, except that their HTTP
playback credentials and token sessions were not ended.
"""

from __future__ import annotations

import json
import math
import secrets
from typing import Any, Optional
from urllib.parse import quote, unquote

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from tokengate.logsafe import Logger

TOKENS = "tokens"
SESSIONS = "sessions"
KINDS = (TOKENS, SESSIONS)
VERSION = 1

#: longest event accepted, bytes
MAX_EVENT_BYTES = 4096
#: longest application or stream id in an event
MAX_NAME_LENGTH = 1024
#: most recorded revocations read when catching up
CATCHUP_LIMIT = 10_000
#: seconds between attempts to catch up while the store does not answer
CATCHUP_RETRY = 5.0

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


class MalformedEvent(ValueError):
    """
    A revocation event that is not one.
    """


def parse_event(message: Any) -> dict[str, Any]:
    """
    The fields of a revocation event, checked.

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
    return {
        "kind": kind,
        "app": event["app"],
        "streamId": event["streamId"],
        "time": float(when),
        "origin": event["origin"],
    }


class RevocationBus:
    """
    Applies REST revocations on this node.  Subclasses also tell the other
    nodes of a cluster.
    """

    log = Logger()

    def __init__(self, server: Any) -> None:
        self._server = server
        self._counter = server.metrics.counter(
            "tokengate_cluster_revocations",
            "Revocation events sent to, received from, and failed to reach the "
            "other nodes of the cluster, or received malformed",
            ["direction"],
        )
        #: this process' id in revocation events
        self.nodeId = secrets.token_hex(8)

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
        now = self._server.clock.seconds()
        kicked = self.endTokenSessions(app, streamId)
        return self._announce(TOKENS, app, streamId, now).addCallback(lambda _: kicked)

    def revokeSessions(self, app: str, streamId: str) -> "Deferred[int]":
        """
        End every viewing session of the stream started up to now, here at
        once and on the other nodes.

        @return: as L{revokeTokens}.
        """
        now = self._server.clock.seconds()
        kicked = self.endViewingSessions(app, streamId, now)
        return self._announce(SESSIONS, app, streamId, now).addCallback(lambda _: kicked)

    # --- acting on this node ----------------------------------------------------

    def endTokenSessions(self, app: str, streamId: str, before: Optional[float] = None) -> int:
        """
        End the stream's sessions that a token admitted (up to C{before}).
        """
        registry = self._server.gate.registry
        return registry.kick(
            (
                g
                for g in registry.grants(app, streamId)
                if g.kind != "none" and (before is None or g.started <= before)
            ),
            "revoked",
        )

    def endViewingSessions(
        self, app: str, streamId: str, when: float, onlyBefore: bool = False
    ) -> int:
        """
        End the stream's players and refuse its HTTP playback sessions
        started up to C{when} (every player when not C{onlyBefore}).
        """
        registry = self._server.gate.registry
        players = [
            g
            for g in registry.grants(app, streamId)
            if g.action == "play" and (not onlyBefore or g.started <= when)
        ]
        kicked = registry.kick(players, "revoked")
        self._server.signer.revokeStream(app, streamId, when)
        return kicked

    def _announce(self, kind: str, app: str, streamId: str, when: float) -> "Deferred[None]":
        return succeed(None)

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        pass

    def stop(self) -> "Deferred[None]":
        return succeed(None)


class RedisRevocationBus(RevocationBus):
    """
    A L{RevocationBus} over the Redis of a L{RedisTokenStore}.
    """

    def __init__(self, server: Any, store: Any, keepalive: float = 15.0) -> None:
        super().__init__(server)
        self._store = store
        self._keepalive = keepalive
        self.channel = "{}revocations:{}".format(store.prefix, store.db)
        self.recordKey = store.prefix + "revoked"
        self._subscription: Any = None
        self._catchingUp: Optional[Deferred[Any]] = None
        self._retry: Any = None
        self._stopped = False

    def horizon(self) -> float:
        """
        Seconds a revocation matters: the longest life of a playback
        credential, and a margin for clocks.
        """
        signer = self._server.signer
        return max(signer.idle, signer.vodIdle) + 60.0

    # --- sending -------------------------------------------------------------------------

    def _announce(self, kind: str, app: str, streamId: str, when: float) -> "Deferred[None]":
        event = json.dumps(
            {"v": VERSION, "kind": kind, "app": app, "streamId": streamId,
             "time": when, "origin": self.nodeId},
            separators=(",", ":"),
        )
        if len(event.encode("utf-8", "surrogatepass")) > MAX_EVENT_BYTES:
            self.count("failed")
            self.log.warn("revocation of a stream with a too long name not propagated")
            return succeed(None)
        horizon = self.horizon()
        member = "{}:{}:{}".format(kind, _q(app), _q(streamId))
        d = self._store.eval(
            _RECORD,
            [self.recordKey],
            [member, repr(float(when)), repr(float(when - horizon)),
             str(int(horizon * 1000)), self.channel, event],
        )

        def sent(_: Any) -> None:
            self.count("sent")

        def failed(f: Failure) -> None:
            self.count("failed")
            self.log.warn(
                "revoking {kind} of {app}/{stream} acted on this node only: "
                "telling the cluster failed: {error}",
                kind=kind, app=app, stream=streamId, error=f.getErrorMessage(),
            )

        return d.addCallbacks(sent, failed)

    # --- receiving --------------------------------------------------------------------

    def received(self, message: Any) -> None:
        """
        Apply an event of the channel.
        """
        try:
            event = parse_event(message)
        except MalformedEvent as e:
            self.count("malformed")
            self.log.warn("ignored a malformed revocation event: {why}", why=str(e))
            return
        if event["origin"] == self.nodeId:
            return
        self.count("received")
        app, streamId = event["app"], event["streamId"]
        if app not in self._server.apps:
            return
        if event["kind"] == TOKENS:
            n = self.endTokenSessions(app, streamId)
        else:
            when = max(event["time"], self._server.clock.seconds())
            n = self.endViewingSessions(app, streamId, when)
        self.log.info(
            "{kind} of {app}/{stream} revoked by another node: {n} sessions ended here",
            kind=event["kind"], app=app, stream=streamId, n=n,
        )

    def _subscribed(self) -> None:
        self.catchUp()

    def catchUp(self) -> "Deferred[int]":
        """
        Apply the recorded revocations (after missing events).

        @return: fires with the number of sessions ended; never fails (it
            tries again later while the store does not answer).
        """
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        now = self._server.clock.seconds()
        d = self._store.eval(
            _RECENT, [self.recordKey], [repr(float(now - self.horizon())), CATCHUP_LIMIT]
        )
        self._catchingUp = d

        def apply(flat: Any) -> int:
            n = 0
            bad = 0
            for i in range(0, len(flat) - 1, 2):
                member, score = flat[i], flat[i + 1]
                try:
                    kind, qapp, qstream = str(member).split(":")
                    when = float(score)
                    app = unquote(qapp, errors="surrogatepass")
                    streamId = unquote(qstream, errors="surrogatepass")
                except ValueError:
                    bad += 1
                    continue
                if kind not in KINDS or not math.isfinite(when):
                    bad += 1
                    continue
                if app not in self._server.apps:
                    continue
                if kind == TOKENS:
                    n += self.endTokenSessions(app, streamId, before=when)
                else:
                    n += self.endViewingSessions(app, streamId, when, onlyBefore=True)
            if bad:
                self.log.warn("ignored {n} malformed recorded revocations", n=bad)
            if n:
                self.log.info("caught up on missed revocations: {n} sessions ended", n=n)
            return n

        def failed(f: Failure) -> int:
            if self._stopped:
                return 0
            self.log.warn(
                "catching up on revocations failed, trying again in {delay}s: {error}",
                delay=CATCHUP_RETRY, error=f.getErrorMessage(),
            )
            self._retry = self._server.clock.callLater(CATCHUP_RETRY, self.catchUp)
            return 0

        def done(result: Any) -> Any:
            if self._catchingUp is d:
                self._catchingUp = None
            return result

        return d.addCallbacks(apply, failed).addBoth(done)

    # --- life cycle -------------------------------------------------------------------

    @property
    def subscribed(self) -> bool:
        return self._subscription is not None and self._subscription.subscribed

    def start(self) -> None:
        """
        Subscribe (again, after L{stop}); catch up once subscribed.
        """
        if self._subscription is None:
            self._stopped = False
            self._subscription = self._store.subscribe(
                self.channel, self.received, self._subscribed, keepalive=self._keepalive
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


def revocation_bus(server: Any) -> RevocationBus:
    """
    The bus for a server's store: cluster-wide with Redis, else local.
    """
    store = server.store
    if callable(getattr(store, "subscribe", None)) and callable(getattr(store, "eval", None)):
        return RedisRevocationBus(server, store)
    return RevocationBus(server)


__all__ = ["RevocationBus", "RedisRevocationBus", "revocation_bus", "parse_event",
           "MalformedEvent", "KINDS"]
