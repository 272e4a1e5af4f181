# -*- test-case-name: tests.test_media_codecs -*-
"""
A minimal FLV file reader and writer (FLV specification 10.1, annex E).

Pure code, no I/O: it works on bytes already read, e.g. to replay a captured
publish in tests and benchmarks.  Tag bodies are the payloads of RTMP
messages of the same type; parse them with
L{tokengate.media.codecs.parse_video_tag} and
L{tokengate.media.codecs.parse_audio_tag}.
"""

from __future__ import annotations

import struct
from typing import Iterator, Union

from attrs import frozen

from tokengate.media.errors import MediaError

__all__ = [
    "TAG_AUDIO",
    "TAG_VIDEO",
    "TAG_SCRIPT",
    "FlvHeader",
    "FlvTag",
    "parse_flv_header",
    "iter_flv_tags",
    "build_flv_header",
    "build_flv_tag",
]

Buffer = Union[bytes, bytearray, memoryview]

TAG_AUDIO = 8
TAG_VIDEO = 9
TAG_SCRIPT = 18

_HEADER = struct.Struct(">3sBBI")
_TAG = struct.Struct(">BHBHBBHB")  # type, size u24, timestamp u24, ts extended, stream id u24
_U32 = struct.Struct(">I")


@frozen
class FlvHeader:
    """The FLV file header."""

    version: int
    has_audio: bool
    has_video: bool
    data_offset: int  # where PreviousTagSize0 starts


@frozen
class FlvTag:
    """
    One FLV tag: its type (8 audio, 9 video, 18 script data), its timestamp
    in milliseconds (the 32-bit value, extension byte included) and a
    zero-copy view of its body.
    """

    tag_type: int
    timestamp: int
    data: memoryview
    filtered: bool = False  # the pre-processing (encryption) bit


def parse_flv_header(data: Buffer) -> FlvHeader:
    """Parse the 9-byte FLV file header."""
    if len(data) < 9:
        raise MediaError("truncated FLV header")
    signature, version, flags, offset = _HEADER.unpack_from(data, 0)
    if signature != b"FLV":
        raise MediaError("not an FLV file")
    if offset < 9:
        raise MediaError(f"FLV header size {offset} < 9")
    return FlvHeader(version, bool(flags & 4), bool(flags & 1), offset)


def iter_flv_tags(data: Buffer, *, allow_truncated: bool = False) -> Iterator[FlvTag]:
    """
    Iterate the tags of a complete FLV file held in *data*.  A truncated last
    tag raises MediaError unless *allow_truncated*, when iteration just stops
    (a capture cut short).  PreviousTagSize fields are not checked.
    """
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    pos = parse_flv_header(view).data_offset + 4
    n = len(view)
    unpack = _TAG.unpack_from
    while pos < n:
        if pos + 11 > n:
            if allow_truncated:
                return
            raise MediaError("truncated FLV tag header")
        b0, size_hi, size_lo, ts_hi, ts_lo, ts_ext, _, _ = unpack(view, pos)
        size = size_hi << 8 | size_lo
        start = pos + 11
        if start + size > n:
            if allow_truncated:
                return
            raise MediaError("truncated FLV tag")
        timestamp = ts_ext << 24 | ts_hi << 8 | ts_lo
        yield FlvTag(b0 & 0x1F, timestamp, view[start : start + size], bool(b0 & 0x20))
        pos = start + size + 4


def build_flv_header(*, has_audio: bool = True, has_video: bool = True) -> bytes:
    """The FLV file header followed by PreviousTagSize0."""
    return (
        _HEADER.pack(b"FLV", 1, (4 if has_audio else 0) | (1 if has_video else 0), 9) + b"\0\0\0\0"
    )


def build_flv_tag(tag_type: int, timestamp: int, data: Buffer) -> bytes:
    """One FLV tag followed by its PreviousTagSize."""
    size = len(data)
    if not 0 <= tag_type < 32 or size >= 1 << 24 or not 0 <= timestamp < 1 << 32:
        raise MediaError("FLV tag type, size or timestamp out of range")
    header = _TAG.pack(
        tag_type,
        size >> 8,
        size & 0xFF,
        (timestamp >> 8) & 0xFFFF,
        timestamp & 0xFF,
        timestamp >> 24,
        0,
        0,
    )
    return b"".join((header, data, _U32.pack(size + 11)))
