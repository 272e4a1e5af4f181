# -*- test-case-name: tests.test_media_fmp4 -*-
"""
ISO BMFF writing: CMAF fragmented MP4 for live HLS/DASH, and progressive
(faststart) MP4 for recordings.

Pure code, no I/O beyond the C{write}/C{read} callables a recording is
given.  Video and audio are always separate tracks, each with its own init
segment and its own fragments, as HLS and DASH need for separate renditions.

* L{init_segment} -- C{ftyp} + C{moov} for one L{Track};
* L{media_segment} -- C{[styp] moof mdat} for a run of
  L{Sample} objects: a whole segment, or an LL-HLS part (without
  C{styp}).  It runs per fragment for every stream, so it packs its fixed
  header with one C{struct} call, every trun entry with another, and joins
  the output once;
* L{write_progressive_mp4} -- C{ftyp} + C{moov} + C{mdat} with the
  moov first, streaming the mdat from a byte source (see there).

Layouts follow ISO/IEC 14496-12 and 14496-14, the CMAF brand constraints of
ISO/IEC 23000-19, and what FFmpeg writes.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from heapq import merge
from itertools import accumulate, compress, groupby
from math import ceil
from operator import add
from typing import Callable, Iterable, Iterator, Optional, Protocol, Sequence, Union

from attrs import frozen

from tokengate.media.codecs import AudioSpecificConfig, AVCDecoderConfigurationRecord
from tokengate.media.errors import MediaError

__all__ = [
    "VIDEO",
    "AUDIO",
    "SYNC_SAMPLE_FLAGS",
    "NON_SYNC_SAMPLE_FLAGS",
    "Track",
    "Sample",
    "init_segment",
    "media_segment",
    "fragment",
    "STYP",
    "SampleTable",
    "SampleSource",
    "file_reader",
    "write_progressive_mp4",
]

Buffer = Union[bytes, bytearray, memoryview]

VIDEO = "video"
AUDIO = "audio"

#: trun sample_flags: sample_depends_on=2 (an I picture), not a non-sync sample.
SYNC_SAMPLE_FLAGS = 0x02000000
#: trun sample_flags: sample_depends_on=1, sample_is_non_sync_sample.
NON_SYNC_SAMPLE_FLAGS = 0x01010000

#: The movie timescale of mvhd, tkhd and edit lists.
MOVIE_TIMESCALE = 1000

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_BOX = struct.Struct(">I4s")
_FULL_BOX = struct.Struct(">I4sI")
_LARGE_MDAT = struct.Struct(">I4sQ")
_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
_U32_MAX = 0xFFFFFFFF
_BIG_ENDIAN = sys.byteorder == "big"

assert array("I").itemsize == 4, "array('I') must be 32-bit"


def _box(kind: bytes, *payload: Buffer) -> bytes:
    body = b"".join(payload)
    return _BOX.pack(8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, flags: int, *payload: Buffer) -> bytes:
    body = b"".join(payload)
    return _FULL_BOX.pack(12 + len(body), kind, version << 24 | flags) + body


def _u32_array(values: Iterable[int]) -> bytes:
    """Big-endian u32s, fast for long sample tables."""
    try:
        a = array("I", values)
    except OverflowError as e:
        raise MediaError(f"sample table value out of u32 range: {e}") from e
    if not _BIG_ENDIAN:
        a.byteswap()
    return a.tobytes()


def _u64_array(values: Iterable[int]) -> bytes:
    try:
        a = array("Q", values)
    except OverflowError as e:
        raise MediaError(f"sample table value out of u64 range: {e}") from e
    if not _BIG_ENDIAN:
        a.byteswap()
    return a.tobytes()


# ---------------------------------------------------------------------------
# Tracks and samples
# ---------------------------------------------------------------------------


@frozen
class Track:
    """
    One track of one rendition.

    C{codec} is the sample entry type: C{avc1} (C{config} is the avcC
    record), C{mp4a} (C{config} is the AudioSpecificConfig) or C{Opus}
    (C{config} is the dOps payload).  Use the L{video_avc},
    L{audio_aac} and L{audio_opus} constructors, which fill the
    rest in from the configuration.
    """

    track_id: int
    kind: str  # VIDEO or AUDIO
    timescale: int
    codec: str
    config: bytes
    width: int = 0
    height: int = 0
    channels: int = 0
    sample_rate: int = 0
    bitrate: int = 0  # average bits per second for esds, 0 when unknown
    language: str = "und"

    def __attrs_post_init__(self) -> None:
        if not 0 < self.track_id <= _U32_MAX:
            raise MediaError(f"track id {self.track_id} out of range")
        if not 0 < self.timescale <= _U32_MAX:
            raise MediaError(f"timescale {self.timescale} out of range")
        expected = {"avc1": VIDEO, "mp4a": AUDIO, "Opus": AUDIO}.get(self.codec)
        if expected is None or expected != self.kind:
            raise MediaError(f"codec {self.codec!r} is not a known {self.kind} codec")
        if not (len(self.language) == 3 and all("a" <= c <= "z" for c in self.language)):
            raise MediaError(f"language {self.language!r} is not an ISO 639-2 code")
        if not (
            0 <= self.width < 0x10000
            and 0 <= self.height < 0x10000
            and 0 <= self.channels < 0x10000
        ):
            raise MediaError("width, height or channels out of range")

    @classmethod
    def video_avc(
        cls,
        track_id: int,
        avcc: Buffer,
        *,
        width: Optional[int] = None,
        height: Optional[int] = None,
        timescale: int = 90000,
    ) -> Track:
        """An H.264 track; the size defaults to the one in the avcC's SPS."""
        config = bytes(avcc)
        if width is None or height is None:
            sps = AVCDecoderConfigurationRecord.parse(config).parsed_sps()
            width = sps.width if width is None else width
            height = sps.height if height is None else height
        return cls(track_id, VIDEO, timescale, "avc1", config, width=width, height=height)

    @classmethod
    def audio_aac(
        cls,
        track_id: int,
        asc: Buffer,
        *,
        channels: Optional[int] = None,
        timescale: Optional[int] = None,
        bitrate: int = 0,
    ) -> Track:
        """
        An AAC track; channels and sample rate come from the
        AudioSpecificConfig, and the timescale defaults to the sample rate.
        """
        config = bytes(asc)
        parsed = AudioSpecificConfig.parse(config)
        if channels is None:
            channels = parsed.channel_count or 2
        return cls(
            track_id,
            AUDIO,
            timescale or parsed.sample_rate,
            "mp4a",
            config,
            channels=channels,
            sample_rate=parsed.sample_rate,
            bitrate=bitrate,
        )

    @classmethod
    def audio_opus(
        cls,
        track_id: int,
        channels: int = 2,
        *,
        pre_skip: int = 312,
        input_sample_rate: int = 48000,
        output_gain: int = 0,
        timescale: int = 48000,
    ) -> Track:
        """
        An Opus track (channel mapping family 0, so 1 or 2 channels), with a
        dOps box; its fields are big-endian, unlike OpusHead's.
        """
        if channels not in (1, 2):
            raise MediaError("Opus channel mapping family 0 needs 1 or 2 channels")
        try:
            dops = struct.pack(">BBHIhB", 0, channels, pre_skip, input_sample_rate, output_gain, 0)
        except struct.error as e:
            raise MediaError(f"bad Opus parameters: {e}") from e
        return cls(track_id, AUDIO, timescale, "Opus", dops, channels=channels, sample_rate=48000)

    @property
    def codec_string(self) -> str:
        """The RFC 6381 codec string for HLS C{CODECS} and DASH C{@codecs}."""
        if self.codec == "avc1":
            return AVCDecoderConfigurationRecord.parse(self.config).codec_string
        if self.codec == "mp4a":
            return AudioSpecificConfig.parse(self.config).codec_string
        return "opus"


