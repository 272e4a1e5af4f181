"""
L{tokengate.redisclient}: the one Redis client layer, and how the
composition root opens it once for the token store and the revocation
transport.

Nothing here needs a Redis server (nothing listens on the port: the clients
only try to connect, and are closed); the client against a real
redis-server is exercised by L{tests.interop.test_store_redis} and
L{tests.interop.test_cluster}.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tokengate.access.revocation import RedisTransport
from tokengate.redisclient import RedisClient, RedisSettings, RedisUnavailable, parseRedisURL
from tokengate.server import Server
from tokengate.apps import Applications
from tokengate.store import StoreUnavailable, isRedisURL, open_redis, open_store
from tokengate.store.redis import RedisTokenStore

from .redisserver import free_port
from .test_store import probe


class ParseTests(SynchronousTestCase):
    def test_settings(self) -> None:
        settings, rest = parseRedisURL(
            "redis://me:s%40cret@10.0.0.5:6380/3?prefix=x:&timeout=0.5&poolsize=4"
            "&reconnectMaxDelay=1&grace=none&batch=9"
        )
        self.assertEqual(
            settings,
            RedisSettings(host="10.0.0.5", port=6380, db=3, username="me",
                          password="s@cret", prefix="x:", timeout=0.5, poolsize=4,
                          reconnectMaxDelay=1.0),
        )
        self.assertEqual(rest, {"grace": "none", "batch": "9"})
        self.assertNotIn("s@cret", repr(settings))

    def test_defaults(self) -> None:
        settings, rest = parseRedisURL("redis://localhost")
        self.assertEqual(settings, RedisSettings())
        self.assertEqual(rest, {})

    def test_errors(self) -> None:
        for bad in (
            "redis://localhost:6379/zero",
            "redis://localhost:99999/0",
            "redis://localhost/0?ca=/x.pem",
            "redis://localhost/0?timeout=0",
            "redis://localhost/0?poolsize=0",
            "http://localhost/0",
        ):
            self.assertRaises(ValueError, parseRedisURL, bad)

    def test_isRedisURL(self) -> None:
        self.assertTrue(isRedisURL("redis://x"))
        self.assertTrue(isRedisURL("rediss://x"))
        for spec in ("", "sqlite", "memory", "sqlite:/x"):
            self.assertFalse(isRedisURL(spec))
            self.assertIsNone(open_redis(spec, reactor))


class OpenedOnceTests(TestCase):
    """
    The composition root opens one client when the store is Redis and
    hands it to the store and to the revocation transport.
    """

    def setUp(self) -> None:
        self.url = "redis://127.0.0.1:{}/2?prefix=p:&timeout=0.5&grace=none&batch=9".format(
            free_port())

    def test_unknownParameterRefused(self) -> None:
        self.assertRaises(ValueError, open_redis, self.url + "&colour=blue", reactor)
        self.assertRaises(ValueError, RedisClient.fromURL, self.url, reactor)

    async def test_sharedClient(self) -> None:
        client = open_redis(self.url, reactor)
        assert client is not None
        self.addCleanup(client.close)
        store = open_store(self.url, "unused", reactor, redis=client)
        assert isinstance(store, RedisTokenStore)
        self.assertIs(store.client, client)
        self.assertEqual(store.prefix, "p:")
        self.assertIsNone(store._grace)
        self.assertEqual(store._batch, 9)
        self.assertEqual(client.settings.timeout, 0.5)
        self.assertEqual(client.db, 2)
        server = Server(apps=Applications(None), store=store, clock=reactor, redis=client)
        transport = server.revoker.transport
        assert isinstance(transport, RedisTransport)
        self.assertIs(transport.client, client)
        self.assertEqual(transport.channel, "p:revocations:2")
        self.assertEqual(transport.recordKey, "p:revoked")
        self.assertEqual(transport.horizon, max(server.signer.idle, server.signer.vodIdle) + 60)
        # the store does not close a client it was handed ...
        await store.close()
        self.assertFalse(client.closed)
        await self.assertFailure(store.redeem("d" * 64, probe("s1")), StoreUnavailable)
        # ... whoever opened it does; calls then fail at once
        await client.close()
        await self.assertFailure(client.eval("return 1", [], []), RedisUnavailable)

    async def test_ownClient(self) -> None:
        store = open_store(self.url, "unused", reactor)
        assert isinstance(store, RedisTokenStore)
        await store.close()
        self.assertTrue(store.client.closed)

    async def test_unreachableWithinTimeout(self) -> None:
        """
        A call to a Redis that is not there fails with L{RedisUnavailable}
        (the store's L{StoreUnavailable}) within the timeout.
        """
        client = RedisClient.fromURL("redis://127.0.0.1:{}/0?timeout=0.3".format(free_port()),
                                     reactor)
        self.addCleanup(client.close)
        store = RedisTokenStore(client)
        await self.assertFailure(client.eval("return 1", [], []), RedisUnavailable)
        await self.assertFailure(store.purgeExpired(0), StoreUnavailable)
