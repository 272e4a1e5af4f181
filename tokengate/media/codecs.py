# -*- test-case-name: tests.test_media_codecs -*-
"""
Codec building blocks: FLV/RTMP tag bodies, H.264 and AAC.

Pure code, no I/O.  Everything here may run once per frame for many streams,
so the per-frame paths (tag parsing, NAL iteration, Annex B conversion, ADTS
splitting) avoid copies where they can: they hand back ``memoryview`` slices
of their input, or join their output once.  Parsers of configuration data
(SPS, avcC, AudioSpecificConfig) run once per sequence header and favour
clarity.

Every malformed input raises :class:`~tokengate.media.errors.MediaError` and
nothing else.

References: the FLV specification 10.1 (tag bodies), ISO/IEC 14496-10 7.3.2
(SPS syntax) and Annex B, ISO/IEC 14496-15 5.3.3 (avcC), ISO/IEC 14496-3
1.6.2 (AudioSpecificConfig) and 1.A.2 (ADTS).
"""

from __future__ import annotations

import re
import struct
from functools import lru_cache
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from attrs import field, frozen

from tokengate.media.errors import MediaError

__all__ = [
    # FLV / RTMP tag bodies
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
    # H.264
    "NAL_SLICE",
    "NAL_IDR",
    "NAL_SEI",
    "NAL_SPS",
    "NAL_PPS",
    "NAL_AUD",
    "SPS",
    "AVCDecoderConfigurationRecord",
    "parse_sps",
    "build_sps",
    "remove_emulation_prevention",
    "add_emulation_prevention",
    "avc_codec_string",
    "nal_unit_type",
    "split_annexb",
    "not_aud",
    "annexb_to_length_prefixed",
    "length_prefixed_nals",
    "length_prefixed_to_annexb",
    "is_keyframe_nals",
    "build_avcc_from_sps_pps",
    # AAC
    "AAC_SAMPLE_RATES",
    "AudioSpecificConfig",
    "aac_codec_string",
    "ADTSHeader",
    "parse_adts",
    "split_adts",
    "asc_from_adts",
    "build_adts",
]

#: Anything exposing the buffer protocol as bytes: ``bytes``, ``bytearray``
#: or ``memoryview``.
Buffer = Union[bytes, bytearray, memoryview]

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_AVC_TAG_HEADER = struct.Struct(">BI")  # byte 0, then packet type << 24 | SI24


def _as_bytes(data: Buffer) -> bytes:
    """*data* as ``bytes``, without a copy when it already is."""
    if isinstance(data, bytes):
        return data
    try:
        return bytes(data)
    except TypeError as e:
        raise MediaError(f"expected a bytes-like object, got {type(data).__name__}") from e


def _as_view(data: Buffer) -> memoryview:
    """A flat, byte-format ``memoryview`` of *data*."""
    try:
        view = memoryview(data)
    except TypeError as e:
        raise MediaError(f"expected a bytes-like object, got {type(data).__name__}") from e
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


# ---------------------------------------------------------------------------
# FLV / RTMP tag bodies (the payload of RTMP message types 8 and 9)
# ---------------------------------------------------------------------------

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

    ``frame_type`` is the upper nibble of the first byte; values of 8 and up
    mean an Enhanced RTMP ex-header, which is reported but not parsed (then
    ``codec_id`` holds the raw lower nibble, the packet type).  The AVC
    fields are set only for legacy AVC tags that are not info frames;
    otherwise ``avc_packet_type`` is None and ``composition_time`` is 0.

    ``data`` is a zero-copy view of the rest of the payload: for AVC, the
    avcC record (sequence header) or 4-byte length-prefixed NAL units.  Copy
    it with ``bytes()`` if the payload is a buffer that will be reused.
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

    ``aac_packet_type`` is set only for AAC (``sound_format`` 10).  ``data``
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
    view = _as_view(payload)
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
    view = _as_view(payload)
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
    Build an FLV audio tag body.  The defaults give ``AF 01``, a raw AAC
    frame; pass ``aac_packet_type=AAC_SEQUENCE_HEADER`` with the ASC bytes
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


# ---------------------------------------------------------------------------
# Bit-level reading and writing (configuration records only, not per frame)
# ---------------------------------------------------------------------------


class _BitReader:
    """MSB-first bit reader with exp-Golomb codes, over an immutable buffer."""

    __slots__ = ("_value", "_nbits", "pos")

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._nbits = len(data) * 8
        self.pos = 0

    @property
    def remaining(self) -> int:
        return self._nbits - self.pos

    def u(self, n: int) -> int:
        end = self.pos + n
        if end > self._nbits:
            raise MediaError("truncated bitstream")
        self.pos = end
        return (self._value >> (self._nbits - end)) & ((1 << n) - 1)

    def flag(self) -> bool:
        return self.u(1) == 1

    def ue(self) -> int:
        left = self._nbits - self.pos
        rest = self._value & ((1 << left) - 1)
        if not rest:
            raise MediaError("truncated exp-Golomb code")
        zeros = left - rest.bit_length()
        if zeros > 31:
            raise MediaError("exp-Golomb code longer than 32 bits")
        self.pos += zeros
        return self.u(zeros + 1) - 1

    def se(self) -> int:
        k = self.ue()
        return (k + 1) >> 1 if k & 1 else -(k >> 1)


