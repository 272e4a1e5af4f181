# -*- test-case-name: tests.test_webrtc_signalling -*-
"""
The WebSocket signalling of WebRTC publish and play, at C{/{App}/websocket},
with the JSON messages of Ant Media Server's JavaScript SDK.

A client sends C{publish} or C{play} with a stream id and a token (and, for
a TOTP subscriber, C{subscriberId} and C{subscriberCode}, as Ant Media's
JavaScript SDK sends them); the request goes through the access service
(L{tokengate.access.service}, protocol C{webrtc}).  A refusal is an C{error}
message (see L{refusalMessage}: C{unauthorized_access} with the stream id
for any token refusal and any other policy's; C{user_blocked} for a blocked
subscriber and C{not_allowed_unregistered_streams} for a stream not created
through REST, decided by the security policies before the token is
redeemed; C{streamIdInUse}, C{no_stream_exist} and, when the application's
C{webRTCEnabled} is off, C{webrtc_not_enabled} are decided before the token
is redeemed, so it stays usable) and leaves the socket usable for a retry.
On success a publisher gets C{start} and sends its offer; a player gets the
server's offer (no C{start}).  C{notification}s report C{publish_started},
C{publish_finished}, C{play_started} and C{play_finished}.

The media side is an I{engine} (L{tokengate.webrtc.engine.AiortcEngine} on
the asyncio reactor); without one, publish and play are answered with
C{not_initialized_yet} and everything else works.

Every connection is bounded: message size, message rate (a token bucket)
and the number of streams per socket.  Revocation or expiry of a session's
token closes the WebSocket with an application close code (4003 revoked,
4001 expired) after closing its peer connections.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from tokengate.access.names import isValidStreamId
from tokengate.access.service import AccessRequest, IAccess, Publication, Refused, Viewing
from tokengate.access.sessions import IKickable
from tokengate.jsonvalue import JSONError, readJSON
from tokengate.logsafe import Logger
from tokengate.media.hub import Hub, LiveStream, StreamInUse
from tokengate.metrics import Metrics
from tokengate.tokens import PLAY, PUBLISH, Outcome
from tokengate.webrtc.ice import IceServers


#: Limits per connection.
MAX_MESSAGE_SIZE = 64 * 1024
MAX_STREAMS = 4
#: token bucket: burst and sustained messages per second
RATE_BURST = 40.0
RATE_PER_SECOND = 10.0
#: a client this far over its budget is disconnected
RATE_ABUSE = 200
#: seconds a granted publisher has to send its offer, a player its answer
NEGOTIATION_TIMEOUT = 20.0

#: Application close codes (sendClose accepts 1000 and 3000-4999).
CLOSE_EXPIRED = 4001
CLOSE_REVOKED = 4003
CLOSE_SHUTDOWN = 4004
CLOSE_ABUSE = 4008
#: seconds a client has to answer the server's close
CLOSE_HANDSHAKE_TIMEOUT = 5.0
_CLOSE_CODES = {"expired": CLOSE_EXPIRED, "revoked": CLOSE_REVOKED, "shutdown": CLOSE_SHUTDOWN}

#: Commands that need no stream id.
_NO_STREAM_ID = frozenset({"ping", "getIceServerConfig"})

#: Refusals with their own reference definitions; every other one is
#: unauthorized_access.
_REFUSAL_DEFINITIONS = {
    Outcome.IN_USE: "streamIdInUse",
    Outcome.NOT_LIVE: "no_stream_exist",
    Outcome.UNAVAILABLE: "data_store_not_available",
    Outcome.BLOCKED: "user_blocked",
    Outcome.UNREGISTERED: "not_allowed_unregistered_streams",
}

#: Ant Media Server's not-found answer and its reasons (C{information})
_NOT_FOUND = {"error_code": "404"}
NOT_STREAMING = "stream_not_exist_or_not_streaming"
WEBRTC_NOT_ENABLED = "webrtc_not_enabled"


def refusalMessage(outcome: Outcome, action: str, streamId: str) -> dict[str, Any]:
    """
    The C{error} message that answers a publish or play of C{streamId}
    refused with C{outcome}.

    A play the application's C{webRTCEnabled} forbids is answered as Ant
    Media Server answers a stream that exists but is not available over
    WebRTC: its not-found error with the reason C{webrtc_not_enabled} (its
    JavaScript players then try their next technology); such a publish with
    the definition C{webrtc_not_enabled}.
    """
    message: dict[str, Any] = {"command": "error"}
    if outcome is Outcome.DISABLED:
        if action == PLAY:
            message.update(definition="no_stream_exist", streamId=streamId, **_NOT_FOUND,
                           information=WEBRTC_NOT_ENABLED)
        else:
            message.update(definition=WEBRTC_NOT_ENABLED, streamId=streamId)
        return message
    definition = _REFUSAL_DEFINITIONS.get(outcome, "unauthorized_access")
    message.update(definition=definition, streamId=streamId)
    if definition == "no_stream_exist":
        message.update(_NOT_FOUND, information=NOT_STREAMING)
    return message


def _text(value: Any) -> Optional[str]:
    """
    A message's optional string field: None unless a non-empty string (Ant
    Media's JavaScript SDK sends C{""} or C{undefined} when there is none).
    Its length is the access service's to bound.
    """
    return value if isinstance(value, str) and value else None


class _TokenBucket:
    def __init__(self, clock: Any, burst: float, rate: float) -> None:
        self._clock = clock
        self.burst = burst
        self.rate = rate
        self.level = burst
        self._when = clock.seconds()
        self.excess = 0

    def take(self) -> bool:
        now = self._clock.seconds()
        self.level = min(self.burst, self.level + (now - self._when) * self.rate)
        self._when = now
        if self.level >= 1.0:
            self.level -= 1.0
            self.excess = 0
            return True
        self.excess += 1
        return False


@implementer(IKickable)
class StreamSession:
    """
    One publish or play of one stream on one socket: the access service's
    I{mind}, then the holder of its L{Publication} or L{Viewing}.
    """

    protocolName = "webrtc"

    def __init__(self, proto: "SignallingProtocol", streamId: str, action: str) -> None:
        self.proto = proto
        self.streamId = streamId
        self.action = action
        self.peerHost = proto.peerHost
        #: the admitted publish or play
        self.admission: Optional[Publication | Viewing] = None
        self.stream: Optional[LiveStream] = None
        self.peer: Any = None  # the engine's peer connection
        self.state = "login"  # login, negotiating, live, closed
        self._timer: Any = None

    # --- IKickable ---------------------------------------------------------------

    def kick(self, reason: str) -> None:
        self.proto.kicked(self, reason)

    # --- engine events -------------------------------------------------------------

    def candidate(self, candidate: str, sdpMid: Any, sdpMLineIndex: Any) -> None:
        if self.state != "closed":
            self.proto.send({"command": "takeCandidate", "streamId": self.streamId,
                             "candidate": candidate, "id": sdpMid, "label": sdpMLineIndex})

    def connected(self) -> None:
        if self.state != "negotiating":
            return
        self.state = "live"
        self._cancelTimer()
        definition = "publish_started" if self.action == PUBLISH else "play_started"
        self.proto.notify(definition, self.streamId)

    def ended(self, why: str = "") -> None:
        """
        The peer connection failed or closed, or the stream ended.
        """
        self.proto.endSession(self, notify=True)

    # --- timers ----------------------------------------------------------------------

    def armTimer(self, clock: Any) -> None:
        self._cancelTimer()
        self._timer = clock.callLater(NEGOTIATION_TIMEOUT, self._timedOut)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self) -> None:
        self._timer = None
        if self.state == "negotiating":
            self.proto.error("publishTimeoutError" if self.action == PUBLISH
                             else "play_timeout", self.streamId)
            self.proto.endSession(self, notify=True)

    def close(self) -> "Deferred[None]":
        """
        Release everything this session holds; fires when its peer
        connection is closed.
        """
        self.state = "closed"
        self._cancelTimer()
        peer, self.peer = self.peer, None
        self.stream = None
        admission, self.admission = self.admission, None
        if admission is not None:
            admission.end()
        if peer is not None:
            d = maybeDeferred(peer.close)
            d.addErrback(lambda f: Logger().failure("closing a peer connection failed", f))
            return d
        from twisted.internet.defer import succeed

        return succeed(None)


class SignallingProtocol(WebSocketServerProtocol):
    _log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self.app = ""
        self.peerHost = ""
        self.sessions: dict[str, StreamSession] = {}
        self._bucket: Optional[_TokenBucket] = None
        self._closed = False
        self._lastRateError = -1e9

    @property
    def _access(self) -> IAccess:
        access: IAccess = self.factory.access
        return access

    @property
    def _clock(self) -> Any:
        return self.factory.clock

    # --- connection -------------------------------------------------------------------

    def onConnect(self, request: Any) -> None:
        parts = [p for p in request.path.split("/") if p]
        self.app = parts[0] if parts else ""
        transport = self.transport
        self.peerHost = getattr(transport.getPeer(), "host", "") if transport is not None else ""
        self._bucket = _TokenBucket(self._clock, RATE_BURST, RATE_PER_SECOND)

    def onOpen(self) -> None:
        self.factory.opened(self)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if self._closed:
            return
        self._closed = True
        self.factory.closed(self)
        for session in list(self.sessions.values()):
            self.sessions.pop(session.streamId, None)
            session.close()

    def _open(self) -> bool:
        """
        Whether messages may still be exchanged: not closed, and not
        closing (autobahn refuses to send once its closing handshake began,
        and a read may still hold messages sent before it).
        """
        return not self._closed and self.state == WebSocketServerProtocol.STATE_OPEN

    def send(self, message: dict[str, Any]) -> None:
        if self._open():
            self.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)

    def error(self, definition: str, streamId: Optional[str] = None, **extra: Any) -> None:
        message: dict[str, Any] = {"command": "error", "definition": definition}
        if streamId is not None:
            message["streamId"] = streamId
        message.update(extra)
        self.send(message)

    def notify(self, definition: str, streamId: str, **extra: Any) -> None:
        message = {"command": "notification", "definition": definition, "streamId": streamId}
        message.update(extra)
        self.send(message)

    # --- messages ---------------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not self._open():
            return
        assert self._bucket is not None
        if not self._bucket.take():
            if self._bucket.excess > RATE_ABUSE:
                self._log.info("WebSocket client {peer} floods; closing", peer=self.peerHost)
                self._closeAll(CLOSE_ABUSE, "too many messages")
                return
            now = self._clock.seconds()
            if now - self._lastRateError >= 1.0:
                self._lastRateError = now
                self.error("too_many_requests")
            return
        try:
            message = readJSON(payload)
        except JSONError:
            # too deep, NaN, huge numbers, not UTF-8, not JSON: the socket
            # stays open
            self.factory.malformedJSON.inc()
            self.error("invalid_json")
            return
        if not isinstance(message, dict):
            self.factory.malformedJSON.inc()
            self.error("invalid_json")
            return
        command = message.get("command")
        if not isinstance(command, str):
            self.error("missing_command")
            return
        handler = getattr(self, "cmd_" + command, None)
        if handler is None:
            self.error("unknown_command", request=command[:64])
            return
        streamId = message.get("streamId")
        if command not in _NO_STREAM_ID:
            if not isinstance(streamId, str) or not streamId:
                self.error("noStreamNameSpecified")
                return
            if not isValidStreamId(streamId):
                if command in ("publish", "play"):
                    self._access.refuse(AccessRequest(self.app, streamId, command, "webrtc",
                                                      self.peerHost), Outcome.INVALID)
                self.error("invalidStreamName", streamId[:128])
                return
        try:
            handler(message)
        except Exception:
            self._log.failure("WebSocket command {command} failed", command=command)
            self.error("server_error_check_logs",
                       streamId if isinstance(streamId, str) else None)

    def cmd_ping(self, message: dict[str, Any]) -> None:
        self.send({"command": "pong"})

    def cmd_getIceServerConfig(self, message: dict[str, Any]) -> None:
        # fresh (time-limited) TURN credentials for every reply; never logged
        self.send(self.factory.ice.reply(self._clock.seconds()))

    def cmd_getStreamInfo(self, message: dict[str, Any]) -> None:
        streamId = message["streamId"]
        stream = self.factory.hub.get(self.app, streamId)
        if stream is None:
            self.error("no_stream_exist", streamId, error_code="404",
                       information=NOT_STREAMING)
            return
        info: dict[str, Any] = {"streamWidth": 0, "streamHeight": 0, "videoBitrate": 0,
                                "audioBitrate": 0, "videoCodec": "", "audioCodec": ""}
        if stream.videoConfig is not None:
            try:
                from tokengate.media.codecs import AVCDecoderConfigurationRecord

                sps = AVCDecoderConfigurationRecord.parse(stream.videoConfig[5:]).parsed_sps()
                info.update(streamWidth=sps.width, streamHeight=sps.height, videoCodec="H264")
            except Exception:
                info["videoCodec"] = "H264"
        if stream.audioConfig is not None:
            info["audioCodec"] = "AAC"
        self.send({"command": "streamInformation", "streamId": streamId, "streamInfo": [info]})

    def cmd_getTrackList(self, message: dict[str, Any]) -> None:
        # Streams here are single-track: no subtracks to list.
        self.send({"command": "trackList", "streamId": message["streamId"], "trackList": []})

    def cmd_getRoomInfo(self, message: dict[str, Any]) -> None:
        room = message.get("room") if isinstance(message.get("room"), str) else message["streamId"]
        self.error("not_supported", message["streamId"], request="getRoomInfo", room=room)

    def cmd_joinRoom(self, message: dict[str, Any]) -> None:
        self.error("not_supported", message["streamId"], request="joinRoom")

    def cmd_enableTrack(self, message: dict[str, Any]) -> None:
        pass  # single-track streams: nothing to enable

    def cmd_toggleVideo(self, message: dict[str, Any]) -> None:
        pass  # a publisher's notice to conference peers: no conferences here

    def cmd_toggleAudio(self, message: dict[str, Any]) -> None:
        pass

    # --- publish and play -------------------------------------------------------------

    def cmd_publish(self, message: dict[str, Any]) -> None:
        self._request(message, PUBLISH)

    def cmd_play(self, message: dict[str, Any]) -> None:
        self._request(message, PLAY)

    def _request(self, message: dict[str, Any], action: str) -> None:
        streamId = message["streamId"]
        existing = self.sessions.get(streamId)
        if existing is not None:
            self.error("already_publishing" if existing.action == PUBLISH
                       else "already_playing", streamId)
            return
        if len(self.sessions) >= MAX_STREAMS:
            self.error("too_many_streams", streamId)
            return
        engine = self.factory.engine
        if engine is None or not engine.available:
            self.error("not_initialized_yet", streamId,
                       information=getattr(engine, "reason", "WebRTC media is off"))
            return
        token = message.get("token")
        token = token if isinstance(token, str) else None
        room = message.get("room")
        room = room if isinstance(room, str) and room else None
        request = AccessRequest(self.app, streamId, action, "webrtc", self.peerHost,
                                token or None, room,
                                subscriberId=_text(message.get("subscriberId")),
                                subscriberCode=_text(message.get("subscriberCode")))
        session = StreamSession(self, streamId, action)
        self.sessions[streamId] = session
        d: Deferred[Any]
        if action == PUBLISH:
            d = self._access.publish(request, session)
        else:
            d = self._access.play(request, session)
        d.addCallbacks(self._admitted, self._refused, callbackArgs=(session,),
                       errbackArgs=(session,))
        d.addErrback(self._unexpected, session)

    def _refused(self, failure: Any, session: StreamSession) -> None:
        failure.trap(Refused)
        if self.sessions.get(session.streamId) is session:
            del self.sessions[session.streamId]
        session.state = "closed"
        self.send(refusalMessage(failure.value.outcome, session.action, session.streamId))

    def _unexpected(self, failure: Any, session: StreamSession) -> None:
        self._log.failure("WebRTC {action} of {streamId} failed", failure,
                          action=session.action, streamId=session.streamId)
        self.error("server_error_check_logs", session.streamId)
        self.endSession(session, notify=False)

    def _admitted(self, admission: Publication | Viewing, session: StreamSession) -> None:
        session.admission = admission
        if self._closed or self.sessions.get(session.streamId) is not session:
            session.close()
            return
        session.state = "negotiating"
        session.armTimer(self._clock)
        engine = self.factory.engine
        if isinstance(admission, Publication):
            try:
                session.stream = admission.start()
            except StreamInUse:
                # the claim was lost (the application was deleted meanwhile)
                self.sessions.pop(session.streamId, None)
                session.close()
                self.error("streamIdInUse", session.streamId)
                return
            session.peer = engine.publisher(session.stream, session)
            self.send({"command": "start", "streamId": session.streamId})
        else:
            stream = admission.stream
            assert stream is not None
            session.stream = stream
            session.peer = engine.player(stream, session)
            d = maybeDeferred(session.peer.offer)

            def offered(sdp: str) -> None:
                if session.state == "negotiating":
                    self.send({"command": "takeConfiguration", "streamId": session.streamId,
                               "type": "offer", "sdp": sdp})

            d.addCallback(offered)
            d.addErrback(self._mediaFailed, session, "notSetLocalDescription")

    def _mediaFailed(self, failure: Any, session: StreamSession, definition: str) -> None:
        if session.state == "closed":
            return
        refusal = getattr(failure.value, "definition", None)
        if refusal is not None:
            # the media engine refused (no transcoding slot): not a fault
            self._log.warn("WebRTC {action} of {streamId} refused: {definition}",
                           action=session.action, streamId=session.streamId,
                           definition=refusal)
            self.factory.metrics.refusals.labels("webrtc", session.action, refusal).inc()
            definition = refusal
        else:
            self._log.failure("WebRTC media of {streamId} failed", failure,
                              streamId=session.streamId)
        self.error(definition, session.streamId)
        self.endSession(session, notify=True)

    def cmd_takeConfiguration(self, message: dict[str, Any]) -> None:
        streamId = message["streamId"]
        session = self.sessions.get(streamId)
        sdp, kind = message.get("sdp"), message.get("type")
        if session is None or session.peer is None or session.state != "negotiating":
            self.error("no_peer_associated_before", streamId)
            return
        if not isinstance(sdp, str) or kind not in ("offer", "answer"):
            self.error("notSetRemoteDescription", streamId)
            return
        if session.action == PUBLISH and kind == "offer":
            d = maybeDeferred(session.peer.answer, sdp)

            def answered(answer: str) -> None:
                if session.state == "negotiating":
                    self.send({"command": "takeConfiguration", "streamId": streamId,
                               "type": "answer", "sdp": answer})

            d.addCallback(answered)
            d.addErrback(self._mediaFailed, session, "notSetRemoteDescription")
        elif session.action == PLAY and kind == "answer":
            d = maybeDeferred(session.peer.accept, sdp)
            d.addErrback(self._mediaFailed, session, "notSetRemoteDescription")
        else:
            self.error("notSetRemoteDescription", streamId)

    def cmd_takeCandidate(self, message: dict[str, Any]) -> None:
        streamId = message["streamId"]
        session = self.sessions.get(streamId)
        if session is None or session.peer is None:
            self.error("no_peer_associated_before", streamId)
            return
        candidate = message.get("candidate")
        if not isinstance(candidate, str) or len(candidate) > 1024:
            return
        mid = message.get("id")
        label = message.get("label")
        d = maybeDeferred(session.peer.addCandidate, candidate,
                          mid if isinstance(mid, str) else None,
                          label if isinstance(label, int) else None)
        d.addErrback(lambda f: self._log.debug("ignored a bad candidate: {f}", f=f))

    def cmd_stop(self, message: dict[str, Any]) -> None:
        session = self.sessions.get(message["streamId"])
        if session is not None:
            self.endSession(session, notify=True)

    # --- ending ---------------------------------------------------------------------

    def endSession(self, session: StreamSession, notify: bool) -> "Deferred[None]":
        if self.sessions.get(session.streamId) is session:
            del self.sessions[session.streamId]
        wasActive = session.state in ("negotiating", "live")
        d = session.close()
        if notify and wasActive:
            self.notify("publish_finished" if session.action == PUBLISH else "play_finished",
                        session.streamId)
        return d

    def kicked(self, session: StreamSession, reason: str) -> None:
        self._log.info("ending WebRTC session of {peer} ({streamId}): {reason}",
                       peer=self.peerHost, streamId=session.streamId, reason=reason)
        if reason == "shutdown":
            self.notify("server_will_stop", session.streamId)
        self._closeAll(_CLOSE_CODES.get(reason, CLOSE_REVOKED), "session " + reason)

    def _closeAll(self, code: int, reason: str) -> None:
        """
        Close every peer connection, then the WebSocket with C{code}.
        """
        if self._closed:
            return
        sessions = list(self.sessions.values())
        self.sessions.clear()
        from twisted.internet.defer import DeferredList

        ds = [self.endSession(s, notify=False) for s in sessions]

        def close(_: Any) -> None:
            if not self._closed:
                self.sendClose(code, reason)

        DeferredList(ds, consumeErrors=True).addCallback(close)


class SignallingFactory(WebSocketServerFactory):
    """
    The factory behind C{/{App}/websocket} of every application.

    @ivar access: the one door of publish and play.
    @ivar clock: the timers' and rate limits' clock.
    @ivar metrics: where refusals, malformed messages and sockets are counted.
    @ivar hub: the live streams (C{getStreamInfo} reads them).
    @ivar engine: the media engine, or None.
    @ivar ice: the L{IceServers} handed to browsers in C{iceServerConfig}.
    """

    protocol = SignallingProtocol
    _log = Logger()

    def __init__(self, access: IAccess, clock: IReactorTime, metrics: Metrics, hub: Hub,
                 engine: Any = None, stunServerUri: str = "",
                 ice: Optional[IceServers] = None) -> None:
        """
        @param stunServerUri: when C{ice} is not given, a lone STUN URI.
        """
        super().__init__()
        self.access = access
        self.clock = clock
        self.metrics = metrics
        self.hub = hub
        self.engine = engine
        if ice is None:
            ice = IceServers(uris=[stunServerUri] if stunServerUri else [])
        self.ice = ice
        self.malformedJSON = metrics.malformed.labels("webrtc", "json")
        self.connections: set[SignallingProtocol] = set()
        self.setProtocolOptions(
            maxMessagePayloadSize=MAX_MESSAGE_SIZE,
            maxFramePayloadSize=MAX_MESSAGE_SIZE,
            autoPingInterval=20.0,
            autoPingTimeout=20.0,
            # a client told why it is closed (4003, 4008, ...) has this long
            # to answer the close before the connection is dropped (1 s by
            # default, which a busy client misses: it then sees only 1006)
            closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
            # the site's host and port are not known here; browsers send the
            # page's origin, which is checked by the token, not by origin
        )
        metrics.callbackGauge(
            "tokengate_websocket_sessions", "Open WebRTC signalling WebSockets",
            lambda: len(self.connections))

    def opened(self, proto: SignallingProtocol) -> None:
        self.connections.add(proto)

    def closed(self, proto: SignallingProtocol) -> None:
        self.connections.discard(proto)


def build_websocket_resource(access: IAccess, clock: IReactorTime, metrics: Metrics, hub: Hub,
                             engine: Any = None) -> WebSocketResource:
    return WebSocketResource(SignallingFactory(access, clock, metrics, hub, engine))
