# -*- test-case-name: tests.interop.test_subscriber_stores -*-
"""
The cluster subscriber store: L{ISubscriberStore} in the token store's
Redis (L{tokengate.redisclient.RedisClient}), under keys of its own.

Every call that changes or counts state is one Lua script, so
L{RedisSubscriberStore.acquire} (block, replay mark, live connections,
bound, C{connected} event) is one atomic step for every node of a cluster.

Key layout, under the client's prefix C{P} (C{ix} is
C{q(app):q(streamId)}, each part percent-encoded with no safe characters, so
the subscriber id after it needs no encoding)::

    {P}u:r:{ix}           HASH  subscriberId -> record JSON
                                (L{tokengate.access.subscriberstores.recordJSON},
                                the b32Secret included)
    {P}u:o:{ix}           ZSET  subscriberId -> order of addition
    {P}u:b:{ix}           HASH  subscriberId -> "{blockedType} {untilMs}"
    {P}u:p:{ix}           HASH  subscriberId -> newest TOTP step used
                                (recorded subscribers)
    {P}u:n                STRING number of records (at most maxSubscribers)
    {P}u:seq              STRING order counter
    {P}u:l:{ix}:{sid}     HASH  leaseId -> 1 for each live connection, and
                                "step" -> newest step used; expires with
                                the leases
    {P}u:k:{leaseId}      STRING one live connection, PX leaseTTL
    {P}u:live             ZSET  "{ix}:{sid}" -> the subscribers with
                                state, as the memory store counts them
                                (at most maxSubscribers): inf for one
                                recorded with a replay mark, else when its
                                leases expire (ms, Redis' clock)
    {P}u:e:{ix}           LIST  connection events (JSON), the newest
                                MAX_EVENTS_PER_STREAM
    {P}u:es               ZSET  ix -> last write: the MAX_EVENT_STREAMS
                                streams with events (the least recently
                                written one's list goes first)
    {P}u:eseq             STRING event stream counter

Live connections.  Each is a lease key with a TTL (L{LEASE_TTL}, 30 s by
default), refreshed every third of it by the node that holds it (a
L{LoopingCall} on the store's clock) and deleted at release; counting a
subscriber's connections drops the ids whose key has expired.  A node that
dies (or loses Redis for longer than the TTL) therefore frees its
subscribers' connections within the TTL.  A holder whose lease was counted
as dead meanwhile does not take it back (that could exceed the limit): the
loss is logged and the connection goes on uncounted (its end then records
no C{disconnected} event: a release whose lease id is no longer in the live
hash writes nothing, which is also what keeps a deleted application's keys
from coming back, L{RedisSubscriberStore.deleteApp}).  An unrecorded
subscriber's state (its replay mark) expires with its leases, as in memory.

Failures.  Every call fails with L{StoreUnavailable} within the client's
timeout when Redis cannot be reached, and calls C{onError} with the
operation's name; a failed L{RedisSubscriberStore.acquire} refuses the
connection (fails closed).  A script that times out may still have run: a
lease may then have been counted for a connection that was refused; it
expires within the TTL.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence
from urllib.parse import quote

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from tokengate.access import subscribers as S
from tokengate.access.subscribers import (
    BLOCK_TYPES,
    ConnectionEvent,
    ISubscriberStore,
    Refusal,
    Revoked,
    Subscriber,
    SubscriberLease,
    SubscriberRefused,
)
from tokengate.access.subscriberstores import (
    ErrorCounter,
    eventFromJSON,
    eventJSON,
    recordFromJSON,
    recordJSON,
)
from tokengate.logsafe import Logger
from tokengate.redisclient import RedisClient, RedisUnavailable
from tokengate.store import StoreUnavailable

#: seconds a live connection's lease lasts without a refresh
LEASE_TTL = 30.0

_INT64 = 2**63 - 1

# --- Lua ---------------------------------------------------------------------

_COMMON = """
if redis.replicate_commands then redis.replicate_commands() end
local function nowMs()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The live connections of subscriber sid of stream ix: the lease ids of its
-- live hash whose key still exists (the others are dropped).  With none,
-- the hash (the replay mark of an unrecorded subscriber too) goes, and so
-- does its entry in the state index, unless it is recorded with a mark.
local function liveCount(prefix, ix, sid)
  local livekey = prefix .. 'u:l:' .. ix .. ':' .. sid
  local n = 0
  for _, f in ipairs(redis.call('HKEYS', livekey)) do
    if f ~= 'step' then
      if redis.call('EXISTS', prefix .. 'u:k:' .. f) == 1 then
        n = n + 1
      else
        redis.call('HDEL', livekey, f)
      end
    end
  end
  if n == 0 then
    redis.call('DEL', livekey)
    if redis.call('HEXISTS', prefix .. 'u:r:' .. ix, sid) == 0
        or redis.call('HEXISTS', prefix .. 'u:p:' .. ix, sid) == 0 then
      redis.call('ZREM', prefix .. 'u:live', ix .. ':' .. sid)
    end
  end
  return n
