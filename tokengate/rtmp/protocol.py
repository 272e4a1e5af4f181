# -*- test-case-name: tests.test_rtmp_protocol -*-
"""
The RTMP server: a thin Twisted adapter over the sans-IO
L{tokengate.rtmp.core.RTMPConnection}.

Encoders publish to ``rtmp://host/App/StreamId?token=T``, players play the
same form (also ``StreamId/T``).  The token rides in the stream name of
``publish`` and ``play``; this protocol parses it and asks the gate, with the
connection paused so no media is read while the token is checked.  Refusals
are ``onStatus`` errors (``NetStream.Publish.BadName``, as the reference
server sends them) followed by a close.

Players receive metadata, sequence headers and media from the hub, starting
at a keyframe, with timestamps rebased to zero.  A player whose socket cannot
keep up (the transport pauses us as a producer) drops media until the next
keyframe after it recovers, and is disconnected if it stays congested.
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import parse_qsl, unquote

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from tokengate.access.names import isValidStreamId
from tokengate.logsafe import Logger
from ..auth import Grant, IKickable, Refused, StreamCredentials
from ..media.hub import VIDEO, Frame, ISubscriber, LiveStream, StreamInUse
from ..tokens import PLAY, PUBLISH, Outcome
from . import amf0
from .core import (
    SERVER,
    AudioData,
    Command,
    DataMessage,
    RTMPConnection,
    RTMPProtocolError,
    UserControl,
    VideoData,
)


MAX_STREAMS = 8
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0
REFUSAL_DELAY = 0.1
#: a player congested this long is disconnected
MAX_CONGESTION = 10.0

# Reference strings (Ant Media Server / Red5).
DESC_PUBLISH_REFUSED = "You are not allowed to publish the stream."
DESC_PLAY_REFUSED = "You are not allowed to play the stream due to security."
CODE_BAD_NAME = "NetStream.Publish.BadName"


def parse_stream_name(name: str, appPath: str = "") -> tuple[str, Optional[str]]:
    """
    Split an RTMP stream name into (stream id, token).

    Accepts ``StreamId?token=T`` (any other query keys are ignored, keys
    without ``=`` too), the path form ``StreamId/T``, and ffmpeg's folding
    of ``rtmp://host/App/StreamId/T`` into app ``App/StreamId`` and name
    ``T`` (C{appPath} is then ``StreamId``).  Percent-escapes are decoded.
    """
    if name.startswith(("mp4:", "flv:")):
        name = name[4:]
    base, _, query = name.partition("?")
    token: Optional[str] = None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "token":
            token = value
            break
    base = unquote(base)
    parts = [p for p in (appPath.split("/") if appPath else []) + base.split("/") if p]
    streamId = parts[0] if parts else ""
    if token is None and len(parts) > 1:
        token = parts[1]
    if streamId.endswith(".flv"):
        streamId = streamId[:-4]
    return streamId, token or None


@implementer(IKickable, IPushProducer, ISubscriber)
class RTMPServerProtocol(Protocol):
    _log = Logger()
    protocolName = "rtmp"
    viewerKind = "rtmp"

    def __init__(self) -> None:
        self.conn = RTMPConnection(SERVER)
        self.app: Optional[str] = None
        self.appPath = ""
        self.peerHost = ""
        self._nextStreamId = 1
        self._streamIds: set[int] = set()
        self._pendingLogin = False
        self.grant: Optional[Grant] = None
        self.publishing: Optional[LiveStream] = None
        self.publishStreamId = 0
        self.playing: Optional[LiveStream] = None
        self.playStreamId = 0
        self._closing = False
        self._timer: Any = None
        self._lastActivity = 0.0
        self._connectedAt = 0.0
        self._idleTimeout = HANDSHAKE_TIMEOUT
        # player state
        self._base: Optional[int] = None
        self._waitKeyframe = True
        self._congestedSince: Optional[float] = None

    # --- connection ---------------------------------------------------------------

    @property
    def _server(self) -> Any:
        return self.factory.server

    @property
    def _clock(self) -> Any:
        return self.factory.server.clock

    def connectionMade(self) -> None:
        self.peerHost = getattr(self.transport.getPeer(), "host", "")
        self._connectedAt = self._clock.seconds()
        self._touch(HANDSHAKE_TIMEOUT)

    def _timedOut(self) -> None:
        self._timer = None
        self._log.info("RTMP client {peer} timed out", peer=self.peerHost)
        self.transport.abortConnection()

    def _touch(self, timeout: float) -> None:
        """
        (Re)arm the inactivity timer: the session is closed after
        C{timeout} seconds without data from the client.
        """
        self._idleTimeout = timeout
        self._lastActivity = self._clock.seconds()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._clock.callLater(timeout, self._checkIdle)

    def _checkIdle(self) -> None:
        now = self._clock.seconds()
        idle = now - self._lastActivity
        if idle >= self._idleTimeout or (
            self.app is None and now - self._connectedAt >= HANDSHAKE_TIMEOUT
        ):
            self._timedOut()
        else:
            self._timer = self._clock.callLater(self._idleTimeout - idle, self._checkIdle)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.factory.bytesIn.inc(len(data))
        self._lastActivity = self._clock.seconds()
        burst = self.publishing
        try:
            events = self.conn.receive_data(data)
            if burst is not None:
                # Players write once for all the frames of this read.
                burst.inBurst = True
            for event in events:
                # Media first, inline: nearly every event is one.
                t = type(event)
                if t is AudioData:
                    if self.publishing is not None and event.stream_id == self.publishStreamId:
                        self.publishing.audioReceived(event.timestamp, event.payload)
                elif t is VideoData:
                    if self.publishing is not None and event.stream_id == self.publishStreamId:
                        self.publishing.videoReceived(event.timestamp, event.payload)
                else:
                    self._dispatch(event)
        except RTMPProtocolError as e:
            self._log.info("bad RTMP from {peer}: {error}", peer=self.peerHost, error=str(e))
            self._flush()
            self._closing = True
            self.transport.abortConnection()
            return
        finally:
            if burst is not None:
                burst.burstEnded()
        self._flush()

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and not self._closing:
            self.factory.bytesOut.inc(len(out))
            self.transport.write(out)

    def connectionLost(self, reason: object = None) -> None:
        self._closing = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._endSession()

    def _endSession(self) -> None:
        if self.publishing is not None:
            stream, self.publishing = self.publishing, None
            stream.end()
        if self.playing is not None:
            stream, self.playing = self.playing, None
            stream.unsubscribe(self)
        if self.grant is not None:
            grant, self.grant = self.grant, None
            grant.logout()

    def _closeSoon(self) -> None:
        """
        Close after a short delay, so the refusal reaches the client first.
        """
        self._flush()
        self._closing = True
        self._clock.callLater(REFUSAL_DELAY, self.transport.loseConnection)

    # --- IKickable ---------------------------------------------------------------

    def kick(self, reason: str) -> None:
        self._log.info("ending RTMP session of {peer}: {reason}", peer=self.peerHost,
                       reason=reason)
        self.grant = None  # the gate already ended it
        if self.publishing is not None:
            self.conn.send_status(self.publishStreamId, "status",
                                  "NetStream.Unpublish.Success", "Session ended by the server.")
        elif self.playing is not None:
            self.conn.send_status(self.playStreamId, "status", "NetStream.Play.Stop",
                                  "Session ended by the server.")
        self._flush()
        self._endSession()
        self._closing = True
        self.transport.loseConnection()

    # --- dispatch ------------------------------------------------------------------

    def _dispatch(self, event: Any) -> None:
        t = type(event)
        if t is VideoData:
            if self.publishing is not None and event.stream_id == self.publishStreamId:
                self.publishing.videoReceived(event.timestamp, event.payload)
        elif t is AudioData:
            if self.publishing is not None and event.stream_id == self.publishStreamId:
                self.publishing.audioReceived(event.timestamp, event.payload)
        elif t is Command:
            self._command(event)
        elif t is DataMessage:
            self._data(event)
        elif t is UserControl:
            if event.event_type == 6:  # PingRequest -> PingResponse
                self.conn.send_user_control(7, event.data)

    def _data(self, event: DataMessage) -> None:
        if self.publishing is None or event.stream_id != self.publishStreamId:
            return
        values = list(event.values)
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            self.publishing.setMetadata(dict(values[1]))

    def _command(self, cmd: Command) -> None:
        handler = getattr(self, "cmd_" + cmd.name, None)
        if handler is None:
            return
        handler(cmd)

    def _result(self, cmd: Command, *args: Any) -> None:
        self.conn.send_command(cmd.stream_id, "_result", cmd.transaction_id, None, *args)

    # --- NetConnection ---------------------------------------------------------------

    def cmd_connect(self, cmd: Command) -> None:
        if self.app is not None:
            return
        obj = cmd.command_object if isinstance(cmd.command_object, dict) else {}
        app = obj.get("app")
        app = app if isinstance(app, str) else ""
        app = app.partition("?")[0].strip("/")
        name, _, rest = app.partition("/")
        if not self._server.gate.knowsApplication(name):
            self._server.gate.refused(
                StreamCredentials(name, "", "connect", None, self.peerHost, "rtmp"),
                Outcome.NO_APP,
            )
            self.conn.send_command(0, "_error", cmd.transaction_id, None, {
                "level": "error",
                "code": "NetConnection.Connect.Rejected",
                "description": "No such application.",
            })
            self._closeSoon()
            return
        self.app, self.appPath = name, rest
        self.conn.send_window_ack_size(2500000)
        self.conn.send_set_peer_bandwidth(2500000, 2)
        self.conn.send_set_chunk_size(4096)
        self.conn.send_command(0, "_result", cmd.transaction_id,
                               {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
                               {"level": "status", "code": "NetConnection.Connect.Success",
                                "description": "Connection succeeded.",
                                "objectEncoding": 0.0})
        self._touch(IDLE_TIMEOUT)

    def cmd_createStream(self, cmd: Command) -> None:
        if self.app is None or len(self._streamIds) >= MAX_STREAMS:
            self.conn.send_command(0, "_error", cmd.transaction_id, None, {
                "level": "error", "code": "NetConnection.Call.Failed",
                "description": "Cannot create a stream."})
            return
        sid = self._nextStreamId
        self._nextStreamId += 1
        self._streamIds.add(sid)
        self._result(cmd, float(sid))

    def cmd_releaseStream(self, cmd: Command) -> None:
        self._result(cmd, amf0.UNDEFINED)

    def cmd_FCPublish(self, cmd: Command) -> None:
        self._result(cmd, amf0.UNDEFINED)

    def cmd_FCUnpublish(self, cmd: Command) -> None:
        self._result(cmd, amf0.UNDEFINED)
        if self.publishing is not None:
            self._stopPublishing()

    def cmd_getStreamLength(self, cmd: Command) -> None:
        self._result(cmd, 0.0)

    def cmd_deleteStream(self, cmd: Command) -> None:
        sid = cmd.args[0] if cmd.args else None
        if isinstance(sid, float) and int(sid) == self.publishStreamId and self.publishing:
            self._stopPublishing()
        elif isinstance(sid, float) and int(sid) == self.playStreamId and self.playing:
            self._stopPlaying()

    def cmd_closeStream(self, cmd: Command) -> None:
        if cmd.stream_id == self.publishStreamId and self.publishing is not None:
            self._stopPublishing()
        elif cmd.stream_id == self.playStreamId and self.playing is not None:
            self._stopPlaying()

    def _stopPublishing(self) -> None:
        stream, self.publishing = self.publishing, None
        if stream is not None:
            stream.end()
            self.conn.send_status(self.publishStreamId, "status",
                                  "NetStream.Unpublish.Success", "Stream unpublished.")
        if self.grant is not None:
            grant, self.grant = self.grant, None
            grant.logout()

    def _stopPlaying(self) -> None:
        stream, self.playing = self.playing, None
        if stream is not None:
            stream.unsubscribe(self)
        if self.grant is not None:
            grant, self.grant = self.grant, None
            grant.logout()

    # --- publish and play ------------------------------------------------------------

    def _request(self, cmd: Command, action: str) -> Optional[tuple[str, Optional[str]]]:
        """
        Common checks for publish and play; None when refused or busy.
        """
        if self.app is None or self._pendingLogin or self.grant is not None:
            return None
        name = cmd.args[0] if cmd.args else None
        if not isinstance(name, str) or cmd.stream_id not in self._streamIds:
            return None
        streamId, token = parse_stream_name(name, self.appPath)
        if not isValidStreamId(streamId):
            self._refuse(cmd.stream_id, action, streamId[:128] or "-", Outcome.INVALID,
                         StreamCredentials(self.app, streamId[:128], action, None,
                                           self.peerHost, "rtmp"))
            return None
        return streamId, token

    def cmd_publish(self, cmd: Command) -> None:
        parsed = self._request(cmd, PUBLISH)
        if parsed is not None:
            self._login(cmd.stream_id, PUBLISH, *parsed)

    def cmd_play(self, cmd: Command) -> None:
        parsed = self._request(cmd, PLAY)
        if parsed is not None:
            self._login(cmd.stream_id, PLAY, *parsed)

    def _login(self, sid: int, action: str, streamId: str, token: Optional[str]) -> None:
        assert self.app is not None
        creds = StreamCredentials(self.app, streamId, action, token, self.peerHost, "rtmp")
        self._pendingLogin = True
        # Read nothing more (no media) until the token is decided.
        self.transport.pauseProducing()
        d = self._server.gate.login(creds, self)

        def granted(grant: Grant) -> None:
            self._pendingLogin = False
            if self._closing:
                grant.logout()
                return
            self.transport.resumeProducing()
            self.grant = grant
            if action == PUBLISH:
                self._startPublishing(sid, streamId, creds)
            else:
                self._startPlaying(sid, streamId, creds)
            self._flush()

        def refused(failure: Any) -> None:
            self._pendingLogin = False
            if self._closing:
                return
            self.transport.resumeProducing()
            failure.trap(Refused)
            self._refuse(sid, action, streamId, failure.value.outcome, None)

        def unexpected(failure: Any) -> None:
            self._log.failure("RTMP {action} login failed", failure, action=action)
            if not self._closing:
                self._refuse(sid, action, streamId, Outcome.UNAVAILABLE, None)

        d.addCallbacks(granted, refused)
        d.addErrback(unexpected)

    def _refuse(self, sid: int, action: str, streamId: str, outcome: Outcome,
                creds: Optional[StreamCredentials]) -> None:
        if creds is not None:
            self._server.gate.refused(creds, outcome)
        if action == PUBLISH:
            if outcome is Outcome.IN_USE:
                desc = "The stream is already being published."
            else:
                desc = DESC_PUBLISH_REFUSED
            self.conn.send_status(sid, "error", CODE_BAD_NAME, desc, streamId)
        elif outcome is Outcome.NOT_LIVE:
            self.conn.send_status(sid, "error", "NetStream.Play.StreamNotFound",
                                  "The stream is not live.", streamId)
        else:
            self.conn.send_status(sid, "error", CODE_BAD_NAME, DESC_PLAY_REFUSED, streamId)
        self._closeSoon()

    def _startPublishing(self, sid: int, streamId: str, creds: StreamCredentials) -> None:
        try:
            stream = self._server.hub.publish(creds.app, streamId, "RTMP")
        except StreamInUse:
            # Lost a race with another publisher after the precheck.
            grant, self.grant = self.grant, None
            if grant is not None:
                grant.logout()
            self._refuse(sid, PUBLISH, streamId, Outcome.IN_USE, None)
            return
        self.publishing = stream
        self.publishStreamId = sid
        self.conn.send_stream_begin(sid)
        self.conn.send_status(sid, "status", "NetStream.Publish.Start",
                              "{} is now published.".format(streamId), streamId)
        self._touch(IDLE_TIMEOUT)

    def _startPlaying(self, sid: int, streamId: str, creds: StreamCredentials) -> None:
        stream = self._server.hub.get(creds.app, streamId)
        if stream is None:
            grant, self.grant = self.grant, None
            if grant is not None:
                grant.logout()
            self._refuse(sid, PLAY, streamId, Outcome.NOT_LIVE, None)
            return
        self.playStreamId = sid
        self.playing = stream
        self.conn.send_stream_begin(sid)
        self.conn.send_status(sid, "status", "NetStream.Play.Reset",
                              "Playing and resetting {}.".format(streamId), streamId)
        self.conn.send_status(sid, "status", "NetStream.Play.Start",
                              "Started playing {}.".format(streamId), streamId)
        self.transport.registerProducer(self, True)
        self._touch(3600.0)
        stream.subscribe(self)

    # --- ISubscriber (player side) -------------------------------------------------------

    def streamStarted(self, stream: LiveStream) -> None:
        self._base = None
        self._waitKeyframe = True

    def metadataChanged(self, metadata: dict[str, Any]) -> None:
        self.conn.send_data(self.playStreamId, 0, "onMetaData", amf0.ECMAArray(metadata))
        self._flush()

    def configChanged(self, kind: str, body: bytes, timestamp: int) -> None:
        ts = self._rebase(timestamp)
        if kind == VIDEO:
            self.conn.send_video(self.playStreamId, ts, body)
        else:
            self.conn.send_audio(self.playStreamId, ts, body)
        self._flush()

    def frameReceived(self, frame: Frame) -> None:
        if self._congestedSince is not None:
            if self._clock.seconds() - self._congestedSince > MAX_CONGESTION:
                self._log.info("RTMP player {peer} too slow; disconnecting",
                               peer=self.peerHost)
                self._stopPlaying()
                self._closing = True
                self.transport.abortConnection()
            self._waitKeyframe = True
            return
        if self._waitKeyframe:
            if not frame.keyframe:
                return
            self._waitKeyframe = False
        ts = self._rebase(frame.timestamp)
        if frame.kind == VIDEO:
            self.conn.send_video(self.playStreamId, ts, frame.body)
        else:
            self.conn.send_audio(self.playStreamId, ts, frame.body)
        stream = self.playing
        if stream is None or not stream.inBurst:
            self._flush()
        # else the stream calls flushBurst after the publisher's read

    def flushBurst(self) -> None:
        self._flush()

    def _rebase(self, timestamp: int) -> int:
        if self._base is None:
            self._base = timestamp
        return max(0, timestamp - self._base)

    def streamEnded(self) -> None:
        self.playing = None
        if self._closing:
            return
        sid = self.playStreamId
        self.conn.send_stream_eof(sid)
        self.conn.send_status(sid, "status", "NetStream.Play.UnpublishNotify",
                              "The stream was unpublished.")
        self.conn.send_status(sid, "status", "NetStream.Play.Stop", "Stopped playing.")
        if self.grant is not None:
            grant, self.grant = self.grant, None
            grant.logout()
        self._closeSoon()

    # --- IPushProducer: the player's socket tells us when it is full -------------------

    def pauseProducing(self) -> None:
        if self._congestedSince is None:
            self._congestedSince = self._clock.seconds()

    def resumeProducing(self) -> None:
        self._congestedSince = None

    def stopProducing(self) -> None:
        self._congestedSince = None


class RTMPFactory(Factory):
    protocol = RTMPServerProtocol

    def __init__(self, server: Any) -> None:
        self.server = server
        self.bytesIn = server.metrics.bytes.labels("rtmp", "in")
        self.bytesOut = server.metrics.bytes.labels("rtmp", "out")
