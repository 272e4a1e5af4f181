# -*- test-case-name: tests.test_media_codecs -*-
"""
FLV tag bodies: the payload of RTMP message types 8 (audio) and 9 (video)
and of FLV file tags (FLV specification 10.1).  The FLV I{file} container
(header, tag framing) is L{tokengate.media.flv}.

Two levels: L{parse_video_tag} / L{parse_audio_tag} decode every header
field; L{video_sample} / L{audio_sample} are the one place where a tag body
becomes a media sample (what the packager and the recorder store), on the
per-frame path.

Every malformed input raises L{MediaError} and nothing else.
"""

from __future__ import annotations

import struct
from typing import Optional

from attrs import frozen

from tokengate.media.codecs.bits import Buffer, as_view
from tokengate.media.errors import MediaError

__all__ = [
    "FRAME_KEY",
    "FRAME_INTER",
    "FRAME_DISPOSABLE",
    "FRAME_INFO",
    "CODEC_AVC",
    "AVC_SEQUENCE_HEADER",
    "AVC_NALU",
    "AVC_END_OF_SEQUENCE",
    "SOUND_AAC",
    "AAC_SEQUENCE_HEADER",
    "AAC_RAW",
    "VideoTag",
    "AudioTag",
    "parse_video_tag",
    "parse_audio_tag",
    "build_video_tag",
    "build_audio_tag",
    "VideoSample",
    "UnsupportedCodec",
    "video_sample",
    "audio_sample",
]

_U32 = struct.Struct(">I")
_AVC_TAG_HEADER = struct.Struct(">BI")  # byte 0, then packet type << 24 | SI24

FRAME_KEY = 1
FRAME_INTER = 2
FRAME_DISPOSABLE = 3
FRAME_INFO = 5  # video info / command frame: no AVC header follows

CODEC_AVC = 7
AVC_SEQUENCE_HEADER = 0
AVC_NALU = 1
AVC_END_OF_SEQUENCE = 2

SOUND_AAC = 10
AAC_SEQUENCE_HEADER = 0
AAC_RAW = 1


@frozen
class VideoTag:
    """
    A parsed FLV video tag body.

    C{frame_type} is the upper nibble of the first byte; values of 8 and up
    mean an Enhanced RTMP ex-header, which is reported but not parsed (then
    C{codec_id} holds the raw lower nibble, the packet type).  The AVC
    fields are set only for legacy AVC tags that are not info frames;
    otherwise C{avc_packet_type} is None and C{composition_time} is 0.

    C{data} is a zero-copy view of the rest of the payload: for AVC, the
    avcC record (sequence header) or 4-byte length-prefixed NAL units.  Copy
    it with C{bytes()} if the payload is a buffer that will be reused.
    """

    frame_type: int
    codec_id: int
    avc_packet_type: Optional[int]
    composition_time: int  # milliseconds, PTS - DTS, signed
    data: Buffer

    @property
    def is_ex_header(self) -> bool:
        """True for an Enhanced RTMP (ex-header) tag."""
        return self.frame_type >= 8

    @property
    def is_keyframe(self) -> bool:
        """True when the tag claims to carry a key frame."""
        return self.frame_type & 7 == FRAME_KEY

    @property
    def is_avc(self) -> bool:
        """True for a legacy AVC tag carrying an AVC packet."""
        return self.avc_packet_type is not None

    @property
    def is_sequence_header(self) -> bool:
        """True for an AVC sequence header (the avcC record)."""
        return self.avc_packet_type == AVC_SEQUENCE_HEADER


@frozen
class AudioTag:
    """
    A parsed FLV audio tag body.

    C{aac_packet_type} is set only for AAC (C{sound_format} 10).  C{data}
    is a zero-copy view of the rest: for AAC, the AudioSpecificConfig
    (sequence header) or one raw AAC frame.
    """

    sound_format: int
    sound_rate: int  # 0 5.5 kHz, 1 11 kHz, 2 22 kHz, 3 44 kHz (always 3 for AAC)
    sound_size: int  # 0 8-bit, 1 16-bit
    sound_type: int  # 0 mono, 1 stereo (always 1 for AAC)
    aac_packet_type: Optional[int]
    data: Buffer

    @property
    def is_aac(self) -> bool:
        """True for an AAC tag."""
        return self.aac_packet_type is not None

    @property
    def is_sequence_header(self) -> bool:
        """True for an AAC sequence header (the AudioSpecificConfig)."""
        return self.aac_packet_type == AAC_SEQUENCE_HEADER


