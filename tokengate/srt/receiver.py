# -*- test-case-name: tests.test_srt_connection,tests.interop.test_srt_connection -*-
"""
The receiver side of one accepted SRT connection, sans-IO: the receive
buffer (out-of-order packets held until their gap fills, bounded in
packets and bytes), loss detection and NAKs, full ACKs and the RTT from
ACKACKs, DROPREQ, TSBPD's too-late drop, keepalive, the idle timeout and
shutdown.  Its events are L{Payload} (in-order bytes) and L{Closed}.

No Twisted, no sockets, no clock: every method that needs the time takes
C{now} (seconds from a monotonic clock) and what to send is returned as
encoded datagrams.  L{tokengate.srt.connection.Listener} makes a
L{Connection} for each caller it accepts.
"""

from __future__ import annotations

import struct
from typing import Iterable, Optional, Union

from attrs import frozen

from tokengate.srt import packets as P
from tokengate.srt.errors import SRTProtocolError
from tokengate.srt.packets import Peer
from tokengate.srt.streamid import StreamRequest

__all__ = ["Payload", "Closed", "Event", "ConnectionStats", "Connection"]


@frozen
class Payload:
    """In-order payload bytes (a byte stream: MPEG-TS, not aligned to 188)."""

    data: bytes


@frozen
class Closed:
    """The connection is over: the peer shut down or went idle."""

    reason: str


#: what a connection reports
Event = Union[Payload, Closed]


@frozen
class ConnectionStats:
    """
    Counters.  C{packets_lost} counts sequence numbers found missing (each
    once); C{packets_dropped} those given up for good (too late, or the
    sender's DROPREQ); C{packets_overflow} packets discarded because the
    receive buffer was full; C{packets_duplicate} those already had.
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
#: the sentinel for "not in the buffer" (the buffer's values are these
#: tuples or None; only this one object is ever compared with C{is})
_MISSING: tuple[bytes, int] = (b"", -1)
_REXMIT = 0x04000000
_ACK_WINDOW = 1024
_DRIFT_SAMPLES = 1000


class Connection:
    """
    One accepted caller, receiver side.

    - C{receive(datagram, now) -> list} of L{Payload} (at most one,
      all the in-order bytes this datagram released) and L{Closed}.
      Replies it calls for at once (a NAK for a new gap, the agreement again
      for a repeated conclusion) are queued: send C{data_to_send()}.  A
      malformed datagram raises L{SRTProtocolError}: drop it, the
      connection goes on.  Payload released by a tick and not yet collected
      with C{take_events()} is returned first, so bytes stay in order.
    - C{tick(now) -> list[bytes]}: call every 10 ms or so.  Returns what to
      send: a full ACK every C{ack_interval} while there is something to
      acknowledge (again after RTT+4*RTTVar if no ACKACK came), periodic
      NAKs every max(RTT+4*RTTVar, 20 ms) while a gap lasts, a KEEPALIVE
      after a second without sending.  Events it causes (payload released
      by a too-late drop, L{Closed} after C{idle_timeout} seconds
      without a packet from the peer) are collected by C{take_events()}.
    - C{close(now) -> bytes}: a SHUTDOWN to send; the connection is then
      closed (no event).

    Timestamps are unwrapped to a continuous microsecond timeline and
    sequence numbers to unbounded integers internally, so both wrap
    around transparently.  Packets more than C{receive_buffer} sequence
    numbers ahead of the next expected one, or beyond
    C{max_buffer_bytes} of held payload, are discarded and counted.

    Construction: C{Connection(peer_socket_id, socket_id, isn, now, *,
    ...)} where C{now} is when the caller's conclusion arrived (with
    C{hs_timestamp}, its timestamp, it anchors TSBPD) and C{start_time}
    (default C{now}) when the connection was accepted (timers and our
    timestamps start there).  L{tokengate.srt.connection.Listener.accept} fills all of it in.
    State: C{closed}, C{close_reason}, C{next_seq}, C{lost_sequences},
    C{buffered_packets}, C{rtt_us}, C{rtt_var_us}, C{request} (the
    L{StreamRequest}), C{peer}; counters as attributes and in
    C{stats()} (L{ConnectionStats}).

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
        self._events: list[Event] = []

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
        """Datagrams queued by L{receive}, to send now."""
        out = self._outbox
        if out:
            self._outbox = []
            self._last_send = self._now_hint
        return out

    _now_hint = 0.0

    def take_events(self) -> list[Event]:
        """Events caused by L{tick} (late-drop payload, L{Closed})."""
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

    def receive(self, datagram: bytes, now: float) -> list[Event]:
        events = self._receive(datagram, now)
        if self._events:
            # payload a tick released but nobody collected yet comes first
            events = self._events + events
            self._events = []
        return events

    def _receive(self, datagram: bytes, now: float) -> list[Event]:
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

    def _deliver(self, parts: list[bytes]) -> None:
        """Move contiguous buffered packets from the head into C{parts}."""
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

    def _control(self, w0: int, info: int, ts: int, datagram: bytes, now: float) -> list[Event]:
        ctype = (w0 >> 16) & 0x7FFF
        if ctype == P.CTRL_ACKACK:
            self._ackack(info, ts, now)
            return []
        if ctype == P.CTRL_KEEPALIVE:
            return []
        if ctype == P.CTRL_DROPREQ:
            dropreq = P.decode_packet(datagram)
            if not isinstance(dropreq, P.DropReq):  # pragma: no cover - decoded by its type
                return []
            return self._dropreq(dropreq.first, dropreq.last)
        if ctype == P.CTRL_SHUTDOWN:
            self._close("peer shutdown")
            return [Closed("peer shutdown")]
        if ctype == P.CTRL_HANDSHAKE:
            packet = P.decode_packet(datagram)
            if (isinstance(packet, P.Handshake) and packet.reqtype == P.URQ_CONCLUSION
                    and self._handshake_reply is not None):
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

    def _dropreq(self, first: int, last: int) -> list[Event]:
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
        parts: list[bytes] = []
        self._deliver(parts)
        return [Payload(b"".join(parts))] if parts else []

    # -- timers ----------------------------------------------------------------

    def _nak_interval(self) -> float:
        return max((self.rtt_us + 4 * self.rtt_var_us) / 1e6, 0.02)

    def _queue_nak(self, ranges: Iterable[tuple[int, int]], now: float) -> None:
        wire = [(a & P.SEQ_MASK, b & P.SEQ_MASK) for a, b in ranges]
        self._outbox.append(P.Nak(wire, self._ts(now), self.peer_socket_id).encode())
        self.naks_sent += 1

    def _loss_ranges(self) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        limit = max((self.mss - 28 - 16) // 8, 1)
        lost = sorted(self._lost)
        if not lost:
            return ranges
        start = prev = lost[0]
        for s in lost[1:]:
            if s == prev + 1:
                prev = s
                continue
            ranges.append((start, prev))
            if len(ranges) >= limit:
                return ranges
            start = prev = s
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
            parts: list[bytes] = []
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
