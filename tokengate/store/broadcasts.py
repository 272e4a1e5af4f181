# -*- test-case-name: tests.test_store_broadcasts -*-
"""
The broadcast registry: the broadcasts created through REST
(C{POST /{App}/rest/v2/broadcasts/create}), kept in the token store's
backend so that they survive a restart and are shared by a cluster.

* L{MemoryBroadcasts}: next to a memory token store;
* L{SQLiteBroadcasts}: a C{broadcasts} table in the SQLite token store's
  database, run on that store's database thread
  (L{tokengate.store.sqlite.SQLiteTokenStore.run});
* L{RedisBroadcasts}: on the Redis token store's client.

L{registryFor} picks the one that goes with a token store.  Each
application holds at most C{limit} broadcasts (L{MAX_BROADCASTS} by
default): a create past it fails with L{TooManyBroadcasts}.

What the registry keeps of a broadcast is L{Broadcast}: the stream id, its
name and description (the JSON fields tokengate supports) and when it was
created.  Whether a broadcast is live is the hub's business, not the
registry's.

Two narrow views: L{IBroadcastLookup} (is this stream registered: what the
C{acceptOnlyStreamsInDataStore} policy asks) and L{IBroadcastRegistry}
(what the REST API does).  Every call returns a L{Deferred}; a backend that
cannot answer fails it with L{StoreUnavailable}.

Redis key layout, under the client's prefix C{P} (C{q(x)} percent-encodes
C{x} with no safe characters)::

    {P}bo:{q(app)}             ZSET  q(streamId) -> creation sequence number
    {P}bc:{q(app)}:{q(stream)} HASH  name, description, date
    {P}bseq                    STRING the creation sequence counter
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Sequence, TypeVar
from urllib.parse import quote, unquote

from attrs import frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from tokengate.redisclient import RedisClient, RedisUnavailable
from tokengate.store import ITokenStore, StoreUnavailable

T = TypeVar("T")

#: the default most broadcasts one application may register
MAX_BROADCASTS = 10_000
#: the longest name and description kept
MAX_NAME = 256
MAX_DESCRIPTION = 1024
#: stream ids asked about in one backend call (L{IBroadcastRegistry.registered})
_CHUNK = 500


@frozen
class Broadcast:
    """
    A broadcast created through REST.

    @ivar app: its application.
    @ivar streamId: its stream's name.
    @ivar name: the name it was given (the stream id when none).
    @ivar description: its description (may be empty).
    @ivar date: when it was created, in milliseconds since the epoch.
    """

    app: str
    streamId: str
    name: str
    description: str
    date: int


class BroadcastExists(Exception):
    """
    A broadcast with this stream id is registered already.
    """


class TooManyBroadcasts(Exception):
    """
    The application holds as many broadcasts as it may.

    @ivar limit: how many that is.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class IBroadcastLookup(Protocol):
    """
    Whether a stream was created through REST (the datastore policy's view).
    """

    def exists(self, app: str, streamId: str) -> "Deferred[bool]":
        """
        Whether C{app} has a registered broadcast C{streamId}.
        """


class IBroadcastRegistry(IBroadcastLookup, Protocol):
    """
    The registered broadcasts, as the REST API manages them.
    """

    limit: int

    def create(self, broadcast: Broadcast) -> "Deferred[None]":
        """
        Register C{broadcast}; fails with L{BroadcastExists} or
        L{TooManyBroadcasts}.
        """

    def get(self, app: str, streamId: str) -> "Deferred[Optional[Broadcast]]":
        """
        The registered broadcast, or None.
        """

    def list(self, app: str, offset: int, size: int) -> "Deferred[Sequence[Broadcast]]":
        """
        The application's broadcasts in creation order, from C{offset}, at
        most C{size}.
        """

    def count(self, app: str) -> "Deferred[int]":
        """
        How many broadcasts the application has.
        """

    def registered(self, app: str, streamIds: Sequence[str]) -> "Deferred[frozenset[str]]":
        """
        Which of C{streamIds} are registered.
        """

    def delete(self, app: str, streamId: str) -> "Deferred[bool]":
        """
        Forget a broadcast; fire with whether it was registered.
        """

    def deleteApp(self, app: str) -> "Deferred[int]":
        """
        Forget every broadcast of an application; fire with how many.
        """


def _bounded(offset: int, size: int) -> tuple[int, int]:
    return max(0, int(offset)), max(0, int(size))


