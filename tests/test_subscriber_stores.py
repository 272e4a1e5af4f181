"""
One behavioural suite for every subscriber store (L{ISubscriberStore}):
the memory store, the SQLite store (here) and the Redis store on a real
redis-server (L{tests.interop.test_subscriber_stores}).  Each test runs on
the real reactor (the SQLite store's database thread, the Redis client),
with a L{Clock} for the stores' time (blocks, events, lease refreshes).

Also here: the SQLite store across a restart (records, blocks, replay marks
and events survive; live connections do not), a failing database (every
call fails with L{StoreUnavailable}, counted), and
L{open_subscriber_store} from C{--store} values.
"""

from __future__ import annotations

import os
import random
import sqlite3
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from tokengate.access import subscribers as S
from tokengate.access.subscribers import (
    ISubscriberStore,
    MemorySubscriberStore,
    Refusal,
    Revoked,
    Subscriber,
    SubscriberLease,
    SubscriberRefused,
)
from tokengate.access.subscribers_sqlite import SQLiteSubscriberStore
from tokengate.access.subscriberstores import open_subscriber_store
from tokengate.metrics import Metrics
from tokengate.store import StoreUnavailable, open_store
from tokengate.store.sqlite import SQLiteTokenStore

B32 = "JBSWY3DPEHPK3PXPJBSWY3DP"
T0 = 1_700_000_000