@frozen
class Sample:
    """
    One access unit: length-prefixed NAL units for video, a raw AAC (or
    Opus) frame for audio.  Times are in the track timescale; C{cts_offset}
    is PTS - DTS and may be negative.
    """

    data: Buffer
    dts: int
    duration: int
    cts_offset: int = 0
    is_sync: bool = True


# ---------------------------------------------------------------------------
# Shared moov pieces
# ---------------------------------------------------------------------------


def _language_code(language: str) -> int:
    return (
        (ord(language[0]) - 0x60) << 10 | (ord(language[1]) - 0x60) << 5 | (ord(language[2]) - 0x60)
    )


def _mvhd(duration: int, next_track_id: int) -> bytes:
    if duration > _U32_MAX:
        head = _full_box_head_v1(0, 0, MOVIE_TIMESCALE, duration)
        version = 1
    else:
        head = struct.pack(">IIII", 0, 0, MOVIE_TIMESCALE, duration)
        version = 0
    return _full_box(
        b"mvhd",
        version,
        0,
        head,
        struct.pack(">IHH8x", 0x00010000, 0x0100, 0),
        _MATRIX,
        bytes(24),
        _U32.pack(next_track_id),
    )


def _full_box_head_v1(creation: int, modification: int, timescale: int, duration: int) -> bytes:
    return struct.pack(">QQIQ", creation, modification, timescale, duration)


def _tkhd(track: Track, duration: int) -> bytes:
    volume = 0x0100 if track.kind == AUDIO else 0
    if duration > _U32_MAX:
        version, head = 1, struct.pack(">QQI4xQ", 0, 0, track.track_id, duration)
    else:
        version, head = 0, struct.pack(">III4xI", 0, 0, track.track_id, duration)
    return _full_box(
        b"tkhd",
        version,
        3,  # enabled, in movie
        head,
        struct.pack(">8xhhhH", 0, 0, volume, 0),
        _MATRIX,
        struct.pack(">II", track.width << 16, track.height << 16),
    )


