# -*- test-case-name: tests.test_cluster_media -*-
"""
The edge's side of the internal media channel (L{tokengate.cluster.media}):
HLS, LL-HLS and DASH of a stream live on another node are the origin's
packager output, fetched over the channel, so that every node serves the
same documents and segment names.  The playback gate
(L{tokengate.web.playback}) admits the viewer on this node as for a local
stream and asks L{RemoteMedia.fetch} for what it then serves.

 - **Where**: the stream registry (L{IStreamLocator}) names the origin,
   remembered for C{locationTtl} seconds; when the registry no longer
   knows the stream (its publisher left) or cannot be reached, the last
   origin known within L{RETAIN} seconds is asked (it keeps an ended
   stream's packager a minute: the final playlists); a location naming
   this node is none (this node does not package what it pulls).
 - **Immutable objects** (init segments, segments, parts: one URI names one
   content while the origin's packager lives) are kept in a least recently
   used cache of at most C{maxBytes}, keyed by the origin's node and its
   publication's start (a new packager, whose numbers start again, is a
   new publication);
 - **documents** (playlists, MPDs) are kept C{documentTtl} seconds
   (blocking reloads with their C{_HLS_msn}/C{_HLS_part}: the same answer
   fits every viewer waiting for that part);
 - concurrent fetches of one object are **collapsed** into one request;
 - each fetch is bounded: the whole exchange within the blocking bound of
   the stream's application plus L{MARGIN} seconds, L{MAX_OBJECT} bytes,
   C{maxInFlight} at once (then C{busy}, 503).

A fetch that fails (the origin unreachable or dead, a timeout, an answer
too large or unexpected) answers 404, as a stream that is not live: the
viewer's player ends as for an ended stream.  Counted in
C{tokengate_edge_media_requests_total{result}} and
C{tokengate_edge_media_failures_total{reason}}.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Optional
from urllib.parse import quote

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from tokengate.access.outbound import Outbound, OutboundError
from tokengate.apps import ISettingsLookup
from tokengate.cluster.feed import CREDENTIAL_LIFETIME, EXPIRES_HEADER, NODE_HEADER, \
    feedCredential
from tokengate.cluster.media import AUTH_SCHEME, MEDIA_PATH, PURPOSE
from tokengate.cluster.registry import IStreamLocator, StreamLocation
from tokengate.logsafe import Logger
from tokengate.metrics import Metrics

#: the largest object fetched, bytes (a safety-valve segment is at most a
#: quarter of the packager's 64 MiB)
MAX_OBJECT = 24 * 1024 * 1024

#: bytes of immutable objects kept
MAX_CACHE_BYTES = 128 * 1024 * 1024

#: seconds a playlist or MPD is reused
DOCUMENT_TTL = 0.25

#: documents kept at most (their time is short anyway)
MAX_DOCUMENTS = 4096

#: seconds a stream's location is reused before the registry is asked again
LOCATION_TTL = 1.0

#: seconds the last origin of a stream is still asked once the registry no
#: longer knows it (the origin keeps an ended stream's packager a minute)
RETAIN = 60.0

#: streams whose location is remembered, at most
MAX_LOCATIONS = 10_000

#: fetches in flight at once
MAX_IN_FLIGHT = 512

#: seconds added to the origin's own bound for a blocking request
MARGIN = 5.0


@frozen
class Answer:
    """
    What the origin answered: C{code} 200 (C{body} is the object), 204 (past
    the end of an ended stream), 404 (none: not live, not held, or the
    origin failed) or 503 (too many fetches at once).
    """

    code: int
    body: bytes = b""


NOT_FOUND = Answer(404)
BUSY = Answer(503)


class RemoteMedia:
    """
    This node's fetches from other nodes' packagers (see the module's
    docstring).
    """

    _log = Logger()

    def __init__(self, locator: IStreamLocator, outbound: Outbound, key: bytes,
                 clock: IReactorTime, metrics: Metrics, apps: ISettingsLookup,
                 blockTimeoutFactor: float = 3.0, maxBytes: int = MAX_CACHE_BYTES,
                 documentTtl: float = DOCUMENT_TTL, locationTtl: float = LOCATION_TTL,
                 wallClock: Callable[[], float] = time.time) -> None:
        """
        @param locator: the stream registry.
        @param outbound: the bounded HTTP client (its body limit should be
            L{MAX_OBJECT}, its in-flight bound L{MAX_IN_FLIGHT}).
        @param key: the key derived from the cluster secret.
        @param apps: the applications' settings (a stream's segment target
            bounds its blocking requests).
        @param wallClock: Unix time, for the credentials' expiry.
        """
        self._locator = locator
        self._outbound = outbound
        self._key = key
        self._clock = clock
        self._apps = apps
        self._blockTimeoutFactor = blockTimeoutFactor
        self.maxBytes = maxBytes
        self.documentTtl = documentTtl
        self.locationTtl = locationTtl
        self._wall = wallClock
        self.cachedBytes = 0
        #: immutable objects, least recently used first
        self._objects: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        #: documents: key -> (fetched at, answer)
        self._documents: OrderedDict[tuple[Any, ...], tuple[float, Answer]] = OrderedDict()
        #: fetches in flight: key -> the requests waiting for it
        self._inFlight: dict[tuple[Any, ...], list[Deferred[Answer]]] = {}
        #: (app, streamId) -> (asked at, the location found, last seen at)
        self._locations: OrderedDict[tuple[str, str],
                                     tuple[float, Optional[StreamLocation], float]] = \
            OrderedDict()
        self._results = metrics.counter(
            "tokengate_edge_media_requests_total",
            "HLS/DASH objects of other nodes' streams asked for, by result (hit: from the "
            "cache, collapsed: joined a fetch in flight, fetched, not_found, failed)",
            ["result"])
        self._failures = metrics.counter(
            "tokengate_edge_media_failures_total",
            "Fetches from origins' packagers that failed, by reason (unreachable, timeout, "
            "too_large, busy, status, locator, error)", ["reason"])
        self._bytes = metrics.counter(
            "tokengate_edge_media_bytes_total", "Bytes fetched from origins' packagers", [])
        metrics.callbackGauge("tokengate_edge_media_cache_bytes",
                              "Bytes of other nodes' segments cached here",
                              lambda: self.cachedBytes)

    # --- the viewer's side --------------------------------------------------------------

    def fetch(self, app: str, streamId: str, name: str, msn: Optional[int] = None,
              part: Optional[int] = None) -> "Deferred[Answer]":
        """
        The object C{name} (L{tokengate.cluster.media.objectName}) of
        C{app}/C{streamId} from the node that packages it; for a media
        playlist C{msn} and C{part} make it a blocking reload.  Never fails.
        """
        return Deferred.fromCoroutine(self._fetch(app, streamId, name, msn, part))

    async def _fetch(self, app: str, streamId: str, name: str, msn: Optional[int],
                     part: Optional[int]) -> Answer:
        location = await self._locate(app, streamId)
        if location is None:
            self._results.labels("not_found").inc()
            return NOT_FOUND
        immutable = "/" in name
        key = (location.nodeId, location.started, app, streamId, name, msn, part)
        now = self._clock.seconds()
        if immutable:
            data = self._objects.get(key)
            if data is not None:
                self._objects.move_to_end(key)
                self._results.labels("hit").inc()
                return Answer(200, data)
        else:
            kept = self._documents.get(key)
            if kept is not None:
                if now - kept[0] <= self.documentTtl:
                    self._results.labels("hit").inc()
                    return kept[1]
                del self._documents[key]
        waiting = self._inFlight.get(key)
        if waiting is not None:
            self._results.labels("collapsed").inc()
            d: Deferred[Answer] = Deferred()
            waiting.append(d)
            return await d
        self._inFlight[key] = []
        answer = NOT_FOUND
        try:
            answer = await self._request(location, app, streamId, name, msn, part)
            if answer.code == 200:
                self._keep(key, immutable, answer)
        finally:
            for waiter in self._inFlight.pop(key, []):
                waiter.callback(answer)
        return answer

    def _keep(self, key: tuple[Any, ...], immutable: bool, answer: Answer) -> None:
        if not immutable:
            self._documents[key] = (self._clock.seconds(), answer)
            while len(self._documents) > MAX_DOCUMENTS:
                self._documents.popitem(last=False)
            return
        size = len(answer.body)
        if size > self.maxBytes // 4 or key in self._objects:
            return
        self._objects[key] = answer.body
        self.cachedBytes += size
        while self.cachedBytes > self.maxBytes:
            _, old = self._objects.popitem(last=False)
            self.cachedBytes -= len(old)

    # --- the origin -------------------------------------------------------------------

    async def _locate(self, app: str, streamId: str) -> Optional[StreamLocation]:
        """
        The node packaging the stream (not this one), or None.
        """
        streamKey = (app, streamId)
        now = self._clock.seconds()
        known = self._locations.get(streamKey)
        if known is not None and now - known[0] <= self.locationTtl:
            return known[1]
        last: Optional[StreamLocation] = None
        lastSeen = 0.0
        if known is not None and known[1] is not None and now - known[2] <= RETAIN:
            last, lastSeen = known[1], known[2]
        location: Optional[StreamLocation]
        try:
            location = await self._locator.locate(app, streamId)
        except Exception:
            self._failures.labels("locator").inc()
            location = None
        now = self._clock.seconds()
        if location is not None and location.nodeId == self._locator.localNodeId:
            location = None
            last = None
        found: Optional[StreamLocation] = location
        seen = now
        if found is None:
            # not (or no longer) in the registry: its last origin, a while
            found, seen = last, lastSeen
        self._locations.pop(streamKey, None)
        self._locations[streamKey] = (now, found, seen)
        while len(self._locations) > MAX_LOCATIONS:
            self._locations.popitem(last=False)
        return found

    def _forgetLocation(self, app: str, streamId: str, location: StreamLocation) -> None:
        """
        Its origin failed: ask the registry again next time, and do not fall
        back on this origin.
        """
        known = self._locations.get((app, streamId))
        if known is not None and known[1] == location:
            del self._locations[(app, streamId)]

    def _timeout(self, app: str) -> float:
        settings = self._apps.get(app)
        segmentTarget = float(settings.hlsTime) if settings is not None else 2.0
        return self._blockTimeoutFactor * segmentTarget + MARGIN

    async def _request(self, location: StreamLocation, app: str, streamId: str, name: str,
                       msn: Optional[int], part: Optional[int]) -> Answer:
        node = self._locator.localNodeId
        expiry = int(self._wall()) + CREDENTIAL_LIFETIME
        credential = feedCredential(self._key, app, streamId, node, expiry, PURPOSE)
        url = "http://{}{}{}/{}/{}".format(location.address, MEDIA_PATH, quote(app, safe=""),
                                           quote(streamId, safe=""), name)
        if msn is not None:
            url += "?_HLS_msn={}".format(msn)
            if part is not None:
                url += "&_HLS_part={}".format(part)
        headers = {NODE_HEADER: node, EXPIRES_HEADER: str(expiry),
                   "authorization": AUTH_SCHEME + credential}
        try:
            code, body = await self._outbound.request("GET", url, headers=headers,
                                                      timeout=self._timeout(app))
        except OutboundError as e:
            self._failures.labels(e.reason).inc()
            if e.reason == "busy":
                self._results.labels("failed").inc()
                return BUSY
            self._forgetLocation(app, streamId, location)
            self._results.labels("failed").inc()
            return NOT_FOUND
        self._bytes.inc(len(body))
        if code == 200:
            self._results.labels("fetched").inc()
            return Answer(200, body)
        if code == 204:
            self._results.labels("fetched").inc()
            return Answer(204)
        if code == 404:
            self._results.labels("not_found").inc()
            return NOT_FOUND
        # 403 (another cluster secret), 5xx: counted, answered as none
        self._failures.labels("status").inc()
        self._results.labels("failed").inc()
        self._log.warn("the origin {address} answered {code} for a media request",
                       address=location.address, code=code)
        return NOT_FOUND


def newOutbound(reactor: Any) -> Outbound:
    """
    The bounded HTTP client of the media channel: persistent connections to
    the origins (a few per origin kept), L{MAX_OBJECT} bytes an answer,
    L{MAX_IN_FLIGHT} requests at once.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 8
    pool.cachedConnectionTimeout = 30
    agent = Agent(reactor, connectTimeout=3.0, pool=pool)
    return Outbound(reactor, 10.0, MAX_OBJECT, MAX_IN_FLIGHT, client=HTTPClient(agent))