class SubscriberStoreSuite:
    """
    The behaviour every L{ISubscriberStore} shares.  A test class mixes this
    into a L{TestCase} and defines L{makeStore}.
    """

    clock: Clock
    store: Any

    def makeStore(self, maxSubscribers: int = S.MAX_SUBSCRIBERS) -> Any:
        raise NotImplementedError()

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = self.makeStore()

    # helpers ---------------------------------------------------------------

    async def add(self, sub: Subscriber, store: Any = None) -> None:
        added = await (store or self.store).addSubscriber("LiveApp", sub)
        self.assertTrue(added)

    async def get(self, subscriberId: str = "alice", streamId: str = "s",
                  app: str = "LiveApp") -> Optional[Subscriber]:
        record: Optional[Subscriber] = await self.store.getSubscriber(app, streamId,
                                                                      subscriberId)
        return record

    async def acquire(self, subscriberId: str = "alice", action: str = "play", step: int = 10,
                      streamId: str = "s", store: Any = None) -> SubscriberLease:
        lease: SubscriberLease = await (store or self.store).acquire(
            "LiveApp", streamId, subscriberId, action, step, "hls", "127.0.0.1")
        self.assertEqual((lease.streamId, lease.subscriberId, lease.type),
                         (streamId, subscriberId, action))
        return lease

    async def refused(self, subscriberId: str = "alice", action: str = "play", step: int = 10,
                      store: Any = None, app: str = "LiveApp") -> Refusal:
        try:
            lease = await (store or self.store).acquire(app, "s", subscriberId, action, step,
                                                        "hls")
        except SubscriberRefused as e:
            return e.refusal
        await lease.release()
        self.fail("acquire({!r}, {!r}, {}) was not refused".format(subscriberId, action, step))

    async def blocked(self, subscriberId: str = "alice", action: str = "play",
                      app: str = "LiveApp") -> bool:
        result: bool = await self.store.isBlocked(app, "s", subscriberId, action)
        return result

    # tests -----------------------------------------------------------------

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(ISubscriberStore, self.store))

    async def test_crud(self) -> None:
        alice = Subscriber("alice", "s", "play", b32Secret=B32, subscriberName="Alice",
                           concurrentConnectionsLimit=3, totpExpiryPeriodSeconds=60)
        await self.add(alice)
        for name in ["bob1", "carol"]:
            await self.add(Subscriber(name, "s", "publish"))
        await self.add(Subscriber("dave", "other", "play"))
        page = await self.store.listSubscribers("LiveApp", "s", 1, 5)
        self.assertEqual([s.subscriberId for s in page], ["bob1", "carol"])
        self.assertEqual(page[0], Subscriber("bob1", "s", "publish"))
        self.assertEqual(await self.get(), alice)  # the secret kept, as given
        self.assertIsNone(await self.get(streamId="other"))
        self.assertIsNone(await self.get(app="liveapp"))
        self.assertEqual(await self.store.listSubscribers("LiveApp", "s", -1, 5), [])
        self.assertEqual(await self.store.listSubscribers("LiveApp", "s", 0, 0), [])
        self.assertEqual(len(await self.store.listSubscribers("LiveApp", "s", 0, 2**31 - 1)), 3)
        # replacing keeps the place in the listing
        await self.add(Subscriber("alice", "s", "publish"))
        self.assertEqual([s.subscriberId for s in
                          await self.store.listSubscribers("LiveApp", "s", 0, 10)],
                         ["alice", "bob1", "carol"])
        self.assertEqual(await self.get(), Subscriber("alice", "s", "publish"))
        self.assertTrue(await self.store.deleteSubscriber("LiveApp", "s", "alice"))
        self.assertFalse(await self.store.deleteSubscriber("LiveApp", "s", "alice"))
        self.assertEqual(await self.store.revokeSubscribers("LiveApp", "s"), Revoked(2, 0))
        self.assertFalse(await self.store.revokeSubscribers("LiveApp", "s"))
        self.assertEqual(await self.store.listSubscribers("LiveApp", "s", 0, 10), [])
        self.assertEqual(len(await self.store.listSubscribers("LiveApp", "other", 0, 10)), 1)

    async def test_namesExact(self) -> None:
        """
        Names that differ in case, or that carry the separators of a key
        (C{:}, C{%}), are different subscribers.
        """
        names = [("LiveApp", "a:b", "c:d.x"), ("LiveApp:a", "b", "c:d.x"),
                 ("LiveApp", "a%3Ab", "c:d.x"), ("liveapp", "a:b", "C:D.x")]
        for app, streamId, subscriberId in names:
            self.assertTrue(await self.store.addSubscriber(
                app, Subscriber(subscriberId, streamId, "play", subscriberName=app + streamId)))
        for app, streamId, subscriberId in names:
            record = await self.store.getSubscriber(app, streamId, subscriberId)
            assert record is not None
            self.assertEqual(record.subscriberName, app + streamId)
            self.assertEqual(len(await self.store.listSubscribers(app, streamId, 0, 10)), 1)

    async def test_applicationsApart(self) -> None:
        await self.add(Subscriber("alice", "s", "play"))
        self.assertIsNone(await self.get(app="OtherApp"))
        self.assertTrue(await self.store.blockSubscriber("OtherApp", "s", "alice", "play", 60))
        self.assertFalse(await self.blocked())
        lease = await self.acquire()
        self.assertEqual(await self.refused(step=11), Refusal.IN_USE)
        self.assertEqual(await self.refused(app="OtherApp"), Refusal.BLOCKED)
        await self.store.blockSubscriber("OtherApp", "s", "alice", "play", 0)
        other = await self.store.acquire("OtherApp", "s", "alice", "play", 1, "hls")
        self.assertEqual((await self.store.revokeSubscribers("OtherApp", "s")).subscribers, 1)
        self.assertIsNotNone(await self.get())
        await lease.release()
        await other.release()

    async def test_full(self) -> None:
        store = self.makeStore(maxSubscribers=2)
        for name in ["alice", "bob1"]:
            await self.add(Subscriber(name, "s", "play"), store)
        self.assertFalse(await store.addSubscriber("LiveApp", Subscriber("carol", "s", "play")))
        self.assertFalse(await store.blockSubscriber("LiveApp", "s", "carol", "play", 60))
        self.assertIsNone(await store.getSubscriber("LiveApp", "s", "carol"))
        # replacing a record is not growth; blocking a recorded one neither
        await self.add(Subscriber("alice", "s", "publish"), store)
        self.assertTrue(await store.blockSubscriber("LiveApp", "s", "bob1", "play", 60))
        # deleting makes room
        self.assertTrue(await store.deleteSubscriber("LiveApp", "s", "alice"))
        await self.add(Subscriber("carol", "s", "play"), store)
        self.assertEqual(await store.revokeSubscribers("LiveApp", "s"), Revoked(2, 0))
        await self.add(Subscriber("dave", "s", "play"), store)
        await self.add(Subscriber("erin", "s", "play"), store)

    async def test_blockExpires(self) -> None:
        await self.add(Subscriber("alice", "s", "publish"))
        self.assertTrue(await self.store.blockSubscriber("LiveApp", "s", "alice", "play", 60))
        self.assertTrue(await self.blocked())
        self.assertFalse(await self.blocked(action="publish"))
        self.assertEqual(await self.refused(), Refusal.BLOCKED)
        await (await self.acquire(action="publish")).release()
        self.clock.advance(59.999)
        self.assertTrue(await self.blocked())
        self.clock.advance(0.001)
        self.assertFalse(await self.blocked())
        await (await self.acquire()).release()
        record = await self.get()
        assert record is not None
        self.assertEqual((record.blockedType, record.blockedUntilUnitTimeStampMs),
                         ("play", (T0 + 60) * 1000))
        # re-adding the record (a REST update) carries the record's block
        await self.add(Subscriber("alice", "s", "publish"))
        record = await self.get()
        assert record is not None
        self.assertEqual((record.blockedType, record.blockedUntilUnitTimeStampMs), (None, 0))

    async def test_blockBoth(self) -> None:
        await self.store.blockSubscriber("LiveApp", "s", "alice", "publish_play", 10)
        self.assertTrue(await self.blocked())
        self.assertTrue(await self.blocked(action="publish"))
        self.assertEqual(await self.refused(action="publish"), Refusal.BLOCKED)
        await self.store.blockSubscriber("LiveApp", "s", "alice", "publish_play", 0)
        self.assertFalse(await self.blocked())
        self.assertFalse(await self.blocked(action="publish"))

    async def test_blockLongest(self) -> None:
        await self.store.blockSubscriber("LiveApp", "s", "alice", "play", S.MAX_BLOCK_SECONDS)
        record = await self.get()
        assert record is not None
        self.assertEqual(record.blockedUntilUnitTimeStampMs,
                         (T0 + S.MAX_BLOCK_SECONDS) * 1000)
        self.clock.advance(S.MAX_BLOCK_SECONDS - 1)
        self.assertEqual(await self.refused(), Refusal.BLOCKED)

    async def test_blockUnknownRecordsIt(self) -> None:
        await self.store.blockSubscriber("LiveApp", "s", "ghost", "publish", 60)
        record = await self.get("ghost")
        assert record is not None
        self.assertEqual((record.type, record.b32Secret, record.concurrentConnectionsLimit),
                         (None, None, 1))
        self.assertEqual(await self.refused("ghost", "publish"), Refusal.BLOCKED)
        await (await self.acquire("ghost", "play")).release()

    def test_blockArguments(self) -> None:
        for blockedType, seconds in [("view", 10), ("play", -1),
                                     ("play", S.MAX_BLOCK_SECONDS + 1)]:
            self.assertRaises(ValueError, self.store.blockSubscriber, "LiveApp", "s", "alice",
                              blockedType, seconds)

    async def test_oneLiveConnection(self) -> None:
        await self.add(Subscriber("alice", "s", "play"))
        for name in ["alice", "derived"]:
            lease = await self.acquire(name)
            self.assertEqual(await self.refused(name), Refusal.IN_USE)
            self.assertEqual(await self.refused(name, "publish"), Refusal.IN_USE)
            await lease.release()
            await lease.release()  # idempotent
            self.assertTrue(lease.released)
            await (await self.acquire(name)).release()

    async def test_atOnce(self) -> None:
        """
        Several connections of one subscriber asked in the same reactor
        turn: exactly the limit pass.
        """
        await self.add(Subscriber("alice", "s", "play", concurrentConnectionsLimit=2))
        for name, limit in [("alice", 2), ("derived", 1)]:
            results = await DeferredList(
                [self.store.acquire("LiveApp", "s", name, "play", 5, "hls") for _ in range(6)],
                consumeErrors=True)
            leases = [value for ok, value in results if ok]
            refusals = [value.value.refusal for ok, value in results if not ok]
            self.assertEqual(len(leases), limit, name)
            self.assertEqual(refusals, [Refusal.IN_USE] * (6 - limit), name)
            for lease in leases:
                await lease.release()

    async def test_liveCountInRecord(self) -> None:
        await self.add(Subscriber("alice", "s", "play", concurrentConnectionsLimit=2))
        first, second = await self.acquire(), await self.acquire()
        self.assertEqual(await self.refused(), Refusal.IN_USE)
        record = await self.get()
        assert record is not None
        self.assertEqual((record.connected, record.currentConcurrentConnections), (True, 2))
        page = await self.store.listSubscribers("LiveApp", "s", 0, 1)
        self.assertEqual(page, [record])
        # re-adding the record (a REST update) keeps the live count
        await self.add(Subscriber("alice", "s", "play", concurrentConnectionsLimit=2))
        self.assertEqual(await self.refused(), Refusal.IN_USE)
        await first.release()
        await second.release()
        record = await self.get()
        assert record is not None
        self.assertEqual((record.connected, record.currentConcurrentConnections), (False, 0))

    async def test_olderCodeRefused(self) -> None:
        await self.add(Subscriber("alice", "s", "play"))
        await (await self.acquire(step=11)).release()
        self.assertEqual(await self.refused(step=10), Refusal.REPLAYED)
        await (await self.acquire(step=11)).release()  # a reconnect within the same step
        await (await self.acquire(step=12)).release()
        self.assertEqual(await self.refused(step=11), Refusal.REPLAYED)
        # a derived subscriber's mark lasts while it holds a connection
        lease = await self.acquire("derived", step=20)
        self.assertEqual(await self.refused("derived", step=19), Refusal.REPLAYED)
        await lease.release()
        await (await self.acquire("derived", step=19)).release()

    async def test_markSurvivesRecordReplace(self) -> None:
        await self.add(Subscriber("alice", "s", "play"))
        await (await self.acquire(step=30)).release()
        await self.add(Subscriber("alice", "s", "play", subscriberName="renamed"))
        self.assertEqual(await self.refused(step=29), Refusal.REPLAYED)
        # deleting the record forgets it
        await self.store.deleteSubscriber("LiveApp", "s", "alice")
        await (await self.acquire(step=29)).release()

    async def test_markSurvivesBlockRecord(self) -> None:
        """
        Blocking a live unrecorded subscriber records it: its replay mark
        then stays with the record after its connection ends, as when a
        record is added.
        """
        lease = await self.acquire("derived", step=20)
        self.assertTrue(await self.store.blockSubscriber("LiveApp", "s", "derived", "publish",
                                                         60))
        await lease.release()
        self.assertEqual(await self.refused("derived", step=19), Refusal.REPLAYED)
        await (await self.acquire("derived", step=20)).release()

    async def test_derivedStateDoesNotGrow(self) -> None:
        store = self.makeStore(maxSubscribers=3)
        for i in range(10):
            await (await self.acquire("user%d" % i, store=store)).release()
        held = [await self.acquire("held%d" % i, store=store) for i in range(3)]
        self.assertEqual(await self.refused("more", store=store), Refusal.FULL)
        await held[0].release()
        await (await self.acquire("more", store=store)).release()
        for lease in held[1:]:
            await lease.release()

    async def test_events(self) -> None:
        lease = await self.acquire()
        self.clock.advance(5)
        await lease.release()
        events = await self.store.connectionEvents("LiveApp", "s", 0, 10)
        self.assertEqual([e.toJSON() for e in events], [
            {"timestamp": T0 * 1000, "eventType": "connected", "type": "play",
             "eventProtocol": "hls", "streamId": "s", "subscriberId": "alice",
             "instanceIP": "127.0.0.1"},
            {"timestamp": (T0 + 5) * 1000, "eventType": "disconnected", "type": "play",
             "eventProtocol": "hls", "streamId": "s", "subscriberId": "alice",
             "instanceIP": "127.0.0.1"},
        ])
        self.assertEqual(await self.store.connectionEvents("LiveApp", "s", 1, 10), events[1:])
        self.assertEqual(await self.store.connectionEvents("LiveApp", "s", 2, 10), [])
        self.assertEqual(await self.store.connectionEvents("LiveApp", "s", 0, 0), [])
        self.assertEqual(await self.store.connectionEvents("LiveApp", "s", -1, 10), [])
        self.assertEqual(await self.store.connectionEvents("LiveApp", "x", 0, 10), [])
        self.assertEqual(await self.store.connectionEvents("OtherApp", "s", 0, 10), [])
        # a refused connection is no event
        await self.store.blockSubscriber("LiveApp", "s", "alice", "play", 60)
        await self.refused()
        self.assertEqual(len(await self.store.connectionEvents("LiveApp", "s", 0, 10)), 2)

    async def test_eventsBounded(self) -> None:
        self.patch(S, "MAX_EVENTS_PER_STREAM", 7)
        self.patch(S, "MAX_EVENT_STREAMS", 3)
        for i in range(6):
            self.clock.advance(1)
            await (await self.acquire(step=i)).release()
        events = await self.store.connectionEvents("LiveApp", "s", 0, 10**6)
        self.assertEqual(len(events), 7)
        self.assertEqual(events[0].eventType, "disconnected")
        self.assertEqual(events[-1].eventType, "disconnected")
        self.assertEqual([e.timestamp for e in events],
                         sorted(e.timestamp for e in events))
        self.assertEqual(events[-1].timestamp, (T0 + 6) * 1000)
        for name in ["a", "b", "c"]:
            await (await self.acquire(streamId=name)).release()
        self.assertEqual(await self.store.connectionEvents("LiveApp", "s", 0, 10), [])
        for name in ["a", "b", "c"]:
            self.assertEqual(len(await self.store.connectionEvents("LiveApp", name, 0, 10)), 2)
        # writing to a stream makes it the most recent
        await (await self.acquire(streamId="a", step=11)).release()
        await (await self.acquire(streamId="d")).release()
        self.assertEqual(await self.store.connectionEvents("LiveApp", "b", 0, 10), [])
        self.assertEqual(len(await self.store.connectionEvents("LiveApp", "a", 0, 10)), 4)

    async def test_revokeClearsEvents(self) -> None:
        """
        Deleting a stream's subscribers deletes its connection events too,
        as Ant Media's C{DELETE .../subscribers}; the answer is true when
        either went.  Other streams' and applications' events stay.
        """
        await self.add(Subscriber("alice", "s", "play"))
        await (await self.acquire()).release()
        await (await self.acquire("derived")).release()
        await (await self.acquire(streamId="other")).release()
        await self.store.addSubscriber("OtherApp", Subscriber("alice", "s", "play"))
        await (await self.store.acquire("OtherApp", "s", "alice", "play", 1, "hls")).release()
        self.assertEqual(await self.store.revokeSubscribers("LiveApp", "s"), Revoked(1, 4))
        self.assertEqual(await self.store.connectionEvents("LiveApp", "s", 0, 10), [])
        self.assertEqual(len(await self.store.connectionEvents("LiveApp", "other", 0, 10)), 2)
        self.assertEqual(len(await self.store.connectionEvents("OtherApp", "s", 0, 10)), 2)
        self.assertFalse(await self.store.revokeSubscribers("LiveApp", "s"))
        # events alone: a true answer, no subscriber deleted
        await (await self.acquire("derived", step=11)).release()
        revoked = await self.store.revokeSubscribers("LiveApp", "s")
        self.assertEqual((bool(revoked), revoked), (True, Revoked(0, 2)))
        # a connection live through the revocation still ends normally
        lease = await self.acquire("derived", step=12)
        self.assertEqual(await self.store.revokeSubscribers("LiveApp", "s"), Revoked(0, 1))
        self.assertEqual(await self.refused("derived", step=12), Refusal.IN_USE)
        await lease.release()
        events = await self.store.connectionEvents("LiveApp", "s", 0, 10)
        self.assertEqual([e.eventType for e in events], ["disconnected"])

    async def test_deleteApp(self) -> None:
        """
        Deleting an application deletes its records, blocks, replay marks,
        live-connection state and events, and nothing of other
        applications; a lease released afterwards (its session was kicked)
        writes nothing back.
        """
        store = self.makeStore(maxSubscribers=5)
        for app in ["LiveApp", "OtherApp"]:
            await store.addSubscriber(app, Subscriber("alice", "s", "play"))
            await store.blockSubscriber(app, "s", "ghost", "play", 60)
            await (await store.acquire(app, "s", "alice", "play", 20, "rtmp")).release()
        await store.addSubscriber("LiveApp", Subscriber("bob1", "t", "play"))
        held = [await store.acquire("LiveApp", "t", "bob1", "play", 20, "srt"),
                await store.acquire("LiveApp", "s", "derived", "play", 20, "srt")]
        self.assertEqual(await store.deleteApp("LiveApp"), 3)
        for streamId, subscriberId in [("s", "alice"), ("s", "ghost"), ("t", "bob1")]:
            self.assertIsNone(await store.getSubscriber("LiveApp", streamId, subscriberId))
        for streamId in ["s", "t"]:
            self.assertEqual(await store.listSubscribers("LiveApp", streamId, 0, 10), [])
            self.assertEqual(await store.connectionEvents("LiveApp", streamId, 0, 10), [])
        self.assertFalse(await store.isBlocked("LiveApp", "s", "ghost", "play"))
        # replay marks and live connections are gone with it
        fresh = [await store.acquire("LiveApp", "s", "alice", "play", 1, "hls"),
                 await store.acquire("LiveApp", "t", "bob1", "play", 1, "hls"),
                 await store.acquire("LiveApp", "s", "derived", "play", 1, "hls")]
        for lease in held:
            await lease.release()
        self.assertEqual(len(await store.connectionEvents("LiveApp", "s", 0, 10)), 2)
        self.assertEqual(len(await store.connectionEvents("LiveApp", "t", 0, 10)), 1)
        for lease in fresh:
            await lease.release()
        self.assertEqual(await store.deleteApp("LiveApp"), 0)
        # the other application is whole
        self.assertEqual([r.subscriberId for r in
                          await store.listSubscribers("OtherApp", "s", 0, 10)], ["alice", "ghost"])
        self.assertTrue(await store.isBlocked("OtherApp", "s", "ghost", "play"))
        self.assertEqual(len(await store.connectionEvents("OtherApp", "s", 0, 10)), 2)
        with self.assertRaises(SubscriberRefused) as e:
            await store.acquire("OtherApp", "s", "alice", "play", 19, "hls")
        self.assertEqual(e.exception.refusal, Refusal.REPLAYED)
        # the deleted records made room
        for name in ["carol", "dave", "erin"]:
            self.assertTrue(await store.addSubscriber("LiveApp", Subscriber(name, "s", "play")))
        self.assertFalse(await store.addSubscriber("LiveApp", Subscriber("frank", "s", "play")))

    async def test_close(self) -> None:
        await (await self.acquire()).release()
        self.assertIsNone(await self.store.close())

    async def test_neverOverLimit(self) -> None:
        """
        Random programs of acquires and releases (seeded): the live count
        is the number of unreleased leases, never above the limit.
        """
        rng = random.Random(12)
        for program in range(4):
            limit = 1 + program % 3
            name = "sub%d" % program
            await self.add(Subscriber(name, "s", "play", concurrentConnectionsLimit=limit))
            leases: list[SubscriberLease] = []
            passed = refused = 0
            for _ in range(25):
                if rng.random() < 0.6:
                    try:
                        leases.append(await self.store.acquire("LiveApp", "s", name, "play", 0,
                                                               "hls"))
                        passed += 1
                    except SubscriberRefused as e:
                        self.assertEqual(e.refusal, Refusal.IN_USE)
                        self.assertEqual(len(leases), limit)
                        refused += 1
                elif leases:
                    await leases.pop(rng.randrange(len(leases))).release()
                self.assertLessEqual(len(leases), limit)
                record = await self.get(name)
                assert record is not None
                self.assertEqual(record.currentConcurrentConnections, len(leases))
            self.assertTrue(passed and refused, (program, passed, refused))
            for lease in leases:
                await lease.release()



