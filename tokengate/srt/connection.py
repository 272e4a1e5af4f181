# -*- test-case-name: tests.test_srt_connection,tests.interop.test_srt_connection -*-
"""
The listener side of SRT, sans-IO: one UDP port's callers.  The
L{Listener} runs the HSv5 caller-listener handshake
(L{tokengate.srt.handshake}) with an asynchronous authorization step,
remembers its answers, and keeps a receiver L{Connection}
(L{tokengate.srt.receiver}) for each caller it accepts.  Stream ids are
parsed by L{tokengate.srt.streamid}; reject codes are in
L{tokengate.srt.errors}.

No Twisted, no sockets, no clock: every method that needs the time takes
C{now} (seconds, float, from a monotonic clock), and everything to send is
returned as encoded datagrams (C{bytes}) for the adapter to write to the
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
C{URQFailure}, srtcore/handshake.h): SRT_REJX_UNAUTHORIZED 1401 is 2401,
SRT_REJ_UNSECURE 11 is 1011.
"""

from __future__ import annotations

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional, Union

from tokengate.srt import packets as P
from tokengate.srt.errors import REJ_RESOURCE
from tokengate.srt.handshake import (
    Drop,
    HandshakeDecision,
    NeedsAuthorization,
    Pending,
    Rejected,
    Reply,
    agreement_datagram,
    answer_deadline,
    cookie_for,
    induction_refusal,
    induction_reply,
    read_stream_id,
    receive_latency,
    rejection_datagram,
    vet_conclusion,
)
from tokengate.srt.packets import Peer
from tokengate.srt.receiver import Connection

__all__ = ["Listener"]

#: a caller: (host, port, its socket id)
_Key = tuple[str, int, int]


def _key(peer: Peer, socket_id: int) -> _Key:
    return (peer[0], peer[1], socket_id)


