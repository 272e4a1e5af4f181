# -*- test-case-name: tests.test_store_redis -*-
"""
The cluster token store: Redis, through txredisapi.

Every node of a cluster points at the same Redis: a standalone server (5.0
or later), or a primary at a fixed address.  Neither Redis Cluster (the
scripts below touch keys that they compute) nor Sentinel discovery is
supported.  A redemption is one Lua script, so two
requests, two processes or two nodes can never both redeem one token.

Key layout, under a prefix (default C{tokengate:}); C{q(x)} is C{x}
percent-encoded with no safe characters, so C{:} never occurs inside a
component and C{app="a:b", stream="c"} cannot collide with C{app="a",
stream="b:c"}::

    {P}t:{digest}             HASH  app, hint, streamId, expireDate, type,
                                    roomId (only when not None),
                                    ix = "{q(app)}:{q(streamId)}"
                                    PEXPIREAT (expireDate + grace) * 1000
    {P}s:{q(app)}:{q(stream)} ZSET  digest -> minting sequence number
    {P}a:{q(app)}             SET   q(streamId) of the app's streams
    {P}exp                    ZSET  "{q(app)}:{q(streamId)}:{digest}"
                                    -> expireDate
    {P}seq                    STRING the minting sequence counter

The token itself is never sent to Redis, only its digest.

Expiry.  Redis deletes a token hash by itself C{grace} seconds (default one
hour) after its expireDate, so a node that never runs C{purge_expired}
cannot fill Redis with token bodies; until then a late redemption is told
EXPIRED rather than UNKNOWN, like the other stores.  (When expireDate + grace
is already in the past by Redis' clock when the token is added, no Redis
expiry is set and only C{purge_expired} removes it.)  The indexes have no
Redis expiry: C{purge_expired(now)} walks C{{P}exp} up to C{now} in batches
of C{batch} members, deletes the hashes still there and removes the index
entries in every case, including those whose hash Redis has already dropped
(the C{exp} member names the stream index, so no hash is needed for that).
C{list_stream} and C{revoke_stream} also drop index entries whose hash is
gone.  A stream whose index becomes empty leaves its app's set.

Costs.  add, redeem: O(1) (plus O(log n) index updates).  revoke_stream and
delete_app: batches of C{batch} tokens, one script each, so Redis is never
blocked long; they are not atomic as a whole (tokens minted meanwhile may or
may not go).  list_stream: one script reading offset + size live entries
(plus the dead ones it removes on the way).  purge_expired: batches.

Failures.  Every call fails with L{StoreUnavailable} within C{timeout}
seconds (default 2) when Redis cannot be reached or does not answer:

* while no connection of the pool is up, a call waits for one, but at most
  until its deadline; once the pool has been down for longer than
  C{timeout}, calls fail at once instead of queueing (txredisapi would
  otherwise queue them until Redis comes back);
* each call carries a deadline (L{Deferred.addTimeout} on the reactor), and
  txredisapi's own C{replyTimeout} aborts a connection on which Redis stops
  answering (a hung or frozen server), so that it gets replaced;
* connections are re-established in the background with exponential
  back-off capped at C{reconnectMaxDelay} seconds (default 2), for ever:
  the store recovers by itself when Redis comes back.  (txredisapi gives up
  for good when AUTH or SELECT fails on a new connection, including when
  they time out against a frozen server; this store keeps retrying.)

A redemption that times out may still have been executed by Redis: the
token is then spent and the request refused, which fails closed.
C{close()} fails every pending call with L{StoreUnavailable}, cancels its
timers and disconnects.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence
from urllib.parse import parse_qs, quote, unquote, urlsplit

import txredisapi
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError as DeferredTimeout,
    fail,
    succeed,
)
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure
from zope.interface import implementer

from tokengate.logsafe import Logger
from ..tokens import Outcome, Probe, StoredToken
from . import ITokenStore, StoreUnavailable

#: Redis error prefixes that mean "cannot serve now", not "bad request".
_UNAVAILABLE_ERRORS = (
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "OOM",
    "BUSY",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "MISCONF",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "NOREPLICAS",
)

# --- Lua ---------------------------------------------------------------------

# The redemption rules of tokengate.tokens.judge, in one atomic step.
# Codes: G granted and consumed, R granted and kept (room token), U unknown,
# T wrong type, E expired, S wrong stream, W wrong room.
_REDEEM = """
-- KEYS: token hash, stream index of the probe, expiry index,
--       stream set of the probe's app
-- ARGV: app, streamId, type, roomId ('' for none), now, digest,
--       expiry index member, q(streamId)
local h = redis.call('HMGET', KEYS[1], 'app', 'type', 'expireDate',
                     'roomId', 'streamId')
