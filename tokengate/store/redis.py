# -*- test-case-name: tests.interop.test_store_redis -*-
"""
The cluster token store: Redis, through the shared client layer
(L{tokengate.redisclient.RedisClient}).

Every node of a cluster points at the same Redis (see
L{tokengate.redisclient} for what is supported).  A redemption is one Lua
script, so two requests, two processes or two nodes can never both redeem
one token.

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
hour) after its expireDate, so a node that never runs C{purgeExpired}
cannot fill Redis with token bodies; until then a late redemption is told
EXPIRED rather than UNKNOWN, like the other stores.  (When expireDate + grace
is already in the past by Redis' clock when the token is added, no Redis
expiry is set and only C{purgeExpired} removes it.)  The indexes have no
Redis expiry: C{purgeExpired(now)} walks C{{P}exp} up to C{now} in batches
of C{batch} members, deletes the hashes still there and removes the index
entries in every case, including those whose hash Redis has already dropped
(the C{exp} member names the stream index, so no hash is needed for that).
C{listStream} and C{revokeStream} also drop index entries whose hash is
gone.  A stream whose index becomes empty leaves its app's set.

Costs.  add, redeem: O(1) (plus O(log n) index updates).  revokeStream and
deleteApp: batches of C{batch} tokens, one script each, so Redis is never
blocked long; they are not atomic as a whole (tokens minted meanwhile may or
may not go).  listStream: one script reading offset + size live entries
(plus the dead ones it removes on the way).  purgeExpired: batches.

Failures.  Every call fails with L{StoreUnavailable} within the Redis
client's C{timeout} (default 2 seconds) when Redis cannot be reached or does
not answer: the connections, deadlines and reconnection are the shared
Redis client layer's (L{tokengate.redisclient}), and its
L{RedisUnavailable} is answered as L{StoreUnavailable}.

A redemption that times out may still have been executed by Redis: the
token is then spent and the request refused, which fails closed.
C{close()} fails every later call with L{StoreUnavailable}; a store that
owns its client (L{RedisTokenStore.open}, L{RedisTokenStore.fromURL}) also
closes the client, which fails the pending calls at once.  A client shared
with the revocation service is closed by the composition root.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence
from urllib.parse import quote, unquote

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from tokengate.redisclient import (
    RedisClient,
    RedisUnavailable,
    parseRedisURL,
    unknownParameters,
)
from tokengate.store import ITokenStore, StoreUnavailable
from tokengate.tokens import Outcome, Probe, StoredToken

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


@implementer(ITokenStore)
class RedisTokenStore:
    """
    An L{ITokenStore} in Redis.  See the module docstring.
    """

    name = "redis"

    def __init__(
        self,
        client: RedisClient,
        *,
        grace: Optional[float] = 3600,
        batch: int = 500,
        ownsClient: bool = False,
    ) -> None:
        """
        @param client: the Redis client layer (its prefix names every key).
        @param grace: seconds after expireDate when Redis drops a token by
            itself; C{None} for never (only L{purgeExpired} does).
        @param batch: tokens per script when revoking, purging or deleting
            an application.
        @param ownsClient: whether L{close} also closes the client (else
            whoever opened the client closes it).
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self._client = client
        self._prefix = client.prefix
        self._grace = grace
        self._batch = int(batch)
        self._ownsClient = ownsClient
        self._closed = False

    @classmethod
    def open(cls, host: str, port: int, reactor: Any, *, grace: Optional[float] = 3600,
             batch: int = 500, **clientSettings: Any) -> "RedisTokenStore":
        """
        A store on a client of its own to C{host:port}.

        @param clientSettings: the other fields of
            L{tokengate.redisclient.RedisSettings} (prefix, timeout, db...).
        """
        from tokengate.redisclient import RedisSettings

        client = RedisClient(reactor, RedisSettings(host=host, port=port, **clientSettings))
        return cls(client, grace=grace, batch=batch, ownsClient=True)

    @staticmethod
    def options(rest: dict[str, str]) -> dict[str, Any]:
        """
        The store's own parameters from the query of a Redis URL (C{grace},
        C{none} for no Redis expiry, and C{batch}), removed from C{rest}.
        """
        options: dict[str, Any] = {}
        if "batch" in rest:
            options["batch"] = int(rest.pop("batch"))
        if "grace" in rest:
            g = rest.pop("grace")
            options["grace"] = None if g.lower() == "none" else float(g)
        return options

    @classmethod
    def onClient(cls, url: str, client: RedisClient) -> "RedisTokenStore":
        """
        A store on a client already opened for C{url} (the composition
        root's shared client): the store's parameters of the URL apply.

        @raise ValueError: if the URL is bad.
        """
        _, rest = parseRedisURL(url)
        options = cls.options(rest)
        unknownParameters(rest)
        return cls(client, **options)

    @classmethod
    def fromURL(cls, url: str, reactor: Any, **overrides: Any) -> "RedisTokenStore":
        """
        A store on a client of its own, from
        C{redis://[[user]:password@]host[:port][/db]}.

        Query parameters: the client's (C{prefix}, C{timeout}, C{poolsize},
        C{reconnectMaxDelay}, C{ca}: L{tokengate.redisclient.parseRedisURL})
        and the store's (C{grace}, C{batch}).  Keyword arguments override.

        @raise ValueError: if the URL is bad.
        """
        storeOverrides: dict[str, Any] = {
            k: overrides.pop(k) for k in ("grace", "batch") if k in overrides
        }
        settings, rest = parseRedisURL(url, **overrides)
        options = cls.options(rest)
        unknownParameters(rest)
        options.update(storeOverrides)
        return cls(RedisClient(reactor, settings), ownsClient=True, **options)

    @property
    def client(self) -> RedisClient:
        return self._client

    @property
    def prefix(self) -> str:
        """
        The prefix of every key of this store.
        """
        return self._prefix

    def __repr__(self) -> str:
        return "<RedisTokenStore on {!r}>".format(self._client)

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

    # --- calls ----------------------------------------------------------------

    def _unavailable(self, failure: Failure) -> Failure:
        failure.trap(RedisUnavailable)
        return Failure(StoreUnavailable(failure.getErrorMessage()))

    def _call(self, d: "Deferred[Any]") -> "Deferred[Any]":
        return d.addErrback(self._unavailable)

    def _eval(self, script: str, keys: list[str], args: list[Any]) -> "Deferred[Any]":
        if self._closed:
            return fail(StoreUnavailable("the token store was closed"))
        return self._call(self._client.eval(script, keys, args))

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
            total += int(deleted)
            if seen < self._batch:
                return total

    def revokeStream(self, app: str, streamId: str) -> "Deferred[int]":
        return Deferred.fromCoroutine(self._revoke(app, streamId))

    def listStream(
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
            total += int(deleted)
            if seen < self._batch:
                return total

    def purgeExpired(self, now: float) -> "Deferred[int]":
        return Deferred.fromCoroutine(self._purge(now))

    async def _deleteApp(self, app: str) -> int:
        if self._closed:
            raise StoreUnavailable("the token store was closed")
        streams = await self._call(
            self._client.call(lambda conn: conn.smembers(self._app(app)))
        )
        total = 0
        for qstream in sorted(streams):
            total += await self._revoke(app, unquote(qstream, errors="surrogatepass"))
        return total

    def deleteApp(self, app: str) -> "Deferred[int]":
        return Deferred.fromCoroutine(self._deleteApp(app))

    def close(self) -> "Deferred[None]":
        """
        Refuse later calls; close the client if the store owns it.
        """
        if self._closed:
            return succeed(None)
        self._closed = True
        if self._ownsClient:
            return self._client.close()
        return succeed(None)