class SameAsMemory:
    """
    A persistent store's answers are the memory store's.  Mixed into a
    L{SubscriberStoreSuite} test class.
    """

    clock: Clock
    makeStore: Any
    assertEqual: Any
    assertIsInstance: Any
    assertLessEqual: Any

    async def test_sameAsMemory(self) -> None:
        """
        Seeded random programs of every operation, run on this store and on
        the memory store (the reference) side by side on one clock: every
        answer is the same.
        """
        rng = random.Random(2026)
        seen: set[str] = set()
        for program in range(6):
            store = self.makeStore(maxSubscribers=4)
            reference = MemorySubscriberStore(self.clock, maxSubscribers=4)
            held: list[tuple[SubscriberLease, SubscriberLease]] = []
            for step in range(80):
                op = rng.choice(["add", "add", "delete", "revoke", "block", "acquire",
                                 "acquire", "acquire", "release", "release", "get", "list",
                                 "events", "isBlocked", "advance"] + ["deleteApp"] * (step % 9 == 0))
                streamId = rng.choice(["s", "s", "t"])
                name = rng.choice(["alice", "bob1", "carol", "derived%d" % rng.randrange(6)])
                action = rng.choice(["play", "publish"])
                type = rng.choice(["play", "publish"])
                limit = rng.randint(1, 2)
                blockedType = rng.choice(["play", "publish", "publish_play"])
                seconds = rng.randint(0, 20)
                totpStep = rng.randint(0, 3)
                offset = rng.randint(0, 2)
                release = rng.randrange(len(held)) if held else None
                where = "program {} step {}: {} {} {}".format(program, step, op, streamId, name)
                answers: list[Any] = []
                for target in (store, reference):
                    answer: Any = None
                    if op == "add":
                        answer = await target.addSubscriber("LiveApp", Subscriber(
                            name, streamId, type, concurrentConnectionsLimit=limit))
                    elif op == "delete":
                        answer = await target.deleteSubscriber("LiveApp", streamId, name)
                    elif op == "revoke":
                        answer = await target.revokeSubscribers("LiveApp", streamId)
                    elif op == "deleteApp":
                        answer = await target.deleteApp("LiveApp")
                    elif op == "block":
                        answer = await target.blockSubscriber("LiveApp", streamId, name,
                                                              blockedType, seconds)
                    elif op == "acquire":
                        try:
                            answer = await target.acquire("LiveApp", streamId, name, action,
                                                          totpStep, "srt")
                        except SubscriberRefused as e:
                            answer = e.refusal
                    elif op == "release" and release is not None:
                        answer = await held[release][target is reference].release()
                    elif op == "get":
                        answer = await target.getSubscriber("LiveApp", streamId, name)
                    elif op == "list":
                        answer = list(await target.listSubscribers("LiveApp", streamId,
                                                                   offset, 3))
                    elif op == "events":
                        answer = list(await target.connectionEvents("LiveApp", streamId, 0, 100))
                    elif op == "isBlocked":
                        answer = await target.isBlocked("LiveApp", streamId, name, action)
                    answers.append(answer)
                if op == "advance":
                    self.clock.advance(rng.choice([0.5, 5, 11]))
                mine, theirs = answers
                if isinstance(mine, SubscriberLease):
                    self.assertIsInstance(theirs, SubscriberLease, where)
                    held.append((mine, theirs))
                    seen.add("granted")
                else:
                    self.assertEqual(mine, theirs, where)
                    seen.add(mine.value if isinstance(mine, Refusal) else op)
            for mine, theirs in held:
                await mine.release()
                await theirs.release()
        self.assertLessEqual({"granted", "in_use", "blocked", "replayed", "full", "add", "delete",
                              "revoke", "block", "release", "get", "list", "events",
                              "deleteApp"}, seen)

