# -*- test-case-name: tests.test_srt_connection -*-
"""
The listener side of SRT, sans-IO: stream id parsing, the HSv5
caller-listener handshake with an asynchronous authorization step, and a
receiver connection (ACK, NAK, DROPREQ, TSBPD too-late drop, keepalive,
idle timeout, shutdown).

No Twisted, no sockets, no clock: every method that needs the time takes
``now`` (seconds, float, from a monotonic clock), and everything to send is
returned as encoded datagrams (``bytes``) for the adapter to write to the
peer's address.

Adapter outline (one UDP port for every peer; dispatch on the destination
socket id, 0 being the listener)::

    listener = Listener(secret, new_socket_id)

    def datagramReceived(data, addr):
        now = clock.seconds()
        try:
            dst = peek_dst(data)
            if dst == 0:
                decision = listener.handle_handshake(data, addr, now)
                if isinstance(decision, NeedsAuthorization):
                    authorize(decision)          # async; later accept/reject
                elif decision.data:              # Reply or Rejected
                    transport.write(decision.data, addr)
                return                           # Drop, Pending: nothing
            conn = listener.lookup(dst, addr)
            if conn is not None:
                events = conn.receive(data, now)
                for d in conn.data_to_send(): transport.write(d, addr)
                ...dispatch events (Payload -> TSDemuxer.feed, Closed -> cleanup)
        except SRTProtocolError:
            pass                                 # drop the datagram

    # authorization done (a bad stream id: reject with decision.error.code):
    reply, conn = listener.accept(decision, now)     # or
    reply = listener.reject(decision, REJX_UNAUTHORIZED, now)
    transport.write(reply, decision.peer)

    # every 10 ms per connection:
    for d in conn.tick(now): transport.write(d, conn.peer)
    for event in conn.take_events(): ...
    # when a connection is done (Closed, or kicked with conn.close(now)):
    listener.remove(conn)

Reject codes go on the wire as reqtype = 1000 + code (libsrt
``URQFailure``, srtcore/handshake.h): SRT_REJX_UNAUTHORIZED 1401 is 2401,
SRT_REJ_UNSECURE 11 is 1011.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from typing import Any, Callable, Optional, Union
from urllib.parse import unquote

from attrs import define, field, frozen

from tokengate.access.names import isValidAppName, isValidStreamId
from tokengate.srt import packets as P
from tokengate.srt.errors import SRTProtocolError

__all__ = [
    # reject reasons
    "REJ_RESOURCE",
    "REJ_ROGUE",
    "REJ_VERSION",
    "REJ_UNSECURE",
    "REJ_MESSAGEAPI",
    "REJ_CONGESTION",
    "REJ_FILTER",
    "REJ_GROUP",
    "REJX_BAD_REQUEST",
    "REJX_UNAUTHORIZED",
    "REJX_OVERLOAD",
    "REJX_FORBIDDEN",
    "REJX_NOTFOUND",
    "REJX_BAD_MODE",
    "REJX_CONFLICT",
    "REJX_ISE",
    "REJX_DOWN",
    # stream id
    "BadStreamId",
    "StreamRequest",
    "parse_stream_id",
    # listener
    "HandshakeDecision",
    "Reply",
    "Drop",
    "Pending",
    "Rejected",
    "NeedsAuthorization",
    "Listener",
    # connection
    "Payload",
    "Closed",
    "ConnectionStats",
    "Connection",
]

# Reject reasons (libsrt srt.h SRT_REJECT_REASON and access_control.h).
REJ_RESOURCE = 3
REJ_ROGUE = 4
REJ_VERSION = 8
REJ_UNSECURE = 11
REJ_MESSAGEAPI = 12
REJ_CONGESTION = 13
REJ_FILTER = 14
REJ_GROUP = 15
REJX_BAD_REQUEST = 1400
REJX_UNAUTHORIZED = 1401
REJX_OVERLOAD = 1402
REJX_FORBIDDEN = 1403
REJX_NOTFOUND = 1404
REJX_BAD_MODE = 1405
REJX_CONFLICT = 1409
REJX_ISE = 1500
REJX_DOWN = 1503

# ---------------------------------------------------------------------------
# Stream id
# ---------------------------------------------------------------------------

MODE_PUBLISH = "publish"
MODE_REQUEST = "request"
_MODES = frozenset({MODE_PUBLISH, MODE_REQUEST})
_ACCESS_CONTROL_PREFIX = "#!::"


class BadStreamId(SRTProtocolError):
    """The stream id is missing or malformed; reject with :attr:`code` (1400)."""

    code = REJX_BAD_REQUEST


@frozen
class StreamRequest:
    """
    What a caller's stream id asks for.  ``mode`` is ``"publish"`` or
    ``"request"`` (play); ``token`` is None when none was given; ``extra``
    holds the other keys (``subscriberId``, ``subscriberCode``, ``s``, ...),
    percent-decoded.
    """

    app: str
    stream_id: str
    token: Optional[str]
    mode: str = MODE_PUBLISH
    extra: dict = field(factory=dict, hash=False)


def _pct(value: str, what: str) -> str:
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError as e:
        raise BadStreamId(f"{what} is not UTF-8 once percent-decoded") from e


def _resource(value: str) -> tuple[str, str]:
    app, sep, stream = value.partition("/")
    if not sep:
        raise BadStreamId("the stream id needs App/StreamId")
    app, stream = _pct(app, "application"), _pct(stream, "stream id")
    if not app or not stream or "/" in app or "/" in stream:
        raise BadStreamId("the stream id needs App/StreamId")
    # The grammar every protocol shares, on the decoded names.
    if not isValidAppName(app):
        raise BadStreamId("the application name is not a valid one")
    if not isValidStreamId(stream):
        raise BadStreamId("the stream id is not a valid one")
    return app, stream


def parse_stream_id(raw: str) -> StreamRequest:
    """
    Parse a caller's stream id.  Two forms:

    - the reference form ``App/StreamId,token=T[,subscriberId=..,
      subscriberCode=..]``, mode publish;
    - the SRT access-control form ``#!::r=App/StreamId,m=publish,token=T``:
      ``r`` the resource, ``m`` the mode (``publish`` or ``request``,
      default ``request`` as the SRT access-control specification says),
      ``u`` (user) ignored.

    In both, ``token`` or ``t`` is the token (``token`` wins when both are
    there; note that the SRT specification uses ``t`` for a resource type,
    here it is a token).  Values are percent-decoded (ffmpeg passes streamid
    through undecoded).  Duplicate keys, keys without ``=``, an unknown mode
    or more than 512 bytes raise :class:`BadStreamId`.
    """
    if not isinstance(raw, str):
        raise BadStreamId("the stream id must be a str")
    if len(raw.encode("utf-8", "surrogatepass")) > P.MAX_STREAM_ID:
        raise BadStreamId(f"stream id longer than {P.MAX_STREAM_ID} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise BadStreamId("control characters in the stream id")
    access_control = raw.startswith(_ACCESS_CONTROL_PREFIX)
    if access_control:
        items = raw[len(_ACCESS_CONTROL_PREFIX) :].split(",")
        resource = None
    else:
        items = raw.split(",")
        resource = items.pop(0)
        if not resource:
            raise BadStreamId("empty stream id")
    keys: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadStreamId(f"{item!r} is not key=value")
        if key in keys:
            raise BadStreamId(f"duplicate key {key!r}")
        keys[key] = value
    if access_control:
        resource = keys.pop("r", None)
        if resource is None:
            raise BadStreamId("no r= resource in the stream id")
    app, stream = _resource(resource)
    mode = keys.pop("m", MODE_REQUEST if access_control else MODE_PUBLISH)
    if mode not in _MODES:
        raise BadStreamId(f"unsupported mode {mode!r}")
    token = keys.pop("token", None)
    if token is None:
        token = keys.pop("t", None)
    if token is not None:
        token = _pct(token, "token")
        if not token:
            token = None
    keys.pop("u", None)
    extra = {key: _pct(value, key) for key, value in keys.items()}
    return StreamRequest(app, stream, token, mode, extra)


# ---------------------------------------------------------------------------
# Listener
# ---------------------------------------------------------------------------

Peer = tuple  # (host, port)


class HandshakeDecision:
    """Base class of what :meth:`Listener.handle_handshake` returns."""

    data: Optional[bytes] = None


@frozen
class Reply(HandshakeDecision):
    """Send ``data`` to the peer: an induction response, or a repeated answer."""

    data: bytes


@frozen
class Drop(HandshakeDecision):
    """Send nothing (bad cookie, unexpected handshake type, ...)."""

    reason: str
    data: None = None


@frozen
class Pending(HandshakeDecision):
    """A decision for this caller is already being authorized: send nothing."""

    peer: Peer
    caller_socket_id: int
    data: None = None


@frozen
class Rejected(HandshakeDecision):
    """
    The listener itself rejected the caller (encryption asked for, HSv4,
    missing HSREQ, over capacity...): send ``data``.
    """

    peer: Peer
    caller_socket_id: int
    code: int
    reason: str
    data: bytes


@define(eq=False)
class NeedsAuthorization(HandshakeDecision):
    """
    A well-formed conclusion with a valid cookie: resolve it with
    :meth:`Listener.accept` or :meth:`Listener.reject`.

    ``request`` is the parsed stream id, or None when it was missing or
    malformed; then ``error`` is the :class:`BadStreamId` and the adapter
    should reject with ``error.code`` (1400).  ``stream_id`` is the raw
    decoded string ("" when absent or undecodable).

    ``answer_by`` is when the answer must be sent at the latest for the
    caller to still be waiting for it: the caller's connect timeout counted
    from the start of its connect (its conclusion's timestamp is the time
    since then), less a margin for the way back; never before
    ``received_at``.  The other attributes describe the caller; the private
    ones are for the listener.
    """

    peer: Peer
    caller_socket_id: int
    request: Optional[StreamRequest]
    stream_id: str
    error: Optional[BadStreamId]
    srt_version: int
    srt_flags: int
    latency_ms: int
    received_at: float
    answer_by: float
    _handshake: P.Handshake
    _hsreq: P.HSReq
    _resolved: bool = False
    data: None = None


def _key(peer: Peer, socket_id: int) -> tuple:
    return (peer[0], peer[1], socket_id)


class Listener:
    """
    The listener side of the HSv5 caller-listener handshake.

    Inductions are answered with a cookie (an HMAC of the caller's address
    and the minute, truncated to 32 bits) and leave no state.  A conclusion
    whose cookie is valid for this minute or the previous one becomes one
    :class:`NeedsAuthorization` per (address, caller socket id); while it
    is unresolved, repeats of that conclusion get :class:`Pending`; once
    accepted, the same agreement bytes again (same listener socket id);
    once rejected, the same rejection again for ``rejection_ttl`` seconds
    (at most ``max_rejections`` remembered).

    The listener rejects by itself (:class:`Rejected`, cached like any
    rejection) an HSv4 conclusion or SRT older than 1.3 (:data:`REJ_VERSION`),
    encryption (a KMREQ: :data:`REJ_UNSECURE`, wire 1011; AES is not
    implemented), a missing or short HSREQ (:data:`REJ_ROGUE`), the stream
    (file) API (:data:`REJ_MESSAGEAPI`), a congestion controller other than
    live (:data:`REJ_CONGESTION`), packet filters (:data:`REJ_FILTER`) and
    groups (:data:`REJ_GROUP`).  A missing or malformed stream id is not
    rejected here: the decision carries the :class:`BadStreamId` so that
    the adapter can count it and reject with its code (1400).

    The agreement (HSv5, reqtype CONCLUSION, to the caller's socket id) echoes
    the caller's ISN and cookie, carries the listener socket id, MSS =
    min(ours, the caller's), our flight window and an HSRSP: SRT 1.5.1;
    TSBPDRCV when the caller sends with TSBPD, TSBPDSND when it receives with
    it, TLPKTDROP, NAKREPORT, REXMITFLG when the caller has it; latencies
    max(``latency_ms``, the caller's proposal) in each direction.

    A caller waits ``connect_timeout`` seconds for its connection (libsrt's
    SRTO_CONNTIMEO, 3 s by default) from the start of its connect, which its
    conclusion's timestamp tells (microseconds since then; taken at most as
    ``connect_timeout``); each decision's ``answer_by`` is that deadline
    less ``answer_margin`` (the way back to the caller), so that an adapter
    can answer while the caller still listens.

    Limits: ``max_connections`` counts accepted open connections and
    pending decisions together; beyond it callers are rejected with
    :data:`REJ_RESOURCE`.  Pending decisions older than ``pending_timeout``
    are forgotten (a late accept or reject of one still works).

    ``connections`` maps the listener socket id of every accepted, not yet
    removed connection to its :class:`Connection`.
    """

    def __init__(
        self,
        secret: bytes,
        local_socket_id_factory: Callable[[], int],
        latency_ms: int = 120,
        mss: int = 1500,
        max_connections: int = 1000,
        *,
        flight_window: int = 8192,
        receive_buffer: int = 8192,
        peer_idle_timeout: float = 5.0,
        rejection_ttl: float = 10.0,
        max_rejections: int = 4096,
        pending_timeout: float = 30.0,
        connect_timeout: float = 3.0,
        answer_margin: float = 0.5,
    ) -> None:
        if not secret:
            raise ValueError("the cookie secret must not be empty")
        if not 0 <= latency_ms <= 0xFFFF:
            raise ValueError("latency_ms must fit 16 bits")
        if not 76 <= mss <= 65535:
            raise ValueError("bad MSS")
        self._secret = bytes(secret)
        self._new_id = local_socket_id_factory
        self.latency_ms = latency_ms
        self.mss = mss
        self.max_connections = max_connections
        self.flight_window = flight_window
        self.receive_buffer = receive_buffer
        self.peer_idle_timeout = peer_idle_timeout
        self.rejection_ttl = rejection_ttl
        self.max_rejections = max_rejections
        self.pending_timeout = pending_timeout
        self.connect_timeout = connect_timeout
        self.answer_margin = answer_margin
        self.connections: dict[int, Connection] = {}
        self._pending: OrderedDict[tuple, NeedsAuthorization] = OrderedDict()
        self._accepted: dict[tuple, tuple[bytes, Connection]] = {}
        self._rejected: OrderedDict[tuple, tuple[bytes, float]] = OrderedDict()
        self._epoch: Optional[float] = None

    # -- cookies -----------------------------------------------------------

    def cookie(self, peer: Peer, now: float, minute_offset: int = 0) -> int:
        """The cookie for *peer* in the minute of *now* (+ *minute_offset*)."""
        minute = int(now // 60) + minute_offset
        msg = f"{peer[0]}|{peer[1]}|{minute}".encode("utf-8", "surrogatepass")
        return int.from_bytes(hmac.new(self._secret, msg, hashlib.sha256).digest()[:4], "big")

    def _timestamp(self, now: float) -> int:
        if self._epoch is None:
            self._epoch = now
        return int((now - self._epoch) * 1e6) & P.TS_MASK

    # -- handshakes ----------------------------------------------------------

    def handle_handshake(
        self, packet: Union[bytes, P.Handshake], peer: Peer, now: float
    ) -> HandshakeDecision:
        """
        Handle a datagram (or decoded packet) sent to socket id 0.  A
        malformed datagram raises :class:`SRTProtocolError`.
        """
        if not isinstance(packet, P.Handshake):
            if isinstance(packet, (bytes, bytearray, memoryview)):
                packet = P.decode_packet(packet)
            if not isinstance(packet, P.Handshake):
                return Drop("not a handshake")
        self._expire(now)
        if packet.reqtype == P.URQ_INDUCTION:
            return self._induction(packet, peer, now)
        if packet.reqtype == P.URQ_CONCLUSION:
            return self._conclusion(packet, peer, now)
        return Drop(f"unexpected handshake request type {packet.reqtype}")

    def _induction(self, hs: P.Handshake, peer: Peer, now: float) -> HandshakeDecision:
        if hs.version not in (P.HS_VERSION_UDT4, P.HS_VERSION_SRT1):
            return Drop(f"induction with version {hs.version}")
        reply = P.Handshake(
            P.HS_VERSION_SRT1,
            0,
            P.SRT_MAGIC_CODE,
            hs.isn,
            hs.mss,
            hs.ffs,
            P.URQ_INDUCTION,
            hs.socket_id,
            self.cookie(peer, now),
            hs.peer_ip,
            (),
            self._timestamp(now),
            hs.socket_id,
        )
        return Reply(reply.encode())

    def _conclusion(self, hs: P.Handshake, peer: Peer, now: float) -> HandshakeDecision:
        if hs.cookie != self.cookie(peer, now) and hs.cookie != self.cookie(peer, now, -1):
            return Drop("bad cookie")
        key = _key(peer, hs.socket_id)
        done = self._accepted.get(key)
        if done is not None:
            if not done[1].closed:
                return Reply(done[0])
            self.remove(done[1])
        rejected = self._rejected.get(key)
        if rejected is not None:
            return Reply(rejected[0])
        if key in self._pending:
            return Pending(peer, hs.socket_id)

        def refuse(code: int, reason: str) -> Rejected:
            data = self._reject_bytes(hs, code, now)
            self._remember_rejection(key, data, now)
            return Rejected(peer, hs.socket_id, code, reason, data)

        if hs.version != P.HS_VERSION_SRT1:
            return refuse(REJ_VERSION, f"handshake version {hs.version}")
        if hs.ext_flags & P.HS_EXT_KMREQ or hs.extension(P.EXT_KMREQ) is not None:
            return refuse(REJ_UNSECURE, "encryption is not supported")
        ext = hs.extension(P.EXT_HSREQ)
        if ext is None:
            return refuse(REJ_ROGUE, "no HSREQ extension")
        try:
            hsreq = P.HSReq.decode(ext.data)
        except SRTProtocolError:
            return refuse(REJ_ROGUE, "short HSREQ extension")
        if hsreq.srt_version < 0x010300:
            return refuse(REJ_VERSION, f"SRT version {hsreq.srt_version:#x}")
        if hsreq.flags & P.OPT_STREAM:
            return refuse(REJ_MESSAGEAPI, "stream (file) API is not supported")
        cc = hs.extension(P.EXT_CONGESTION)
        if cc is not None:
            try:
                congestion = P.decode_stream_id(cc.data)
            except SRTProtocolError:
                congestion = "?"
            if congestion not in ("", "live"):
                return refuse(REJ_CONGESTION, f"congestion control {congestion!r}")
        if hs.extension(P.EXT_FILTER) is not None:
            return refuse(REJ_FILTER, "packet filters are not supported")
        if hs.extension(P.EXT_GROUP) is not None:
            return refuse(REJ_GROUP, "socket groups are not supported")
        if len(self._pending) + self._open_connections() >= self.max_connections:
            return refuse(REJ_RESOURCE, "too many connections")

        request: Optional[StreamRequest] = None
        error: Optional[BadStreamId] = None
        raw = ""
        sid = hs.extension(P.EXT_SID)
        if sid is None:
            error = BadStreamId("no stream id")
        else:
            try:
                raw = P.decode_stream_id(sid.data)
                request = parse_stream_id(raw)
            except BadStreamId as e:
                error = e
            except SRTProtocolError as e:
                error = BadStreamId(str(e))
        decision = NeedsAuthorization(
            peer,
            hs.socket_id,
            request,
            raw,
            error,
            hsreq.srt_version,
            hsreq.flags,
            self._recv_latency(hsreq),
            now,
            self._answer_by(hs, now),
            hs,
            hsreq,
        )
        self._pending[key] = decision
        return decision

    def _answer_by(self, hs: P.Handshake, now: float) -> float:
        elapsed = min(hs.timestamp / 1e6, self.connect_timeout)
        return now + max(0.0, self.connect_timeout - elapsed - self.answer_margin)

    def _recv_latency(self, hsreq: P.HSReq) -> int:
        if not hsreq.flags & P.OPT_TSBPDSND:
            return 0
        return max(self.latency_ms, hsreq.send_latency)

    def _open_connections(self) -> int:
        if len(self.connections) + len(self._pending) >= self.max_connections:
            for conn in [c for c in self.connections.values() if c.closed]:
                self.remove(conn)
        return len(self.connections)

    def _expire(self, now: float) -> None:
        rejected = self._rejected
        while rejected:
            key, (_, expires) = next(iter(rejected.items()))
            if expires > now:
                break
            del rejected[key]
        pending = self._pending
        while pending:
            key, decision = next(iter(pending.items()))
            if decision.received_at + self.pending_timeout > now:
                break
            del pending[key]

    def _remember_rejection(self, key: tuple, data: bytes, now: float) -> None:
        self._rejected.pop(key, None)
        self._rejected[key] = (data, now + self.rejection_ttl)
        while len(self._rejected) > self.max_rejections:
            self._rejected.popitem(last=False)

    def _reject_bytes(self, hs: P.Handshake, code: int, now: float) -> bytes:
        return P.Handshake(
            hs.version,
            hs.enc_flags,
            hs.ext_flags,
            hs.isn,
            hs.mss,
            hs.ffs,
            P.reject_reqtype(code),
            hs.socket_id,
            hs.cookie,
            hs.peer_ip,
            (),
            self._timestamp(now),
            hs.socket_id,
        ).encode()

    def _resolve(self, decision: NeedsAuthorization) -> tuple:
        if not isinstance(decision, NeedsAuthorization):
            raise TypeError("accept and reject take a NeedsAuthorization")
        if decision._resolved:
            raise ValueError("this decision was already resolved")
        decision._resolved = True
        key = _key(decision.peer, decision.caller_socket_id)
        if self._pending.get(key) is decision:
            del self._pending[key]
        return key

    def accept(self, decision: NeedsAuthorization, now: float) -> tuple[bytes, Connection]:
        """
        Accept the caller: the agreement datagram to send and the new
        :class:`Connection` (registered in :attr:`connections`).
        """
        if decision.error is not None:
            raise ValueError("a decision with a bad stream id can only be rejected")
        key = self._resolve(decision)
        hs = decision._handshake
        hsreq = decision._hsreq
        for _ in range(100):
            socket_id = self._new_id()
            if not isinstance(socket_id, int) or not 0 < socket_id <= P.SEQ_MASK:
                raise ValueError(f"socket id factory returned {socket_id!r}")
            if socket_id not in self.connections:
                break
        else:
            raise ValueError("socket id factory keeps returning ids in use")
        recv_latency = decision.latency_ms
        flags = P.OPT_TLPKTDROP | P.OPT_NAKREPORT
        latency_word_snd = 0
        if hsreq.flags & P.OPT_TSBPDSND:
            flags |= P.OPT_TSBPDRCV
        if hsreq.flags & P.OPT_TSBPDRCV:
            flags |= P.OPT_TSBPDSND
            latency_word_snd = max(self.latency_ms, hsreq.recv_latency)
        if hsreq.flags & P.OPT_REXMITFLG:
            flags |= P.OPT_REXMITFLG
        hsrsp = P.HSReq(P.SRT_VERSION, flags, recv_latency, latency_word_snd)
        reply = P.Handshake(
            P.HS_VERSION_SRT1,
            0,
            P.HS_EXT_HSREQ,
            hs.isn,
            min(self.mss, hs.mss),
            self.flight_window,
            P.URQ_CONCLUSION,
            socket_id,
            hs.cookie,
            P.encode_peer_ip(decision.peer[0]) if _is_ip(decision.peer[0]) else bytes(16),
            (P.HandshakeExtension(P.EXT_HSRSP, hsrsp.encode()),),
            self._timestamp(now),
            hs.socket_id,
        ).encode()
        conn = Connection(
            hs.socket_id,
            socket_id,
            hs.isn,
            decision.received_at,
            peer=decision.peer,
            request=decision.request,
            hs_timestamp=hs.timestamp,
            latency_ms=recv_latency,
            tsbpd=bool(hsreq.flags & P.OPT_TSBPDSND),
            rexmit_flag=bool(hsreq.flags & P.OPT_REXMITFLG),
            mss=min(self.mss, hs.mss),
            receive_buffer=self.receive_buffer,
            idle_timeout=self.peer_idle_timeout,
            handshake_reply=reply,
            start_time=now,
        )
        self.connections[socket_id] = conn
        self._accepted[key] = (reply, conn)
        return reply, conn

    def reject(self, decision: NeedsAuthorization, code: int, now: Optional[float] = None) -> bytes:
        """
        Reject the caller with reason *code* (e.g. :data:`REJX_UNAUTHORIZED`
        1401, on the wire 2401): the datagram to send.  The caller's repeats
        get the same datagram for ``rejection_ttl`` seconds.
        """
        key = self._resolve(decision)
        if now is None:
            now = decision.received_at
        data = self._reject_bytes(decision._handshake, code, now)
        self._remember_rejection(key, data, now)
        return data

    def lookup(self, socket_id: int, peer: Optional[Peer] = None) -> Optional[Connection]:
        """
        The open connection with listener socket id *socket_id*, if it
        exists and (when *peer* is given) belongs to that address.
        """
        conn = self.connections.get(socket_id)
        if conn is None or (peer is not None and tuple(peer) != tuple(conn.peer)):
            return None
        return conn

    def remove(self, conn: Connection) -> None:
        """Forget a finished connection (its repeats of the handshake too)."""
        if self.connections.get(conn.socket_id) is conn:
            del self.connections[conn.socket_id]
        key = _key(conn.peer, conn.peer_socket_id)
        done = self._accepted.get(key)
        if done is not None and done[1] is conn:
            del self._accepted[key]

    @property
    def pending_count(self) -> int:
        """Decisions handed out and not yet resolved (nor expired)."""
        return len(self._pending)


def _is_ip(host: Any) -> bool:
    try:
        P.encode_peer_ip(host)
        return True
    except SRTProtocolError:
        return False


# ---------------------------------------------------------------------------
# Connection (receiver)
# ---------------------------------------------------------------------------


@frozen
class Payload:
    """In-order payload bytes (a byte stream: MPEG-TS, not aligned to 188)."""

    data: bytes


@frozen
class Closed:
    """The connection is over: the peer shut down or went idle."""

    reason: str


@frozen
class ConnectionStats:
    """
    Counters.  ``packets_lost`` counts sequence numbers found missing (each
    once); ``packets_dropped`` those given up for good (too late, or the
    sender's DROPREQ); ``packets_overflow`` packets discarded because the
    receive buffer was full; ``packets_duplicate`` those already had.
    """

    packets_received: int
    bytes_received: int
    packets_retransmitted: int
    packets_duplicate: int
    packets_lost: int
    packets_dropped: int
    packets_overflow: int
    bytes_delivered: int
    acks_sent: int
    naks_sent: int
    rtt_us: int
    rtt_var_us: int


_HDR = struct.Struct(">IIII")
_FULL_ACK = struct.Struct(">11I")
_ACK_WORD0 = 0x80000000 | P.CTRL_ACK << 16
_SEQ_HALF = 0x40000000
_TS_HALF = 0x80000000
_MISSING = object()
_REXMIT = 0x04000000
_ACK_WINDOW = 1024
_DRIFT_SAMPLES = 1000


class Connection:
    """
    One accepted caller, receiver side.

    - ``receive(datagram, now) -> list`` of :class:`Payload` (at most one,
      all the in-order bytes this datagram released) and :class:`Closed`.
      Replies it calls for at once (a NAK for a new gap, the agreement again
      for a repeated conclusion) are queued: send ``data_to_send()``.  A
      malformed datagram raises :class:`SRTProtocolError`: drop it, the
      connection goes on.  Payload released by a tick and not yet collected
      with ``take_events()`` is returned first, so bytes stay in order.
    - ``tick(now) -> list[bytes]``: call every 10 ms or so.  Returns what to
      send: a full ACK every ``ack_interval`` while there is something to
      acknowledge (again after RTT+4*RTTVar if no ACKACK came), periodic
      NAKs every max(RTT+4*RTTVar, 20 ms) while a gap lasts, a KEEPALIVE
      after a second without sending.  Events it causes (payload released
      by a too-late drop, :class:`Closed` after ``idle_timeout`` seconds
      without a packet from the peer) are collected by ``take_events()``.
    - ``close(now) -> bytes``: a SHUTDOWN to send; the connection is then
      closed (no event).

    Timestamps are unwrapped to a continuous microsecond timeline and
    sequence numbers to unbounded integers internally, so both wrap
    around transparently.  Packets more than ``receive_buffer`` sequence
    numbers ahead of the next expected one, or beyond
    ``max_buffer_bytes`` of held payload, are discarded and counted.

    Construction: ``Connection(peer_socket_id, socket_id, isn, now, *,
    ...)`` where *now* is when the caller's conclusion arrived (with
    ``hs_timestamp``, its timestamp, it anchors TSBPD) and ``start_time``
    (default *now*) when the connection was accepted (timers and our
    timestamps start there).  :meth:`Listener.accept` fills all of it in.
    State: ``closed``, ``close_reason``, ``next_seq``, ``lost_sequences``,
    ``buffered_packets``, ``rtt_us``, ``rtt_var_us``, ``request`` (the
    :class:`StreamRequest`), ``peer``; counters as attributes and in
    ``stats()`` (:class:`ConnectionStats`).

    TSBPD: the base is the conclusion's arrival time minus its timestamp;
    a packet's play time is base + timestamp + latency + drift (drift
    averaged from ACKACK timestamps, 1000 samples, as libsrt does).  Data
    are delivered as soon as they are contiguous; a gap is given up when
    the first packet after it is due to play.
    """

    def __init__(
        self,
        peer_socket_id: int,
        socket_id: int,
        isn: int,
        now: float,
        *,
        peer: Peer = ("", 0),
        request: Optional[StreamRequest] = None,
        hs_timestamp: int = 0,
        latency_ms: int = 120,
        tsbpd: bool = True,
        rexmit_flag: bool = True,
        mss: int = 1500,
        receive_buffer: int = 8192,
        max_buffer_bytes: int = 16 << 20,
        idle_timeout: float = 5.0,
        ack_interval: float = 0.01,
        keepalive_interval: float = 1.0,
        handshake_reply: Optional[bytes] = None,
        start_time: Optional[float] = None,
    ) -> None:
        self.peer = peer
        self.peer_socket_id = peer_socket_id
        self.socket_id = socket_id
        self.request = request
        self.latency_ms = latency_ms
        self.tsbpd = tsbpd
        self.rexmit_flag = rexmit_flag
        self.mss = mss
        self.receive_buffer = receive_buffer
        self.max_buffer_bytes = max_buffer_bytes
        self.idle_timeout = idle_timeout
        self.ack_interval = ack_interval
        self.keepalive_interval = keepalive_interval
        self.closed = False
        self.close_reason: Optional[str] = None
        self._handshake_reply = handshake_reply
        self._start = now if start_time is None else start_time

        # Receive state: unwrapped sequence numbers.
        self._next = isn & P.SEQ_MASK  # first not yet delivered
        self._next_wire = self._next
        self._highest = self._next - 1  # highest received (or skipped)
        self._buf: dict[int, Optional[tuple[bytes, int]]] = {}
        self._buf_bytes = 0
        self._lost: set[int] = set()

        # TSBPD
        self._ts_ref = hs_timestamp
        self._base = now - hs_timestamp / 1e6
        self._latency = latency_ms / 1000.0
        self._drift = 0.0
        self._drift_sum = 0.0
        self._drift_n = 0

        # ACK / RTT
        self._ack_no = 0
        self._acks: dict[int, tuple[float, int]] = {}
        self._last_ack_seq = self._next  # last acknowledged (unwrapped)
        self._last_ackack_seq = self._next
        self._last_ack_time = -1e18
        self._next_ack = self._start
        self.rtt_us = 100_000
        self.rtt_var_us = 50_000
        self._rtt_seen = False
        self._next_nak = self._start

        # Rates for the full ACK
        self._rate_t0 = self._start
        self._rate_pkts = 0
        self._rate_bytes = 0
        self._pkt_rate = 0
        self._byte_rate = 0
        self._peak_rate = 0

        self._last_recv = self._start
        self._last_send = self._start
        self._outbox: list[bytes] = []
        self._events: list = []

        # Statistics
        self.packets_received = 0
        self.bytes_received = 0
        self.packets_retransmitted = 0
        self.packets_duplicate = 0
        self.packets_lost = 0
        self.packets_dropped = 0
        self.packets_overflow = 0
        self.bytes_delivered = 0
        self.acks_sent = 0
        self.naks_sent = 0

    # -- public API ------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The next sequence number expected in order (wire form)."""
        return self._next & P.SEQ_MASK

    @property
    def buffered_packets(self) -> int:
        """Packets held out of order, waiting for a gap to fill."""
        return len(self._buf)

    @property
    def lost_sequences(self) -> list[int]:
        """The sequence numbers currently missing (wire form), sorted."""
        return [s & P.SEQ_MASK for s in sorted(self._lost)]

    def stats(self) -> ConnectionStats:
        return ConnectionStats(
            self.packets_received,
            self.bytes_received,
            self.packets_retransmitted,
            self.packets_duplicate,
            self.packets_lost,
            self.packets_dropped,
            self.packets_overflow,
            self.bytes_delivered,
            self.acks_sent,
            self.naks_sent,
            self.rtt_us,
            self.rtt_var_us,
        )

    def data_to_send(self) -> list[bytes]:
        """Datagrams queued by :meth:`receive`, to send now."""
        out = self._outbox
        if out:
            self._outbox = []
            self._last_send = self._now_hint
        return out

    _now_hint = 0.0

    def take_events(self) -> list:
        """Events caused by :meth:`tick` (late-drop payload, :class:`Closed`)."""
        events = self._events
        self._events = []
        return events

    def close(self, now: float) -> bytes:
        """Close locally: the SHUTDOWN datagram to send."""
        self._close("closed locally")
        return P.Shutdown(self._ts(now), self.peer_socket_id).encode()

    def _ts(self, now: float) -> int:
        return int((now - self._start) * 1e6) & P.TS_MASK

    def _close(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self._buf.clear()
        self._buf_bytes = 0
        self._lost.clear()
        self._outbox = []

    # -- receiving -------------------------------------------------------------

    def receive(self, datagram: bytes, now: float) -> list:
        events = self._receive(datagram, now)
        if self._events:
            # payload a tick released but nobody collected yet comes first
            events = self._events + events
            self._events = []
        return events

    def _receive(self, datagram: bytes, now: float) -> list:
        if self.closed:
            return []
        try:
            w0, w1, ts, _dst = _HDR.unpack_from(datagram)
        except (struct.error, TypeError) as e:
            raise SRTProtocolError("datagram shorter than the SRT header") from e
        self._last_recv = now
        self._now_hint = now
        if w0 & 0x80000000:
            return self._control(w0, w1, ts, datagram, now)

        # ---- data packet: the hot path ----
        payload = datagram[16:]
        size = len(payload)
        self.packets_received += 1
        self.bytes_received += size
        self._rate_pkts += 1
        self._rate_bytes += size
        if w1 & _REXMIT and self.rexmit_flag:
            self.packets_retransmitted += 1
        # Timestamps on a continuous timeline.
        ref = self._ts_ref
        ts_ext = ref + (((ts - ref + _TS_HALF) & 0xFFFFFFFF) - _TS_HALF)
        if ts_ext > ref:
            self._ts_ref = ts_ext
        d = ((w0 - self._next_wire + _SEQ_HALF) & 0x7FFFFFFF) - _SEQ_HALF
        buf = self._buf
        if d == 0 and not buf:
            nxt = self._next + 1
            self._next = nxt
            self._next_wire = nxt & 0x7FFFFFFF
            self._highest = nxt - 1
            self.bytes_delivered += size
            return [Payload(payload)]
        if d < 0:
            self.packets_duplicate += 1
            return []
        if d >= self.receive_buffer:
            self.packets_overflow += 1
            return []
        seq = self._next + d
        if seq in buf:
            self.packets_duplicate += 1
            return []
        if d and self._buf_bytes + size > self.max_buffer_bytes:
            # As if it never arrived: a gap (or a NAK) will ask for it again.
            self.packets_overflow += 1
            return []
        if seq > self._highest:
            if seq > self._highest + 1:
                first = self._highest + 1
                self._lost.update(range(first, seq))
                self.packets_lost += seq - first
                self._queue_nak(((first, seq - 1),), now)
                self._next_nak = now + self._nak_interval()
            self._highest = seq
        else:
            self._lost.discard(seq)
        if d == 0:
            parts = [payload]
            self._next += 1
            self._deliver(parts)
            return [Payload(b"".join(parts) if len(parts) > 1 else payload)]
        buf[seq] = (payload, ts_ext)
        self._buf_bytes += size
        return []

    def _deliver(self, parts: list) -> None:
        """Move contiguous buffered packets from the head into *parts*."""
        buf = self._buf
        nxt = self._next
        pop = buf.pop
        delivered = 0
        while buf:
            item = pop(nxt, _MISSING)
            if item is _MISSING:
                break
            nxt += 1
            if item is not None:
                parts.append(item[0])
                n = len(item[0])
                self._buf_bytes -= n
        self._next = nxt
        self._next_wire = nxt & P.SEQ_MASK
        if self._highest < nxt - 1:
            self._highest = nxt - 1
        for p in parts:
            delivered += len(p)
        self.bytes_delivered += delivered

    def _control(self, w0: int, info: int, ts: int, datagram: bytes, now: float) -> list:
        ctype = (w0 >> 16) & 0x7FFF
        if ctype == P.CTRL_ACKACK:
            self._ackack(info, ts, now)
            return []
        if ctype == P.CTRL_KEEPALIVE:
            return []
        if ctype == P.CTRL_DROPREQ:
            packet = P.decode_packet(datagram)
            return self._dropreq(packet.first, packet.last)
        if ctype == P.CTRL_SHUTDOWN:
            self._close("peer shutdown")
            return [Closed("peer shutdown")]
        if ctype == P.CTRL_HANDSHAKE:
            packet = P.decode_packet(datagram)
            if packet.reqtype == P.URQ_CONCLUSION and self._handshake_reply is not None:
                self._outbox.append(self._handshake_reply)
            return []
        # ACK, NAK (we send nothing to be acknowledged), PEERERROR,
        # congestion warning, user-defined: nothing to do.
        P.decode_packet(datagram)  # still refuse malformed ones
        return []

    def _ackack(self, ack_no: int, ts: int, now: float) -> None:
        sent = self._acks.pop(ack_no, None)
        if sent is None:
            return
        sent_at, ack_seq = sent
        rtt = round((now - sent_at) * 1e6)
        if rtt <= 0:
            rtt = 1
        if self._rtt_seen:
            self.rtt_var_us = (3 * self.rtt_var_us + abs(rtt - self.rtt_us)) // 4
            self.rtt_us = (7 * self.rtt_us + rtt) // 8
        else:
            self.rtt_us = rtt
            self.rtt_var_us = rtt // 2
            self._rtt_seen = True
        if ack_seq > self._last_ackack_seq:
            self._last_ackack_seq = ack_seq
        if self.tsbpd:
            ref = self._ts_ref
            ts_ext = ref + (((ts - ref + _TS_HALF) & 0xFFFFFFFF) - _TS_HALF)
            self._drift_sum += now - (self._base + ts_ext / 1e6)
            self._drift_n += 1
            if self._drift_n >= _DRIFT_SAMPLES:
                self._drift = self._drift_sum / self._drift_n
                self._drift_sum = 0.0
                self._drift_n = 0

    def _dropreq(self, first: int, last: int) -> list:
        start = P.seq_unwrap(first, self._next)
        end = start + P.seq_diff(last, first)
        if end < self._next or end < start:
            return []
        start = max(start, self._next)
        limit = self._next + self.receive_buffer - 1
        if start > limit:
            return []  # beyond the receive window: ignore, as for data
        end = min(end, limit)
        buf = self._buf
        if start > self._highest + 1:
            # The sender gave up on packets after a gap we had not seen yet.
            self._lost.update(range(self._highest + 1, start))
            self.packets_lost += start - self._highest - 1
        for s in range(start, end + 1):
            if s not in buf:
                buf[s] = None
                self.packets_dropped += 1
                self._lost.discard(s)
        if end > self._highest:
            self._highest = end
        parts: list = []
        self._deliver(parts)
        return [Payload(b"".join(parts))] if parts else []

    # -- timers ----------------------------------------------------------------

    def _nak_interval(self) -> float:
        return max((self.rtt_us + 4 * self.rtt_var_us) / 1e6, 0.02)

    def _queue_nak(self, ranges, now: float) -> None:
        wire = [(a & P.SEQ_MASK, b & P.SEQ_MASK) for a, b in ranges]
        self._outbox.append(P.Nak(wire, self._ts(now), self.peer_socket_id).encode())
        self.naks_sent += 1

    def _loss_ranges(self) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        limit = max((self.mss - 28 - 16) // 8, 1)
        start = prev = None
        for s in sorted(self._lost):
            if prev is not None and s == prev + 1:
                prev = s
                continue
            if start is not None:
                ranges.append((start, prev))
                if len(ranges) >= limit:
                    return ranges
            start = prev = s
        if start is not None:
            ranges.append((start, prev))
        return ranges

    def _play_time(self, ts_ext: int) -> float:
        return self._base + ts_ext / 1e6 + self._latency + self._drift

    def _drop_too_late(self, now: float) -> None:
        buf = self._buf
        while buf:
            s = self._next + 1
            end = self._highest
            item = None
            while s <= end:
                item = buf.get(s)
                if item is not None:
                    break
                s += 1
            if item is None:
                # only DROPREQ placeholders after the gap: nothing to wait for
                return
            if self._play_time(item[1]) > now:
                return
            for k in range(self._next, s):
                if buf.pop(k, _MISSING) is _MISSING:
                    self.packets_dropped += 1
                self._lost.discard(k)
            self._next = s
            parts: list = []
            self._deliver(parts)
            if parts:
                self._events.append(Payload(b"".join(parts)))

    def tick(self, now: float) -> list[bytes]:
        if self.closed:
            return []
        self._now_hint = now
        out = self._outbox
        self._outbox = []
        if now - self._last_recv >= self.idle_timeout:
            self._close("peer idle timeout")
            self._events.append(Closed("peer idle timeout"))
            return out + [P.Shutdown(self._ts(now), self.peer_socket_id).encode()]
        if self._buf and self.tsbpd:
            self._drop_too_late(now)
        if self._lost and now >= self._next_nak:
            ranges = self._loss_ranges()
            if ranges:
                wire = [(a & P.SEQ_MASK, b & P.SEQ_MASK) for a, b in ranges]
                out.append(P.Nak(wire, self._ts(now), self.peer_socket_id).encode())
                self.naks_sent += 1
            self._next_nak = now + self._nak_interval()
        if now >= self._next_ack:
            self._next_ack = now + self.ack_interval
            ack = self._maybe_ack(now)
            if ack is not None:
                out.append(ack)
        if out:
            self._last_send = now
        elif now - self._last_send >= self.keepalive_interval:
            out.append(P.KeepAlive(self._ts(now), self.peer_socket_id).encode())
            self._last_send = now
        return out

    def _maybe_ack(self, now: float) -> Optional[bytes]:
        elapsed = now - self._rate_t0
        if elapsed >= 0.5:
            self._pkt_rate = int(self._rate_pkts / elapsed)
            self._byte_rate = int(self._rate_bytes / elapsed)
            if self._pkt_rate > self._peak_rate:
                self._peak_rate = self._pkt_rate
            self._rate_t0 = now
            self._rate_pkts = self._rate_bytes = 0
        ack_seq = self._next
        if ack_seq <= self._last_ackack_seq:
            return None
        if ack_seq <= self._last_ack_seq and (now - self._last_ack_time) < (
            self.rtt_us + 4 * self.rtt_var_us
        ) / 1e6:
            return None
        self._ack_no = (self._ack_no + 1) & P.SEQ_MASK or 1
        self._last_ack_seq = ack_seq
        self._last_ack_time = now
        acks = self._acks
        acks[self._ack_no] = (now, ack_seq)
        if len(acks) > _ACK_WINDOW:
            del acks[next(iter(acks))]
        self.acks_sent += 1
        occupied = self._highest - self._next + 1
        # A full ACK (P.Ack with every field), packed directly: this runs
        # up to 100 times a second per connection.
        return _FULL_ACK.pack(
            _ACK_WORD0,
            self._ack_no,
            self._ts(now),
            self.peer_socket_id,
            ack_seq & P.SEQ_MASK,
            min(self.rtt_us, 0xFFFFFFFF),
            min(self.rtt_var_us, 0xFFFFFFFF),
            max(self.receive_buffer - occupied, 0),
            min(self._pkt_rate, 0xFFFFFFFF),
            min(max(self._peak_rate, self._pkt_rate), 0xFFFFFFFF),
            min(self._byte_rate, 0xFFFFFFFF),
        )
