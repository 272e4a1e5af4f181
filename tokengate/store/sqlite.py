# -*- test-case-name: tests.test_store -*-
"""
The embedded token store: one SQLite file in WAL mode.

All database work runs on one dedicated thread with its own connection, so
the reactor never waits on the disk.  A redemption is a single C{DELETE ...
RETURNING} statement (atomic in SQLite, across processes sharing the file
too); only when it deletes nothing is the row read to tell the refusal
reason.  C{synchronous=NORMAL} in WAL mode loses nothing when the process
is killed (only an operating-system crash can roll back the last commits).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any, Callable, Optional, Sequence, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from tokengate.tokens import Outcome, Probe, StoredToken, judge
from tokengate.store import ITokenStore, StoreUnavailable

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    app TEXT NOT NULL,
    hint TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    expire_date INTEGER NOT NULL,
    type TEXT NOT NULL,
    room_id TEXT
);
CREATE INDEX IF NOT EXISTS tokens_stream ON tokens (app, stream_id);
CREATE INDEX IF NOT EXISTS tokens_expiry ON tokens (expire_date);
"""

_COLUMNS = "app, digest, hint, stream_id, expire_date, type, room_id"

# The one statement that redeems a plain (room-less) token.
_REDEEM = (
    "DELETE FROM tokens WHERE digest = ? AND app = ? AND type = ? "
    "AND expire_date > ? AND stream_id = ? AND room_id IS NULL RETURNING id"
)


def _row(row: tuple[Any, ...]) -> StoredToken:
    app, digest, hint, streamId, expireDate, type_, roomId = row
    return StoredToken(
        app=app,
        digest=digest,
        hint=hint,
        streamId=streamId,
        expireDate=expireDate,
        type=type_,
        roomId=roomId,
    )


def _deliver(results: list[tuple["Deferred[Any]", bool, Any]]) -> None:
    for d, ok, value in results:
        if ok:
            d.callback(value)
        else:
            d.errback(value)


