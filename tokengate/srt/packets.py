# -*- test-case-name: tests.test_srt_packets -*-
"""
SRT packets: encode and decode data and control packets.

Pure code, no I/O, no clock.  Every value class is a frozen attrs class;
C{decode_packet(datagram)} turns one UDP payload into one of them and each
has an C{encode() -> bytes}.  Every malformed input, and every value that
does not fit its field on encoding, raises
L{tokengate.srt.errors.SRTProtocolError} and nothing else.

Wire format (all big-endian 32-bit words; the SRT RFC draft and Haivision
libsrt C{packet.h}/C{handshake.h})::

    data:    0|seq31 ; PP2|O1|KK2|R1|msgno26 ; timestamp u32 (us) ; dst socket id ; payload
    control: 1|type15|subtype16 ; type-specific info ; timestamp ; dst socket id ; CIF

Handshake CIF (48 bytes)::

    version | enc_flags u16 | ext_flags u16 | ISN | MSS | FFS | reqtype i32 |
    socket id | cookie | peer IP (16 bytes)

then, for HSv5, extensions C{cmd u16 | size u16 (in 32-bit words) | data}.
Extensions are kept raw (L{HandshakeExtension}); L{HSReq} decodes
the HSREQ/HSRSP payload and L{decode_stream_id} the SID payload.  The
peer IP and the stream id bytes are byte-reversed in every 32-bit word on the
wire (libsrt copies them as host-order words); L{encode_peer_ip},
L{decode_peer_ip}, L{encode_stream_id} and
L{decode_stream_id} undo that.

The receiver's hot path (data packets) does not need the value classes:
L{peek_dst} and L{HEADER} are there for dispatching and decoding a
datagram without building objects.

Sequence numbers are 31 bits and wrap; L{seq_add}, L{seq_diff},
L{seq_cmp} and L{seq_unwrap} do the arithmetic.  Timestamps are 32
bits of microseconds and wrap every ~71.6 minutes; L{ts_unwrap} puts
one on a continuous timeline next to a reference.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Callable, Iterable, Optional, TypeVar, Union, cast

from attrs import field, frozen

from tokengate.srt.errors import SRTProtocolError

__all__ = [
    # header
    "HEADER",
    "HEADER_SIZE",
    "peek_dst",
    "is_control",
    # control types
    "CTRL_HANDSHAKE",
    "CTRL_KEEPALIVE",
    "CTRL_ACK",
    "CTRL_NAK",
    "CTRL_CONGESTION_WARNING",
    "CTRL_SHUTDOWN",
    "CTRL_ACKACK",
    "CTRL_DROPREQ",
    "CTRL_PEERERROR",
    "CTRL_USER",
    # data packet fields
    "PB_SUBSEQUENT",
    "PB_LAST",
    "PB_FIRST",
    "PB_SOLO",
    # handshake
    "HS_VERSION_UDT4",
    "HS_VERSION_SRT1",
    "UDT_DGRAM",
    "SRT_MAGIC_CODE",
    "URQ_INDUCTION",
    "URQ_WAVEAHAND",
    "URQ_CONCLUSION",
    "URQ_AGREEMENT",
    "URQ_FAILURE_TYPES",
    "reject_reqtype",
    "reject_code",
    "HS_EXT_HSREQ",
    "HS_EXT_KMREQ",
    "HS_EXT_CONFIG",
    "EXT_HSREQ",
    "EXT_HSRSP",
    "EXT_KMREQ",
    "EXT_KMRSP",
    "EXT_SID",
    "EXT_CONGESTION",
    "EXT_FILTER",
    "EXT_GROUP",
    "OPT_TSBPDSND",
    "OPT_TSBPDRCV",
    "OPT_HAICRYPT",
    "OPT_TLPKTDROP",
    "OPT_NAKREPORT",
    "OPT_REXMITFLG",
    "OPT_STREAM",
    "OPT_FILTERCAP",
    "SRT_VERSION",
    "MAX_STREAM_ID",
    # value classes
    "DataPacket",
    "HandshakeExtension",
    "Handshake",
    "HSReq",
    "KeepAlive",
    "Ack",
    "Nak",
    "Shutdown",
    "AckAck",
    "DropReq",
    "PeerError",
    "UnknownControl",
    "Packet",
    "decode_packet",
    "encode_packet",
    # helpers
    "encode_stream_id",
    "decode_stream_id",
    "encode_peer_ip",
    "decode_peer_ip",
    "SEQ_MASK",
    "seq_add",
    "seq_diff",
    "seq_cmp",
    "seq_unwrap",
    "TS_MASK",
    "ts_unwrap",
    "encode_loss_list",
    "decode_loss_list",
    "Peer",
]

#: a peer's UDP address: (host, port)
Peer = tuple[str, int]

_EncoderT = TypeVar("_EncoderT")

# ---------------------------------------------------------------------------
# Header
# ---------------------------------------------------------------------------

#: The 16-byte header: four big-endian unsigned 32-bit words.
HEADER = struct.Struct(">IIII")
HEADER_SIZE = 16
_U32 = struct.Struct(">I")
_DST = struct.Struct(">12xI")

CTRL_HANDSHAKE = 0
CTRL_KEEPALIVE = 1
CTRL_ACK = 2
CTRL_NAK = 3
CTRL_CONGESTION_WARNING = 4
CTRL_SHUTDOWN = 5
CTRL_ACKACK = 6
CTRL_DROPREQ = 7
CTRL_PEERERROR = 8
CTRL_USER = 0x7FFF

PB_SUBSEQUENT = 0
PB_LAST = 1
PB_FIRST = 2
PB_SOLO = 3

_PAD = b"\0\0\0\0"


def peek_dst(datagram: bytes) -> int:
    """The destination socket id of a datagram (0: the listener)."""
    try:
        dst: int = _DST.unpack_from(datagram)[0]
        return dst
    except (struct.error, TypeError) as e:
        raise SRTProtocolError("datagram shorter than the SRT header") from e


def is_control(datagram: bytes) -> bool:
    """True for a control packet (the first bit set)."""
    if len(datagram) < HEADER_SIZE:
        raise SRTProtocolError("datagram shorter than the SRT header")
    return datagram[0] >= 0x80


def _u32(name: str, value: int) -> int:
    if value.__class__ is not int and not isinstance(value, int):
        raise SRTProtocolError(f"{name} must be an int")
    if not 0 <= value <= 0xFFFFFFFF:
        raise SRTProtocolError(f"{name} {value} does not fit 32 bits")
    return value


def _seq31(name: str, value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= SEQ_MASK:
        raise SRTProtocolError(f"{name} {value!r} does not fit 31 bits")
    return value


def _checked(encode: Callable[[_EncoderT], bytes]) -> Callable[[_EncoderT], bytes]:
    """Turn a type or range error of an encoder into SRTProtocolError."""

    def wrapper(self: _EncoderT) -> bytes:
        try:
            return encode(self)
        except (struct.error, TypeError, ValueError, OverflowError) as e:
            raise SRTProtocolError(f"cannot encode {type(self).__name__}: {e}") from e

    wrapper.__name__ = encode.__name__
    wrapper.__doc__ = encode.__doc__
    return wrapper


def _control_header(ctype: int, subtype: int, info: int, timestamp: int, dst: int) -> bytes:
    if not 0 <= ctype <= 0x7FFF or not 0 <= subtype <= 0xFFFF:
        raise SRTProtocolError(f"control type {ctype}/{subtype} out of range")
    return HEADER.pack(
        0x80000000 | ctype << 16 | subtype,
        _u32("info", info),
        _u32("timestamp", timestamp),
        _u32("destination socket id", dst),
    )


# ---------------------------------------------------------------------------
# Sequence numbers and timestamps
# ---------------------------------------------------------------------------

SEQ_MASK = 0x7FFFFFFF
_SEQ_HALF = 0x40000000
TS_MASK = 0xFFFFFFFF
_TS_HALF = 0x80000000


def seq_add(seq: int, n: int) -> int:
    """*seq* + *n* modulo 2**31 (*n* may be negative)."""
    return (seq + n) & SEQ_MASK


def seq_diff(a: int, b: int) -> int:
    """
    The signed distance *a* - *b* on the 31-bit circle, in
    [-2**30, 2**30): positive when *a* is after *b*.
    """
    return ((a - b + _SEQ_HALF) & SEQ_MASK) - _SEQ_HALF


def seq_cmp(a: int, b: int) -> int:
    """-1, 0 or 1 as *a* is before, equal to or after *b* (with wrap)."""
    d = seq_diff(a, b)
    return (d > 0) - (d < 0)


def seq_unwrap(seq: int, reference: int) -> int:
    """
    The unbounded integer congruent to *seq* modulo 2**31 that is nearest
    to *reference* (itself an unwrapped, unbounded sequence number).
    """
    return reference + (((seq - reference + _SEQ_HALF) & SEQ_MASK) - _SEQ_HALF)


def ts_unwrap(ts: int, reference: int) -> int:
    """
    The unbounded integer congruent to the 32-bit timestamp *ts* modulo
    2**32 that is nearest to *reference* (an unwrapped timestamp): the
    continuous timeline across the ~71.6-minute wrap.
    """
    return reference + (((ts - reference + _TS_HALF) & TS_MASK) - _TS_HALF)


# ---------------------------------------------------------------------------
# Data packets
# ---------------------------------------------------------------------------


@frozen
class DataPacket:
    """
    A data packet.  C{position} is the PP field (L{PB_SOLO} for a
    whole message), C{key} the KK field (0: not encrypted),
    C{retransmitted} the R flag.
    """

    seq: int
    msgno: int
    payload: bytes
    timestamp: int = 0
    dst: int = 0
    position: int = PB_SOLO
    in_order: bool = False
    key: int = 0
    retransmitted: bool = False

    @_checked
    def encode(self) -> bytes:
        if not 0 <= self.msgno < 1 << 26:
            raise SRTProtocolError(f"message number {self.msgno} does not fit 26 bits")
        if not 0 <= self.position <= 3 or not 0 <= self.key <= 3:
            raise SRTProtocolError("bad packet position or key field")
        word1 = (
            self.position << 30
            | (1 << 29 if self.in_order else 0)
            | self.key << 27
            | (1 << 26 if self.retransmitted else 0)
            | self.msgno
        )
        try:
            payload = bytes(self.payload)
        except TypeError as e:
            raise SRTProtocolError("payload must be bytes") from e
        return (
            HEADER.pack(
                _seq31("sequence number", self.seq),
                word1,
                _u32("timestamp", self.timestamp),
                _u32("destination socket id", self.dst),
            )
            + payload
        )


def _decode_data(w0: int, w1: int, ts: int, dst: int, data: bytes) -> DataPacket:
    return DataPacket(
        w0,
        w1 & 0x03FFFFFF,
        data[HEADER_SIZE:],
        ts,
        dst,
        w1 >> 30,
        bool(w1 & 0x20000000),
        (w1 >> 27) & 3,
        bool(w1 & 0x04000000),
    )


# ---------------------------------------------------------------------------
# Handshake
# ---------------------------------------------------------------------------

HS_VERSION_UDT4 = 4
HS_VERSION_SRT1 = 5
UDT_DGRAM = 2
#: The ext_flags value of a listener's induction response.
SRT_MAGIC_CODE = 0x4A17

URQ_INDUCTION = 1
URQ_WAVEAHAND = 0
URQ_CONCLUSION = -1
URQ_AGREEMENT = -2
#: A rejection's reqtype is URQ_FAILURE_TYPES + the reject reason
#: (libsrt handshake.h C{URQFailure}): 1000 + 1401 = 2401 for
#: SRT_REJX_UNAUTHORIZED, 1000 + 11 = 1011 for SRT_REJ_UNSECURE.
URQ_FAILURE_TYPES = 1000

#: ext_flags bits of an HSv5 conclusion.
HS_EXT_HSREQ = 1
HS_EXT_KMREQ = 2
HS_EXT_CONFIG = 4

EXT_HSREQ = 1
EXT_HSRSP = 2
EXT_KMREQ = 3
EXT_KMRSP = 4
EXT_SID = 5
EXT_CONGESTION = 6
EXT_FILTER = 7
EXT_GROUP = 8

OPT_TSBPDSND = 0x01
OPT_TSBPDRCV = 0x02
OPT_HAICRYPT = 0x04
OPT_TLPKTDROP = 0x08
OPT_NAKREPORT = 0x10
OPT_REXMITFLG = 0x20
OPT_STREAM = 0x40
OPT_FILTERCAP = 0x80

#: The SRT version we announce in HSRSP: 1.5.1.
SRT_VERSION = 0x010501
#: The longest stream id (bytes of UTF-8) SRT allows.
MAX_STREAM_ID = 512

_CIF = struct.Struct(">IHHIIIiII16s")
_CIF_SIZE = 48
_EXT_HEADER = struct.Struct(">HH")
_HSREQ = struct.Struct(">III")


def reject_reqtype(code: int) -> int:
    """The handshake reqtype that carries the reject reason *code*."""
    if not 0 <= code < 0x7FFFFFFF - URQ_FAILURE_TYPES:
        raise SRTProtocolError(f"bad reject code {code}")
    return URQ_FAILURE_TYPES + code


def reject_code(reqtype: int) -> Optional[int]:
    """The reject reason a reqtype carries, or None when it is no rejection."""
    if reqtype < URQ_FAILURE_TYPES:
        return None
    return reqtype - URQ_FAILURE_TYPES


@frozen
class HandshakeExtension:
    """One raw handshake extension: command and payload (whole 32-bit words)."""

    cmd: int
    data: bytes = field(converter=bytes)

    @_checked
    def encode(self) -> bytes:
        if not 0 <= self.cmd <= 0xFFFF:
            raise SRTProtocolError(f"extension command {self.cmd} out of range")
        n = len(self.data)
        if n % 4 or n > 0xFFFF * 4:
            raise SRTProtocolError("extension data must be whole 32-bit words")
        return _EXT_HEADER.pack(self.cmd, n // 4) + self.data


@frozen
class HSReq:
    """
    The payload of HSREQ and HSRSP: SRT version, SRT flags (C{OPT_*}) and
    the two latencies in milliseconds.  C{recv_latency} is the sender of
    this extension's receive latency (upper 16 bits), C{send_latency} the
    latency it proposes to its peer as receiver (lower 16 bits).
    """

    srt_version: int
    flags: int
    recv_latency: int
    send_latency: int

    @classmethod
    def decode(cls, data: bytes) -> HSReq:
        if len(data) < 12:
            raise SRTProtocolError(f"HSREQ/HSRSP of {len(data)} bytes, need 12")
        version, flags, latency = _HSREQ.unpack_from(data)
        return cls(version, flags, latency >> 16, latency & 0xFFFF)

    @_checked
    def encode(self) -> bytes:
        if not 0 <= self.recv_latency <= 0xFFFF or not 0 <= self.send_latency <= 0xFFFF:
            raise SRTProtocolError("latency does not fit 16 bits")
        return _HSREQ.pack(
            _u32("SRT version", self.srt_version),
            _u32("SRT flags", self.flags),
            self.recv_latency << 16 | self.send_latency,
        )


def _extensions(value: Iterable[HandshakeExtension]) -> tuple[HandshakeExtension, ...]:
    return tuple(value)


def _peer_ip(value: bytes) -> bytes:
    value = bytes(value)
    if len(value) != 16:
        raise SRTProtocolError("the handshake peer IP is 16 bytes")
    return value


@frozen
class Handshake:
    """
    A HANDSHAKE control packet: the 48-byte CIF and, for HSv5, its
    extensions (raw).  C{peer_ip} is the 16 bytes as on the wire; see
    L{encode_peer_ip}.  C{reqtype} is signed (L{URQ_CONCLUSION}
    is -1; rejections are 1000 + reason).
    """

    version: int
    enc_flags: int
    ext_flags: int
    isn: int
    mss: int
    ffs: int
    reqtype: int
    socket_id: int
    cookie: int
    peer_ip: bytes = field(default=bytes(16), converter=_peer_ip)
    extensions: tuple[HandshakeExtension, ...] = field(default=(), converter=_extensions)
    timestamp: int = 0
    dst: int = 0

    def extension(self, cmd: int) -> Optional[HandshakeExtension]:
        """The first extension with command *cmd*, or None."""
        for ext in self.extensions:
            if ext.cmd == cmd:
                return ext
        return None

    def cif(self) -> bytes:
        """The 48-byte CIF, without extensions."""
        if not 0 <= self.enc_flags <= 0xFFFF or not 0 <= self.ext_flags <= 0xFFFF:
            raise SRTProtocolError("handshake flags do not fit 16 bits")
        if not -0x80000000 <= self.reqtype <= 0x7FFFFFFF:
            raise SRTProtocolError(f"reqtype {self.reqtype} does not fit 32 bits")
        return _CIF.pack(
            _u32("version", self.version),
            self.enc_flags,
            self.ext_flags,
            _u32("ISN", self.isn),
            _u32("MSS", self.mss),
            _u32("FFS", self.ffs),
            self.reqtype,
            _u32("socket id", self.socket_id),
            _u32("cookie", self.cookie),
            self.peer_ip,
        )

    @_checked
    def encode(self) -> bytes:
        parts = [_control_header(CTRL_HANDSHAKE, 0, 0, self.timestamp, self.dst), self.cif()]
        for ext in self.extensions:
            parts.append(ext.encode())
        return b"".join(parts)


def _decode_handshake(ts: int, dst: int, data: bytes) -> Handshake:
    if len(data) < HEADER_SIZE + _CIF_SIZE:
        raise SRTProtocolError(f"handshake of {len(data)} bytes, need {HEADER_SIZE + _CIF_SIZE}")
    version, enc, ext_flags, isn, mss, ffs, reqtype, sid, cookie, ip = _CIF.unpack_from(
        data, HEADER_SIZE
    )
    extensions = []
    if version >= HS_VERSION_SRT1:
        # HSv4 carried no extensions; whatever follows its CIF is ignored.
        pos = HEADER_SIZE + _CIF_SIZE
        n = len(data)
        if n - pos > 4096:
            raise SRTProtocolError("handshake extensions longer than 4096 bytes")
        while pos < n:
            if pos + 4 > n:
                raise SRTProtocolError("truncated handshake extension header")
            cmd, size = _EXT_HEADER.unpack_from(data, pos)
            pos += 4
            end = pos + size * 4
            if end > n:
                raise SRTProtocolError(f"handshake extension {cmd} overruns the packet")
            extensions.append(HandshakeExtension(cmd, data[pos:end]))
            pos = end
    return Handshake(
        version, enc, ext_flags, isn, mss, ffs, reqtype, sid, cookie, ip, extensions, ts, dst
    )


def encode_stream_id(stream_id: str) -> bytes:
    """The SID extension payload: UTF-8, NUL-padded, each word reversed."""
    try:
        raw = stream_id.encode("utf-8")
    except (AttributeError, UnicodeError) as e:
        raise SRTProtocolError("the stream id must be a str") from e
    if len(raw) > MAX_STREAM_ID:
        raise SRTProtocolError(f"stream id of {len(raw)} bytes, the maximum is {MAX_STREAM_ID}")
    raw += b"\0" * (-len(raw) % 4)
    return _swap_words(raw)


def decode_stream_id(data: bytes) -> str:
    """
    The stream id in a SID extension payload: every 32-bit word
    byte-reversed back, trailing NULs stripped, decoded as UTF-8.
    """
    data = bytes(data)
    if len(data) % 4:
        raise SRTProtocolError("SID extension is not whole 32-bit words")
    raw = _swap_words(data).rstrip(b"\0")
    if len(raw) > MAX_STREAM_ID:
        raise SRTProtocolError(f"stream id of {len(raw)} bytes, the maximum is {MAX_STREAM_ID}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SRTProtocolError("stream id is not UTF-8") from e


def _swap_words(data: bytes) -> bytes:
    n = len(data) // 4
    if not n:
        return b""
    return struct.pack(f"<{n}I", *struct.unpack(f">{n}I", data))


def encode_peer_ip(host: str) -> bytes:
    """
    The handshake's 16-byte peer IP field for *host*: an IPv4 address in the
    first word, byte-reversed (127.0.0.1 is C{01 00 00 7f}), or an IPv6
    address with every word byte-reversed.
    """
    try:
        addr = ipaddress.ip_address(host)
    except ValueError as e:
        raise SRTProtocolError(f"not an IP address: {host!r}") from e
    packed = addr.packed
    if len(packed) == 4:
        packed += bytes(12)
    return _swap_words(packed)


def decode_peer_ip(data: bytes) -> str:
    """The address in a handshake peer IP field (IPv4 when words 1-3 are 0)."""
    data = _peer_ip(data)
    raw = _swap_words(data)
    if not any(raw[4:]):
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw))


# ---------------------------------------------------------------------------
# Other control packets
# ---------------------------------------------------------------------------


@frozen
class KeepAlive:
    timestamp: int = 0
    dst: int = 0

    @_checked
    def encode(self) -> bytes:
        return _control_header(CTRL_KEEPALIVE, 0, 0, self.timestamp, self.dst) + _PAD


_ACK_LIGHT = 4
_ACK_SMALL = 16
_ACK_BASE = 24
_ACK_FULL = 28


@frozen
class Ack:
    """
    An ACK.  C{last_ack_seq} is the first sequence number not yet received
    (everything before it is).  A light ACK has only that (C{rtt} is None;
    its C{ack_number} is 0 by convention); a small ACK adds RTT, RTT
    variance (microseconds) and the free buffer in packets; a full ACK adds
    the packet receive rate (packets/s), the estimated link capacity
    (packets/s) and the receive rate in bytes/s (None in the 24-byte UDT
    form).
    """

    ack_number: int
    last_ack_seq: int
    rtt: Optional[int] = None
    rtt_var: Optional[int] = None
    buffer_available: Optional[int] = None
    packet_rate: Optional[int] = None
    bandwidth: Optional[int] = None
    byte_rate: Optional[int] = None
    timestamp: int = 0
    dst: int = 0

    @property
    def kind(self) -> str:
        """C{"light"}, C{"small"} or C{"full"}."""
        if self.rtt is None:
            return "light"
        if self.packet_rate is None:
            return "small"
        return "full"

    @_checked
    def encode(self) -> bytes:
        words = [_seq31("acknowledged sequence", self.last_ack_seq)]
        if self.rtt is not None:
            if self.rtt_var is None or self.buffer_available is None:
                raise SRTProtocolError("a small ACK needs rtt, rtt_var and buffer_available")
            words.extend((self.rtt, self.rtt_var, self.buffer_available))
            if self.packet_rate is not None:
                if self.bandwidth is None:
                    raise SRTProtocolError("a full ACK needs packet_rate and bandwidth")
                words.append(self.packet_rate)
                words.append(self.bandwidth)
                if self.byte_rate is not None:
                    words.append(self.byte_rate)
        for w in words:
            _u32("ACK field", w)
        return _control_header(
            CTRL_ACK, 0, self.ack_number, self.timestamp, self.dst
        ) + struct.pack(f">{len(words)}I", *words)


def _decode_ack(info: int, ts: int, dst: int, data: bytes) -> Ack:
    n = len(data) - HEADER_SIZE
    if n == _ACK_LIGHT:
        return Ack(info, _U32.unpack_from(data, HEADER_SIZE)[0] & SEQ_MASK, timestamp=ts, dst=dst)
    if n == _ACK_SMALL:
        seq, rtt, var, buf = struct.unpack_from(">4I", data, HEADER_SIZE)
        return Ack(info, seq & SEQ_MASK, rtt, var, buf, timestamp=ts, dst=dst)
    if n == _ACK_BASE:
        seq, rtt, var, buf, rate, bw = struct.unpack_from(">6I", data, HEADER_SIZE)
        return Ack(info, seq & SEQ_MASK, rtt, var, buf, rate, bw, None, ts, dst)
    if n >= _ACK_FULL:
        # 28 bytes in SRT; 1.0.2 peers added a 32-bit word we ignore.
        seq, rtt, var, buf, rate, bw, brate = struct.unpack_from(">7I", data, HEADER_SIZE)
        return Ack(info, seq & SEQ_MASK, rtt, var, buf, rate, bw, brate, ts, dst)
    raise SRTProtocolError(f"ACK with a {n}-byte CIF")


def encode_loss_list(ranges: Iterable[tuple[int, int]]) -> bytes:
    """
    The NAK loss list for (first, last) ranges: one word for a single
    sequence number, the first with the top bit set then the last for a
    range.
    """
    words = []
    for first, last in ranges:
        _seq31("lost sequence", first)
        _seq31("lost sequence", last)
        if first == last:
            words.append(first)
        else:
            words.append(first | 0x80000000)
            words.append(last)
    return struct.pack(f">{len(words)}I", *words)


def decode_loss_list(data: bytes, offset: int = 0) -> tuple[tuple[int, int], ...]:
    """Parse a loss list into (first, last) ranges."""
    n = (len(data) - offset) // 4
    if (len(data) - offset) % 4:
        raise SRTProtocolError("loss list is not whole 32-bit words")
    words = struct.unpack_from(f">{n}I", data, offset)
    out = []
    i = 0
    while i < n:
        w = words[i]
        if w & 0x80000000:
            if i + 1 >= n or words[i + 1] & 0x80000000:
                raise SRTProtocolError("loss list range without its last sequence number")
            first, last = w & SEQ_MASK, words[i + 1]
            if seq_diff(last, first) < 0:
                raise SRTProtocolError("loss list range ends before it starts")
            out.append((first, last))
            i += 2
        else:
            out.append((w, w))
            i += 1
    return tuple(out)


def _range_tuples(ranges: Iterable[Iterable[int]]) -> tuple[tuple[int, int], ...]:
    # as given: encode_loss_list checks each range
    return cast("tuple[tuple[int, int], ...]", tuple(map(tuple, ranges)))


@frozen
class Nak:
    """A NAK (loss report): (first, last) sequence ranges, inclusive."""

    ranges: tuple[tuple[int, int], ...] = field(converter=_range_tuples)
    timestamp: int = 0
    dst: int = 0

    @_checked
    def encode(self) -> bytes:
        return _control_header(CTRL_NAK, 0, 0, self.timestamp, self.dst) + encode_loss_list(
            self.ranges
        )


@frozen
class Shutdown:
    timestamp: int = 0
    dst: int = 0

    @_checked
    def encode(self) -> bytes:
        return _control_header(CTRL_SHUTDOWN, 0, 0, self.timestamp, self.dst) + _PAD


@frozen
class AckAck:
    """ACKACK: the sender's answer to a full ACK, with its ACK number."""

    ack_number: int
    timestamp: int = 0
    dst: int = 0

    @_checked
    def encode(self) -> bytes:
        return _control_header(CTRL_ACKACK, 0, self.ack_number, self.timestamp, self.dst) + _PAD