if not h[1] or h[1] ~= ARGV[1] then return 'U' end
if h[2] ~= ARGV[3] then return 'T' end
if not (tonumber(ARGV[5]) < tonumber(h[3])) then return 'E' end
if h[4] and h[4] ~= '' then
  if h[5] == ARGV[2] then return 'R' end
  if ARGV[4] ~= '' and ARGV[4] == h[4] then return 'R' end
  if ARGV[4] ~= '' then return 'W' end
  return 'S'
end
if h[5] ~= ARGV[2] then return 'S' end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[6])
redis.call('ZREM', KEYS[3], ARGV[7])
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[4], ARGV[8])
end
return 'G'
"""

_OUTCOMES = {
    "G": Outcome.GRANTED,
    "R": Outcome.GRANTED,
    "U": Outcome.UNKNOWN,
    "T": Outcome.WRONG_TYPE,
    "E": Outcome.EXPIRED,
    "S": Outcome.WRONG_STREAM,
    "W": Outcome.WRONG_ROOM,
}

_ADD = """
-- KEYS: token hash, stream index, expiry index, app's stream set, sequence
-- ARGV: prefix, digest, ix, q(streamId), app, hint, streamId, expireDate,
--       type, roomId, has room ('1'/'0'), Redis expiry in ms ('' = none)
local old = redis.call('HGET', KEYS[1], 'ix')
if old then
  -- the same digest again: drop the old index entries first
  local sk = ARGV[1] .. 's:' .. old
  redis.call('ZREM', sk, ARGV[2])
  redis.call('ZREM', KEYS[3], old .. ':' .. ARGV[2])
  if redis.call('ZCARD', sk) == 0 then
    local sep = string.find(old, ':', 1, true)
    redis.call('SREM', ARGV[1] .. 'a:' .. string.sub(old, 1, sep - 1),
               string.sub(old, sep + 1))
  end
end
redis.call('DEL', KEYS[1])
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[1], 'app', ARGV[5], 'hint', ARGV[6],
           'streamId', ARGV[7], 'expireDate', ARGV[8], 'type', ARGV[9],
           'ix', ARGV[3])
if ARGV[11] == '1' then redis.call('HSET', KEYS[1], 'roomId', ARGV[10]) end
redis.call('ZADD', KEYS[2], seq, ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[8], ARGV[3] .. ':' .. ARGV[2])
redis.call('SADD', KEYS[4], ARGV[4])
if ARGV[12] ~= '' then
  local t = redis.call('TIME')
  local nowms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if tonumber(ARGV[12]) > nowms then
    redis.call('PEXPIREAT', KEYS[1], ARGV[12])
  end
