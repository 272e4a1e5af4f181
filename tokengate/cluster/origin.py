# -*- test-case-name: tests.test_cluster_origin -*-
"""
The origin's side of edge pull: C{GET /internal/v1/feed/{app}/{streamId}}
serves a live stream of this node's hub to another node of the cluster as
an FLV feed (L{tokengate.cluster.feed}).

Only nodes may ask: the request carries C{X-Tokengate-Node} (the asking
node's id), C{X-Tokengate-Expires} and C{Authorization: TokengateFeed
<credential>} (L{tokengate.cluster.feed.feedCredential} under the key
derived from the cluster secret).  Anything else is answered 403 (without
a cluster secret every request is), counted in
C{tokengate_feed_requests_total{outcome}}; a stream not live here is 404.

A feed is one hub subscriber writing to its HTTP response.  An edge that
does not read is dropped, never buffered without bound: while the
transport is paused (its buffer full) at most L{MAX_CONGESTED_BYTES} more
are written and for at most L{MAX_CONGESTION} seconds
(C{tokengate_feed_dropped_total{reason="slow"}}).  When the stream ends the
response ends (the final chunk: the edge tells a clean end from a lost
connection).
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import unquote

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from tokengate.access.names import isValidStreamId
from tokengate.cluster.feed import (
    FEED_CONTENT_TYPE,
    FeedEncoder,
    PUBLICATION_HEADER,
    checkNodeRequest,
)
from tokengate.logsafe import Logger
from tokengate.media.hub import AUDIO, PULLED, VIDEO, Frame, Hub, ISubscriber, LiveStream
from tokengate.metrics import Metrics

#: bytes written to a paused (full) edge connection before it is dropped
MAX_CONGESTED_BYTES = 4 * 1024 * 1024

#: seconds an edge connection may stay paused before it is dropped
MAX_CONGESTION = 10.0



def publicationOf(stream: LiveStream) -> str:
    """
    What identifies one publication of a stream (an edge that reconnects
    continues it only when the origin still serves the same one).
    """
    return "{}-{}".format(stream.generation, int(stream.started * 1000))


@implementer(ISubscriber)
class FeedSubscriber:
    """
    One edge's feed of one stream: hub events to the HTTP response, within
    the congestion bounds.
    """

    _log = Logger()

    def __init__(self, request: Any, clock: IReactorTime, counters: "FeedCounters") -> None:
        self._request = request
        self._clock = clock
        self._counters = counters
        self._encoder = FeedEncoder()
        self._stream: Optional[LiveStream] = None
        self._paused = False
        self._congestedBytes = 0
        self._timer: Optional[IDelayedCall] = None
        self.done = False

    # --- IPushProducer (the transport tells us when its buffer is full) ---

    def pauseProducing(self) -> None:
        if self.done or self._paused:
            return
        self._paused = True
        self._congestedBytes = 0
        self._timer = self._clock.callLater(MAX_CONGESTION, self._drop, "slow")

    def resumeProducing(self) -> None:
        self._paused = False
        self._cancelTimer()

    def stopProducing(self) -> None:
        self._finished()

    # --- ISubscriber ---------------------------------------------------------

    def streamStarted(self, stream: LiveStream) -> None:
        self._stream = stream
        self._write(self._encoder.header())

    def metadataChanged(self, metadata: dict[str, Any]) -> None:
        self._write(self._encoder.metadata(metadata))

    def configChanged(self, kind: str, body: bytes, timestamp: int) -> None:
        if kind == VIDEO:
            self._write(self._encoder.video(timestamp, body))
        elif kind == AUDIO:
            self._write(self._encoder.audio(timestamp, body))

    def frameReceived(self, frame: Frame) -> None:
        if frame.kind == VIDEO:
            self._write(self._encoder.video(frame.timestamp, frame.body))
        else:
            self._write(self._encoder.audio(frame.timestamp, frame.body))

    def streamEnded(self) -> None:
        if self.done:
            return
        self._stream = None
        self.done = True
        self._cancelTimer()
        try:
            self._request.unregisterProducer()
            self._request.finish()
        except Exception:
            self._log.failure("ending a feed failed")

    # ---------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.done or not data:
            return
        if self._paused:
            self._congestedBytes += len(data)
            if self._congestedBytes > MAX_CONGESTED_BYTES:
                self._drop("slow")
                return
        self._counters.bytesOut.inc(len(data))
        self._request.write(data)

    def _drop(self, reason: str) -> None:
        self._timer = None
        if self.done:
            return
        self._log.info("dropping the feed of an edge that does not read")
        self._counters.dropped.labels(reason).inc()
        self._finished()
        transport = getattr(self._request, "transport", None)
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                transport.loseConnection()

    def _finished(self, _: object = None) -> None:
        """
        The edge went away (or is dropped): leave the stream.
        """
        if self.done:
            return
        self.done = True
        self._cancelTimer()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.unsubscribe(self)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class FeedCounters:
    """
    The feed's metrics.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.requests = metrics.counter(
            "tokengate_feed_requests_total",
            "Internal feed requests from other nodes, by outcome "
            "(served, forbidden, not_live, invalid)", ["outcome"])
        self.dropped = metrics.counter(
            "tokengate_feed_dropped_total",
            "Feeds to other nodes dropped by the origin, by reason (slow)", ["reason"])
        self.bytesOut = metrics.counter(
            "tokengate_feed_bytes_out_total", "Bytes of feeds sent to other nodes", [])
        self.active = 0
        metrics.callbackGauge("tokengate_feeds", "Feeds being served to other nodes",
                              lambda: self.active)