@frozen
class DropReq:
    """DROPREQ: the sender gave up on message *msgno*, sequences first..last."""

    msgno: int
    first: int
    last: int
    timestamp: int = 0
    dst: int = 0

    @_checked
    def encode(self) -> bytes:
        return _control_header(
            CTRL_DROPREQ, 0, self.msgno, self.timestamp, self.dst
        ) + struct.pack(">II", _seq31("first", self.first), _seq31("last", self.last))


@frozen
class PeerError:
    code: int
    timestamp: int = 0
    dst: int = 0

    @_checked
    def encode(self) -> bytes:
        return _control_header(CTRL_PEERERROR, 0, self.code, self.timestamp, self.dst) + _PAD


@frozen
class UnknownControl:
    """Any other control packet (congestion warning, user-defined, future types)."""

    type: int
    subtype: int
    info: int
    body: bytes
    timestamp: int = 0
    dst: int = 0

    @_checked
    def encode(self) -> bytes:
        return _control_header(self.type, self.subtype, self.info, self.timestamp, self.dst) + bytes(
            self.body
        )


Packet = Union[
    DataPacket,
    Handshake,
    KeepAlive,
    Ack,
    Nak,
    Shutdown,
    AckAck,
    DropReq,
    PeerError,
    UnknownControl,
]


