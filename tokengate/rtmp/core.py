# -*- test-case-name: tests.test_rtmp_core -*-
"""
A sans-IO RTMP connection: handshake, chunk stream, message decoding and
encoding.  Pure Python, no Twisted, no sockets, no clock.

Usage, in the style of h11 and wsproto::

    conn = RTMPConnection(SERVER)         # or CLIENT
    events = conn.receive_data(data)      # bytes from the peer -> events
    transport.write(conn.data_to_send())  # queued bytes for the peer

C{RTMPConnection(role, *, max_message_size=4 MiB, max_chunk_streams=64,
max_pending_bytes=None, max_amf_message_size=None, random_bytes=os.urandom)}; C{role} is
L{SERVER} (C{"server"}) or L{CLIENT} (C{"client"}).  State:
C{role}, C{bytes_received}, C{handshake_complete},
C{handshake_echo_ok}, C{in_chunk_size}, C{out_chunk_size},
C{ack_window}.

C{receive_data(data) -> list[Event]} returns the events parsed from C{data} and
raises L{RTMPProtocolError} (the package's only error) on malformed
input or when a limit is exceeded.  After an error the connection is dead:
every later C{receive_data} raises again, drop the transport.  Events
parsed earlier in the failing call are lost.

C{receive_into(data, media, event)} parses the same way but hands over
what it completes as it goes, in order: audio and video as
C{media(type_id, stream_id, timestamp, payload)} calls, with no event
object per message (a server's ingest path), everything else as
C{event(ev)}.

C{data_to_send() -> bytes} drains everything queued: handshake bytes,
acknowledgements and whatever the C{send_*} methods queued.  Chunk-layer
output queued before the handshake is complete (a client has queued C2, a
server has read C2) is held back until then, so sending early is safe.

Handshake
=========
Simple (non-digest) handshake.  A server answers C0+C1 with S0+S1+S2 at
once (S1 = time 0, four zero bytes, 1528 random bytes; S2 = C1), then
reads C2; a C2 that does not echo S1 only sets
C{handshake_echo_ok = False}.  A client queues C0+C1 when constructed,
reads S0+S1+S2 and answers C2 = S1.  A version byte other than 3 is an
error.  Both roles emit L{HandshakeComplete} when done.

Receiving
=========
Chunk reassembly with interleaved chunk streams, formats 0-3, timestamp
deltas, extended timestamps (read on every chunk, continuation chunks
included, whose header field is 0xFFFFFF, as ffmpeg does), the peer's
Set Chunk Size applied by the parser (0 or a set top bit is an error)
and Abort.  A fmt 1/2/3 chunk on a chunk stream that never had a fmt 0
is an error.  A fmt 0/1/2 header in the middle of a message continues
that message if it announces the same length (ffmpeg does the same) and
is an error otherwise.  Timestamps in events are absolute, modulo 2**32.
Limits (constructor arguments, changed later by C{set_limits}):
C{max_message_size} (default 4 MiB, a larger announced length is an
error), C{max_chunk_streams} (distinct csids, default 64) and
C{max_pending_bytes} (default twice C{max_message_size}): what the
incomplete messages of all chunk streams may hold, in bytes, counting
C{PIECE_COST} (48) per chunk payload held besides its bytes, so that a
tiny chunk size cannot multiply memory; a partial message held in more
than C{COALESCE_PIECES} (1024) pieces is coalesced into one buffer, so
a peer with a tiny chunk size still gets its budget's worth of bytes.
C{pending_bytes} is what is held.  C{max_amf_message_size} (default
C{max_message_size}) bounds command and data messages apart, as their
decoded values take many times their encoded size.  A limit error has
C{limit=True}.
Between calls at most one partial chunk header (< 18 bytes) is kept:
chunk payloads are consumed as they arrive.

When the peer sent a Window Acknowledgement Size, an Acknowledgement is
queued each time C{bytes_received} (every byte fed to
C{receive_data}, handshake included) grows by a window or more.

Events (frozen attrs classes)
=============================
C{HandshakeComplete()},
C{Command(stream_id, timestamp, name, transaction_id, command_object,
args)} for types 20 and 17 (the AMF3 command's leading byte is skipped,
the rest is AMF0; a null or undefined transaction id becomes 0.0),
C{DataMessage(stream_id, timestamp, values)} for types 18 and 15,
C{AudioData(stream_id, timestamp, payload)} (8),
C{VideoData(stream_id, timestamp, payload)} (9),
C{UserControl(event_type, data)} (4), C{WindowAckSize(size)} (5),
C{SetPeerBandwidth(size, limit_type)} (6),
C{Acknowledgement(sequence)} (3), C{SetChunkSize(size)} (1, already
applied), C{Abort(csid)} (2, already applied) and
C{UnknownMessage(type_id, stream_id, timestamp, payload)}.

Sending
=======
C{send_message(csid, stream_id, type_id, timestamp, payload)} chunks at
the current outgoing chunk size (C{out_chunk_size}): the first chunk is
fmt 0, or fmt 1 when the previous message on that csid had the same
stream id and the timestamp delta fits 24 bits; continuation chunks are
fmt 3 and repeat the extended timestamp.  Helpers: C{send_set_chunk_size}
(switches the outgoing size after queueing the message),
C{send_window_ack_size}, C{send_set_peer_bandwidth},
C{send_acknowledgement}, C{send_abort}, C{send_user_control},
C{send_stream_begin}, C{send_stream_eof}, C{send_command},
C{send_data}, C{send_audio}, C{send_video}, C{send_status}.  Bad
arguments (csid outside 2..65599, a payload over 0xFFFFFF bytes, a value
AMF0 cannot encode) raise C{ValueError} or C{TypeError}.

Chunk stream ids used by the helpers (those of nginx-rtmp):

  - 2: protocol control and user control (types 1-6), stream id 0
  - 3: commands (type 20), C{onStatus} included
  - 5: data messages (type 18, C{onMetaData})
  - 6: audio (type 8)
  - 7: video (type 9)

Fan-out
=======
L{encode_message} is a pure function of (csid, stream id, type,
timestamp, payload, chunk size) returning the chunked bytes (fmt 0 then
fmt 3).  Encode a message once per distinct (chunk size, timestamp)
and hand the bytes to every player sharing them with
C{conn.send_encoded(csid, stream_id, timestamp, data)}, which queues them
and records the csid state so later C{send_message} calls stay right.
C{send_message} itself is cheap: it queues the header and zero-copy
views of the payload, joined once by C{data_to_send}.
"""