@implementer(ITokenStore)
class SQLiteTokenStore:
    name = "sqlite"

    def __init__(self, path: str, reactor: Any) -> None:
        self._path = path
        self._reactor = reactor
        # Started at first use, so a server that fails to start leaves no
        # thread behind to keep the process alive.
        self._pool = ThreadPool(1, 1, name="tokengate-sqlite")
        self._local = threading.local()
        self._closed = False
        self._lock = threading.Lock()
        self._queue: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []
        self._draining = False
        self._kick: Optional[IDelayedCall] = None  # the pending delayed call of _start
        # Fail at start-up, not at the first request, when the file cannot
        # be opened; this runs before the reactor does, so block on it.
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        conn = self._connect()
        conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=10
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        return conn

    def _db(self) -> sqlite3.Connection:
        conn: Optional[sqlite3.Connection] = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _run(self, f: Callable[..., T], *args: Any) -> "Deferred[T]":
        """
        Queue C{f(db, *args)} for the database thread.

        Calls queued while the thread is busy run together, in order, in one
        transaction, and their results come back to the reactor in one
        hop: under load that is one commit and one thread switch for many
        mints and redemptions instead of one each.  Each call is still one
        atomic statement (or a statement and a read) in that transaction,
        and there is only one writer thread.

        The thread is woken at the end of the reactor iteration (a
        C{callLater(0)}), not by the first call: every request read in the
        same iteration joins that first batch, rather than the thread
        taking the GIL at the reactor's next system call to commit a batch
        of one.
        """
        if self._closed:
            return fail(StoreUnavailable("the token store is closed"))
        if not self._pool.started:
            self._pool.start()
            self._trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._pool.stop
            )
        d: Deferred[T] = Deferred()
        with self._lock:
            self._queue.append((d, f, args))
            start = not self._draining
            self._draining = True
        if start:
            self._kick = self._reactor.callLater(0, self._start)
        return d

    @property
    def path(self) -> str:
        """
        The database file.
        """
        return self._path

    def run(self, f: Callable[..., T], *args: Any) -> "Deferred[T]":
        """
        Queue C{f(db, *args)} for the database thread, batched with the
        token calls (L{_run}): for other tables of the same file (the
        subscriber store, L{tokengate.access.subscribers_sqlite}; the
        broadcast registry, L{tokengate.store.broadcasts.SQLiteBroadcasts}).  Fails
        with L{StoreUnavailable} when the database fails or the store is
        closed; any other exception C{f} raises (not a
        C{sqlite3.OperationalError}) fails this call only, and the
        transaction goes on, with what C{f} wrote before raising.
        """
        return self._run(f, *args)

    def _start(self) -> None:
        self._kick = None
        self._pool.callInThread(self._drain)

    def _drain(self) -> None:
        """
        On the database thread: run every queued call, then hand the results
        back to the reactor.
        """
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._draining = False
                    return
            results: list[tuple[Deferred[Any], bool, Any]] = []
            try:
                db = self._db()
                db.execute("BEGIN IMMEDIATE")
                for d, f, args in batch:
                    try:
                        results.append((d, True, f(db, *args)))
                    except sqlite3.OperationalError:
                        raise  # the whole transaction is lost
                    except Exception as e:
                        results.append((d, False, e))
                db.execute("COMMIT")
            except sqlite3.Error as e:
                try:
                    self._db().execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                results = [(d, False, StoreUnavailable(str(e))) for d, _, _ in batch]
            self._reactor.callFromThread(_deliver, results)

    # --- ITokenStore --------------------------------------------------------

    def add(self, token: StoredToken) -> "Deferred[None]":
        def add(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO tokens ({}) VALUES (?, ?, ?, ?, ?, ?, ?)".format(
                    _COLUMNS
                ),
                (
                    token.app,
                    token.digest,
                    token.hint,
                    token.streamId,
                    token.expireDate,
                    token.type,
                    token.roomId,
                ),
            )

        return self._run(add)

    def redeem(self, digest: str, probe: Probe) -> "Deferred[Outcome]":
        def redeem(db: sqlite3.Connection) -> Outcome:
            hit = db.execute(
                _REDEEM, (digest, probe.app, probe.type, probe.now, probe.streamId)
            ).fetchone()
            if hit is not None:
                return Outcome.GRANTED
            row = db.execute(
                "SELECT {} FROM tokens WHERE digest = ?".format(_COLUMNS), (digest,)
            ).fetchone()
            outcome, consume = judge(_row(row) if row else None, probe)
            if consume:
                # The DELETE above saw no matching row, so this one must
                # have been written or changed since by another process;
                # never grant on a read alone.
                return Outcome.UNKNOWN
            return outcome

        return self._run(redeem)

    def revokeStream(self, app: str, streamId: str) -> "Deferred[int]":
        def revoke(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM tokens WHERE app = ? AND stream_id = ?", (app, streamId)
            ).rowcount

        return self._run(revoke)

    def listStream(
        self, app: str, streamId: str, offset: int, size: int
    ) -> "Deferred[Sequence[StoredToken]]":
        def list_(db: sqlite3.Connection) -> list[StoredToken]:
            rows = db.execute(
                "SELECT {} FROM tokens WHERE app = ? AND stream_id = ? "
                "ORDER BY id LIMIT ? OFFSET ?".format(_COLUMNS),
                (app, streamId, size, offset),
            ).fetchall()
            return [_row(r) for r in rows]

        return self._run(list_)

    def purgeExpired(self, now: float) -> "Deferred[int]":
        def purge(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM tokens WHERE expire_date <= ?", (now,)
            ).rowcount

        return self._run(purge)

    def deleteApp(self, app: str) -> "Deferred[int]":
        def delete(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM tokens WHERE app = ?", (app,)).rowcount

        return self._run(delete)

    def close(self) -> "Deferred[None]":
        """
        Refuse new calls, let queued ones finish, close the connection and
        stop the database thread.
        """
        if self._closed:
            return succeed(None)
        self._closed = True
        if not self._pool.started:
            return succeed(None)
        if self._kick is not None:
            # Queued calls run before the connection is closed.
            self._kick.cancel()
            self._start()

        def close() -> None:
            # The pool has one thread and runs jobs in order: every drain
            # queued before this has finished.
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
                self._local.conn = None

        d = deferToThreadPool(self._reactor, self._pool, close)

        def stop(result: object) -> object:
            self._reactor.removeSystemEventTrigger(self._trigger)
            self._pool.stop()
            return result

        d.addBoth(stop)
        return d
