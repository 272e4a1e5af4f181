"""
The broadcast registry (L{tokengate.store.broadcasts}): one suite, run
against the memory and SQLite backends here and against a real redis-server
in L{tests.interop.test_store_broadcasts_redis}.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tokengate.store import StoreUnavailable
from tokengate.store.broadcasts import (
    Broadcast,
    BroadcastExists,
    IBroadcastRegistry,
    MemoryBroadcasts,
    SQLiteBroadcasts,
    TooManyBroadcasts,
    registryFor,
)
from tokengate.store.memory import MemoryTokenStore
from tokengate.store.sqlite import SQLiteTokenStore

LIMIT = 5


def bc(streamId: str, app: str = "LiveApp", name: str = "", description: str = "",
       date: int = 1_800_000_000_000) -> Broadcast:
    return Broadcast(app, streamId, name or streamId, description, date)


class RegistrySuiteMixin:
    """
    What every broadcast registry does, on a registry of at most L{LIMIT}
    broadcasts per application.
    """

    registry: IBroadcastRegistry

    def makeRegistry(self) -> IBroadcastRegistry:
        raise NotImplementedError()

    def setUp(self) -> None:
        self.registry = self.makeRegistry()

    async def test_createGetExists(self) -> None:
        self.assertFalse(await self.registry.exists("LiveApp", "cam1"))
        self.assertIsNone(await self.registry.get("LiveApp", "cam1"))
        b = bc("cam1", name="Camera one", description="the door")
        await self.registry.create(b)
        self.assertTrue(await self.registry.exists("LiveApp", "cam1"))
        self.assertEqual(await self.registry.get("LiveApp", "cam1"), b)
        # by application
        self.assertFalse(await self.registry.exists("WebRTCAppEE", "cam1"))
        self.assertIsNone(await self.registry.get("WebRTCAppEE", "cam1"))

    async def test_createTwice(self) -> None:
        await self.registry.create(bc("cam1", name="first"))
        await self.assertFailure(self.registry.create(bc("cam1", name="second")),
                                 BroadcastExists)
        self.assertEqual((await self.registry.get("LiveApp", "cam1")).name, "first")
        self.assertEqual(await self.registry.count("LiveApp"), 1)

    async def test_listInCreationOrder(self) -> None:
        ids = ["z", "a", "m.1", "b-2"]
        for i in ids:
            await self.registry.create(bc(i))
        await self.registry.create(bc("other", app="WebRTCAppEE"))
        listed = await self.registry.list("LiveApp", 0, 10)
        self.assertEqual([b.streamId for b in listed], ids)
        self.assertEqual([b.streamId for b in await self.registry.list("LiveApp", 1, 2)],
                         ["a", "m.1"])
        self.assertEqual(list(await self.registry.list("LiveApp", 4, 10)), [])
        self.assertEqual(list(await self.registry.list("LiveApp", 0, 0)), [])
        self.assertEqual(await self.registry.count("LiveApp"), 4)
        self.assertEqual(await self.registry.count("Nope"), 0)
        self.assertEqual(await self.registry.registered("LiveApp", ["a", "q", "b-2", "other"]),
                         frozenset({"a", "b-2"}))
        self.assertEqual(await self.registry.registered("LiveApp", []), frozenset())

    async def test_registeredManyAtOnce(self) -> None:
        """
        More stream ids than one backend call asks about.
        """
        await self.registry.create(bc("s3"))
        asked = ["s{}".format(i) for i in range(1200)]
        self.assertEqual(await self.registry.registered("LiveApp", asked), frozenset({"s3"}))

    async def test_bounded(self) -> None:
        for i in range(LIMIT):
            await self.registry.create(bc("s{}".format(i)))
        e = await self.assertFailure(self.registry.create(bc("one-more")), TooManyBroadcasts)
        self.assertEqual(e.limit, LIMIT)
        self.assertFalse(await self.registry.exists("LiveApp", "one-more"))
        # per application
        await self.registry.create(bc("s0", app="WebRTCAppEE"))
        # room again once one is deleted
        self.assertTrue(await self.registry.delete("LiveApp", "s0"))
        await self.registry.create(bc("one-more"))

    async def test_delete(self) -> None:
        await self.registry.create(bc("cam1"))
        await self.registry.create(bc("cam2"))
        self.assertTrue(await self.registry.delete("LiveApp", "cam1"))
        self.assertFalse(await self.registry.delete("LiveApp", "cam1"))
        self.assertFalse(await self.registry.exists("LiveApp", "cam1"))
        self.assertEqual([b.streamId for b in await self.registry.list("LiveApp", 0, 10)],
                         ["cam2"])
        # created again: last in the order
        await self.registry.create(bc("cam1"))
        self.assertEqual([b.streamId for b in await self.registry.list("LiveApp", 0, 10)],
                         ["cam2", "cam1"])

    async def test_deleteApp(self) -> None:
        for i in range(LIMIT):
            await self.registry.create(bc("s{}".format(i)))
        await self.registry.create(bc("s0", app="WebRTCAppEE"))
        self.assertEqual(await self.registry.deleteApp("LiveApp"), LIMIT)
        self.assertEqual(await self.registry.count("LiveApp"), 0)
        self.assertFalse(await self.registry.exists("LiveApp", "s0"))
        self.assertTrue(await self.registry.exists("WebRTCAppEE", "s0"))
        self.assertEqual(await self.registry.deleteApp("LiveApp"), 0)


class MemoryRegistryTests(RegistrySuiteMixin, TestCase):
    def makeRegistry(self) -> IBroadcastRegistry:
        return MemoryBroadcasts(LIMIT)


class SQLiteRegistryTests(RegistrySuiteMixin, TestCase):
    def makeRegistry(self) -> IBroadcastRegistry:
        self.path = os.path.join(self.mktemp(), "tokens.sqlite3")
        self.store = SQLiteTokenStore(self.path, reactor)
        self.addCleanup(lambda: self.store.close())
        return SQLiteBroadcasts(self.store, LIMIT)

    async def test_survivesRestart(self) -> None:
        """
        The broadcasts are in the token store's database file: a store
        opened on it again (a restarted server) has them, in order.
        """
        await self.registry.create(bc("cam1", name="Camera", description="d"))
        await self.registry.create(bc("cam2"))
        await self.store.close()
        again = SQLiteTokenStore(self.path, reactor)
        self.addCleanup(again.close)
        registry = registryFor(again, LIMIT)
        self.assertIsInstance(registry, SQLiteBroadcasts)
        self.assertEqual(await registry.get("LiveApp", "cam1"),
                         bc("cam1", name="Camera", description="d"))
        self.assertEqual([b.streamId for b in await registry.list("LiveApp", 0, 10)],
                         ["cam1", "cam2"])

    async def test_twoProcessesShareTheBound(self) -> None:
        """
        Two stores on one file (two processes): the bound holds across them.
        """
        other = SQLiteTokenStore(self.path, reactor)
        self.addCleanup(other.close)
        second = SQLiteBroadcasts(other, LIMIT)
        for i in range(LIMIT - 1):
            await self.registry.create(bc("s{}".format(i)))
        await second.create(bc("last"))
        await self.assertFailure(self.registry.create(bc("over")), TooManyBroadcasts)
        await self.assertFailure(second.create(bc("s0")), BroadcastExists)

    async def test_closedStoreUnavailable(self) -> None:
        await self.store.close()
        await self.assertFailure(self.registry.exists("LiveApp", "cam1"), StoreUnavailable)
        await self.assertFailure(self.registry.create(bc("cam1")), StoreUnavailable)


class RegistryForTests(TestCase):
    def test_memory(self) -> None:
        self.assertIsInstance(registryFor(MemoryTokenStore()), MemoryBroadcasts)

    def test_unknownStore(self) -> None:
        self.assertRaises(ValueError, registryFor, object())