from __future__ import annotations

import os
from functools import lru_cache
from struct import Struct
from typing import Callable, Union

from attrs import frozen

from tokengate.rtmp import amf0
from tokengate.rtmp.errors import RTMPProtocolError

__all__ = [
    "CLIENT",
    "SERVER",
    "Abort",
    "Acknowledgement",
    "AudioData",
    "Command",
    "DataMessage",
    "Event",
    "HandshakeComplete",
    "RTMPConnection",
    "RTMPProtocolError",
    "SetChunkSize",
    "SetPeerBandwidth",
    "UnknownMessage",
    "UserControl",
    "VideoData",
    "WindowAckSize",
    "encode_message",
]

SERVER = "server"
CLIENT = "client"

RTMP_VERSION = 3
HANDSHAKE_SIZE = 1536
DEFAULT_CHUNK_SIZE = 128
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_CHUNK_STREAMS = 64
MAX_CHUNK_SIZE = 0x7FFFFFFF
#: What the parser charges per held chunk payload besides its bytes: the
#: bytes object's header and its list slot (CPython, 64-bit, rounded up).
PIECE_COST = 48
#: A partial message held in more pieces than this is coalesced into one
#: buffer, so a tiny chunk size costs bytes, not per-chunk objects.
COALESCE_PIECES = 1024
MAX_MESSAGE_LENGTH = 0xFFFFFF  # the header's length field is 24 bits
MIN_CSID = 2
MAX_CSID = 65599

# Message type ids.
MSG_SET_CHUNK_SIZE = 1
MSG_ABORT = 2
MSG_ACKNOWLEDGEMENT = 3
MSG_USER_CONTROL = 4
MSG_WINDOW_ACK_SIZE = 5
MSG_SET_PEER_BANDWIDTH = 6
MSG_AUDIO = 8
MSG_VIDEO = 9
MSG_DATA_AMF3 = 15
MSG_COMMAND_AMF3 = 17
MSG_DATA_AMF0 = 18
MSG_COMMAND_AMF0 = 20

# User control event types.
UC_STREAM_BEGIN = 0
UC_STREAM_EOF = 1
UC_STREAM_DRY = 2
UC_SET_BUFFER_LENGTH = 3
UC_STREAM_IS_RECORDED = 4
UC_PING_REQUEST = 6
UC_PING_RESPONSE = 7

# Set Peer Bandwidth limit types.
LIMIT_HARD = 0
LIMIT_SOFT = 1
LIMIT_DYNAMIC = 2

# Chunk stream ids used by the send helpers.
CSID_CONTROL = 2
CSID_COMMAND = 3
CSID_DATA = 5
CSID_AUDIO = 6
CSID_VIDEO = 7

_MASK32 = 0xFFFFFFFF
_EXTENDED = 0xFFFFFF

_U32 = Struct(">I")
_U32LE = Struct("<I")
_U16 = Struct(">H")
# A fmt 1 message header: timestamp (u16 + u8), length (u16 + u8), type.
# fmt 0 is this plus a little-endian stream id; fmt 2 is its first 3 bytes.
_HDR7 = Struct(">HBHBB")
_HDR3 = Struct(">HB")


# ------------------------------------------------------------------ events


@frozen
class HandshakeComplete:
    """
    The handshake is done; chunk-stream messages follow.
    """


@frozen
class Command:
    """
    A command message (type 20, or 17 with its AMF3 format byte skipped).
    """

    stream_id: int
    timestamp: int
    name: str
    transaction_id: float
    command_object: amf0.AMFValue
    args: tuple[amf0.AMFValue, ...]