def _mdhd(track: Track, duration: int) -> bytes:
    if duration > _U32_MAX:
        version, head = 1, _full_box_head_v1(0, 0, track.timescale, duration)
    else:
        version, head = 0, struct.pack(">IIII", 0, 0, track.timescale, duration)
    return _full_box(
        b"mdhd", version, 0, head, struct.pack(">HH", _language_code(track.language), 0)
    )


def _hdlr(kind: str) -> bytes:
    handler, name = (b"vide", b"VideoHandler\0") if kind == VIDEO else (b"soun", b"SoundHandler\0")
    return _full_box(b"hdlr", 0, 0, _U32.pack(0), handler, bytes(12), name)


_DINF = _box(b"dinf", _full_box(b"dref", 0, 0, _U32.pack(1), _full_box(b"url ", 0, 1)))
_VMHD = _full_box(b"vmhd", 0, 1, bytes(8))
_SMHD = _full_box(b"smhd", 0, 0, bytes(4))


def _descriptor(tag: int, body: bytes) -> bytes:
    """An MPEG-4 descriptor with the minimal expandable length encoding."""
    n = len(body)
    size = [n & 0x7F]
    n >>= 7
    while n:
        size.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes((tag, *reversed(size))) + body


def _esds(asc: bytes, bitrate: int) -> bytes:
    decoder_config = _descriptor(
        4,
        struct.pack(">BB3sII", 0x40, 0x15, bytes(3), bitrate, bitrate) + _descriptor(5, asc),
    )
    es = _descriptor(3, struct.pack(">HB", 0, 0) + decoder_config + _descriptor(6, b"\x02"))
    return _full_box(b"esds", 0, 0, es)


def _sample_entry(track: Track) -> bytes:
    if track.codec == "avc1":
        return _box(
            b"avc1",
            bytes(6),
            _U16.pack(1),  # data_reference_index
            bytes(16),
            struct.pack(">HHIIIH", track.width, track.height, 0x480000, 0x480000, 0, 1),
            bytes(32),  # compressorname
            struct.pack(">Hh", 0x18, -1),
            _box(b"avcC", track.config),
        )
    rate = track.sample_rate << 16 if track.sample_rate < 0x10000 else 0
    audio = struct.pack(">6xH8xHHHHI", 1, track.channels, 16, 0, 0, rate)
    if track.codec == "mp4a":
        return _box(b"mp4a", audio, _esds(track.config, track.bitrate))
    return _box(b"Opus", audio, _box(b"dOps", track.config))


def _stsd(track: Track) -> bytes:
    return _full_box(b"stsd", 0, 0, _U32.pack(1), _sample_entry(track))


class _Lazy:
    """
    A box too long to hold in memory: its size, and its bytes produced
    piece by piece when it is written (see L{_lazy_box}).
    """

    __slots__ = ("size", "_pieces")

    def __init__(self, size: int, pieces: Callable[[], Iterable[Buffer]]) -> None:
        self.size = size
        self._pieces = pieces

    def pieces(self) -> Iterable[Buffer]:
        return self._pieces()


#: A box, or a part of a box's payload: bytes, or lazily produced bytes.
Part = Union[bytes, _Lazy]


def _part_size(part: Part) -> int:
    return len(part) if isinstance(part, bytes) else part.size


def _pieces(part: Part) -> Iterable[Buffer]:
    if isinstance(part, bytes):
        return (part,)
    return part.pieces()


def _lazy_box(kind: bytes, *parts: Part) -> Part:
    """L{_box} for parts that may be lazy: bytes when every part is bytes."""
    if all(isinstance(p, bytes) for p in parts):
        return _box(kind, *parts)  # type: ignore[arg-type]
    size = 8 + sum(_part_size(p) for p in parts)

    def pieces() -> Iterator[Buffer]:
        yield _BOX.pack(size, kind)
        for part in parts:
            yield from _pieces(part)

    return _Lazy(size, pieces)


def _lazy_full_box(kind: bytes, version: int, flags: int, *parts: Part) -> Part:
    return _lazy_box(kind, _U32.pack(version << 24 | flags), *parts)


def _trak(
    track: Track, stbl: Part, tkhd_duration: int = 0, mdhd_duration: int = 0, edts: bytes = b""
) -> Part:
    minf = _lazy_box(b"minf", _VMHD if track.kind == VIDEO else _SMHD, _DINF, stbl)
    mdia = _lazy_box(b"mdia", _mdhd(track, mdhd_duration), _hdlr(track.kind), minf)
    return _lazy_box(b"trak", _tkhd(track, tkhd_duration), edts, mdia)


# ---------------------------------------------------------------------------
# CMAF: init and media segments
# ---------------------------------------------------------------------------

_CMAF_FTYP = _box(b"ftyp", b"iso6", _U32.pack(0), b"iso6cmfcmp41")
#: The C{styp} box a CMAF media segment starts with.
STYP = _box(b"styp", b"msdh", _U32.pack(0), b"msdhmsix")
_EMPTY_TABLES = b"".join(
    (
        _full_box(b"stts", 0, 0, _U32.pack(0)),
        _full_box(b"stsc", 0, 0, _U32.pack(0)),
        _full_box(b"stsz", 0, 0, _U32.pack(0), _U32.pack(0)),
        _full_box(b"stco", 0, 0, _U32.pack(0)),
    )
)