end
-- a subscriber whose state no longer stays with a record: its entry in the
-- state index lasts as long as its leases
local function unrecorded(prefix, ix, sid, ttl)
  if liveCount(prefix, ix, sid) > 0 then
    redis.call('ZADD', prefix .. 'u:live', nowMs() + tonumber(ttl), ix .. ':' .. sid)
  end
end
-- record a connection event, within the bounds
local function event(prefix, ix, json, maxEvents, maxStreams)
  local list = prefix .. 'u:e:' .. ix
  local streams = prefix .. 'u:es'
  redis.call('RPUSH', list, json)
  redis.call('LTRIM', list, -tonumber(maxEvents), -1)
  redis.call('ZADD', streams, redis.call('INCR', prefix .. 'u:eseq'), ix)
  local excess = redis.call('ZCARD', streams) - tonumber(maxStreams)
  if excess > 0 then
    for _, old in ipairs(redis.call('ZRANGE', streams, 0, excess - 1)) do
      redis.call('DEL', prefix .. 'u:e:' .. old)
      redis.call('ZREM', streams, old)
    end
  end
end
"""

_ACQUIRE = _COMMON + """
-- KEYS: records, blocks, steps, live hash, state index, lease key
-- ARGV: 1 prefix, 2 sid, 3 action, 4 step, 5 now (ms, the node's clock),
--       6 lease ttl (ms), 7 max subscribers, 8 member, 9 lease id,
--       10 event JSON, 11 ix, 12 max events, 13 max event streams
local rec = redis.call('HGET', KEYS[1], ARGV[2])
local limit = 1
if rec then
  local b = redis.call('HGET', KEYS[2], ARGV[2])
  if b then
    local sep = string.find(b, ' ', 1, true)
    local t = string.sub(b, 1, sep - 1)
    if (t == ARGV[3] or t == 'publish_play')
        and tonumber(ARGV[5]) < tonumber(string.sub(b, sep + 1)) then
      return 'B'
    end
  end
  limit = tonumber(cjson.decode(rec)['concurrentConnectionsLimit']) or 1
end
local n = liveCount(ARGV[1], ARGV[11], ARGV[2])
local last = -1
if n > 0 then last = tonumber(redis.call('HGET', KEYS[4], 'step') or '-1') end
if rec then
  local p = redis.call('HGET', KEYS[3], ARGV[2])
  if p and tonumber(p) > last then last = tonumber(p) end
end
local now = nowMs()
-- the state index: a subscriber recorded with a replay mark (score inf),
-- or holding leases (score: when they expire)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
if not redis.call('ZSCORE', KEYS[5], ARGV[8])
    and redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[7]) then
  return 'F'
end
if tonumber(ARGV[4]) < last then return 'R' end
if n >= limit then return 'I' end
local ttl = tonumber(ARGV[6])
redis.call('SET', KEYS[6], '1', 'PX', ttl)
redis.call('HSET', KEYS[4], ARGV[9], '1', 'step', ARGV[4])
redis.call('PEXPIRE', KEYS[4], ttl)
if rec then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
  redis.call('ZADD', KEYS[5], '+inf', ARGV[8])
else
  redis.call('ZADD', KEYS[5], now + ttl, ARGV[8])