@frozen
class DataMessage:
    """
    A data message (type 18, or 15 with its format byte skipped), such as
    C{@setDataFrame}/C{onMetaData}.
    """

    stream_id: int
    timestamp: int
    values: tuple[amf0.AMFValue, ...]


@frozen
class AudioData:
    stream_id: int
    timestamp: int
    payload: bytes


@frozen
class VideoData:
    stream_id: int
    timestamp: int
    payload: bytes


@frozen
class UserControl:
    """
    A user control message: C{data} is the event data after the u16 type.
    """

    event_type: int
    data: bytes


@frozen
class WindowAckSize:
    size: int


@frozen
class SetPeerBandwidth:
    size: int
    limit_type: int


@frozen
class Acknowledgement:
    sequence: int


@frozen
class SetChunkSize:
    """
    The peer changed its chunk size; the parser has already applied it.
    """

    size: int


@frozen
class Abort:
    """
    The peer aborted the partial message of chunk stream C{csid}; the parser
    has already discarded it.
    """

    csid: int


@frozen
class UnknownMessage:
    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes


#: What L{RTMPConnection.receive_data} returns a list of.
Event = Union[
    HandshakeComplete,
    Command,
    DataMessage,
    AudioData,
    VideoData,
    UserControl,
    WindowAckSize,
    SetPeerBandwidth,
    Acknowledgement,
    SetChunkSize,
    Abort,
    UnknownMessage,
]

#: A protocol control or user control message.
_Control = Union[UserControl, SetChunkSize, Abort, Acknowledgement, WindowAckSize, SetPeerBandwidth]

#: One piece of outgoing bytes (a chunk header, or a view of a payload).
_Out = Union[bytes, memoryview]


# ----------------------------------------------------------------- writing


@lru_cache(maxsize=4096)
def _basic_header(fmt: int, csid: int) -> bytes:
    if MIN_CSID <= csid <= 63:
        return bytes([(fmt << 6) | csid])
    if 64 <= csid <= 319:
        return bytes([fmt << 6, csid - 64])
    if 320 <= csid <= MAX_CSID:
        c = csid - 64
        return bytes([(fmt << 6) | 1, c & 0xFF, c >> 8])
    raise ValueError(f"chunk stream id {csid} outside {MIN_CSID}..{MAX_CSID}")


def _check_message(stream_id: int, type_id: int, length: int) -> None:
    if not 0 <= stream_id <= _MASK32:
        raise ValueError(f"stream id {stream_id} outside 0..2**32-1")
    if not 0 <= type_id <= 255:
        raise ValueError(f"message type {type_id} outside 0..255")
    if length > MAX_MESSAGE_LENGTH:
        raise ValueError(f"message of {length} bytes is too long for RTMP")


def _fmt0(csid: int, stream_id: int, type_id: int, ts: int, length: int) -> tuple[bytes, bytes]:
    """
    The first-chunk header and the continuation-chunk header of a message
    sent with a fmt 0 header.
    """
    cont = _basic_header(3, csid)
    if ts >= _EXTENDED:
        ext = _U32.pack(ts)
        head = (
            _basic_header(0, csid)
            + _HDR7.pack(0xFFFF, 0xFF, length >> 8, length & 0xFF, type_id)
            + _U32LE.pack(stream_id)
            + ext
        )
        return head, cont + ext
    head = (
        _basic_header(0, csid)
        + _HDR7.pack(ts >> 8, ts & 0xFF, length >> 8, length & 0xFF, type_id)
        + _U32LE.pack(stream_id)
    )
    return head, cont


def _chunk_into(
    append: Callable[[_Out], None], head: bytes, cont: bytes, payload: bytes, size: int
) -> None:
    n = len(payload)
    append(head)
    if n <= size:
        append(payload)
        return
    view = memoryview(payload)
    append(view[:size])
    for offset in range(size, n, size):
        append(cont)
        append(view[offset : offset + size])