def init_segment(track: Track) -> bytes:
    """
    The CMAF header for one track: ftyp (iso6; iso6 cmfc mp41) and a moov
    with empty sample tables and an mvex/trex.
    """
    stbl = _box(b"stbl", _stsd(track), _EMPTY_TABLES)
    trex = _full_box(b"trex", 0, 0, struct.pack(">IIIII", track.track_id, 1, 0, 0, 0))
    trak = _trak(track, stbl)
    assert isinstance(trak, bytes)
    moov = _box(b"moov", _mvhd(0, track.track_id + 1), trak, _box(b"mvex", trex))
    return _CMAF_FTYP + moov


# moof(8) mfhd(16) traf(8) tfhd(16) tfdt v1(20) trun header(20): 88 bytes.
_MOOF_HEAD = struct.Struct(">I4s" "I4sII" "I4s" "I4sII" "I4sIQ" "I4sIIi")
_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000
_TRUN_FLAGS_CTO = 0x000F01  # data-offset, duration, size, flags, composition time offset
_TRUN_FLAGS_NO_CTO = 0x000701  # the same without composition time offsets


def media_segment(
    track: Track, sequence_number: int, samples: Sequence[Sample], with_styp: bool = True
) -> bytes:
    """
    One CMAF fragment for *track*: C{[styp] moof mdat}.

    C{tfdt} is the first sample's DTS; each sample then lasts its
    C{duration}.  The trun has version 1 (signed composition offsets) and
    carries per-sample duration, size, flags and, unless every offset is
    zero, composition offset.  Without *with_styp* the result is an LL-HLS
    part (or a DASH chunk).
    """
    if not samples:
        raise MediaError("a fragment needs at least one sample")
    table: list[int] = []
    add = table.extend
    has_cto = False
    for s in samples:
        cto = s.cts_offset
        if cto:
            if not -0x80000000 <= cto <= 0x7FFFFFFF:
                raise MediaError(f"composition offset {cto} out of range")
            has_cto = True
        add(
            (
                s.duration,
                len(s.data),
                SYNC_SAMPLE_FLAGS if s.is_sync else NON_SYNC_SAMPLE_FLAGS,
                cto & 0xFFFFFFFF,
            )
        )
    return fragment(
        track, sequence_number, samples[0].dts, table, [s.data for s in samples], has_cto,
        with_styp,
    )  # fmt: skip


def fragment(
    track: Track,
    sequence_number: int,
    base_dts: int,
    table: list[int],
    payloads: Sequence[Buffer],
    has_cto: bool,
    with_styp: bool = True,
) -> bytes:
    """
    L{media_segment} from columns, with no object per sample: C{table}
    holds four integers per sample (duration, size, flags, composition
    offset modulo 2**32: C{trun}'s fields in order), C{payloads} the
    samples' bytes, C{base_dts} the first sample's DTS; C{has_cto} says
    whether any composition offset is not zero.  C{table} is consumed
    (its offsets are deleted when there are none).
    """
    n = len(payloads)
    if not n or len(table) != 4 * n:
        raise MediaError("a fragment needs at least one sample, and four fields for each")
    try:
        if has_cto:
            trun_flags, per_sample = _TRUN_FLAGS_CTO, 16
            entries = struct.pack(">%dI" % (4 * n), *table)
        else:
            trun_flags, per_sample = _TRUN_FLAGS_NO_CTO, 12
            del table[3::4]
            entries = struct.pack(">%dI" % (3 * n), *table)
    except struct.error as e:
        raise MediaError(f"sample duration or size out of range: {e}") from e
    payload = sum(map(len, payloads))
    trun_size = 20 + per_sample * n
    traf_size = 8 + 16 + 20 + trun_size
    moof_size = 8 + 16 + traf_size
    if payload + 8 > _U32_MAX:
        mdat_head = _LARGE_MDAT.pack(1, b"mdat", payload + 16)
    else:
        mdat_head = _BOX.pack(payload + 8, b"mdat")
    try:
        head = _MOOF_HEAD.pack(
            moof_size, b"moof",
            16, b"mfhd", 0, sequence_number,
            traf_size, b"traf",
            16, b"tfhd", _TFHD_DEFAULT_BASE_IS_MOOF, track.track_id,
            20, b"tfdt", 1 << 24, base_dts,
            trun_size, b"trun", 1 << 24 | trun_flags, n, moof_size + len(mdat_head),
        )  # fmt: skip
    except struct.error as e:
        raise MediaError(
            f"sequence number, base decode time or data offset out of range: {e}"
        ) from e
    parts: list[Buffer] = [STYP, head, entries, mdat_head] if with_styp else [head, entries, mdat_head]
    parts.extend(payloads)
    return b"".join(parts)


