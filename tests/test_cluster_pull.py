"""
L{tokengate.cluster.pull}: the edge puller against an in-memory origin (a
real origin hub and L{tokengate.cluster.origin.FeedSubscriber}s writing to
the puller's sink), a fake locator and a L{Clock}.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.defer import succeed, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tokengate.cluster.origin import FeedCounters, FeedSubscriber, publicationOf
from tokengate.cluster.pull import EdgePuller
from tokengate.media.hub import PULLED, Hub, ISubscriber
from tokengate.metrics import Metrics

AVC_HEADER = bytes([0x17, 0x00, 0, 0, 0]) + b"avcC-config"
AAC_HEADER = bytes([0xAF, 0x00, 0x11, 0x88])


def key(n=0):
    return bytes([0x17, 0x01, 0, 0, 0]) + bytes([n]) * 10


def inter(n=0):
    return bytes([0x27, 0x01, 0, 0, 0]) + bytes([n]) * 10


@frozen
class Location:
    nodeId: str
    address: str


class Locator:
    localNodeId = "edge"

    def __init__(self) -> None:
        self.where: dict = {}
        self.down = False
        self.asked = 0

    def locate(self, app, streamId):
        self.asked += 1
        if self.down:
            return fail(RuntimeError("registry down"))
        return succeed(self.where.get((app, streamId)))


class _Request:
    """
    The origin's HTTP response, as the feed subscriber sees it: writes go
    to the edge's sink.
    """

    def __init__(self, connection) -> None:
        self.connection = connection

    def write(self, data: bytes) -> None:
        if self.connection.sink is not None and not self.connection.silent:
            self.connection.sink.feedData(data)

    def finish(self) -> None:
        sink, self.connection.sink = self.connection.sink, None
        if sink is not None:
            sink.feedEnded("done", "done")

    def unregisterProducer(self) -> None:
        pass


class _Connection:
    def __init__(self, origin, sink) -> None:
        self.origin = origin
        self.sink = sink
        self.silent = False
        self.feed = None

    def abort(self) -> None:
        self.sink = None
        if self.feed is not None:
            self.feed._finished()

    def lose(self) -> None:
        """
        The origin's process died: the connection drops without the end.
        """
        sink, self.sink = self.sink, None
        if self.feed is not None:
            self.feed._finished()
        if sink is not None:
            sink.feedEnded("failed", "lost")


class Origins:
    """
    The feed client: opens feeds from in-memory origin hubs by address.
    """

    def __init__(self, clock, metrics) -> None:
        self.clock = clock
        self.hubs: dict[str, Hub] = {}
        self.down: set[str] = set()
        self.opened: list[_Connection] = []
        self.counters = FeedCounters(metrics)

    def open(self, address, app, streamId, sink):
        connection = _Connection(self, sink)
        self.opened.append(connection)
        hub = self.hubs.get(address)

        def answer() -> None:
            if connection.sink is None:
                return
            if hub is None or address in self.down:
                connection.sink, s = None, connection.sink
                s.feedEnded("failed", "connect")
                return
            stream = hub.get(app, streamId)
            if stream is None:
                connection.sink, s = None, connection.sink
                s.feedEnded("gone", "status")
                return
            connection.sink.feedStarted(publicationOf(stream))
            if connection.sink is None:
                return
            connection.feed = FeedSubscriber(_Request(connection), self.clock, self.counters)
            stream.subscribe(connection.feed)

        self.clock.callLater(0, answer)
        return connection


@implementer(ISubscriber)
class Viewer:
    viewerKind = "rtmp"

    def __init__(self) -> None:
        self.frames = []
        self.configs = []
        self.ended = False

    def streamStarted(self, stream):
        pass

    def metadataChanged(self, metadata):
        self.configs.append(("meta", metadata))

    def configChanged(self, kind, body, timestamp):
        self.configs.append((kind, body))

    def frameReceived(self, frame):
        self.frames.append((frame.kind, frame.timestamp, frame.body))

    def streamEnded(self):
        self.ended = True


class PullerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.origins = Origins(self.clock, self.metrics)
        self.originHub = Hub(self.clock)
        self.origins.hubs["10.0.0.1:5080"] = self.originHub
        self.locator = Locator()
        self.edgeHub = Hub(self.clock)
        self.puller = EdgePuller(self.edgeHub, self.locator, self.origins, self.clock,
                                 self.metrics, linger=10.0, stallTimeout=5.0, maxRetries=4,
                                 backoff=0.5, maxBackoff=4.0, admissionWait=5.0)

    def publish(self, streamId="cam1"):
        stream = self.originHub.publish("live", streamId, "RTMP")
        stream.setMetadata({"width": 640.0})
        stream.videoReceived(0, AVC_HEADER)
        stream.audioReceived(0, AAC_HEADER)
        stream.videoReceived(0, key(1))
        stream.videoReceived(40, inter(2))
        self.locator.where[("live", streamId)] = Location("origin", "10.0.0.1:5080")
        return stream

    def sample(self, name, labels=None):
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    def pull(self, streamId="cam1"):
        results = []
        self.puller.pull("live", streamId).addCallback(results.append)
        return results

    def test_pullsAndServesFromTheCopy(self) -> None:
        origin = self.publish()
        results = self.pull()
        self.assertEqual(results, [])
        self.clock.advance(0)
        self.assertEqual(results, [True])
        copy = self.edgeHub.get("live", "cam1")
        self.assertIsNotNone(copy)
        self.assertEqual(copy.publishType, PULLED)
        viewer = Viewer()
        copy.subscribe(viewer)
        # the GOP the origin had, then what follows
        origin.videoReceived(80, inter(3))
        origin.audioReceived(81, bytes([0xAF, 0x01, 9, 9]))
        self.assertEqual([f[1] for f in viewer.frames], [0, 40, 80, 81])
        self.assertEqual(viewer.frames[0][2], key(1))
        self.assertIn(("video", AVC_HEADER), viewer.configs)
        self.assertIn(("audio", AAC_HEADER), viewer.configs)
        self.assertIn(("meta", {"width": 640.0}), viewer.configs)
        self.assertEqual(self.sample("tokengate_edge_pull_results_total", {"result": "started"}), 1)
        self.assertGreater(self.sample("tokengate_edge_pull_bytes_total"), 0)

    def test_onePullPerStream(self) -> None:
        self.publish()
        a, b = self.pull(), self.pull()
        self.clock.advance(0)
        c = self.pull()
        self.assertEqual((a, b, c), ([True], [True], [True]))
        self.assertEqual(len(self.origins.opened), 1)
        self.assertEqual(len(self.originHub.get("live", "cam1").subscribers), 1)

    def test_notLiveAnywhere(self) -> None:
        results = self.pull()
        self.assertEqual(results, [False])
        self.assertEqual(self.origins.opened, [])
        self.assertIsNone(self.puller.pulling("live", "cam1"))

    def test_ownNodeIsNotPulled(self) -> None:
        self.locator.where[("live", "cam1")] = Location("edge", "10.0.0.2:5080")
        self.assertEqual(self.pull(), [False])
        self.assertEqual(self.origins.opened, [])

    def test_lingerAfterLastViewer(self) -> None:
        self.publish()
        self.pull()
        self.clock.advance(0)
        copy = self.edgeHub.get("live", "cam1")
        viewer = Viewer()
        copy.subscribe(viewer)
        self.clock.pump([1.0] * 30)
        self.assertTrue(self.edgeHub.isLive("live", "cam1"))
        copy.unsubscribe(viewer)
        self.clock.pump([1.0] * 9)
        self.assertTrue(self.edgeHub.isLive("live", "cam1"))
        self.clock.pump([1.0] * 3)
        self.assertFalse(self.edgeHub.isLive("live", "cam1"))
        self.assertIsNone(self.puller.pulling("live", "cam1"))
        # the origin's feed subscriber left too
        self.assertEqual(self.originHub.get("live", "cam1").subscribers, [])
        self.assertEqual(self.sample("tokengate_edge_pull_results_total", {"result": "idle"}), 1)

    def test_noViewerEverCame(self) -> None:
        self.publish()
        self.pull()
        self.clock.advance(0)
        self.clock.pump([1.0] * 12)
        self.assertFalse(self.edgeHub.isLive("live", "cam1"))

    def test_originEndsTheStream(self) -> None:
        origin = self.publish()
        self.pull()
        self.clock.advance(0)
        viewer = Viewer()
        self.edgeHub.get("live", "cam1").subscribe(viewer)
        origin.end()
        self.assertTrue(viewer.ended)
        self.assertFalse(self.edgeHub.isLive("live", "cam1"))
        self.assertEqual(self.sample("tokengate_edge_pull_results_total", {"result": "ended"}), 1)
        # republished: a new viewer starts a new pull of the new publication
        del self.locator.where[("live", "cam1")]
        origin = self.publish()
        self.assertEqual(self.pull(), [])
        self.clock.advance(0)
        self.assertEqual(len(self.origins.opened), 2)
        self.assertEqual(self.edgeHub.get("live", "cam1").generation, 1)

    def test_originDiesThenRetriesThenEnds(self) -> None:
        """
        The connection drops without the feed's end (kill -9): the local
        stream stays while the puller retries with backoff (0.5, 1, 2, 4 s),
        then ends: within 7.5 s and the connection attempts.
        """
        self.publish()
        self.pull()
        self.clock.advance(0)
        viewer = Viewer()
        self.edgeHub.get("live", "cam1").subscribe(viewer)
        self.origins.down.add("10.0.0.1:5080")
        self.origins.opened[0].lose()
        self.assertFalse(viewer.ended)
        delays = [0.5, 1.0, 2.0, 4.0]
        for n, delay in enumerate(delays):
            self.clock.advance(delay - 0.01)
            self.assertEqual(len(self.origins.opened), 1 + n)
            self.clock.advance(0.01)
            self.clock.advance(0)
            self.assertEqual(len(self.origins.opened), 2 + n)
        self.assertTrue(viewer.ended)
        self.assertEqual(self.sample("tokengate_edge_pull_retries_total"), 4)
        self.assertEqual(self.sample("tokengate_edge_pull_failures_total",
                                     {"reason": "connect"}), 4)
        self.assertEqual(self.sample("tokengate_edge_pull_results_total", {"result": "gave_up"}), 1)

    def test_originDiesAndTheRegistryForgetsIt(self) -> None:
        self.publish()
        self.pull()
        self.clock.advance(0)
        viewer = Viewer()
        self.edgeHub.get("live", "cam1").subscribe(viewer)
        self.origins.down.add("10.0.0.1:5080")
        del self.locator.where[("live", "cam1")]
        self.origins.opened[0].lose()
        self.clock.advance(0.5)
        self.assertTrue(viewer.ended)
        self.assertEqual(self.sample("tokengate_edge_pull_results_total", {"result": "not_found"}), 1)

    def test_originUnreachableAtAdmission(self) -> None:
        self.publish()
        self.origins.down.add("10.0.0.1:5080")
        results = self.pull()
        self.clock.pump([0.1] * 49)
        self.assertEqual(results, [])
        self.clock.pump([0.1] * 2)
        self.assertEqual(results, [False])
        self.assertFalse(self.edgeHub.isLive("live", "cam1"))
        # it keeps retrying within its bound, then gives up
        self.clock.pump([1.0] * 10)
        self.assertIsNone(self.puller.pulling("live", "cam1"))

    def test_registryDown(self) -> None:
        self.locator.down = True
        results = self.pull()
        self.clock.pump([0.5] * 11)
        self.assertEqual(results, [False])
        self.assertGreater(self.sample("tokengate_edge_pull_failures_total",
                                       {"reason": "locator"}), 0)

    def test_stallIsRetriedWithoutDuplicates(self) -> None:
        origin = self.publish()
        self.pull()
        self.clock.advance(0)
        viewer = Viewer()
        self.edgeHub.get("live", "cam1").subscribe(viewer)
        self.origins.opened[0].silent = True
        origin.videoReceived(80, inter(3))
        self.clock.advance(5.0)
        self.assertEqual(self.sample("tokengate_edge_pull_failures_total",
                                     {"reason": "stall"}), 1)
        self.assertTrue(self.edgeHub.isLive("live", "cam1"))
        self.clock.advance(0.5)
        self.clock.advance(0)
        self.assertEqual(len(self.origins.opened), 2)
        origin.videoReceived(120, inter(4))
        # the GOP again (0, 40, 80), of which 0 and 40 were delivered
        self.assertEqual([f[1] for f in viewer.frames], [0, 40, 80, 120])
        self.assertFalse(viewer.ended)

    def test_republishDuringRetryStartsANewStream(self) -> None:
        origin = self.publish()
        self.pull()
        self.clock.advance(0)
        viewer = Viewer()
        first = self.edgeHub.get("live", "cam1")
        first.subscribe(viewer)
        self.origins.opened[0].lose()
        origin.end()
        self.clock.advance(0)
        self.publish()
        self.clock.advance(0.5)
        self.clock.advance(0)
        self.assertTrue(viewer.ended)
        second = self.edgeHub.get("live", "cam1")
        self.assertIsNot(second, first)
        self.assertEqual(self.sample("tokengate_edge_pull_results_total",
                                     {"result": "republished"}), 1)

    def test_localPublisherWins(self) -> None:
        self.publish()
        claim = self.edgeHub.claim("live", "cam1")
        self.assertEqual(self.pull(), [False])
        claim.release()
        results = self.pull()
        self.edgeHub.publish("live", "cam1", "RTMP")
        self.clock.advance(0)
        self.assertEqual(results, [False])
        self.assertEqual(self.edgeHub.get("live", "cam1").publishType, "RTMP")
        self.assertEqual(self.sample("tokengate_edge_pull_results_total", {"result": "taken"}), 1)

    def test_boundedPulls(self) -> None:
        puller = EdgePuller(self.edgeHub, self.locator, self.origins, self.clock, Metrics(),
                            maxPulls=2)
        for n in range(3):
            self.publish("s{}".format(n))
        results = [puller.pull("live", "s{}".format(n)) for n in range(3)]
        self.assertEqual(results[2].result, False)
        self.clock.advance(0)
        self.assertEqual([r.result for r in results[:2]], [True, True])

    def test_stopAll(self) -> None:
        self.publish()
        self.pull()
        self.clock.advance(0)
        self.puller.stopAll()
        self.assertFalse(self.edgeHub.isLive("live", "cam1"))
        self.assertEqual(self.originHub.get("live", "cam1").subscribers, [])


class EdgeAdmissionTests(SynchronousTestCase):
    """
    The access service on an edge: a play of a stream live on another node
    is pulled before the token is redeemed; the adapters see a stream live
    in the hub as any other.
    """

    def setUp(self) -> None:
        from tokengate.access.service import AccessService
        from tokengate.apps import Applications
        from tokengate.auth import build_gate
        from tokengate.store.memory import MemoryTokenStore

        from tests.helpers import clock_at

        self.clock = clock_at()
        self.metrics = Metrics()
        self.apps = Applications(None)
        self.apps.create("live")
        self.apps.replace("live", playTokenControlEnabled=True, dashMuxingEnabled=True)
        self.store = MemoryTokenStore()
        self.gate = build_gate(self.apps, self.store, self.clock, self.metrics)
        self.origins = Origins(self.clock, self.metrics)
        self.originHub = Hub(self.clock)
        self.origins.hubs["10.0.0.1:5080"] = self.originHub
        self.locator = Locator()
        self.hub = Hub(self.clock)
        self.puller = EdgePuller(self.hub, self.locator, self.origins, self.clock,
                                 self.metrics)
        self.access = AccessService(self.apps, self.gate, self.hub, None, (),
                                    remote=self.puller)

    def live(self):
        """
        The stream live at the origin, with its first frame (an admission
        waits for the pulled copy's first frame).
        """
        stream = self.originHub.publish("live", "cam1", "RTMP")
        stream.videoReceived(0, AVC_HEADER)
        stream.videoReceived(0, key(1))
        return stream

    def test_waitsForTheFirstFrame(self) -> None:
        from tokengate.auth import Refused

        stream = self.originHub.publish("live", "cam1", "RTMP")
        stream.videoReceived(0, AVC_HEADER)
        self.locator.where[("live", "cam1")] = Location("origin", "10.0.0.1:5080")
        token = self.mint()
        d = self.play(token)
        self.clock.advance(0)
        self.assertNoResult(d)
        stream.videoReceived(0, key(1))
        self.assertEqual(self.successResultOf(d).stream.gop[0].body, key(1))
        # no frame within the admission's bound: not live, token kept
        other = self.originHub.publish("live", "cam2", "RTMP")
        self.locator.where[("live", "cam2")] = Location("origin", "10.0.0.1:5080")
        token = self.mint("cam2")
        d = self.play(token, streamId="cam2")
        self.clock.pump([1.0] * 5)
        self.assertEqual(self.failureResultOf(d, Refused).value.outcome.value, "not_live")
        other.videoReceived(0, key(2))
        d = self.play(token, streamId="cam2")
        self.successResultOf(d)

    def mint(self, streamId="cam1"):
        from tokengate.tokens import PLAY, StoredToken, new_token

        from tests.helpers import NOW

        t = new_token(streamId, PLAY, NOW + 60)
        self.store.add(StoredToken.fromToken("live", t))
        return t.tokenId

    def play(self, token, protocol="rtmp", streamId="cam1"):
        from tokengate.access.service import AccessRequest
        from tokengate.tokens import PLAY

        class Mind:
            protocolName = protocol
            peerHost = "192.0.2.1"

            def kick(self, reason):
                pass

        return self.access.play(AccessRequest("live", streamId, PLAY, protocol, "192.0.2.1",
                                              token), Mind())

    def test_playOfAStreamLiveElsewhere(self) -> None:
        self.live()
        self.locator.where[("live", "cam1")] = Location("origin", "10.0.0.1:5080")
        token = self.mint()
        d = self.play(token)
        self.assertNoResult(d)
        self.clock.advance(0)
        viewing = self.successResultOf(d)
        self.assertIs(viewing.stream, self.hub.get("live", "cam1"))
        self.assertEqual(viewing.stream.publishType, PULLED)
        self.assertEqual(viewing.stream.videoConfig, AVC_HEADER)
        # spent: exactly once
        from tokengate.auth import Refused

        again = self.play(token, "dash")
        self.clock.advance(0)
        self.assertIn(self.failureResultOf(again, Refused).value.outcome.value,
                      ("used", "unknown"))

    def test_notLiveAnywhereKeepsTheToken(self) -> None:
        from tokengate.auth import Refused

        token = self.mint()
        d = self.play(token)
        self.assertEqual(self.failureResultOf(d, Refused).value.outcome.value, "not_live")
        self.live()
        self.locator.where[("live", "cam1")] = Location("origin", "10.0.0.1:5080")
        d = self.play(token)
        self.clock.advance(0)
        self.successResultOf(d)

    def test_originUnreachableKeepsTheToken(self) -> None:
        from tokengate.auth import Refused

        self.live()
        self.locator.where[("live", "cam1")] = Location("origin", "10.0.0.1:5080")
        self.origins.down.add("10.0.0.1:5080")
        token = self.mint()
        d = self.play(token)
        self.clock.pump([0.25] * 21)
        self.assertEqual(self.failureResultOf(d, Refused).value.outcome.value, "not_live")
        self.clock.pump([1.0] * 10)
        self.origins.down.clear()
        d = self.play(token)
        self.clock.advance(0)
        self.successResultOf(d)

    def test_readyForDeliveryWithoutAdmission(self) -> None:
        from tokengate.access.service import AccessRequest
        from tokengate.tokens import PLAY

        self.live()
        self.locator.where[("live", "cam1")] = Location("origin", "10.0.0.1:5080")
        d = self.access.ready(AccessRequest("live", "cam1", PLAY, "dash"))
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(self.hub.isLive("live", "cam1"))
        d = self.access.ready(AccessRequest("live", "cam2", PLAY, "dash"))
        self.assertEqual(self.successResultOf(d).value, "not_live")
