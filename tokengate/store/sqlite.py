# -*- test-case-name: tests.test_store -*-
"""
The embedded token store: one SQLite file in WAL mode.

All database work runs on one dedicated thread with its own connection, so
the reactor never waits on the disk.  A redemption is a single ``DELETE ...
RETURNING`` statement (atomic in SQLite, across processes sharing the file
too); only when it deletes nothing is the row read to tell the refusal
reason.  ``synchronous=NORMAL`` in WAL mode loses nothing when the process
is killed (only an operating-system crash can roll back the last commits).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any, Callable, Optional, Sequence, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..tokens import Outcome, Probe, StoredToken, judge
from . import ITokenStore, StoreUnavailable

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
        if self._closed:
            from twisted.internet.defer import fail

            return fail(StoreUnavailable("the token store is closed"))

        if not self._pool.started:
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)

        def call() -> T:
            try:
                return f(self._db(), *args)
            except sqlite3.OperationalError as e:
                raise StoreUnavailable(str(e)) from e

        return deferToThreadPool(self._reactor, self._pool, call)

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

    def revoke_stream(self, app: str, streamId: str) -> "Deferred[int]":
        def revoke(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM tokens WHERE app = ? AND stream_id = ?", (app, streamId)
            ).rowcount

        return self._run(revoke)

    def list_stream(
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

    def purge_expired(self, now: float) -> "Deferred[int]":
        def purge(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM tokens WHERE expire_date <= ?", (now,)
            ).rowcount

        return self._run(purge)

    def delete_app(self, app: str) -> "Deferred[int]":
        def delete(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM tokens WHERE app = ?", (app,)).rowcount

        return self._run(delete)

    def close(self) -> "Deferred[None]":
        if self._closed:
            from twisted.internet.defer import succeed

            return succeed(None)

        def close(db: sqlite3.Connection) -> None:
            db.close()
            self._local.conn = None

        d = self._run(close)
        self._closed = True

        def stop(result: object) -> object:
            if self._pool.started:
                self._pool.stop()
            return result

        d.addBoth(stop)
        return d