def decode_packet(datagram: bytes) -> Packet:
    """Decode one UDP payload."""
    if not isinstance(datagram, bytes):
        try:
            datagram = bytes(datagram)
        except TypeError as e:
            raise SRTProtocolError("a datagram must be bytes") from e
    if len(datagram) < HEADER_SIZE:
        raise SRTProtocolError(f"datagram of {len(datagram)} bytes, shorter than the header")
    w0, info, ts, dst = HEADER.unpack_from(datagram)
    if not w0 & 0x80000000:
        return _decode_data(w0, info, ts, dst, datagram)
    ctype = (w0 >> 16) & 0x7FFF
    if ctype == CTRL_ACK:
        return _decode_ack(info, ts, dst, datagram)
    if ctype == CTRL_NAK:
        return Nak(decode_loss_list(datagram, HEADER_SIZE), ts, dst)
    if ctype == CTRL_ACKACK:
        return AckAck(info, ts, dst)
    if ctype == CTRL_KEEPALIVE:
        return KeepAlive(ts, dst)
    if ctype == CTRL_HANDSHAKE:
        return _decode_handshake(ts, dst, datagram)
    if ctype == CTRL_DROPREQ:
        if len(datagram) < HEADER_SIZE + 8:
            raise SRTProtocolError("DROPREQ shorter than its two sequence numbers")
        first, last = struct.unpack_from(">II", datagram, HEADER_SIZE)
        return DropReq(info, first & SEQ_MASK, last & SEQ_MASK, ts, dst)
    if ctype == CTRL_SHUTDOWN:
        return Shutdown(ts, dst)
    if ctype == CTRL_PEERERROR:
        return PeerError(info, ts, dst)
    return UnknownControl(ctype, w0 & 0xFFFF, info, datagram[HEADER_SIZE:], ts, dst)


def encode_packet(packet: Packet) -> bytes:
    """Encode any packet class of this module."""
    try:
        encode = packet.encode
    except AttributeError as e:
        raise SRTProtocolError(f"not an SRT packet: {type(packet).__name__}") from e
    data: bytes = encode()
    return data
