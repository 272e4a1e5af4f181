# -*- test-case-name: tests.test_srt_protocol,tests.test_hostile_srt,tests.interop.test_hostile_srt,tests.interop.test_srt_interop -*-
"""
The SRT listener: a thin Twisted adapter (one UDP port for every caller)
over the sans-IO L{tokengate.srt.connection.Listener} and
L{tokengate.media.ts.TSDemuxer}.

The token is decided **inside the handshake**: a caller's conclusion
(C{streamid=App/StreamId,token=T} or C{#!::r=App/StreamId,m=publish,token=T},
with C{subscriberId=S,subscriberCode=C} for a TOTP subscriber)
goes to the access service (L{tokengate.access.service}) before any media is
accepted; the caller gets the agreement only when it is admitted, otherwise a
rejection (the access service's outcome, as a reject code):

====================================  =====================================
case                                  reject code (wire reqtype = 1000+code)
====================================  =====================================
bad, missing, spent or expired token  1401 SRT_REJX_UNAUTHORIZED
malformed stream id                   1400 SRT_REJX_BAD_REQUEST
unknown application                   1404 SRT_REJX_NOTFOUND
stream being published (token kept)   1409 SRT_REJX_CONFLICT
C{m=request} (play over SRT)         1405 SRT_REJX_BAD_MODE
encryption (a passphrase) requested   11 SRT_REJ_UNSECURE
throttled or store down               1503 SRT_REJX_DOWN
subscriber code missing or wrong      1401 SRT_REJX_UNAUTHORIZED
subscriber blocked                    1403 SRT_REJX_FORBIDDEN
subscriber code already connected     1409 SRT_REJX_CONFLICT
stream not created through REST       1404 SRT_REJX_NOTFOUND
outside C{allowedPublisherCIDR}       1403 SRT_REJX_FORBIDDEN
authorization webhook refused         1403 SRT_REJX_FORBIDDEN
authorization webhook did not answer  1503 SRT_REJX_DOWN
====================================  =====================================

The answer reaches the caller while it still waits: each decision carries the
time by which the caller must have it (its connect timeout, 3 s by default,
counted from the start of its connect), and the gate refuses at once (1503,
token kept) a caller that the throttle would hold past it.  The token is
redeemed just before the agreement is sent, within that time.

An admitted caller's L{Publication} claims its stream (so nobody else
publishes it) but the stream goes live (C{broadcasting}, L{Publication.start})
on its first media packet: a caller that never sends media is never live, and
its session ends with the idle timeout (L{Publication.end}, the one way a
publication ends).
Its MPEG-TS is demuxed into the hub, where the stream plays as RTMP, HLS,
DASH and MP4 like any other (C{publishType} C{SRT}).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from typing import Any, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from tokengate.access.service import AccessRequest, IAccess, Publication, Refused
from tokengate.access.sessions import IKickable
from tokengate.logsafe import Logger
from tokengate.media.errors import MediaError
from tokengate.media.hub import LiveStream, StreamInUse
from tokengate.media.ts import Audio, AudioConfig, TSDemuxer, Video, VideoConfig
from tokengate.metrics import Metrics
from tokengate.tokens import PUBLISH, Outcome
from tokengate.srt.connection import Listener
from tokengate.srt.errors import (
    REJX_BAD_MODE,
    REJX_BAD_REQUEST,
    REJX_CONFLICT,
    REJX_DOWN,
    REJX_FORBIDDEN,
    REJX_NOTFOUND,
    REJX_UNAUTHORIZED,
    SRTProtocolError,
)
from tokengate.srt.handshake import NeedsAuthorization, Rejected, Reply
from tokengate.srt.packets import peek_dst
from tokengate.srt.receiver import Closed, Connection, Payload

TICK = 0.01

#: the access service's outcomes as reject codes; every other refusal (a
#: token refused, a TOTP subscriber code missing or wrong) is 1401
#: SRT_REJX_UNAUTHORIZED
_CODES = {
    Outcome.NO_APP: REJX_NOTFOUND,
    Outcome.IN_USE: REJX_CONFLICT,
    Outcome.THROTTLED: REJX_DOWN,
    Outcome.UNAVAILABLE: REJX_DOWN,
    Outcome.INVALID: REJX_BAD_REQUEST,
    Outcome.DISABLED: REJX_BAD_MODE,
    Outcome.BLOCKED: REJX_FORBIDDEN,
    Outcome.CODE_IN_USE: REJX_CONFLICT,
    Outcome.UNREGISTERED: REJX_NOTFOUND,
    Outcome.ADDRESS: REJX_FORBIDDEN,
    Outcome.WEBHOOK_REFUSED: REJX_FORBIDDEN,
    Outcome.WEBHOOK_UNAVAILABLE: REJX_DOWN,
}


def rejectCode(outcome: Outcome) -> int:
    """
    The reject code that answers a refusal with C{outcome}.
    """
    return _CODES.get(outcome, REJX_UNAUTHORIZED)


@implementer(IKickable)
class SRTSession:
    """
    One admitted SRT publisher: its connection, its demuxer and its
    L{Publication} (the grant and the claim on its stream until its first
    media packet starts it).
    """

    protocolName = "srt"
    _log = Logger()

    def __init__(self, listener: "SRTListener", peerHost: str, app: str = "",
                 streamId: str = "") -> None:
        self._listener = listener
        self.peerHost = peerHost
        self.app = app
        self.streamId = streamId
        self.conn: Optional[Connection] = None
        self.publication: Optional[Publication] = None
        self.stream: Optional[LiveStream] = None
        self.demux = TSDemuxer()
        self.ended = False

    def _goLive(self) -> bool:
        publication = self.publication
        if publication is None:
            return False
        try:
            self.stream = publication.start()
        except StreamInUse:
            self._log.info("SRT caller {peer} lost {app}/{streamId} before its first media",
                           peer=self.peerHost, app=self.app, streamId=self.streamId)
            self.end("stream in use", shutdown=True)
            return False
        return True

    def payload(self, data: bytes) -> None:
        if self.ended:
            return
        if self.stream is None and not self._goLive():
            return
        try:
            events = self.demux.feed(data)
        except MediaError as e:
            self._log.info("bad MPEG-TS from {peer}: {error}", peer=self.peerHost, error=str(e))
            self.end("bad media")
            return
        self._deliver(events)

    def _deliver(self, events: list[Any]) -> None:
        stream = self.stream
        if stream is None:
            return
        for ev in events:
            t = type(ev)
            if t is Video:
                stream.videoReceived(ev.timestamp_ms, ev.tag_body)
            elif t is Audio:
                stream.audioReceived(ev.timestamp_ms, ev.tag_body)
            elif t is VideoConfig:
                stream.videoReceived(ev.timestamp_ms, ev.tag_body)
            elif t is AudioConfig:
                stream.audioReceived(ev.timestamp_ms, ev.tag_body)

    def kick(self, reason: str) -> None:
        self._log.info("ending SRT session of {peer}: {reason}", peer=self.peerHost,
                       reason=reason)
        self.end(reason, shutdown=True)

    def end(self, reason: str, shutdown: bool = False) -> None:
        if self.ended:
            return
        self.ended = True
        if self.conn is not None:
            self._listener._forget(self, shutdown)
        try:
            self._deliver(self.demux.flush())
        except MediaError:
            pass
        self.stream = None
        publication, self.publication = self.publication, None
        if publication is not None:
            if publication.stream is None and not publication.ended:
                self._log.info("SRT caller {peer} ended before sending media: {reason}",
                               peer=self.peerHost, reason=reason)
            publication.end()


class SRTListener(DatagramProtocol):
    """
    C{udp:4200}: every caller on one port.
    """

    _log = Logger()

    def __init__(self, access: IAccess, clock: IReactorTime, metrics: Metrics,
                 latency_ms: int = 120) -> None:
        """
        @param access: the one door: every caller's publish goes through it.
        @param clock: the handshake deadlines' and the ticks' clock.
        @param metrics: where packets, bytes and connections are counted.
        @param latency_ms: the receiver's latency (TSBPD), milliseconds.
        """
        self.access = access
        self.clock = clock
        self._ids: set[int] = set()
        self.listener = Listener(secrets.token_bytes(32), self._newSocketId,
                                 latency_ms=latency_ms)
        self.sessions: dict[int, SRTSession] = {}  # by our socket id
        self._ticker: Optional[LoopingCall] = None
        m = metrics
        self._packets = m.counter("tokengate_srt_packets",
                                  "SRT data packets, by what became of them", ["kind"])
        self._bytesIn = m.bytes.labels("srt", "in")
        m.callbackGauge("tokengate_srt_connections", "SRT callers connected",
                        lambda: len(self.sessions))
        self._last: dict[int, tuple[int, int, int, int]] = {}
        self._kinds = [(kind, self._packets.labels(kind))
                       for kind in ("received", "retransmitted", "dropped", "lost")]
        self._ticks = 0

    def _newSocketId(self) -> int:
        while True:
            sid = int.from_bytes(os.urandom(4), "big") & 0x3FFFFFFF
            if sid and sid not in self._ids:
                self._ids.add(sid)
                return sid

    def startProtocol(self) -> None:
        # The ticker runs while there are sessions (it only serves them): a
        # port nobody publishes to costs no wake-ups (it cost 100 a second).
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self.clock

    def stopProtocol(self) -> None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        for session in list(self.sessions.values()):
            session.end("shutdown", shutdown=True)

    # --- datagrams -----------------------------------------------------------------

    def _send(self, data: bytes, addr: Any) -> None:
        transport = self.transport
        if transport is not None:
            transport.write(data, addr)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        now = self.clock.seconds()
        self._bytesIn.inc(len(data))
        try:
            dst = peek_dst(data)
            if dst == 0:
                self._handshake(data, addr, now)
                return
            conn = self.listener.lookup(dst, addr)
            if conn is None:
                return
            session = self.sessions.get(dst)
            events = conn.receive(data, now)
            transport = self.transport
            if transport is not None:
                for out in conn.data_to_send():
                    transport.write(out, addr)
        except SRTProtocolError:
            return  # a malformed datagram is dropped; the connection goes on
        if session is not None:
            self._events(session, events)

    def _events(self, session: SRTSession, events: list[Any]) -> None:
        for ev in events:
            if type(ev) is Payload:
                session.payload(ev.data)
            elif type(ev) is Closed:
                self._log.info("SRT caller {peer} left: {reason}", peer=session.peerHost,
                               reason=ev.reason)
                session.end(ev.reason)

    def _tick(self) -> None:
        now = self.clock.seconds()
        self._ticks += 1
        count = self._ticks % 100 == 0  # statistics once a second
        for sid, session in list(self.sessions.items()):
            conn = session.conn
            if conn is None:
                continue
            try:
                for out in conn.tick(now):
                    self._send(out, conn.peer)
                self._events(session, conn.take_events())
            except Exception:
                self._log.failure("SRT connection tick failed")
                session.end("error", shutdown=True)
            if count:
                self._count(sid, conn)

    def _count(self, sid: int, conn: Connection) -> None:
        s = conn.stats()
        last = self._last.get(sid, (0, 0, 0, 0))
        now = (s.packets_received, s.packets_retransmitted, s.packets_dropped, s.packets_lost)
        for (kind, counter), a, b in zip(self._kinds, now, last):
            if a > b:
                counter.inc(a - b)
        self._last[sid] = now

    # --- handshake -------------------------------------------------------------------

    def _handshake(self, data: bytes, addr: Any, now: float) -> None:
        decision = self.listener.handle_handshake(data, addr, now)
        if isinstance(decision, NeedsAuthorization):
            self._authorize(decision, addr)
        elif isinstance(decision, Rejected):
            self.access.refuse(AccessRequest("", "", PUBLISH, "srt", addr[0]), Outcome.INVALID,
                               attempt=_attempt("rejected", str(decision.code)))
            if decision.data:
                self._send(decision.data, addr)
        elif isinstance(decision, Reply) and decision.data:
            self._send(decision.data, addr)

    def _reject(self, decision: NeedsAuthorization, code: int) -> None:
        reply = self.listener.reject(decision, code, self.clock.seconds())
        self._send(reply, decision.peer)

    def _authorize(self, decision: NeedsAuthorization, addr: Any) -> None:
        """
        Translate the caller's stream id into an L{AccessRequest} (answered
        by C{decision.answer_by}) and its outcome into the agreement or a
        reject code.
        """
        peer = addr[0]
        if decision.error is not None or decision.request is None:
            self.access.refuse(AccessRequest("", "", PUBLISH, "srt", peer), Outcome.INVALID,
                               attempt=_attempt("stream id", decision.stream_id))
            self._reject(decision, REJX_BAD_REQUEST)
            return
        wire = decision.request
        request = AccessRequest(wire.app, wire.stream_id, PUBLISH, "srt", peer, wire.token,
                                deadline=decision.answer_by, subscriberId=wire.subscriberId,
                                subscriberCode=wire.subscriberCode,
                                params=tuple(wire.extra.items()))
        if wire.mode != "publish":
            # play over SRT (m=request) is not served
            self.access.refuse(request, Outcome.DISABLED)
            self._reject(decision, rejectCode(Outcome.DISABLED))
            return
        session = SRTSession(self, peer, wire.app, wire.stream_id)
        d = self.access.publish(request, session)

        def admitted(publication: Publication) -> None:
            reply, conn = self.listener.accept(decision, self.clock.seconds())
            session.publication = publication
            session.conn = conn
            self.sessions[conn.socket_id] = session
            ticker = self._ticker
            if ticker is not None and not ticker.running:
                ticker.start(TICK, now=False)
            self._send(reply, decision.peer)

        def refused(failure: Any) -> None:
            failure.trap(Refused)
            self._reject(decision, rejectCode(failure.value.outcome))

        def unexpected(failure: Any) -> None:
            self._log.failure("SRT authorization failed", failure)
            self._reject(decision, REJX_DOWN)

        d.addCallbacks(admitted, refused)
        d.addErrback(unexpected)

    def _forget(self, session: SRTSession, shutdown: bool) -> None:
        conn = session.conn
        if conn is None:
            return
        self._count(conn.socket_id, conn)
        self.sessions.pop(conn.socket_id, None)
        self._last.pop(conn.socket_id, None)
        if not self.sessions and self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._ids.discard(conn.socket_id)
        if shutdown and self.transport is not None:
            try:
                self.transport.write(conn.close(self.clock.seconds()), conn.peer)
            except Exception:
                pass
        self.listener.remove(conn)


def _attempt(*parts: str) -> bytes:
    """
    What identifies a caller's attempt refused before the gate, for the
    throttle (a retry of it counts once).
    """
    what = "\0".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.sha256(what).digest()[:16]