# ---------------------------------------------------------------------------
# Progressive MP4 recording
# ---------------------------------------------------------------------------


class SampleTable:
    """
    The samples of one recorded track, as compact columns (about 40 bytes a
    sample, so an hour of 30 fps video plus AAC is about 15 MB).

    Each row locates the sample's bytes in the recording's byte source
    (C{offset}, C{size}) and times it in the track timescale (C{dts},
    C{duration}, C{cts_offset} = PTS - DTS); C{is_sync} marks key frames.

    A table is also a L{SampleSource} of one block.
    """

    __slots__ = ("offsets", "sizes", "dts", "durations", "cts_offsets", "sync")

    def __init__(self, rows: Iterable[tuple[int, int, int, int, int, bool]] = ()) -> None:
        self.offsets = array("q")
        self.sizes = array("q")
        self.dts = array("q")
        self.durations = array("q")
        self.cts_offsets = array("q")
        self.sync = array("B")
        for row in rows:
            self.append(*row)

    @classmethod
    def from_columns(
        cls,
        offsets: "array[int]",
        sizes: "array[int]",
        dts: "array[int]",
        durations: "array[int]",
        cts_offsets: "array[int]",
        sync: "array[int]",
    ) -> SampleTable:
        """
        A table of these columns (C{q} arrays, and C{B} for C{sync}, all
        of one length; used as they are, not copied).
        """
        n = len(sync)
        if any(len(c) != n for c in (offsets, sizes, dts, durations, cts_offsets)):
            raise MediaError("sample table columns differ in length")
        table = cls.__new__(cls)
        table.offsets, table.sizes, table.dts = offsets, sizes, dts
        table.durations, table.cts_offsets, table.sync = durations, cts_offsets, sync
        return table

    def append(
        self,
        offset: int,
        size: int,
        dts: int,
        duration: int,
        cts_offset: int = 0,
        is_sync: bool = True,
    ) -> None:
        """Add one sample."""
        if offset < 0 or size < 0 or duration < 0:
            raise MediaError("sample offset, size and duration must not be negative")
        try:
            self.offsets.append(offset)
            self.sizes.append(size)
            self.dts.append(dts)
            self.durations.append(duration)
            self.cts_offsets.append(cts_offset)
        except OverflowError as e:
            del self.offsets[len(self.sync) :], self.sizes[len(self.sync) :]
            del self.dts[len(self.sync) :], self.durations[len(self.sync) :]
            del self.cts_offsets[len(self.sync) :]
            raise MediaError(f"sample value out of range: {e}") from e
        self.sync.append(1 if is_sync else 0)

    def __len__(self) -> int:
        return len(self.sync)

    def blocks(self) -> Iterator[SampleTable]:
        """The table as one block (see L{SampleSource})."""
        yield self


class SampleSource(Protocol):
    """
    The samples of one track, for tables too long to hold in memory:
    C{len()} counts them, and every call of C{blocks()} yields them again
    from the first, in decode order, as consecutive L{SampleTable}
    blocks.  L{write_progressive_mp4} holds a few blocks at a time, so
    its memory is bounded by the block size, not by the number of samples.
    """

    def __len__(self) -> int: ...

    def blocks(self) -> Iterator[SampleTable]: ...


class _Writable(Protocol):
    def write(self, data: Buffer, /) -> object: ...


class _Readable(Protocol):
    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def read(self, size: int = -1, /) -> bytes: ...


def file_reader(f: _Readable) -> Callable[[int, int], bytes]:
    """A byte source for L{write_progressive_mp4} reading a seekable file."""

    def read(offset: int, size: int) -> bytes:
        f.seek(offset)
        return f.read(size)

    return read


def _run_count(values: Sequence[int], previous: Optional[int]) -> int:
    """The runs of equal values in *values*, not counting one continuing *previous*."""
    runs = sum(1 for _ in groupby(values))
    return runs - 1 if values and values[0] == previous else runs