def parse_video_tag(payload: Buffer) -> VideoTag:
    """Parse the body of an FLV video tag (RTMP message type 9)."""
    view = as_view(payload)
    if not view:
        raise MediaError("empty video tag")
    b0 = view[0]
    frame_type = b0 >> 4
    codec_id = b0 & 0x0F
    if codec_id != CODEC_AVC or frame_type >= 8 or frame_type == FRAME_INFO:
        return VideoTag(frame_type, codec_id, None, 0, view[1:])
    if len(view) < 5:
        raise MediaError("truncated AVC video tag")
    word = _U32.unpack_from(view, 1)[0]
    packet_type = word >> 24
    if packet_type > AVC_END_OF_SEQUENCE:
        raise MediaError(f"unknown AVC packet type {packet_type}")
    cts = word & 0xFFFFFF
    if cts & 0x800000:
        cts -= 0x1000000
    return VideoTag(frame_type, codec_id, packet_type, cts, view[5:])


def parse_audio_tag(payload: Buffer) -> AudioTag:
    """Parse the body of an FLV audio tag (RTMP message type 8)."""
    view = as_view(payload)
    if not view:
        raise MediaError("empty audio tag")
    b0 = view[0]
    sound_format = b0 >> 4
    if sound_format != SOUND_AAC:
        return AudioTag(sound_format, (b0 >> 2) & 3, (b0 >> 1) & 1, b0 & 1, None, view[1:])
    if len(view) < 2:
        raise MediaError("truncated AAC audio tag")
    packet_type = view[1]
    if packet_type > AAC_RAW:
        raise MediaError(f"unknown AAC packet type {packet_type}")
    return AudioTag(sound_format, (b0 >> 2) & 3, (b0 >> 1) & 1, b0 & 1, packet_type, view[2:])


def build_video_tag(
    frame_type: int,
    data: Buffer,
    *,
    codec_id: int = CODEC_AVC,
    avc_packet_type: int = AVC_NALU,
    composition_time: int = 0,
) -> bytes:
    """
    Build an FLV video tag body: the header, then *data* (the avcC record for
    a sequence header, or length-prefixed NAL units).  The AVC header is
    written only for AVC and when *frame_type* is not an info frame.
    """
    if not 0 < frame_type < 8 or not 0 <= codec_id < 16:
        raise MediaError(f"bad frame type {frame_type} or codec id {codec_id}")
    b0 = frame_type << 4 | codec_id
    if codec_id != CODEC_AVC or frame_type == FRAME_INFO:
        return b"".join((bytes((b0,)), data))
    if not 0 <= avc_packet_type <= AVC_END_OF_SEQUENCE:
        raise MediaError(f"bad AVC packet type {avc_packet_type}")
    if not -0x800000 <= composition_time < 0x800000:
        raise MediaError(f"composition time {composition_time} does not fit SI24")
    header = _AVC_TAG_HEADER.pack(b0, avc_packet_type << 24 | (composition_time & 0xFFFFFF))
    return b"".join((header, data))


def build_audio_tag(
    data: Buffer,
    *,
    sound_format: int = SOUND_AAC,
    sound_rate: int = 3,
    sound_size: int = 1,
    sound_type: int = 1,
    aac_packet_type: int = AAC_RAW,
) -> bytes:
    """
    Build an FLV audio tag body.  The defaults give C{AF 01}, a raw AAC
    frame; pass C{aac_packet_type=AAC_SEQUENCE_HEADER} with the ASC bytes
    for the sequence header.
    """
    if not (
        0 <= sound_format < 16
        and 0 <= sound_rate < 4
        and 0 <= sound_size < 2
        and 0 <= sound_type < 2
    ):
        raise MediaError("bad audio tag header fields")
    b0 = sound_format << 4 | sound_rate << 2 | sound_size << 1 | sound_type
    if sound_format != SOUND_AAC:
        return b"".join((bytes((b0,)), data))
    if not 0 <= aac_packet_type <= AAC_RAW:
        raise MediaError(f"bad AAC packet type {aac_packet_type}")
    return b"".join((bytes((b0, aac_packet_type)), data))