def encode_message(
    csid: int,
    stream_id: int,
    type_id: int,
    timestamp: int,
    payload: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytes:
    """
    The chunked bytes of one message: a fmt 0 chunk, then fmt 3 chunks (with
    the extended timestamp repeated when C{timestamp} >= 0xFFFFFF).  A pure
    function; C{timestamp} is taken modulo 2**32.
    """
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {chunk_size} outside 1..{MAX_CHUNK_SIZE}")
    _check_message(stream_id, type_id, len(payload))
    payload = bytes(payload)
    head, cont = _fmt0(csid, stream_id, type_id, timestamp & _MASK32, len(payload))
    parts: list[_Out] = []
    _chunk_into(parts.append, head, cont, payload, chunk_size)
    return b"".join(parts)


# ----------------------------------------------------------------- reading


class _InStream:
    """
    What the parser remembers about one incoming chunk stream.
    """

    __slots__ = (
        "ts_field",
        "timestamp",
        "delta",
        "length",
        "type_id",
        "stream_id",
        "pieces",
        "got",
        "held",
        "c3",
    )

    def __init__(self) -> None:
        self.ts_field = 0  # raw 24-bit timestamp field of the last header
        self.timestamp = 0  # absolute timestamp of the current message
        self.delta = 0  # added for a new message started by a fmt 3 chunk
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.pieces: list[bytes | bytearray] = []  # payload received so far
        self.got = 0  # len(b"".join(pieces)); 0 when no message in progress
        # What these pieces are charged to the connection's pending bytes:
        # got + PIECE_COST per piece (see _held).
        self.held = 0
        # The first byte of a fmt 3 chunk on this stream when that is the
        # whole chunk header (csid < 64, no extended timestamp), else -1.
        self.c3 = -1


_HS_C0C1 = "C0C1"  # server, waiting for C0+C1
_HS_C2 = "C2"  # server, waiting for C2
_HS_S0S1S2 = "S0S1S2"  # client, waiting for S0+S1+S2
_CHUNKS = "CHUNKS"


class RTMPConnection:
    """
    One end of an RTMP connection; see the module docstring.

    @ivar role: L{SERVER} or L{CLIENT}.
    @ivar bytes_received: every byte passed to L{receive_data}.
    @ivar handshake_echo_ok: C{None} until known, then whether the peer's
        echo (C2 for a server, S2 for a client) matched what we sent.
    """

    def __init__(
        self,
        role: str,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_chunk_streams: int = DEFAULT_MAX_CHUNK_STREAMS,
        max_pending_bytes: int | None = None,
        max_amf_message_size: int | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if role not in (SERVER, CLIENT):
            raise ValueError(f"role must be {SERVER!r} or {CLIENT!r}, not {role!r}")
        self.role = role
        self._max_message_size = max_message_size
        self._max_chunk_streams = max_chunk_streams
        self._max_pending = (
            2 * max_message_size if max_pending_bytes is None else max_pending_bytes
        )
        self._max_amf = (
            max_message_size if max_amf_message_size is None else max_amf_message_size
        )
        self._random_bytes = random_bytes
        self.bytes_received = 0
        self.handshake_echo_ok: bool | None = None
        self._dead = False

        # handshake
        self._hs_buf = bytearray()
        self._hs_out: list[_Out] = []
        self._sent_hs: bytes = b""  # our C1 or S1
        # chunk layer, receiving
        self._tail = b""  # an incomplete chunk header
        self._streams: dict[int, _InStream] = {}
        self._cur: _InStream | None = None  # stream whose chunk payload is due
        self._left = 0  # bytes of that chunk payload still due
        self._pending = 0
        self._in_chunk_size = DEFAULT_CHUNK_SIZE
        self._ack_window = 0
        self._last_ack = 0
        # chunk layer, sending
        self._out: list[_Out] = []
        self._out_open = False  # the handshake is complete
        self._out_chunk_size = DEFAULT_CHUNK_SIZE
        self._out_last: dict[int, tuple[int, int]] = {}  # csid: (sid, ts)

        if role == SERVER:
            self._state = _HS_C0C1
            self._hs_need = 1 + HANDSHAKE_SIZE
        else:
            self._state = _HS_S0S1S2
            self._hs_need = 1 + 2 * HANDSHAKE_SIZE
            self._sent_hs = self._handshake_packet()
            self._hs_out.append(bytes([RTMP_VERSION]) + self._sent_hs)

    # ------------------------------------------------------------ public

    @property
    def in_chunk_size(self) -> int:
        """
        The peer's chunk size, as set by its last Set Chunk Size.
        """
        return self._in_chunk_size

    @property
    def out_chunk_size(self) -> int:
        """
        The chunk size of what we send.
        """
        return self._out_chunk_size

    @property
    def ack_window(self) -> int:
        """
        The window the peer asked us to acknowledge (0: none).
        """
        return self._ack_window

    def set_limits(
        self,
        *,
        max_message_size: int | None = None,
        max_pending_bytes: int | None = None,
        max_amf_message_size: int | None = None,
    ) -> None:
        """
        Change the receiving limits (a server raises them once a publish or
        play is admitted).  A lower limit applies to the next message and the
        next byte held: the budget is checked whenever a partial message
        grows, so lowering it below what is held fails that growth.
        """
        if max_message_size is not None:
            self._max_message_size = max_message_size
        if max_pending_bytes is not None:
            self._max_pending = max_pending_bytes
        if max_amf_message_size is not None:
            self._max_amf = max_amf_message_size

    @property
    def pending_bytes(self) -> int:
        """
        What the partial messages held cost: their bytes plus L{PIECE_COST}
        per piece they are held in.
        """
        return self._pending

    @property
    def handshake_complete(self) -> bool:
        return self._state == _CHUNKS

    def receive_data(self, data: bytes) -> list[Event]:
        """
        Feed bytes from the peer; return the events they complete.

        @raise RTMPProtocolError: on malformed input or an exceeded limit;
            the connection is then dead.
        """
        events: list[Event] = []
        append = events.append

        def media(type_id: int, stream_id: int, timestamp: int, payload: bytes) -> None:
            if type_id == MSG_VIDEO:
                append(VideoData(stream_id, timestamp, payload))
            else:
                append(AudioData(stream_id, timestamp, payload))

        self._feed(data, media, append)
        return events

    def receive_into(
        self,
        data: bytes,
        media: Callable[[int, int, int, bytes], None],
        event: Callable[[Event], None],
    ) -> None:
        """
        Feed bytes from the peer and hand over what they complete as it is
        parsed, in the order of the stream: each audio or video message as
        C{media(type_id, stream_id, timestamp, payload)} (C{type_id} 8 or
        9; no event object is made for it) and every other event as
        C{event(ev)}.  The callbacks may queue output and change limits;
        they must not feed this connection again.  What was handed over
        before an error stays handed over.

        @raise RTMPProtocolError: on malformed input or an exceeded limit;
            the connection is then dead.  An exception from a callback
            also leaves the connection dead and propagates.
        """
        self._feed(data, media, event)

    def _feed(
        self,
        data: bytes,
        media: Callable[[int, int, int, bytes], None],
        emit: Callable[[Event], None],
    ) -> None:
        if self._dead:
            raise RTMPProtocolError("the connection already failed")
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            return
        self.bytes_received += len(data)
        try:
            if self._state != _CHUNKS:
                data = self._receive_handshake(data, emit)
            if data:
                self._receive_chunks(data, media, emit)
        except BaseException:
            self._dead = True
            raise
        window = self._ack_window
        if window and self.bytes_received - self._last_ack >= window:
            self._last_ack = self.bytes_received
            self.send_acknowledgement(self.bytes_received & _MASK32)

    def data_to_send(self) -> bytes:
        """
        Drain and return the bytes queued for the peer.
        """
        parts = self._hs_out
        if self._out_open and self._out:
            parts.extend(self._out)
            self._out = []
        if not parts:
            return b""
        self._hs_out = []
        return b"".join(parts)

    # ---------------------------------------------------------- sending

    def send_message(
        self, csid: int, stream_id: int, type_id: int, timestamp: int, payload: bytes
    ) -> None:
        """
        Queue one message on chunk stream C{csid}; C{timestamp} is taken
        modulo 2**32.
        """
        if type(payload) is not bytes:
            payload = bytes(payload)
        length = len(payload)
        _check_message(stream_id, type_id, length)
        ts = timestamp & _MASK32
        out_last = self._out_last
        last = out_last.get(csid)
        if last is not None and last[0] == stream_id:
            delta = (ts - last[1]) & _MASK32
            if delta < _EXTENDED:
                head = _basic_header(1, csid) + _HDR7.pack(
                    delta >> 8, delta & 0xFF, length >> 8, length & 0xFF, type_id
                )
                cont = _basic_header(3, csid)
            else:
                head, cont = _fmt0(csid, stream_id, type_id, ts, length)
        else:
            head, cont = _fmt0(csid, stream_id, type_id, ts, length)
        out_last[csid] = (stream_id, ts)
        _chunk_into(self._out.append, head, cont, payload, self._out_chunk_size)

    def send_encoded(self, csid: int, stream_id: int, timestamp: int, data: bytes) -> None:
        """
        Queue the output of L{encode_message} (made with this connection's
        L{out_chunk_size} and the same csid, stream id and timestamp).
        """
        _basic_header(0, csid)  # validates csid
        self._out_last[csid] = (stream_id, timestamp & _MASK32)
        self._out.append(bytes(data))

    def send_set_chunk_size(self, size: int) -> None:
        """
        Queue a Set Chunk Size and use C{size} for everything sent after it.
        """
        if not 1 <= size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {size} outside 1..{MAX_CHUNK_SIZE}")
        self.send_message(CSID_CONTROL, 0, MSG_SET_CHUNK_SIZE, 0, _U32.pack(size))
        self._out_chunk_size = size

    def send_abort(self, csid: int) -> None:
        self.send_message(CSID_CONTROL, 0, MSG_ABORT, 0, _U32.pack(csid))

    def send_acknowledgement(self, sequence: int) -> None:
        self.send_message(
            CSID_CONTROL, 0, MSG_ACKNOWLEDGEMENT, 0, _U32.pack(sequence & _MASK32)
        )

    def send_window_ack_size(self, size: int) -> None:
        self.send_message(CSID_CONTROL, 0, MSG_WINDOW_ACK_SIZE, 0, _U32.pack(size))

    def send_set_peer_bandwidth(self, size: int, limit_type: int = LIMIT_DYNAMIC) -> None:
        self.send_message(
            CSID_CONTROL,
            0,
            MSG_SET_PEER_BANDWIDTH,
            0,
            _U32.pack(size) + bytes([limit_type]),
        )

    def send_user_control(self, event_type: int, data: bytes = b"") -> None:
        self.send_message(
            CSID_CONTROL, 0, MSG_USER_CONTROL, 0, _U16.pack(event_type) + bytes(data)
        )

    def send_stream_begin(self, stream_id: int) -> None:
        self.send_user_control(UC_STREAM_BEGIN, _U32.pack(stream_id))

    def send_stream_eof(self, stream_id: int) -> None:
        self.send_user_control(UC_STREAM_EOF, _U32.pack(stream_id))

    def send_command(
        self,
        stream_id: int,
        name: str,
        transaction_id: float,
        command_object: object = None,
        *args: object,
    ) -> None:
        """
        Queue an AMF0 command (type 20) on csid 3, timestamp 0.
        """
        payload = amf0.encode(name, transaction_id, command_object, *args)
        self.send_message(CSID_COMMAND, stream_id, MSG_COMMAND_AMF0, 0, payload)

    def send_data(self, stream_id: int, timestamp: int, *values: object) -> None:
        """
        Queue an AMF0 data message (type 18) on csid 5.
        """
        self.send_message(
            CSID_DATA, stream_id, MSG_DATA_AMF0, timestamp, amf0.encode(*values)
        )

    def send_audio(self, stream_id: int, timestamp: int, payload: bytes) -> None:
        self.send_message(CSID_AUDIO, stream_id, MSG_AUDIO, timestamp, payload)

    def send_video(self, stream_id: int, timestamp: int, payload: bytes) -> None:
        self.send_message(CSID_VIDEO, stream_id, MSG_VIDEO, timestamp, payload)

    def send_status(
        self,
        stream_id: int,
        level: str,
        code: str,
        description: str,
        details: object = None,
    ) -> None:
        """
        Queue C{onStatus(0, null, {level, code, description[, details]})}.
        """
        info: dict[str, object] = {"level": level, "code": code, "description": description}
        if details is not None:
            info["details"] = details
        self.send_command(stream_id, "onStatus", 0, None, info)

    # -------------------------------------------------------- handshake

    def _handshake_packet(self) -> bytes:
        # time 0 (our epoch), four zero bytes (no FP9 digest), random bytes
        random = self._random_bytes(HANDSHAKE_SIZE - 8)
        if len(random) != HANDSHAKE_SIZE - 8:
            raise ValueError("random_bytes returned the wrong length")
        return bytes(8) + random

    def _receive_handshake(self, data: bytes, emit: Callable[[Event], None]) -> bytes:
        """
        Consume handshake bytes; return what follows the handshake.
        """
        pos = 0
        buf = self._hs_buf
        while self._state != _CHUNKS:
            need = self._hs_need - len(buf)
            if pos >= len(data):
                return b""
            buf += data[pos : pos + need]
            pos += need
            if self._state != _HS_C2 and buf[0] != RTMP_VERSION:
                raise RTMPProtocolError(f"unsupported RTMP version {buf[0]}")
            if len(buf) < self._hs_need:
                return b""
            packet = bytes(buf)
            buf.clear()
            if self._state == _HS_C0C1:
                self._sent_hs = self._handshake_packet()
                self._hs_out.append(
                    bytes([RTMP_VERSION]) + self._sent_hs + packet[1:]
                )
                self._state = _HS_C2
                self._hs_need = HANDSHAKE_SIZE
            elif self._state == _HS_C2:
                self.handshake_echo_ok = packet == self._sent_hs
                self._out_open = True
                self._state = _CHUNKS
                emit(HandshakeComplete())
            else:  # client, S0+S1+S2
                s1 = packet[1 : 1 + HANDSHAKE_SIZE]
                self.handshake_echo_ok = packet[1 + HANDSHAKE_SIZE :] == self._sent_hs
                self._hs_out.append(s1)
                self._out_open = True
                self._state = _CHUNKS
                emit(HandshakeComplete())
        return data[pos:]

    # ------------------------------------------------------ chunk layer

    def _new_stream(self, csid: int) -> _InStream:
        if len(self._streams) >= self._max_chunk_streams:
            raise RTMPProtocolError(
                f"more than {self._max_chunk_streams} chunk streams", limit=True
            )
        stream = self._streams[csid] = _InStream()
        return stream

    def _hold(self, cs: _InStream) -> None:
        """
        Charge the partial message of C{cs} (its bytes and its pieces) to the
        pending budget, after coalescing many small pieces into one.

        @raise RTMPProtocolError: the budget is exceeded.
        """
        pieces = cs.pieces
        if len(pieces) > COALESCE_PIECES:
            head = pieces[0]
            if type(head) is bytearray:
                head += b"".join(pieces[1:])
                del pieces[1:]
            else:
                pieces[:] = [bytearray().join(pieces)]
        held = cs.got + PIECE_COST * len(pieces)
        self._pending += held - cs.held
        cs.held = held
        if self._pending > self._max_pending:
            raise RTMPProtocolError(
                "more than {} bytes held for incomplete messages".format(self._max_pending),
                limit=True,
            )

    def _receive_chunks(
        self,
        data: bytes,
        media: Callable[[int, int, int, bytes], None],
        emit: Callable[[Event], None],
    ) -> None:
        if self._tail:
            data = self._tail + data
            self._tail = b""
        n = len(data)
        pos = 0
        streams = self._streams
        # cs is typed as never None, with no check in this loop: self._cur is
        # set whenever self._left is not 0 (see the end of the loop), and cs
        # is read before a chunk header assigns it only when left is not 0.
        cs: _InStream = self._cur  # type: ignore[assignment]  # None only when left is 0
        left = self._left
        chunk_size = self._in_chunk_size
        max_size = self._max_message_size
        u32 = _U32.unpack_from
        hdr7 = _HDR7.unpack_from
        while True:
            if left:
                # The payload of the current chunk.
                avail = n - pos
                if avail >= left:
                    end = pos + left
                    if cs.got == 0 and left == cs.length:
                        # The whole message in one chunk: one copy.
                        payload = data[pos:end]
                        pos = end
                        left = 0
                    else:
                        pieces = cs.pieces
                        pieces.append(data[pos:end])
                        length = cs.length
                        got = cs.got + left
                        pos = end
                        left = 0
                        if got < length:
                            # Fast path: the fmt 3 chunks that usually follow
                            # (1-byte basic header, no extended timestamp).
                            c3 = cs.c3
                            while pos < n and data[pos] == c3:
                                take = length - got
                                if take > chunk_size:
                                    take = chunk_size
                                end = pos + 1 + take
                                if end > n:
                                    break
                                pieces.append(data[pos + 1 : end])
                                got += take
                                pos = end
                                if got == length:
                                    break
                        if got < length:
                            cs.got = got
                            self._hold(cs)
                            continue
                        self._pending -= cs.held
                        cs.held = 0
                        payload = b"".join(pieces)
                        pieces.clear()
                        cs.got = 0
                    type_id = cs.type_id
                    if type_id == MSG_VIDEO or type_id == MSG_AUDIO:
                        media(type_id, cs.stream_id, cs.timestamp, payload)
                    else:
                        self._message(cs, payload, emit)
                        chunk_size = self._in_chunk_size
                    continue
                if avail:
                    cs.pieces.append(data[pos:])
                    cs.got += avail
                    self._hold(cs)
                    left -= avail
                    pos = n
                break

            # A chunk header; on a partial one, keep it for the next call.
            if pos >= n:
                break
            b0 = data[pos]
            fmt = b0 >> 6
            csid = b0 & 0x3F
            hp = pos + 1
            if csid < 2:
                if csid == 0:
                    if hp >= n:
                        break
                    csid = 64 + data[hp]
                    hp += 1
                else:
                    if hp + 2 > n:
                        break
                    csid = 64 + data[hp] + (data[hp + 1] << 8)
                    hp += 2
            # None here is handled below (a protocol error, or a new stream).
            cs = streams.get(csid)  # type: ignore[assignment]  # None: see just above
            if fmt == 3:
                if cs is None:
                    raise RTMPProtocolError(
                        f"type 3 chunk on chunk stream {csid} without a header"
                    )
                if cs.ts_field == _EXTENDED:
                    if hp + 4 > n:
                        break
                    extended = u32(data, hp)[0]
                    hp += 4
                    if not cs.got:
                        cs.delta = extended
                        cs.timestamp = (cs.timestamp + extended) & _MASK32
                elif not cs.got:
                    cs.timestamp = (cs.timestamp + cs.delta) & _MASK32
            elif fmt == 0:
                if hp + 11 > n:
                    break
                th, tl, lh, ll, type_id = hdr7(data, hp)
                ts_field = (th << 8) | tl
                if ts_field == _EXTENDED:
                    if hp + 15 > n:
                        break
                    ts = u32(data, hp + 11)[0]
                    after = hp + 15
                else:
                    ts = ts_field
                    after = hp + 11
                length = (lh << 8) | ll
                if cs is None:
                    cs = self._new_stream(csid)
                if cs.got:
                    if length != cs.length:
                        raise RTMPProtocolError(
                            f"new header in the middle of a message on chunk stream {csid}"
                        )
                else:
                    if length > max_size:
                        raise RTMPProtocolError(
                            f"message of {length} bytes exceeds the limit of {max_size}",
                            limit=True,
                        )
                    cs.ts_field = ts_field
                    cs.c3 = -1 if csid > 63 or ts_field == _EXTENDED else 0xC0 | csid
                    cs.timestamp = ts
                    cs.delta = ts
                    cs.length = length
                    cs.type_id = type_id
                    cs.stream_id = _U32LE.unpack_from(data, hp + 7)[0]
                hp = after
            else:
                if cs is None:
                    raise RTMPProtocolError(
                        f"type {fmt} chunk on chunk stream {csid} without a type 0 header"
                    )
                if fmt == 1:
                    if hp + 7 > n:
                        break
                    th, tl, lh, ll, type_id = hdr7(data, hp)
                    length = (lh << 8) | ll
                    after = hp + 7
                else:
                    if hp + 3 > n:
                        break
                    th, tl = _HDR3.unpack_from(data, hp)
                    length = cs.length
                    type_id = cs.type_id
                    after = hp + 3
                ts_field = (th << 8) | tl
                if ts_field == _EXTENDED:
                    if after + 4 > n:
                        break
                    delta = u32(data, after)[0]
                    after += 4
                else:
                    delta = ts_field
                if cs.got:
                    if length != cs.length:
                        raise RTMPProtocolError(
                            f"new header in the middle of a message on chunk stream {csid}"
                        )
                else:
                    if length > max_size:
                        raise RTMPProtocolError(
                            f"message of {length} bytes exceeds the limit of {max_size}",
                            limit=True,
                        )
                    cs.ts_field = ts_field
                    cs.c3 = -1 if csid > 63 or ts_field == _EXTENDED else 0xC0 | csid
                    cs.delta = delta
                    cs.timestamp = (cs.timestamp + delta) & _MASK32
                    cs.length = length
                    cs.type_id = type_id
                hp = after
            pos = hp
            remaining = cs.length - cs.got
            if remaining:
                left = remaining if remaining < chunk_size else chunk_size
            else:
                # A zero-length message.
                if cs.type_id == MSG_VIDEO or cs.type_id == MSG_AUDIO:
                    media(cs.type_id, cs.stream_id, cs.timestamp, b"")
                else:
                    self._message(cs, b"", emit)
                    chunk_size = self._in_chunk_size
        if not left and pos < n:
            self._tail = data[pos:]
        self._cur = cs if left else None
        self._left = left

    # --------------------------------------------------------- messages

    def _message(self, cs: _InStream, payload: bytes, emit: Callable[[Event], None]) -> None:
        """
        Turn one complete message other than audio and video into an
        event, applying protocol control.
        """
        type_id = cs.type_id
        if (
            type_id == MSG_COMMAND_AMF0
            or type_id == MSG_COMMAND_AMF3
            or type_id == MSG_DATA_AMF0
            or type_id == MSG_DATA_AMF3
        ) and len(payload) > self._max_amf:
            # Decoded AMF takes many times its encoded size: bound it apart.
            raise RTMPProtocolError(
                f"AMF message of {len(payload)} bytes exceeds the limit of {self._max_amf}",
                limit=True,
            )
        if type_id == MSG_COMMAND_AMF0 or type_id == MSG_COMMAND_AMF3:
            emit(
                self._command(cs, payload, 1 if type_id == MSG_COMMAND_AMF3 else 0)
            )
        elif type_id == MSG_DATA_AMF0 or type_id == MSG_DATA_AMF3:
            if type_id == MSG_DATA_AMF3:
                if not payload:
                    raise RTMPProtocolError("empty AMF3 data message")
                values = amf0.decode_all(memoryview(payload)[1:])
            else:
                values = amf0.decode_all(payload)
            emit(DataMessage(cs.stream_id, cs.timestamp, tuple(values)))
        elif 1 <= type_id <= 6:
            emit(self._control(type_id, payload))
        else:
            emit(UnknownMessage(type_id, cs.stream_id, cs.timestamp, payload))

    def _command(self, cs: _InStream, payload: bytes, skip: int) -> Command:
        if len(payload) <= skip:
            raise RTMPProtocolError("empty command message")
        values = amf0.decode_all(memoryview(payload)[skip:] if skip else payload)
        name = values[0]
        if not isinstance(name, str):
            raise RTMPProtocolError("command name is not a string")
        transaction_id = values[1] if len(values) > 1 else 0.0
        if transaction_id is None or transaction_id is amf0.UNDEFINED:
            transaction_id = 0.0
        elif not isinstance(transaction_id, float):
            raise RTMPProtocolError("command transaction id is not a number")
        return Command(
            cs.stream_id,
            cs.timestamp,
            name,
            transaction_id,
            values[2] if len(values) > 2 else None,
            tuple(values[3:]),
        )

    def _control(self, type_id: int, payload: bytes) -> _Control:
        if type_id == MSG_USER_CONTROL:
            if len(payload) < 2:
                raise RTMPProtocolError("short user control message")
            return UserControl(_U16.unpack_from(payload)[0], payload[2:])
        if len(payload) < 4:
            raise RTMPProtocolError(f"short protocol control message (type {type_id})")
        value = _U32.unpack_from(payload)[0]
        if type_id == MSG_SET_CHUNK_SIZE:
            if value == 0 or value > MAX_CHUNK_SIZE:
                raise RTMPProtocolError(f"invalid chunk size {value}")
            # Values above max_message_size are harmless: a chunk never
            # carries more than the rest of its message.
            self._in_chunk_size = value
            return SetChunkSize(value)
        if type_id == MSG_ABORT:
            stream = self._streams.get(value)
            if stream is not None and stream.got:
                self._pending -= stream.held
                stream.pieces.clear()
                stream.got = 0
                stream.held = 0
            return Abort(value)
        if type_id == MSG_ACKNOWLEDGEMENT:
            return Acknowledgement(value)
        if type_id == MSG_WINDOW_ACK_SIZE:
            self._ack_window = value
            return WindowAckSize(value)
        # MSG_SET_PEER_BANDWIDTH
        return SetPeerBandwidth(value, payload[4] if len(payload) > 4 else LIMIT_DYNAMIC)
