"""
Tests for L{tokengate.access.subscribers}: the Subscriber model and its
JSON, and the in-memory store (blocking on a Clock, live connections,
connection events).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
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
    admitSubscriber,
    isValidSubscriberId,
    subscriberFromJSON,
)
from tokengate.access.totp import derivedKey, hotp, keyFromB32Secret, stepAt, totpAt
from tokengate.jsonvalue import JSONError, readJSON

B32 = "JBSWY3DPEHPK3PXPJBSWY3DP"


class ModelTests(SynchronousTestCase):
    def test_fromJSON(self) -> None:
        sub = subscriberFromJSON(readJSON(
            '{"subscriberId":"alice@example.com","subscriberName":"Alice","type":"play",'
            '"b32Secret":"%s","streamId":"ignored","currentConcurrentConnections":7}' % B32),
            "stream1", appPeriod=30)
        self.assertEqual(sub, Subscriber(subscriberId="alice@example.com", streamId="stream1",
                                         type="play", b32Secret=B32, subscriberName="Alice",
                                         totpExpiryPeriodSeconds=30))

    def test_secretIsWriteOnly(self) -> None:
        sub = Subscriber("alice", "stream1", "play", b32Secret=B32)
        self.assertNotIn("b32Secret", sub.toJSON())
        self.assertNotIn(B32, repr(sub))
        self.assertEqual(sub.toJSON()["subscriberId"], "alice")

    def test_fromJSONRefuses(self) -> None:
        cases = {
            '{"type":"play"}': "subscriberId",
            '{"subscriberId":"abc","type":"play"}': "subscriberId",
            '{"subscriberId":"ali/ce","type":"play"}': "subscriberId",
            '{"subscriberId":"a,token=x","type":"play"}': "subscriberId",
            '{"subscriberId":"alice"}': "type",
            '{"subscriberId":"alice","type":"publish_play"}': "type",
            '{"subscriberId":"alice","type":"play","b32Secret":"ABC"}': "b32Secret",
            '{"subscriberId":"alice","type":"play","b32Secret":"ABCDEFG1"}': "b32Secret",
            '{"subscriberId":"alice","type":"play","totpExpiryPeriodSeconds":9}':
                "totpExpiryPeriodSeconds",
            '{"subscriberId":"alice","type":"play","concurrentConnectionsLimit":0}':
                "concurrentConnectionsLimit",
            '{"subscriberId":"alice","type":"play","admin":true}': "admin",
            '{"subscriberId":"alice","type":"play","a\\nb":1}': "?",
            '[]': None,
        }
        for body, field in cases.items():
            with self.assertRaises(JSONError, msg=body) as e:
                subscriberFromJSON(readJSON(body), "stream1")
            self.assertEqual(e.exception.field, field, body)
        with self.assertRaises(JSONError) as e:
            subscriberFromJSON(readJSON('{"subscriberId":"abc","type":"play"}'), "s")
        self.assertIn("at least 3", str(e.exception))  # Ant Media's message

    def test_subscriberIdGrammar(self) -> None:
        for good in ["alice", "a.b@example.com", "user_1-2", "x" * 128]:
            self.assertTrue(isValidSubscriberId(good), good)
        for bad in ["abc", "x" * 129, "a b c d", "a/b/c/d", "a+bcd", "ab%2F", "abcd\n",
                    "\u00e9t\u00e9s", None, 1234]:
            self.assertFalse(isValidSubscriberId(bad), repr(bad))

    def test_allows(self) -> None:
        self.assertTrue(Subscriber("alice", "s", "publish").allows("play"))
        self.assertTrue(Subscriber("alice", "s", "publish").allows("publish"))
        self.assertTrue(Subscriber("alice", "s", "play").allows("play"))
        self.assertFalse(Subscriber("alice", "s", "play").allows("publish"))
        self.assertFalse(Subscriber("alice", "s", "publish").allows("delete"))

    def test_key(self) -> None:
        own = Subscriber("alice", "s", "play", b32Secret=B32)
        self.assertEqual(own.key("appsecret", "play"), keyFromB32Secret(B32))
        derived = Subscriber("alice", "s", None)
        self.assertEqual(derived.key("appsecret", "play"),
                         derivedKey("appsecret", "alice", "s", "play"))
        self.assertEqual(Subscriber("alice", "s", "play").period(60), 60)
        self.assertEqual(
            Subscriber("alice", "s", "play", totpExpiryPeriodSeconds=30).period(60), 30)


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemorySubscriberStore(self.clock)

    def add(self, sub: Subscriber) -> None:
        self.assertTrue(self.successResultOf(self.store.addSubscriber("LiveApp", sub)))

    def acquire(self, subscriberId: str = "alice", action: str = "play", step: int = 10,
                streamId: str = "s") -> SubscriberLease:
        return self.successResultOf(
            self.store.acquire("LiveApp", streamId, subscriberId, action, step, "hls", "127.0.0.1"))

    def refused(self, subscriberId: str = "alice", action: str = "play", step: int = 10
                ) -> Refusal:
        f = self.failureResultOf(
            self.store.acquire("LiveApp", "s", subscriberId, action, step, "hls"), SubscriberRefused)
        return f.value.refusal

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(ISubscriberStore, self.store))

    def test_crud(self) -> None:
        for name in ["alice", "bob1", "carol"]:
            self.add(Subscriber(name, "s", "play"))
        self.add(Subscriber("dave", "other", "play"))
        self.assertEqual([s.subscriberId for s in
                          self.successResultOf(self.store.listSubscribers("LiveApp", "s", 1, 5))],
                         ["bob1", "carol"])
        self.assertEqual(self.successResultOf(self.store.getSubscriber("LiveApp", "s", "alice")),
                         Subscriber("alice", "s", "play"))
        self.assertIsNone(self.successResultOf(self.store.getSubscriber("LiveApp", "other", "alice")))
        self.assertTrue(self.successResultOf(self.store.deleteSubscriber("LiveApp", "s", "alice")))
        self.assertFalse(self.successResultOf(self.store.deleteSubscriber("LiveApp", "s", "alice")))
        self.assertEqual(self.successResultOf(self.store.revokeSubscribers("LiveApp", "s")),
                         Revoked(2, 0))
        self.assertEqual(self.successResultOf(self.store.listSubscribers("LiveApp", "s", 0, 10)), [])
        self.assertEqual(len(self.successResultOf(self.store.listSubscribers("LiveApp", "other", 0, 10))),
                         1)

    def test_applicationsApart(self) -> None:
        """
        The same stream and subscriber in two applications are two
        subscribers: records, blocks and live connections apart.
        """
        self.add(Subscriber("alice", "s", "play"))
        self.assertIsNone(self.successResultOf(self.store.getSubscriber("OtherApp", "s", "alice")))
        self.successResultOf(self.store.blockSubscriber("OtherApp", "s", "alice", "play", 60))
        self.assertFalse(self.successResultOf(self.store.isBlocked("LiveApp", "s", "alice", "play")))
        self.acquire()
        self.failureResultOf(self.store.acquire("LiveApp", "s", "alice", "play", 1, "hls"),
                             SubscriberRefused)
        self.failureResultOf(self.store.acquire("OtherApp", "s", "alice", "play", 1, "hls"),
                             SubscriberRefused)
        self.successResultOf(self.store.blockSubscriber("OtherApp", "s", "alice", "play", 0))
        self.successResultOf(self.store.acquire("OtherApp", "s", "alice", "play", 1, "hls"))
        self.assertEqual(self.successResultOf(self.store.revokeSubscribers("OtherApp", "s")).subscribers,
                         1)
        self.assertIsNotNone(self.successResultOf(self.store.getSubscriber("LiveApp", "s", "alice")))

    def test_full(self) -> None:
        store = MemorySubscriberStore(self.clock, maxSubscribers=2)
        for name in ["alice", "bob1"]:
            self.assertTrue(self.successResultOf(store.addSubscriber("LiveApp", Subscriber(name, "s", "play"))))
        self.assertFalse(self.successResultOf(store.addSubscriber("LiveApp", Subscriber("carol", "s", "play"))))
        self.assertFalse(self.successResultOf(store.blockSubscriber("LiveApp", "s", "carol", "play", 60)))
        # replacing a record is not growth
        self.assertTrue(self.successResultOf(
            store.addSubscriber("LiveApp", Subscriber("alice", "s", "publish"))))

    def test_blockExpires(self) -> None:
        self.add(Subscriber("alice", "s", "publish"))
        self.assertTrue(self.successResultOf(self.store.blockSubscriber("LiveApp", "s", "alice", "play", 60)))
        self.assertTrue(self.successResultOf(self.store.isBlocked("LiveApp", "s", "alice", "play")))
        self.assertFalse(self.successResultOf(self.store.isBlocked("LiveApp", "s", "alice", "publish")))
        self.assertEqual(self.refused(), Refusal.BLOCKED)
        self.acquire(action="publish").release()
        self.clock.advance(59.999)
        self.assertTrue(self.successResultOf(self.store.isBlocked("LiveApp", "s", "alice", "play")))
        self.clock.advance(0.001)
        self.assertFalse(self.successResultOf(self.store.isBlocked("LiveApp", "s", "alice", "play")))
        self.acquire().release()
        record = self.successResultOf(self.store.getSubscriber("LiveApp", "s", "alice"))
        assert record is not None
        self.assertEqual((record.blockedType, record.blockedUntilUnitTimeStampMs),
                         ("play", 1_700_000_060_000))

    def test_blockBoth(self) -> None:
        self.successResultOf(self.store.blockSubscriber("LiveApp", "s", "alice", "publish_play", 10))
        self.assertTrue(self.successResultOf(self.store.isBlocked("LiveApp", "s", "alice", "play")))
        self.assertTrue(self.successResultOf(self.store.isBlocked("LiveApp", "s", "alice", "publish")))
        self.successResultOf(self.store.blockSubscriber("LiveApp", "s", "alice", "publish_play", 0))
        self.assertFalse(self.successResultOf(self.store.isBlocked("LiveApp", "s", "alice", "play")))

    def test_blockUnknownRecordsIt(self) -> None:
        """
        As Ant Media: blocking a subscriber nobody recorded records it,
        with no type and no secret (its key stays the derived one).
        """
        self.successResultOf(self.store.blockSubscriber("LiveApp", "s", "ghost", "publish", 60))
        record = self.successResultOf(self.store.getSubscriber("LiveApp", "s", "ghost"))
        assert record is not None
        self.assertEqual((record.type, record.b32Secret), (None, None))
        self.assertEqual(self.refused("ghost", "publish"), Refusal.BLOCKED)

    def test_blockArguments(self) -> None:
        self.assertRaises(ValueError, self.store.blockSubscriber, "LiveApp", "s", "alice", "view", 10)
        self.assertRaises(ValueError, self.store.blockSubscriber, "LiveApp", "s", "alice", "play", -1)
        self.assertRaises(ValueError, self.store.blockSubscriber, "LiveApp", "s", "alice", "play",
                          S.MAX_BLOCK_SECONDS + 1)

    def test_oneLiveConnection(self) -> None:
        """
        One subscriber code on two live connections at once: the second
        is refused, recorded subscriber or derived alike.
        """
        self.add(Subscriber("alice", "s", "play"))
        for name in ["alice", "derived"]:
            lease = self.acquire(name)
            self.assertEqual(self.refused(name), Refusal.IN_USE)
            self.assertEqual(self.refused(name, "publish"), Refusal.IN_USE)
            self.successResultOf(lease.release())
            self.successResultOf(lease.release())  # idempotent
            self.assertTrue(lease.released)
            self.acquire(name).release()

    def test_liveCountInRecord(self) -> None:
        self.add(Subscriber("alice", "s", "play", concurrentConnectionsLimit=2))
        first, second = self.acquire(), self.acquire()
        self.assertEqual(self.refused(), Refusal.IN_USE)
        record = self.successResultOf(self.store.getSubscriber("LiveApp", "s", "alice"))
        assert record is not None
        self.assertEqual((record.connected, record.currentConcurrentConnections), (True, 2))
        # re-adding the record (a REST update) keeps the live count
        self.add(Subscriber("alice", "s", "play", concurrentConnectionsLimit=2))
        self.assertEqual(self.refused(), Refusal.IN_USE)
        first.release()
        second.release()
        record = self.successResultOf(self.store.getSubscriber("LiveApp", "s", "alice"))
        assert record is not None
        self.assertEqual((record.connected, record.currentConcurrentConnections), (False, 0))

    def test_olderCodeRefused(self) -> None:
        self.add(Subscriber("alice", "s", "play"))
        self.acquire(step=11).release()
        self.assertEqual(self.refused(step=10), Refusal.REPLAYED)
        self.acquire(step=11).release()  # a reconnect within the same step
        self.acquire(step=12).release()

    def test_derivedStateDoesNotGrow(self) -> None:
        store = MemorySubscriberStore(self.clock, maxSubscribers=3)
        for i in range(10):
            lease = self.successResultOf(store.acquire("LiveApp", "s", "user%d" % i, "play", 1, "hls"))
            lease.release()
        held = [self.successResultOf(store.acquire("LiveApp", "s", "held%d" % i, "play", 1, "hls"))
                for i in range(3)]
        f = self.failureResultOf(store.acquire("LiveApp", "s", "more", "play", 1, "hls"), SubscriberRefused)
        self.assertEqual(f.value.refusal, Refusal.FULL)
        held[0].release()
        self.successResultOf(store.acquire("LiveApp", "s", "more", "play", 1, "hls"))

    def test_events(self) -> None:
        lease = self.acquire()
        self.clock.advance(5)
        lease.release()
        events = self.successResultOf(self.store.connectionEvents("LiveApp", "s", 0, 10))
        self.assertEqual([e.toJSON() for e in events], [
            {"timestamp": 1_700_000_000_000, "eventType": "connected", "type": "play",
             "eventProtocol": "hls", "streamId": "s", "subscriberId": "alice",
             "instanceIP": "127.0.0.1"},
            {"timestamp": 1_700_000_005_000, "eventType": "disconnected", "type": "play",
             "eventProtocol": "hls", "streamId": "s", "subscriberId": "alice",
             "instanceIP": "127.0.0.1"},
        ])
        self.assertEqual(self.successResultOf(self.store.connectionEvents("LiveApp", "s", 1, 10)),
                         events[1:])
        self.assertEqual(self.successResultOf(self.store.connectionEvents("LiveApp", "x", 0, 10)), [])

    def test_eventsBounded(self) -> None:
        for i in range(S.MAX_EVENTS_PER_STREAM):
            self.acquire(step=i).release()
        events = self.successResultOf(self.store.connectionEvents("LiveApp", "s", 0, 10**6))
        self.assertEqual(len(events), S.MAX_EVENTS_PER_STREAM)
        self.assertEqual(events[0].eventType, "connected")
        self.assertEqual(events[-1].eventType, "disconnected")
        self.patch(S, "MAX_EVENT_STREAMS", 3)
        for name in ["a", "b", "c", "d"]:
            self.acquire(streamId=name).release()
        self.assertEqual(self.successResultOf(self.store.connectionEvents("LiveApp", "s", 0, 10)), [])
        self.assertEqual(len(self.successResultOf(self.store.connectionEvents("LiveApp", "d", 0, 10))), 2)

    @given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=40),
           st.integers(1, 3))
    def test_neverOverLimit(self, ops: list[tuple[bool, int]], limit: int) -> None:
        """
        Any sequence of acquires and releases: the live count is the
        number of unreleased leases, never above the limit.
        """
        store = MemorySubscriberStore(Clock())
        store.addSubscriber("LiveApp", Subscriber("alice", "s", "play", concurrentConnectionsLimit=limit))
        leases: list[SubscriberLease] = []
        for take, index in ops:
            if take:
                d = store.acquire("LiveApp", "s", "alice", "play", 0, "hls")
                if len(leases) < limit:
                    leases.append(self.successResultOf(d))
                else:
                    self.failureResultOf(d, SubscriberRefused)
            elif leases:
                leases.pop(index % len(leases)).release()
            record = self.successResultOf(store.getSubscriber("LiveApp", "s", "alice"))
            assert record is not None
            self.assertEqual(record.currentConcurrentConnections, len(leases))


class AdmitTests(SynchronousTestCase):
    """
    L{admitSubscriber}: the whole TOTP check over the memory store.
    """

    SECRET = "appsecret"

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemorySubscriberStore(self.clock)

    def admit(self, subscriberId: object, code: object, action: str = "play",
              secret: str = SECRET) -> "Deferred[SubscriberLease]":
        return Deferred.fromCoroutine(admitSubscriber(
            self.store, "LiveApp", "s", subscriberId, code, action, secret, 60,
            self.clock.seconds(),
            "webrtc"))

    def refusal(self, subscriberId: object, code: object, action: str = "play",
                secret: str = SECRET) -> Refusal:
        f = self.failureResultOf(self.admit(subscriberId, code, action, secret),
                                 SubscriberRefused)
        return f.value.refusal

    def derivedCode(self, subscriberId: str, action: str) -> str:
        return totpAt(derivedKey(self.SECRET, subscriberId, "s", action), self.clock.seconds())

    def test_derived(self) -> None:
        """
        A subscriber nobody recorded, with the code Ant Media derives for
        it: admitted once at a time; a code for the other type is not its.
        """
        code = self.derivedCode("alice", "play")
        lease = self.successResultOf(self.admit("alice", code))
        self.assertEqual(self.refusal("alice", code), Refusal.IN_USE)
        lease.release()
        self.successResultOf(self.admit("alice", code)).release()
        self.assertEqual(self.refusal("alice", code, "publish"), Refusal.INVALID)
        self.assertEqual(self.refusal("alice", code, secret="other"), Refusal.INVALID)
        self.assertEqual(self.refusal("alice", code, secret=""), Refusal.INVALID)

    def test_recorded(self) -> None:
        self.successResultOf(self.store.addSubscriber("LiveApp", 
            Subscriber("alice", "s", "play", b32Secret=B32, totpExpiryPeriodSeconds=30)))
        key = keyFromB32Secret(B32)
        code = hotp(key, stepAt(self.clock.seconds(), 30))
        self.successResultOf(self.admit("alice", code)).release()
        # the derived code is not this subscriber's, and play may not publish
        self.assertEqual(self.refusal("alice", self.derivedCode("alice", "play")),
                         Refusal.INVALID)
        self.assertEqual(self.refusal("alice", code, "publish"), Refusal.TYPE)

    def test_publisherMayPlay(self) -> None:
        self.successResultOf(self.store.addSubscriber("LiveApp", Subscriber("alice", "s", "publish")))
        self.successResultOf(self.admit("alice", self.derivedCode("alice", "play"))).release()

    def test_blockedAfterTheCode(self) -> None:
        self.successResultOf(self.store.blockSubscriber("LiveApp", "s", "alice", "play", 60))
        right = self.derivedCode("alice", "play")
        wrong = "000000" if right != "000000" else "111111"
        self.assertEqual(self.refusal("alice", wrong), Refusal.INVALID)
        self.assertEqual(self.refusal("alice", self.derivedCode("alice", "play")),
                         Refusal.BLOCKED)
        self.clock.advance(60)
        self.successResultOf(self.admit("alice", self.derivedCode("alice", "play")))

    def test_badInput(self) -> None:
        for subscriberId in [None, "abc", "a/b/c", 12345]:
            self.assertEqual(self.refusal(subscriberId, "123456"), Refusal.INVALID)
        self.assertEqual(self.refusal("alice", self.derivedCode("alice", "play"), "delete"),
                         Refusal.INVALID)
