# -*- test-case-name: tests.test_redisclient -*-
"""
The one Redis client layer of tokengate, through txredisapi.

A L{RedisClient} is opened once per process, from the C{--store
redis://...} URL, by the composition root (L{tokengate.tap.makeService}),
and shared by everything that keeps state in that Redis: the token store
(L{tokengate.store.redis.RedisTokenStore}) and the cluster transport of the
revocation service (L{tokengate.access.revocation.RedisTransport}).  It
offers:

* L{RedisClient.call} and L{RedisClient.eval}: one round trip on a
  connection of a pool, answered or failed with L{RedisUnavailable} within
  the client's timeout;
* L{RedisClient.subscribe}: a pub/sub subscription on a dedicated connection
  with the same address, TLS and credentials, kept alive by PINGs and
  re-established for ever;
* C{prefix}: the namespace of every key and channel of this tokengate.

Every node of a cluster points at the same Redis: a standalone server (5.0
or later), or a primary at a fixed address.  Neither Redis Cluster (the
scripts touch keys that they compute) nor Sentinel discovery is supported.

Failures.  Every call fails with L{RedisUnavailable} within C{timeout}
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
  the client recovers by itself when Redis comes back.  (txredisapi gives up
  for good when AUTH or SELECT fails on a new connection, including when
  they time out against a frozen server; this client keeps retrying.)

A script that times out may still have been executed by Redis.
L{RedisClient.close} fails every pending call with L{RedisUnavailable},
cancels its timers and disconnects (subscriptions are closed by their
owners).
"""

from __future__ import annotations

from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from attrs import field, frozen
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

from tokengate.logsafe import Logger

