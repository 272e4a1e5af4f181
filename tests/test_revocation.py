"""
L{tokengate.access.revocation.Revoker}, in memory: a fake transport, a fake
session registry and a fake credential signer, on a L{Clock}.

The Redis transport against a real redis-server is
L{tests.interop.test_cluster}.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tokengate.access.revocation import (
    MAX_EVENT_BYTES,
    PUBLISHERS,
    SESSIONS,
    SUBSCRIBER,
    TOKENS,
    LocalTransport,
    MalformedEvent,
    Revocation,
    Revoker,
    encodeEvent,
    parseEvent,
)
from tokengate.metrics import Metrics

NOW = 1_000_000.0


@define(eq=False)
class FakeGrant:
    app: str
    streamId: str
    action: str
    kind: str
    started: float
    subscriberId: Optional[str] = None
    kicked: list[str] = field(factory=list)

    @property
    def ended(self) -> bool:
        return bool(self.kicked)


class FakeRegistry:
    """
    The registry's C{grants} and C{kick}, as the revoker uses them.
    """

    def __init__(self) -> None:
        self.all: list[FakeGrant] = []

    def add(self, *args: Any) -> FakeGrant:
        g = FakeGrant(*args)
        self.all.append(g)
        return g

    def grants(self, app: str, streamId: Optional[str] = None) -> list[FakeGrant]:
        return [g for g in self.all
                if g.app == app and (streamId is None or g.streamId == streamId)
                and not g.ended]

    def kick(self, grants: Iterable[FakeGrant], reason: str) -> int:
        n = 0
        for g in list(grants):
            if not g.ended:
                g.kicked.append(reason)
                n += 1
        return n


class FakeSigner:
    def __init__(self) -> None:
        self.revoked: list[tuple[str, str, float]] = []

    def revokeStream(self, app: str, streamId: str, now: float) -> None:
        self.revoked.append((app, streamId, now))


class FakeTransport:
    """
    Records what the revoker announces; answers as told.
    """

    def __init__(self) -> None:
        self.announced: list[Revocation] = []
        self.answer: Any = True
        self.started: Optional[Revoker] = None
        self.stopped = 0

    def start(self, revoker: Revoker) -> None:
        self.started = revoker

    def announce(self, revocation: Revocation) -> "Deferred[bool]":
        self.announced.append(revocation)
        if isinstance(self.answer, Exception):
            return fail(self.answer)
        return succeed(self.answer)

    def stop(self) -> "Deferred[None]":
        self.stopped += 1
        return succeed(None)


class Bus:
    """
    A cluster in memory: what one node announces, every other node receives
    as an event.
    """

    def __init__(self) -> None:
        self.nodes: list[Revoker] = []

    def transport(self) -> "BusTransport":
        return BusTransport(self)


class BusTransport:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    def start(self, revoker: Revoker) -> None:
        self._bus.nodes.append(revoker)

    def announce(self, revocation: Revocation) -> "Deferred[bool]":
        event = encodeEvent(revocation)
        for node in self._bus.nodes:
            node.received(event)
        return succeed(True)

    def stop(self) -> "Deferred[None]":
        return succeed(None)


class Node:
    def __init__(self, transport: Any, apps: Iterable[str] = ("LiveApp",),
                 clock: Optional[Clock] = None) -> None:
        self.clock = clock or Clock()
        if clock is None:
            self.clock.advance(NOW)
        self.registry = FakeRegistry()
        self.signer = FakeSigner()
        self.metrics = Metrics()
        self.transport = transport
        self.revoker = Revoker(
            registry=self.registry, credentials=self.signer, apps=set(apps),
            clock=self.clock, metrics=self.metrics, transport=transport,
        )

    def counted(self, direction: str) -> float:
        return self.metrics.registry.get_sample_value(
            "tokengate_cluster_revocations_total", {"direction": direction}) or 0.0


def event(**fields: Any) -> str:
    e = {"v": 1, "kind": SESSIONS, "app": "LiveApp", "streamId": "s1",
         "time": NOW, "origin": "elsewhere"}
    e.update(fields)
    return json.dumps(e)


class RevokeHereTests(SynchronousTestCase):
    """
    A revocation acts on this node at once, then goes to the transport.
    """

    def setUp(self) -> None:
        self.node = Node(FakeTransport())
        r = self.node.registry
        self.tokenPublisher = r.add("LiveApp", "s1", "publish", "token", NOW - 10)
        self.jwtPlayer = r.add("LiveApp", "s1", "play", "jwt", NOW - 5)
        self.freePlayer = r.add("LiveApp", "s1", "play", "none", NOW - 5)
        self.httpPlayer = r.add("LiveApp", "s1", "play", "none", NOW - 1)
        self.otherStream = r.add("LiveApp", "s2", "play", "token", NOW - 1)
        self.otherApp = r.add("Other", "s1", "play", "token", NOW - 1)

    def test_revokeTokens(self) -> None:
        """
        Revoking tokens ends the stream's token-admitted sessions (publish
        and play), not those admitted without a token, and announces it.
        """
        n = self.successResultOf(self.node.revoker.revokeTokens("LiveApp", "s1"))
        self.assertEqual(n, 2)
        self.assertEqual(self.tokenPublisher.kicked, ["revoked"])
        self.assertEqual(self.jwtPlayer.kicked, ["revoked"])
        for g in (self.freePlayer, self.httpPlayer, self.otherStream, self.otherApp):
            self.assertFalse(g.ended)
        self.assertEqual(self.node.signer.revoked, [])
        self.assertEqual(self.node.transport.announced, [
            Revocation(TOKENS, "LiveApp", "s1", NOW, self.node.revoker.nodeId)])
        self.assertEqual(self.node.counted("sent"), 1)

    def test_revokeSessions(self) -> None:
        """
        Revoking sessions ends every player of the stream (HTTP playback
        grants are players too), keeps the publisher, refuses the stream's
        playback credentials issued up to now anywhere, and announces it.
        """
        n = self.successResultOf(self.node.revoker.revokeSessions("LiveApp", "s1"))
        self.assertEqual(n, 3)
        for g in (self.jwtPlayer, self.freePlayer, self.httpPlayer):
            self.assertEqual(g.kicked, ["revoked"])
        for g in (self.tokenPublisher, self.otherStream, self.otherApp):
            self.assertFalse(g.ended)
        self.assertEqual(self.node.signer.revoked, [("LiveApp", "s1", NOW)])
        self.assertEqual([r.kind for r in self.node.transport.announced], [SESSIONS])
        self.assertEqual(self.node.counted("sent"), 1)

    def test_blockSubscriber(self) -> None:
        """
        Blocking a subscriber ends its sessions of the stream for the
        blocked action (both when None), kicked "blocked", and announces it
        with the subscriber and the action.
        """
        r = self.node.registry
        alicePublishes = r.add("LiveApp", "s1", "publish", "none", NOW - 1, "alice")
        alicePlays = r.add("LiveApp", "s1", "play", "none", NOW - 1, "alice")
        aliceElsewhere = r.add("LiveApp", "s2", "play", "none", NOW - 1, "alice")
        bob = r.add("LiveApp", "s1", "play", "none", NOW - 1, "bobby")
        revoker = self.node.revoker
        self.assertEqual(self.successResultOf(
            revoker.blockSubscriber("LiveApp", "s1", "alice", "play")), 1)
        self.assertEqual(alicePlays.kicked, ["blocked"])
        self.assertFalse(alicePublishes.ended or aliceElsewhere.ended or bob.ended)
        self.assertEqual(self.successResultOf(
            revoker.blockSubscriber("LiveApp", "s1", "alice", None)), 1)
        self.assertEqual(alicePublishes.kicked, ["blocked"])
        self.assertFalse(aliceElsewhere.ended or bob.ended or self.freePlayer.ended)
        self.assertEqual(self.node.transport.announced[-2:], [
            Revocation(SUBSCRIBER, "LiveApp", "s1", NOW, revoker.nodeId, "alice", "play"),
            Revocation(SUBSCRIBER, "LiveApp", "s1", NOW, revoker.nodeId, "alice", None)])
        self.assertEqual(self.node.signer.revoked, [])

    def test_stopPublishers(self) -> None:
        """
        Deleting a broadcast ends its publishers, whatever admitted them,
        kicked "deleted", keeps its players, and announces it.
        """
        freePublisher = self.node.registry.add("LiveApp", "s1", "publish", "none", NOW - 1)
        n = self.successResultOf(self.node.revoker.stopPublishers("LiveApp", "s1"))
        self.assertEqual(n, 2)
        self.assertEqual((self.tokenPublisher.kicked, freePublisher.kicked),
                         (["deleted"], ["deleted"]))
        for g in (self.jwtPlayer, self.freePlayer, self.httpPlayer, self.otherStream,
                  self.otherApp):
            self.assertFalse(g.ended)
        self.assertEqual(self.node.transport.announced, [
            Revocation(PUBLISHERS, "LiveApp", "s1", NOW, self.node.revoker.nodeId)])
        self.assertEqual(self.node.signer.revoked, [])

    def test_transportFails(self) -> None:
        """
        When the cluster cannot be told, this node's sessions are ended all
        the same, the call does not fail, and the failure is counted.
        """
        self.node.transport.answer = RuntimeError("redis is down")
        n = self.successResultOf(self.node.revoker.revokeSessions("LiveApp", "s1"))
        self.assertEqual(n, 3)
        self.assertEqual(self.node.signer.revoked, [("LiveApp", "s1", NOW)])
        self.assertEqual((self.node.counted("sent"), self.node.counted("failed")), (0, 1))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_tooLongToTell(self) -> None:
        """
        A stream whose event would be too long is revoked here; the failure
        to tell the cluster (raised at once by the transport) is counted.
        """
        node = Node(BusTransport(Bus()))
        g = node.registry.add("LiveApp", "s" * MAX_EVENT_BYTES, "play", "token", NOW)
        n = self.successResultOf(node.revoker.revokeTokens("LiveApp", "s" * MAX_EVENT_BYTES))
        self.assertEqual(n, 1)
        self.assertTrue(g.ended)
        self.assertEqual(node.counted("failed"), 1)

    def test_localTransportCountsNothing(self) -> None:
        node = Node(LocalTransport())
        node.registry.add("LiveApp", "s1", "play", "token", NOW)
        self.assertEqual(self.successResultOf(node.revoker.revokeTokens("LiveApp", "s1")), 1)
        self.assertEqual(self.successResultOf(node.revoker.revokeSessions("LiveApp", "s1")), 0)
        for direction in ("sent", "failed", "received", "malformed"):
            self.assertEqual(node.counted(direction), 0)

    def test_defaultTransportIsLocal(self) -> None:
        revoker = Revoker(registry=FakeRegistry(), credentials=FakeSigner(), apps=set(),
                          clock=Clock(), metrics=Metrics())
        self.assertIsInstance(revoker.transport, LocalTransport)

    def test_lifeCycle(self) -> None:
        self.node.revoker.start()
        self.assertIs(self.node.transport.started, self.node.revoker)
        self.assertIsNone(self.successResultOf(self.node.revoker.stop()))
        self.assertEqual(self.node.transport.stopped, 1)


class ReceiveTests(SynchronousTestCase):
    """
    Events of the other nodes.
    """

    def setUp(self) -> None:
        self.node = Node(FakeTransport())
        r = self.node.registry
        self.publisher = r.add("LiveApp", "s1", "publish", "token", NOW - 10)
        self.player = r.add("LiveApp", "s1", "play", "none", NOW - 5)

    def test_tokens(self) -> None:
        self.node.revoker.received(event(kind=TOKENS))
        self.assertEqual(self.publisher.kicked, ["revoked"])
        self.assertFalse(self.player.ended)
        self.assertEqual(self.node.counted("received"), 1)
        self.assertEqual(self.node.transport.announced, [])

    def test_sessions(self) -> None:
        """
        A sessions event ends the players here and refuses credentials up
        to the later of the event's time and now (a slow clock elsewhere
        does not let this node's sessions through).
        """
        self.node.revoker.received(event(time=NOW - 30).encode())
        self.assertEqual(self.player.kicked, ["revoked"])
        self.assertFalse(self.publisher.ended)
        self.assertEqual(self.node.signer.revoked, [("LiveApp", "s1", NOW)])
        self.node.revoker.received(event(time=NOW + 30))
        self.assertEqual(self.node.signer.revoked[-1], ("LiveApp", "s1", NOW + 30))
        self.assertEqual(self.node.counted("received"), 2)

    def test_publishers(self) -> None:
        self.node.revoker.received(event(kind=PUBLISHERS))
        self.assertEqual(self.publisher.kicked, ["deleted"])
        self.assertFalse(self.player.ended)

    def test_ownEventIgnored(self) -> None:
        self.node.revoker.received(event(origin=self.node.revoker.nodeId))
        self.assertFalse(self.player.ended)
        self.assertEqual(self.node.signer.revoked, [])
        self.assertEqual(self.node.counted("received"), 0)

    def test_otherApplication(self) -> None:
        """
        An event for an application this node does not have is received
        and changes nothing.
        """
        self.node.revoker.received(event(app="Nope"))
        self.assertEqual(self.node.counted("received"), 1)
        self.assertEqual(self.node.signer.revoked, [])

    def test_malformedCounted(self) -> None:
        garbage: list[Any] = [
            None, 7, b"\xff\xfe\x00", b"not json", b"[]", "{" * 5000,
            "[" * 3000 + "]" * 3000,
            event(kind="nuke"), event(v=2), event(time="now"), event(time=float("nan")),
            event(time=-1), event(time=True), event(app=7), event(streamId=""),
            event(origin="x" * 2000), "x" * (MAX_EVENT_BYTES + 1),
        ]
        for message in garbage:
            self.node.revoker.received(message)
        self.assertEqual(self.node.counted("malformed"), len(garbage))
        self.assertEqual(self.node.counted("received"), 0)
        self.assertFalse(self.player.ended or self.publisher.ended)
        self.assertEqual(self.node.signer.revoked, [])


class CatchUpTests(SynchronousTestCase):
    """
    Recorded revocations after a gap end only what started before them.
    """

    def test_catchUp(self) -> None:
        node = Node(FakeTransport())
        r = node.registry
        oldToken = r.add("LiveApp", "s1", "publish", "token", NOW - 100)
        newToken = r.add("LiveApp", "s1", "play", "token", NOW - 10)
        oldPlayer = r.add("LiveApp", "s2", "play", "none", NOW - 100)
        newPlayer = r.add("LiveApp", "s2", "play", "none", NOW - 10)
        elsewhere = r.add("Nope", "s1", "play", "token", NOW - 100)
        n = node.revoker.catchUp([
            Revocation(TOKENS, "LiveApp", "s1", NOW - 50, ""),
            Revocation(SESSIONS, "LiveApp", "s2", NOW - 50, ""),
            Revocation(SESSIONS, "Nope", "s1", NOW - 50, ""),
        ])
        self.assertEqual(n, 2)
        self.assertTrue(oldToken.ended)
        self.assertTrue(oldPlayer.ended)
        self.assertFalse(newToken.ended or newPlayer.ended or elsewhere.ended)
        self.assertEqual(node.signer.revoked, [("LiveApp", "s2", NOW - 50)])
        oldAlice = r.add("LiveApp", "s3", "play", "none", NOW - 100, "alice")
        newAlice = r.add("LiveApp", "s3", "play", "none", NOW - 10, "alice")
        oldBob = r.add("LiveApp", "s3", "play", "none", NOW - 100, "bobby")
        self.assertEqual(node.revoker.catchUp([
            Revocation(SUBSCRIBER, "LiveApp", "s3", NOW - 50, "", "alice", "play")]), 1)
        self.assertEqual(oldAlice.kicked, ["blocked"])
        self.assertFalse(newAlice.ended or oldBob.ended)
        oldPublisher = r.add("LiveApp", "s4", "publish", "none", NOW - 100)
        newPublisher = r.add("LiveApp", "s4", "publish", "none", NOW - 10)
        self.assertEqual(node.revoker.catchUp([
            Revocation(PUBLISHERS, "LiveApp", "s4", NOW - 50, "")]), 1)
        self.assertEqual((oldPublisher.kicked, newPublisher.kicked), (["deleted"], []))
        # catching up again ends nothing more
        self.assertEqual(node.revoker.catchUp([
            Revocation(TOKENS, "LiveApp", "s1", NOW - 50, "")]), 0)
        # nothing of catching up is an event received
        self.assertEqual(node.counted("received"), 0)


class ClusterInMemoryTests(SynchronousTestCase):
    """
    Events out of one node, into the others.
    """

    def test_blockEverywhere(self) -> None:
        bus = Bus()
        clock = Clock()
        clock.advance(NOW)
        a = Node(bus.transport(), clock=clock)
        b = Node(bus.transport(), clock=clock)
        a.revoker.start()
        b.revoker.start()
        onB = b.registry.add("LiveApp", "s1", "publish", "none", NOW - 1, "alice")
        other = b.registry.add("LiveApp", "s1", "play", "none", NOW - 1, "alice")
        self.assertEqual(self.successResultOf(
            a.revoker.blockSubscriber("LiveApp", "s1", "alice", "publish")), 0)
        self.assertEqual((onB.kicked, other.kicked), (["blocked"], []))
        self.assertEqual(b.counted("received"), 1)

    def test_deletedBroadcastStopsEverywhere(self) -> None:
        bus = Bus()
        clock = Clock()
        clock.advance(NOW)
        a = Node(bus.transport(), clock=clock)
        b = Node(bus.transport(), clock=clock)
        a.revoker.start()
        b.revoker.start()
        publisher = b.registry.add("LiveApp", "s1", "publish", "token", NOW - 1)
        player = b.registry.add("LiveApp", "s1", "play", "token", NOW - 1)
        self.assertEqual(self.successResultOf(a.revoker.stopPublishers("LiveApp", "s1")), 0)
        self.assertEqual((publisher.kicked, player.kicked), (["deleted"], []))

    def test_twoNodes(self) -> None:
        bus = Bus()
        clock = Clock()
        clock.advance(NOW)
        a = Node(bus.transport(), clock=clock)
        b = Node(bus.transport(), clock=clock)
        a.revoker.start()
        b.revoker.start()
        onB = b.registry.add("LiveApp", "s1", "play", "token", NOW - 1)
        onA = a.registry.add("LiveApp", "s1", "play", "token", NOW - 1)
        self.assertEqual(self.successResultOf(a.revoker.revokeSessions("LiveApp", "s1")), 1)
        self.assertTrue(onA.ended and onB.ended)
        self.assertEqual(b.signer.revoked, [("LiveApp", "s1", NOW)])
        self.assertEqual(a.signer.revoked, [("LiveApp", "s1", NOW)])
        self.assertEqual((a.counted("sent"), a.counted("received")), (1, 0))
        self.assertEqual((b.counted("sent"), b.counted("received")), (0, 1))


class EventTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        r = Revocation(SESSIONS, "LiveApp", "s/1:x\u00e9", 12.5, "abc")
        self.assertEqual(parseEvent(encodeEvent(r)), r)

    def test_format(self) -> None:
        """
        The event format the nodes of a cluster share.
        """
        self.assertEqual(
            json.loads(encodeEvent(Revocation(TOKENS, "A", "s", 3.0, "n"))),
            {"v": 1, "kind": "tokens", "app": "A", "streamId": "s", "time": 3.0,
             "origin": "n"},
        )

    def test_subscriberEvents(self) -> None:
        """
        A subscriber revocation carries its subscriber and action (null for
        both); the other kinds carry neither; a bad one is malformed.
        """
        for action in ("publish", "play", None):
            r = Revocation(SUBSCRIBER, "LiveApp", "s1", 3.0, "n", "al:ice", action)
            self.assertEqual(parseEvent(encodeEvent(r)), r)
        self.assertEqual(
            json.loads(encodeEvent(Revocation(SUBSCRIBER, "A", "s", 3.0, "n", "alice", None))),
            {"v": 1, "kind": "subscriber", "app": "A", "streamId": "s", "time": 3.0,
             "origin": "n", "subscriberId": "alice", "action": None})
        for bad in (dict(kind=SUBSCRIBER), dict(kind=SUBSCRIBER, subscriberId=""),
                    dict(kind=SUBSCRIBER, subscriberId=3, action="play"),
                    dict(kind=SUBSCRIBER, subscriberId="x" * 1025, action="play"),
                    dict(kind=SUBSCRIBER, subscriberId="alice", action="publish_play")):
            self.assertRaises(MalformedEvent, parseEvent, event(**bad))
        self.assertIsNone(parseEvent(event(subscriberId="alice")).subscriberId)

    def test_tooLong(self) -> None:
        self.assertRaises(MalformedEvent, encodeEvent,
                          Revocation(TOKENS, "A", "s" * MAX_EVENT_BYTES, 3.0, "n"))