class FeedResource(Resource):
    """
    C{/internal/v1/feed/{app}/{streamId}}: dispatched by the site's root
    with the two path segments left.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, hub: Hub, clock: IReactorTime, metrics: Metrics,
                 key: Optional[bytes]) -> None:
        """
        @param key: the feed key derived from the cluster secret
            (L{tokengate.cluster.feed.feedKey}); None: no feed is served.
        """
        super().__init__()
        self._hub = hub
        self._clock = clock
        self._key = key
        self._counters = FeedCounters(metrics)

    def _answer(self, request: Any, code: int, outcome: str) -> bytes:
        self._counters.requests.labels(outcome).inc()
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return {403: b"Forbidden\n", 404: b"Not found\n"}.get(code, b"Bad request\n")

    def render_GET(self, request: Any) -> Any:
        postpath = request.postpath
        if len(postpath) != 2:
            return self._answer(request, 404, "invalid")
        try:
            app = unquote(postpath[0].decode("ascii"), errors="strict")
            streamId = unquote(postpath[1].decode("ascii"), errors="strict")
        except UnicodeDecodeError:
            return self._answer(request, 404, "invalid")
        if not self._authorized(request, app, streamId):
            return self._answer(request, 403, "forbidden")
        if not isValidStreamId(streamId):
            return self._answer(request, 404, "invalid")
        stream = self._hub.get(app, streamId)
        if stream is None or stream.publishType == PULLED:
            # an edge serves what it pulled to its own viewers only
            return self._answer(request, 404, "not_live")
        self._counters.requests.labels("served").inc()
        request.setHeader(b"content-type", FEED_CONTENT_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(PUBLICATION_HEADER.encode("ascii"), publicationOf(stream).encode("ascii"))
        feed = FeedSubscriber(request, self._clock, self._counters)
        self._counters.active += 1

        def gone(_: object) -> None:
            self._counters.active -= 1
            feed._finished()

        request.notifyFinish().addBoth(gone)
        request.registerProducer(feed, True)
        stream.subscribe(feed)
        return NOT_DONE_YET

    def _authorized(self, request: Any, app: str, streamId: str) -> bool:
        return checkNodeRequest(self._key, request, app, streamId, self._clock.seconds())