#: Redis error prefixes that mean "cannot serve now", not "bad request".
UNAVAILABLE_ERRORS = (
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


class RedisUnavailable(Exception):
    """
    Redis cannot be reached, does not answer within the timeout, or cannot
    serve now; or the client was closed.
    """


@frozen
class RedisSettings:
    """
    Where a L{RedisClient} connects, and how.
    """

    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    #: an C{IOpenSSLClientConnectionCreator} to speak TLS, or C{None}
    tls: Any = None
    #: the prefix of every key and channel
    prefix: str = "tokengate:"
    #: seconds within which every call answers or fails
    timeout: float = 2.0
    #: connections of the pool
    poolsize: int = 2
    #: longest pause between reconnection attempts, seconds
    reconnectMaxDelay: float = 2.0

    def __attrs_post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.poolsize < 1:
            raise ValueError("poolsize must be at least 1")


#: URL query parameters that L{parseRedisURL} reads (besides C{ca})
_CLIENT_PARAMETERS: dict[str, Callable[[str], Any]] = {
    "prefix": str,
    "timeout": float,
    "poolsize": int,
    "reconnectMaxDelay": float,
}


def parseRedisURL(url: str, **overrides: Any) -> tuple[RedisSettings, dict[str, str]]:
    """
    Read C{redis://[[user]:password@]host[:port][/db][?params]}.

    The client's parameters are C{prefix}, C{timeout}, C{poolsize},
    C{reconnectMaxDelay}; C{rediss://} speaks TLS and checks the server's
    certificate against the platform's trust store, or the PEM file named by
    the C{ca} parameter.  Keyword arguments override.

    @return: the settings, and the query parameters left for others (the
        token store's C{grace} and C{batch}, say), each with its last value.
    @raise ValueError: if the URL is not a Redis URL or a value is bad.
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
        raise ValueError("bad database number {!r} in redis URL".format(path)) from None
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "db": db,
        "password": unquote(parts.password) if parts.password else None,
        "username": unquote(parts.username) if parts.username else None,
    }
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    ca = query.pop("ca", None)
    for key, convert in _CLIENT_PARAMETERS.items():
        if key in query:
            options[key] = convert(query.pop(key))
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
    return RedisSettings(**options), query


def unknownParameters(rest: dict[str, str]) -> None:
    """
    @raise ValueError: naming the parameters in C{rest}, if any.
    """
    if rest:
        raise ValueError(
            "unknown redis URL parameters: {}".format(", ".join(sorted(rest)))
        )


class _PoolFactory(txredisapi.RedisFactory):  # type: ignore[misc]
    """
    txredisapi's pool factory, telling the client when connections come and
    go, and never giving up reconnecting.
    """

    def __init__(self, client: "RedisClient", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = client

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self._client._connectionUp(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self._client._connectionDown(conn)

    def stopTrying(self) -> "Deferred[None]":
        # Called by txredisapi when AUTH or SELECT fails on a new connection
        # (also when they merely time out against a frozen server): keep
        # retrying with back-off instead, so that the client recovers.
        return succeed(None)

    def connectionError(self, why: str) -> None:
        self._client._lastError = why
        super().connectionError(why)


def _factoryOptions(settings: RedisSettings, poolsize: int) -> dict[str, Any]:
    return dict(
        uuid="{}:{}".format(settings.host, settings.port),
        # a new connection is on database 0: no SELECT needed for it
        dbid=settings.db or None,
        poolsize=poolsize,
        isLazy=True,
        charset="utf-8",
        password=settings.password,
        replyTimeout=settings.timeout,
        convertNumbers=False,
        username=settings.username,
    )


def _startFactory(factory: Any, endpoint: Any, reconnectMaxDelay: float) -> None:
    factory.maxDelay = reconnectMaxDelay
    factory.initialDelay = min(factory.initialDelay, reconnectMaxDelay)
    # fires (or fails) once; nobody else waits on it with a lazy pool
    factory.deferred.addErrback(lambda f: None)
    factory.startConnecting(endpoint)


class _SubscriberProtocol(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory._subscription._received(message)


class _SubscriberFactory(txredisapi.RedisFactory):  # type: ignore[misc]
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
    A pub/sub subscription of L{RedisClient.subscribe}.

    When a connection is ready (AUTH and SELECT done) it sends SUBSCRIBE;
    once Redis confirms, C{onSubscribed} is called.  A SUBSCRIBE or PING not
    answered within the client's timeout drops the connection, which is then
    replaced like any lost one.
    """

    log = Logger()

    def __init__(
        self,
        client: "RedisClient",
        channel: str,
        onMessage: Callable[[Any], None],
        onSubscribed: Callable[[], None],
        keepalive: float,
    ) -> None:
        self._reactor = client.reactor
        self._timeout = client.settings.timeout
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
        settings = client.settings
        factory = _SubscriberFactory(self, **_factoryOptions(settings, 1))
        self._factory = factory
        _startFactory(factory, client.endpoint(), settings.reconnectMaxDelay)

    @property
    def connection(self) -> Any:
        """
        The txredisapi protocol of the subscription's connection, or
        C{None} while there is none.
        """
        return self._conn

    def _connectionUp(self, conn: Any) -> None:
        if self._closed:
            conn.transport.loseConnection()
            return
        self._conn = conn
        d = conn.subscribe(self.channel)
        d.addTimeout(self._timeout, self._reactor)

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
        d.addTimeout(self._timeout, self._reactor)

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
        d: Deferred[Any] = self._factory.disconnect()
        d.addErrback(lambda f: self.log.failure("closing a redis subscription", f))
        return d.addCallback(lambda _: None)


class RedisClient:
    """
    A pool of connections to one Redis.  See the module docstring.
    """

    log = Logger()

    def __init__(self, reactor: Any, settings: RedisSettings) -> None:
        self.reactor = reactor
        self.settings = settings
        self._closed = False
        self._pending: set[Deferred[Any]] = set()
        self._waiters: list[Deferred[Any]] = []
        self._next = 0
        self._lastError: Optional[str] = None
        # None while a connection is up; else since when none has been
        self._downSince: Optional[float] = reactor.seconds()
        self._everConnected = False
        factory = _PoolFactory(self, **_factoryOptions(settings, settings.poolsize))
        self._factory = factory
        _startFactory(factory, self.endpoint(), settings.reconnectMaxDelay)

    @classmethod
    def fromURL(cls, url: str, reactor: Any, **overrides: Any) -> "RedisClient":
        """
        A client for C{redis://...} (see L{parseRedisURL}); a parameter that
        is not the client's is refused.

        @raise ValueError: if the URL is bad.
        """
        settings, rest = parseRedisURL(url, **overrides)
        unknownParameters(rest)
        return cls(reactor, settings)

    def endpoint(self) -> Any:
        """
        A client endpoint to the server, under TLS when the settings say so.
        """
        s = self.settings
        endpoint: Any = HostnameEndpoint(self.reactor, s.host, s.port, timeout=s.timeout)
        if s.tls is not None:
            endpoint = wrapClientTLS(s.tls, endpoint)
        return endpoint

    @property
    def prefix(self) -> str:
        """
        The prefix of every key and channel of this tokengate.
        """
        return self.settings.prefix

    @property
    def db(self) -> int:
        return self.settings.db

    @property
    def timeout(self) -> float:
        return self.settings.timeout

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return "<RedisClient {}:{}/{} prefix={!r}>".format(
            self.settings.host, self.settings.port, self.settings.db, self.settings.prefix
        )

    # --- connections --------------------------------------------------------

    def _connectionUp(self, conn: Any) -> None:
        if self._downSince is not None:
            if self._everConnected:
                self.log.info(
                    "redis: connected again to {host}:{port}",
                    host=self.settings.host,
                    port=self.settings.port,
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
            self._downSince = self.reactor.seconds()
            self.log.warn(
                "redis: lost the connection to {host}:{port}",
                host=self.settings.host,
                port=self.settings.port,
            )

    def _unavailable(self, why: str) -> RedisUnavailable:
        detail = "; {}".format(self._lastError) if self._lastError else ""
        return RedisUnavailable(
            "redis at {}:{}: {}{}".format(self.settings.host, self.settings.port, why, detail)
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
        if down is not None and self.reactor.seconds() - down >= self.settings.timeout:
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
        if failure.check(RedisUnavailable):
            return failure
        if failure.check(DeferredTimeout):
            return Failure(
                self._unavailable("no answer within {:g}s".format(self.settings.timeout))
            )
        if failure.check(CancelledError):
            return Failure(self._unavailable("the redis client was closed"))
        if failure.check(txredisapi.ConnectionError, ConnectionLost, ConnectionDone):
            return Failure(self._unavailable(failure.getErrorMessage()))
        if failure.check(txredisapi.ResponseError):
            message = failure.getErrorMessage()
            if message.startswith(UNAVAILABLE_ERRORS):
                return Failure(self._unavailable(message))
        return failure

    def call(self, send: Callable[[Any], "Deferred[Any]"]) -> "Deferred[Any]":
        """
        One round trip: C{send(connection)} on a live connection of the pool
        (a txredisapi protocol), answered or failed with L{RedisUnavailable}
        within the timeout.
        """
        if self._closed:
            return fail(self._unavailable("the redis client was closed"))
        d = Deferred.fromCoroutine(self._roundtrip(send))
        d.addTimeout(self.settings.timeout, self.reactor)
        self._pending.add(d)

        def done(result: Any) -> Any:
            self._pending.discard(d)
            if isinstance(result, Failure):
                return self._translate(result)
            return result

        return d.addBoth(done)

    def eval(self, script: str, keys: list[str], args: list[Any]) -> "Deferred[Any]":
        """
        Run a Lua script, as L{call}.  (txredisapi sends EVALSHA once a
        connection has run the script, and falls back to EVAL on NOSCRIPT.)
        """
        return self.call(lambda conn: conn.eval(script, keys, args))

    def subscribe(
        self,
        channel: str,
        onMessage: Callable[[Any], None],
        onSubscribed: Callable[[], None],
        keepalive: float = 15.0,
    ) -> RedisSubscription:
        """
        Listen to a pub/sub channel on a dedicated connection with this
        client's settings (address, TLS, credentials), re-established with
        back-off for ever until L{RedisSubscription.close}.

        @param onMessage: called with each message (C{str}, or C{bytes}
            when it is not UTF-8).
        @param onSubscribed: called each time the subscription is (again)
            in place: messages published while it was down are lost.
        @param keepalive: seconds between PINGs that detect a dead or frozen
            connection (which is then dropped and replaced).
        """
        return RedisSubscription(self, channel, onMessage, onSubscribed, keepalive)

    def close(self) -> "Deferred[None]":
        """
        Fail every pending call, stop reconnecting and disconnect the pool.
        """
        if self._closed:
            return succeed(None)
        self._closed = True
        for pending in list(self._pending):
            pending.cancel()
        for w in list(self._waiters):
            w.cancel()
        d: Deferred[Any] = self._factory.disconnect()
        d.addErrback(lambda f: self.log.failure("closing the redis client", f))
        return d.addCallback(lambda _: None)


__all__ = ["RedisClient", "RedisSettings", "RedisSubscription", "RedisUnavailable",
           "parseRedisURL", "unknownParameters"]
