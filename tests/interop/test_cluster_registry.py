"""
The stream registry's Redis backend on a real redis-server: the suite of
L{tests.test_cluster_registry} (claims, compare-and-delete, expiry by a
real TTL, the heartbeat, two nodes racing, Redis down and back), each node
with its own Redis client as the composition root opens one.
"""

from __future__ import annotations

import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tokengate.cluster.registry import (
    RedisBackend,
    RegistryUnavailable,
    StreamRegistry,
    StreamTaken,
)
from tokengate.metrics import Metrics
from tokengate.redisclient import RedisClient

from tests.redisserver import start_redis_server

#: short, real timings: a heartbeat of 0.2 s, entries living 0.6 s
BEAT = 0.2
TTL = 0.6


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def settle(d: Deferred):
    """
    The outcome of C{d}: its result, or its failure's exception.
    """
    try:
        return await d
    except Exception as e:  # noqa: BLE001 (the test inspects it)
        return e


class RedisRegistryTests(TestCase):
    timeout = 60

    def setUp(self):
        self.redisServer = start_redis_server(self)
        self.clients = {}

    def client(self, name):
        if name not in self.clients:
            client = RedisClient.fromURL(self.redisServer.url, reactor, timeout=0.5,
                                         reconnectMaxDelay=0.2)
            self.addCleanup(client.close)
            self.clients[name] = client
        return self.clients[name]

    def node(self, name, ended=None):
        ended = ended if ended is not None else []
        registry = StreamRegistry(RedisBackend(self.client(name)), reactor, Metrics(),
                                  "127.0.0.1:5{:03d}".format(len(self.clients)),
                                  lambda app, streamId: ended.append((app, streamId)),
                                  nodeId=name, heartbeat=BEAT, ttl=TTL)
        self.addCleanup(registry.stop)
        return registry

    async def claim(self, registry, streamId="s1", publishType="RTMP"):
        return await registry.claim("LiveApp", streamId, publishType)

    async def taken(self, registry, streamId="s1"):
        outcome = await settle(Deferred.fromCoroutine(self.claim(registry, streamId)))
        self.assertIsInstance(outcome, StreamTaken)
        return outcome.owner

    async def test_claimReleaseLocate(self):
        a, b = self.node("a"), self.node("b")
        release = await self.claim(a, publishType="SRT")
        self.assertEqual(await self.taken(b), "a")
        self.assertIsNone(await b.locate("LiveApp", "s1"))
        a.streamLive("LiveApp", "s1", 1_800_000_000.25)
        for _ in range(100):
            location = await b.locate("LiveApp", "s1")
            if location is not None:
                break
            await sleep(0.02)
        self.assertEqual((location.nodeId, location.address, location.publishType,
                          location.started), ("a", a.address, "SRT", 1_800_000_000.25))
        self.assertEqual(await b.liveStreams("LiveApp"), {"s1": location})
        release()
        for _ in range(100):
            if await b.locate("LiveApp", "s1") is None:
                break
            await sleep(0.02)
        (await self.claim(b))()

    async def test_compareAndDelete(self):
        a, b = self.node("a"), self.node("b")
        release = await self.claim(a)
        await sleep(TTL + 0.3)  # no heartbeat: a's entry expired
        await self.claim(b)
        release()
        await sleep(0.2)
        self.assertEqual(await self.taken(a), "b")
        backend = RedisBackend(self.client("a"))
        self.assertFalse(await backend.release("LiveApp", "s1", "a"))
        self.assertTrue(await backend.release("LiveApp", "s1", "b"))

    async def test_heartbeatThenExpiry(self):
        a, b = self.node("a"), self.node("b")
        await self.claim(a)
        a.start()
        await sleep(TTL * 3)
        self.assertEqual(await self.taken(b), "a")
        a.stop()  # a dies: its entry expires by itself within the TTL
        await sleep(TTL + 0.2)
        await self.claim(b)

    async def test_racingClaims(self):
        nodes = [self.node(name) for name in "abcd"]
        outcomes = [await settle(d) for d in
                    [Deferred.fromCoroutine(self.claim(n, "race")) for n in nodes]]
        won = [o for o in outcomes if callable(o)]
        lost = [o for o in outcomes if isinstance(o, StreamTaken)]
        self.assertEqual((len(won), len(lost)), (1, 3))
        self.assertEqual(len({o.owner for o in lost}), 1)

    async def test_listingDropsExpired(self):
        a = self.node("a")
        for sid in ("x1", "x2"):
            await self.claim(a, sid)
            a.streamLive("LiveApp", sid, 1.0)
        await sleep(0.1)
        self.assertEqual(sorted(await a.liveStreams("LiveApp")), ["x1", "x2"])
        a.start()
        (await self.claim(a, "x3"))()
        await sleep(TTL * 2)
        self.assertEqual(sorted(await a.liveStreams("LiveApp")), ["x1", "x2"])

    async def test_redisDownAndBack(self):
        """
        Redis down: claims fail closed within the client's timeout; live
        entries are re-asserted when it is back (Redis restarted empty).
        """
        a, b = self.node("a"), self.node("b")
        await self.claim(a)
        a.start()
        self.redisServer.stop()
        started = time.monotonic()
        outcome = await settle(Deferred.fromCoroutine(self.claim(b, "s2")))
        self.assertIsInstance(outcome, RegistryUnavailable)
        self.assertLess(time.monotonic() - started, 3.0)
        await sleep(TTL)
        self.redisServer.start()
        # Redis came back empty: a's heartbeat writes its entry again
        backend = RedisBackend(self.client("a"))
        for _ in range(100):
            entry = await settle(backend.get("LiveApp", "s1"))
            if entry is not None and not isinstance(entry, Exception):
                break
            await sleep(0.05)
        self.assertEqual(entry.nodeId, "a")
        self.assertEqual(await self.taken(b), "a")
        errors = a._errors.labels("refresh")._value.get()
        self.assertGreater(errors, 0)

    async def test_lostWhileCutOffEndsPublisher(self):
        """
        A node that could not refresh past the TTL (its heartbeat stopped, as
        when its own link to Redis is cut) loses its stream to a node that
        claims it; at its next refresh its publisher is ended.
        """
        ended = []
        a, b = self.node("a", ended), self.node("b")
        await self.claim(a)
        a.start()
        a.stop()  # as if a could not refresh
        await sleep(TTL + 0.2)
        await self.claim(b)
        a.start()
        for _ in range(100):
            if ended:
                break
            await sleep(0.05)
        self.assertEqual(ended, [("LiveApp", "s1")])
        self.assertFalse(a.owns("LiveApp", "s1"))
        self.assertEqual(a._lost._value.get(), 1)
        self.assertEqual(await self.taken(a), "b")