class _TrackLayout:
    """
    A recorded track during layout: what its boxes need to know of its
    samples (counts, ranges, its edit list), from one pass over its blocks.
    """

    __slots__ = (
        "track",
        "source",
        "n",
        "limit",
        "duration",
        "media_time",
        "presented",
        "start",
        "stts_entries",
        "ctts_entries",
        "has_ctts",
        "negative_ctts",
        "sync_count",
        "uniform_size",
        "nbytes",
        "chunk_count",
        "stsc_entries",
    )

    def __init__(self, track: Track, source: SampleSource, chunk_duration: float) -> None:
        self.track = track
        self.source = source
        self.n = n = len(source)
        #: a chunk ends with the sample that brings it to this duration
        self.limit = max(0, ceil(chunk_duration * track.timescale))
        #: The earliest composition time, relative to the first decode time
        #: (where an edit list starts the media), and the presented length.
        self.media_time = self.presented = 0
        self.start = 0.0  # seconds, on the caller's timeline
        duration = stts = ctts = sync = nbytes = seen = 0
        has_ctts = negative = False
        uniform: Optional[int] = None
        first_dts: Optional[int] = None
        earliest = latest = 0
        last_duration: Optional[int] = None
        last_cto: Optional[int] = None
        for block in source.blocks():
            m = len(block)
            if not m:
                continue
            durations, ctos, sizes = block.durations, block.cts_offsets, block.sizes
            if max(durations) > _U32_MAX or max(sizes) > _U32_MAX:
                raise MediaError("sample duration or size out of u32 range")
            low, high = min(ctos), max(ctos)
            if low < -0x80000000 or high > 0x7FFFFFFF:
                raise MediaError("composition offset out of range")
            decode = array("q", accumulate(durations, initial=duration))
            compositions = list(map(add, decode, ctos))
            low, high = min(compositions), max(map(add, compositions, durations))
            if first_dts is None:
                first_dts, uniform = block.dts[0], sizes[0]
                earliest, latest = low, high
            else:
                earliest, latest = min(earliest, low), max(latest, high)
            duration = decode[-1]
            stts += _run_count(durations, last_duration)
            ctts += _run_count(ctos, last_cto)
            last_duration, last_cto = durations[-1], ctos[-1]
            has_ctts = has_ctts or any(ctos)
            negative = negative or min(ctos) < 0
            sync += m - block.sync.count(0)
            if uniform is not None and sizes.count(uniform) != m:
                uniform = None
            nbytes += sum(sizes)
            seen += m
        if seen != n:
            raise MediaError(f"the sample source has {seen} samples, not {n}")
        self.duration = duration
        self.stts_entries, self.ctts_entries = stts, ctts
        self.has_ctts, self.negative_ctts = has_ctts, negative
        self.sync_count, self.uniform_size, self.nbytes = sync, uniform, nbytes
        if first_dts is not None:
            self.media_time = max(0, earliest)
            self.presented = max(0, latest - self.media_time)
            self.start = (first_dts + self.media_time) / track.timescale
        chunks = entries = 0
        previous = None
        for _, _, count, _ in self.chunks(0):
            chunks += 1
            if count != previous:
                entries += 1
                previous = count
        self.chunk_count, self.stsc_entries = chunks, entries

    def chunks(self, index: int) -> Iterator[tuple[float, int, int, int]]:
        """
        The track's chunks, in order: (start in seconds, *index*, samples,
        bytes).  A chunk ends with the sample that makes it last at least
        the chunk duration, or with the last sample.
        """
        limit, timescale, n = self.limit, self.track.timescale, self.n
        seen = carry = count = nbytes = start = 0
        for block in self.source.blocks():
            m = len(block)
            if not m:
                continue
            sizes, dts = block.sizes, block.dts
            prefix = array("q", accumulate(block.durations, initial=0))
            last = seen + m >= n
            pos = 0
            while pos < m:
                if not count:
                    start = dts[pos]
                end = bisect_left(prefix, limit - carry + prefix[pos], pos + 1, m + 1)
                if end > m:
                    if not last:
                        carry += prefix[m] - prefix[pos]
                        count += m - pos
                        nbytes += sum(sizes[pos:m])
                        break
                    end = m
                count += end - pos
                nbytes += sum(sizes[pos:end])
                yield (start / timescale, index, count, nbytes)
                carry = count = nbytes = 0
                pos = end
            seen += m


def _chunk_key(chunk: tuple[float, int, int, int]) -> tuple[float, int]:
    return chunk[0], chunk[1]


def _chunk_order(layouts: Sequence[_TrackLayout]) -> Iterator[tuple[float, int, int, int]]:
    """Every track's chunks, interleaved by start time (then track order)."""
    return merge(*(layout.chunks(i) for i, layout in enumerate(layouts)), key=_chunk_key)


class _Cursor:
    """Walks one track's samples in order, block by block."""

    def __init__(self, source: SampleSource) -> None:
        self._blocks = iter(source.blocks())
        self._block: Optional[SampleTable] = None
        self._pos = 0

    def take(self, count: int) -> Iterator[tuple[SampleTable, int, int]]:
        """The next *count* samples, as (block, first, end) spans."""
        while count:
            block = self._block
            if block is None or self._pos >= len(block):
                block = self._block = next(self._blocks, None)
                self._pos = 0
                if block is None:
                    raise MediaError("the sample source ended early")
                continue
            end = min(len(block), self._pos + count)
            yield block, self._pos, end
            count -= end - self._pos
            self._pos = end


_MAX_READ = 1 << 22
#: entries per piece of a long table box
_PIECE = 4096