end
event(ARGV[1], ARGV[11], ARGV[10], ARGV[12], ARGV[13])
return 'A'
"""

_RELEASE = _COMMON + """
-- KEYS: live hash, lease key
-- ARGV: 1 prefix, 2 lease id, 3 sid, 4 event JSON, 5 ix, 6 max events,
--       7 max event streams
redis.call('DEL', KEYS[2])
-- a lease no longer in the live hash (its application deleted, or counted
-- as dead meanwhile) ends nothing and writes nothing
if redis.call('HDEL', KEYS[1], ARGV[2]) == 0 then return 0 end
liveCount(ARGV[1], ARGV[5], ARGV[3])
event(ARGV[1], ARGV[5], ARGV[4], ARGV[6], ARGV[7])
return 1
"""

_REFRESH = _COMMON + """
-- KEYS: live hash, lease key, state index
-- ARGV: 1 lease id, 2 ttl (ms), 3 member
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[2], '1', 'PX', ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
if redis.call('ZSCORE', KEYS[3], ARGV[3]) ~= 'inf' then
  redis.call('ZADD', KEYS[3], nowMs() + ttl, ARGV[3])
end
return 1
"""

_ADD = _COMMON + """
-- KEYS: records, order, blocks, steps, live hash, count, seq, state index
-- ARGV: 1 sid, 2 record JSON, 3 max subscribers, 4 block ('' for none),
--       5 prefix, 6 ix, 7 member
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  if tonumber(redis.call('GET', KEYS[6]) or '0') >= tonumber(ARGV[3]) then return 0 end
  redis.call('INCR', KEYS[6])
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[7]), ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
else
  redis.call('HDEL', KEYS[3], ARGV[1])
end
-- a live subscriber's state (its replay mark) stays with it once recorded
if liveCount(ARGV[5], ARGV[6], ARGV[1]) > 0 then
  local s = tonumber(redis.call('HGET', KEYS[5], 'step') or '-1')
  local p = redis.call('HGET', KEYS[4], ARGV[1])
  if p and tonumber(p) > s then s = tonumber(p) end
  redis.call('HSET', KEYS[4], ARGV[1], s)
  redis.call('ZADD', KEYS[8], '+inf', ARGV[7])
end
return 1
"""

_BLOCK = _COMMON + """
-- KEYS: records, order, blocks, count, seq, steps, live hash, state index
-- ARGV: 1 sid, 2 JSON of a record without type, 3 max subscribers, 4 block,
--       5 prefix, 6 ix, 7 member
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  if tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[3]) then return 0 end
  redis.call('INCR', KEYS[4])
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[5]), ARGV[1])
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  -- a live subscriber's state (its replay mark) stays with it once
  -- recorded, as when a record is added
  if liveCount(ARGV[5], ARGV[6], ARGV[1]) > 0 then
    redis.call('HSET', KEYS[6], ARGV[1], redis.call('HGET', KEYS[7], 'step') or '-1')
    redis.call('ZADD', KEYS[8], '+inf', ARGV[7])
  end
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return 1
"""

_DELETE = _COMMON + """
-- KEYS: records, order, blocks, steps, count
-- ARGV: 1 sid, 2 prefix, 3 ix, 4 lease ttl (ms)
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('DECR', KEYS[5])
unrecorded(ARGV[2], ARGV[3], ARGV[1], ARGV[4])
return 1
"""

_REVOKE = _COMMON + """
-- KEYS: records, order, blocks, steps, count, events
-- ARGV: 1 batch, 2 prefix, 3 ix, 4 lease ttl (ms)
local events = redis.call('LLEN', KEYS[6])
if events > 0 then
  redis.call('DEL', KEYS[6])
  redis.call('ZREM', ARGV[2] .. 'u:es', ARGV[3])
end
local ids = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)
local n = 0
for _, sid in ipairs(ids) do
  n = n + redis.call('HDEL', KEYS[1], sid)
  redis.call('HDEL', KEYS[3], sid)
  redis.call('HDEL', KEYS[4], sid)
  redis.call('ZREM', KEYS[2], sid)
  unrecorded(ARGV[2], ARGV[3], sid, ARGV[4])