class MemorySubscriberStoreTests(SubscriberStoreSuite, TestCase):
    def makeStore(self, maxSubscribers: int = S.MAX_SUBSCRIBERS) -> Any:
        return MemorySubscriberStore(self.clock, maxSubscribers=maxSubscribers)


def sqliteTokens(testcase: TestCase, path: Optional[str] = None) -> SQLiteTokenStore:
    """
    A SQLite token store in a new file (or C{path}), closed at cleanup.
    """
    tokens = SQLiteTokenStore(path or os.path.join(testcase.mktemp(), "tokens.sqlite3"),
                              reactor)
    testcase.addCleanup(tokens.close)
    return tokens


class SQLiteSubscriberStoreTests(SubscriberStoreSuite, SameAsMemory, TestCase):
    def makeStore(self, maxSubscribers: int = S.MAX_SUBSCRIBERS) -> Any:
        tokens = sqliteTokens(self)
        return SQLiteSubscriberStore(tokens.path, tokens.run, self.clock,
                                     maxSubscribers=maxSubscribers)


class SQLiteRestartTests(TestCase):
    """
    The SQLite store keeps records, blocks, recorded subscribers' replay
    marks and events in the file; live connections end with the process.
    """

    async def test_restart(self) -> None:
        clock = Clock()
        clock.advance(T0)
        path = os.path.join(self.mktemp(), "tokens.sqlite3")
        tokens = SQLiteTokenStore(path, reactor)
        store = SQLiteSubscriberStore(path, tokens.run, clock)
        alice = Subscriber("alice", "s", "play", b32Secret=B32, concurrentConnectionsLimit=1)
        self.assertTrue(await store.addSubscriber("LiveApp", alice))
        await store.blockSubscriber("LiveApp", "s", "ghost", "publish_play", 3600)
        await store.acquire("LiveApp", "s", "alice", "play", 42, "rtmp")  # never released
        await store.acquire("LiveApp", "s", "derived", "play", 42, "rtmp")
        await tokens.close()

        tokens = sqliteTokens(self, path)
        store = SQLiteSubscriberStore(path, tokens.run, clock)
        record = await store.getSubscriber("LiveApp", "s", "alice")
        self.assertEqual(record, alice)  # the live count is 0 again
        self.assertTrue(await store.isBlocked("LiveApp", "s", "ghost", "play"))
        self.assertEqual([s.subscriberId for s in
                          await store.listSubscribers("LiveApp", "s", 0, 10)], ["alice", "ghost"])
        events = await store.connectionEvents("LiveApp", "s", 0, 10)
        self.assertEqual([(e.subscriberId, e.eventType) for e in events],
                         [("alice", "connected"), ("derived", "connected")])
        with self.assertRaises(SubscriberRefused) as e:
            await store.acquire("LiveApp", "s", "alice", "play", 41, "rtmp")
        self.assertEqual(e.exception.refusal, Refusal.REPLAYED)
        lease = await store.acquire("LiveApp", "s", "alice", "play", 42, "rtmp")
        await lease.release()
        # the unrecorded subscriber's state ended with the process
        lease = await store.acquire("LiveApp", "s", "derived", "play", 1, "rtmp")
        await lease.release()

    def test_sameFileAsTokens(self) -> None:
        """
        The subscriber tables are in the token store's file, beside its
        table.
        """
        tokens = sqliteTokens(self)
        SQLiteSubscriberStore(tokens.path, tokens.run, Clock())
        conn = sqlite3.connect(tokens.path)
        try:
            tables = {name for (name,) in
                      conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
        self.assertEqual(tables, {"tokens", "subscribers", "subscriber_state",
                                  "subscriber_events", "subscriber_event_streams"})


class SQLiteFailureTests(TestCase):
    """
    A database that fails fails every call with L{StoreUnavailable}
    (acquire included: the connection is refused), counted by operation.
    """

    async def test_unavailable(self) -> None:
        errors: list[str] = []
        tokens = sqliteTokens(self)
        store = SQLiteSubscriberStore(tokens.path, tokens.run, Clock(), onError=errors.append)
        lease = await store.acquire("LiveApp", "s", "alice", "play", 1, "hls")
        await tokens.close()
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
        self.assertEqual(errors, ["subscriber_" + op for op, _ in calls])

    def test_badFile(self) -> None:
        """
        A file that is not a database fails at construction (start-up).
        """
        path = os.path.join(self.mktemp())
        os.makedirs(path)
        with open(os.path.join(path, "junk"), "wb") as f:
            f.write(b"not a database" * 100)
        with self.assertRaises(sqlite3.DatabaseError):
            SQLiteSubscriberStore(os.path.join(path, "junk"), lambda f: None, Clock())


class OpenTests(TestCase):
    """
    L{open_subscriber_store}: the backend of the token store built from a
    C{--store} value.
    """

    def test_memory(self) -> None:
        store = open_subscriber_store(open_store("memory", self.mktemp(), reactor), Clock())
        self.assertIsInstance(store, MemorySubscriberStore)

    async def test_sqlite(self) -> None:
        dataDir = self.mktemp()
        tokens = open_store("", dataDir, reactor)
        self.addCleanup(tokens.close)
        store = open_subscriber_store(tokens, Clock())
        self.assertIsInstance(store, SQLiteSubscriberStore)
        self.assertTrue(await store.addSubscriber("LiveApp", Subscriber("alice", "s", "play")))
        conn = sqlite3.connect(os.path.join(dataDir, "tokens.sqlite3"))
        try:
            self.assertEqual(conn.execute("SELECT subscriber_id FROM subscribers").fetchall(),
                             [("alice",)])
        finally:
            conn.close()

    async def test_errorsCounted(self) -> None:
        """
        A call the database fails is counted as the token store's are.
        """
        metrics = Metrics()
        tokens = open_store("", self.mktemp(), reactor)
        store = open_subscriber_store(tokens, Clock(), metrics)
        await tokens.close()
        with self.assertRaises(StoreUnavailable):
            await store.acquire("LiveApp", "s", "alice", "play", 1, "hls")
        self.assertEqual(metrics.registry.get_sample_value(
            "tokengate_store_errors_total", {"operation": "subscriber_acquire"}), 1.0)

    def test_unknown(self) -> None:
        self.assertRaises(ValueError, open_subscriber_store, object(), Clock())
