# -*- test-case-name: tests.test_cluster_media -*-
"""
The origin's side of the internal media channel
(L{tokengate.cluster.media}): C{GET
/internal/v1/media/{app}/{streamId}/{object}} answers with this node's
packager output of a live stream, for another node's viewers: the
playlists and the MPD undecorated (markers where a viewer's credential and
location go), init segments, segments and parts.

Only nodes may ask, as for the feed (L{tokengate.cluster.origin}): the
request carries C{X-Tokengate-Node}, C{X-Tokengate-Expires} and
C{Authorization: TokengateMedia <credential>} (purpose C{media}).  Anything
else is 403 (every request, without a cluster secret); a stream this node
does not package is 404; counted in C{tokengate_media_requests_total{outcome}}.

The waits are a viewer's (L{tokengate.web.playback}), bounded the same way:

 - a playlist or MPD of a stream with media but no complete segment yet
   is answered once its first segment is made, a media playlist once its
   own track's is (at most twice the segment target plus a second,
   L{MAX_STARTING_WAIT} at most);
 - a media playlist with C{_HLS_msn} (and C{_HLS_part}) waits until it
   holds that part, at most C{blockTimeoutFactor} segment targets, then is
   answered as it is (the packager bounds the waits, L{MAX_WAITERS});
 - a segment or part of the live edge not made yet (the segment in
   progress or the next, a preload hint's part) is answered once it is
   complete, within the same bound, else 404;
 - past the end of an ended stream: 204 (as for a viewer).
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import unquote

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tokengate.access.names import isValidStreamId
from tokengate.cluster.feed import checkNodeRequest
from tokengate.cluster.media import (
    AUTH_SCHEME,
    LOCATION_MARKER,
    PURPOSE,
    QUERY_MARKER,
    parseObject,
)
from tokengate.logsafe import Logger
from tokengate.metrics import Metrics
from tokengate.web.playback import MAX_STARTING_WAIT, IMediaOutputs, firstSegment

MPEGURL = b"application/vnd.apple.mpegurl"
DASHXML = b"application/dash+xml"
MP4 = b"video/mp4"


class MediaResource(Resource):
    """
    C{/internal/v1/media/{app}/{streamId}/{object}}: dispatched by the
    site's root with the path segments after C{media} left.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, outputs: IMediaOutputs, clock: IReactorTime, metrics: Metrics,
                 key: Optional[bytes], blockTimeoutFactor: float = 3.0) -> None:
        """
        @param outputs: this node's packagers.
        @param key: the key derived from the cluster secret
            (L{tokengate.cluster.feed.feedKey}); None: nothing is served.
        @param blockTimeoutFactor: segment targets a blocking request waits,
            at most (the playback gate's).
        """
        super().__init__()
        self._outputs = outputs
        self._clock = clock
        self._key = key
        self._blockTimeoutFactor = blockTimeoutFactor
        self._requests = metrics.counter(
            "tokengate_media_requests_total",
            "Internal media requests from other nodes, by outcome (served, forbidden, "
            "not_live, not_found, invalid)", ["outcome"])

    def _answer(self, request: Any, code: int, outcome: str) -> bytes:
        self._requests.labels(outcome).inc()
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return {403: b"Forbidden\n", 404: b"Not found\n"}.get(code, b"Bad request\n")

    def render_GET(self, request: Any) -> Any:
        postpath = request.postpath
        if len(postpath) not in (3, 4):
            return self._answer(request, 404, "invalid")
        try:
            app = unquote(postpath[0].decode("ascii"), errors="strict")
            streamId = unquote(postpath[1].decode("ascii"), errors="strict")
            names = [p.decode("ascii") for p in postpath[2:]]
        except UnicodeDecodeError:
            return self._answer(request, 404, "invalid")
        if not self._authorized(request, app, streamId):
            return self._answer(request, 403, "forbidden")
        parsed = parseObject(names)
        if parsed is None or not isValidStreamId(streamId):
            return self._answer(request, 404, "invalid")
        packager = self._outputs.packager(app, streamId)
        if packager is None:
            return self._answer(request, 404, "not_live")
        what, details = parsed
        d = Deferred.fromCoroutine(self._serve(request, packager, what, details))
        d.addErrback(self._unexpected, request)
        return NOT_DONE_YET

    def _authorized(self, request: Any, app: str, streamId: str) -> bool:
        return checkNodeRequest(self._key, request, app, streamId, self._clock.seconds(),
                                scheme=AUTH_SCHEME, purpose=PURPOSE)

    # --- serving ---------------------------------------------------------------------

    async def _waited(self, request: Any, wait: "Deferred[bool]", timeout: float) -> bool:
        """
        Whether C{wait} fired True within C{timeout} seconds (cancelled when
        the asking node goes away).
        """
        if wait.called:
            return bool(await wait)
        wait.addTimeout(timeout, self._clock)
        finished = request.notifyFinish()
        finished.addErrback(lambda _: wait.cancel())
        try:
            return bool(await wait)
        except CancelledError:
            return False
        except Exception:
            return False

    def _gone(self, request: Any) -> bool:
        return bool(request.finished or getattr(request, "_disconnected", False))

    async def _serve(self, request: Any, packager: Any, what: str,
                     details: tuple[str, ...]) -> None:
        blockTimeout = self._blockTimeoutFactor * packager.segmentTarget
        if what in ("hls", "dash"):
            first = firstSegment(packager)
            if first is not None:
                await self._waited(request, first,
                                   min(2 * packager.segmentTarget + 1, MAX_STARTING_WAIT))
            if what == "hls":
                self._text(request, packager.hlsMultivariant(QUERY_MARKER), MPEGURL)
            else:
                self._text(request, packager.dashMpd(QUERY_MARKER, LOCATION_MARKER), DASHXML)
            return
        if what == "media":
            kind = details[0]
            first = firstSegment(packager, kind)
            if first is not None:
                await self._waited(request, first,
                                   min(2 * packager.segmentTarget + 1, MAX_STARTING_WAIT))
            msn = _int(request, b"_HLS_msn")
            part = _int(request, b"_HLS_part")
            if msn is not None:
                await self._waited(request, packager.wait(kind, msn, part), blockTimeout)
            self._text(request, packager.hlsMedia(kind, QUERY_MARKER), MPEGURL)
            return
        kind, name = details
        data = packager.resource(kind, name)
        if data is None and not name.startswith("init"):
            numbers = name[:-4].split(".")
            msn = int(numbers[0])
            index = int(numbers[1]) if len(numbers) > 1 else None
            edge = packager.edge(kind)
            if not packager.ended and edge is not None and edge[0] <= msn <= edge[0] + 1:
                # the live edge: answered once made, as a viewer's request
                if await self._waited(request, packager.wait(kind, msn, index), blockTimeout):
                    data = packager.resource(kind, name)
            elif packager.ended and (edge is None or msn > edge[0]):
                if not self._gone(request):
                    self._requests.labels("served").inc()
                    request.setResponseCode(204)
                    request.setHeader(b"cache-control", b"no-store")
                    request.finish()
                return
        if data is None:
            self._finish(request, self._answer(request, 404, "not_found"))
            return
        self._body(request, data, MP4)

    def _text(self, request: Any, text: Optional[str], ctype: bytes) -> None:
        if text is None:
            self._finish(request, self._answer(request, 404, "not_found"))
            return
        self._body(request, text.encode("utf-8"), ctype)

    def _body(self, request: Any, data: bytes, ctype: bytes) -> None:
        if self._gone(request):
            return
        self._requests.labels("served").inc()
        request.setHeader(b"content-type", ctype)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % (len(data),))
        request.write(data)
        request.finish()

    def _finish(self, request: Any, body: bytes) -> None:
        if self._gone(request):
            return
        request.write(body)
        request.finish()

    def _unexpected(self, failure: Any, request: Any) -> None:
        self._log.failure("an internal media request failed", failure)
        if not self._gone(request):
            request.setResponseCode(500)
            request.finish()


def _int(request: Any, name: bytes) -> Optional[int]:
    """
    A sequence number argument (ASCII digits, at most nine), else None.
    """
    values = request.args.get(name)
    if not values:
        return None
    value: bytes = values[0]
    if not value or len(value) > 9 or not (value.isascii() and value.isdigit()):
        return None
    return int(value)