end
if n > 0 then redis.call('DECRBY', KEYS[5], n) end
return {n, #ids, events}
"""

_DELETE_APP = """
if redis.replicate_commands then redis.replicate_commands() end
-- KEYS: state index, event streams, count
-- ARGV: 1 prefix, 2 cursor, 3 pattern (the app's keys), 4 count
-- One SCAN step over the keys of one application ({P}u:?:{q(app)}:*),
-- each deleted with what refers to it: the state index's and the event
-- streams' entries, the count of records, the lease keys of live hashes.
local p = ARGV[1]
local found = redis.call('SCAN', ARGV[2], 'MATCH', ARGV[3], 'COUNT', tonumber(ARGV[4]))
local n = 0
for _, key in ipairs(found[2]) do
  local kind = string.sub(key, #p + 3, #p + 3)
  local rest = string.sub(key, #p + 5)
  if kind == 'r' or kind == 'p' then
    -- rest is ix: a recorded subscriber's entry in the state index
    local ids = redis.call('HKEYS', key)
    for _, sid in ipairs(ids) do redis.call('ZREM', KEYS[1], rest .. ':' .. sid) end
    if kind == 'r' then n = n + #ids end
  elseif kind == 'l' then
    -- rest is ix:sid, the member in the state index
    for _, f in ipairs(redis.call('HKEYS', key)) do
      if f ~= 'step' then redis.call('DEL', p .. 'u:k:' .. f) end
    end
    redis.call('ZREM', KEYS[1], rest)
  elseif kind == 'e' then
    redis.call('ZREM', KEYS[2], rest)
  end
  redis.call('DEL', key)
end
if n > 0 then redis.call('DECRBY', KEYS[3], n) end
return {found[1], n}
"""

_GET = _COMMON + """
-- KEYS: records, blocks, and for a page the order index
-- ARGV: 1 prefix, 2 ix, 3 offset, 4 size, 5 the subscriber id (without
--       the order index)
local ids
if KEYS[3] then
  ids = redis.call('ZRANGE', KEYS[3], tonumber(ARGV[3]),
                   tonumber(ARGV[3]) + tonumber(ARGV[4]) - 1)
else
  ids = {ARGV[5]}
end
local out = {}
for _, sid in ipairs(ids) do
  local rec = redis.call('HGET', KEYS[1], sid)
  if rec then
    out[#out + 1] = sid
    out[#out + 1] = rec
    out[#out + 1] = redis.call('HGET', KEYS[2], sid) or ''
    out[#out + 1] = liveCount(ARGV[1], ARGV[2], sid)
  end
end
return out
"""


def _q(s: str) -> str:
    return quote(s, safe="", errors="surrogatepass")


def _globEscape(s: str) -> str:
    """
    C{s} matched literally in a Redis C{MATCH} pattern.
    """
    return "".join("\\" + c if c in "*?[]\\^-" else c for c in s)


def _block(value: Optional[str]) -> tuple[Optional[str], int]:
    """
    The (blockedType, blockedUntil) of a block hash value.
    """
    if not value:
        return None, 0
    blockedType, _, until = value.partition(" ")
    return blockedType, int(until)


@implementer(ISubscriberStore)
class RedisSubscriberStore:
    """
    L{ISubscriberStore} in Redis.  See the module docstring.

    @param client: the Redis client (the token store's); its prefix names
        every key.
    @param clock: the time of blocks and events, and the clock of the
        lease refreshes.
    @param leaseTTL: seconds a live connection's lease lasts unrefreshed.
    @param batch: records per script when revoking a stream's.
    @param onError: called with the operation's name when Redis fails.
    """

    name = "redis"
    log = Logger()

    def __init__(self, client: RedisClient, clock: IReactorTime, leaseTTL: float = LEASE_TTL,
                 maxSubscribers: int = S.MAX_SUBSCRIBERS, batch: int = 500,
                 onError: Optional[ErrorCounter] = None) -> None:
        if leaseTTL <= 0 or batch < 1:
            raise ValueError("the lease TTL must be positive and the batch at least 1")
        self._client = client
        self._prefix = client.prefix
        self._clock = clock
        self._ttlMs = max(1, int(leaseTTL * 1000))
        self._refreshEvery = leaseTTL / 3
        self._max = maxSubscribers
        self._batch = batch
        self._onError = onError
        self._closed = False
        self._refreshing: set[LoopingCall] = set()
        self._releasing: set[Deferred[Any]] = set()

    def _nowMs(self) -> int:
        return int(self._clock.seconds() * 1000)

    # --- keys ---------------------------------------------------------------

    def _ix(self, app: str, streamId: str) -> str:
        return _q(app) + ":" + _q(streamId)

    def _keys(self, app: str, streamId: str) -> dict[str, str]:
        ix, p = self._ix(app, streamId), self._prefix
        return {"records": p + "u:r:" + ix, "order": p + "u:o:" + ix,
                "blocks": p + "u:b:" + ix, "steps": p + "u:p:" + ix,
                "count": p + "u:n", "seq": p + "u:seq", "index": p + "u:live",
                "events": p + "u:e:" + ix}

    def _live(self, app: str, streamId: str, subscriberId: str) -> tuple[str, str]:
        """
        The live hash of a subscriber, and its member in the live index.
        """
        member = self._ix(app, streamId) + ":" + subscriberId
        return self._prefix + "u:l:" + member, member

    # --- calls --------------------------------------------------------------

    def _failed(self, operation: str, failure: Failure) -> Failure:
        if failure.check(RedisUnavailable):
            failure = Failure(StoreUnavailable(failure.getErrorMessage()))
        if failure.check(StoreUnavailable) and self._onError is not None:
            self._onError("subscriber_" + operation)
        return failure

    def _eval(self, operation: str, script: str, keys: list[str], args: list[Any]
              ) -> "Deferred[Any]":
        if self._closed:
            return self._call(operation, fail(StoreUnavailable("the subscriber store is closed")))
        return self._call(operation, self._client.eval(script, keys, args))

    def _call(self, operation: str, d: "Deferred[Any]") -> "Deferred[Any]":
        return d.addErrback(lambda f: self._failed(operation, f))

    def _records(self, app: str, streamId: str, flat: Sequence[Any]) -> list[Subscriber]:
        out = []
        for i in range(0, len(flat), 4):
            blockedType, until = _block(flat[i + 2])
            out.append(recordFromJSON(flat[i + 1], streamId, flat[i], blockedType, until,
                                      int(flat[i + 3])))
        return out

    # --- ISubscriberStore -----------------------------------------------------

    def addSubscriber(self, app: str, subscriber: Subscriber) -> "Deferred[bool]":
        k = self._keys(app, subscriber.streamId)
        block = ("" if subscriber.blockedType is None else
                 "{} {}".format(subscriber.blockedType, subscriber.blockedUntilUnitTimeStampMs))
        live, member = self._live(app, subscriber.streamId, subscriber.subscriberId)
        d = self._eval("add", _ADD, [k["records"], k["order"], k["blocks"], k["steps"], live,
                                     k["count"], k["seq"], k["index"]],
                       [subscriber.subscriberId, recordJSON(subscriber), self._max, block,
                        self._prefix, self._ix(app, subscriber.streamId), member])
        return d.addCallback(lambda added: bool(int(added)))

    def getSubscriber(self, app: str, streamId: str, subscriberId: str
                      ) -> "Deferred[Optional[Subscriber]]":
        k = self._keys(app, streamId)
        d = self._eval("get", _GET, [k["records"], k["blocks"]],
                       [self._prefix, self._ix(app, streamId), 0, 0, subscriberId])

        def first(flat: Sequence[Any]) -> Optional[Subscriber]:
            records = self._records(app, streamId, flat)
            return records[0] if records else None

        return d.addCallback(first)

    def listSubscribers(self, app: str, streamId: str, offset: int, size: int
                        ) -> "Deferred[Sequence[Subscriber]]":
        offset, size = int(offset), int(size)
        if offset < 0 or size <= 0:
            return self._call("list", Deferred.fromCoroutine(self._nothing()))
        k = self._keys(app, streamId)
        d = self._eval("list", _GET, [k["records"], k["blocks"], k["order"]],
                       [self._prefix, self._ix(app, streamId), min(offset, _INT64),
                        min(size, _INT64)])
        return d.addCallback(lambda flat: self._records(app, streamId, flat))

    async def _nothing(self) -> list[Any]:
        if self._closed:
            raise StoreUnavailable("the subscriber store is closed")
        return []

    def deleteSubscriber(self, app: str, streamId: str, subscriberId: str) -> "Deferred[bool]":
        k = self._keys(app, streamId)
        d = self._eval("delete", _DELETE, [k["records"], k["order"], k["blocks"], k["steps"],
                                           k["count"]],
                       [subscriberId, self._prefix, self._ix(app, streamId), self._ttlMs])
        return d.addCallback(lambda found: bool(int(found)))

    async def _revoke(self, app: str, streamId: str) -> Revoked:
        k = self._keys(app, streamId)
        keys = [k["records"], k["order"], k["blocks"], k["steps"], k["count"], k["events"]]
        total = events = 0
        while True:
            deleted, seen, cleared = await self._eval("revoke", _REVOKE, keys,
                                                      [self._batch, self._prefix,
                                                       self._ix(app, streamId), self._ttlMs])
            total += int(deleted)
            events += int(cleared)
            if int(seen) < self._batch:
                return Revoked(total, events)

    def revokeSubscribers(self, app: str, streamId: str) -> "Deferred[Revoked]":
        return Deferred.fromCoroutine(self._revoke(app, streamId))

    async def _deleteApp(self, app: str) -> int:
        p = self._prefix
        pattern = _globEscape(p) + "u:?:" + _q(app) + ":*"
        cursor, total = "0", 0
        while True:
            cursor, deleted = await self._eval(
                "delete_app", _DELETE_APP, [p + "u:live", p + "u:es", p + "u:n"],
                [p, cursor, pattern, self._batch])
            total += int(deleted)
            if str(cursor) == "0":
                return total

    def deleteApp(self, app: str) -> "Deferred[int]":
        """
        SCAN steps of C{batch} keys over the application's keys, one script
        each (a stream's records go in one step); not atomic as a whole:
        what a node writes meanwhile may stay.  Live leases' keys go too;
        their holders' releases and refreshes then find nothing.
        """
        return Deferred.fromCoroutine(self._deleteApp(app))

    def blockSubscriber(self, app: str, streamId: str, subscriberId: str, blockedType: str,
                        seconds: int) -> "Deferred[bool]":
        if blockedType not in BLOCK_TYPES:
            raise ValueError("the block type must be publish, play or publish_play")
        if not 0 <= seconds <= S.MAX_BLOCK_SECONDS:
            raise ValueError("a block lasts 0 to {} seconds".format(S.MAX_BLOCK_SECONDS))
        until = min(self._nowMs() + seconds * 1000, _INT64)
        k = self._keys(app, streamId)
        unknown = Subscriber(subscriberId=subscriberId, streamId=streamId, type=None)
        live, member = self._live(app, streamId, subscriberId)
        d = self._eval("block", _BLOCK, [k["records"], k["order"], k["blocks"], k["count"],
                                         k["seq"], k["steps"], live, k["index"]],
                       [subscriberId, recordJSON(unknown), self._max,
                        "{} {}".format(blockedType, until), self._prefix,
                        self._ix(app, streamId), member])
        return d.addCallback(lambda blocked: bool(int(blocked)))

    def isBlocked(self, app: str, streamId: str, subscriberId: str, action: str
                  ) -> "Deferred[bool]":
        key = self._keys(app, streamId)["blocks"]
        nowMs = self._nowMs()
        if self._closed:
            return self._call("is_blocked", fail(StoreUnavailable("the subscriber store is closed")))
        d = self._call("is_blocked", self._client.call(lambda conn: conn.hget(key, subscriberId)))

        def blocked(value: Optional[str]) -> bool:
            blockedType, until = _block(value)
            return blockedType in (action, S.PUBLISH_AND_PLAY) and nowMs < until

        return d.addCallback(blocked)

    def acquire(self, app: str, streamId: str, subscriberId: str, action: str, step: int,
                protocol: str, instanceIP: Optional[str] = None) -> "Deferred[SubscriberLease]":
        k = self._keys(app, streamId)
        live, member = self._live(app, streamId, subscriberId)
        leaseId = os.urandom(16).hex()
        leaseKey = self._prefix + "u:k:" + leaseId
        ix = self._ix(app, streamId)
        protocol = protocol[:S.MAX_NAME]
        nowMs = self._nowMs()
        connected = ConnectionEvent(nowMs, "connected", action, protocol, streamId,
                                    subscriberId, instanceIP)
        d = self._eval("acquire", _ACQUIRE,
                       [k["records"], k["blocks"], k["steps"], live, k["index"], leaseKey],
                       [self._prefix, subscriberId, action, int(step), nowMs, self._ttlMs,
                        self._max, member, leaseId, eventJSON(connected), ix,
                        S.MAX_EVENTS_PER_STREAM, S.MAX_EVENT_STREAMS])

        def decided(answer: str) -> SubscriberLease:
            refusal = {"B": Refusal.BLOCKED, "F": Refusal.FULL, "R": Refusal.REPLAYED,
                       "I": Refusal.IN_USE}.get(answer)
            if refusal is not None:
                raise SubscriberRefused(refusal)
            if answer != "A":
                raise StoreUnavailable("unexpected answer from the acquire script")
            refresher = LoopingCall(self._refresh, live, leaseKey, leaseId, member)
            refresher.clock = self._clock
            self._refreshing.add(refresher)
            refresher.start(self._refreshEvery, now=False)

            def release() -> "Deferred[None]":
                if refresher.running:
                    refresher.stop()
                self._refreshing.discard(refresher)
                disconnected = ConnectionEvent(self._nowMs(), "disconnected", action, protocol,
                                               streamId, subscriberId, instanceIP)
                done = self._eval("release", _RELEASE, [live, leaseKey],
                                  [self._prefix, leaseId, subscriberId, eventJSON(disconnected),
                                   ix,
                                   S.MAX_EVENTS_PER_STREAM, S.MAX_EVENT_STREAMS])
                # close() waits for it (it ends within the client's timeout)
                self._releasing.add(done)

                def ended(result: Any) -> Any:
                    self._releasing.discard(done)
                    return None if not isinstance(result, Failure) else result

                return done.addBoth(ended)

            return SubscriberLease(streamId, subscriberId, action, release)

        return d.addCallback(decided)

    def _refresh(self, live: str, leaseKey: str, leaseId: str, member: str) -> None:
        """
        Keep one lease alive (a L{LoopingCall}: never fails, so it goes on).
        """
        d = self._eval("refresh", _REFRESH, [live, leaseKey, self._prefix + "u:live"],
                       [leaseId, self._ttlMs, member])

        def refreshed(kept: Any) -> None:
            if not int(kept):
                self.log.warn("a subscriber's live-connection lease expired before its "
                              "refresh; the connection goes on uncounted")

        def failed(failure: Failure) -> None:
            self.log.warn("refreshing a subscriber's live-connection lease failed: {error}",
                          error=failure.getErrorMessage())

        d.addCallbacks(refreshed, failed)

    def connectionEvents(self, app: str, streamId: str, offset: int, size: int
                         ) -> "Deferred[Sequence[ConnectionEvent]]":
        offset, size = int(offset), int(size)
        if offset < 0 or size <= 0:
            return self._call("events", Deferred.fromCoroutine(self._nothing()))
        if self._closed:
            return self._call("events", fail(StoreUnavailable("the subscriber store is closed")))
        key = self._keys(app, streamId)["events"]
        end = min(offset + size - 1, _INT64)
        d = self._call("events", self._client.call(
            lambda conn: conn.lrange(key, min(offset, _INT64), end)))
        return d.addCallback(lambda texts: [eventFromJSON(t) for t in texts or []])

    def close(self) -> "Deferred[None]":
        """
        Stop refreshing leases (those still held then expire within the
        TTL) and fail later calls with L{StoreUnavailable}; fires once the
        releases already sent have been answered (or have failed, within
        the client's timeout), so that the composition root closes the
        client after them.  The client is the token store's: whoever opened
        it closes it.
        """
        self._closed = True
        for refresher in list(self._refreshing):
            if refresher.running:
                refresher.stop()
        self._refreshing.clear()
        pending = list(self._releasing)
        if not pending:
            return succeed(None)
        return DeferredList(pending, consumeErrors=True).addCallback(lambda _: None)