class _BitWriter:
    """MSB-first bit writer with exp-Golomb codes."""

    __slots__ = ("_value", "_nbits")

    def __init__(self) -> None:
        self._value = 0
        self._nbits = 0

    def u(self, n: int, v: int) -> None:
        if v < 0 or v >> n:
            raise MediaError(f"value {v} does not fit in {n} bits")
        self._value = (self._value << n) | v
        self._nbits += n

    def flag(self, v: bool) -> None:
        self.u(1, 1 if v else 0)

    def ue(self, v: int) -> None:
        if not 0 <= v < 0xFFFFFFFF:
            raise MediaError(f"value {v} out of exp-Golomb range")
        n = (v + 1).bit_length()
        self.u(2 * n - 1, v + 1)

    def se(self, v: int) -> None:
        self.ue(2 * v - 1 if v > 0 else -2 * v)

    def align_zero(self) -> None:
        self.u(-self._nbits % 8, 0)

    def rbsp_trailing_bits(self) -> None:
        self.u(1, 1)
        self.align_zero()

    def getvalue(self) -> bytes:
        if self._nbits % 8:
            raise MediaError("bit writer not byte aligned")
        return self._value.to_bytes(self._nbits // 8, "big")


# ---------------------------------------------------------------------------
# H.264
# ---------------------------------------------------------------------------

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9

#: profile_idc values whose SPS carries chroma_format_idc, bit depths and
#: optional scaling lists.
_HIGH_SPS_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
#: profiles whose avcC carries the trailing chroma/bit-depth fields.
_HIGH_AVCC_PROFILES = frozenset({100, 110, 122, 144})

_SAR_TABLE = (
    None, (1, 1), (12, 11), (10, 11), (16, 11), (40, 33), (24, 11), (20, 11), (32, 11),
    (80, 33), (18, 11), (15, 11), (64, 33), (160, 99), (4, 3), (3, 2), (2, 1),
)  # fmt: skip

_EMULATION = re.compile(b"\x00\x00(?=[\x00-\x03]|\\Z)")


def remove_emulation_prevention(ebsp: Buffer) -> bytes:
    """Turn NAL payload bytes (EBSP) into RBSP: drop each ``03`` of ``00 00 03``."""
    return _as_bytes(ebsp).replace(b"\x00\x00\x03", b"\x00\x00")


def add_emulation_prevention(rbsp: Buffer) -> bytes:
    """Turn RBSP into NAL payload bytes: insert ``03`` after ``00 00`` before 0-3."""
    return _EMULATION.sub(b"\x00\x00\x03", _as_bytes(rbsp))


@frozen
class SPS:
    """
    The fields of an H.264 sequence parameter set that a packager needs.

    ``width`` and ``height`` are the displayed size (after frame cropping).
    The VUI fields are None when absent (or when the VUI is truncated, which
    is tolerated as FFmpeg does).
    """

    profile_idc: int
    constraint_flags: int  # the whole byte: constraint_set0_flag is 0x80
    level_idc: int
    sps_id: int
    chroma_format_idc: int
    separate_colour_plane: bool
    bit_depth_luma: int
    bit_depth_chroma: int
    frame_mbs_only: bool
    width: int
    height: int
    crop: tuple[int, int, int, int]  # left, right, top, bottom, in crop units
    sar: Optional[tuple[int, int]] = None
    num_units_in_tick: Optional[int] = None
    time_scale: Optional[int] = None
    fixed_frame_rate: Optional[bool] = None

    @property
    def frame_rate(self) -> Optional[float]:
        """Frames per second from the VUI timing (time_scale / 2 ticks)."""
        if not self.num_units_in_tick or not self.time_scale:
            return None
        return self.time_scale / (2 * self.num_units_in_tick)


def _crop_units(
    chroma_format_idc: int, separate_colour_plane: bool, frame_mbs_only: bool
) -> tuple[int, int]:
    """CropUnitX and CropUnitY (H.264 equations 7-19 to 7-22)."""
    if separate_colour_plane or chroma_format_idc == 0:
        return 1, 2 - frame_mbs_only
    sub_width = 1 if chroma_format_idc == 3 else 2
    sub_height = 2 if chroma_format_idc == 1 else 1
    return sub_width, sub_height * (2 - frame_mbs_only)


def _skip_scaling_list(r: _BitReader, size: int) -> None:
    last = next_ = 8
    for _ in range(size):
        if next_:
            delta = r.se()
            if not -128 <= delta <= 127:
                raise MediaError("delta_scale out of range")
            next_ = (last + delta + 256) % 256
            if next_:
                last = next_


def parse_sps(nal: Buffer) -> SPS:
    """
    Parse an SPS NAL unit (header byte included), for any profile, scaling
    lists included.
    """
    view = _as_view(nal)
    if len(view) < 4:
        raise MediaError("truncated SPS")
    if view[0] & 0x1F != NAL_SPS:
        raise MediaError(f"NAL unit type {view[0] & 0x1F} is not an SPS")
    r = _BitReader(remove_emulation_prevention(view[1:]))
    profile_idc = r.u(8)
    constraint_flags = r.u(8)
    level_idc = r.u(8)
    sps_id = r.ue()
    if sps_id > 31:
        raise MediaError(f"seq_parameter_set_id {sps_id} > 31")
    chroma_format_idc = 1
    separate_colour_plane = False
    bit_depth_luma = bit_depth_chroma = 8
    if profile_idc in _HIGH_SPS_PROFILES:
        chroma_format_idc = r.ue()
        if chroma_format_idc > 3:
            raise MediaError(f"chroma_format_idc {chroma_format_idc} > 3")
        if chroma_format_idc == 3:
            separate_colour_plane = r.flag()
        bit_depth_luma = r.ue() + 8
        bit_depth_chroma = r.ue() + 8
        if bit_depth_luma > 14 or bit_depth_chroma > 14:
            raise MediaError("bit depth > 14")
        r.u(1)  # qpprime_y_zero_transform_bypass_flag
        if r.flag():  # seq_scaling_matrix_present_flag
            for i in range(12 if chroma_format_idc == 3 else 8):
                if r.flag():
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    if r.ue() > 12:
        raise MediaError("log2_max_frame_num_minus4 > 12")
    poc_type = r.ue()
    if poc_type == 0:
        if r.ue() > 12:
            raise MediaError("log2_max_pic_order_cnt_lsb_minus4 > 12")
    elif poc_type == 1:
        r.u(1)  # delta_pic_order_always_zero_flag
        r.se()  # offset_for_non_ref_pic
        r.se()  # offset_for_top_to_bottom_field
        cycle = r.ue()
        if cycle > 255:
            raise MediaError("num_ref_frames_in_pic_order_cnt_cycle > 255")
        for _ in range(cycle):
            r.se()
    elif poc_type != 2:
        raise MediaError(f"pic_order_cnt_type {poc_type} > 2")
    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_map_units = r.ue() + 1
    frame_mbs_only = r.flag()
    if not frame_mbs_only:
        r.u(1)  # mb_adaptive_frame_field_flag
    r.u(1)  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if r.flag():
        crop = (r.ue(), r.ue(), r.ue(), r.ue())
    unit_x, unit_y = _crop_units(chroma_format_idc, separate_colour_plane, frame_mbs_only)
    width = width_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_map_units * 16 - unit_y * (crop[2] + crop[3])
    if width <= 0 or height <= 0:
        raise MediaError("frame cropping exceeds the coded size")
    sar: Optional[tuple[int, int]] = None
    timing: tuple[Optional[int], Optional[int], Optional[bool]] = (None, None, None)
    if r.flag():  # vui_parameters_present_flag
        try:
            sar, timing = _parse_vui(r)
        except MediaError:
            pass  # truncated VUI: keep what the SPS proper said
    return SPS(
        profile_idc, constraint_flags, level_idc, sps_id, chroma_format_idc, separate_colour_plane,
        bit_depth_luma, bit_depth_chroma, frame_mbs_only, width, height, crop, sar, *timing,
    )  # fmt: skip


def _parse_vui(
    r: _BitReader,
) -> tuple[Optional[tuple[int, int]], tuple[Optional[int], Optional[int], Optional[bool]]]:
    """The aspect ratio and timing parts of vui_parameters() (H.264 E.1.1)."""
    sar = None
    if r.flag():  # aspect_ratio_info_present_flag
        idc = r.u(8)
        if idc == 255:
            sar = (r.u(16), r.u(16))
        elif idc < len(_SAR_TABLE):
            sar = _SAR_TABLE[idc]
    if r.flag():  # overscan_info_present_flag
        r.u(1)
    if r.flag():  # video_signal_type_present_flag
        r.u(4)  # video_format, video_full_range_flag
        if r.flag():  # colour_description_present_flag
            r.u(24)
    if r.flag():  # chroma_loc_info_present_flag
        r.ue()
        r.ue()
    if r.flag():  # timing_info_present_flag
        return sar, (r.u(32), r.u(32), r.flag())
    return sar, (None, None, None)


def build_sps(
    profile_idc: int,
    level_idc: int,
    width: int,
    height: int,
    *,
    constraint_flags: int = 0,
    sps_id: int = 0,
    chroma_format_idc: int = 1,
    bit_depth_luma: int = 8,
    bit_depth_chroma: int = 8,
    scaling_lists: Optional[Sequence[Optional[Sequence[int]]]] = None,
    frame_mbs_only: bool = True,
    sar: Optional[tuple[int, int]] = None,
    num_units_in_tick: Optional[int] = None,
    time_scale: Optional[int] = None,
    fixed_frame_rate: bool = True,
) -> bytes:
    """
    Build an SPS NAL unit (header ``67`` included) with POC type 0, one
    reference frame and frame cropping to *width* x *height*; the inverse of
    :func:`parse_sps`, for tests and synthetic streams.

    *scaling_lists*, for the High profiles, is 8 (12 for 4:4:4) entries,
    each None (not present) or 16/64 coefficients in 1..255.
    """
    w = _BitWriter()
    w.u(8, profile_idc)
    w.u(8, constraint_flags)
    w.u(8, level_idc)
    w.ue(sps_id)
    high = profile_idc in _HIGH_SPS_PROFILES
    if high:
        w.ue(chroma_format_idc)
        if chroma_format_idc == 3:
            w.flag(False)  # separate_colour_plane_flag
        w.ue(bit_depth_luma - 8)
        w.ue(bit_depth_chroma - 8)
        w.flag(False)  # qpprime_y_zero_transform_bypass_flag
        w.flag(scaling_lists is not None)
        if scaling_lists is not None:
            if len(scaling_lists) != (12 if chroma_format_idc == 3 else 8):
                raise MediaError("wrong number of scaling lists")
            for i, coefficients in enumerate(scaling_lists):
                w.flag(coefficients is not None)
                if coefficients is not None:
                    _write_scaling_list(w, coefficients, 16 if i < 6 else 64)
    elif (chroma_format_idc, bit_depth_luma, bit_depth_chroma, scaling_lists) != (1, 8, 8, None):
        raise MediaError(f"profile {profile_idc} has no chroma format, bit depth or scaling lists")
    w.ue(0)  # log2_max_frame_num_minus4
    w.ue(0)  # pic_order_cnt_type
    w.ue(0)  # log2_max_pic_order_cnt_lsb_minus4
    w.ue(1)  # max_num_ref_frames
    w.flag(False)  # gaps_in_frame_num_value_allowed_flag
    unit_x, unit_y = _crop_units(chroma_format_idc, False, frame_mbs_only)
    map_unit_height = 16 * (2 - frame_mbs_only)
    if width <= 0 or height <= 0 or width % unit_x or height % unit_y:
        raise MediaError(f"{width}x{height} cannot be coded with this chroma format")
    width_mbs = -(-width // 16)
    height_units = -(-height // map_unit_height)
    w.ue(width_mbs - 1)
    w.ue(height_units - 1)
    w.flag(frame_mbs_only)
    if not frame_mbs_only:
        w.flag(False)  # mb_adaptive_frame_field_flag
    w.flag(True)  # direct_8x8_inference_flag
    crop_right = (width_mbs * 16 - width) // unit_x
    crop_bottom = (height_units * map_unit_height - height) // unit_y
    w.flag(bool(crop_right or crop_bottom))
    if crop_right or crop_bottom:
        for v in (0, crop_right, 0, crop_bottom):
            w.ue(v)
    timing = num_units_in_tick is not None and time_scale is not None
    w.flag(sar is not None or timing)  # vui_parameters_present_flag
    if sar is not None or timing:
        w.flag(sar is not None)
        if sar is not None:
            w.u(8, 255)
            w.u(16, sar[0])
            w.u(16, sar[1])
        w.flag(False)  # overscan_info_present_flag
        w.flag(False)  # video_signal_type_present_flag
        w.flag(False)  # chroma_loc_info_present_flag
        w.flag(timing)
        if timing:
            assert num_units_in_tick is not None and time_scale is not None
            w.u(32, num_units_in_tick)
            w.u(32, time_scale)
            w.flag(fixed_frame_rate)
        for _ in range(4):  # nal_hrd, vcl_hrd, pic_struct, bitstream_restriction
            w.flag(False)
    w.rbsp_trailing_bits()
    return b"\x67" + add_emulation_prevention(w.getvalue())


def _write_scaling_list(w: _BitWriter, coefficients: Sequence[int], size: int) -> None:
    if len(coefficients) != size or not all(0 < c < 256 for c in coefficients):
        raise MediaError(f"a scaling list needs {size} coefficients in 1..255")
    last = 8
    for j, c in enumerate(coefficients):
        if j and all(x == last for x in coefficients[j:]):
            w.se(((0 - last + 128) % 256) - 128)  # nextScale 0: repeat lastScale
            return
        w.se(((c - last + 128) % 256) - 128)
        last = c


def _bytes_tuple(items: Iterable[Buffer]) -> tuple[bytes, ...]:
    """Parameter sets as a tuple of bytes."""
    try:
        return tuple(bytes(item) for item in items)
    except TypeError as e:
        raise MediaError(f"parameter sets must be bytes-like: {e}") from e


@frozen
class AVCDecoderConfigurationRecord:
    """
    The avcC record (ISO/IEC 14496-15 5.3.3.1): the RTMP AVC sequence header
    body and the ``avcC`` box payload.  The High-profile trailing fields are
    kept when present (``chroma_format`` is None when absent).
    """

    profile: int
    compat: int
    level: int
    length_size_minus_one: int = 3
    sps: tuple[bytes, ...] = field(default=(), converter=_bytes_tuple)
    pps: tuple[bytes, ...] = field(default=(), converter=_bytes_tuple)
    chroma_format: Optional[int] = None
    bit_depth_luma_minus8: int = 0
    bit_depth_chroma_minus8: int = 0
    sps_ext: tuple[bytes, ...] = field(default=(), converter=_bytes_tuple)

    @property
    def nal_length_size(self) -> int:
        """Bytes in each NAL unit length prefix (1, 2 or 4)."""
        return self.length_size_minus_one + 1

    @property
    def codec_string(self) -> str:
        """The RFC 6381 codec string, ``avc1.PPCCLL``."""
        return f"avc1.{self.profile:02x}{self.compat:02x}{self.level:02x}"

    def parsed_sps(self) -> SPS:
        """The first SPS, parsed."""
        if not self.sps:
            raise MediaError("avcC record has no SPS")
        return parse_sps(self.sps[0])

    @classmethod
    def parse(cls, data: Buffer) -> AVCDecoderConfigurationRecord:
        """Parse an avcC record."""
        b = _as_bytes(data)
        if len(b) < 7:
            raise MediaError("truncated avcC record")
        if b[0] != 1:
            raise MediaError(f"avcC configurationVersion {b[0]} != 1")
        profile, compat, level = b[1], b[2], b[3]
        length_size_minus_one = b[4] & 3
        if length_size_minus_one == 2:
            raise MediaError("avcC NAL length size 3 is not allowed")
        pos = 5
        sps, pos = _read_parameter_sets(b, pos + 1, b[pos] & 0x1F)
        if pos >= len(b):
            raise MediaError("truncated avcC record")
        pps, pos = _read_parameter_sets(b, pos + 1, b[pos])
        chroma_format: Optional[int] = None
        depth_luma = depth_chroma = 0
        sps_ext: tuple[bytes, ...] = ()
        if profile in _HIGH_AVCC_PROFILES and len(b) - pos >= 4:
            chroma_format = b[pos] & 3
            depth_luma = b[pos + 1] & 7
            depth_chroma = b[pos + 2] & 7
            sps_ext, pos = _read_parameter_sets(b, pos + 4, b[pos + 3])
        return cls(
            profile, compat, level, length_size_minus_one, sps, pps,
            chroma_format, depth_luma, depth_chroma, sps_ext,
        )  # fmt: skip

    def build(self) -> bytes:
        """Serialize the record."""
        if self.length_size_minus_one not in (0, 1, 3):
            raise MediaError("NAL length size must be 1, 2 or 4")
        if len(self.sps) > 31 or len(self.pps) > 255 or len(self.sps_ext) > 255:
            raise MediaError("too many parameter sets")
        try:
            parts = [
                bytes(
                    (1, self.profile, self.compat, self.level, 0xFC | self.length_size_minus_one)
                ),
                bytes((0xE0 | len(self.sps),)),
            ]
            _write_parameter_sets(parts, self.sps)
            parts.append(bytes((len(self.pps),)))
            _write_parameter_sets(parts, self.pps)
            if self.chroma_format is not None:
                parts.append(
                    bytes(
                        (
                            0xFC | self.chroma_format,
                            0xF8 | self.bit_depth_luma_minus8,
                            0xF8 | self.bit_depth_chroma_minus8,
                            len(self.sps_ext),
                        )
                    )
                )
                _write_parameter_sets(parts, self.sps_ext)
        except (TypeError, ValueError, struct.error) as e:
            raise MediaError(f"cannot build avcC: {e}") from e
        return b"".join(parts)


def _read_parameter_sets(b: bytes, pos: int, count: int) -> tuple[tuple[bytes, ...], int]:
    out = []
    for _ in range(count):
        if pos + 2 > len(b):
            raise MediaError("truncated avcC parameter set")
        size = _U16.unpack_from(b, pos)[0]
        pos += 2
        if pos + size > len(b):
            raise MediaError("truncated avcC parameter set")
        out.append(b[pos : pos + size])
        pos += size
    return tuple(out), pos


def _write_parameter_sets(parts: list[bytes], sets: Sequence[bytes]) -> None:
    for ps in sets:
        parts.append(_U16.pack(len(ps)))
        parts.append(bytes(ps))


def avc_codec_string(record: Union[AVCDecoderConfigurationRecord, Buffer]) -> str:
    """``avc1.PPCCLL`` (lowercase hex) for an avcC record or its bytes."""
    if not isinstance(record, AVCDecoderConfigurationRecord):
        record = AVCDecoderConfigurationRecord.parse(record)
    return record.codec_string


def build_avcc_from_sps_pps(
    sps: Union[Buffer, Sequence[Buffer]], pps: Union[Buffer, Sequence[Buffer]]
) -> bytes:
    """
    Build an avcC record (4-byte NAL lengths) from one or more SPS and PPS
    NAL units, taking profile, compatibility and level from the first SPS
    and, for High profiles, the trailing chroma and bit-depth fields.
    """
    sps_list = (
        [bytes(sps)] if isinstance(sps, (bytes, bytearray, memoryview)) else [bytes(s) for s in sps]
    )
    pps_list = (
        [bytes(pps)] if isinstance(pps, (bytes, bytearray, memoryview)) else [bytes(p) for p in pps]
    )
    if not sps_list or not pps_list:
        raise MediaError("an avcC record needs an SPS and a PPS")
    parsed = parse_sps(sps_list[0])
    chroma: Optional[int] = None
    if parsed.profile_idc in _HIGH_AVCC_PROFILES:
        chroma = parsed.chroma_format_idc
    return AVCDecoderConfigurationRecord(
        parsed.profile_idc,
        parsed.constraint_flags,
        parsed.level_idc,
        3,
        sps_list,
        pps_list,
        chroma,
        parsed.bit_depth_luma - 8,
        parsed.bit_depth_chroma - 8,
    ).build()


def nal_unit_type(nal: Buffer) -> int:
    """The nal_unit_type of a NAL unit (its first byte's low 5 bits)."""
    if not len(nal):
        raise MediaError("empty NAL unit")
    return nal[0] & 0x1F


def _annexb_spans(b: bytes) -> list[tuple[int, int]]:
    """(start, end) of each NAL unit in an Annex B byte stream."""
    find = b.find
    i = find(b"\x00\x00\x01")
    if i < 0:
        if b.strip(b"\x00"):
            raise MediaError("no Annex B start code")
        return []
    if b[:i].strip(b"\x00"):
        raise MediaError("data before the first Annex B start code")
    spans = []
    start = i + 3
    while True:
        j = find(b"\x00\x00\x01", start)
        end = len(b) if j < 0 else j
        while end > start and b[end - 1] == 0:  # 4-byte start code, trailing_zero_8bits
            end -= 1
        if end > start:
            spans.append((start, end))
        if j < 0:
            return spans
        start = j + 3


def split_annexb(data: Buffer) -> list[bytes]:
    """Split an Annex B byte stream (3- or 4-byte start codes) into NAL units."""
    b = _as_bytes(data)
    return [b[s:e] for s, e in _annexb_spans(b)]


def not_aud(nal_type: int) -> bool:
    """The default NAL filter: keep everything but access unit delimiters."""
    return nal_type != NAL_AUD


def annexb_to_length_prefixed(
    data: Buffer, nal_filter: Optional[Callable[[int], bool]] = not_aud
) -> bytes:
    """
    Convert Annex B to 4-byte length-prefixed NAL units, keeping the NAL
    units whose type *nal_filter* accepts (all when it is None; by default
    all but AUDs).
    """
    b = _as_bytes(data)
    view = memoryview(b)
    pack = _U32.pack
    parts: list[Buffer] = []
    for s, e in _annexb_spans(b):
        if nal_filter is None or nal_filter(b[s] & 0x1F):
            parts.append(pack(e - s))
            parts.append(view[s:e])
    return b"".join(parts)


def length_prefixed_nals(data: Buffer, length_size: int = 4) -> Iterator[memoryview]:
    """
    Iterate the NAL units of length-prefixed data (an AVC sample or RTMP
    NALU tag body) as zero-copy views.  Zero-length NAL units are skipped.
    """
    if length_size not in (1, 2, 3, 4):
        raise MediaError(f"bad NAL length size {length_size}")
    view = _as_view(data)
    n = len(view)
    pos = 0
    unpack = _U32.unpack_from
    while pos < n:
        if pos + length_size > n:
            raise MediaError("truncated NAL unit length")
        if length_size == 4:
            size = unpack(view, pos)[0]
        else:
            size = int.from_bytes(view[pos : pos + length_size], "big")
        pos += length_size
        if pos + size > n:
            raise MediaError("truncated NAL unit")
        if size:
            yield view[pos : pos + size]
        pos += size


def length_prefixed_to_annexb(data: Buffer, length_size: int = 4) -> bytes:
    """Convert length-prefixed NAL units to Annex B with 4-byte start codes."""
    parts: list[Buffer] = []
    for nal in length_prefixed_nals(data, length_size):
        parts.append(b"\x00\x00\x00\x01")
        parts.append(nal)
    return b"".join(parts)


def is_keyframe_nals(nals: Iterable[Buffer]) -> bool:
    """True when an IDR slice (NAL type 5) is among *nals*."""
    for nal in nals:
        if len(nal) and nal[0] & 0x1F == NAL_IDR:
            return True
    return False


# ---------------------------------------------------------------------------
# AAC
# ---------------------------------------------------------------------------

#: Sampling frequencies by sampling_frequency_index (13, 14 reserved; 15 explicit).
AAC_SAMPLE_RATES = (
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
)
_RATE_INDEX = {rate: i for i, rate in enumerate(AAC_SAMPLE_RATES)}
_CHANNEL_COUNTS = (0, 1, 2, 3, 4, 5, 6, 8, 0, 0, 0, 7, 8, 24, 8, 0)


@frozen
class AudioSpecificConfig:
    """
    An MPEG-4 AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1): the RTMP AAC
    sequence header body and the esds DecoderSpecificInfo.

    Only the leading fields are decoded.  Everything after
    channelConfiguration (GASpecificConfig, SBR/PS extensions, the byte
    padding) is kept as ``tail``, ``tail_bits`` long, so that parse and build
    round-trip byte for byte.  The default tail is GASpecificConfig with
    frameLengthFlag, dependsOnCoreCoder and extensionFlag all 0.  For
    explicit HE-AAC signalling (object type 5 or 29) ``sampling_frequency``
    is the core rate.
    """

    object_type: int
    sampling_frequency_index: int
    sampling_frequency: int
    channel_configuration: int
    tail: int = 0
    tail_bits: int = 3

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.object_type <= 95 or self.object_type == 31:
            raise MediaError(f"audio object type {self.object_type} out of range")
        sfi = self.sampling_frequency_index
        if sfi == 15:
            if not 0 < self.sampling_frequency < 1 << 24:
                raise MediaError(
                    f"explicit sampling frequency {self.sampling_frequency} out of range"
                )
        elif (
            not 0 <= sfi < len(AAC_SAMPLE_RATES) or AAC_SAMPLE_RATES[sfi] != self.sampling_frequency
        ):
            raise MediaError(
                f"sampling frequency index {sfi} does not match {self.sampling_frequency}"
            )
        if not 0 <= self.channel_configuration < 16:
            raise MediaError(f"channel configuration {self.channel_configuration} out of range")
        if self.tail_bits < 0 or not 0 <= self.tail < 1 << self.tail_bits:
            raise MediaError("ASC tail does not fit its bit count")

    @classmethod
    def create(
        cls, object_type: int, sample_rate: int, channel_configuration: int
    ) -> AudioSpecificConfig:
        """An ASC with a table index when *sample_rate* has one, else explicit."""
        sfi = _RATE_INDEX.get(sample_rate, 15)
        return cls(object_type, sfi, sample_rate, channel_configuration)

    @property
    def sample_rate(self) -> int:
        """The sampling frequency in Hz."""
        return self.sampling_frequency

    @property
    def channel_count(self) -> int:
        """Channels for the configuration (0 when a PCE defines them)."""
        return _CHANNEL_COUNTS[self.channel_configuration]

    @property
    def codec_string(self) -> str:
        """The RFC 6381 codec string, ``mp4a.40.<object type>``."""
        return f"mp4a.40.{self.object_type}"

    @classmethod
    def parse(cls, data: Buffer) -> AudioSpecificConfig:
        """Parse an AudioSpecificConfig."""
        r = _BitReader(_as_bytes(data))
        aot = r.u(5)
        if aot == 31:
            aot = 32 + r.u(6)
        if aot == 0:
            raise MediaError("audio object type 0 (null)")
        sfi = r.u(4)
        if sfi == 15:
            rate = r.u(24)
        elif sfi < len(AAC_SAMPLE_RATES):
            rate = AAC_SAMPLE_RATES[sfi]
        else:
            raise MediaError(f"reserved sampling frequency index {sfi}")
        channels = r.u(4)
        tail_bits = r.remaining
        return cls(aot, sfi, rate, channels, r.u(tail_bits), tail_bits)

    def build(self) -> bytes:
        """Serialize, padding the last byte with zero bits."""
        w = _BitWriter()
        if self.object_type < 31:
            w.u(5, self.object_type)
        else:
            w.u(5, 31)
            w.u(6, self.object_type - 32)
        w.u(4, self.sampling_frequency_index)
        if self.sampling_frequency_index == 15:
            w.u(24, self.sampling_frequency)
        w.u(4, self.channel_configuration)
        w.u(self.tail_bits, self.tail)
        w.align_zero()
        return w.getvalue()


def aac_codec_string(asc: Union[AudioSpecificConfig, Buffer]) -> str:
    """``mp4a.40.<aot>`` for an AudioSpecificConfig or its bytes."""
    if not isinstance(asc, AudioSpecificConfig):
        asc = AudioSpecificConfig.parse(asc)
    return asc.codec_string


@frozen
class ADTSHeader:
    """The fields of an ADTS frame header (ISO/IEC 14496-3 1.A.2.2)."""

    mpeg_version: int  # the ID bit: 0 MPEG-4, 1 MPEG-2
    protection_absent: bool
    profile: int  # audio object type - 1
    sampling_frequency_index: int
    channel_configuration: int
    frame_length: int  # header included
    buffer_fullness: int
    raw_data_blocks: int  # number_of_raw_data_blocks_in_frame + 1

    @property
    def header_length(self) -> int:
        """7 bytes, or 9 with the CRC."""
        return 7 if self.protection_absent else 9

    @property
    def sample_rate(self) -> int:
        """The sampling frequency in Hz."""
        return AAC_SAMPLE_RATES[self.sampling_frequency_index]


def _adts_fields(b: bytes, offset: int) -> tuple[int, int, int, int, int, int, int, int]:
    """The raw ADTS header fields at *offset*, validated."""
    if offset < 0 or offset + 7 > len(b):
        raise MediaError("truncated ADTS header")
    v = int.from_bytes(b[offset : offset + 7], "big")
    if v >> 44 != 0xFFF:
        raise MediaError(f"no ADTS sync word at offset {offset}")
    if (v >> 41) & 3:
        raise MediaError("ADTS layer is not 0")
    protection_absent = (v >> 40) & 1
    sfi = (v >> 34) & 0xF
    if sfi >= len(AAC_SAMPLE_RATES):
        raise MediaError(f"reserved ADTS sampling frequency index {sfi}")
    frame_length = (v >> 13) & 0x1FFF
    if frame_length < (7 if protection_absent else 9):
        raise MediaError(f"ADTS frame length {frame_length} shorter than its header")
    return (
        (v >> 43) & 1,
        protection_absent,
        (v >> 38) & 3,
        sfi,
        (v >> 30) & 7,
        frame_length,
        (v >> 2) & 0x7FF,
        (v & 3) + 1,
    )


def parse_adts(data: Buffer, offset: int = 0) -> ADTSHeader:
    """Parse the ADTS header at *offset*."""
    f = _adts_fields(_as_bytes(data), offset)
    return ADTSHeader(f[0], f[1] == 1, f[2], f[3], f[4], f[5], f[6], f[7])


@lru_cache(maxsize=256)
def _asc_for(object_type: int, sfi: int, channels: int) -> AudioSpecificConfig:
    return AudioSpecificConfig(object_type, sfi, AAC_SAMPLE_RATES[sfi], channels)


def asc_from_adts(header: ADTSHeader) -> AudioSpecificConfig:
    """The AudioSpecificConfig an ADTS header implies."""
    return _asc_for(
        header.profile + 1, header.sampling_frequency_index, header.channel_configuration
    )


def split_adts(data: Buffer) -> list[tuple[AudioSpecificConfig, bytes]]:
    """
    Split back-to-back ADTS frames (a PES payload, an ``.aac`` file) into
    (AudioSpecificConfig, raw frame) pairs.  There is no resync: garbage
    between frames or a truncated last frame raise MediaError, as do frames
    with several raw data blocks, which cannot be MP4 samples.
    """
    b = _as_bytes(data)
    out = []
    pos = 0
    n = len(b)
    while pos < n:
        _, protection_absent, profile, sfi, channels, frame_length, _, blocks = _adts_fields(b, pos)
        if blocks != 1:
            raise MediaError("ADTS frames with several raw data blocks are not supported")
        end = pos + frame_length
        if end > n:
            raise MediaError("truncated ADTS frame")
        out.append(
            (_asc_for(profile + 1, sfi, channels), b[pos + (7 if protection_absent else 9) : end])
        )
        pos = end
    return out


def build_adts(asc: AudioSpecificConfig, raw: Buffer, *, buffer_fullness: int = 0x7FF) -> bytes:
    """Prefix one raw AAC frame with a 7-byte ADTS header (no CRC)."""
    if not 1 <= asc.object_type <= 4:
        raise MediaError(f"ADTS cannot carry audio object type {asc.object_type}")
    if asc.sampling_frequency_index >= len(AAC_SAMPLE_RATES):
        raise MediaError("ADTS cannot carry an explicit sampling frequency")
    if asc.channel_configuration > 7:
        raise MediaError(f"ADTS cannot carry channel configuration {asc.channel_configuration}")
    length = 7 + len(raw)
    if length > 0x1FFF:
        raise MediaError(f"AAC frame of {len(raw)} bytes too long for ADTS")
    v = (
        0xFFF << 44
        | 1 << 40  # MPEG-4, layer 0, protection absent
        | (asc.object_type - 1) << 38
        | asc.sampling_frequency_index << 34
        | asc.channel_configuration << 30
        | length << 13
        | (buffer_fullness & 0x7FF) << 2
    )
    return b"".join((v.to_bytes(7, "big"), raw))
