# -*- test-case-name: tests.test_store -*-
"""
Token stores: one interface, three implementations.

* L{tokengate.store.memory.MemoryTokenStore}: for tests and throwaway
  servers;
* L{tokengate.store.sqlite.SQLiteTokenStore}: the embedded default;
* L{tokengate.store.redis.RedisTokenStore}: shared by a cluster.

A redemption is one atomic step in every store, so two requests, two
processes or two nodes can never both redeem one token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from tokengate.redisclient import RedisClient
    from tokengate.tokens import Outcome, Probe, StoredToken


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

    def revokeStream(app: str, streamId: str) -> "Deferred[int]":
        """
        Delete every token of a stream; fire with how many were deleted.
        """

    def listStream(
        app: str, streamId: str, offset: int, size: int
    ) -> "Deferred[Sequence[StoredToken]]":
        """
        The tokens of a stream, in minting order, expired ones included.
        """

    def purgeExpired(now: float) -> "Deferred[int]":
        """
        Delete tokens whose expireDate has passed; fire with the count.
        """

    def deleteApp(app: str) -> "Deferred[int]":
        """
        Delete every token of an application.
        """

    def close() -> "Deferred[None]":
        """
        Release connections and threads.
        """


def isRedisURL(spec: str) -> bool:
    """
    Whether a C{--store} value names a Redis store.
    """
    return spec.startswith(("redis://", "rediss://"))


def open_redis(spec: str, reactor: object) -> Optional["RedisClient"]:
    """
    The Redis client for a C{--store} value: one when it names a Redis
    store (its parameters checked, the store's included), else C{None}.  The
    composition root opens it once and hands it to the token store
    (L{open_store}) and to the revocation service's cluster transport.

    @raise ValueError: if the Redis URL is bad.
    """
    if not isRedisURL(spec):
        return None
    from tokengate.redisclient import RedisClient, parseRedisURL, unknownParameters
    from tokengate.store.redis import RedisTokenStore

    settings, rest = parseRedisURL(spec)
    RedisTokenStore.options(rest)
    unknownParameters(rest)
    return RedisClient(reactor, settings)


def open_store(
    spec: str, data_dir: str, reactor: object, redis: Optional["RedisClient"] = None
) -> ITokenStore:
    """
    Build the store named by a C{--store} value.

    @param spec: C{""} or C{sqlite} (the embedded default, in the data
        directory), C{sqlite:PATH}, C{memory}, or
        C{redis://host:port/db} (optionally C{redis://:password@host...}).
    @param redis: for a Redis store, the client opened by L{open_redis} (the
        store then does not close it); without it the store opens a client
        of its own.
    """
    import os

    if spec in ("", "sqlite"):
        from tokengate.store.sqlite import SQLiteTokenStore

        return SQLiteTokenStore(os.path.join(data_dir, "tokens.sqlite3"), reactor)
    if spec.startswith("sqlite:"):
        from tokengate.store.sqlite import SQLiteTokenStore

        return SQLiteTokenStore(spec[len("sqlite:") :], reactor)
    if spec == "memory":
        from tokengate.store.memory import MemoryTokenStore

        return MemoryTokenStore()
    if isRedisURL(spec):
        from tokengate.store.redis import RedisTokenStore

        if redis is None:
            return RedisTokenStore.fromURL(spec, reactor)
        return RedisTokenStore.onClient(spec, redis)
    raise ValueError(
        "unknown store {!r}: use sqlite, sqlite:PATH, memory or "
        "redis://host:port/db".format(spec)
    )
