# -*- test-case-name: tests.test_subscriber_stores -*-
"""
The embedded subscriber store: L{ISubscriberStore} in the SQLite file of
the token store (L{tokengate.store.sqlite.SQLiteTokenStore}), in tables of
its own, created when missing.

Every call is one function run on the token store's database thread
(L{tokengate.store.sqlite.SQLiteTokenStore.run}), inside one transaction
with whatever the thread batches it with: L{acquire} reads the record, its
block, the subscriber's live count and replay mark and writes the new count,
mark and C{connected} event in one step, so two connections at once cannot
both pass a limit of one.  A database error rolls the whole step back and
fails the call with L{StoreUnavailable}.

Tables::

    subscribers             one row per record: app, stream_id,
                            subscriber_id, record (the JSON of
                            L{tokengate.access.subscriberstores.recordJSON}:
                            the b32Secret is in it), blocked_type,
                            blocked_until (unix ms); rowid order is the
                            order of addition
    subscriber_state        per subscriber: live (connections held by this
                            process), last_step (the newest TOTP step used)
    subscriber_events       connection events (JSON), at most
                            MAX_EVENTS_PER_STREAM per stream
    subscriber_event_streams  the streams with events, least recently
                            written first; at most MAX_EVENT_STREAMS

SQLite serves one node, so live connections are this process's: opening
the store sets every live count to 0 (the connections of a previous process
ended with it) and forgets the state of subscribers nobody recorded; records,
blocks, recorded subscribers' replay marks and events survive a restart.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Optional, Sequence, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from tokengate.access import subscribers as S
from tokengate.access.subscribers import (
    BLOCK_TYPES,
    Clock,
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
from tokengate.store import StoreUnavailable

T = TypeVar("T")

#: runs C{f(db, *args)} on the database thread (L{SQLiteTokenStore.run})
Runner = Callable[..., "Deferred[Any]"]

_INT64 = 2**63 - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscribers (
    id INTEGER PRIMARY KEY,
    app TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    subscriber_id TEXT NOT NULL,
    record TEXT NOT NULL,
    blocked_type TEXT,
    blocked_until INTEGER NOT NULL DEFAULT 0,
    UNIQUE (app, stream_id, subscriber_id)
);
CREATE TABLE IF NOT EXISTS subscriber_state (
    app TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    subscriber_id TEXT NOT NULL,
    live INTEGER NOT NULL,
    last_step INTEGER NOT NULL,
    PRIMARY KEY (app, stream_id, subscriber_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscriber_events (
    id INTEGER PRIMARY KEY,
    app TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS subscriber_events_stream
    ON subscriber_events (app, stream_id, id);
CREATE TABLE IF NOT EXISTS subscriber_event_streams (
    app TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (app, stream_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS subscriber_event_streams_seq
    ON subscriber_event_streams (seq);
"""

#: the state of a subscriber nobody recorded, and that holds no
#: connection, is forgotten
_FORGET = """
DELETE FROM subscriber_state WHERE app = ? AND stream_id = ? AND subscriber_id = ?
AND live <= 0 AND NOT EXISTS (
    SELECT 1 FROM subscribers s WHERE s.app = subscriber_state.app
    AND s.stream_id = subscriber_state.stream_id
    AND s.subscriber_id = subscriber_state.subscriber_id)
"""

_RECORD = """
SELECT s.subscriber_id, s.record, s.blocked_type, s.blocked_until, COALESCE(st.live, 0)
FROM subscribers s LEFT JOIN subscriber_state st
ON st.app = s.app AND st.stream_id = s.stream_id AND st.subscriber_id = s.subscriber_id
"""


def _record(streamId: str, row: tuple[Any, ...]) -> Subscriber:
    subscriberId, record, blockedType, blockedUntil, live = row
    return recordFromJSON(record, streamId, subscriberId, blockedType, blockedUntil, live)


