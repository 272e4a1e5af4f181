# -*- test-case-name: tests.test_media_codecs -*-
"""
H.264: NAL units, the SPS (ISO/IEC 14496-10 7.3.2), the avcC record
(ISO/IEC 14496-15 5.3.3), and the byte stream formats: Annex B (start
codes) and length-prefixed NAL units (what FLV, RTMP and MP4 carry).

L{annexb_access_unit} is the one Annex B to length-prefixed conversion of
an access unit: SRT ingest (L{tokengate.media.ts}) and WebRTC ingest use
it, each saying whether in-band parameter sets stay in the sample.

Pure code; the per-frame paths (NAL iteration, Annex B conversion) hand
back C{memoryview} slices of their input or join their output once.  Every
malformed input raises L{MediaError} and nothing else.
"""

from __future__ import annotations

import re
import struct
from typing import Iterable, Iterator, Optional, Sequence, Union

from attrs import define, field, frozen

from tokengate.media.codecs.bits import BitReader, BitWriter, Buffer, as_bytes, as_view
from tokengate.media.errors import MediaError

__all__ = [
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
    "length_prefixed_nals",
    "length_prefixed_to_annexb",
    "is_keyframe_nals",
    "build_avcc_from_sps_pps",
    "NAL_FILLER",
    "AccessUnit",
    "annexb_access_unit",
]

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_FILLER = 12

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
    """Turn NAL payload bytes (EBSP) into RBSP: drop each C{03} of C{00 00 03}."""
    return as_bytes(ebsp).replace(b"\x00\x00\x03", b"\x00\x00")


def add_emulation_prevention(rbsp: Buffer) -> bytes:
    """Turn RBSP into NAL payload bytes: insert C{03} after C{00 00} before 0-3."""
    return _EMULATION.sub(b"\x00\x00\x03", as_bytes(rbsp))


@frozen
class SPS:
    """
    The fields of an H.264 sequence parameter set that a packager needs.

    C{width} and C{height} are the displayed size (after frame cropping).
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


def _skip_scaling_list(r: BitReader, size: int) -> None:
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
    view = as_view(nal)
    if len(view) < 4:
        raise MediaError("truncated SPS")
    if view[0] & 0x1F != NAL_SPS:
        raise MediaError(f"NAL unit type {view[0] & 0x1F} is not an SPS")
    r = BitReader(remove_emulation_prevention(view[1:]))
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
    r: BitReader,
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
    Build an SPS NAL unit (header C{67} included) with POC type 0, one
    reference frame and frame cropping to *width* x *height*; the inverse of
    L{parse_sps}, for tests and synthetic streams.

    *scaling_lists*, for the High profiles, is 8 (12 for 4:4:4) entries,
    each None (not present) or 16/64 coefficients in 1..255.
    """
    w = BitWriter()
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


def _write_scaling_list(w: BitWriter, coefficients: Sequence[int], size: int) -> None:
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
    body and the C{avcC} box payload.  The High-profile trailing fields are
    kept when present (C{chroma_format} is None when absent).
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
        """The RFC 6381 codec string, C{avc1.PPCCLL}."""
        return f"avc1.{self.profile:02x}{self.compat:02x}{self.level:02x}"

    def parsed_sps(self) -> SPS:
        """The first SPS, parsed."""
        if not self.sps:
            raise MediaError("avcC record has no SPS")
        return parse_sps(self.sps[0])

    @classmethod
    def parse(cls, data: Buffer) -> AVCDecoderConfigurationRecord:
        """Parse an avcC record."""
        b = as_bytes(data)
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
    """C{avc1.PPCCLL} (lowercase hex) for an avcC record or its bytes."""
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
    b = as_bytes(data)
    return [b[s:e] for s, e in _annexb_spans(b)]


@define
class AccessUnit:
    """
    One H.264 access unit taken out of Annex B (L{annexb_access_unit}).
    Not frozen only because a frozen class costs a microsecond per frame
    to build; nothing changes it.

    @ivar data: the NAL units kept, each behind a 4-byte big-endian length
        (an FLV/RTMP NALU tag body after its header, an MP4 sample).
    @ivar keyframe: whether an IDR slice is among them.
    @ivar sps: the sequence parameter sets found, in stream order.
    @ivar pps: the picture parameter sets found, in stream order.
    """

    data: bytes
    keyframe: bool
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]


def annexb_access_unit(data: Buffer, *, keep_parameter_sets: bool) -> AccessUnit:
    """
    Convert one access unit from Annex B (3- or 4-byte start codes) to
    4-byte length-prefixed NAL units: the one conversion every Annex B
    ingest uses.

    Access unit delimiters and filler data are always left out (neither
    carries picture data; CMAF and FLV samples carry no AUD).  The SPS and
    PPS found are returned apart, for the caller's avcC; whether they also
    stay in the sample is the caller's choice: SRT ingest
    (L{tokengate.media.ts}) leaves them out, since the avcC carries them,
    and WebRTC ingest keeps them in band, as the browser sent them.

    @param keep_parameter_sets: keep SPS and PPS NAL units in C{data}.
    @raise MediaError: C{data} is not Annex B.
    """
    b = as_bytes(data)
    view = memoryview(b)
    pack = _U32.pack
    parts: list[Buffer] = []
    sps: list[bytes] = []
    pps: list[bytes] = []
    keyframe = False
    append = parts.append
    for s, e in _annexb_spans(b):
        t = b[s] & 0x1F
        if t == 7:  # NAL_SPS
            sps.append(b[s:e])
            if not keep_parameter_sets:
                continue
        elif t == 8:  # NAL_PPS
            pps.append(b[s:e])
            if not keep_parameter_sets:
                continue
        elif t == 9 or t == 12:  # NAL_AUD, NAL_FILLER
            continue
        elif t == 5:  # NAL_IDR
            keyframe = True
        append(pack(e - s))
        append(view[s:e])
    return AccessUnit(
        b"".join(parts), keyframe, tuple(sps) if sps else (), tuple(pps) if pps else ()
    )


def length_prefixed_nals(data: Buffer, length_size: int = 4) -> Iterator[memoryview]:
    """
    Iterate the NAL units of length-prefixed data (an AVC sample or RTMP
    NALU tag body) as zero-copy views.  Zero-length NAL units are skipped.
    """
    if length_size not in (1, 2, 3, 4):
        raise MediaError(f"bad NAL length size {length_size}")
    view = as_view(data)
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