def write_progressive_mp4(
    tracks: Sequence[
        tuple[
            Track, Union[SampleTable, SampleSource, Iterable[tuple[int, int, int, int, int, bool]]]
        ]
    ],
    out: _Writable,
    read: Callable[[int, int], Buffer],
    *,
    chunk_duration: float = 1.0,
    edit_lists: bool = True,
    co64: Optional[bool] = None,
) -> int:
    """
    Write a progressive MP4 -- ftyp, moov, then mdat (faststart) -- to
    *out* (anything with C{write}), returning the bytes written.

    The design keeps a long recording out of memory: while recording, append
    each sample's bytes to a spool (a file, in any order and interleaving)
    and its row to a L{SampleTable} per track, or to anything that is
    a L{SampleSource} (a table kept on disk, read back in blocks), or
    pass any iterable of C{(offset, size, dts, duration, cts_offset,
    is_sync)} rows.  This function lays the samples out in chunks of about
    *chunk_duration* seconds, interleaved by time, writes the moov from the
    tables, then streams the mdat by calling C{read(offset, size)} on the
    spool (see L{file_reader}), merging reads of adjacent samples up to
    4 MiB.  It walks each source's blocks several times and never holds
    more than a few blocks of each, nor a whole sample-table box: its
    memory does not grow with the number of samples.

    Each track's first DTS places it on the movie timeline and the durations
    time the rest.  With *edit_lists* each track gets an edit list: an empty
    edit for a late start, then the media from its earliest composition time,
    so that B-frame delay is not shown.  Chunk offsets use C{co64} when the
    file needs it, or as *co64* forces.

    This blocks for as long as the reads and writes take, plus a few Python
    operations per sample; run long recordings in a thread.
    """
    sources: list[tuple[Track, SampleSource]] = []
    for track, rows in tracks:
        if isinstance(rows, SampleTable) or hasattr(rows, "blocks"):
            sources.append((track, rows))  # type: ignore[arg-type]
        else:
            sources.append((track, SampleTable(rows)))
    if len({track.track_id for track, _ in sources}) != len(sources):
        raise MediaError("track ids must be unique")
    if chunk_duration <= 0:
        raise MediaError("chunk duration must be positive")
    layouts = [_TrackLayout(track, source, chunk_duration) for track, source in sources]

    position = sum(layout.nbytes for layout in layouts)
    if position + 8 <= _U32_MAX:
        mdat_head = _BOX.pack(position + 8, b"mdat")
    else:
        mdat_head = _LARGE_MDAT.pack(1, b"mdat", position + 16)

    has_video = any(layout.track.codec == "avc1" for layout in layouts)
    ftyp = _box(
        b"ftyp",
        b"isom",
        _U32.pack(0x200),
        b"isomiso2iso6" + (b"avc1" if has_video else b"") + b"mp41",
    )
    movie_start = min((layout.start for layout in layouts if layout.n), default=0.0)
    # Sizes do not depend on offset values: size the moov, then fill it in.
    if co64 is None:
        size = _part_size(_moov(layouts, movie_start, 0, False, edit_lists))
        co64 = len(ftyp) + size + len(mdat_head) + position > _U32_MAX
        if co64:
            size = _part_size(_moov(layouts, movie_start, 0, True, edit_lists))
    else:
        size = _part_size(_moov(layouts, movie_start, 0, co64, edit_lists))
    moov = _moov(layouts, movie_start, len(ftyp) + size + len(mdat_head), co64, edit_lists)

    out.write(ftyp)
    written = len(ftyp)
    for piece in _pieces(moov):
        out.write(piece)
        written += len(piece)
    if written != len(ftyp) + size:
        raise MediaError(f"the moov came out as {written - len(ftyp)} bytes, not {size}")
    out.write(mdat_head)
    written += len(mdat_head)
    cursors = [_Cursor(layout.source) for layout in layouts]
    for _, index, count, _ in _chunk_order(layouts):
        run_start = run_size = -1
        for block, first, end in cursors[index].take(count):
            offsets, sizes = block.offsets, block.sizes
            for k in range(first, end):
                offset, size = offsets[k], sizes[k]
                if offset == run_start + run_size and run_size + size <= _MAX_READ:
                    run_size += size
                    continue
                if run_size >= 0:
                    written += _copy(read, out, run_start, run_size)
                run_start, run_size = offset, size
        if run_size >= 0:
            written += _copy(read, out, run_start, run_size)
    return written


def _copy(read: Callable[[int, int], Buffer], out: _Writable, offset: int, size: int) -> int:
    if not size:
        return 0
    data = read(offset, size)
    if len(data) != size:
        raise MediaError(
            f"short read from the sample source at {offset}: {len(data)} of {size} bytes"
        )
    out.write(data)
    return size