class Listener:
    """
    The listener side of the HSv5 caller-listener handshake.

    Inductions are answered with a cookie (an HMAC of the caller's address
    and the minute, truncated to 32 bits) and leave no state.  A conclusion
    whose cookie is valid for this minute or the previous one becomes one
    L{NeedsAuthorization} per (address, caller socket id); while it
    is unresolved, repeats of that conclusion get L{Pending}; once
    accepted, the same agreement bytes again (same listener socket id);
    once rejected, the same rejection again for C{rejection_ttl} seconds
    (at most C{max_rejections} remembered).

    The listener rejects by itself (L{Rejected}, cached like any
    rejection) what L{tokengate.srt.handshake.vet_conclusion} refuses: an
    HSv4 conclusion or SRT older than 1.3 (C{REJ_VERSION}), encryption (a
    KMREQ: C{REJ_UNSECURE}, wire 1011; AES is not implemented), a missing or
    short HSREQ (C{REJ_ROGUE}), the stream (file) API (C{REJ_MESSAGEAPI}), a
    congestion controller other than live (C{REJ_CONGESTION}), packet
    filters (C{REJ_FILTER}) and groups (C{REJ_GROUP}); the reject codes are
    in L{tokengate.srt.errors}.  A missing or malformed stream id is not
    rejected here: the decision carries the
    L{tokengate.srt.streamid.BadStreamId} so that the adapter can count it
    and reject with its code (1400).

    The agreement (HSv5, reqtype CONCLUSION, to the caller's socket id) echoes
    the caller's ISN and cookie, carries the listener socket id, MSS =
    min(ours, the caller's), our flight window and an HSRSP: SRT 1.5.1;
    TSBPDRCV when the caller sends with TSBPD, TSBPDSND when it receives with
    it, TLPKTDROP, NAKREPORT, REXMITFLG when the caller has it; latencies
    max(C{latency_ms}, the caller's proposal) in each direction.

    A caller waits C{connect_timeout} seconds for its connection (libsrt's
    SRTO_CONNTIMEO, 3 s by default) from the start of its connect, which its
    conclusion's timestamp tells (microseconds since then; taken at most as
    C{connect_timeout}); each decision's C{answer_by} is that deadline
    less C{answer_margin} (the way back to the caller), so that an adapter
    can answer while the caller still listens.

    Limits: C{max_connections} counts accepted open connections and
    pending decisions together; beyond it callers are rejected with
    L{REJ_RESOURCE}.  Pending decisions older than C{pending_timeout}
    are forgotten (a late accept or reject of one still works).

    C{connections} maps the listener socket id of every accepted, not yet
    removed connection to its L{Connection}.
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
        self._pending: OrderedDict[_Key, NeedsAuthorization] = OrderedDict()
        self._accepted: dict[_Key, tuple[bytes, Connection]] = {}
        self._rejected: OrderedDict[_Key, tuple[bytes, float]] = OrderedDict()
        self._epoch: Optional[float] = None

    # -- cookies -----------------------------------------------------------

    def cookie(self, peer: Peer, now: float, minute_offset: int = 0) -> int:
        """The cookie for C{peer} in the minute of C{now} (+ C{minute_offset})."""
        return cookie_for(self._secret, peer, int(now // 60) + minute_offset)

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
        malformed datagram raises L{tokengate.srt.errors.SRTProtocolError}.
        """
        if not isinstance(packet, P.Handshake):
            decoded: object = packet
            if isinstance(packet, (bytes, bytearray, memoryview)):
                decoded = P.decode_packet(packet)
            if not isinstance(decoded, P.Handshake):
                return Drop("not a handshake")
            packet = decoded
        self._expire(now)
        if packet.reqtype == P.URQ_INDUCTION:
            return self._induction(packet, peer, now)
        if packet.reqtype == P.URQ_CONCLUSION:
            return self._conclusion(packet, peer, now)
        return Drop(f"unexpected handshake request type {packet.reqtype}")

    def _induction(self, hs: P.Handshake, peer: Peer, now: float) -> HandshakeDecision:
        refusal = induction_refusal(hs)
        if refusal is not None:
            return refusal
        return Reply(induction_reply(hs, self.cookie(peer, now), self._timestamp(now)))

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
            data = rejection_datagram(hs, code, self._timestamp(now))
            self._remember_rejection(key, data, now)
            return Rejected(peer, hs.socket_id, code, reason, data)

        hsreq = vet_conclusion(hs)
        if not isinstance(hsreq, P.HSReq):
            return refuse(*hsreq)
        if len(self._pending) + self._open_connections() >= self.max_connections:
            return refuse(REJ_RESOURCE, "too many connections")

        request, raw, error = read_stream_id(hs)
        decision = NeedsAuthorization(
            peer,
            hs.socket_id,
            request,
            raw,
            error,
            hsreq.srt_version,
            hsreq.flags,
            receive_latency(hsreq, self.latency_ms),
            now,
            answer_deadline(hs, now, self.connect_timeout, self.answer_margin),
            hs,
            hsreq,
        )
        self._pending[key] = decision
        return decision

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

    def _remember_rejection(self, key: _Key, data: bytes, now: float) -> None:
        self._rejected.pop(key, None)
        self._rejected[key] = (data, now + self.rejection_ttl)
        while len(self._rejected) > self.max_rejections:
            self._rejected.popitem(last=False)

    def _resolve(self, decision: NeedsAuthorization) -> _Key:
        if not isinstance(decision, NeedsAuthorization):
            raise TypeError("accept and reject take a NeedsAuthorization")
        if decision.resolved:
            raise ValueError("this decision was already resolved")
        decision.resolved = True
        key = _key(decision.peer, decision.caller_socket_id)
        if self._pending.get(key) is decision:
            del self._pending[key]
        return key

    def accept(self, decision: NeedsAuthorization, now: float) -> tuple[bytes, Connection]:
        """
        Accept the caller: the agreement datagram to send and the new
        L{Connection} (registered in C{connections}).
        """
        if decision.error is not None:
            raise ValueError("a decision with a bad stream id can only be rejected")
        key = self._resolve(decision)
        hs = decision.handshake
        hsreq = decision.hsreq
        for _ in range(100):
            socket_id = self._new_id()
            if not isinstance(socket_id, int) or not 0 < socket_id <= P.SEQ_MASK:
                raise ValueError(f"socket id factory returned {socket_id!r}")
            if socket_id not in self.connections:
                break
        else:
            raise ValueError("socket id factory keeps returning ids in use")
        recv_latency = decision.latency_ms
        reply = agreement_datagram(
            hs,
            hsreq,
            decision.peer,
            socket_id,
            mss=self.mss,
            flight_window=self.flight_window,
            latency_ms=self.latency_ms,
            recv_latency=recv_latency,
            timestamp=self._timestamp(now),
        )
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
        Reject the caller with reason C{code} (e.g. L{tokengate.srt.errors.REJX_UNAUTHORIZED}
        1401, on the wire 2401): the datagram to send.  The caller's repeats
        get the same datagram for C{rejection_ttl} seconds.
        """
        key = self._resolve(decision)
        if now is None:
            now = decision.received_at
        data = rejection_datagram(decision.handshake, code, self._timestamp(now))
        self._remember_rejection(key, data, now)
        return data

    def lookup(self, socket_id: int, peer: Optional[Peer] = None) -> Optional[Connection]:
        """
        The open connection with listener socket id C{socket_id}, if it
        exists and (when C{peer} is given) belongs to that address.
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