class MemoryBroadcasts:
    """
    The registry in this process's memory (next to a memory token store).
    """

    def __init__(self, limit: int = MAX_BROADCASTS) -> None:
        self.limit = limit
        # dicts keep insertion order: that is creation order
        self._apps: dict[str, dict[str, Broadcast]] = {}

    def exists(self, app: str, streamId: str) -> "Deferred[bool]":
        return succeed(streamId in self._apps.get(app, {}))

    def create(self, broadcast: Broadcast) -> "Deferred[None]":
        table = self._apps.setdefault(broadcast.app, {})
        if broadcast.streamId in table:
            return fail(BroadcastExists(broadcast.streamId))
        if len(table) >= self.limit:
            return fail(TooManyBroadcasts(self.limit))
        table[broadcast.streamId] = broadcast
        return succeed(None)

    def get(self, app: str, streamId: str) -> "Deferred[Optional[Broadcast]]":
        return succeed(self._apps.get(app, {}).get(streamId))

    def list(self, app: str, offset: int, size: int) -> "Deferred[Sequence[Broadcast]]":
        offset, size = _bounded(offset, size)
        return succeed(list(self._apps.get(app, {}).values())[offset:offset + size])

    def count(self, app: str) -> "Deferred[int]":
        return succeed(len(self._apps.get(app, {})))

    def registered(self, app: str, streamIds: Sequence[str]) -> "Deferred[frozenset[str]]":
        table = self._apps.get(app, {})
        return succeed(frozenset(s for s in streamIds if s in table))

    def delete(self, app: str, streamId: str) -> "Deferred[bool]":
        table = self._apps.get(app, {})
        found = table.pop(streamId, None) is not None
        if not table:
            self._apps.pop(app, None)
        return succeed(found)

    def deleteApp(self, app: str) -> "Deferred[int]":
        return succeed(len(self._apps.pop(app, {})))


