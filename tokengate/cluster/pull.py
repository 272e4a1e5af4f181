# -*- test-case-name: tests.test_cluster_pull -*-
"""
Edge pull: a node asked to play a stream that is live on another node of
the cluster pulls it from there and publishes the pulled copy into its own
hub, where every local viewer of every protocol (RTMP, WebRTC, and the
HLS/DASH packager, which follows the hub) is served from it.

One pull per (app, streamId) per node, whatever the number of local
viewers.  The access service asks L{EdgePuller.pull} during a play's
admission, before the token is redeemed (L{tokengate.access.service}); the
adapters know nothing of the cluster.

A pull's life:

 - the locator (the cluster's stream registry) names the origin; none, or
   this node: nothing to pull;
 - the feed client opens the origin's feed (L{tokengate.cluster.feed}); at
   its start the stream goes live in the hub, as publish type C{pull} (not
   a local publisher: the registry is not told, the recorder does not
   record it, the origin's feed does not serve it on);
 - a feed that ends cleanly (the origin's publisher left) ends the local
   stream, and its viewers, as a local publisher's end would;
 - a feed that fails (connection lost, refused, malformed, or no byte for
   C{stallTimeout} seconds) is retried after C{backoff * 2**n} seconds (at
   most C{maxBackoff}), at most C{maxRetries} times in a row, each time
   asking the locator again (the stream may have moved); meanwhile the
   local stream stays live without frames; when the retries are spent, or
   the locator knows the stream no more, it ends.  A reconnection to the
   same publication skips the frames already delivered; to a new one (a
   republish) it ends the local stream and starts a new one;
 - C{linger} seconds after the last local viewer left
   (L{tokengate.media.hub.Hub.viewers}: RTMP and WebRTC subscribers, HTTP
   sessions) the pull is dropped.

Metrics: C{tokengate_edge_pulls} (pulls running), C{tokengate_edge_pull_results_total{result}}
(started, ended, idle, failed, gave_up...), C{tokengate_edge_pull_retries_total},
C{tokengate_edge_pull_failures_total{reason}}, C{tokengate_edge_pull_bytes_total}.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Protocol
from urllib.parse import quote

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from tokengate.cluster.feed import (
    AUTH_SCHEME,
    CREDENTIAL_LIFETIME,
    EXPIRES_HEADER,
    NODE_HEADER,
    PUBLICATION_HEADER,
    FEED_PATH,
    FeedAudio,
    FeedError,
    FeedMetadata,
    FeedParser,
    FeedVideo,
    feedCredential,
)
from tokengate.cluster.registry import IStreamLocator
from tokengate.logsafe import Logger
from tokengate.media.hub import PULLED, Hub, LiveStream, StreamInUse
from tokengate.metrics import Metrics

#: seconds a play's admission waits for a pull to start
ADMISSION_WAIT = 5.0

#: seconds a pull stays after its last local viewer left
LINGER = 10.0

#: seconds without a byte from the origin before a pull counts as stalled
STALL_TIMEOUT = 5.0

#: consecutive failed attempts retried before a pull gives up
MAX_RETRIES = 4

#: the first retry's delay, doubled each time up to MAX_BACKOFF, seconds
BACKOFF = 0.5
MAX_BACKOFF = 4.0

#: pulls one node runs at once (more plays of other streams are refused
#: not_live, counted as failures "limit")
MAX_PULLS = 1000


class IFeedSink(Protocol):
    """
    What a feed connection reports to.
    """

    def feedStarted(self, publication: str) -> None:
        """
        The origin answered: the feed of publication C{publication} follows.
        """

    def feedData(self, data: bytes) -> None:
        """
        Bytes of the feed.
        """

    def feedEnded(self, how: str, why: str) -> None:
        """
        The feed is over: C{how} is C{done} (the stream ended at the
        origin), C{gone} (not live there) or C{failed} (C{why} says how).
        """


class IFeedConnection(Protocol):
    def abort(self) -> None:
        """
        Close the connection; the sink hears nothing more.
        """


class IFeedClient(Protocol):
    """
    Opens feeds from origins.
    """

    def open(self, address: str, app: str, streamId: str, sink: IFeedSink) -> IFeedConnection:
        """
        Ask the origin at C{address} (C{host:port}) for the feed of
        C{app}/C{streamId}; report to C{sink}.
        """


class PullCounters:
    def __init__(self, metrics: Metrics) -> None:
        self.results = metrics.counter(
            "tokengate_edge_pull_results_total",
            "Edge pulls by result (started, ended, idle, gave_up, republished, "
            "taken, not_found)", ["result"])
        self.retries = metrics.counter(
            "tokengate_edge_pull_retries_total", "Edge pull attempts retried", [])
        self.failures = metrics.counter(
            "tokengate_edge_pull_failures_total",
            "Failed edge pull attempts by reason (connect, status, lost, stall, malformed, "
            "locator, limit)", ["reason"])
        self.bytes = metrics.counter(
            "tokengate_edge_pull_bytes_total", "Bytes received by edge pulls", [])


@define(eq=False)
class Pull:
    """
    One stream pulled by this node (see the module's docstring).
    """

    app: str
    streamId: str
    _puller: "EdgePuller" = field(repr=False)
    stream: Optional[LiveStream] = None
    publication: Optional[str] = None
    failures: int = 0
    over: bool = False
    _waiters: list["Deferred[bool]"] = field(factory=list, repr=False)
    _connection: Optional[IFeedConnection] = field(default=None, repr=False)
    _parser: Optional[FeedParser] = field(default=None, repr=False)
    _timer: Optional[IDelayedCall] = field(default=None, repr=False)
    _lingerTimer: Optional[IDelayedCall] = field(default=None, repr=False)
    _lastData: float = 0.0
    _idleSince: Optional[float] = None
    #: after a reconnection to the same publication, the last timestamp
    #: delivered of each kind: what is not later is skipped
    _resumeAfter: dict[str, int] = field(factory=dict, repr=False)
    _lastTimestamps: dict[str, int] = field(factory=dict, repr=False)

    _log = Logger()

    # --- waiting for the start ---------------------------------------------------

    def waitStarted(self) -> "Deferred[bool]":
        if self.stream is not None and not self.stream.ended:
            return succeed(True)
        if self.over:
            return succeed(False)
        d: Deferred[bool] = Deferred()
        self._waiters.append(d)
        return d

    def _tellWaiters(self, started: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(started)

    # --- attempts ----------------------------------------------------------------

    def attempt(self) -> None:
        self._timer = None
        if self.over:
            return
        d = Deferred.fromCoroutine(self._attempt())
        d.addErrback(self._unexpected)

    def _unexpected(self, failure: Failure) -> None:
        self._log.failure("an edge pull failed unexpectedly", failure)
        self._failed("locator")

    async def _attempt(self) -> None:
        puller = self._puller
        try:
            location = await puller.locator.locate(self.app, self.streamId)
        except Exception:
            self._failed("locator")
            return
        if self.over:
            return
        if location is None or location.nodeId == puller.locator.localNodeId:
            self._finish("not_found")
            return
        self._parser = FeedParser()
        self._lastData = puller.clock.seconds()
        self._connection = puller.client.open(location.address, self.app, self.streamId, self)
        self._timer = puller.clock.callLater(puller.stallTimeout, self._checkStall)

    def _checkStall(self) -> None:
        self._timer = None
        if self.over or self._connection is None:
            return
        clock = self._puller.clock
        quiet = clock.seconds() - self._lastData
        if quiet >= self._puller.stallTimeout:
            connection, self._connection = self._connection, None
            connection.abort()
            self._failed("stall")
        else:
            self._timer = clock.callLater(self._puller.stallTimeout - quiet, self._checkStall)

    # --- IFeedSink -----------------------------------------------------------------

    def feedStarted(self, publication: str) -> None:
        if self.over:
            return
        self._lastData = self._puller.clock.seconds()
        if self.stream is not None and publication != self.publication:
            # the origin serves a new publication: the old one has ended
            self._puller.counters.results.labels("republished").inc()
            stream, self.stream = self.stream, None
            stream.end()
        if self.stream is None:
            try:
                self.stream = self._puller.hub.publish(self.app, self.streamId, PULLED)
            except StreamInUse:
                # a local publisher took the stream meanwhile
                self._finish("taken")
                return
            self._resumeAfter = {}
            self._idleSince = None
            self._puller.counters.results.labels("started").inc()
            self._log.info("pulling {app}/{streamId} from the origin", app=self.app,
                           streamId=self.streamId)
        else:
            # the same publication again: skip what was delivered
            self._resumeAfter = dict(self._lastTimestamps)
        self.publication = publication
        self._scheduleLinger()

    def feedData(self, data: bytes) -> None:
        if self.over or self._parser is None:
            return
        puller = self._puller
        self._lastData = puller.clock.seconds()
        puller.counters.bytes.inc(len(data))
        try:
            events = self._parser.receive(data)
        except FeedError as e:
            self._log.info("malformed feed for {app}/{streamId}: {error}", app=self.app,
                           streamId=self.streamId, error=str(e))
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.abort()
            self._failed("malformed")
            return
        stream = self.stream
        if stream is None or not events:
            return
        if self.failures:
            self.failures = 0
        stream.inBurst = True
        try:
            for event in events:
                if type(event) is FeedVideo:
                    self._media("video", stream, event.timestamp, event.body)
                elif type(event) is FeedAudio:
                    self._media("audio", stream, event.timestamp, event.body)
                elif type(event) is FeedMetadata:
                    stream.setMetadata(event.metadata)
        finally:
            stream.burstEnded()
        if self._waiters and stream.framesIn:
            # the admissions waiting see the stream with its first frames
            self._tellWaiters(True)

    def _media(self, kind: str, stream: LiveStream, timestamp: int, body: bytes) -> None:
        if kind == "video":
            config = len(body) >= 2 and body[0] & 0x0F == 7 and body[1] == 0
            if config:
                if body != stream.videoConfig:
                    stream.videoReceived(timestamp, body)
                return
        else:
            config = len(body) >= 2 and body[0] >> 4 == 10 and body[1] == 0
            if config:
                if body != stream.audioConfig:
                    stream.audioReceived(timestamp, body)
                return
        after = self._resumeAfter.get(kind)
        if after is not None:
            if timestamp <= after:
                return
            del self._resumeAfter[kind]
        self._lastTimestamps[kind] = timestamp
        if kind == "video":
            stream.videoReceived(timestamp, body)
        else:
            stream.audioReceived(timestamp, body)

    def feedEnded(self, how: str, why: str) -> None:
        if self.over:
            return
        self._connection = None
        self._parser = None
        if how == "done":
            self._finish("ended")
        elif how == "gone":
            self._finish("not_found")
        else:
            self._failed(why)

    # --- failure, retry, end ---------------------------------------------------------

    def _failed(self, reason: str) -> None:
        if self.over:
            return
        puller = self._puller
        self._cancelTimer()
        puller.counters.failures.labels(reason).inc()
        self.failures += 1
        if self.failures > puller.maxRetries:
            self._finish("gave_up")
            return
        puller.counters.retries.inc()
        delay = min(puller.backoff * 2 ** (self.failures - 1), puller.maxBackoff)
        self._log.info("edge pull of {app}/{streamId} failed ({reason}); retry in {delay}s",
                       app=self.app, streamId=self.streamId, reason=reason, delay=delay)
        self._timer = puller.clock.callLater(delay, self.attempt)

    def stop(self, result: str) -> None:
        """
        Drop the pull (and end the local stream).
        """
        self._finish(result)

    def _finish(self, result: str) -> None:
        if self.over:
            return
        self.over = True
        self._cancelTimer()
        if self._lingerTimer is not None and self._lingerTimer.active():
            self._lingerTimer.cancel()
        self._lingerTimer = None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()
        self._puller.counters.results.labels(result).inc()
        self._puller._forget(self)
        stream, self.stream = self.stream, None
        if stream is not None:
            self._log.info("edge pull of {app}/{streamId} over ({result})", app=self.app,
                           streamId=self.streamId, result=result)
            stream.end()
        self._tellWaiters(False)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # --- linger --------------------------------------------------------------------

    def _scheduleLinger(self) -> None:
        if self._lingerTimer is None or not self._lingerTimer.active():
            self._lingerTimer = self._puller.clock.callLater(
                self._puller.lingerCheck, self._checkViewers)

    def _checkViewers(self) -> None:
        self._lingerTimer = None
        if self.over:
            return
        puller = self._puller
        now = puller.clock.seconds()
        viewers = sum(puller.hub.viewers(self.app, self.streamId).values())
        if viewers:
            self._idleSince = None
        elif self._idleSince is None:
            self._idleSince = now
        elif now - self._idleSince >= puller.linger:
            self._finish("idle")
            return
        self._scheduleLinger()


class EdgePuller:
    """
    This node's pulls, one per stream (see the module's docstring).
    """

    _log = Logger()

    def __init__(self, hub: Hub, locator: IStreamLocator, client: IFeedClient, clock: IReactorTime,
                 metrics: Metrics, linger: float = LINGER, stallTimeout: float = STALL_TIMEOUT,
                 maxRetries: int = MAX_RETRIES, backoff: float = BACKOFF,
                 maxBackoff: float = MAX_BACKOFF, admissionWait: float = ADMISSION_WAIT,
                 maxPulls: int = MAX_PULLS) -> None:
        self.hub = hub
        self.locator = locator
        self.client = client
        self.clock = clock
        self.linger = linger
        self.lingerCheck = max(0.1, min(1.0, linger / 4))
        self.stallTimeout = stallTimeout
        self.maxRetries = maxRetries
        self.backoff = backoff
        self.maxBackoff = maxBackoff
        self.admissionWait = admissionWait
        self.maxPulls = maxPulls
        self.counters = PullCounters(metrics)
        self._pulls: dict[tuple[str, str], Pull] = {}
        metrics.callbackGauge("tokengate_edge_pulls", "Streams this node pulls from origins",
                              lambda: len(self._pulls))

    def pulling(self, app: str, streamId: str) -> Optional[Pull]:
        return self._pulls.get((app, streamId))

    def pull(self, app: str, streamId: str) -> "Deferred[bool]":
        """
        Make C{app}/C{streamId} live here by pulling it, if another node
        holds it: fires True once it is live in the hub (already live:
        at once), False when it cannot be (not live anywhere, the origin
        unreachable...) or not within C{admissionWait} seconds.  Never
        fails.
        """
        if self.hub.isLive(app, streamId):
            return succeed(True)
        key = (app, streamId)
        pull = self._pulls.get(key)
        if pull is None:
            if self.hub.isTaken(app, streamId):
                return succeed(False)
            if len(self._pulls) >= self.maxPulls:
                self.counters.failures.labels("limit").inc()
                return succeed(False)
            pull = self._pulls[key] = Pull(app, streamId, self)
            pull.attempt()
        d = pull.waitStarted()
        if d.called:
            return d
        timeout = self.clock.callLater(self.admissionWait, d.callback, False)

        def done(started: bool) -> bool:
            if timeout.active():
                timeout.cancel()
            return started

        return d.addCallback(done)

    def _forget(self, pull: Pull) -> None:
        key = (pull.app, pull.streamId)
        if self._pulls.get(key) is pull:
            del self._pulls[key]

    def stopAll(self) -> None:
        """
        Drop every pull (shutdown).
        """
        for pull in list(self._pulls.values()):
            pull.stop("stopped")


# --- the HTTP feed client ---------------------------------------------------------------


class HTTPFeedClient:
    """
    Opens feeds over HTTP/1.1 (L{tokengate.cluster.origin}), with the
    credential made for this node from the cluster's feed key.
    """

    def __init__(self, reactor: Any, key: bytes, nodeId: str,
                 connectTimeout: float = 3.0) -> None:
        from twisted.web.client import Agent, HTTPConnectionPool

        self._reactor = reactor
        self._key = key
        self._nodeId = nodeId
        pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = Agent(reactor, connectTimeout=connectTimeout, pool=pool)

    def open(self, address: str, app: str, streamId: str, sink: IFeedSink) -> "_HTTPFeed":
        from twisted.web.http_headers import Headers

        expiry = int(time.time()) + CREDENTIAL_LIFETIME
        credential = feedCredential(self._key, app, streamId, self._nodeId, expiry)
        url = "http://{}{}{}/{}".format(address, FEED_PATH, quote(app, safe=""),
                                        quote(streamId, safe=""))
        headers = Headers({
            NODE_HEADER: [self._nodeId],
            EXPIRES_HEADER: [str(expiry)],
            "authorization": [AUTH_SCHEME + credential],
        })
        feed = _HTTPFeed(sink)
        feed.request = self._agent.request(b"GET", url.encode("ascii"), headers)
        feed.request.addCallbacks(feed.response, feed.connectFailed)
        return feed


class _HTTPFeed:
    def __init__(self, sink: IFeedSink) -> None:
        self._sink: Optional[IFeedSink] = sink
        self.request: Optional[Deferred[Any]] = None
        self._transport: Any = None

    def abort(self) -> None:
        self._sink = None
        if self._transport is not None:
            self._transport.stopProducing()
        elif self.request is not None and not self.request.called:
            self.request.cancel()

    def connectFailed(self, failure: Failure) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.feedEnded("failed", "connect")

    def response(self, response: Any) -> None:
        from twisted.internet.protocol import Protocol as TwistedProtocol
        from twisted.web.client import ResponseDone

        sink = self._sink
        if sink is None:
            response.deliverBody(TwistedProtocol())
            return
        if response.code != 200:
            self._sink = None
            response.deliverBody(TwistedProtocol())
            sink.feedEnded("gone" if response.code == 404 else "failed", "status")
            return
        values = response.headers.getRawHeaders(PUBLICATION_HEADER.encode("ascii")) or [b""]
        publication = values[0].decode("ascii", "replace")[:64]
        feed = self

        class Body(TwistedProtocol):
            def connectionMade(self) -> None:
                feed._transport = self.transport

            def dataReceived(self, data: bytes) -> None:
                if feed._sink is not None:
                    feed._sink.feedData(data)

            def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
                feed._transport = None
                sink, feed._sink = feed._sink, None
                if sink is not None:
                    if reason.check(ResponseDone):
                        sink.feedEnded("done", "done")
                    else:
                        sink.feedEnded("failed", "lost")

        sink.feedStarted(publication)
        if self._sink is None:
            response.deliverBody(TwistedProtocol())
            return
        response.deliverBody(Body())
