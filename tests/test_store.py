"""
One test suite, run against every token store.

Each store gets a TestCase subclass of L{StoreSuiteMixin} that builds it in
C{makeStore}.  The Redis suite lives in L{tests.interop.test_store_redis}: it
needs a real redis-server.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from tokengate.store import ITokenStore, open_store
from tokengate.store.memory import MemoryTokenStore
from tokengate.store.sqlite import SQLiteTokenStore
from tokengate.tokens import (
    PLAY,
    PUBLISH,
    Outcome,
    Probe,
    StoredToken,
    Token,
    digest,
    new_token,
)

NOW = 1_800_000_000


def probe(streamId: str, type: str = PLAY, room: str | None = None, app: str = "LiveApp",
          now: float = NOW) -> Probe:
    return Probe(app=app, streamId=streamId, type=type, roomId=room, now=now)


class StoreSuiteMixin:
    """
    The behaviour every L{ITokenStore} must have.
    """

    def makeStore(self) -> ITokenStore:
        raise NotImplementedError()

    def setUp(self):
        self.store = self.makeStore()
        self.addCleanup(self.store.close)

    async def mint(self, streamId="s1", type=PLAY, expire=NOW + 60, room=None,
                   app="LiveApp") -> Token:
        token = new_token(streamId, type, expire, room)
        await self.store.add(StoredToken.fromToken(app, token))
        return token

    def test_interface(self):
        verifyObject(ITokenStore, self.store)

    async def test_redeemOnce(self):
        t = await self.mint()
        self.assertEqual(await self.store.redeem(digest(t.tokenId), probe("s1")), Outcome.GRANTED)
        self.assertEqual(await self.store.redeem(digest(t.tokenId), probe("s1")), Outcome.UNKNOWN)

    async def test_unknown(self):
        self.assertEqual(await self.store.redeem(digest("nope"), probe("s1")), Outcome.UNKNOWN)

    async def test_mismatchKeepsToken(self):
        t = await self.mint(type=PUBLISH)
        d = digest(t.tokenId)
        self.assertEqual(await self.store.redeem(d, probe("s2", PUBLISH)), Outcome.WRONG_STREAM)
        self.assertEqual(await self.store.redeem(d, probe("s1", PLAY)), Outcome.WRONG_TYPE)
        self.assertEqual(await self.store.redeem(d, probe("s1", PUBLISH, app="Other")), Outcome.UNKNOWN)
        self.assertEqual(await self.store.redeem(d, probe("s1", PUBLISH)), Outcome.GRANTED)

    async def test_expiry(self):
        t = await self.mint(expire=NOW + 10)
        d = digest(t.tokenId)
        self.assertEqual(await self.store.redeem(d, probe("s1", now=NOW + 10)), Outcome.EXPIRED)
        self.assertEqual(await self.store.redeem(d, probe("s1", now=NOW + 9.5)), Outcome.GRANTED)

    async def test_roomTokenReusable(self):
        t = await self.mint(streamId="s1", room="r1")
        d = digest(t.tokenId)
        for _ in range(3):
            self.assertEqual(await self.store.redeem(d, probe("s1")), Outcome.GRANTED)
        self.assertEqual(await self.store.redeem(d, probe("s9", room="r1")), Outcome.GRANTED)
        self.assertEqual(await self.store.redeem(d, probe("s9", room="r2")), Outcome.WRONG_ROOM)
        self.assertEqual(await self.store.redeem(d, probe("s9")), Outcome.WRONG_STREAM)
        self.assertEqual(await self.store.redeem(d, probe("s1", now=NOW + 60)), Outcome.EXPIRED)

    async def test_revokeAndList(self):
        a = await self.mint("s1")
        b = await self.mint("s1", type=PUBLISH)
        await self.mint("s2")
        await self.mint("s1", app="Other")
        listed = await self.store.listStream("LiveApp", "s1", 0, 10)
        self.assertEqual([t.digest for t in listed], [digest(a.tokenId), digest(b.tokenId)])
        self.assertEqual([t.type for t in listed], [PLAY, PUBLISH])
        self.assertNotIn(a.tokenId, repr(listed))
        page = await self.store.listStream("LiveApp", "s1", 1, 10)
        self.assertEqual([t.digest for t in page], [digest(b.tokenId)])
        self.assertEqual(await self.store.listStream("LiveApp", "s1", 0, 1), listed[:1])
        self.assertEqual(await self.store.revokeStream("LiveApp", "s1"), 2)
        self.assertEqual(await self.store.revokeStream("LiveApp", "s1"), 0)
        self.assertEqual(await self.store.redeem(digest(a.tokenId), probe("s1")), Outcome.UNKNOWN)
        self.assertEqual(len(await self.store.listStream("LiveApp", "s2", 0, 10)), 1)
        self.assertEqual(len(await self.store.listStream("Other", "s1", 0, 10)), 1)

    async def test_purgeExpired(self):
        await self.mint("s1", expire=NOW + 10)
        keep = await self.mint("s2", expire=NOW + 100)
        self.assertEqual(await self.store.purgeExpired(NOW + 10), 1)
        self.assertEqual(await self.store.listStream("LiveApp", "s1", 0, 10), [])
        self.assertEqual(await self.store.redeem(digest(keep.tokenId), probe("s2")), Outcome.GRANTED)

    async def test_deleteApp(self):
        await self.mint("s1", app="Gone")
        keep = await self.mint("s1")
        self.assertEqual(await self.store.deleteApp("Gone"), 1)
        self.assertEqual(await self.store.redeem(digest(keep.tokenId), probe("s1")), Outcome.GRANTED)

    async def test_concurrentRedemptionsOneWinner(self):
        """
        1,000 concurrent redemptions of one token: exactly one is granted.
        """
        t = await self.mint()
        d = digest(t.tokenId)
        results = await gatherResults([self.store.redeem(d, probe("s1")) for _ in range(1000)])
        self.assertEqual(results.count(Outcome.GRANTED), 1)
        self.assertEqual(results.count(Outcome.UNKNOWN), 999)


class MemoryStoreTests(StoreSuiteMixin, TestCase):
    def makeStore(self):
        return MemoryTokenStore()


class SQLiteStoreTests(StoreSuiteMixin, TestCase):
    def makeStore(self):
        self.path = os.path.join(self.mktemp(), "tokens.sqlite3")
        return SQLiteTokenStore(self.path, reactor)

    async def test_durableAcrossReopen(self):
        t = await self.mint()
        other = SQLiteTokenStore(self.path, reactor)
        self.addCleanup(other.close)
        self.assertEqual(await other.redeem(digest(t.tokenId), probe("s1")), Outcome.GRANTED)
        self.assertEqual(await self.store.redeem(digest(t.tokenId), probe("s1")), Outcome.UNKNOWN)

    async def test_keepsOnlyDigests(self):
        t = await self.mint()
        await self.store.close()
        with open(self.path, "rb") as f:
            raw = f.read()
        for suffix in ("-wal",):
            if os.path.exists(self.path + suffix):
                with open(self.path + suffix, "rb") as f:
                    raw += f.read()
        self.assertNotIn(t.tokenId.encode(), raw)
        self.assertIn(digest(t.tokenId).encode(), raw)


class OpenStoreTests(TestCase):
    def test_default(self):
        d = self.mktemp()
        store = open_store("", d, reactor)
        self.addCleanup(store.close)
        self.assertIsInstance(store, SQLiteTokenStore)
        self.assertTrue(os.path.exists(os.path.join(d, "tokens.sqlite3")))

    def test_memory(self):
        self.assertIsInstance(open_store("memory", "x", reactor), MemoryTokenStore)

    def test_unknown(self):
        self.assertRaises(ValueError, open_store, "mongo://x", "x", reactor)
