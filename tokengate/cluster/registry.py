# -*- test-case-name: tests.test_cluster_registry,tests.interop.test_cluster_registry -*-
"""
The stream registry: which node of the cluster holds each live stream, and
at which internal address (docs/cluster.md).

A publish admitted on a node I{claims} its stream in the registry before its
token is redeemed (L{tokengate.access.clusterpolicy.ClusterPolicy}): the
claim is atomic cluster-wide, so a stream is published on one node at most,
and a publish of a stream claimed elsewhere is refused C{in_use} with its
token kept.  The node keeps its entries alive with a heartbeat (every
L{HEARTBEAT} seconds, each entry expiring L{TTL} seconds after its last
refresh) and deletes them when their publishers end (compare-and-delete:
only the owner deletes).  An entry of a node that dies expires by itself.

Two backends behind L{IRegistryBackend}: L{MemoryBackend} (one process; two
L{StreamRegistry} on one backend act as two nodes, for tests) and
L{RedisBackend} (the store's Redis: one hash per stream and one set per
application, see its docstring).  L{StreamRegistry} is one node's side: its
claims, the heartbeat, and L{IStreamLocator}, the narrow interface the edge
puller uses to find a stream's origin.

Failures: a backend that cannot answer raises L{RegistryUnavailable}; the
claim then fails and the publish is refused C{unavailable} (fail closed);
live streams go on; the heartbeat keeps trying and, when the backend is
back, re-asserts every entry this node owns, or ends this node's publisher
of a stream another node claimed meanwhile (it could not refresh, its
entry expired: the other node won).
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, Optional, Protocol, Sequence

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from tokengate.logsafe import Logger
from tokengate.metrics import Metrics
from tokengate.redisclient import RedisClient, RedisUnavailable

#: seconds between two refreshes of this node's entries
HEARTBEAT = 2.0
#: seconds an entry lives after its last refresh (three heartbeats): a dead
#: node's streams can be published elsewhere at most this long after it died
TTL = 6.0
#: entries refreshed per Redis round trip
REFRESH_BATCH = 100
#: most live entries of one application a listing reads
MAX_LISTED = 10_000


class RegistryUnavailable(Exception):
    """
    The registry's backend (Redis) cannot answer now.
    """


class StreamTaken(Exception):
    """
    The stream is claimed by another node (or by another publisher of this
    node).

    @ivar owner: the node id that holds it.
    """

    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


@frozen
class StreamLocation:
    """
    Where a live stream is published.

    @ivar nodeId: the node that holds it (random per process).
    @ivar address: that node's internal address, C{host:port}
        (C{--node-address}).
    @ivar publishType: C{RTMP}, C{SRT} or C{WebRTC}.
    @ivar started: when it went live, Unix seconds (the origin's clock).
    """

    nodeId: str
    address: str
    publishType: str
    started: float


class IStreamLocator(Protocol):
    """
    What the edge puller asks: which node holds a stream live.

    @ivar localNodeId: this node's id (a location with it is this node's).
    """

    localNodeId: str

    def locate(self, app: str, streamId: str) -> "Deferred[Optional[StreamLocation]]":
        """
        The node holding C{app}/C{streamId} live (claimed but not yet live
        is None), or None.  Fails with L{RegistryUnavailable}.
        """


class IClusterStreams(IStreamLocator, Protocol):
    """
    What the REST API asks: the streams live on every node.

    @ivar address: this node's internal address.
    """

    address: str

    def liveStreams(self, app: str) -> "Deferred[dict[str, StreamLocation]]":
        """
        Every stream of C{app} live on some node, by stream id.  Fails with
        L{RegistryUnavailable}.
        """


@frozen
class Entry:
    """
    One stream's record in a backend.

    @ivar live: False while the stream is only claimed (an SRT caller before
        its first packet).
    """

    app: str
    streamId: str
    nodeId: str
    address: str
    publishType: str
    started: float
    live: bool = False

    def location(self) -> StreamLocation:
        return StreamLocation(self.nodeId, self.address, self.publishType, self.started)


class IRegistryBackend(Protocol):
    """
    Where the entries are kept; every operation may fail with
    L{RegistryUnavailable}.
    """

    def claim(self, entry: Entry, ttl: float) -> "Deferred[Optional[str]]":
        """
        Write C{entry} unless another node's entry holds the stream: fires
        with None when written (also over an entry of the same node), else
        with the owner's node id.  Atomic.
        """

    def refresh(self, entries: Sequence[Entry], ttl: float) -> "Deferred[list[int]]":
        """
        Re-assert C{entries} (all of one node): each is written again (its
        TTL renewed, missing ones recreated) unless another node holds its
        stream; fires with the indexes of those lost.
        """

    def release(self, app: str, streamId: str, nodeId: str) -> "Deferred[bool]":
        """
        Delete the stream's entry if C{nodeId} holds it; fires with whether
        it did.
        """

    def get(self, app: str, streamId: str) -> "Deferred[Optional[Entry]]":
        """
        The stream's entry, or None.
        """

    def entries(self, app: str) -> "Deferred[list[Entry]]":
        """
        Every entry of the application (at most L{MAX_LISTED}).
        """


@define
class MemoryBackend:
    """
    The entries in this process's memory, expiring on C{clock}.  One
    backend shared by several L{StreamRegistry} makes them nodes of one
    cluster (tests); C{down} makes every call fail as Redis down would.
    """

    clock: IReactorTime
    down: bool = False
    _entries: dict[tuple[str, str], tuple[Entry, float]] = field(factory=dict)

    def _check(self) -> None:
        if self.down:
            raise RegistryUnavailable("the registry is down")

    def _current(self, key: tuple[str, str]) -> Optional[Entry]:
        held = self._entries.get(key)
        if held is None:
            return None
        if held[1] <= self.clock.seconds():
            del self._entries[key]
            return None
        return held[0]

    def _write(self, entry: Entry, ttl: float) -> Optional[str]:
        key = (entry.app, entry.streamId)
        held = self._current(key)
        if held is not None and held.nodeId != entry.nodeId:
            return held.nodeId
        self._entries[key] = (entry, self.clock.seconds() + ttl)
        return None

    def claim(self, entry: Entry, ttl: float) -> "Deferred[Optional[str]]":
        try:
            self._check()
        except RegistryUnavailable as e:
            return _failed(e)
        return succeed(self._write(entry, ttl))

    def refresh(self, entries: Sequence[Entry], ttl: float) -> "Deferred[list[int]]":
        try:
            self._check()
        except RegistryUnavailable as e:
            return _failed(e)
        return succeed([i for i, entry in enumerate(entries)
                        if self._write(entry, ttl) is not None])

    def release(self, app: str, streamId: str, nodeId: str) -> "Deferred[bool]":
        try:
            self._check()
        except RegistryUnavailable as e:
            return _failed(e)
        held = self._current((app, streamId))
        if held is None or held.nodeId != nodeId:
            return succeed(False)
        del self._entries[(app, streamId)]
        return succeed(True)

    def get(self, app: str, streamId: str) -> "Deferred[Optional[Entry]]":
        try:
            self._check()
        except RegistryUnavailable as e:
            return _failed(e)
        return succeed(self._current((app, streamId)))

    def entries(self, app: str) -> "Deferred[list[Entry]]":
        try:
            self._check()
        except RegistryUnavailable as e:
            return _failed(e)
        found = []
        for key in [k for k in self._entries if k[0] == app]:
            entry = self._current(key)
            if entry is not None:
                found.append(entry)
        return succeed(found[:MAX_LISTED])


def _failed(error: Exception) -> "Deferred[Any]":
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d


# --- Redis -----------------------------------------------------------------------------

#: KEYS: the stream's hash, the application's set; ARGV: node, address,
#: type, started, live, ttl (ms), streamId.  Returns nil when written, else
#: the owner.
_CLAIM = """
local owner = redis.call('HGET', KEYS[1], 'node')
if owner and owner ~= ARGV[1] then return owner end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'address', ARGV[2], 'type', ARGV[3],
           'started', ARGV[4], 'live', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('SADD', KEYS[2], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return false
"""

#: KEYS: (the stream's hash, the application's set) per entry; ARGV: node,
#: ttl (ms), then (streamId, address, type, started, live) per entry.
#: Returns the (1-based) numbers of the entries another node holds.
_REFRESH = """
local node = ARGV[1]
local ttl = ARGV[2]
local lost = {}
for i = 1, #KEYS / 2 do
  local key = KEYS[2 * i - 1]
  local base = 2 + (i - 1) * 5
  local owner = redis.call('HGET', key, 'node')
  if owner and owner ~= node then
    lost[#lost + 1] = i
  else
    redis.call('HSET', key, 'node', node, 'address', ARGV[base + 2], 'type', ARGV[base + 3],
               'started', ARGV[base + 4], 'live', ARGV[base + 5])
    redis.call('PEXPIRE', key, ttl)
    redis.call('SADD', KEYS[2 * i], ARGV[base + 1])
    redis.call('PEXPIRE', KEYS[2 * i], ttl)
  end
end
return lost
"""

#: KEYS: the stream's hash, the application's set; ARGV: node, streamId.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

#: KEYS: the application's set; ARGV: the prefix of the streams' hashes,
#: the most to return.  Returns (streamId, node, address, type, started,
#: live) flattened; members whose hash expired are removed.
_LIST = """
local out = {}
local n = 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local f = redis.call('HMGET', ARGV[1] .. sid, 'node', 'address', 'type', 'started', 'live')
  if not f[1] then
    redis.call('SREM', KEYS[1], sid)
  elseif n < tonumber(ARGV[2]) then
    n = n + 1
    out[#out + 1] = sid
    for j = 1, 5 do out[#out + 1] = f[j] or '' end
  end
end
return out
"""


class RedisBackend:
    """
    The entries in the store's Redis::

        {P}cluster:stream:{app}/{streamId}   HASH node, address, type,
                                             started, live (PEXPIRE ttl)
        {P}cluster:streams:{app}             SET of streamIds (PEXPIRE ttl,
                                             renewed with each entry;
                                             expired members are removed
                                             when listed)

    Application names have no C{/}, so the keys are unambiguous.
    """

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._prefix = client.prefix + "cluster:"

    def _streamKey(self, app: str, streamId: str) -> str:
        return "{}stream:{}/{}".format(self._prefix, app, streamId)

    def _appKey(self, app: str) -> str:
        return "{}streams:{}".format(self._prefix, app)

    def _eval(self, script: str, keys: list[str], args: list[Any]) -> "Deferred[Any]":
        d = self._client.eval(script, keys, args)

        def translate(f: Any) -> Any:
            f.trap(RedisUnavailable)
            raise RegistryUnavailable(f.getErrorMessage())

        return d.addErrback(translate)

    def claim(self, entry: Entry, ttl: float) -> "Deferred[Optional[str]]":
        d = self._eval(_CLAIM, [self._streamKey(entry.app, entry.streamId),
                                self._appKey(entry.app)],
                       [entry.nodeId, entry.address, entry.publishType, repr(entry.started),
                        "1" if entry.live else "0", str(int(ttl * 1000)), entry.streamId])
        return d.addCallback(lambda owner: None if owner is None else str(owner))

    def refresh(self, entries: Sequence[Entry], ttl: float) -> "Deferred[list[int]]":
        if not entries:
            return succeed([])
        keys: list[str] = []
        args: list[Any] = [entries[0].nodeId, str(int(ttl * 1000))]
        for entry in entries:
            keys += [self._streamKey(entry.app, entry.streamId), self._appKey(entry.app)]
            args += [entry.streamId, entry.address, entry.publishType, repr(entry.started),
                     "1" if entry.live else "0"]
        d = self._eval(_REFRESH, keys, args)
        return d.addCallback(lambda lost: [int(i) - 1 for i in (lost or [])])

    def release(self, app: str, streamId: str, nodeId: str) -> "Deferred[bool]":
        d = self._eval(_RELEASE, [self._streamKey(app, streamId), self._appKey(app)],
                       [nodeId, streamId])
        return d.addCallback(lambda n: int(n) == 1)

    def get(self, app: str, streamId: str) -> "Deferred[Optional[Entry]]":
        key = self._streamKey(app, streamId)
        d = self._client.call(
            lambda conn: conn.hmget(key, ["node", "address", "type", "started", "live"]))

        def translate(f: Any) -> Any:
            f.trap(RedisUnavailable)
            raise RegistryUnavailable(f.getErrorMessage())

        d.addErrback(translate)
        return d.addCallback(lambda fields: _entry(app, streamId, fields))

    def entries(self, app: str) -> "Deferred[list[Entry]]":
        d = self._eval(_LIST, [self._appKey(app)],
                       [self._prefix + "stream:" + app + "/", str(MAX_LISTED)])

        def parse(flat: Any) -> list[Entry]:
            out = []
            flat = list(flat or [])
            for i in range(0, len(flat) - 5, 6):
                entry = _entry(app, str(flat[i]), flat[i + 1:i + 6])
                if entry is not None:
                    out.append(entry)
            return out

        return d.addCallback(parse)


def _entry(app: str, streamId: str, fields: Any) -> Optional[Entry]:
    """
    An entry from its hash's fields (node, address, type, started, live),
    or None when missing or malformed (written by nobody we know).
    """
    if not fields or fields[0] is None:
        return None
    try:
        node, address, publishType, started, live = (
            f.decode("utf-8") if isinstance(f, bytes) else str(f) for f in fields)
        return Entry(app, streamId, node, address, publishType, float(started), live == "1")
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


# --- this node's side ------------------------------------------------------------------

#: how this node ends its publisher of a stream another node won:
#: C{endPublisher(app, streamId)}
EndPublisher = Callable[[str, str], None]


@define(eq=False)
class _Owned:
    entry: Entry
    #: the claim is not confirmed yet (still being written)
    pending: bool = True


class StreamRegistry:
    """
    One node's side of the registry: its claims, their heartbeat, and the
    locator.  See the module's docstring.

    Metrics: C{tokengate_cluster_streams} (entries this node holds),
    C{tokengate_cluster_registry_errors_total{operation}} (backend calls
    that failed), C{tokengate_cluster_streams_lost_total} (publishers ended
    because another node took their stream while the registry was out of
    reach).
    """

    _log = Logger()

    def __init__(self, backend: IRegistryBackend, clock: IReactorTime, metrics: Metrics,
                 address: str, endPublisher: EndPublisher,
                 nodeId: Optional[str] = None, heartbeat: float = HEARTBEAT,
                 ttl: float = TTL) -> None:
        """
        @param address: this node's internal address, C{host:port}.
        @param endPublisher: ends this node's publisher of a stream.
        @param nodeId: this node's id (by default random: a restarted
            process is a new node).
        """
        if not 0 < heartbeat < ttl:
            raise ValueError("the heartbeat must be shorter than the TTL")
        self._backend = backend
        self._clock = clock
        self.address = address
        self._endPublisher = endPublisher
        self.localNodeId = nodeId if nodeId is not None else secrets.token_hex(8)
        self.heartbeat = heartbeat
        self.ttl = ttl
        self._owned: dict[tuple[str, str], _Owned] = {}
        self._timer: Optional[IDelayedCall] = None
        self._running = False
        self._failing = False
        self._refreshing = False
        self._errors = metrics.counter("tokengate_cluster_registry_errors_total",
                                       "Stream registry calls that failed", ["operation"])
        self._lost = metrics.counter("tokengate_cluster_streams_lost_total",
                                     "Publishers ended because another node took their "
                                     "stream while the registry was out of reach", [])
        metrics.callbackGauge("tokengate_cluster_streams",
                              "Streams this node holds in the cluster's registry",
                              lambda: len(self._owned))

    # --- claims ------------------------------------------------------------------------

    async def claim(self, app: str, streamId: str, publishType: str) -> Callable[[], None]:
        """
        Claim C{app}/C{streamId} for a publisher of this node.

        @return: what releases the claim (deletes the entry if still ours).
        @raise StreamTaken: another node, or another publisher here, holds it.
        @raise RegistryUnavailable: the backend cannot answer (fail closed).
        """
        key = (app, streamId)
        if key in self._owned:
            raise StreamTaken(self.localNodeId)
        entry = Entry(app, streamId, self.localNodeId, self.address, publishType,
                      self._clock.seconds(), False)
        owned = _Owned(entry)
        self._owned[key] = owned
        try:
            owner = await self._backend.claim(entry, self.ttl)
        except BaseException:
            if self._owned.get(key) is owned:
                del self._owned[key]
            self._errors.labels("claim").inc()
            raise
        if owner is not None:
            if self._owned.get(key) is owned:
                del self._owned[key]
            raise StreamTaken(owner)
        owned.pending = False
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._release(key, owned)

        return release

    def _release(self, key: tuple[str, str], owned: _Owned) -> None:
        if self._owned.get(key) is not owned:
            return  # lost to another node, or already gone
        del self._owned[key]
        d = self._backend.release(key[0], key[1], self.localNodeId)

        def failed(f: Any) -> None:
            # the entry expires by itself within the TTL
            self._errors.labels("release").inc()
            self._log.warn("the stream registry could not release {app}/{streamId}: "
                           "{error}; it expires within {ttl:g}s", app=key[0],
                           streamId=key[1], error=f.getErrorMessage(), ttl=self.ttl)

        d.addCallbacks(lambda _: None, failed)

    def streamLive(self, app: str, streamId: str, started: float) -> None:
        """
        A stream of this node went live (a hub publish listener): its entry
        says so at once (and at every refresh).
        """
        owned = self._owned.get((app, streamId))
        if owned is None:
            return
        owned.entry = Entry(app, streamId, self.localNodeId, self.address,
                            owned.entry.publishType, started, True)
        if not owned.pending:
            self._refresh([owned])

    def owns(self, app: str, streamId: str) -> bool:
        """
        Whether a publisher of this node holds the stream.
        """
        return (app, streamId) in self._owned

    # --- heartbeat ---------------------------------------------------------------------

    def start(self) -> None:
        """
        Start the heartbeat.
        """
        if not self._running:
            self._running = True
            self._schedule()

    def stop(self) -> None:
        """
        Stop the heartbeat (the entries expire, or are released by their
        publishers' ends).
        """
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self) -> None:
        if self._running:
            self._timer = self._clock.callLater(self.heartbeat, self._beat)

    def _beat(self) -> None:
        self._timer = None
        d = self.refreshAll()
        d.addBoth(lambda _: self._schedule())

    def refreshAll(self) -> "Deferred[None]":
        """
        Refresh (re-assert) every entry this node holds; fires when done
        (never fails).
        """
        if self._refreshing:
            return succeed(None)
        self._refreshing = True
        d = self._refresh([o for o in self._owned.values() if not o.pending])

        def done(_: None) -> None:
            self._refreshing = False

        return d.addCallback(done)

    def _refresh(self, batch: list[_Owned]) -> "Deferred[None]":
        return Deferred.fromCoroutine(self._refreshBatches(batch))

    async def _refreshBatches(self, owned: list[_Owned]) -> None:
        for start in range(0, len(owned), REFRESH_BATCH):
            chunk = owned[start:start + REFRESH_BATCH]
            entries = [o.entry for o in chunk]
            try:
                lost = await self._backend.refresh(entries, self.ttl)
            except RegistryUnavailable as e:
                self._errors.labels("refresh").inc()
                if not self._failing:
                    self._failing = True
                    self._log.warn("the stream registry is out of reach: {error}; "
                                   "live streams go on, new publishes are refused",
                                   error=str(e))
                return
            except Exception:
                self._errors.labels("refresh").inc()
                self._log.failure("refreshing the stream registry failed")
                return
            if self._failing:
                self._failing = False
                self._log.info("the stream registry is reachable again")
            for index in lost:
                if not 0 <= index < len(chunk):
                    continue
                gone = chunk[index]
                key = (gone.entry.app, gone.entry.streamId)
                if self._owned.get(key) is not gone:
                    continue
                del self._owned[key]
                self._lost.inc()
                self._log.warn("{app}/{streamId} was taken by another node while the "
                               "stream registry was out of reach: ending its publisher "
                               "here", app=key[0], streamId=key[1])
                try:
                    self._endPublisher(*key)
                except Exception:
                    self._log.failure("ending a publisher that lost its stream failed")

    # --- the locator -------------------------------------------------------------------

    def locate(self, app: str, streamId: str) -> "Deferred[Optional[StreamLocation]]":
        """
        See L{IStreamLocator.locate}.
        """
        d = self._backend.get(app, streamId)
        return d.addCallback(lambda e: e.location() if e is not None and e.live else None)

    def liveStreams(self, app: str) -> "Deferred[dict[str, StreamLocation]]":
        """
        Every stream of C{app} live on some node, by stream id.
        """
        d = self._backend.entries(app)
        return d.addCallback(lambda entries: {e.streamId: e.location()
                                              for e in entries if e.live})


@define
class MemoryLocator:
    """
    An L{IStreamLocator} over a dict, for tests of the edge puller.
    """

    localNodeId: str = "local"
    locations: dict[tuple[str, str], StreamLocation] = field(factory=dict)
    down: bool = False

    def locate(self, app: str, streamId: str) -> "Deferred[Optional[StreamLocation]]":
        if self.down:
            return _failed(RegistryUnavailable("the registry is down"))
        return succeed(self.locations.get((app, streamId)))


__all__ = ["HEARTBEAT", "TTL", "Entry", "IClusterStreams", "IRegistryBackend", "IStreamLocator", "MemoryBackend",
           "MemoryLocator", "RedisBackend", "RegistryUnavailable", "StreamLocation",
           "StreamRegistry", "StreamTaken"]