end
return seq
"""

_LIST = """
-- KEYS: stream index, expiry index, app's stream set
-- ARGV: prefix, app, streamId, offset, size, ix, q(streamId)
local offset = tonumber(ARGV[4])
local want = offset + tonumber(ARGV[5])
local out = {}
local live = 0
local rank = 0
while live < want do
  local ds = redis.call('ZRANGE', KEYS[1], rank, rank + 199)
  if #ds == 0 then break end
  local gone = 0
  for _, d in ipairs(ds) do
    local h = redis.call('HMGET', ARGV[1] .. 't:' .. d, 'app', 'streamId',
                         'hint', 'expireDate', 'type', 'roomId')
    if h[1] == ARGV[2] and h[2] == ARGV[3] then
      live = live + 1
      if live > offset then
        out[#out + 1] = d
        out[#out + 1] = h[3]
        out[#out + 1] = h[4]
        out[#out + 1] = h[5]
        out[#out + 1] = h[6]
        if live >= want then break end
      end
    else
      -- the hash is gone (spent elsewhere, or expired by Redis)
      redis.call('ZREM', KEYS[1], d)
      redis.call('ZREM', KEYS[2], ARGV[6] .. ':' .. d)
      gone = gone + 1
    end
  end
  rank = rank + #ds - gone
end
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[7])
end
return out
"""

_REVOKE = """
-- KEYS: stream index, expiry index, app's stream set
-- ARGV: prefix, app, streamId, ix, q(streamId), batch
local ds = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[6]) - 1)
local n = 0
for _, d in ipairs(ds) do
  local tk = ARGV[1] .. 't:' .. d
  local h = redis.call('HMGET', tk, 'app', 'streamId')
  if h[1] == ARGV[2] and h[2] == ARGV[3] then
    redis.call('DEL', tk)
    n = n + 1
  end
  redis.call('ZREM', KEYS[1], d)
  redis.call('ZREM', KEYS[2], ARGV[4] .. ':' .. d)
end
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[5])
end
return {n, #ds}
"""

_PURGE = """
-- KEYS: expiry index
-- ARGV: prefix, now, batch
local now = tonumber(ARGV[2])
local ms = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2],
                      'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for _, m in ipairs(ms) do
  local a = string.find(m, ':', 1, true)
  local b = string.find(m, ':', a + 1, true)
  local ix = string.sub(m, 1, b - 1)
  local d = string.sub(m, b + 1)
  local tk = ARGV[1] .. 't:' .. d
  local h = redis.call('HMGET', tk, 'ix', 'expireDate')
  if h[1] == ix and now < tonumber(h[2]) then
    -- not expired after all: put it back in its place
    redis.call('ZADD', KEYS[1], h[2], m)
  else
    if h[1] == ix then
      redis.call('DEL', tk)
      n = n + 1
    end
    local sk = ARGV[1] .. 's:' .. ix
    redis.call('ZREM', sk, d)
    redis.call('ZREM', KEYS[1], m)
    if redis.call('ZCARD', sk) == 0 then
      redis.call('SREM', ARGV[1] .. 'a:' .. string.sub(m, 1, a - 1),
                 string.sub(m, a + 1, b - 1))
    end
  end
end
return {n, #ms}
"""


def _q(s: str) -> str:
    return quote(s, safe="", errors="surrogatepass")


def _number(s: str) -> Any:
    try:
        return int(s)
    except ValueError:
        return float(s)


def _lua_number(x: float) -> str:
    x = float(x)
    if math.isnan(x):
        # "not nan < expireDate" holds for every token: like +inf
        return "inf"
    return repr(x)


class _PoolFactory(txredisapi.RedisFactory):
    """
    txredisapi's pool factory, telling the store when connections come and
    go, and never giving up reconnecting.
    """

    def __init__(self, store: "RedisTokenStore", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store = store

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self._store._connectionUp(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self._store._connectionDown(conn)

    def stopTrying(self) -> "Deferred[None]":
        # Called by txredisapi when AUTH or SELECT fails on a new connection
        # (also when they merely time out against a frozen server): keep
        # retrying with back-off instead, so that the store recovers.
        return succeed(None)

    def connectionError(self, why: str) -> None:
        self._store._lastError = why
        super().connectionError(why)


def _startFactory(factory: Any, endpoint: Any, reconnectMaxDelay: float) -> None:
    factory.maxDelay = reconnectMaxDelay
    factory.initialDelay = min(factory.initialDelay, reconnectMaxDelay)
    # fires (or fails) once; nobody else waits on it with a lazy pool
    factory.deferred.addErrback(lambda f: None)
    factory.startConnecting(endpoint)


class _SubscriberProtocol(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory._subscription._received(message)


class _SubscriberFactory(txredisapi.RedisFactory):
    """
    One subscriber connection, never giving up reconnecting.
    """

    protocol = _SubscriberProtocol

    def __init__(self, subscription: "RedisSubscription", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._subscription = subscription

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self._subscription._connectionUp(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self._subscription._connectionDown(conn)

    def stopTrying(self) -> "Deferred[None]":
        # see _PoolFactory.stopTrying
        return succeed(None)


class RedisSubscription:
    """
    A pub/sub subscription of L{RedisTokenStore.subscribe}.

    When a connection is ready (AUTH and SELECT done) it sends SUBSCRIBE;
    once Redis confirms, C{onSubscribed} is called.  A SUBSCRIBE or PING not
    answered within the store's timeout drops the connection, which is then
    replaced like any lost one.
    """

    log = Logger()

    def __init__(
        self,
        store: "RedisTokenStore",
        channel: str,
        onMessage: Callable[[Any], None],
        onSubscribed: Callable[[], None],
        keepalive: float,
    ) -> None:
        self._store = store
        self._reactor = store._reactor
        self.channel = channel
        self._onMessage = onMessage
        self._onSubscribed = onSubscribed
        self._keepalive = keepalive
        self._closed = False
        self._conn: Any = None
        self._ping: Any = None
        self._lostOnce = False
        #: whether the subscription is in place now
        self.subscribed = False
        factory = _SubscriberFactory(
            self,
            uuid="{}:{}".format(store._host, store._port),
            dbid=store._db or None,
            poolsize=1,
            isLazy=True,
            charset="utf-8",
            password=store._password,
            replyTimeout=store._timeout,
            convertNumbers=False,
            username=store._username,
        )
        self._factory = factory
        _startFactory(factory, store._endpoint(), store._reconnectMaxDelay)

    def _connectionUp(self, conn: Any) -> None:
        if self._closed:
            conn.transport.loseConnection()
            return
        self._conn = conn
        d = conn.subscribe(self.channel)
        d.addTimeout(self._store._timeout, self._reactor)

        def subscribed(_: Any) -> None:
            if self._closed or self._conn is not conn:
                return
            self.subscribed = True
            if self._lostOnce:
                self.log.info(
                    "redis subscription to {channel}: in place again",
                    channel=self.channel,
                )
            self._schedulePing(conn)
            try:
                self._onSubscribed()
            except Exception:
                self.log.failure("handling a new redis subscription failed")

        def failed(f: Failure) -> None:
            if self._closed or self._conn is not conn:
                return
            self.log.warn(
                "redis subscription to {channel} failed: {error}",
                channel=self.channel,
                error=f.getErrorMessage(),
            )
            self._drop(conn)

        d.addCallbacks(subscribed, failed)

    def _drop(self, conn: Any) -> None:
        transport = getattr(conn, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _schedulePing(self, conn: Any) -> None:
        if self._keepalive > 0 and not self._closed:
            self._ping = self._reactor.callLater(self._keepalive, self._sendPing, conn)

    def _sendPing(self, conn: Any) -> None:
        self._ping = None
        if self._closed or self._conn is not conn:
            return
        try:
            d = conn.ping()
        except txredisapi.ConnectionError:
            return
        d.addTimeout(self._store._timeout, self._reactor)

        def answered(_: Any) -> None:
            if self._conn is conn:
                self._schedulePing(conn)

        def unanswered(f: Failure) -> None:
            if self._conn is conn and not self._closed:
                self.log.warn(
                    "redis subscription to {channel}: no answer to PING, reconnecting",
                    channel=self.channel,
                )
                self._drop(conn)

        d.addCallbacks(answered, unanswered)

    def _connectionDown(self, conn: Any) -> None:
        if self._conn is not conn:
            return
        self._conn = None
        self.subscribed = False
        if self._ping is not None and self._ping.active():
            self._ping.cancel()
        self._ping = None
        if not self._closed:
            self._lostOnce = True
            self.log.warn(
                "redis subscription to {channel}: connection lost, reconnecting",
                channel=self.channel,
            )

    def _received(self, message: Any) -> None:
        if self._closed:
            return
        try:
            self._onMessage(message)
        except Exception:
            self.log.failure("handling a message on {channel} failed",
                             channel=self.channel)

    def close(self) -> "Deferred[None]":
        """
        Stop listening and reconnecting; fires once the connection is closed.
        """
        if self._closed:
            return succeed(None)
        self._closed = True
        self.subscribed = False
        if self._ping is not None and self._ping.active():
            self._ping.cancel()
        self._ping = None
        d = self._factory.disconnect()
        d.addErrback(lambda f: self.log.failure("closing a redis subscription", f))
        return d.addCallback(lambda _: None)


@implementer(ITokenStore)
class RedisTokenStore:
    """
    An L{ITokenStore} in Redis.  See the module docstring.
    """

    name = "redis"
    log = Logger()

    def __init__(
        self,
        host: str,
        port: int,
        reactor: Any,
        *,
        db: int = 0,
        password: Optional[str] = None,
        username: Optional[str] = None,
        prefix: str = "tokengate:",
        timeout: float = 2.0,
        poolsize: int = 2,
        grace: Optional[float] = 3600,
        batch: int = 500,
        reconnectMaxDelay: float = 2.0,
        tls: Any = None,
    ) -> None:
        """
        @param timeout: seconds within which every call answers or fails with
            L{StoreUnavailable}.
        @param grace: seconds after expireDate when Redis drops a token by
            itself; C{None} for never (only L{purge_expired} does).
        @param tls: an C{IOpenSSLClientConnectionCreator} (for instance from
            C{optionsForClientTLS}) to speak TLS, or C{None}.
        """
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if poolsize < 1 or batch < 1:
            raise ValueError("poolsize and batch must be at least 1")
        self._host = host
        self._port = port
        self._reactor = reactor
        self._prefix = prefix
        self._db = int(db)
        self._password = password
        self._username = username
        self._tls = tls
        self._reconnectMaxDelay = reconnectMaxDelay
        self._timeout = float(timeout)
        self._grace = grace
        self._batch = int(batch)
        self._closed = False
        self._pending: set[Deferred[Any]] = set()
        self._waiters: list[Deferred[Any]] = []
        self._next = 0
        self._lastError: Optional[str] = None
        # None while a connection is up; else since when none has been
        self._downSince: Optional[float] = reactor.seconds()
        self._everConnected = False

        factory = _PoolFactory(
            self,
            uuid="{}:{}".format(host, port),
            # a new connection is on database 0: no SELECT needed for it
            dbid=int(db) or None,
            poolsize=int(poolsize),
            isLazy=True,
            charset="utf-8",
            password=password,
            replyTimeout=self._timeout,
            convertNumbers=False,
            username=username,
        )
        self._factory = factory
        _startFactory(factory, self._endpoint(), reconnectMaxDelay)

    def _endpoint(self) -> Any:
        endpoint: Any = HostnameEndpoint(
            self._reactor, self._host, self._port, timeout=self._timeout
        )
        if self._tls is not None:
            endpoint = wrapClientTLS(self._tls, endpoint)
        return endpoint

    @classmethod
    def fromURL(cls, url: str, reactor: Any, **overrides: Any) -> "RedisTokenStore":
        """
        Build a store from C{redis://[[user]:password@]host[:port][/db]}.

        Query parameters: C{prefix}, C{timeout}, C{poolsize}, C{grace}
        (C{none} for no Redis expiry).  C{rediss://} speaks TLS and checks
        the server's certificate against the platform's trust store, or the
        PEM file named by the C{ca} parameter.  Keyword arguments override.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("not a redis:// or rediss:// URL: {!r}".format(url))
        host = parts.hostname or "localhost"
        try:
            port = parts.port or 6379
        except ValueError as e:
            raise ValueError("bad port in redis URL: {}".format(e)) from None
        path = parts.path.strip("/")
        try:
            db = int(path) if path else 0
        except ValueError:
            raise ValueError(
                "bad database number {!r} in redis URL".format(path)
            ) from None
        options: dict[str, Any] = {
            "db": db,
            "password": unquote(parts.password) if parts.password else None,
            "username": unquote(parts.username) if parts.username else None,
        }
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        ca = query.pop("ca", None)
        for key, convert in (
            ("prefix", str),
            ("timeout", float),
            ("poolsize", int),
            ("batch", int),
            ("reconnectMaxDelay", float),
        ):
            if key in query:
                options[key] = convert(query.pop(key))
        if "grace" in query:
            g = query.pop("grace")
            options["grace"] = None if g.lower() == "none" else float(g)
        if query:
            raise ValueError(
                "unknown redis URL parameters: {}".format(", ".join(sorted(query)))
            )
        if parts.scheme == "rediss":
            from twisted.internet.ssl import Certificate, optionsForClientTLS

            trust = None
            if ca is not None:
                with open(ca, "rb") as f:
                    trust = Certificate.loadPEM(f.read())
            options["tls"] = optionsForClientTLS(host, trustRoot=trust)
        elif ca is not None:
            raise ValueError("the ca parameter needs a rediss:// URL")
        options.update(overrides)
        return cls(host, port, reactor, **options)

    @property
    def prefix(self) -> str:
        """
        The prefix of every key (and channel) of this store.
        """
        return self._prefix

    @property
    def db(self) -> int:
        return self._db

    @property
    def timeout(self) -> float:
        return self._timeout

    def __repr__(self) -> str:
        return "<RedisTokenStore {}:{} prefix={!r}>".format(
            self._host, self._port, self._prefix
        )

    # --- keys ---------------------------------------------------------------

    def _token(self, digest: str) -> str:
        return self._prefix + "t:" + digest

    def _ix(self, app: str, streamId: str) -> str:
        return _q(app) + ":" + _q(streamId)

    def _stream(self, app: str, streamId: str) -> str:
        return self._prefix + "s:" + self._ix(app, streamId)

    def _app(self, app: str) -> str:
        return self._prefix + "a:" + _q(app)

    @property
    def _expiry(self) -> str:
        return self._prefix + "exp"

    @property
    def _seq(self) -> str:
        return self._prefix + "seq"

    # --- connections --------------------------------------------------------

    def _connectionUp(self, conn: Any) -> None:
        if self._downSince is not None:
            if self._everConnected:
                self.log.info(
                    "redis token store: connected again to {host}:{port}",
                    host=self._host,
                    port=self._port,
                )
            self._downSince = None
            self._everConnected = True
            self._lastError = None
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(conn)

    def _connectionDown(self, conn: Any) -> None:
        if self._closed or self._downSince is not None:
            return
        if not any(c.connected for c in self._factory.pool):
            self._downSince = self._reactor.seconds()
            self.log.warn(
                "redis token store: lost the connection to {host}:{port}",
                host=self._host,
                port=self._port,
            )

    def _unavailable(self, why: str) -> StoreUnavailable:
        detail = "; {}".format(self._lastError) if self._lastError else ""
        return StoreUnavailable(
            "redis at {}:{}: {}{}".format(self._host, self._port, why, detail)
        )

    def _connection(self) -> "Deferred[Any]":
        """
        A live connection of the pool, as soon as there is one.
        """
        live = [c for c in self._factory.pool if c.connected]
        if live:
            self._next = (self._next + 1) % len(live)
            return succeed(live[self._next])
        down = self._downSince
        if down is not None and self._reactor.seconds() - down >= self._timeout:
            return fail(self._unavailable("not connected"))

        def cancel(d: Deferred[Any]) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        waiter: Deferred[Any] = Deferred(cancel)
        self._waiters.append(waiter)
        return waiter

    async def _roundtrip(self, send: Callable[[Any], "Deferred[Any]"]) -> Any:
        conn = await self._connection()
        try:
            inner = send(conn)
        except txredisapi.ConnectionError as e:
            raise self._unavailable(str(e)) from e
        # Not the protocol's own Deferred: cancelling that one (on our
        # deadline) would also cancel txredisapi's replyTimeout, which is
        # what drops a connection to a server that stopped answering.
        outer: Deferred[Any] = Deferred()

        def relay(result: Any) -> None:
            if not outer.called:
                if isinstance(result, Failure):
                    outer.errback(result)
                else:
                    outer.callback(result)

        inner.addBoth(relay)
        return await outer

    def _translate(self, failure: Failure) -> Failure:
        if failure.check(StoreUnavailable):
            return failure
        if failure.check(DeferredTimeout):
            return Failure(
                self._unavailable("no answer within {:g}s".format(self._timeout))
            )
        if failure.check(CancelledError):
            return Failure(self._unavailable("the token store was closed"))
        if failure.check(txredisapi.ConnectionError, ConnectionLost, ConnectionDone):
            return Failure(self._unavailable(failure.getErrorMessage()))
        if failure.check(txredisapi.ResponseError):
            message = failure.getErrorMessage()
            if message.startswith(_UNAVAILABLE_ERRORS):
                return Failure(self._unavailable(message))
        return failure

    def _call(self, send: Callable[[Any], "Deferred[Any]"]) -> "Deferred[Any]":
        """
        One round trip, answered or failed with L{StoreUnavailable} within
        the timeout.
        """
        if self._closed:
            return fail(self._unavailable("the token store was closed"))
        d = Deferred.fromCoroutine(self._roundtrip(send))
        d.addTimeout(self._timeout, self._reactor)
        self._pending.add(d)

        def done(result: Any) -> Any:
            self._pending.discard(d)
            if isinstance(result, Failure):
                return self._translate(result)
            return result

        return d.addBoth(done)

    def _eval(self, script: str, keys: list[str], args: list[Any]) -> "Deferred[Any]":
        # txredisapi sends EVALSHA once a connection has run the script,
        # and falls back to EVAL on NOSCRIPT.
        return self._call(lambda conn: conn.eval(script, keys, args))

    def eval(self, script: str, keys: list[str], args: list[Any]) -> "Deferred[Any]":
        """
        Run a Lua script on a connection of the pool, answered or failed with
        L{StoreUnavailable} within the store's timeout (for other parts of
        tokengate that keep state next to the tokens: see
        L{tokengate.cluster}).
        """
        return self._eval(script, keys, args)

    def subscribe(
        self,
        channel: str,
        onMessage: Callable[[Any], None],
        onSubscribed: Callable[[], None],
        keepalive: float = 15.0,
    ) -> "RedisSubscription":
        """
        Listen to a pub/sub channel on a dedicated connection with this
        store's settings (address, TLS, credentials), re-established with
        back-off for ever until L{RedisSubscription.close}.

        @param onMessage: called with each message (C{str}, or C{bytes}
            when it is not UTF-8).
        @param onSubscribed: called each time the subscription is (again)
            in place: messages published while it was down are lost.
        @param keepalive: seconds between PINGs that detect a dead or frozen
            connection (which is then dropped and replaced).
        """
        return RedisSubscription(self, channel, onMessage, onSubscribed, keepalive)

    # --- ITokenStore --------------------------------------------------------

    def add(self, token: StoredToken) -> "Deferred[None]":
        ix = self._ix(token.app, token.streamId)
        expireAt = ""
        if self._grace is not None:
            expireAt = str(int(math.ceil((token.expireDate + self._grace) * 1000)))
        d = self._eval(
            _ADD,
            [
                self._token(token.digest),
                self._stream(token.app, token.streamId),
                self._expiry,
                self._app(token.app),
                self._seq,
            ],
            [
                self._prefix,
                token.digest,
                ix,
                _q(token.streamId),
                token.app,
                token.hint,
                token.streamId,
                str(token.expireDate),
                token.type,
                token.roomId if token.roomId is not None else "",
                "0" if token.roomId is None else "1",
                expireAt,
            ],
        )
        return d.addCallback(lambda _: None)

    def redeem(self, digest: str, probe: Probe) -> "Deferred[Outcome]":
        d = self._eval(
            _REDEEM,
            [
                self._token(digest),
                self._stream(probe.app, probe.streamId),
                self._expiry,
                self._app(probe.app),
            ],
            [
                probe.app,
                probe.streamId,
                probe.type,
                probe.roomId or "",
                _lua_number(probe.now),
                digest,
                self._ix(probe.app, probe.streamId) + ":" + digest,
                _q(probe.streamId),
            ],
        )
        return d.addCallback(_OUTCOMES.__getitem__)

    async def _revoke(self, app: str, streamId: str) -> int:
        ix = self._ix(app, streamId)
        keys = [self._stream(app, streamId), self._expiry, self._app(app)]
        args = [self._prefix, app, streamId, ix, _q(streamId), self._batch]
        total = 0
        while True:
            deleted, seen = await self._eval(_REVOKE, keys, args)
            total += deleted
            if seen < self._batch:
                return total

    def revoke_stream(self, app: str, streamId: str) -> "Deferred[int]":
        return Deferred.fromCoroutine(self._revoke(app, streamId))

    def list_stream(
        self, app: str, streamId: str, offset: int, size: int
    ) -> "Deferred[Sequence[StoredToken]]":
        offset, size = max(0, int(offset)), max(0, int(size))
        if size == 0:
            return succeed([])
        d = self._eval(
            _LIST,
            [self._stream(app, streamId), self._expiry, self._app(app)],
            [
                self._prefix,
                app,
                streamId,
                offset,
                size,
                self._ix(app, streamId),
                _q(streamId),
            ],
        )

        def parse(flat: Sequence[Any]) -> list[StoredToken]:
            return [
                StoredToken(
                    app=app,
                    digest=flat[i],
                    hint=flat[i + 1],
                    streamId=streamId,
                    expireDate=_number(flat[i + 2]),
                    type=flat[i + 3],
                    roomId=flat[i + 4],
                )
                for i in range(0, len(flat), 5)
            ]

        return d.addCallback(parse)

    async def _purge(self, now: float) -> int:
        total = 0
        bound = _lua_number(now)
        while True:
            deleted, seen = await self._eval(
                _PURGE, [self._expiry], [self._prefix, bound, self._batch]
            )
            total += deleted
            if seen < self._batch:
                return total

    def purge_expired(self, now: float) -> "Deferred[int]":
        return Deferred.fromCoroutine(self._purge(now))

    async def _deleteApp(self, app: str) -> int:
        streams = await self._call(lambda conn: conn.smembers(self._app(app)))
        total = 0
        for qstream in sorted(streams):
            total += await self._revoke(app, unquote(qstream, errors="surrogatepass"))
        return total

    def delete_app(self, app: str) -> "Deferred[int]":
        return Deferred.fromCoroutine(self._deleteApp(app))

    def close(self) -> "Deferred[None]":
        if self._closed:
            return succeed(None)
        self._closed = True
        for d in list(self._pending):
            d.cancel()
        for w in list(self._waiters):
            w.cancel()
        d = self._factory.disconnect()
        d.addErrback(
            lambda f: self.log.failure("closing the redis token store", f)
        )
        return d.addCallback(lambda _: None)
