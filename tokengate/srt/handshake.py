# -*- test-case-name: tests.test_srt_connection,tests.interop.test_srt_connection -*-
"""
The HSv5 caller-listener handshake, sans-IO and stateless: the cookie, the
answer to an induction, the vetting of a conclusion (what a listener
rejects by itself), the stream id it carries, the agreement and rejection
datagrams, and the decisions L{tokengate.srt.connection.Listener} hands its
adapter (L{Reply}, L{Drop}, L{Pending}, L{Rejected},
L{NeedsAuthorization}).

What the listener remembers (decisions being authorized, the answers
repeated to a caller, its connections) is the listener's; the reject codes
are in L{tokengate.srt.errors}.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Optional, Union

from attrs import define, frozen

from tokengate.srt import packets as P
from tokengate.srt.errors import (
    REJ_CONGESTION,
    REJ_FILTER,
    REJ_GROUP,
    REJ_MESSAGEAPI,
    REJ_ROGUE,
    REJ_UNSECURE,
    REJ_VERSION,
    SRTProtocolError,
)
from tokengate.srt.packets import Peer
from tokengate.srt.streamid import BadStreamId, StreamRequest, parse_stream_id

__all__ = [
    "HandshakeDecision",
    "Reply",
    "Drop",
    "Pending",
    "Rejected",
    "NeedsAuthorization",
    "cookie_for",
    "induction_refusal",
    "induction_reply",
    "vet_conclusion",
    "read_stream_id",
    "receive_latency",
    "answer_deadline",
    "rejection_datagram",
    "agreement_datagram",
]


class HandshakeDecision:
    """
    Base class of what L{tokengate.srt.connection.Listener.handle_handshake}
    returns.
    """

    data: Optional[bytes] = None


@frozen
class Reply(HandshakeDecision):
    """Send C{data} to the peer: an induction response, or a repeated answer."""

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
    missing HSREQ, over capacity...): send C{data}.
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
    L{tokengate.srt.connection.Listener.accept} or
    L{tokengate.srt.connection.Listener.reject}.

    C{request} is the parsed stream id, or None when it was missing or
    malformed; then C{error} is the L{BadStreamId} and the adapter
    should reject with C{error.code} (1400).  C{stream_id} is the raw
    decoded string ("" when absent or undecodable).

    C{answer_by} is when the answer must be sent at the latest for the
    caller to still be waiting for it: the caller's connect timeout counted
    from the start of its connect (its conclusion's timestamp is the time
    since then), less a margin for the way back; never before
    C{received_at}.  The other attributes describe the caller:
    C{handshake} and C{hsreq} are its conclusion and HSREQ, which the
    listener answers from; C{resolved} is set once the listener accepted
    or rejected it.
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
    handshake: P.Handshake
    hsreq: P.HSReq
    resolved: bool = False
    data: None = None


def cookie_for(secret: bytes, peer: Peer, minute: int) -> int:
    """
    The cookie for C{peer} in C{minute} (minutes since the epoch): an HMAC of
    the caller's address and the minute, truncated to 32 bits.
    """
    msg = f"{peer[0]}|{peer[1]}|{minute}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hmac.new(secret, msg, hashlib.sha256).digest()[:4], "big")


def induction_refusal(hs: P.Handshake) -> Optional[Drop]:
    """
    A L{Drop} for an induction whose handshake version is neither
    UDT4 nor SRT1; None for one to answer with L{induction_reply}.
    """
    if hs.version not in (P.HS_VERSION_UDT4, P.HS_VERSION_SRT1):
        return Drop(f"induction with version {hs.version}")
    return None


def induction_reply(hs: P.Handshake, cookie: int, timestamp: int) -> bytes:
    """The answer to the induction C{hs}, carrying C{cookie}."""
    return P.Handshake(
        P.HS_VERSION_SRT1,
        0,
        P.SRT_MAGIC_CODE,
        hs.isn,
        hs.mss,
        hs.ffs,
        P.URQ_INDUCTION,
        hs.socket_id,
        cookie,
        hs.peer_ip,
        (),
        timestamp,
        hs.socket_id,
    ).encode()


def vet_conclusion(hs: P.Handshake) -> Union[P.HSReq, tuple[int, str]]:
    """
    What a listener refuses in a conclusion by itself, whoever asks: the
    caller's HSREQ when the conclusion is one it can serve, otherwise the
    reject code and the reason: an HSv4 conclusion or SRT older than 1.3
    (L{REJ_VERSION}), encryption (a KMREQ: L{REJ_UNSECURE}; AES is
    not implemented), a missing or short HSREQ (L{REJ_ROGUE}), the
    stream (file) API (L{REJ_MESSAGEAPI}), a congestion controller
    other than live (L{REJ_CONGESTION}), packet filters
    (L{REJ_FILTER}) and groups (L{REJ_GROUP}).
    """
    if hs.version != P.HS_VERSION_SRT1:
        return REJ_VERSION, f"handshake version {hs.version}"
    if hs.ext_flags & P.HS_EXT_KMREQ or hs.extension(P.EXT_KMREQ) is not None:
        return REJ_UNSECURE, "encryption is not supported"
    ext = hs.extension(P.EXT_HSREQ)
    if ext is None:
        return REJ_ROGUE, "no HSREQ extension"
    try:
        hsreq = P.HSReq.decode(ext.data)
    except SRTProtocolError:
        return REJ_ROGUE, "short HSREQ extension"
    if hsreq.srt_version < 0x010300:
        return REJ_VERSION, f"SRT version {hsreq.srt_version:#x}"
    if hsreq.flags & P.OPT_STREAM:
        return REJ_MESSAGEAPI, "stream (file) API is not supported"
    cc = hs.extension(P.EXT_CONGESTION)
    if cc is not None:
        try:
            congestion = P.decode_stream_id(cc.data)
        except SRTProtocolError:
            congestion = "?"
        if congestion not in ("", "live"):
            return REJ_CONGESTION, f"congestion control {congestion!r}"
    if hs.extension(P.EXT_FILTER) is not None:
        return REJ_FILTER, "packet filters are not supported"
    if hs.extension(P.EXT_GROUP) is not None:
        return REJ_GROUP, "socket groups are not supported"
    return hsreq


def read_stream_id(
    hs: P.Handshake,
) -> tuple[Optional[StreamRequest], str, Optional[BadStreamId]]:
    """
    The conclusion's stream id: (the parsed request or None, the raw
    decoded string or "", the L{BadStreamId} when it is missing or
    malformed, else None).
    """
    sid = hs.extension(P.EXT_SID)
    if sid is None:
        return None, "", BadStreamId("no stream id")
    raw = ""
    try:
        raw = P.decode_stream_id(sid.data)
        return parse_stream_id(raw), raw, None
    except BadStreamId as e:
        return None, raw, e
    except SRTProtocolError as e:
        return None, raw, BadStreamId(str(e))


def receive_latency(hsreq: P.HSReq, latency_ms: int) -> int:
    """
    Our receiving latency for a caller: max(C{latency_ms}, its proposal)
    when it sends with TSBPD, else 0.
    """
    if not hsreq.flags & P.OPT_TSBPDSND:
        return 0
    return max(latency_ms, hsreq.send_latency)


def answer_deadline(hs: P.Handshake, now: float, connect_timeout: float, margin: float) -> float:
    """
    When the answer to a conclusion received at C{now} must be sent at the
    latest: the caller's C{connect_timeout} counted from the start of its
    connect (the conclusion's timestamp, taken at most as the timeout), less
    C{margin}; never before C{now}.
    """
    elapsed = min(hs.timestamp / 1e6, connect_timeout)
    return now + max(0.0, connect_timeout - elapsed - margin)


def rejection_datagram(hs: P.Handshake, code: int, timestamp: int) -> bytes:
    """The conclusion C{hs} rejected with reason C{code} (reqtype 1000 + code)."""
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
        timestamp,
        hs.socket_id,
    ).encode()


def agreement_datagram(
    hs: P.Handshake,
    hsreq: P.HSReq,
    peer: Peer,
    socket_id: int,
    *,
    mss: int,
    flight_window: int,
    latency_ms: int,
    recv_latency: int,
    timestamp: int,
) -> bytes:
    """
    The agreement to the conclusion C{hs} (HSv5, reqtype CONCLUSION, to the
    caller's socket id): the caller's ISN and cookie echoed, our
    C{socket_id}, MSS = min(C{mss}, the caller's), our C{flight_window} and an
    HSRSP: SRT 1.5.1; TSBPDRCV when the caller sends with TSBPD (latency
    C{recv_latency}), TSBPDSND when it receives with it (latency
    max(C{latency_ms}, its proposal)), TLPKTDROP, NAKREPORT, REXMITFLG when
    the caller has it.
    """
    flags = P.OPT_TLPKTDROP | P.OPT_NAKREPORT
    latency_word_snd = 0
    if hsreq.flags & P.OPT_TSBPDSND:
        flags |= P.OPT_TSBPDRCV
    if hsreq.flags & P.OPT_TSBPDRCV:
        flags |= P.OPT_TSBPDSND
        latency_word_snd = max(latency_ms, hsreq.recv_latency)
    if hsreq.flags & P.OPT_REXMITFLG:
        flags |= P.OPT_REXMITFLG
    hsrsp = P.HSReq(P.SRT_VERSION, flags, recv_latency, latency_word_snd)
    return P.Handshake(
        P.HS_VERSION_SRT1,
        0,
        P.HS_EXT_HSREQ,
        hs.isn,
        min(mss, hs.mss),
        flight_window,
        P.URQ_CONCLUSION,
        socket_id,
        hs.cookie,
        P.encode_peer_ip(peer[0]) if _is_ip(peer[0]) else bytes(16),
        (P.HandshakeExtension(P.EXT_HSRSP, hsrsp.encode()),),
        timestamp,
        hs.socket_id,
    ).encode()


def _is_ip(host: Any) -> bool:
    try:
        P.encode_peer_ip(host)
        return True
    except SRTProtocolError:
        return False
