# -*- test-case-name: tests.test_rtmp_protocol -*-
"""
The RTMP server: a thin Twisted adapter over the sans-IO
L{tokengate.rtmp.core.RTMPConnection}.

Encoders publish to C{rtmp://host/App/StreamId?token=T}, players play the
same form (also C{StreamId/T}); a TOTP subscriber adds
C{&subscriberId=S&subscriberCode=C} (or C{StreamId/T/S/C}).  These ride in
the stream name of C{publish} and C{play} (L{parse_stream_name}); this
protocol parses them and asks the access service
(L{tokengate.access.service}), with the connection paused so no media is
read while the token is checked.  Refusals are C{onStatus} errors
(C{NetStream.Publish.BadName}, C{NetStream.Play.StreamNotFound},
C{NetStream.Failed}, as the reference server sends them) followed by a
close; docs/development.md ("Access outcomes") lists each.

Players receive metadata, sequence headers and media from the hub, starting
at a keyframe, with timestamps rebased to zero.

Limits and deadlines (see docs/rtmp.md):

- Until a publish or play is admitted, the parser may hold little
  (L{UNADMITTED_MAX_MESSAGE}, L{UNADMITTED_MAX_PENDING}, counted in bytes
  including per-chunk bookkeeping); an admitted publisher gets the parser's
  full limits but command and data messages stay within
  L{MAX_AMF_MESSAGE}.  Past a limit the connection is closed.
- The handshake and C{connect} must be done within L{HANDSHAKE_TIMEOUT} of
  the TCP connection, a publish or play admitted within
  L{ADMISSION_TIMEOUT}, whatever the client keeps sending; an idle
  connection is closed after its idle timeout.
- One congestion rule for everything written to a client, in L{_flush}
  (frames, metadata, sequence headers, statuses, acknowledgements): once the
  transport reports its buffer full (it pauses us as a producer), at most
  L{MAX_CONGESTED_BYTES} more are written and the connection is closed if it
  stays congested for L{MAX_CONGESTION} seconds.  A congested player is sent
  no media, metadata or sequence header; it resumes at the next keyframe,
  preceded by the stream's current metadata and sequence headers when they
  changed meanwhile.
- Metadata larger than L{MAX_METADATA_BYTES} (AMF0-encoded) is ignored.

Every connection the server closes for one of these reasons is counted in
C{tokengate_connections_dropped_total{protocol="rtmp",reason}}.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol as TypingProtocol, cast
from urllib.parse import parse_qsl, unquote

from attrs import field, frozen
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

from tokengate.access.names import MAX_STREAM_ID, isValidStreamId
from tokengate.access.service import AccessRequest, IAccess, Publication, Refused, Viewing
from tokengate.access.sessions import IKickable
from tokengate.logsafe import Logger
from tokengate.media.hub import AUDIO, VIDEO, Frame, ISubscriber, LiveStream, StreamInUse
from tokengate.metrics import Metrics
from tokengate.tokens import PLAY, PUBLISH, Outcome
from tokengate.rtmp import amf0
from tokengate.rtmp.core import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MSG_VIDEO,
    SERVER,
    Command,
    DataMessage,
    RTMPConnection,
    RTMPProtocolError,
    UserControl,
)


MAX_STREAMS = 8
#: the handshake and C{connect} must be done this long after the TCP connect
HANDSHAKE_TIMEOUT = 10.0
#: a publish or play must be admitted this long after the TCP connect
ADMISSION_TIMEOUT = 20.0
IDLE_TIMEOUT = 30.0
PLAYER_IDLE_TIMEOUT = 3600.0
REFUSAL_DELAY = 0.1
#: a connection congested this long is disconnected
MAX_CONGESTION = 10.0
#: bytes written to a connection after its transport reported itself full
MAX_CONGESTED_BYTES = 256 * 1024
#: the largest message and the bytes of incomplete messages a connection may
#: hold before a publish or play is admitted (a C{connect} is about 1 KiB)
UNADMITTED_MAX_MESSAGE = 32 * 1024
UNADMITTED_MAX_PENDING = 64 * 1024
#: the same for an admitted publisher (the parser's defaults)
MAX_MESSAGE = DEFAULT_MAX_MESSAGE_SIZE
MAX_PENDING = 2 * DEFAULT_MAX_MESSAGE_SIZE
#: the largest command or data message of an admitted publisher (decoded AMF
#: takes many times its size; metadata is bounded lower, see below)
MAX_AMF_MESSAGE = 256 * 1024
#: the largest C{onMetaData} kept and sent to players, AMF0-encoded
MAX_METADATA_BYTES = 64 * 1024
#: while at least PACING_MIN_PUBLISHERS publishers are admitted, after a
#: read that did not fill the transport's buffer a publisher's socket rests
#: this long (seconds) before it is read again: the publishers resting
#: together are woken by one timer, so one wake-up of the server reads all
#: of them, a few frames each, instead of a wake-up per frame per publisher
#: (what it costs: at most this much latency, ingest only)
READ_PACING = 0.02
PACING_MIN_PUBLISHERS = 8
#: Twisted's TCP read size, when the transport does not say
READ_SIZE = 65536

# Reference strings (Ant Media Server / Red5).
DESC_PUBLISH_REFUSED = "You are not allowed to publish the stream."
DESC_PLAY_REFUSED = "You are not allowed to play the stream due to security."
CODE_BAD_NAME = "NetStream.Publish.BadName"
#: a blocked subscriber (its id, then C{publish} or C{play})
SUBSCRIBER_BLOCKED = "Subscriber {} is blocked to {} stream."


#: the path form's segments after the stream id, in order (Ant Media's
#: C{StreamService}: C{stream/token/subscriberId/subscriberCode})
_PATH_KEYS = ("token", "subscriberId", "subscriberCode")


@frozen
class StreamName:
    """
    What an RTMP stream name (and the application path ffmpeg folds into
    it) asks for.

    @ivar streamId: the stream's name (not yet checked against the grammar).
    @ivar token: the token, or None.
    @ivar subscriberId: the TOTP subscriber, or None.
    @ivar subscriberCode: the subscriber's code, or None.
    @ivar params: the query's other pairs, in the order sent.
    """

    streamId: str
    token: Optional[str] = field(default=None, repr=False)
    subscriberId: Optional[str] = None
    subscriberCode: Optional[str] = field(default=None, repr=False)
    params: tuple[tuple[str, str], ...] = field(default=(), repr=False)


def parse_stream_name(name: str, appPath: str = "") -> StreamName:
    """
    Split an RTMP stream name into a L{StreamName}.

    Accepts Ant Media's two forms: the query
    C{StreamId?token=T&subscriberId=S&subscriberCode=C} (each optional, the
    first of a repeated key wins, the other pairs are L{StreamName.params})
    and the path C{StreamId/T/S/C} (C{/} or C{%2F}; a value the query gives
    wins), also as ffmpeg folds C{rtmp://host/App/StreamId/T/S/C} into the
    app C{App/StreamId/T/S} and the name C{C} (C{appPath} is then
    C{StreamId/T/S}).  Percent-escapes are decoded (in the application's
    path too); empty values are None.
    A path of more than four segments is not understood: its stream id is
    the whole path, which the stream id grammar refuses.
    """
    if name.startswith(("mp4:", "flv:")):
        name = name[4:]
    base, _, query = name.partition("?")
    own: dict[str, Optional[str]] = dict.fromkeys(_PATH_KEYS)
    seen: set[str] = set()
    params: list[tuple[str, str]] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in own:
            if key not in seen:
                seen.add(key)
                own[key] = value or None
        else:
            params.append((key, value))
    path = unquote(appPath + "/" + base if appPath else base)
    parts = [p for p in path.split("/") if p]
    if len(parts) > 1 + len(_PATH_KEYS):
        streamId = "/".join(parts)
    else:
        streamId = parts[0] if parts else ""
        for key, value in zip(_PATH_KEYS, parts[1:]):
            if key not in seen:
                own[key] = value
    if streamId.endswith(".flv"):
        streamId = streamId[:-4]
    return StreamName(streamId, own["token"], own["subscriberId"], own["subscriberCode"],
                      tuple(params))


class TCPTransport(TypingProtocol):
    """
    What this protocol uses of its transport: a TCP connection that is a
    producer (paused while a token is checked) and a consumer (of this
    protocol as a producer, for the congestion rule).
    """

    connected: int

    def getPeer(self) -> Any: ...
    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


@implementer(IKickable, IPushProducer, ISubscriber)
class RTMPServerProtocol(Protocol):
    _log = Logger()
    protocolName = "rtmp"
    viewerKind = "rtmp"

    def __init__(self) -> None:
        self.conn = RTMPConnection(SERVER, max_message_size=UNADMITTED_MAX_MESSAGE,
                                   max_pending_bytes=UNADMITTED_MAX_PENDING)
        self.app: Optional[str] = None
        self.appPath = ""
        self.peerHost = ""
        self._nextMessageStream = 1
        self._messageStreams: set[int] = set()
        self._pendingLogin = False
        #: the admitted publish or play (one per connection)
        self.session: Optional[Publication | Viewing] = None
        self.publishing: Optional[LiveStream] = None
        self.publishMessageStream = 0
        self.playing: Optional[LiveStream] = None
        self.playMessageStream = 0
        self._closing = False
        self._timer: Any = None
        self._lastActivity = 0.0
        self._connectedAt = 0.0
        self._idleTimeout = HANDSHAKE_TIMEOUT
        #: a publish or play was admitted on this connection
        self._admitted = False
        # the write rule
        self._congestedSince: Optional[float] = None
        self._congestedBytes = 0
        self._congestionTimer: Any = None
        self._closeTimer: Any = None
        # player state
        self._base: Optional[int] = None
        self._waitKeyframe = True
        #: metadata or a sequence header changed while congested
        self._resync = False
        self._metadataRefused = False
        #: reading is paused until the factory's pacer wakes this connection
        self._resting = False

    # --- connection ---------------------------------------------------------------

    #: set when the connection is made: the factory, the transport as
    #: used here (Twisted types it as the narrower ITransport), the clock
    _factory: "RTMPFactory"
    _tcp: TCPTransport
    _clock: Any

    @property
    def _access(self) -> IAccess:
        return self._factory.access

    def connectionMade(self) -> None:
        self._factory = cast(RTMPFactory, self.factory)
        self._tcp = cast(TCPTransport, self.transport)
        # The socket under the connection limit's wrapper, which relays
        # writes and closes but reaches these by a __getattr__ per call:
        # read pacing pauses and resumes it about 50 times a second.
        socket: Any = self.transport
        while isinstance(socket, ProtocolWrapper):
            socket = socket.transport
        self._socket: IPushProducer = socket
        self._readSize: int = getattr(socket, "bufferSize", READ_SIZE)
        self._clock = self._factory.clock
        self.peerHost = getattr(self._tcp.getPeer(), "host", "")
        self._connectedAt = self._clock.seconds()
        # Every write passes through _flush, which applies the congestion
        # rule; the transport tells us when its buffer is full.
        self._tcp.registerProducer(self, True)
        self._touch(HANDSHAKE_TIMEOUT)

    def _drop(self, reason: str) -> None:
        """
        Close the connection at once for C{reason} (counted) and end its
        session.
        """
        self._factory.dropped(reason)
        self._closing = True
        self._endSession()
        self._tcp.abortConnection()

    def _deadline(self) -> tuple[Optional[float], str]:
        """
        @return: when the current phase of the connection must be over, and
            the reason counted if it is not (C{None}: no deadline).
        """
        if self.app is None:
            return self._connectedAt + HANDSHAKE_TIMEOUT, "handshake_timeout"
        if not self._admitted:
            return self._connectedAt + ADMISSION_TIMEOUT, "admission_timeout"
        return None, ""

    def _touch(self, timeout: float) -> None:
        """
        Set the inactivity timeout: the session is closed after C{timeout}
        seconds without data from the client (and at its phase's deadline).
        """
        self._idleTimeout = timeout
        self._lastActivity = self._clock.seconds()
        self._checkIdle()

    def _checkIdle(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._closing and not self._tcp.connected:
            return
        now = self._clock.seconds()
        idle = now - self._lastActivity
        deadline, why = self._deadline()
        if deadline is not None and now >= deadline:
            reason = why
        elif idle >= self._idleTimeout:
            reason = "idle_timeout"
        else:
            wake = self._idleTimeout - idle
            if deadline is not None:
                wake = min(wake, deadline - now)
            self._timer = self._clock.callLater(wake, self._checkIdle)
            return
        self._log.info("RTMP client {peer} timed out ({reason})", peer=self.peerHost,
                       reason=reason)
        self._drop(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._factory.bytesIn.inc(len(data))
        self._lastActivity = self._clock.seconds()
        burst = self.publishing
        if burst is not None:
            # Players write once for all the frames of this read.
            burst.inBurst = True
        try:
            # Media goes straight to the stream as it is parsed (no event
            # object per message); everything else to _dispatch, in order.
            self.conn.receive_into(data, self._media, self._dispatch)
        except RTMPProtocolError as e:
            self._log.info("bad RTMP from {peer}: {error}", peer=self.peerHost, error=str(e))
            self._drop("limit" if e.limit else "malformed")
            return
        finally:
            if burst is not None:
                burst.burstEnded()
        self._flush()
        if (self.publishing is not None and not self._resting and not self._closing
                and len(data) < self._readSize):
            # An admitted publisher that sent less than a full read: rest
            # (when there are enough publishers for it to pay).
            pacer = self._factory.pacer
            if len(pacer.publishers) >= PACING_MIN_PUBLISHERS:
                self._resting = True
                self._socket.pauseProducing()
                pacer.rest(self)

    def wake(self) -> None:
        """
        The pacer's timer: read again (unless an admission paused reading
        meanwhile or the connection is closing).
        """
        self._resting = False
        if not self._closing and not self._pendingLogin:
            self._socket.resumeProducing()

    def _media(self, type_id: int, stream_id: int, timestamp: int, payload: bytes) -> None:
        """
        An audio (8) or video (9) message: to the published stream when it
        came on the publishing message stream, else dropped.
        """
        publishing = self.publishing
        if publishing is not None and stream_id == self.publishMessageStream:
            if type_id == MSG_VIDEO:
                publishing.videoReceived(timestamp, payload)
            else:
                publishing.audioReceived(timestamp, payload)

    def _flush(self) -> None:
        """
        Write what the connection queued: the one place every byte for the
        client passes, and where the congestion rule is applied.
        """
        out = self.conn.data_to_send()
        if out and not self._closing:
            if self._congestedSince is not None:
                self._congestedBytes += len(out)
                if self._congestedBytes > MAX_CONGESTED_BYTES:
                    self._tooSlow("more than {} bytes queued".format(MAX_CONGESTED_BYTES))
                    return
            self._factory.bytesOut.inc(len(out))
            self._tcp.write(out)

    def _tooSlow(self, why: str) -> None:
        self._congestionTimer = None
        if not self._tcp.connected:
            return
        self._log.info("RTMP client {peer} does not read ({why}); disconnecting",
                       peer=self.peerHost, why=why)
        self._drop("slow_reader")

    def connectionLost(self, reason: object = None) -> None:
        self._closing = True
        for timer in (self._timer, self._congestionTimer, self._closeTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._congestionTimer = self._closeTimer = None
        self._endSession()

    def _endSession(self) -> None:
        self.publishing = None
        self._factory.pacer.publishers.discard(self)
        if self.playing is not None:
            stream, self.playing = self.playing, None
            stream.unsubscribe(self)
        if self.session is not None:
            session, self.session = self.session, None
            session.end()

    def _closeSoon(self) -> None:
        """
        Close after a short delay, so the refusal reaches the client first.
        """
        self._flush()
        self._closing = True
        self._clock.callLater(REFUSAL_DELAY, self._loseConnection)

    def _loseConnection(self) -> None:
        """
        Close once what is queued is written, within L{MAX_CONGESTION}.

        The producer is unregistered first: a transport with a paused
        streaming producer resumes it when its buffer drains, instead of
        closing.
        """
        if not self._tcp.connected:
            return
        self._closing = True
        if getattr(self._tcp, "producer", None) is not None:
            self._tcp.unregisterProducer()
        self._tcp.loseConnection()
        if self._closeTimer is None:
            self._closeTimer = self._clock.callLater(MAX_CONGESTION, self._closeTimedOut)

    def _closeTimedOut(self) -> None:
        self._closeTimer = None
        if self._tcp.connected:
            self._log.info("RTMP client {peer} did not read its last bytes; disconnecting",
                           peer=self.peerHost)
            self._drop("slow_reader")

    # --- IKickable ---------------------------------------------------------------

    def kick(self, reason: str) -> None:
        self._log.info("ending RTMP session of {peer}: {reason}", peer=self.peerHost,
                       reason=reason)
        if self.publishing is not None:
            self.conn.send_status(self.publishMessageStream, "status",
                                  "NetStream.Unpublish.Success", "Session ended by the server.")
        elif self.playing is not None:
            self.conn.send_status(self.playMessageStream, "status", "NetStream.Play.Stop",
                                  "Session ended by the server.")
        self._flush()
        self._endSession()
        self._loseConnection()

    # --- dispatch ------------------------------------------------------------------

    def _dispatch(self, event: Any) -> None:
        t = type(event)
        if t is Command:
            self._command(event)
        elif t is DataMessage:
            self._data(event)
        elif t is UserControl:
            if event.event_type == 6:  # PingRequest -> PingResponse
                self.conn.send_user_control(7, event.data)

    def _data(self, event: DataMessage) -> None:
        if self.publishing is None or event.stream_id != self.publishMessageStream:
            return
        values = list(event.values)
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            metadata = dict(values[1])
            size = len(amf0.encode("onMetaData", amf0.ECMAArray(metadata)))
            if size > MAX_METADATA_BYTES:
                self._factory.metadataRefused.inc()
                if not self._metadataRefused:
                    self._metadataRefused = True
                    self._log.info(
                        "ignoring onMetaData of {size} bytes (limit {limit}) from {peer}",
                        size=size, limit=MAX_METADATA_BYTES, peer=self.peerHost)
                return
            self.publishing.setMetadata(metadata)

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
        if not self._access.knowsApplication(name):
            self._access.refuse(AccessRequest(name, "", "connect", "rtmp", self.peerHost),
                                Outcome.NO_APP)
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
        if self.app is None or len(self._messageStreams) >= MAX_STREAMS:
            self.conn.send_command(0, "_error", cmd.transaction_id, None, {
                "level": "error", "code": "NetConnection.Call.Failed",
                "description": "Cannot create a stream."})
            return
        msid = self._nextMessageStream
        self._nextMessageStream += 1
        self._messageStreams.add(msid)
        self._result(cmd, float(msid))

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
        msid = cmd.args[0] if cmd.args else None
        if isinstance(msid, float) and int(msid) == self.publishMessageStream and self.publishing:
            self._stopPublishing()
        elif isinstance(msid, float) and int(msid) == self.playMessageStream and self.playing:
            self._stopPlaying()

    def cmd_closeStream(self, cmd: Command) -> None:
        if cmd.stream_id == self.publishMessageStream and self.publishing is not None:
            self._stopPublishing()
        elif cmd.stream_id == self.playMessageStream and self.playing is not None:
            self._stopPlaying()

    def _stopPublishing(self) -> None:
        stream, self.publishing = self.publishing, None
        self._factory.pacer.publishers.discard(self)
        session, self.session = self.session, None
        if session is not None:
            session.end()
        if stream is not None:
            self.conn.send_status(self.publishMessageStream, "status",
                                  "NetStream.Unpublish.Success", "Stream unpublished.")

    def _stopPlaying(self) -> None:
        stream, self.playing = self.playing, None
        if stream is not None:
            stream.unsubscribe(self)
        session, self.session = self.session, None
        if session is not None:
            session.end()
        if not self._closing:
            self._touch(IDLE_TIMEOUT)

    # --- publish and play ------------------------------------------------------------

    def _request(self, cmd: Command, action: str) -> None:
        """
        A publish or play: parse the stream name and ask the access service,
        reading nothing more from the client (no media) until it answers.
        """
        if self.app is None or self._pendingLogin or self.session is not None:
            return
        name = cmd.args[0] if cmd.args else None
        if not isinstance(name, str) or cmd.stream_id not in self._messageStreams:
            return
        wire = parse_stream_name(name, self.appPath)
        streamId = wire.streamId
        request = AccessRequest(self.app, streamId, action, "rtmp", self.peerHost, wire.token,
                                subscriberId=wire.subscriberId,
                                subscriberCode=wire.subscriberCode, params=wire.params)
        msid = cmd.stream_id
        self._pendingLogin = True
        self._tcp.pauseProducing()
        if action == PUBLISH:
            d: Any = self._access.publish(request, self)
        else:
            d = self._access.play(request, self)

        def admitted(session: Publication | Viewing) -> None:
            self._pendingLogin = False
            if self._closing:
                session.end()
                return
            self._tcp.resumeProducing()
            self.session = session
            if isinstance(session, Publication):
                self._startPublishing(msid, session)
            else:
                self._startPlaying(msid, session)
            self._flush()

        def refused(failure: Any) -> None:
            self._pendingLogin = False
            if self._closing:
                return
            self._tcp.resumeProducing()
            failure.trap(Refused)
            self._refuse(msid, action, streamId, failure.value.outcome, wire.subscriberId)

        def unexpected(failure: Any) -> None:
            self._log.failure("RTMP {action} admission failed", failure, action=action)
            if not self._closing:
                self._refuse(msid, action, streamId, Outcome.UNAVAILABLE)

        d.addCallbacks(admitted, refused)
        d.addErrback(unexpected)

    def cmd_publish(self, cmd: Command) -> None:
        self._request(cmd, PUBLISH)

    def cmd_play(self, cmd: Command) -> None:
        self._request(cmd, PLAY)

    def _refuse(self, msid: int, action: str, streamId: str, outcome: Outcome,
                subscriberId: Optional[str] = None) -> None:
        """
        Answer a refusal the reference server's way (the access service
        counted it), then close.  A blocked subscriber gets Ant Media's
        C{NetStream.Failed} naming it; every other policy's refusal (a bad
        or reused code, an unregistered stream, an address outside the
        publisher filter, a webhook's no or silence) the answer of a token
        refusal, as Ant Media answers its security handlers' refusals.
        """
        if not isValidStreamId(streamId):
            streamId = streamId[:MAX_STREAM_ID] or "-"
        if outcome is Outcome.BLOCKED:
            verb = "publish" if action == PUBLISH else "play"
            self.conn.send_status(msid, "error", "NetStream.Failed",
                                  SUBSCRIBER_BLOCKED.format(subscriberId or "", verb),
                                  streamId)
        elif action == PUBLISH:
            if outcome is Outcome.IN_USE:
                desc = "The stream is already being published."
            else:
                desc = DESC_PUBLISH_REFUSED
            self.conn.send_status(msid, "error", CODE_BAD_NAME, desc, streamId)
        elif outcome is Outcome.NOT_LIVE:
            self.conn.send_status(msid, "error", "NetStream.Play.StreamNotFound",
                                  "The stream is not live.", streamId)
        elif outcome is Outcome.DISABLED:
            self.conn.send_status(msid, "error", "NetStream.Failed",
                                  "RTMP playback is disabled.", streamId)
        else:
            self.conn.send_status(msid, "error", CODE_BAD_NAME, DESC_PLAY_REFUSED, streamId)
        self._closeSoon()

    def _startPublishing(self, msid: int, publication: Publication) -> None:
        streamId = publication.request.streamId
        try:
            stream = publication.start()
        except StreamInUse:
            # the claim was lost (the application was deleted meanwhile)
            self.session = None
            self._refuse(msid, PUBLISH, streamId, Outcome.IN_USE)
            return
        self.publishing = stream
        self._factory.pacer.publishers.add(self)
        self.publishMessageStream = msid
        self._admitted = True
        self.conn.set_limits(max_message_size=MAX_MESSAGE, max_pending_bytes=MAX_PENDING,
                             max_amf_message_size=MAX_AMF_MESSAGE)
        self.conn.send_stream_begin(msid)
        self.conn.send_status(msid, "status", "NetStream.Publish.Start",
                              "{} is now published.".format(streamId), streamId)
        self._touch(IDLE_TIMEOUT)

    def _startPlaying(self, msid: int, viewing: Viewing) -> None:
        streamId = viewing.request.streamId
        stream = viewing.stream
        assert stream is not None
        self.playMessageStream = msid
        self.playing = stream
        self._admitted = True
        self.conn.send_stream_begin(msid)
        self.conn.send_status(msid, "status", "NetStream.Play.Reset",
                              "Playing and resetting {}.".format(streamId), streamId)
        self.conn.send_status(msid, "status", "NetStream.Play.Start",
                              "Started playing {}.".format(streamId), streamId)
        self._touch(PLAYER_IDLE_TIMEOUT)
        stream.subscribe(self)

    # --- ISubscriber (player side) -------------------------------------------------------

    def streamStarted(self, stream: LiveStream) -> None:
        self._base = None
        self._waitKeyframe = True
        self._resync = False

    def metadataChanged(self, metadata: dict[str, Any]) -> None:
        if self._congestedSince is not None:
            self._resync = True
            return
        self.conn.send_data(self.playMessageStream, 0, "onMetaData", amf0.ECMAArray(metadata))
        self._flush()

    def configChanged(self, kind: str, body: bytes, timestamp: int) -> None:
        if self._congestedSince is not None:
            self._resync = True
            return
        self._sendConfig(kind, body, timestamp)
        self._flush()

    def _sendConfig(self, kind: str, body: bytes, timestamp: int) -> None:
        ts = self._rebase(timestamp)
        if kind == VIDEO:
            self.conn.send_video(self.playMessageStream, ts, body)
        else:
            self.conn.send_audio(self.playMessageStream, ts, body)

    def _resend(self, timestamp: int) -> None:
        """
        Queue the stream's current metadata and sequence headers (they
        changed while the player was congested).
        """
        self._resync = False
        stream = self.playing
        if stream is None:
            return
        if stream.metadata is not None:
            self.conn.send_data(self.playMessageStream, 0, "onMetaData",
                                amf0.ECMAArray(stream.metadata))
        if stream.videoConfig is not None:
            self._sendConfig(VIDEO, stream.videoConfig, timestamp)
        if stream.audioConfig is not None:
            self._sendConfig(AUDIO, stream.audioConfig, timestamp)

    def frameReceived(self, frame: Frame) -> None:
        if self._congestedSince is not None:
            self._waitKeyframe = True
            return
        if self._waitKeyframe:
            if not frame.keyframe:
                return
            self._waitKeyframe = False
            if self._resync:
                self._resend(frame.timestamp)
        ts = self._rebase(frame.timestamp)
        if frame.kind == VIDEO:
            self.conn.send_video(self.playMessageStream, ts, frame.body)
        else:
            self.conn.send_audio(self.playMessageStream, ts, frame.body)
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
        msid = self.playMessageStream
        self.conn.send_stream_eof(msid)
        self.conn.send_status(msid, "status", "NetStream.Play.UnpublishNotify",
                              "The stream was unpublished.")
        self.conn.send_status(msid, "status", "NetStream.Play.Stop", "Stopped playing.")
        if self.session is not None:
            session, self.session = self.session, None
            session.end()
        self._closeSoon()

    # --- IPushProducer: the client's socket tells us when it is full -------------------

    def pauseProducing(self) -> None:
        if self._congestedSince is None:
            self._congestedSince = self._clock.seconds()
            self._congestedBytes = 0
            self._congestionTimer = self._clock.callLater(
                MAX_CONGESTION, self._tooSlow,
                "congested for {:g} s".format(MAX_CONGESTION))

    def resumeProducing(self) -> None:
        self._congestedSince = None
        if self._congestionTimer is not None and self._congestionTimer.active():
            self._congestionTimer.cancel()
        self._congestionTimer = None

    def stopProducing(self) -> None:
        self.resumeProducing()


class ReadPacer:
    """
    Wakes resting publishers together: the first to rest starts one timer
    of C{interval} seconds; when it fires, every connection resting then is
    woken (L{RTMPServerProtocol.wake}).  Holds only the connections resting
    in the current interval.

    @ivar publishers: the connections publishing now (whether to pace).
    """

    def __init__(self, clock: Any, interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self.publishers: set[RTMPServerProtocol] = set()
        self._resting: list[RTMPServerProtocol] = []
        self._call: Any = None

    def rest(self, proto: RTMPServerProtocol) -> None:
        self._resting.append(proto)
        if self._call is None:
            self._call = self._clock.callLater(self._interval, self._wake)

    def _wake(self) -> None:
        self._call = None
        resting, self._resting = self._resting, []
        for proto in resting:
            proto.wake()


class RTMPFactory(Factory):
    """
    The RTMP listener's factory.

    @ivar access: the one door for publish and play.
    @ivar clock: the deadlines' clock.
    """

    protocol = RTMPServerProtocol

    def __init__(self, access: IAccess, clock: Any, metrics: Metrics) -> None:
        self.access = access
        self.clock = clock
        self.pacer = ReadPacer(clock, READ_PACING)
        self.bytesIn = metrics.bytes.labels("rtmp", "in")
        self.bytesOut = metrics.bytes.labels("rtmp", "out")
        self.metadataRefused = metrics.refusals.labels("rtmp", "metadata", "too_large")
        self._dropped = metrics.dropped

    def dropped(self, reason: str) -> None:
        """
        Count a connection the server closed for C{reason}.
        """
        self._dropped.labels("rtmp", reason).inc()
