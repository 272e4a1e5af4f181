"""
L{tokengate.store.broadcasts.RedisBroadcasts} against a real redis-server:
the registry suite of L{tests.test_store_broadcasts}, and what is particular
to Redis (shared by two clients as by two nodes, an outage fails closed).
The test is skipped, not passed, when redis-server is not installed (CI
installs it and counts such skips as failures).
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tokengate.redisclient import RedisClient, RedisSettings
from tokengate.store import StoreUnavailable, open_store
from tokengate.store.broadcasts import (
    BroadcastExists,
    IBroadcastRegistry,
    RedisBroadcasts,
    TooManyBroadcasts,
    registryFor,
)

from tests.redisserver import start_redis_server
from tests.test_store_broadcasts import LIMIT, RegistrySuiteMixin, bc


class RedisRegistryTests(RegistrySuiteMixin, TestCase):
    def client(self) -> RedisClient:
        client = RedisClient(reactor, RedisSettings(host=self.redis.host, port=self.redis.port,
                                                    timeout=1.0))
        self.addCleanup(client.close)
        return client

    def makeRegistry(self) -> IBroadcastRegistry:
        self.redis = start_redis_server(self)
        return RedisBroadcasts(self.client(), LIMIT, batch=2)

    async def test_twoNodes(self) -> None:
        """
        Two clients (two nodes of a cluster) see one registry; the bound and
        the uniqueness hold across them.
        """
        other = RedisBroadcasts(self.client(), LIMIT)
        await self.registry.create(bc("cam1", name="Camera"))
        self.assertEqual(await other.get("LiveApp", "cam1"), bc("cam1", name="Camera"))
        await self.assertFailure(other.create(bc("cam1")), BroadcastExists)
        for i in range(LIMIT - 1):
            await other.create(bc("s{}".format(i)))
        await self.assertFailure(self.registry.create(bc("over")), TooManyBroadcasts)

    async def test_storeURL(self) -> None:
        """
        The composition root's way: the registry of a Redis token store is
        on the store's client.
        """
        store = open_store("redis://127.0.0.1:{}/0".format(self.redis.port), "", reactor)
        self.addCleanup(store.close)
        registry = registryFor(store, LIMIT)
        self.assertIsInstance(registry, RedisBroadcasts)
        await self.registry.create(bc("cam1"))
        self.assertTrue(await registry.exists("LiveApp", "cam1"))

    async def test_outageUnavailable(self) -> None:
        await self.registry.create(bc("cam1"))
        self.redis.stop()
        await self.assertFailure(self.registry.exists("LiveApp", "cam1"), StoreUnavailable)
        await self.assertFailure(self.registry.create(bc("cam2")), StoreUnavailable)
        await self.assertFailure(self.registry.list("LiveApp", 0, 10), StoreUnavailable)
