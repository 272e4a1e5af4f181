"""
The subscriber-store suite of L{tests.test_subscriber_stores} held to the
Redis store on a real redis-server started by the test; and what only a
cluster store has: two store instances (two nodes) share records and live
connections, a lease whose holder stops refreshing it expires (a real short
TTL), a refreshed one does not, and a Redis that is down fails every call
with L{StoreUnavailable}, counted.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from tokengate.access import subscribers as S
from tokengate.access.subscribers import Refusal, Subscriber
from tokengate.access.subscribers_redis import RedisSubscriberStore
from tokengate.access.subscriberstores import open_subscriber_store
from tokengate.redisclient import RedisClient, RedisSettings
from tokengate.store import StoreUnavailable, open_redis, open_store

from tests.redisserver import start_redis, start_redis_server
from tests.test_subscriber_stores import T0, SameAsMemory, SubscriberStoreSuite

#: the lease TTL of the expiry tests, seconds (real time)
SHORT_TTL = 1.2


class RedisSubscriberStoreTests(SubscriberStoreSuite, SameAsMemory, TestCase):
    def setUp(self) -> None:
        self.host, self.port = start_redis(self)
        self.stores = 0
        SubscriberStoreSuite.setUp(self)

    def client(self, prefix: str) -> RedisClient:
        client = RedisClient(reactor, RedisSettings(host=self.host, port=self.port,
                                                    prefix=prefix))
        self.addCleanup(client.close)
        return client

    def makeStore(self, maxSubscribers: int = S.MAX_SUBSCRIBERS, **kw: Any) -> Any:
        # a fresh key prefix is an empty store; batches of 2 make a
        # revocation take several scripts
        self.stores += 1
        store = RedisSubscriberStore(self.client("sub{}:".format(self.stores)), self.clock,
                                     maxSubscribers=maxSubscribers, batch=2, **kw)
        self.addCleanup(store.close)
        return store

    def sibling(self, store: RedisSubscriberStore, clock: Any = None, **kw: Any
                ) -> RedisSubscriberStore:
        """
        Another node's store on the same keys as C{store}.
        """
        other = RedisSubscriberStore(self.client(store._prefix), clock or self.clock, **kw)
        self.addCleanup(other.close)
        return other

    async def test_twoNodes(self) -> None:
        """
        Two nodes share records, blocks and live connections: one code on
        two nodes at once is refused on the second.
        """
        other = self.sibling(self.store)
        await self.add(Subscriber("alice", "s", "play", concurrentConnectionsLimit=1))
        self.assertIsNotNone(await other.getSubscriber("LiveApp", "s", "alice"))
        lease = await self.acquire()
        self.assertEqual(await self.refused(store=other), Refusal.IN_USE)
        derived = await self.acquire("derived")
        self.assertEqual(await self.refused("derived", store=other), Refusal.IN_USE)
        await derived.release()
        await lease.release()
        await (await self.acquire(store=other)).release()
        await other.blockSubscriber("LiveApp", "s", "alice", "play", 60)
        self.assertEqual(await self.refused(), Refusal.BLOCKED)

    async def test_leaseExpires(self) -> None:
        """
        A node that holds a connection and stops refreshing its lease (its
        clock stands still: it died) frees it within the TTL, by Redis'
        clock; the live count and the unrecorded subscriber's replay mark go
        with it.
        """
        store = self.makeStore(leaseTTL=SHORT_TTL)
        other = self.sibling(store, leaseTTL=SHORT_TTL)
        await self.add(Subscriber("alice", "s", "play"), store)
        await self.acquire(store=store, step=50)
        await self.acquire("derived", store=store, step=50)
        self.assertEqual(await self.refused(store=other, step=50), Refusal.IN_USE)
        self.assertEqual(await self.refused("derived", store=other, step=49), Refusal.REPLAYED)
        await deferLater(reactor, SHORT_TTL + 0.3, lambda: None)
        record = await other.getSubscriber("LiveApp", "s", "alice")
        assert record is not None
        self.assertEqual(record.currentConcurrentConnections, 0)
        # the recorded subscriber's mark is kept with its record
        self.assertEqual(await self.refused(store=other, step=49), Refusal.REPLAYED)
        await (await self.acquire(store=other, step=50)).release()
        await (await self.acquire("derived", store=other, step=1)).release()

    async def test_leaseRefreshed(self) -> None:
        """
        A holder that refreshes its lease (its clock runs) keeps it past
        the TTL; once it stops, the lease expires.
        """
        clock = Clock()
        clock.advance(T0)
        store = self.makeStore(leaseTTL=SHORT_TTL)
        holder = self.sibling(store, clock=clock, leaseTTL=SHORT_TTL)
        lease = await self.acquire(store=holder)
        for _ in range(6):
            # a third of the TTL of real time, and of the holder's clock
            await deferLater(reactor, SHORT_TTL / 3, lambda: None)
            clock.advance(SHORT_TTL / 3)
            await deferLater(reactor, 0.05, lambda: None)  # the refresh's round trip
        self.assertEqual(await self.refused(store=store), Refusal.IN_USE)
        holder.close()  # stops refreshing, as a dead node
        await deferLater(reactor, SHORT_TTL + 0.3, lambda: None)
        await (await self.acquire(store=store, step=11)).release()
        self.assertFalse(lease.released)

    async def test_leaseLostNotTakenBack(self) -> None:
        """
        A lease counted as dead while its holder lived (Redis was out of
        reach longer than the TTL) is not taken back by the next refresh,
        which would exceed the limit.
        """
        clock = Clock()
        store = self.makeStore(leaseTTL=SHORT_TTL)
        holder = self.sibling(store, clock=clock, leaseTTL=SHORT_TTL)
        await self.acquire(store=holder)
        await deferLater(reactor, SHORT_TTL + 0.3, lambda: None)
        other = await self.acquire(store=store)
        clock.advance(SHORT_TTL / 3)  # the holder's refresh
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(await self.refused(store=store, step=12), Refusal.IN_USE)
        await other.release()
        await (await self.acquire(store=store, step=12)).release()

    async def test_nothingLeftBehind(self) -> None:
        """
        Subscribers nobody recorded leave nothing in Redis once their
        connections end (released, or expired with a dead node), but their
        bounded connection events; deleted records leave nothing at all.
        """
        store = self.makeStore(leaseTTL=SHORT_TTL)
        for i in range(20):
            await (await self.acquire("user%d" % i, store=store)).release()
        keys = await store._client.call(lambda conn: conn.keys(store._prefix + "*"))
        self.assertEqual(sorted(k[len(store._prefix):] for k in keys),
                         ["u:e:LiveApp:s", "u:es", "u:eseq"])
        await self.acquire("dead", store=store)
        await self.add(Subscriber("alice", "s", "play"), store)
        await (await self.acquire(store=store)).release()
        await store.blockSubscriber("LiveApp", "s", "ghost", "play", 60)
        self.assertEqual((await store.revokeSubscribers("LiveApp", "s")).subscribers, 2)
        await deferLater(reactor, SHORT_TTL + 0.3, lambda: None)
        # the dead node's lease has expired: a lower code is no replay now
        await (await self.acquire("dead", store=store, step=1)).release()
        keys = await store._client.call(lambda conn: conn.keys(store._prefix + "*"))
        self.assertEqual(sorted(k[len(store._prefix):] for k in keys),
                         ["u:e:LiveApp:s", "u:es", "u:eseq", "u:n", "u:seq"])
        count = await store._client.call(lambda conn: conn.get(store._prefix + "u:n"))
        self.assertEqual(int(count), 0)

    async def keys(self, store: RedisSubscriberStore) -> list[str]:
        keys = await store._client.call(lambda conn: conn.keys("*"))
        return sorted(k for k in keys if k.startswith(store._prefix))

    async def test_deleteAppLeavesNothing(self) -> None:
        """
        Deleting an application leaves none of its keys in Redis (records,
        order, blocks, marks, live hashes, lease keys, events) and no entry
        of it in the shared indexes, in several SCAN steps; a lease
        released afterwards writes nothing back.  Another application, and
        another tokengate whose prefix the glob of this one's would match
        unescaped, keep theirs.
        """
        # glob characters in the prefix
        store = RedisSubscriberStore(self.client("t[1]*?:"), self.clock, batch=2)
        bystander = RedisSubscriberStore(self.client("t1xx:"), self.clock)
        for target in (store, bystander):
            self.addCleanup(target.close)
        for target in (store, bystander):
            await target.addSubscriber("OtherApp", Subscriber("alice", "s", "play"))
            await (await target.acquire("OtherApp", "s", "alice", "play", 5, "hls")).release()
        before = await self.keys(store)
        bystanderKeys = await self.keys(bystander)
        for i in range(6):
            streamId = "s%d" % (i % 3)
            await store.addSubscriber("LiveApp", Subscriber("user%d" % i, streamId, "play"))
            await (await store.acquire("LiveApp", streamId, "user%d" % i, "play", 7,
                                       "rtmp")).release()
            await store.blockSubscriber("LiveApp", streamId, "ghost%d" % i, "publish", 60)
        held = [await store.acquire("LiveApp", "s0", "user0", "play", 8, "srt"),
                await store.acquire("LiveApp", "s1", "derived", "play", 8, "srt")]
        self.assertEqual(await store.deleteApp("LiveApp"), 12)
        self.assertEqual(await self.keys(store), before)
        for lease in held:
            await lease.release()
        self.assertEqual(await self.keys(store), before)
        p = store._prefix
        count = await store._client.call(lambda conn: conn.get(p + "u:n"))
        self.assertEqual(int(count), 1)
        live = await store._client.call(lambda conn: conn.zrange(p + "u:live", 0, -1))
        self.assertEqual(live, ["OtherApp:s:alice"])
        streams = await store._client.call(lambda conn: conn.zrange(p + "u:es", 0, -1))
        self.assertEqual(streams, ["OtherApp:s"])
        self.assertEqual(await self.keys(bystander), bystanderKeys)
        self.assertIsNotNone(await store.getSubscriber("OtherApp", "s", "alice"))

    async def test_closeWaitsForReleases(self) -> None:
        """
        L{RedisSubscriberStore.close} fires once the releases already sent
        are answered: closing the client then loses none.
        """
        other = self.sibling(self.store)
        leases = [await self.acquire("user%d" % i) for i in range(5)]
        for lease in leases:
            lease.release()
        await self.store.close()
        await self.store._client.close()
        for i in range(5):
            await (await self.acquire("user%d" % i, store=other)).release()

    def test_options(self) -> None:
        store = self.makeStore()
        self.assertRaises(ValueError, RedisSubscriberStore, store._client, self.clock,
                          leaseTTL=0)
        self.assertRaises(ValueError, RedisSubscriberStore, store._client, self.clock, batch=0)

    async def test_closed(self) -> None:
        errors: list[str] = []
        store = self.makeStore(onError=errors.append)
        store.close()
        with self.assertRaises(StoreUnavailable):
            await store.acquire("LiveApp", "s", "alice", "play", 1, "hls")
        with self.assertRaises(StoreUnavailable):
            await store.isBlocked("LiveApp", "s", "alice", "play")
        with self.assertRaises(StoreUnavailable):
            await store.listSubscribers("LiveApp", "s", 0, 0)
        self.assertEqual(errors, ["subscriber_acquire", "subscriber_is_blocked",
                                  "subscriber_list"])


class RedisDownTests(TestCase):
    """
    A Redis that is down fails every call within the client's timeout with
    L{StoreUnavailable} (an acquire refuses the connection), counted by
    operation; when it is back, the store works again.
    """

    async def test_down(self) -> None:
        server = start_redis_server(self)
        client = RedisClient(reactor, RedisSettings(host=server.host, port=server.port,
                                                    timeout=0.5, reconnectMaxDelay=0.2))
        self.addCleanup(client.close)
        errors: list[str] = []
        store = RedisSubscriberStore(client, Clock(), onError=errors.append)
        self.addCleanup(store.close)
        lease = await store.acquire("LiveApp", "s", "alice", "play", 1, "hls")
        server.stop()
        calls: list[tuple[str, Deferred[Any]]] = [
            ("acquire", store.acquire("LiveApp", "s", "bob1", "play", 1, "hls")),
            ("add", store.addSubscriber("LiveApp", Subscriber("bob1", "s", "play"))),
            ("get", store.getSubscriber("LiveApp", "s", "bob1")),
            ("list", store.listSubscribers("LiveApp", "s", 0, 10)),
            ("block", store.blockSubscriber("LiveApp", "s", "bob1", "play", 10)),
            ("is_blocked", store.isBlocked("LiveApp", "s", "bob1", "play")),
            ("delete", store.deleteSubscriber("LiveApp", "s", "bob1")),
            ("revoke", store.revokeSubscribers("LiveApp", "s")),
            ("events", store.connectionEvents("LiveApp", "s", 0, 10)),
            ("release", lease.release()),
        ]
        for operation, d in calls:
            with self.assertRaises(StoreUnavailable, msg=operation):
                await d
        self.assertEqual(sorted(errors), sorted("subscriber_" + op for op, _ in calls))
        server.start()  # empty: persistence is off
        for _ in range(50):
            try:
                lease = await store.acquire("LiveApp", "s", "alice", "play", 1, "hls")
                break
            except StoreUnavailable:
                await deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail("the store did not come back")
        await lease.release()


class OpenRedisTests(TestCase):
    async def test_redis(self) -> None:
        """
        A Redis token store from a C{--store} URL gets a Redis subscriber
        store on its client, under its prefix.
        """
        host, port = start_redis(self)
        url = "redis://{}:{}/0?prefix=tg1:".format(host, port)
        client = open_redis(url, reactor)
        assert client is not None
        self.addCleanup(client.close)
        tokens = open_store(url, os.path.join(self.mktemp()), reactor, redis=client)
        store = open_subscriber_store(tokens, Clock())
        self.assertIsInstance(store, RedisSubscriberStore)
        self.assertTrue(await store.addSubscriber("LiveApp", Subscriber("alice", "s", "play")))
        keys = await client.call(lambda conn: conn.keys("*"))
        self.assertTrue(keys)
        self.assertTrue(all(key.startswith("tg1:u:") for key in keys), keys)
        assert isinstance(store, RedisSubscriberStore)
        store.close()