def _to_movie(value: int, timescale: int) -> int:
    return (value * MOVIE_TIMESCALE + timescale // 2) // timescale


def _moov(
    layouts: list[_TrackLayout], movie_start: float, base: int, co64: bool, edit_lists: bool
) -> Part:
    traks = []
    movie_duration = 0
    for index, layout in enumerate(layouts):
        track = layout.track
        edts = b""
        track_duration = _to_movie(layout.duration, track.timescale)
        if edit_lists and layout.n:
            entries = []
            delay = round((layout.start - movie_start) * MOVIE_TIMESCALE)
            if delay > 0:
                entries.append((delay, -1))
            entries.append((_to_movie(layout.presented, track.timescale), layout.media_time))
            track_duration = sum(d for d, _ in entries)
            if any(d > _U32_MAX or m > 0x7FFFFFFF for d, m in entries):
                elst = _full_box(
                    b"elst",
                    1,
                    0,
                    _U32.pack(len(entries)),
                    *(struct.pack(">QqI", d, m, 0x10000) for d, m in entries),
                )
            else:
                elst = _full_box(
                    b"elst",
                    0,
                    0,
                    _U32.pack(len(entries)),
                    *(struct.pack(">IiI", d, m, 0x10000) for d, m in entries),
                )
            edts = _box(b"edts", elst)
        movie_duration = max(movie_duration, track_duration)
        stbl = _lazy_box(b"stbl", _stsd(track), *_sample_tables(layouts, index, base, co64))
        traks.append(_trak(track, stbl, track_duration, layout.duration, edts))
    next_id = max((layout.track.track_id for layout in layouts), default=0) + 1
    return _lazy_box(b"moov", _mvhd(movie_duration, next_id), *traks)


def _table_box(
    kind: bytes, version: int, count: int, entry: int, entries: Callable[[], Iterable[Buffer]]
) -> Part:
    """A full box of a u32 entry count and *count* entries of *entry* bytes."""
    size = 16 + count * entry

    def pieces() -> Iterator[Buffer]:
        yield _FULL_BOX.pack(size, kind, version << 24) + _U32.pack(count)
        yield from entries()

    return _Lazy(size, pieces)


def _runs(source: SampleSource, column: str, mask: int = _U32_MAX) -> Iterator[bytes]:
    """(count, value) u32 pairs for the runs of equal values of a column."""
    value, run = 0, 0
    for block in source.blocks():
        out: list[int] = []
        for v, group in groupby(getattr(block, column)):
            length = sum(1 for _ in group)
            if run and v == value:
                run += length
                continue
            if run:
                out += (run, value & mask)
            value, run = v, length
        if out:
            yield _u32_array(out)
    if run:
        yield _u32_array((run, value & mask))


def _sync_numbers(source: SampleSource) -> Iterator[bytes]:
    seen = 0
    for block in source.blocks():
        m = len(block)
        yield _u32_array(compress(range(seen + 1, seen + m + 1), block.sync))
        seen += m


def _sample_to_chunk(layout: _TrackLayout) -> Iterator[bytes]:
    out: list[int] = []
    previous = None
    for number, (_, _, count, _) in enumerate(layout.chunks(0), 1):
        if count != previous:
            out += (number, count, 1)
            previous = count
            if len(out) >= 3 * _PIECE:
                yield _u32_array(out)
                out = []
    if out:
        yield _u32_array(out)


def _chunk_offsets(
    layouts: Sequence[_TrackLayout], index: int, base: int, co64: bool
) -> Iterator[bytes]:
    pack = _u64_array if co64 else _u32_array
    out: list[int] = []
    position = base
    for _, i, _, nbytes in _chunk_order(layouts):
        if i == index:
            out.append(position)
            if len(out) >= _PIECE:
                yield pack(out)
                out = []
        position += nbytes
    if out:
        yield pack(out)


def _sample_sizes(source: SampleSource) -> Iterator[bytes]:
    for block in source.blocks():
        yield _u32_array(block.sizes)


def _sample_tables(layouts: list[_TrackLayout], index: int, base: int, co64: bool) -> list[Part]:
    layout = layouts[index]
    source, n = layout.source, layout.n
    boxes: list[Part] = [
        _table_box(b"stts", 0, layout.stts_entries, 8, lambda: _runs(source, "durations"))
    ]
    if layout.has_ctts:
        boxes.append(
            _table_box(
                b"ctts",
                1 if layout.negative_ctts else 0,
                layout.ctts_entries,
                8,
                lambda: _runs(source, "cts_offsets"),
            )
        )
    if layout.track.kind == VIDEO and layout.sync_count != n:
        boxes.append(_table_box(b"stss", 0, layout.sync_count, 4, lambda: _sync_numbers(source)))
    boxes.append(_table_box(b"stsc", 0, layout.stsc_entries, 12, lambda: _sample_to_chunk(layout)))
    if n and layout.uniform_size is not None:
        boxes.append(_full_box(b"stsz", 0, 0, struct.pack(">II", layout.uniform_size, n)))
    else:
        # stsz has a sample size before the count: one more u32
        size = 20 + 4 * n

        def sizes() -> Iterator[Buffer]:
            yield _FULL_BOX.pack(size, b"stsz", 0) + struct.pack(">II", 0, n)
            yield from _sample_sizes(source)

        boxes.append(_Lazy(size, sizes))
    boxes.append(
        _table_box(
            b"co64" if co64 else b"stco",
            0,
            layout.chunk_count,
            8 if co64 else 4,
            lambda: _chunk_offsets(layouts, index, base, co64),
        )
    )
    return boxes
