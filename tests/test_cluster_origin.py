"""
L{tokengate.cluster.origin}: the feed resource, in memory (a
L{DummyRequest}, a L{Clock}).
"""

from __future__ import annotations

import time

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from tokengate.cluster.feed import FeedParser, FeedVideo, feedCredential, feedKey
from tokengate.cluster.origin import MAX_CONGESTED_BYTES, MAX_CONGESTION, FeedResource
from tokengate.media.hub import PULLED, Hub
from tokengate.metrics import Metrics

KEY = feedKey("k" * 32)
AVC_HEADER = bytes([0x17, 0x00, 0, 0, 0]) + b"avcC"


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class _Request(DummyRequest):
    """
    A request whose transport takes a push producer (L{DummyRequest} loops
    over a pull producer).
    """

    producer = None

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


class FeedResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.metrics = Metrics()
        self.hub = Hub(self.clock)
        self.resource = FeedResource(self.hub, self.clock, self.metrics, KEY)

    def request(self, app="live", streamId="cam1", node="edge-1", credential=None,
                expiry=None, key=KEY):
        request = _Request([app.encode(), streamId.encode()])
        request.transport = _Transport()
        if expiry is None:
            expiry = int(self.clock.seconds()) + 30
        if credential is None:
            credential = feedCredential(key, app, streamId, node, expiry)
        if node is not None:
            request.requestHeaders.addRawHeader(b"x-tokengate-node", node.encode())
        request.requestHeaders.addRawHeader(b"x-tokengate-expires", str(expiry).encode())
        if credential:
            request.requestHeaders.addRawHeader(b"authorization",
                                                b"TokengateFeed " + credential.encode())
        return request

    def outcome(self, name):
        return self.metrics.registry.get_sample_value(
            "tokengate_feed_requests_total", {"outcome": name}) or 0.0

    def test_servesTheHubsFrames(self) -> None:
        stream = self.hub.publish("live", "cam1", "RTMP")
        stream.videoReceived(0, AVC_HEADER)
        stream.videoReceived(0, bytes([0x17, 1, 0, 0, 0, 7]))
        request = self.request()
        self.assertIs(self.resource.render(request), NOT_DONE_YET)
        stream.videoReceived(40, bytes([0x27, 1, 0, 0, 0, 8]))
        events = FeedParser().receive(b"".join(request.written))
        self.assertEqual(events, [FeedVideo(0, AVC_HEADER),
                                  FeedVideo(0, bytes([0x17, 1, 0, 0, 0, 7])),
                                  FeedVideo(40, bytes([0x27, 1, 0, 0, 0, 8]))])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"x-tokengate-publication"),
                         [b"0-%d" % int(stream.started * 1000)])
        self.assertEqual(self.outcome("served"), 1)
        stream.end()
        self.assertEqual(request.finished, 1)

    def test_edgeGoesAway(self) -> None:
        stream = self.hub.publish("live", "cam1", "RTMP")
        request = self.request()
        self.resource.render(request)
        self.assertEqual(len(stream.subscribers), 1)
        request.processingFailed(Exception("gone"))
        self.assertEqual(stream.subscribers, [])

    def test_forbidden(self) -> None:
        self.hub.publish("live", "cam1", "RTMP")
        refused = [
            self.request(credential=""),
            self.request(node=None),
            self.request(key=feedKey("x" * 32)),
            self.request(credential="0" * 64),
            self.request(expiry=int(self.clock.seconds()) - 600),
            self.request(streamId="cam1", credential=feedCredential(
                KEY, "live", "cam2", "edge-1", int(self.clock.seconds()) + 30)),
        ]
        for request in refused:
            self.resource.render(request)
            self.assertEqual(request.responseCode, 403)
            self.assertEqual(request.written, [])
        self.assertEqual(self.outcome("forbidden"), len(refused))
        self.assertEqual(len(self.hub.get("live", "cam1").subscribers), 0)

    def test_withoutClusterSecretNothingIsServed(self) -> None:
        self.hub.publish("live", "cam1", "RTMP")
        resource = FeedResource(self.hub, self.clock, Metrics(), None)
        request = self.request()
        resource.render(request)
        self.assertEqual(request.responseCode, 403)

    def test_notLive(self) -> None:
        request = self.request()
        self.resource.render(request)
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(self.outcome("not_live"), 1)

    def test_pulledCopyNotServedOn(self) -> None:
        self.hub.publish("live", "cam1", PULLED)
        request = self.request()
        self.resource.render(request)
        self.assertEqual(request.responseCode, 404)

    def test_slowEdgeDroppedByBytes(self) -> None:
        stream = self.hub.publish("live", "cam1", "RTMP")
        request = self.request()
        self.resource.render(request)
        feed = stream.subscribers[0]
        feed.pauseProducing()
        frame = bytes([0x27, 1, 0, 0, 0]) + b"x" * 65536
        for n in range(MAX_CONGESTED_BYTES // len(frame) + 2):
            stream.videoReceived(n, frame)
        self.assertTrue(request.transport.aborted)
        self.assertEqual(stream.subscribers, [])
        self.assertEqual(self.metrics.registry.get_sample_value(
            "tokengate_feed_dropped_total", {"reason": "slow"}), 1)

    def test_slowEdgeDroppedByTime(self) -> None:
        stream = self.hub.publish("live", "cam1", "RTMP")
        request = self.request()
        self.resource.render(request)
        feed = stream.subscribers[0]
        feed.pauseProducing()
        self.clock.advance(MAX_CONGESTION - 1)
        feed.resumeProducing()
        feed.pauseProducing()
        self.clock.advance(MAX_CONGESTION - 1)
        self.assertFalse(request.transport.aborted)
        self.clock.advance(1)
        self.assertTrue(request.transport.aborted)
        self.assertEqual(stream.subscribers, [])
