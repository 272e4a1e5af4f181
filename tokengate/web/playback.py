# -*- test-case-name: tests.test_playback -*-
"""
The HTTP playback gate: HLS, LL-HLS, DASH and MP4 under C{/{App}/streams/}.

When the application controls play with tokens, **one token admits one
viewing session**.  The first request (C{?token=T}) redeems the token
through the access service and opens a session; the server then writes a signed session
credential (C{tgs=...}) into everything it serves: the media-playlist URIs of
the multivariant playlist, every map, segment, part and preload-hint URI, the
MPD's segment templates and C{Location}, and a redirect for MP4 (whose
Range requests then carry it).  A cookie scoped to the stream carries it
too, for clients that re-request the original URL with the spent token
(ffmpeg's DASH reader does).

When the application has no play token control but a security policy that
applies to play (a TOTP subscriber code, a play webhook), the first request
is admitted all the same (with C{?subscriberId=S&subscriberCode=C}, the
policies being told the query's other parameters too) and opens a session;
without either, streams are served without sessions.

A spent token (or without a token, the subscriber id and code that opened a
session) presented again **from the address that redeemed it**, for the
same stream and format, continues the session it opened while that session is
alive (not ended, revoked or idle): mpv opens a playlist, an MPD or an MP4
twice (its stream layer probes, then libavformat reopens the URL), a HEAD is
followed by its GET, a player retries its first request.  A request arriving
while the token's first redemption from that address is still in flight
waits for it.  Anyone else presenting the token is refused: the token never
opens a second session, and from another address it reaches none.

URL layout (the packager writes URIs relative to these)::

    streams/{id}.m3u8               multivariant playlist (also {id}_adaptive.m3u8)
    streams/{id}/video.m3u8         media playlists (video, audio), LL-HLS
    streams/{id}/{id}.mpd           DASH
    streams/{id}/{kind}/init.mp4    CMAF init segments
    streams/{id}/{kind}/{n}.m4s     segments; {n}.{p}.m4s parts
    streams/{id}.mp4                the MP4 recording (Range requests)

GET and HEAD are checked, OPTIONS passes, anything else is 403.  Admission
is the access service's (L{tokengate.access.service}): every request first
passes its checks that keep a token (the stream id's grammar, the
application, C{hlsMuxingEnabled}/C{dashMuxingEnabled}, an MP4's recording),
answered 404 with Ant Media's strings when they refuse; a token is then
redeemed by L{IAccess.play}, which refuses a stream that is not live (404,
the token kept) or a bad token (403 with the reference reason string).
Every answer carries CORS headers, so a browser player sees the refusal
rather than a CORS error.  The table of outcomes and answers is in
C{docs/development.md}.

A session is a grant of the one session registry
(L{tokengate.access.sessions}); L{HTTPSessions} indexes them by credential
and token.  The server ends one only through its grant's C{kick}, which
revokes its credentials once.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from typing import Any, Optional, Protocol
from urllib.parse import parse_qsl, quote

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tokengate.access.service import AccessRequest, IAccess, Refused
from tokengate.access.sessions import Grant, SessionRegistry
from tokengate.jsonvalue import JSONError, optionalDecimalText
from tokengate.logsafe import Logger
from tokengate.metrics import Metrics
from tokengate.tokens import MAX_TOKEN_LENGTH, PLAY, Outcome, digest
from tokengate.web.offload import OffloadLinks
from tokengate.web.sessions import InvalidCredential, Session, SessionSigner, cookie_name
from tokengate.web.vod import RecordingFile

_RESOURCE = re.compile(r"^(?:init(?:-\d{1,6})?\.mp4|\d{1,9}(?:\.\d{1,4})?\.m4s)$", re.ASCII)

MPEGURL = b"application/vnd.apple.mpegurl"
DASHXML = b"application/dash+xml"
MP4 = b"video/mp4"

KINDS = ("video", "audio")

#: A viewing session may make this many futile requests within
#: L{FUTILE_WINDOW} seconds: segments or parts the server does not hold (past
#: the end of an ended stream, far ahead of the live edge, long gone) and
#: manifests of an ended stream.  The next one ends the session with 410.
FUTILE_LIMIT = 40
FUTILE_WINDOW = 30.0
#: Once a stream ended, each of its documents (MPD, playlists) is served
#: this many times per viewing session; later requests get 410.  A player
#: that keeps polling the final MPD as if the stream were live (VLC 3 does:
#: it never takes the MPD's change to static) stops after a few refusals.
ENDED_DOCUMENTS = 3



#: the longest a playlist or MPD request waits for a starting stream's
#: first segment, seconds
MAX_STARTING_WAIT = 15.0

def firstSegment(packager: Any, kind: Optional[str] = None) -> "Optional[Deferred[bool]]":
    """
    When a live stream's packager has media but no complete segment yet:
    a Deferred firing once it has one (or never will); otherwise None.

    @param kind: C{"video"} or C{"audio"}: that track's first segment (a
        media playlist's; the other track's segments may come first); None:
        the first segment of the stream's main track (video if any), which
        the multivariant playlist and the MPD wait for.
    """
    if packager.ended:
        return None
    tracks = packager.segmenter
    if kind is not None:
        track = tracks.video if kind == "video" else tracks.audio
        if track.track is None:
            return None
    elif tracks.video.track is not None:
        kind, track = "video", tracks.video
    elif tracks.audio.track is not None:
        kind, track = "audio", tracks.audio
    else:
        return None
    if track.segments:
        return None
    # the segment being made (its number continues a previous
    # publication's), or the first one once it is begun
    msn = track.msn if track.msn is not None else 0
    first: Deferred[bool] = packager.wait(kind, msn)
    if first.called:
        return None
    return first


class FutileRequests:
    """
    Per viewing session (or, without play tokens, per address and stream):
    how many futile requests it made in its current window.  Bounded: the
    least recently counted keys are forgotten first.
    """

    def __init__(self, clock: IReactorTime, limit: int = FUTILE_LIMIT,
                 window: float = FUTILE_WINDOW, maxKeys: int = 100_000) -> None:
        self._clock = clock
        self.limit = limit
        self.window = window
        self._max = maxKeys
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def spend(self, key: str) -> bool:
        """
        Count one futile request of C{key}; False once it went over the limit
        in the current window.
        """
        now = self._clock.seconds()
        start, count = self._counts.pop(key, (now, 0))
        if now - start > self.window:
            start, count = now, 0
        count += 1
        self._counts[key] = (start, count)
        while len(self._counts) > self._max:
            self._counts.popitem(last=False)
        return count <= self.limit

    def forget(self, key: str) -> None:
        self._counts.pop(key, None)


class IMediaOutputs(Protocol):
    """
    What playback serves: the packagers of live streams, the recordings.
    """

    def packager(self, app: str, streamId: str) -> Optional[Any]:
        """
        The stream's packager (HLS, DASH), or None.
        """

    def recordingPath(self, app: str, streamId: str) -> Optional[str]:
        """
        Where the stream's MP4 recording is, or None.
        """


class IRemoteMedia(Protocol):
    """
    The packaged media of streams this node does not package: another
    node's (L{tokengate.cluster.remote.RemoteMedia}).
    """

    def fetch(self, app: str, streamId: str, name: str, msn: Optional[int] = None,
              part: Optional[int] = None) -> "Deferred[Any]":
        """
        The object C{name} (L{tokengate.cluster.media.objectName}): fires
        with an answer whose C{code} is 200 (C{body}), 204, 404 or 503;
        never fails.
        """


def _cors(request: Any) -> None:
    request.setHeader(b"access-control-allow-origin", b"*")
    request.setHeader(b"access-control-allow-methods", b"GET, HEAD, OPTIONS")
    request.setHeader(b"access-control-allow-headers", b"range, content-type")
    request.setHeader(b"access-control-expose-headers",
                      b"content-length, content-range, accept-ranges")


def _fail(request: Any, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps({"success": False, "message": message, "dataId": "", "errorId": 0}
                      ).encode("utf-8")


#: the protocols of HTTP playback sessions (the grants' C{protocol}, the
#: sessions' C{kind})
HTTP_PROTOCOLS = frozenset({"hls", "dash", "vod"})


class _SessionMind:
    """
    The login mind of one HTTP viewing session, and its entry in
    L{HTTPSessions}.  The server ends the session with its grant's
    C{kick} (the one way: L{tokengate.access.sessions}), which calls
    L{kick} here once: the session leaves the index and its credentials
    stop working.

    @ivar tokenDigest: the digest of the token that opened it, or without a
        token of the subscriber's id and code (so that they may continue it
        from C{peerHost}), or None.
    @ivar lastSeen: when the session last made a request.
    """

    def __init__(self, sessions: "HTTPSessions", protocolName: str, peerHost: str,
                 tokenDigest: Optional[str] = None) -> None:
        self._sessions = sessions
        self.protocolName = protocolName
        self.peerHost = peerHost
        self.tokenDigest = tokenDigest
        self.session: Optional[Session] = None
        self.grant: Optional[Grant] = None
        self.lastSeen = 0.0

    def kick(self, reason: str) -> None:
        self._sessions._kicked(self, reason)


class HTTPSessions:
    """
    The HTTP viewing sessions of this node: an index, by session id and by
    the digest of the token that opened each, over the grants the session
    registry holds.  The registry is the truth: a session is alive while
    its grant is (L{count} asks the registry; an entry whose grant ended is
    never used), and the index only adds what HTTP needs: when each
    session was last seen (idle sessions are ended by L{sweep}) and which
    token, from which address, may continue it (L{continued}).

    Every end goes through the grant (L{Grant.kick}): idle (C{"idle"}),
    pushed out beyond C{maxSessions} (C{"evicted"}), futile requests
    (C{"flood"}, L{end}), and whatever the registry's other users decide
    (revocation, application deletion, expiry, shutdown).  The grant calls
    the session's mind once, which drops the entry and revokes the
    session's credentials (except when idle: they have expired already).
    """

    def __init__(self, registry: SessionRegistry, signer: SessionSigner, clock: IReactorTime,
                 maxSessions: int = 100_000) -> None:
        self.signer = signer
        self._registry = registry
        self._clock = clock
        self._max = maxSessions
        # session id -> its mind, least recently seen first
        self._byId: OrderedDict[str, _SessionMind] = OrderedDict()
        # token digest -> the mind of the session it opened
        self._opener: dict[str, _SessionMind] = {}

    def mind(self, protocol: str, peer: str, tokenDigest: Optional[str] = None) -> _SessionMind:
        """
        The mind to log a new session in with: C{protocol} (C{hls},
        C{dash}, C{vod}) for C{peer}, opened by the token with digest
        C{tokenDigest} (None: no token, or one that may not continue it).
        """
        return _SessionMind(self, protocol, peer, tokenDigest)

    def open(self, mind: _SessionMind, grant: Grant, session: Session) -> None:
        """
        Index the session C{grant} admitted (logged in with C{mind}); beyond
        C{maxSessions}, the least recently seen session is ended.
        """
        mind.grant = grant
        mind.session = session
        mind.lastSeen = self._clock.seconds()
        self._byId[session.sessionId] = mind
        if mind.tokenDigest is not None:
            self._opener[mind.tokenDigest] = mind
        while len(self._byId) > self._max:
            _, old = self._byId.popitem(last=False)
            self._drop(old)
            if old.grant is not None:
                old.grant.kick("evicted")

    def _drop(self, mind: _SessionMind) -> None:
        """
        Forget a session's entries (idempotent).
        """
        if mind.session is not None and self._byId.get(mind.session.sessionId) is mind:
            del self._byId[mind.session.sessionId]
        if mind.tokenDigest is not None and self._opener.get(mind.tokenDigest) is mind:
            del self._opener[mind.tokenDigest]

    def _kicked(self, mind: _SessionMind, reason: str) -> None:
        """
        Its grant ended the session (once): forget it, and unless it was
        idle (its credentials expired already), make its credentials stop
        working.
        """
        self._drop(mind)
        if mind.session is not None and reason != "idle":
            self.signer.revokeSession(mind.session.sessionId, self._clock.seconds())

    def _alive(self, mind: _SessionMind) -> bool:
        """
        Whether its grant is live; an entry whose grant ended otherwise
        (a logout) is dropped.
        """
        if mind.grant is None or mind.grant.ended:
            self._drop(mind)
            return False
        return True

    def _idle(self, mind: _SessionMind, now: float) -> bool:
        assert mind.session is not None
        idle = self.signer.vodIdle if mind.session.kind == "vod" else self.signer.idle
        return now - mind.lastSeen > idle

    def continued(self, token: str, peer: str, app: str, streamId: str, kind: str
                  ) -> Optional[Session]:
        """
        The live session that the token with digest C{token} opened (or the
        subscriber's id and code, L{_opener}), if
        C{peer} is the address that redeemed it and the request is for the
        same stream and format; None otherwise (the token must then go
        through admission, which refuses a spent one).

        A session is alive while its grant is (not ended by revocation, a
        kick, ...) and it has not been idle longer than its credentials
        live (L{sweep} ends those; the check here covers the time between
        sweeps).
        """
        mind = self._opener.get(token)
        if mind is None or mind.peerHost != peer or not self._alive(mind):
            return None
        session = mind.session
        if session is None or session.app != app or session.streamId != streamId \
                or session.kind != kind or self._idle(mind, self._clock.seconds()):
            return None
        self.seen(session)
        return session

    def seen(self, session: Session) -> None:
        """
        The session made a request.
        """
        mind = self._byId.get(session.sessionId)
        if mind is not None:
            mind.lastSeen = self._clock.seconds()
            self._byId.move_to_end(session.sessionId)

    def sweep(self) -> int:
        """
        End the sessions idle longer than their credentials live; the
        number ended.
        """
        now = self._clock.seconds()
        ended = 0
        for mind in list(self._byId.values()):
            if self._alive(mind) and self._idle(mind, now):
                assert mind.grant is not None
                mind.grant.kick("idle")
                ended += 1
        self.signer.forgetRevocations(now)
        return ended

    def count(self, app: str, streamId: str) -> dict[str, int]:
        """
        The stream's HTTP viewers by kind (C{hls}, C{dash}, C{vod}): its
        live HTTP play grants in the registry.
        """
        counts: dict[str, int] = {}
        for grant in self._registry.grants(app, streamId):
            if grant.action == PLAY and grant.protocol in HTTP_PROTOCOLS:
                counts[grant.protocol] = counts.get(grant.protocol, 0) + 1
        return counts

    def end(self, session: Session, reason: str) -> None:
        """
        End one session now (its grant's kick); a session not indexed here
        (another node's, say) has its credentials refused all the same.
        """
        mind = self._byId.get(session.sessionId)
        if mind is not None and self._alive(mind):
            assert mind.grant is not None
            mind.grant.kick(reason)
        else:
            self.signer.revokeSession(session.sessionId, self._clock.seconds())


class PlaybackResource(Resource):
    """
    C{/{App}/streams/...} for one application.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, gate: "PlaybackGate", app: str) -> None:
        super().__init__()
        self._gate = gate
        self._app = app

    def render(self, request: Any) -> Any:
        _cors(request)
        method = request.method
        if method == b"OPTIONS":
            request.setResponseCode(204)
            return b""
        if method not in (b"GET", b"HEAD"):
            return _fail(request, 403, "Invalid Request Type")
        return self._gate.serve(request, self._app, request.postpath)


class PlaybackGate:
    """
    Parses playback URLs, admits sessions and serves the packaged media.
    """

    _log = Logger()

    #: at most this many first redemptions in flight are waited on by
    #: repeats of their token (beyond, a repeat goes through admission)
    maxPending = 10_000
    maxWaiters = 16
    #: the most requests for the access service's checks kept (see _checked)
    maxCheckRequests = 10_000

    def __init__(self, access: IAccess, clock: IReactorTime, metrics: Metrics,
                 signer: SessionSigner, outputs: "IMediaOutputs", sessions: HTTPSessions,
                 blockTimeoutFactor: float = 3.0, offload: Optional[OffloadLinks] = None,
                 remote: Optional[IRemoteMedia] = None) -> None:
        """
        @param access: admits sessions and decides what keeps a token.
        @param clock: the reactor's clock.
        @param metrics: where floods are counted.
        @param signer: issues and checks session credentials.
        @param outputs: the packagers of live streams and the recordings.
        @param sessions: the HTTP sessions of this node (the composition
            root builds them over the session registry).
        @param offload: with segment offload (C{--offload-secret}), the
            links an edge verifies by itself: the playlists and MPDs carry
            them for every segment, and a segment request carrying one is
            served (the edge filling its cache); None: sessions only.
        @param remote: where HLS and DASH of a stream this node does not
            package come from (its origin's packager, in a cluster); None:
            such a stream is not live here.
        """
        self.access = access
        self.clock = clock
        self.metrics = metrics
        self.signer = signer
        self.outputs = outputs
        self.sessions = sessions
        self.blockTimeoutFactor = blockTimeoutFactor
        self.offload = offload
        self.remote = remote
        self.futile = FutileRequests(clock)
        self.endedDocuments = FutileRequests(clock, ENDED_DOCUMENTS, 600.0)
        # (token digest, peer) -> the requests waiting for that token's
        # redemption in flight from that address
        self._pending: dict[tuple[str, str], list[Deferred[None]]] = {}
        self._checkRequests: dict[tuple[str, str, str], AccessRequest] = {}

    # --- parsing -------------------------------------------------------------

    @staticmethod
    def parse(postpath: list[bytes]) -> Optional[tuple[str, str, tuple[Any, ...]]]:
        """
        @return: (stream id, what, details) or None for an unknown path.
        """
        try:
            parts = [p.decode("utf-8") for p in postpath]
        except UnicodeDecodeError:
            return None
        if len(parts) == 1:
            name = parts[0]
            if name.endswith("_adaptive.m3u8"):
                return name[: -len("_adaptive.m3u8")], "hls", ()
            if name.endswith(".m3u8"):
                return name[: -len(".m3u8")], "hls", ()
            if name.endswith(".mp4"):
                return name[: -len(".mp4")], "vod", ()
            return None
        streamId = parts[0]
        if len(parts) == 2:
            name = parts[1]
            if name == streamId + ".mpd":
                return streamId, "dash", ()
            if name in ("video.m3u8", "audio.m3u8"):
                return streamId, "media", (name[:-5],)
            return None
        if len(parts) == 3 and parts[1] in KINDS and _RESOURCE.match(parts[2]):
            return streamId, "resource", (parts[1], parts[2])
        return None

    # --- admission -----------------------------------------------------------------

    def _arg(self, request: Any, name: bytes) -> Optional[str]:
        values = request.args.get(name)
        if not values:
            return None
        value: bytes = values[0]
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def serve(self, request: Any, app: str, postpath: list[bytes]) -> Any:
        parsed = self.parse(postpath)
        if parsed is None:
            return _fail(request, 404, "Not found")
        streamId, what, details = parsed
        peer = self._peer(request)
        token = self._arg(request, b"token")
        protocol, outcome = self._check(app, streamId, what, peer, token)
        if outcome is not None:
            # refused before any token is looked at: the token is kept
            self.access.refuse(AccessRequest(app, streamId, PLAY, protocol, peer, token), outcome)
            return _fail(request, *_checkRefusal(outcome, protocol))
        if what == "resource" and self.offload is not None and self._offloaded(
                request, app, streamId, details):
            self.metrics.offload_fills.inc()
            return self._deliver(request, app, streamId, what, details, None)
        kind = self.access.tokenKind(app, PLAY) or ""
        if not kind and not self.access.admissionRequired(app, PLAY):
            if what in ("hls", "dash") and self.outputs.packager(app, streamId) is None:
                # not live here: the access service may make it so (a stream
                # live on another node of the cluster is pulled), bounded
                ready = self.access.ready(self._checked(app, streamId, protocol))
                ready.addCallback(lambda _: self._deliverLater(request, app, streamId, what,
                                                               details, None))
                ready.addErrback(self._unexpected, request)
                return NOT_DONE_YET
            return self._deliver(request, app, streamId, what, details, None)
        now = self.clock.seconds()
        session = self._sessionOf(request, app, streamId, now)
        if session is not None:
            self.sessions.seen(session)
            return self._deliver(request, app, streamId, what, details, session)
        if what == "resource":
            # A segment name without a session: never admitted by a token.
            self.access.refuse(AccessRequest(app, streamId, PLAY, protocol, peer),
                               Outcome.MISSING)
            return _fail(request, 403, self._refusal(kind, streamId))
        asked = AccessRequest(app, streamId, PLAY, protocol, peer, token,
                              subscriberId=self._arg(request, b"subscriberId"),
                              subscriberCode=self._arg(request, b"subscriberCode"),
                              params=_otherParams(request))
        opener = _opener(asked)
        if opener is not None:
            session = self.sessions.continued(opener, peer, app, streamId, protocol)
            if session is not None:
                return self._deliver(request, app, streamId, what, details, session)
        d = self._admit(request, asked)
        d.addCallback(lambda s: self._deliverLater(request, app, streamId, what, details, s))
        d.addErrback(self._refused, request, kind, streamId, protocol)
        d.addErrback(self._unexpected, request)
        return NOT_DONE_YET

    def _check(self, app: str, streamId: str, what: str, peer: str, token: Optional[str]
               ) -> tuple[str, Optional[Outcome]]:
        """
        The access service's checks that keep a token, for every request
        (a session's too: the switches apply to it): the protocol the
        request belongs to, and the refusal's outcome or None.

        Init segments and segments belong to HLS or DASH: HLS when its
        switch is on, else DASH.  That a live stream is not live is no
        refusal here: a session plays its stream to the end (the packager
        outlives the publication), a request without a session is answered
        by the packager, and an admission is refused by the access service.
        """
        protocol = _PROTOCOLS.get(what, "hls")
        outcome = self.access.check(self._checked(app, streamId, protocol))
        if outcome is Outcome.DISABLED and what == "resource":
            protocol = "dash"
            outcome = self.access.check(self._checked(app, streamId, protocol))
        if outcome is Outcome.NOT_LIVE and protocol != "vod":
            return protocol, None
        return protocol, outcome

    def _offloaded(self, request: Any, app: str, streamId: str,
                   details: tuple[Any, ...]) -> bool:
        """
        Whether a segment request carries a valid offload link for it (the
        edge fetching what it does not hold yet, with the link it checked).
        """
        assert self.offload is not None
        md5 = self._arg(request, b"md5")
        if md5 is None:
            return False
        kind, name = details
        return self.offload.check(OffloadLinks.base(app, streamId) + kind + "/" + name, md5,
                                  self._arg(request, b"expires"), self._arg(request, b"scope"),
                                  self.clock.seconds())

    def _peer(self, request: Any) -> str:
        return getattr(request.getClientAddress(), "host", "") or ""

    def _sessionOf(self, request: Any, app: str, streamId: str, now: float) -> Optional[Session]:
        credential = self._arg(request, b"tgs")
        if credential:
            try:
                return self.signer.check(credential, app, streamId, now)
            except InvalidCredential:
                pass
        # the cookie (its name is a hash) only when the URL carries none
        credential = _cookie(request, cookie_name(app, streamId))
        if credential:
            try:
                return self.signer.check(credential, app, streamId, now)
            except InvalidCredential:
                pass
        return None

    def _checked(self, app: str, streamId: str, protocol: str) -> AccessRequest:
        """
        The request the checks are asked about (they depend on neither the
        peer nor the token): made once per stream and protocol, not once per
        segment request.  Bounded: cleared whole when full.
        """
        key = (app, streamId, protocol)
        request = self._checkRequests.get(key)
        if request is None:
            if len(self._checkRequests) >= self.maxCheckRequests:
                self._checkRequests.clear()
            request = self._checkRequests[key] = AccessRequest(app, streamId, PLAY, protocol)
        return request

    async def _admitAsync(self, request: Any, asked: AccessRequest) -> Session:
        peer = asked.peer
        opener = _opener(asked)
        if opener is None:
            return await self._login(asked, None)
        key = (opener, peer)
        waiters = self._pending.get(key)
        if waiters is not None:
            # the same token's redemption from this address is in flight (mpv
            # opens a URL twice at once): wait for it, then continue its
            # session if it opened one for this stream and format
            if len(waiters) < self.maxWaiters:
                waiter: Deferred[None] = Deferred()
                waiters.append(waiter)
                await waiter
                session = self.sessions.continued(key[0], peer, asked.app, asked.streamId,
                                                  asked.protocol)
                if session is not None:
                    return session
            return await self._login(asked, None)
        if len(self._pending) >= self.maxPending:
            return await self._login(asked, key[0])
        self._pending[key] = []
        try:
            return await self._login(asked, key[0])
        finally:
            for waiter in self._pending.pop(key, []):
                waiter.callback(None)

    async def _login(self, asked: AccessRequest, tokenDigest: Optional[str]) -> Session:
        """
        Admit through the access service and open a session (indexed by the
        token's digest, so that the token may continue it from the same
        address).
        """
        mind = self.sessions.mind(asked.protocol, asked.peer, tokenDigest)
        viewing = await self.access.play(asked, mind)
        session = self.signer.new(asked.app, asked.streamId, asked.protocol,
                                  self.clock.seconds())
        self.sessions.open(mind, viewing.grant, session)
        return session

    def _admit(self, request: Any, asked: AccessRequest) -> "Deferred[Session]":
        return Deferred.fromCoroutine(self._admitAsync(request, asked))

    def _refusal(self, kind: str, streamId: str) -> str:
        if kind == "jwt":
            return "Invalid JWT Token"
        return "Invalid Token for streamId:" + streamId

    def _refused(self, failure: Any, request: Any, kind: str, streamId: str,
                 protocol: str) -> None:
        failure.trap(Refused)
        outcome = failure.value.outcome
        if outcome is Outcome.NOT_LIVE:
            body = _fail(request, 404, "Stream is not live: " + streamId)
        elif outcome is Outcome.UNAVAILABLE:
            body = _fail(request, 503, "Token store is unavailable, try again later")
        elif outcome is Outcome.DISABLED:
            # the switch went off while the request waited
            body = _fail(request, *_checkRefusal(outcome, protocol))
        elif outcome in _POLICY_REFUSALS:
            body = _fail(request, *_POLICY_REFUSALS[outcome])
        else:
            body = _fail(request, 403, self._refusal(kind, streamId))
        _finish(request, body)

    def _unexpected(self, failure: Any, request: Any) -> None:
        self._log.failure("playback request failed", failure)
        _finish(request, _fail(request, 500, "Internal error"))

    # --- delivery ------------------------------------------------------------------------

    def _deliverLater(self, request: Any, app: str, streamId: str, what: str,
                      details: tuple[Any, ...], session: Optional[Session],
                      waited: bool = False) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        result = self._deliver(request, app, streamId, what, details, session, waited)
        if result is not NOT_DONE_YET:
            _finish(request, result)

    def _query(self, request: Any, app: str, streamId: str, session: Optional[Session]) -> str:
        """
        The query string to write into served URIs: a fresh credential, and
        a cookie carrying it too.
        """
        if session is None:
            return ""
        credential = self.signer.issue(session, self.clock.seconds())
        request.addCookie(cookie_name(app, streamId).encode("ascii"), credential.encode("ascii"),
                          path="/{}/streams/".format(app).encode("utf-8"), httpOnly=True,
                          max_age=str(int(self.signer.vodIdle if session.kind == "vod"
                                          else self.signer.idle)).encode("ascii"))
        return "tgs=" + credential

    def _deliver(self, request: Any, app: str, streamId: str, what: str,
                 details: tuple[Any, ...], session: Optional[Session],
                 waited: bool = False) -> Any:
        if what == "vod":
            return self._vod(request, app, streamId, session)
        packager = self.outputs.packager(app, streamId)
        if packager is None:
            if self.remote is not None:
                return self._remoteDeliver(request, app, streamId, what, details, session)
            return _fail(request, 404, "Stream is not live: " + streamId)
        if what in ("hls", "dash", "media") and not waited:
            # a media playlist waits for its own track's first segment: the
            # multivariant playlist lists audio once the first video segment
            # is made, which may be before the first audio one
            first = self._firstSegment(packager, details[0] if what == "media" else None)
            if first is not None:
                # the stream is starting (just published, or just pulled
                # from its origin): answer once its first segment is made
                timeout = self.clock.callLater(
                    min(2 * packager.segmentTarget + 1, MAX_STARTING_WAIT), first.cancel)

                def ready(_: object) -> None:
                    if timeout.active():
                        timeout.cancel()
                    self._deliverLater(request, app, streamId, what, details, session, True)

                first.addBoth(ready).addErrback(self._unexpected, request)
                return NOT_DONE_YET
        if packager.ended and what in ("hls", "media", "dash"):
            refused = self._endedDocument(request, app, streamId, what, details, session)
            if refused is not None:
                return refused
        if what == "hls":
            text = packager.hlsMultivariant(self._query(request, app, streamId, session))
            return self._text(request, text, MPEGURL)
        if what == "media":
            return self._media(request, packager, details[0], app, streamId, session)
        if what == "dash":
            query = self._query(request, app, streamId, session)
            text = packager.dashMpd(query, self._location(request, app, streamId, query))
            if text is not None and self.offload is not None:
                text = self.offload.signMpd(text, app, streamId, self.clock.seconds())
            return self._text(request, text, DASHXML)
        if what == "resource":
            kind, name = details
            data = packager.resource(kind, name)
            if data is not None:
                return self._bytes(request, data)
            edge = packager.edge(kind)
            msn = int(name.split(".", 1)[0]) if name[0].isdigit() else None
            if msn is not None and name[:-4].isdigit() and not packager.ended \
                    and edge is not None and edge[0] <= msn <= edge[0] + 1:
                return self._streamSegment(request, packager, kind, msn)
            # Futile: anything missing once the stream ended, or far ahead of
            # the live edge.  Not a part or segment about to be made (LL-HLS
            # preload hints ask for those before they exist).
            futile = packager.ended or (msn is not None and edge is not None
                                        and msn > edge[0] + 2)
            if futile and not self._spend(request, app, streamId, session):
                return self._flood(request, app, streamId, session, what)
            if msn is not None and packager.ended and (edge is None or msn > edge[0]):
                # Past the end of the presentation: nothing, cheaply.  A 204
                # rather than a 404, because ffmpeg's DASH reader (mpv too)
                # keeps treating a stream it opened live as live after the
                # MPD turned static: it skips every segment that fails to
                # open and asks for the next one, forever, while an empty
                # segment ends its reading of the track.
                request.setResponseCode(204)
                request.setHeader(b"cache-control", b"no-store")
                return b""
            return self._bytes(request, None)
        return _fail(request, 404, "Not found")

    def _endedDocument(self, request: Any, app: str, streamId: str, what: str,
                       details: tuple[Any, ...], session: Optional[Session]
                       ) -> Optional[bytes]:
        """
        A document of an ended stream is served L{ENDED_DOCUMENTS} times
        per session: None while it may be, else the refusal (410, or the
        flood's).
        """
        document = "{}:{}:{}".format(self._futileKey(request, app, streamId, session),
                                     what, details[0] if details else "")
        if self.endedDocuments.spend(document):
            return None
        if not self._spend(request, app, streamId, session):
            return self._flood(request, app, streamId, session, what)
        return _fail(request, 410, "Stream ended: " + streamId)

    def _location(self, request: Any, app: str, streamId: str, query: str) -> Optional[str]:
        """
        The MPD's C{Location}: the MPD's URL with the session's query (None
        without a session).
        """
        if not query:
            return None
        return "{}://{}/{}/streams/{}/{}.mpd?{}".format(
            "https" if request.isSecure() else "http",
            (request.getHeader(b"host") or b"localhost").decode("latin-1"),
            quote(app), quote(streamId), quote(streamId), query)

    def _remoteDeliver(self, request: Any, app: str, streamId: str, what: str,
                       details: tuple[Any, ...], session: Optional[Session]) -> Any:
        """
        Serve a stream this node does not package from its origin's
        packager (L{IRemoteMedia}): the same documents and segments, the
        documents decorated for this viewer as a local packager's would be.
        """
        from tokengate.cluster.media import decorateHls, decorateMpd, documentEnded, objectName

        assert self.remote is not None
        name = objectName(what, details)
        if name is None:
            return _fail(request, 404, "Not found")
        msn = part = None
        if what == "media":
            msn = _int(self._arg(request, b"_HLS_msn"))
            part = _int(self._arg(request, b"_HLS_part")) if msn is not None else None

        def answered(answer: Any) -> None:
            if request.finished or getattr(request, "_disconnected", False):
                return
            if answer.code == 503:
                _finish(request, _fail(request, 503, "Busy, try again later"))
            elif what == "resource":
                if answer.code == 200:
                    _finish(request, self._bytes(request, answer.body))
                elif answer.code == 204:
                    request.setResponseCode(204)
                    request.setHeader(b"cache-control", b"no-store")
                    request.finish()
                elif not self._spend(request, app, streamId, session):
                    _finish(request, self._flood(request, app, streamId, session, what))
                else:
                    _finish(request, self._bytes(request, None))
            elif answer.code != 200:
                _finish(request, _fail(request, 404, "Stream is not live: " + streamId))
            else:
                text = answer.body.decode("utf-8", "replace")
                if documentEnded(what, text):
                    refused = self._endedDocument(request, app, streamId, what, details,
                                                  session)
                    if refused is not None:
                        _finish(request, refused)
                        return
                query = self._query(request, app, streamId, session)
                now = self.clock.seconds()
                if what == "dash":
                    text = decorateMpd(text, query, self._location(request, app, streamId,
                                                                   query))
                    if self.offload is not None:
                        text = self.offload.signMpd(text, app, streamId, now)
                    _finish(request, self._text(request, text, DASHXML))
                else:
                    text = decorateHls(text, query)
                    if self.offload is not None:
                        text = self.offload.signHls(text, app, streamId, now)
                    _finish(request, self._text(request, text, MPEGURL))

        d = self.remote.fetch(app, streamId, name, msn, part)
        d.addCallback(answered)
        d.addErrback(self._unexpected, request)
        return NOT_DONE_YET

    def _firstSegment(self, packager: Any,
                      kind: Optional[str] = None) -> "Optional[Deferred[bool]]":
        return firstSegment(packager, kind)

    def _futileKey(self, request: Any, app: str, streamId: str,
                   session: Optional[Session]) -> str:
        if session is not None:
            return "s:" + session.sessionId
        return "a:{}/{}/{}".format(self._peer(request), app, streamId)

    def _spend(self, request: Any, app: str, streamId: str, session: Optional[Session]) -> bool:
        """
        Count a futile request (a segment not held, a manifest of an ended
        stream); False once the session spent its allowance.
        """
        return self.futile.spend(self._futileKey(request, app, streamId, session))

    def _flood(self, request: Any, app: str, streamId: str, session: Optional[Session],
               what: str) -> bytes:
        """
        The session made too many futile requests: end it (its credentials
        stop working), count it, answer 410.  Without play tokens there is no
        session to end: the address gets 410 for futile requests until its
        window passes.
        """
        protocol = session.kind if session is not None else (
            "dash" if what == "dash" else "hls" if what in ("hls", "media") else "http")
        self.metrics.playback_floods.labels(protocol).inc()
        if session is not None:
            self.futile.forget(self._futileKey(request, app, streamId, session))
            self.sessions.end(session, "flood")
            self._log.info(
                "ended {protocol} session of {app}/{streamId} from {peer}: too many requests"
                " for segments that do not exist", protocol=protocol, app=app,
                streamId=streamId, peer=self._peer(request))
        return _fail(request, 410, "Too many requests for segments that do not exist;"
                                   " the viewing session ended")

    def _streamSegment(self, request: Any, packager: Any, kind: str, msn: int) -> Any:
        """
        Serve the segment in progress (or the next one) as its parts are
        made, with chunked transfer: what DASH low-latency players expect,
        and what lets a client that asks for a segment slightly early (as
        ffmpeg's DASH reader does) get it instead of a 404.  The bytes are
        exactly those of the complete segment: styp, then the parts.
        """
        request.setHeader(b"content-type", MP4)
        request.setHeader(b"cache-control", b"no-cache")
        timeout = self.blockTimeoutFactor * getattr(packager, "segmentTarget", 2.0)
        state = {"wait": None}
        gone = request.notifyFinish()

        def stop(_: object) -> None:
            if state["wait"] is not None:
                state["wait"].cancel()

        gone.addErrback(stop)

        async def run() -> None:
            from tokengate.media.fmp4 import STYP as _STYP

            wrote = False
            index = 0
            while not request.finished and not getattr(request, "_disconnected", False):
                data = packager.part(kind, msn, index)
                if data is not None:
                    if not wrote:
                        request.write(_STYP)
                        wrote = True
                    request.write(data)
                    index += 1
                    continue
                if packager.segment(kind, msn) is not None:
                    break  # complete, and every part written
                if packager.ended:
                    break
                wait = packager.wait(kind, msn, index)
                wait.addTimeout(timeout, self.clock)
                state["wait"] = wait
                try:
                    await wait
                except Exception:
                    break
                finally:
                    state["wait"] = None
            if request.finished or getattr(request, "_disconnected", False):
                return
            if not wrote:
                _finish(request, _fail(request, 404, "No such segment"))
            else:
                request.finish()

        d = Deferred.fromCoroutine(run())
        d.addErrback(self._unexpected, request)
        return NOT_DONE_YET

    def _text(self, request: Any, text: Optional[str], ctype: bytes) -> bytes:
        if text is None:
            return _fail(request, 404, "Stream is starting; try again shortly")
        request.setHeader(b"content-type", ctype)
        request.setHeader(b"cache-control", b"no-cache, no-store")
        return _body(request, text.encode("utf-8"))

    def _bytes(self, request: Any, data: Optional[bytes]) -> bytes:
        if data is None:
            return _fail(request, 404, "No such segment")
        request.setHeader(b"content-type", MP4)
        # A URI names the same bytes while the packager lives (it is dropped
        # a minute after the stream ends, and numbering restarts): cacheable
        # briefly.
        request.setHeader(b"cache-control", b"max-age=30")
        return _body(request, data)

    def _media(self, request: Any, packager: Any, kind: str, app: str, streamId: str,
               session: Optional[Session]) -> Any:
        msn = _int(self._arg(request, b"_HLS_msn"))
        part = _int(self._arg(request, b"_HLS_part"))

        def render() -> bytes:
            text = packager.hlsMedia(kind, self._query(request, app, streamId, session))
            if text is not None and self.offload is not None:
                text = self.offload.signHls(text, app, streamId, self.clock.seconds())
            return self._text(request, text, MPEGURL)

        if msn is None:
            return render()
        wait = packager.wait(kind, msn, part)
        timeout = self.blockTimeoutFactor * getattr(packager, "segmentTarget", 2.0)
        wait.addTimeout(timeout, self.clock)
        finished = request.notifyFinish()
        finished.addErrback(lambda _: wait.cancel())

        def ready(_: object) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                _finish(request, render())

        def failed(f: Any) -> None:
            if f.check(CancelledError) and (request.finished
                                            or getattr(request, "_disconnected", False)):
                return
            if not request.finished and not getattr(request, "_disconnected", False):
                _finish(request, render())

        wait.addCallbacks(ready, failed)
        return NOT_DONE_YET

    def _vod(self, request: Any, app: str, streamId: str, session: Optional[Session]) -> Any:
        path = self.outputs.recordingPath(app, streamId)
        if session is not None and self._arg(request, b"tgs") is None:
            # Redirect to a URL carrying the session, so Range requests do.
            query = self._query(request, app, streamId, session)
            request.setResponseCode(302)
            request.setHeader(b"location", "{}.mp4?{}".format(quote(streamId), query).encode("ascii"))
            request.setHeader(b"cache-control", b"no-store")
            return b""
        if path is None:
            return _fail(request, 404, "No recording of this stream")
        f = RecordingFile(path, defaultType="video/mp4")
        f.type, f.encoding = "video/mp4", None
        return f.render(request)


#: the protocol of each kind of request (segments: see L{PlaybackGate._check})
_PROTOCOLS = {"hls": "hls", "media": "hls", "dash": "dash", "vod": "vod"}


#: the answers to the security policies' refusals (Ant Media's strings where
#: it has them: C{filter/SubscriberBlockFilter.java},
#: C{filter/TokenFilterManager.java}); a webhook that did not answer is a
#: 503, the others 403
_POLICY_REFUSALS: dict[Outcome, tuple[int, str]] = {
    Outcome.BLOCKED: (401, "Subscriber is blocked"),
    Outcome.BAD_CODE: (403, "Time Based subscriber id or code is invalid"),
    Outcome.CODE_IN_USE: (403, "Time Based subscriber id or code is invalid"),
    Outcome.UNREGISTERED: (403, "Stream is not registered"),
    Outcome.ADDRESS: (403, "Address is not allowed"),
    Outcome.WEBHOOK_REFUSED: (403, "Not authorized"),
    Outcome.WEBHOOK_UNAVAILABLE: (503, "Authorization is unavailable, try again later"),
}

def _opener(asked: AccessRequest) -> Optional[str]:
    """
    What may continue the session C{asked} opens, from its address (see
    L{HTTPSessions.continued}): the digest of its token, or without one, of
    its subscriber id and code; None when it has neither (or an over-long
    token: refused anyway).
    """
    token = asked.token
    if token:
        return digest(token) if len(token) <= MAX_TOKEN_LENGTH else None
    if asked.subscriberId and asked.subscriberCode:
        return digest("\0subscriber\0{}\0{}".format(asked.subscriberId, asked.subscriberCode))
    return None


#: query parameters with a field of their own, not among the request's
#: other parameters (L{AccessRequest.params})
_OWN_PARAMS = frozenset({"token", "subscriberId", "subscriberCode", "tgs"})


def _otherParams(request: Any) -> tuple[tuple[str, str], ...]:
    """
    The request's query parameters but the token, the subscriber's and the
    session credential, in the order sent (the access service bounds them).
    """
    uri: bytes = request.uri
    _, _, query = uri.partition(b"?")
    if not query:
        return ()
    pairs = parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True)
    return tuple((k, v) for k, v in pairs if k not in _OWN_PARAMS)


def _checkRefusal(outcome: Outcome, protocol: str) -> tuple[int, str]:
    """
    The answer (status, message) to a request the access service's checks
    refused: Ant Media's, as before the access service decided them.
    """
    if outcome is Outcome.DISABLED:
        if protocol == "dash":
            return 404, "DASH is not enabled for this application"
        return 404, "HLS is not enabled for this application"
    if outcome is Outcome.NOT_LIVE and protocol == "vod":
        return 404, "No recording of this stream"
    # an invalid stream id, an unknown application, anything else
    return 404, "Not found"


def _int(value: Optional[str]) -> Optional[int]:
    """
    A sequence number from a URL (ASCII digits, at most nine), else L{None}:
    C{"\u00b2".isdigit()} holds, but C{int("\u00b2")} raises.
    """
    try:
        return optionalDecimalText(value, "sequence number", 0, 999_999_999)
    except JSONError:
        return None


def _body(request: Any, data: bytes) -> bytes:
    """
    C{data} as the answer; for HEAD its length only (twisted.web would
    otherwise log a warning for every HEAD answered with a body).
    """
    if request.method == b"HEAD":
        request.setHeader(b"content-length", b"%d" % (len(data),))
        return b""
    return data


def _cookie(request: Any, name: str) -> Optional[str]:
    value = request.getCookie(name.encode("ascii"))
    return value.decode("ascii", "replace") if value else None


def _finish(request: Any, body: bytes) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    if request.method != b"HEAD":
        request.write(body)
    else:
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    request.finish()


class TimeResource(Resource):
    """
    C{/time}: the server's clock for DASH players (UTCTiming http-iso).
    """

    isLeaf = True

    def __init__(self, clock: Any) -> None:
        super().__init__()
        self._clock = clock

    def render_GET(self, request: Any) -> bytes:
        _cors(request)
        now = self._clock.seconds()
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"cache-control", b"no-store")
        return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                + ".{:03d}Z".format(int(now * 1000) % 1000)).encode("ascii")
