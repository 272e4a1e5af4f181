# -*- test-case-name: tests.test_webrtc_whip -*-
"""
WHIP ingest (RFC 9725) and WHEP playback over HTTP, at
C{/{App}/whip/{streamId}} and C{/{App}/whep/{streamId}}: a second adapter,
beside the WebSocket signalling (L{tokengate.webrtc.signalling}), over the
same access service, media engine and hub.

C{POST} with C{Content-Type: application/sdp} and the token as
C{Authorization: Bearer T} (or C{?token=T}; C{subscriberId} and
C{subscriberCode} in the query for TOTP subscribers, as Ant Media Server
takes them) is one publish (C{whip}) or play (C{whep}) through the access
service (L{tokengate.access.service}); once admitted, the engine answers the
offer (a L{tokengate.webrtc.publish.PublisherPeer} feeding the hub, or a
L{tokengate.webrtc.play.PlayerPeer} playing the stream whatever its source)
and the answer is C{201 Created} with C{Location} (the session's resource,
C{/{App}/whip/{streamId}/{sessionId}}, 192 random bits), C{ETag},
C{Accept-Patch: application/trickle-ice-sdpfrag} and a C{Link: <uri>;
rel="ice-server"} per STUN/TURN URI (TURN with fresh time-limited
credentials).  On the session's resource: C{PATCH} adds trickled
candidates (C{204}; C{If-Match} required: C{428} without it, C{412} when it
names another entity tag; a candidate the session cannot use is discarded;
ICE restarts are not supported: C{422}), C{DELETE} ends the
session (C{200}).  C{OPTIONS} and CORS headers on every answer let browser
clients use it.

Refusals carry their reason in a C{text/plain} body: C{401} with
C{WWW-Authenticate: Bearer} for a token refusal (missing, unknown, spent,
expired, another stream's or type's), C{403} for a security policy's
(TOTP, webhook, datastore, address, blocked) or C{webRTCEnabled} off,
C{404} for an unknown application (or session, or a stream that is not
live for WHEP), C{409} when the stream is already published, C{415} for
another content type, C{400} for an offer that cannot be answered, C{413}
for a body over L{MAX_OFFER}, C{429} for an address over its sessions or a
throttled one, C{503} when the store, the webhook or the media engine is
unavailable.  Every decision but the offer's is the access service's, before
the token is redeemed where it keeps it; the offer's shape is checked
before the token too (L{tokengate.webrtc.whipwire.checkOffer}).

A session ends once, whichever comes first: C{DELETE}, the peer connection
failing or closing, ICE/DTLS not connected within L{CONNECT_TIMEOUT}, the
stream ending (WHEP), or the server kicking its grant (revocation, kick,
application deletion, shutdown), which closes the peer connection.
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import parse_qsl, quote

from twisted.internet.defer import Deferred, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from tokengate.access.names import isValidStreamId
from tokengate.access.service import AccessRequest, IAccess, Publication, Refused, Viewing
from tokengate.access.sessions import IKickable
from tokengate.logsafe import Logger
from tokengate.media.hub import LiveStream, StreamInUse
from tokengate.metrics import Metrics
from tokengate.tokens import PLAY, PUBLISH, Outcome
from tokengate.webrtc.ice import IceServers
from tokengate.webrtc.whipwire import (
    MAX_FRAGMENT,
    MAX_OFFER,
    OfferSummary,
    WhipError,
    bearerToken,
    checkOffer,
    iceServerLinks,
    ifMatch,
    isMediaType,
    isSessionId,
    newETag,
    newSessionId,
    parseSdpFrag,
)

__all__ = ["WhipEndpoints", "WhipSession", "ANSWER_TIMEOUT", "CONNECT_TIMEOUT",
           "MAX_SESSION_CANDIDATES", "refusalStatus"]

#: seconds the engine has to answer an offer (aiortc gathers every
#: candidate first: a STUN server that does not answer costs some seconds)
ANSWER_TIMEOUT = 15.0
#: seconds a session has, after its 201, to connect (ICE and DTLS)
CONNECT_TIMEOUT = 30.0
#: candidates a session may be sent by PATCH, in all
MAX_SESSION_CANDIDATES = 256

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"

#: what the endpoint and the session resource allow
_ENDPOINT_METHODS = b"OPTIONS, POST"
_SESSION_METHODS = b"OPTIONS, PATCH, DELETE"

#: the answer to each refusal: status and reason
_TOKEN_REFUSALS = frozenset({Outcome.MISSING, Outcome.UNKNOWN, Outcome.EXPIRED,
                             Outcome.WRONG_STREAM, Outcome.WRONG_TYPE, Outcome.WRONG_ROOM,
                             Outcome.INVALID})
_STATUS = {
    Outcome.THROTTLED: (429, "Too many refused attempts from this address; try again later"),
    Outcome.UNAVAILABLE: (503, "Token store is unavailable, try again later"),
    Outcome.NO_APP: (404, "No such application"),
    Outcome.IN_USE: (409, "The stream is already being published"),
    Outcome.NOT_LIVE: (404, "The stream is not live"),
    Outcome.DISABLED: (403, "WebRTC is not enabled for this application"),
    Outcome.BLOCKED: (403, "Subscriber is blocked"),
    Outcome.BAD_CODE: (403, "Time Based subscriber id or code is invalid"),
    Outcome.CODE_IN_USE: (403, "Time Based subscriber id or code is invalid"),
    Outcome.UNREGISTERED: (403, "Stream is not registered"),
    Outcome.ADDRESS: (403, "Address is not allowed"),
    Outcome.WEBHOOK_REFUSED: (403, "Not authorized"),
    Outcome.WEBHOOK_UNAVAILABLE: (503, "Authorization is unavailable, try again later"),
}


def refusalStatus(outcome: Outcome) -> tuple[int, str]:
    """
    The HTTP status and reason answering a publish or play refused with
    C{outcome}: C{401} for every token refusal (and a malformed request the
    access service calls C{invalid}), otherwise as in the table of
    C{docs/development.md}.
    """
    if outcome in _TOKEN_REFUSALS:
        return 401, "Invalid or missing token"
    return _STATUS.get(outcome, (403, "Not authorized"))


def _cors(request: Any, methods: bytes) -> None:
    request.setHeader(b"access-control-allow-origin", b"*")
    request.setHeader(b"access-control-allow-methods", methods)
    request.setHeader(b"access-control-allow-headers",
                      b"authorization, content-type, if-match")
    request.setHeader(b"access-control-expose-headers",
                      b"location, etag, link, accept-patch, www-authenticate")
    request.setHeader(b"access-control-max-age", b"600")


def _header(request: Any, name: bytes) -> Optional[str]:
    value = request.getHeader(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


@implementer(IKickable)
class WhipSession:
    """
    One WHIP publish or WHEP play: the access service's I{mind}, then the
    holder of its L{Publication} or L{Viewing} and its peer connection (the
    engine's L{tokengate.webrtc.peer.PeerEvents}).

    @ivar sessionId: the last segment of its resource's path.
    @ivar etag: the entity tag of its ICE session.
    @ivar offer: what the offer's check found (its ICE credentials).
    """

    def __init__(self, endpoints: "WhipEndpoints", sessionId: str, kind: str, app: str,
                 streamId: str, peerHost: str, offer: OfferSummary) -> None:
        self._endpoints = endpoints
        self.sessionId = sessionId
        self.kind = kind
        self.protocolName = kind
        self.app = app
        self.streamId = streamId
        self.peerHost = peerHost
        self.offer = offer
        self.action = PUBLISH if kind == "whip" else PLAY
        self.etag = newETag()
        self.admission: Optional[Publication | Viewing] = None
        self.stream: Optional[LiveStream] = None
        self.peer: Any = None
        #: admitting, negotiating, connected, closed
        self.state = "admitting"
        self.candidates = 0
        self._timer: Any = None
        self._closing: Optional[Deferred[None]] = None

    @property
    def path(self) -> str:
        """
        The session's resource (the C{Location} of its 201).
        """
        return "/{}/{}/{}/{}".format(quote(self.app, safe=""), self.kind,
                                     quote(self.streamId, safe=""), self.sessionId)

    # --- IKickable ---------------------------------------------------------------

    def kick(self, reason: str) -> None:
        self._endpoints.end(self, reason)

    # --- PeerEvents ----------------------------------------------------------------

    def connected(self) -> None:
        if self.state == "negotiating":
            self.state = "connected"
            self._cancelTimer()

    def ended(self, why: str = "") -> None:
        self._endpoints.end(self, why or "peer connection ended")

    # --- timers --------------------------------------------------------------------

    def armTimer(self, clock: IReactorTime) -> None:
        self._cancelTimer()
        self._timer = clock.callLater(CONNECT_TIMEOUT, self._timedOut)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self) -> None:
        self._timer = None
        if self.state == "negotiating":
            self._endpoints.end(self, "not connected in time")

    def close(self) -> "Deferred[None]":
        """
        Release what the session holds (once); fires when its peer
        connection is closed.
        """
        if self._closing is not None:
            return self._closing
        self.state = "closed"
        self._cancelTimer()
        peer, self.peer = self.peer, None
        self.stream = None
        admission, self.admission = self.admission, None
        if admission is not None:
            admission.end()
        d: Deferred[None]
        if peer is not None:
            d = maybeDeferred(peer.close)
            d.addErrback(lambda f: Logger().failure("closing a peer connection failed", f))
        else:
            d = Deferred()
            d.callback(None)
        self._closing = d
        return d


class WhipEndpoints:
    """
    The WHIP and WHEP endpoints of every application, and their sessions.

    @ivar sessions: the live sessions by id.
    """

    _log = Logger()

    def __init__(self, access: IAccess, clock: IReactorTime, metrics: Metrics, engine: Any,
                 ice: IceServers, perAddress: int = 256) -> None:
        """
        @param access: the one door of publish and play.
        @param clock: the deadlines' clock.
        @param metrics: where sessions and what the adapter refuses are
            counted.
        @param engine: the WebRTC media engine (C{publisher}, C{player},
            C{available}, C{reason}), or None.
        @param ice: the STUN/TURN servers told to clients (C{Link}).
        @param perAddress: sessions (WHIP and WHEP) one address may hold at
            once (C{maxConnectionsPerAddress}); 0 for no limit.
        """
        self.access = access
        self.clock = clock
        self.metrics = metrics
        self.engine = engine
        self.ice = ice
        self.perAddress = perAddress
        self.sessions: dict[str, WhipSession] = {}
        self._byAddress: dict[str, int] = {}
        metrics.callbackGauge("tokengate_whip_sessions", "Open WHIP sessions",
                              lambda: self.count("whip"))
        metrics.callbackGauge("tokengate_whep_sessions", "Open WHEP sessions",
                              lambda: self.count("whep"))

    def count(self, kind: str) -> int:
        """
        The open sessions of C{kind} (C{whip} or C{whep}).
        """
        return sum(1 for s in self.sessions.values() if s.kind == kind)

    def child(self, app: str, request: Any) -> Optional[IResource]:
        """
        The resource of C{/{app}/whip/...} or C{/{app}/whep/...}, or None
        for another path.  C{app} need not be known: the access service
        answers an unknown one (404, counted).
        """
        postpath = request.postpath
        if not postpath or postpath[0] not in (b"whip", b"whep"):
            return None
        kind = postpath[0].decode("ascii")
        rest = [p for p in postpath[1:]]
        if rest and rest[-1] == b"":
            rest.pop()
        del postpath[:]
        try:
            parts = [p.decode("utf-8") for p in rest]
        except UnicodeDecodeError:
            parts = ["\ufffd"]
        return _WhipResource(self, app, kind, parts)

    # --- sessions ------------------------------------------------------------------

    def _add(self, session: WhipSession) -> None:
        self.sessions[session.sessionId] = session
        self._byAddress[session.peerHost] = self._byAddress.get(session.peerHost, 0) + 1

    def _remove(self, session: WhipSession) -> bool:
        if self.sessions.get(session.sessionId) is not session:
            return False
        del self.sessions[session.sessionId]
        left = self._byAddress.get(session.peerHost, 0) - 1
        if left > 0:
            self._byAddress[session.peerHost] = left
        else:
            self._byAddress.pop(session.peerHost, None)
        return True

    def full(self, peerHost: str) -> bool:
        """
        Whether C{peerHost} holds as many sessions as it may.
        """
        return bool(self.perAddress) and self._byAddress.get(peerHost, 0) >= self.perAddress

    def end(self, session: WhipSession, reason: str) -> "Deferred[None]":
        """
        End C{session} (once, whoever asks): its peer connection closes,
        its publication or viewing ends.
        """
        if self._remove(session):
            self._log.info("ending {kind} session of {peer} ({app}/{streamId}): {reason}",
                           kind=session.kind.upper(), peer=session.peerHost,
                           app=session.app, streamId=session.streamId, reason=reason)
        return session.close()

    def find(self, app: str, kind: str, streamId: str, sessionId: str) -> Optional[WhipSession]:
        """
        The live session of that resource, or None.
        """
        if not isSessionId(sessionId):
            return None
        session = self.sessions.get(sessionId)
        if session is None or (session.app, session.kind, session.streamId) != (
                app, kind, streamId):
            return None
        return session

    def refused(self, kind: str, action: str, reason: str) -> None:
        """
        Count a request refused by the adapter, not the access service.
        """
        self.metrics.refusals.labels(kind, action, reason).inc()


class _WhipResource(Resource):
    """
    One request's resource: the endpoint (C{parts} = [streamId]) or a
    session (C{parts} = [streamId, sessionId]).
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, endpoints: WhipEndpoints, app: str, kind: str, parts: list[str]) -> None:
        super().__init__()
        self._e = endpoints
        self._app = app
        self._kind = kind
        self._parts = parts
        self._action = PUBLISH if kind == "whip" else PLAY

    # --- answers -------------------------------------------------------------------

    def _methods(self) -> bytes:
        return _SESSION_METHODS if len(self._parts) == 2 else _ENDPOINT_METHODS

    def _fail(self, request: Any, code: int, reason: str) -> bytes:
        request.setResponseCode(code)
        _cors(request, self._methods())
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if code == 401:
            presented = request.getHeader(b"authorization") is not None or \
                b"token" in request.args
            request.setHeader(b"www-authenticate", b'Bearer realm="tokengate"' + (
                b', error="invalid_token"' if presented else b""))
        elif code == 405:
            request.setHeader(b"allow", self._methods())
        return (reason + "\n").encode("utf-8")

    def _finish(self, request: Any, body: bytes) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.write(body)
        request.finish()

    # --- dispatch --------------------------------------------------------------------

    def render(self, request: Any) -> Any:
        method = request.method
        if len(self._parts) not in (1, 2) or not self._parts[0]:
            return self._fail(request, 404, "Not found")
        if method == b"OPTIONS":
            return self._options(request)
        if len(self._parts) == 1:
            if method == b"POST":
                d = Deferred.fromCoroutine(self._post(request))
                d.addErrback(self._unexpected, request)
                return NOT_DONE_YET
            return self._fail(request, 405, "Method not allowed")
        session = self._e.find(self._app, self._kind, self._parts[0], self._parts[1])
        if method not in (b"PATCH", b"DELETE"):
            return self._fail(request, 405, "Method not allowed")
        if session is None:
            return self._fail(request, 404, "No such session")
        if method == b"DELETE":
            self._e.end(session, "deleted by the client")
            request.setResponseCode(200)
            _cors(request, self._methods())
            request.setHeader(b"cache-control", b"no-store")
            return b""
        d = Deferred.fromCoroutine(self._patch(request, session))
        d.addErrback(self._unexpected, request)
        return NOT_DONE_YET

    def _options(self, request: Any) -> bytes:
        request.setResponseCode(204)
        _cors(request, self._methods())
        request.setHeader(b"allow", self._methods())
        if len(self._parts) == 1:
            request.setHeader(b"accept-post", SDP.encode("ascii"))
        else:
            request.setHeader(b"accept-patch", SDPFRAG.encode("ascii"))
        return b""

    def _unexpected(self, failure: Any, request: Any) -> None:
        self._log.failure("{kind} request failed", failure, kind=self._kind.upper())
        self._finish(request, self._fail(request, 500, "Internal error"))

    # --- POST: a new session ----------------------------------------------------------

    def _accessRequest(self, request: Any, streamId: str, token: Optional[str]
                       ) -> AccessRequest:
        peer = getattr(request.getClientAddress(), "host", "") or ""
        _, _, query = request.uri.partition(b"?")
        pairs = parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True)
        subscriberId = subscriberCode = None
        others: list[tuple[str, str]] = []
        for name, value in pairs:
            if name == "subscriberId":
                subscriberId = subscriberId or value or None
            elif name == "subscriberCode":
                subscriberCode = subscriberCode or value or None
            elif name == "token":
                token = token or value or None
            else:
                others.append((name, value))
        return AccessRequest(self._app, streamId, self._action, self._kind, peer, token,
                             subscriberId=subscriberId, subscriberCode=subscriberCode,
                             params=others)

    async def _post(self, request: Any) -> None:
        streamId = self._parts[0]
        try:
            token = bearerToken(_header(request, b"authorization"))
            badAuth = None
        except WhipError as e:
            token, badAuth = None, str(e)
        asked = self._accessRequest(request, streamId, token)
        if badAuth is not None:
            self._e.access.refuse(asked, Outcome.INVALID)
            return self._finish(request, self._fail(request, 401, badAuth))
        if not isValidStreamId(streamId):
            self._e.access.refuse(asked, Outcome.INVALID)
            return self._finish(request, self._fail(request, 400, "Invalid stream id"))
        if not isMediaType(_header(request, b"content-type"), SDP):
            self._e.refused(self._kind, self._action, "content_type")
            return self._finish(request, self._fail(
                request, 415, "Content-Type must be " + SDP))
        body = request.content.read(MAX_OFFER + 1)
        if len(body) > MAX_OFFER:
            self._e.refused(self._kind, self._action, "offer")
            return self._finish(request, self._fail(request, 413, "The offer is too large"))
        try:
            offer = checkOffer(body.decode("utf-8"), self._action == PUBLISH)
        except (WhipError, UnicodeDecodeError) as e:
            self._e.refused(self._kind, self._action, "offer")
            reason = str(e) if isinstance(e, WhipError) else "the offer is not UTF-8"
            return self._finish(request, self._fail(request, 400, "Bad offer: " + reason))
        sdp = body.decode("utf-8")
        engine = self._e.engine
        if engine is None or not engine.available:
            self._e.refused(self._kind, self._action, "no_media")
            return self._finish(request, self._fail(
                request, 503, "WebRTC media is not available: " +
                str(getattr(engine, "reason", "") or "off")))
        if self._e.full(asked.peer):
            self._e.refused(self._kind, self._action, "too_many_sessions")
            return self._finish(request, self._fail(
                request, 429, "Too many sessions from this address"))
        session = WhipSession(self._e, newSessionId(), self._kind, self._app, streamId,
                              asked.peer, offer)
        self._e._add(session)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        try:
            if self._action == PUBLISH:
                admission: Publication | Viewing = await self._e.access.publish(asked, session)
            else:
                admission = await self._e.access.play(asked, session)
        except Refused as e:
            self._e._remove(session)
            session.close()
            code, reason = refusalStatus(e.outcome)
            return self._finish(request, self._fail(request, code, reason))
        except BaseException:
            self._e._remove(session)
            session.close()
            raise
        if session.state == "closed" or gone:
            # kicked, or the client left, while it was admitted: the
            # session has closed without this admission, end it here
            admission.end()
            self._e.end(session, "gone before the answer")
            return self._finish(request, self._fail(request, 409, "The session ended"))
        session.admission = admission
        session.state = "negotiating"
        try:
            answer = await self._answer(session, admission, sdp)
        except StreamInUse:
            self._e.end(session, "claim lost")
            return self._finish(request, self._fail(
                request, 409, "The stream is already being published"))
        except TimeoutError:
            self._e.end(session, "no answer in time")
            self._e.refused(self._kind, self._action, "answer_timeout")
            return self._finish(request, self._fail(
                request, 503, "The offer could not be answered in time"))
        except Exception as e:
            self._e.end(session, "offer not answered")
            definition = getattr(e, "definition", None)
            if definition is not None:
                # no transcoding slot free: not the client's fault
                self._e.refused(self._kind, self._action, definition)
                return self._finish(request, self._fail(
                    request, 503, "No transcoding capacity: " + definition))
            self._log.info("{kind} offer of {app}/{streamId} not answered: {error}",
                           kind=self._kind.upper(), app=self._app, streamId=streamId,
                           error=str(e)[:200])
            self._e.refused(self._kind, self._action, "offer")
            return self._finish(request, self._fail(
                request, 400, "The offer cannot be answered"))
        if session.state == "closed" or gone:
            self._e.end(session, "gone before the answer")
            return self._finish(request, self._fail(request, 409, "The session ended"))
        session.armTimer(self._e.clock)
        request.setResponseCode(201)
        _cors(request, _ENDPOINT_METHODS)
        request.setHeader(b"content-type", SDP.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"location", session.path.encode("utf-8"))
        request.setHeader(b"etag", session.etag.encode("ascii"))
        request.setHeader(b"accept-patch", SDPFRAG.encode("ascii"))
        links = iceServerLinks(self._e.ice.iceServers(self._e.clock.seconds()))
        if links:
            request.responseHeaders.setRawHeaders(b"link", [ln.encode("utf-8") for ln in links])
        self._finish(request, answer.encode("utf-8"))

    async def _answer(self, session: WhipSession, admission: Publication | Viewing,
                      sdp: str) -> str:
        engine = self._e.engine
        if isinstance(admission, Publication):
            session.stream = admission.start()
            session.peer = engine.publisher(session.stream, session)
        else:
            assert admission.stream is not None
            session.stream = admission.stream
            session.peer = engine.player(admission.stream, session)
        d: Deferred[str] = maybeDeferred(session.peer.answer, sdp)
        d.addTimeout(ANSWER_TIMEOUT, self._e.clock)
        answer: str = await d
        return answer

    # --- PATCH: trickle ICE ------------------------------------------------------------

    async def _patch(self, request: Any, session: WhipSession) -> None:
        if not isMediaType(_header(request, b"content-type"), SDPFRAG):
            return self._finish(request, self._fail(
                request, 415, "Content-Type must be " + SDPFRAG))
        matched = ifMatch(_header(request, b"if-match"), session.etag)
        if matched is None:
            # RFC 9725 4.3.1: a trickle or restart PATCH must name the entity
            return self._finish(request, self._fail(
                request, 428, "If-Match is required (this session's ETag)"))
        if matched is False:
            return self._finish(request, self._fail(
                request, 412, "If-Match does not name this session's ETag"))
        body = request.content.read(MAX_FRAGMENT + 1)
        try:
            frag = parseSdpFrag(body.decode("utf-8"))
        except (WhipError, UnicodeDecodeError) as e:
            reason = str(e) if isinstance(e, WhipError) else "the fragment is not UTF-8"
            return self._finish(request, self._fail(request, 400, "Bad fragment: " + reason))
        if (frag.iceUfrag is not None and frag.iceUfrag != session.offer.iceUfrag) or \
                (frag.icePwd is not None and frag.icePwd != session.offer.icePwd):
            return self._finish(request, self._fail(
                request, 422, "ICE restarts are not supported: POST a new offer"))
        if session.candidates + len(frag.candidates) > MAX_SESSION_CANDIDATES:
            return self._finish(request, self._fail(request, 400, "Too many candidates"))
        session.candidates += len(frag.candidates)
        peer = session.peer
        mids = session.offer.mids
        for c in frag.candidates:
            if peer is None or session.state == "closed":
                break
            mid = c.mid if c.mid is not None else (mids[0] if mids else None)
            index = mids.index(mid) if mid in mids else c.index
            try:
                await maybeDeferred(peer.addCandidate, c.candidate, mid, index)
            except Exception:
                # RFC 9725 4.3.1: a candidate whose transport or address the
                # session cannot use is discarded, the rest processed
                self._log.debug("a trickled candidate was discarded")
        if session.state == "closed":
            return self._finish(request, self._fail(request, 404, "No such session"))
        # RFC 9725 4.3.1: 204 without a body and without an ETag
        request.setResponseCode(204)
        _cors(request, _SESSION_METHODS)
        request.setHeader(b"cache-control", b"no-store")
        self._finish(request, b"")
