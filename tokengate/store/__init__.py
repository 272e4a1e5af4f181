# -*- test-case-name: tests.test_store -*-
"""
Token stores: one interface, three implementations.

* :class:`tokengate.store.memory.MemoryTokenStore`: for tests and throwaway
  servers;
* :class:`tokengate.store.sqlite.SQLiteTokenStore`: the embedded default;
* :class:`tokengate.store.redis.RedisTokenStore`: shared by a cluster.

A redemption is one atomic step in every store, so two requests, two
processes or two nodes can never both redeem one token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from ..tokens import Outcome, Probe, StoredToken


class StoreUnavailable(Exception):
    """
    The store cannot be reached.  Minting answers 503, redemptions refuse.
    """


class ITokenStore(Interface):
    """
    Where tokens live between minting and redemption.

    Every method returns a L{Deferred}; failures other than
    L{StoreUnavailable} are bugs.
    """

    name = Attribute("A short name for logs and metrics: memory, sqlite, redis.")

    def add(token: "StoredToken") -> "Deferred[None]":
        """
        Keep a newly minted token.
        """

    def redeem(digest: str, probe: "Probe") -> "Deferred[Outcome]":
        """
        Apply L{tokengate.tokens.judge} to the token with this digest and,
        when it says so, consume the token, all in one atomic step.
        """

    def revoke_stream(app: str, streamId: str) -> "Deferred[int]":
        """
        Delete every token of a stream; fire with how many were deleted.
        """

    def list_stream(
        app: str, streamId: str, offset: int, size: int
    ) -> "Deferred[Sequence[StoredToken]]":
        """
        The tokens of a stream, in minting order, expired ones included.
        """

    def purge_expired(now: float) -> "Deferred[int]":
        """
        Delete tokens whose expireDate has passed; fire with the count.
        """

    def delete_app(app: str) -> "Deferred[int]":
        """
        Delete every token of an application.
        """

    def close() -> "Deferred[None]":
        """
        Release connections and threads.
        """


def open_store(spec: str, data_dir: str, reactor: object) -> ITokenStore:
    """
    Build the store named by a ``--store`` value.

    @param spec: ``""`` or ``sqlite`` (the embedded default, in the data
        directory), ``sqlite:PATH``, ``memory``, or
        ``redis://host:port/db`` (optionally ``redis://:password@host...``).
    """
    import os

    if spec in ("", "sqlite"):
        from .sqlite import SQLiteTokenStore

        return SQLiteTokenStore(os.path.join(data_dir, "tokens.sqlite3"), reactor)
    if spec.startswith("sqlite:"):
        from .sqlite import SQLiteTokenStore

        return SQLiteTokenStore(spec[len("sqlite:") :], reactor)
    if spec == "memory":
        from .memory import MemoryTokenStore

        return MemoryTokenStore()
    if spec.startswith(("redis://", "rediss://")):
        from .redis import RedisTokenStore

        return RedisTokenStore.fromURL(spec, reactor)
    raise ValueError(
        "unknown store {!r}: use sqlite, sqlite:PATH, memory or "
        "redis://host:port/db".format(spec)
    )