class UnsupportedCodec(MediaError):
    """
    A tag body of a codec other than H.264 (legacy FLV) or AAC, or an
    Enhanced RTMP ex-header: not something the media pipeline packages.
    """


#: The sample of an H.264 NALU tag body (L{video_sample}): C{(data,
#: composition_time, keyframe)} -- the NAL units as the tag carries them
#: (length-prefixed, with the length size of the stream's avcC) as a
#: zero-copy view of the tag body; PTS - DTS in milliseconds, signed; and
#: whether the tag says it carries a key frame.  A plain tuple: this runs
#: once per frame.
VideoSample = tuple[memoryview, int, bool]


def video_sample(body: Buffer) -> Optional[VideoSample]:
    """
    The media sample an FLV video tag body carries: the one parser of tag
    bodies into samples, used by the packager and the recorder.

    @return: the sample, or None when the tag carries none: an AVC sequence
        header or end of sequence, an info/command frame, or no NAL unit
        bytes.
    @raise UnsupportedCodec: the tag is not legacy H.264 (another codec, or
        an Enhanced RTMP ex-header).
    @raise MediaError: a truncated header or an unknown AVC packet type.
    """
    view = memoryview(body) if type(body) is bytes else as_view(body)
    if len(view) > 5 and view[1] == AVC_NALU:
        b0 = view[0]
        if b0 & 0x0F == CODEC_AVC and 0 < b0 >> 4 < FRAME_INFO:  # the common case
            cts = view[2] << 16 | view[3] << 8 | view[4]
            if cts & 0x800000:
                cts -= 0x1000000
            return view[5:], cts, b0 >> 4 == FRAME_KEY
    if not view:
        raise MediaError("empty video tag")
    b0 = view[0]
    frame_type = b0 >> 4
    if b0 & 0x0F != CODEC_AVC or frame_type >= 8:
        raise UnsupportedCodec(f"video codec {b0 & 0x0F} (frame type {frame_type})")
    if frame_type == FRAME_INFO:
        return None
    if len(view) < 5:
        raise MediaError("truncated AVC video tag")
    packet_type = view[1]
    if packet_type != AVC_NALU:
        if packet_type > AVC_END_OF_SEQUENCE:
            raise MediaError(f"unknown AVC packet type {packet_type}")
        return None
    if len(view) == 5:
        return None
    cts = view[2] << 16 | view[3] << 8 | view[4]
    if cts & 0x800000:
        cts -= 0x1000000
    return view[5:], cts, frame_type == FRAME_KEY


def audio_sample(body: Buffer) -> Optional[memoryview]:
    """
    The media sample an FLV audio tag body carries: its raw AAC frame, a
    zero-copy view of the body.

    @return: the frame, or None for an AAC sequence header or an empty frame.
    @raise UnsupportedCodec: the tag is not AAC.
    @raise MediaError: a truncated header or an unknown AAC packet type.
    """
    view = memoryview(body) if type(body) is bytes else as_view(body)
    if len(view) > 2 and view[1] == AAC_RAW and view[0] >> 4 == SOUND_AAC:  # the common case
        return view[2:]
    if not view:
        raise MediaError("empty audio tag")
    if view[0] >> 4 != SOUND_AAC:
        raise UnsupportedCodec(f"audio codec {view[0] >> 4}")
    if len(view) < 2:
        raise MediaError("truncated AAC audio tag")
    packet_type = view[1]
    if packet_type != AAC_RAW:
        if packet_type > AAC_RAW:
            raise MediaError(f"unknown AAC packet type {packet_type}")
        return None
    if len(view) == 2:
        return None
    return view[2:]