def _event(db: sqlite3.Connection, app: str, event: ConnectionEvent) -> None:
    """
    Record C{event}, keeping at most L{S.MAX_EVENTS_PER_STREAM} per stream
    and L{S.MAX_EVENT_STREAMS} streams.
    """
    streamId = event.streamId
    db.execute("INSERT INTO subscriber_events (app, stream_id, event) VALUES (?, ?, ?)",
               (app, streamId, eventJSON(event)))
    db.execute(
        "DELETE FROM subscriber_events WHERE app = ? AND stream_id = ? AND id <= ("
        "SELECT id FROM subscriber_events WHERE app = ? AND stream_id = ? "
        "ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (app, streamId, app, streamId, S.MAX_EVENTS_PER_STREAM))
    db.execute(
        "INSERT INTO subscriber_event_streams (app, stream_id, seq) VALUES (?, ?, "
        "(SELECT COALESCE(MAX(seq), 0) + 1 FROM subscriber_event_streams)) "
        "ON CONFLICT (app, stream_id) DO UPDATE SET seq = excluded.seq",
        (app, streamId))
    (streams,) = db.execute("SELECT COUNT(*) FROM subscriber_event_streams").fetchone()
    excess = streams - S.MAX_EVENT_STREAMS
    if excess > 0:
        old = db.execute("SELECT app, stream_id FROM subscriber_event_streams "
                         "ORDER BY seq LIMIT ?", (excess,)).fetchall()
        for oldApp, oldStream in old:
            db.execute("DELETE FROM subscriber_events WHERE app = ? AND stream_id = ?",
                       (oldApp, oldStream))
            db.execute("DELETE FROM subscriber_event_streams WHERE app = ? AND stream_id = ?",
                       (oldApp, oldStream))


@implementer(ISubscriberStore)
class SQLiteSubscriberStore:
    """
    L{ISubscriberStore} in the token store's SQLite file.  See the module
    docstring.

    @param path: the database file (the token store's); the tables are
        created there when missing, and live counts reset, before this
        returns.
    @param run: the token store's L{SQLiteTokenStore.run}.
    @param clock: the time of blocks and events.
    @param onError: called with the operation's name when the database
        fails.
    """

    name = "sqlite"

    def __init__(self, path: str, run: Runner, clock: Clock,
                 maxSubscribers: int = S.MAX_SUBSCRIBERS,
                 onError: Optional[ErrorCounter] = None) -> None:
        self._run = run
        self._clock = clock
        self._max = maxSubscribers
        self._onError = onError
        # per application, how many times it was deleted: a lease taken
        # before a deletion ends nothing after it (the live count it would
        # decrement may be a newer connection's).  SQLite serves one
        # process, so this process's count is enough.
        self._deletions: dict[str, int] = {}
        # before the reactor runs (as the token store opens its file): a
        # file that cannot be opened fails at start-up
        conn = sqlite3.connect(path, isolation_level=None, timeout=10)
        try:
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE subscriber_state SET live = 0 WHERE live != 0")
            conn.execute(
                "DELETE FROM subscriber_state WHERE NOT EXISTS ("
                "SELECT 1 FROM subscribers s WHERE s.app = subscriber_state.app "
                "AND s.stream_id = subscriber_state.stream_id "
                "AND s.subscriber_id = subscriber_state.subscriber_id)")
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _nowMs(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _call(self, operation: str, f: Callable[..., T], *args: Any) -> "Deferred[T]":
        d: Deferred[T] = self._run(f, *args)

        def failed(failure: Failure) -> Failure:
            if failure.check(StoreUnavailable) and self._onError is not None:
                self._onError("subscriber_" + operation)
            return failure

        return d.addErrback(failed)

    def _full(self, db: sqlite3.Connection, app: str, streamId: str, subscriberId: str) -> bool:
        """
        Whether a new record for this subscriber would pass the bound.
        """
        if db.execute("SELECT 1 FROM subscribers WHERE app = ? AND stream_id = ? "
                      "AND subscriber_id = ?", (app, streamId, subscriberId)).fetchone():
            return False
        (count,) = db.execute("SELECT COUNT(*) FROM subscribers").fetchone()
        return bool(count >= self._max)

    # --- ISubscriberStore -----------------------------------------------------

    def addSubscriber(self, app: str, subscriber: Subscriber) -> "Deferred[bool]":
        def add(db: sqlite3.Connection) -> bool:
            if self._full(db, app, subscriber.streamId, subscriber.subscriberId):
                return False
            # replacing keeps the row (its place in the listing) and the
            # live count, which lives in subscriber_state
            db.execute(
                "INSERT INTO subscribers (app, stream_id, subscriber_id, record, blocked_type, "
                "blocked_until) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (app, stream_id, subscriber_id) DO UPDATE SET "
                "record = excluded.record, blocked_type = excluded.blocked_type, "
                "blocked_until = excluded.blocked_until",
                (app, subscriber.streamId, subscriber.subscriberId, recordJSON(subscriber),
                 subscriber.blockedType, subscriber.blockedUntilUnitTimeStampMs))
            return True

        return self._call("add", add)

    def getSubscriber(self, app: str, streamId: str, subscriberId: str
                      ) -> "Deferred[Optional[Subscriber]]":
        def get(db: sqlite3.Connection) -> Optional[Subscriber]:
            row = db.execute(_RECORD + " WHERE s.app = ? AND s.stream_id = ? "
                             "AND s.subscriber_id = ?", (app, streamId, subscriberId)).fetchone()
            return None if row is None else _record(streamId, row)

        return self._call("get", get)

    def listSubscribers(self, app: str, streamId: str, offset: int, size: int
                        ) -> "Deferred[Sequence[Subscriber]]":
        offset, size = int(offset), int(size)

        def list_(db: sqlite3.Connection) -> list[Subscriber]:
            if offset < 0 or size <= 0:
                return []
            rows = db.execute(_RECORD + " WHERE s.app = ? AND s.stream_id = ? "
                              "ORDER BY s.id LIMIT ? OFFSET ?",
                              (app, streamId, min(size, _INT64), min(offset, _INT64))
                              ).fetchall()
            return [_record(streamId, row) for row in rows]

        return self._call("list", list_)

    def deleteSubscriber(self, app: str, streamId: str, subscriberId: str) -> "Deferred[bool]":
        def delete(db: sqlite3.Connection) -> bool:
            found = db.execute("DELETE FROM subscribers WHERE app = ? AND stream_id = ? "
                               "AND subscriber_id = ?", (app, streamId, subscriberId)).rowcount
            db.execute(_FORGET, (app, streamId, subscriberId))
            return bool(found)

        return self._call("delete", delete)

    def revokeSubscribers(self, app: str, streamId: str) -> "Deferred[Revoked]":
        def revoke(db: sqlite3.Connection) -> Revoked:
            count: int = db.execute("DELETE FROM subscribers WHERE app = ? AND stream_id = ?",
                                    (app, streamId)).rowcount
            db.execute("DELETE FROM subscriber_state WHERE app = ? AND stream_id = ? "
                       "AND live <= 0", (app, streamId))
            events: int = db.execute("DELETE FROM subscriber_events WHERE app = ? "
                                     "AND stream_id = ?", (app, streamId)).rowcount
            db.execute("DELETE FROM subscriber_event_streams WHERE app = ? AND stream_id = ?",
                       (app, streamId))
            return Revoked(count, events)

        return self._call("revoke", revoke)

    def deleteApp(self, app: str) -> "Deferred[int]":
        # at the call, in the order of the database thread's queue: a lease
        # acquired by a call made before this one is deleted here
        self._deletions[app] = self._deletions.get(app, 0) + 1

        def delete(db: sqlite3.Connection) -> int:
            count: int = db.execute("DELETE FROM subscribers WHERE app = ?", (app,)).rowcount
            # live state too (the leases taken before this end nothing)
            for table in ("subscriber_state", "subscriber_events", "subscriber_event_streams"):
                db.execute("DELETE FROM {} WHERE app = ?".format(table), (app,))
            return count

        return self._call("delete_app", delete)

    def close(self) -> "Deferred[None]":
        """
        Nothing runs here: the calls are the token store's thread's, and
        its C{close} lets those already queued (releases) finish.
        """
        return succeed(None)

    def blockSubscriber(self, app: str, streamId: str, subscriberId: str, blockedType: str,
                        seconds: int) -> "Deferred[bool]":
        if blockedType not in BLOCK_TYPES:
            raise ValueError("the block type must be publish, play or publish_play")
        if not 0 <= seconds <= S.MAX_BLOCK_SECONDS:
            raise ValueError("a block lasts 0 to {} seconds".format(S.MAX_BLOCK_SECONDS))
        until = min(self._nowMs() + seconds * 1000, _INT64)

        def block(db: sqlite3.Connection) -> bool:
            if self._full(db, app, streamId, subscriberId):
                return False
            # As Ant Media: an unknown subscriber is recorded to hold the
            # block, with no type and no secret.
            unknown = Subscriber(subscriberId=subscriberId, streamId=streamId, type=None)
            db.execute(
                "INSERT INTO subscribers (app, stream_id, subscriber_id, record, blocked_type, "
                "blocked_until) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (app, stream_id, subscriber_id) DO UPDATE SET "
                "blocked_type = excluded.blocked_type, blocked_until = excluded.blocked_until",
                (app, streamId, subscriberId, recordJSON(unknown), blockedType, until))
            return True

        return self._call("block", block)

    def isBlocked(self, app: str, streamId: str, subscriberId: str, action: str
                  ) -> "Deferred[bool]":
        nowMs = self._nowMs()

        def blocked(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT blocked_type, blocked_until FROM subscribers WHERE "
                             "app = ? AND stream_id = ? AND subscriber_id = ?",
                             (app, streamId, subscriberId)).fetchone()
            return row is not None and row[0] in (action, S.PUBLISH_AND_PLAY) and nowMs < row[1]

        return self._call("is_blocked", blocked)

    def acquire(self, app: str, streamId: str, subscriberId: str, action: str, step: int,
                protocol: str, instanceIP: Optional[str] = None) -> "Deferred[SubscriberLease]":
        nowMs = self._nowMs()
        protocol = protocol[:S.MAX_NAME]
        where = (app, streamId, subscriberId)

        def acquire(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT record, blocked_type, blocked_until FROM subscribers "
                             "WHERE app = ? AND stream_id = ? AND subscriber_id = ?",
                             where).fetchone()
            limit = 1
            if row is not None:
                record = recordFromJSON(row[0], streamId, subscriberId, row[1], row[2], 0)
                if record.isBlocked(action, nowMs):
                    raise SubscriberRefused(Refusal.BLOCKED)
                limit = record.concurrentConnectionsLimit
            state = db.execute("SELECT live, last_step FROM subscriber_state WHERE app = ? "
                               "AND stream_id = ? AND subscriber_id = ?", where).fetchone()
            if state is None:
                (count,) = db.execute("SELECT COUNT(*) FROM subscriber_state").fetchone()
                if count >= self._max:
                    raise SubscriberRefused(Refusal.FULL)
                live, lastStep = 0, -1
            else:
                live, lastStep = state
            if step < lastStep:
                raise SubscriberRefused(Refusal.REPLAYED)
            if live >= limit:
                raise SubscriberRefused(Refusal.IN_USE)
            db.execute("INSERT INTO subscriber_state (app, stream_id, subscriber_id, live, "
                       "last_step) VALUES (?, ?, ?, 1, ?) "
                       "ON CONFLICT (app, stream_id, subscriber_id) DO UPDATE SET "
                       "live = live + 1, last_step = excluded.last_step", where + (step,))
            _event(db, app, ConnectionEvent(nowMs, "connected", action, protocol, streamId,
                                            subscriberId, instanceIP))

        deletions = self._deletions.get(app, 0)

        def release() -> "Deferred[None]":
            if self._deletions.get(app, 0) != deletions:
                # the application was deleted since (L{deleteApp}): its
                # state went with it, and nothing is written back
                return succeed(None)
            nowMs = self._nowMs()

            def release(db: sqlite3.Connection) -> None:
                db.execute("UPDATE subscriber_state SET live = live - 1 WHERE app = ? "
                           "AND stream_id = ? AND subscriber_id = ? AND live > 0", where)
                # an unrecorded subscriber's state, replay mark included,
                # lasts while it holds a connection
                db.execute(_FORGET, where)
                _event(db, app, ConnectionEvent(nowMs, "disconnected", action, protocol,
                                                streamId, subscriberId, instanceIP))

            return self._call("release", release)

        d = self._call("acquire", acquire)
        return d.addCallback(lambda _: SubscriberLease(streamId, subscriberId, action, release))

    def connectionEvents(self, app: str, streamId: str, offset: int, size: int
                         ) -> "Deferred[Sequence[ConnectionEvent]]":
        offset, size = int(offset), int(size)

        def events(db: sqlite3.Connection) -> list[ConnectionEvent]:
            if offset < 0 or size <= 0:
                return []
            rows = db.execute("SELECT event FROM subscriber_events WHERE app = ? "
                              "AND stream_id = ? ORDER BY id LIMIT ? OFFSET ?",
                              (app, streamId, min(size, _INT64), min(offset, _INT64))
                              ).fetchall()
            return [eventFromJSON(text) for (text,) in rows]

        return self._call("events", events)