# --- SQLite --------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS broadcasts (
    id INTEGER PRIMARY KEY,
    app TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    date INTEGER NOT NULL,
    UNIQUE (app, stream_id)
);
"""

_COLUMNS = "app, stream_id, name, description, date"


class IDatabase(Protocol):
    """
    Runs functions of a SQLite connection on the database's thread, each in
    a transaction (L{tokengate.store.sqlite.SQLiteTokenStore.run}).
    """

    def run(self, f: Callable[..., T], *args: Any) -> "Deferred[T]":
        """
        C{f(connection, *args)} on the database thread; its result, or
        L{StoreUnavailable}.
        """


def _row(row: Sequence[Any]) -> Broadcast:
    app, streamId, name, description, date = row
    return Broadcast(app, streamId, name, description, int(date))


class SQLiteBroadcasts:
    """
    The registry as a table of the SQLite token store's database.
    """

    def __init__(self, database: IDatabase, limit: int = MAX_BROADCASTS) -> None:
        self.limit = limit
        self._database = database
        self._ready = False

    def _run(self, f: Callable[..., T], *args: Any) -> "Deferred[T]":
        def run(db: Any, *args: Any) -> T:
            if not self._ready:
                db.execute(_SCHEMA)
                self._ready = True
            return f(db, *args)

        return self._database.run(run, *args)

    def exists(self, app: str, streamId: str) -> "Deferred[bool]":
        def exists(db: Any) -> bool:
            return db.execute("SELECT 1 FROM broadcasts WHERE app = ? AND stream_id = ?",
                              (app, streamId)).fetchone() is not None

        return self._run(exists)

    def create(self, broadcast: Broadcast) -> "Deferred[None]":
        limit = self.limit

        def create(db: Any) -> None:
            # one transaction: the count and the insert cannot be split by
            # another writer (the database thread's, or another process')
            if db.execute("SELECT 1 FROM broadcasts WHERE app = ? AND stream_id = ?",
                          (broadcast.app, broadcast.streamId)).fetchone() is not None:
                raise BroadcastExists(broadcast.streamId)
            (n,) = db.execute("SELECT COUNT(*) FROM broadcasts WHERE app = ?",
                              (broadcast.app,)).fetchone()
            if n >= limit:
                raise TooManyBroadcasts(limit)
            db.execute("INSERT INTO broadcasts ({}) VALUES (?, ?, ?, ?, ?)".format(_COLUMNS),
                       (broadcast.app, broadcast.streamId, broadcast.name,
                        broadcast.description, broadcast.date))

        return self._run(create)

    def get(self, app: str, streamId: str) -> "Deferred[Optional[Broadcast]]":
        def get(db: Any) -> Optional[Broadcast]:
            row = db.execute("SELECT {} FROM broadcasts WHERE app = ? AND stream_id = ?".format(
                _COLUMNS), (app, streamId)).fetchone()
            return _row(row) if row is not None else None

        return self._run(get)

    def list(self, app: str, offset: int, size: int) -> "Deferred[Sequence[Broadcast]]":
        offset, size = _bounded(offset, size)

        def list_(db: Any) -> list[Broadcast]:
            rows = db.execute("SELECT {} FROM broadcasts WHERE app = ? ORDER BY id "
                              "LIMIT ? OFFSET ?".format(_COLUMNS), (app, size, offset))
            return [_row(r) for r in rows.fetchall()]

        return self._run(list_)

    def count(self, app: str) -> "Deferred[int]":
        def count(db: Any) -> int:
            (n,) = db.execute("SELECT COUNT(*) FROM broadcasts WHERE app = ?",
                              (app,)).fetchone()
            return int(n)

        return self._run(count)

    def registered(self, app: str, streamIds: Sequence[str]) -> "Deferred[frozenset[str]]":
        ids = list(streamIds)

        def registered(db: Any) -> frozenset[str]:
            found: set[str] = set()
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i:i + _CHUNK]
                rows = db.execute(
                    "SELECT stream_id FROM broadcasts WHERE app = ? AND stream_id IN ({})".format(
                        ", ".join("?" * len(chunk))), (app, *chunk)).fetchall()
                found.update(r[0] for r in rows)
            return frozenset(found)

        return self._run(registered)

    def delete(self, app: str, streamId: str) -> "Deferred[bool]":
        def delete(db: Any) -> bool:
            return bool(db.execute("DELETE FROM broadcasts WHERE app = ? AND stream_id = ?",
                                   (app, streamId)).rowcount)

        return self._run(delete)

    def deleteApp(self, app: str) -> "Deferred[int]":
        def delete(db: Any) -> int:
            return int(db.execute("DELETE FROM broadcasts WHERE app = ?", (app,)).rowcount)

        return self._run(delete)


# --- Redis ---------------------------------------------------------------------

_CREATE = """
-- KEYS: the app's order index, the broadcast's hash, the sequence counter
-- ARGV: q(streamId), name, description, date, limit
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 'E' end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return 'F' end
local seq = redis.call('INCR', KEYS[3])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'name', ARGV[2], 'description', ARGV[3], 'date', ARGV[4])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
return 'OK'
"""

_LIST = """
-- KEYS: the app's order index
-- ARGV: the prefix of the app's broadcast hashes, offset, size
local ids = redis.call('ZRANGE', KEYS[1], tonumber(ARGV[2]),
                       tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', ARGV[1] .. id, 'name', 'description', 'date')
  out[#out + 1] = id
  out[#out + 1] = h[1] or ''
  out[#out + 1] = h[2] or ''
  out[#out + 1] = h[3] or '0'
end
return out
"""

_DELETE = """
-- KEYS: the app's order index, the broadcast's hash
-- ARGV: q(streamId)
redis.call('DEL', KEYS[2])
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

_DELETE_APP = """
-- KEYS: the app's order index
-- ARGV: the prefix of the app's broadcast hashes, batch
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[1] .. id)
  redis.call('ZREM', KEYS[1], id)
end
return #ids
"""


_REGISTERED = """
-- KEYS: the app's order index
-- ARGV: members (q(streamId)) asked about
local out = {}
for _, m in ipairs(ARGV) do
  if redis.call('ZSCORE', KEYS[1], m) then out[#out + 1] = m end
end
return out
"""


def _q(s: str) -> str:
    return quote(s, safe="", errors="surrogatepass")


def _unq(s: str) -> str:
    return unquote(s, errors="surrogatepass")


class RedisBroadcasts:
    """
    The registry in Redis, on the token store's client (see the module's
    docstring for the keys).  Creating is one script (the existence check,
    the bound and the write are atomic across the cluster); deleting an
    application runs in batches.
    """

    def __init__(self, client: RedisClient, limit: int = MAX_BROADCASTS,
                 batch: int = 500) -> None:
        self.limit = limit
        self._client = client
        self._prefix = client.prefix
        self._batch = batch

    def _order(self, app: str) -> str:
        return self._prefix + "bo:" + _q(app)

    def _hashes(self, app: str) -> str:
        """
        The prefix of the app's broadcast hashes (then C{q(streamId)}).
        """
        return self._prefix + "bc:" + _q(app) + ":"

    def _unavailable(self, failure: Failure) -> Failure:
        failure.trap(RedisUnavailable)
        return Failure(StoreUnavailable(failure.getErrorMessage()))

    def _call(self, send: Callable[[Any], "Deferred[Any]"]) -> "Deferred[Any]":
        return self._client.call(send).addErrback(self._unavailable)

    def _eval(self, script: str, keys: list[str], args: list[Any]) -> "Deferred[Any]":
        return self._client.eval(script, keys, args).addErrback(self._unavailable)

    def exists(self, app: str, streamId: str) -> "Deferred[bool]":
        d = self._call(lambda conn: conn.zscore(self._order(app), _q(streamId)))
        return d.addCallback(lambda score: score is not None)

    def create(self, broadcast: Broadcast) -> "Deferred[None]":
        d = self._eval(_CREATE, [self._order(broadcast.app),
                                 self._hashes(broadcast.app) + _q(broadcast.streamId),
                                 self._prefix + "bseq"],
                       [_q(broadcast.streamId), broadcast.name, broadcast.description,
                        str(broadcast.date), str(self.limit)])

        def done(answer: str) -> None:
            if answer == "E":
                raise BroadcastExists(broadcast.streamId)
            if answer == "F":
                raise TooManyBroadcasts(self.limit)

        return d.addCallback(done)

    def _listed(self, app: str, flat: Sequence[str]) -> list[Broadcast]:
        return [Broadcast(app, _unq(flat[i]), flat[i + 1], flat[i + 2], int(flat[i + 3]))
                for i in range(0, len(flat), 4)]

    def get(self, app: str, streamId: str) -> "Deferred[Optional[Broadcast]]":
        async def get() -> Optional[Broadcast]:
            if not await self.exists(app, streamId):
                return None
            values = await self._call(lambda conn: conn.hmget(
                self._hashes(app) + _q(streamId), ["name", "description", "date"]))
            name, description, date = values
            return Broadcast(app, streamId, name if name is not None else streamId,
                             description or "", int(date or 0))

        return Deferred.fromCoroutine(get())

    def list(self, app: str, offset: int, size: int) -> "Deferred[Sequence[Broadcast]]":
        offset, size = _bounded(offset, size)
        if size == 0:
            return succeed([])
        # members are q(streamId): the script appends them to the hashes'
        # prefix as they are
        d = self._eval(_LIST, [self._order(app)], [self._hashes(app), offset, size])
        return d.addCallback(lambda flat: self._listed(app, flat))

    def count(self, app: str) -> "Deferred[int]":
        return self._call(lambda conn: conn.zcard(self._order(app))).addCallback(int)

    def registered(self, app: str, streamIds: Sequence[str]) -> "Deferred[frozenset[str]]":
        ids = list(streamIds)

        async def registered() -> frozenset[str]:
            found: set[str] = set()
            for i in range(0, len(ids), _CHUNK):
                chunk = [_q(s) for s in ids[i:i + _CHUNK]]
                members = await self._eval(_REGISTERED, [self._order(app)], chunk)
                found.update(_unq(m) for m in members)
            return frozenset(found)

        return Deferred.fromCoroutine(registered())

    def delete(self, app: str, streamId: str) -> "Deferred[bool]":
        d = self._eval(_DELETE, [self._order(app), self._hashes(app) + _q(streamId)],
                       [_q(streamId)])
        return d.addCallback(lambda n: int(n) > 0)

    def deleteApp(self, app: str) -> "Deferred[int]":
        async def deleteApp() -> int:
            total = 0
            while True:
                n = int(await self._eval(_DELETE_APP, [self._order(app)],
                                         [self._hashes(app), self._batch]))
                total += n
                if n < self._batch:
                    return total

        return Deferred.fromCoroutine(deleteApp())


def registryFor(store: ITokenStore, limit: int = MAX_BROADCASTS) -> IBroadcastRegistry:
    """
    The broadcast registry in C{store}'s backend: the same SQLite database,
    the same Redis (on its client), or memory.

    @raise ValueError: for a store of another kind.
    """
    from tokengate.store.memory import MemoryTokenStore
    from tokengate.store.redis import RedisTokenStore
    from tokengate.store.sqlite import SQLiteTokenStore

    if isinstance(store, SQLiteTokenStore):
        return SQLiteBroadcasts(store, limit)
    if isinstance(store, RedisTokenStore):
        return RedisBroadcasts(store.client, limit)
    if isinstance(store, MemoryTokenStore):
        return MemoryBroadcasts(limit)
    raise ValueError("no broadcast registry for the {} token store".format(
        getattr(store, "name", type(store).__name__)))


__all__ = ["Broadcast", "BroadcastExists", "TooManyBroadcasts", "IBroadcastLookup",
           "IBroadcastRegistry", "MemoryBroadcasts", "SQLiteBroadcasts", "RedisBroadcasts",
           "registryFor", "MAX_BROADCASTS", "MAX_NAME", "MAX_DESCRIPTION"]
