"""
Tests for L{tokengate.media.fmp4}: CMAF init and media segments, LL-HLS
parts and progressive MP4 recordings.

Structure is checked with a small box reader here; real playability with
ffprobe and ffmpeg on the H.264+AAC clip of L{tests.test_media_codecs}
(skipped when they are missing).
"""

from __future__ import annotations

import io
import os
import struct
from typing import Any, Iterator, Optional

from attrs import frozen
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.test_media_codecs import Clip, decode_errors, ffprobe, load_clip
from tokengate.media.codecs import AudioSpecificConfig, build_avcc_from_sps_pps, build_sps
from tokengate.media.errors import MediaError
from tokengate.media.fmp4 import (
    AUDIO,
    NON_SYNC_SAMPLE_FLAGS,
    SYNC_SAMPLE_FLAGS,
    VIDEO,
    Sample,
    SampleTable,
    Track,
    file_reader,
    fragment,
    init_segment,
    media_segment,
    write_progressive_mp4,
)

# ---------------------------------------------------------------------------
# A small ISO BMFF reader
# ---------------------------------------------------------------------------

_CONTAINERS = {
    b"moov",
    b"trak",
    b"mdia",
    b"minf",
    b"stbl",
    b"dinf",
    b"mvex",
    b"moof",
    b"traf",
    b"edts",
}


@frozen
class Box:
    kind: bytes
    offset: int  # of the box header in the parsed buffer
    size: int
    header: int  # 8, or 16 with a largesize
    data: bytes  # the payload
    children: list[Box]

    @property
    def version(self) -> int:
        return self.data[0]

    @property
    def flags(self) -> int:
        return int.from_bytes(self.data[1:4], "big")

    def child(self, path: str) -> Box:
        box = self
        for kind in path.split("/"):
            matches = [c for c in box.children if c.kind == kind.encode()]
            if len(matches) != 1:
                raise AssertionError(f"{len(matches)} {kind} boxes in {box.kind!r}")
            box = matches[0]
        return box

    def kinds(self) -> list[bytes]:
        return [c.kind for c in self.children]


def parse_boxes(data: bytes, offset: int = 0, end: Optional[int] = None) -> list[Box]:
    """The boxes in data[offset:end], recursing into containers."""
    end = len(data) if end is None else end
    out = []
    while offset < end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, offset + 8)[0]
            header = 16
        if size < header or offset + size > end:
            raise AssertionError(f"bad {kind!r} box size {size} at {offset}")
        children = parse_boxes(data, offset + header, offset + size) if kind in _CONTAINERS else []
        out.append(Box(kind, offset, size, header, data[offset + header : offset + size], children))
        offset += size
    return out


def root(data: bytes) -> Box:
    """A pseudo box holding the top-level boxes of *data*."""
    return Box(b"root", 0, len(data), 0, data, parse_boxes(data))


def sample_entry(stbl: Box) -> tuple[bytes, bytes, list[Box]]:
    """The stsd's one sample entry: type, fixed fields, child boxes."""
    stsd = stbl.child("stsd").data
    assert struct.unpack_from(">I", stsd, 4)[0] == 1
    size, kind = struct.unpack_from(">I4s", stsd, 8)
    entry = stsd[8 : 8 + size]
    fixed = 78 if kind == b"avc1" else 28
    return kind, entry[8 : 8 + fixed], parse_boxes(entry, 8 + fixed)


def u32s(data: bytes, offset: int = 0) -> list[int]:
    return list(struct.unpack_from(f">{(len(data) - offset) // 4}I", data, offset))


def table_entries(box: Box, width: int, offset: int = 8) -> list[tuple[int, ...]]:
    """The entries of a full box table: count at 4, then *width* u32s each."""
    count = struct.unpack_from(">I", box.data, offset - 4)[0]
    values = struct.unpack_from(f">{count * width}I", box.data, offset)
    return [values[i : i + width] for i in range(0, len(values), width)]


@frozen
class TrunEntry:
    duration: int
    size: int
    flags: int
    cto: int


def read_fragment(data: bytes) -> tuple[int, int, int, list[TrunEntry], list[bytes]]:
    """sequence number, track id, base decode time, trun entries, sample data."""
    top = root(data)
    moof = top.child("moof")
    mdat = top.child("mdat")
    sequence = struct.unpack_from(">I", moof.child("mfhd").data, 4)[0]
    tfhd = moof.child("traf/tfhd")
    assert tfhd.flags == 0x020000, hex(tfhd.flags)
    track_id = struct.unpack_from(">I", tfhd.data, 4)[0]
    tfdt = moof.child("traf/tfdt")
    assert tfdt.version == 1
    base = struct.unpack_from(">Q", tfdt.data, 4)[0]
    trun = moof.child("traf/trun")
    assert trun.version == 1
    count, data_offset = struct.unpack_from(">Ii", trun.data, 4)
    assert data_offset == moof.size + mdat.header, (data_offset, moof.size)
    rows = []
    for i in range(count):
        if trun.flags == 0xF01:
            duration, size, flags, cto = struct.unpack_from(">IIIi", trun.data, 12 + 16 * i)
        else:
            assert trun.flags == 0x701, hex(trun.flags)
            duration, size, flags = struct.unpack_from(">III", trun.data, 12 + 12 * i)
            cto = 0
        rows.append(TrunEntry(duration, size, flags, cto))
    assert rows, "a fragment without samples"
    assert len(trun.data) == 12 + len(rows) * (16 if trun.flags == 0xF01 else 12)
    payload_start = moof.offset + data_offset
    assert payload_start == mdat.offset + mdat.header
    samples, position = [], payload_start
    for row in rows:
        samples.append(data[position : position + row.size])
        position += row.size
    assert position == mdat.offset + mdat.size
    return sequence, track_id, base, rows, samples


def read_progressive(data: bytes) -> dict[int, list[bytes]]:
    """Each track's samples, located through stsc, stsz and stco/co64."""
    moov = root(data).child("moov")
    out = {}
    for trak in (c for c in moov.children if c.kind == b"trak"):
        track_id = struct.unpack_from(">I", trak.child("tkhd").data, 12)[0]
        stbl = trak.child("mdia/minf/stbl")
        stsz = stbl.child("stsz")
        size, count = struct.unpack_from(">II", stsz.data, 4)
        sizes = [size] * count if size else list(struct.unpack_from(f">{count}I", stsz.data, 12))
        if any(c.kind == b"co64" for c in stbl.children):
            co64 = stbl.child("co64").data
            offsets = list(struct.unpack_from(f">{struct.unpack_from('>I', co64, 4)[0]}Q", co64, 8))
        else:
            offsets = [row[0] for row in table_entries(stbl.child("stco"), 1)]
        stsc = table_entries(stbl.child("stsc"), 3)
        samples, index = [], 0
        for chunk, offset in enumerate(offsets, 1):
            per_chunk = [row[1] for row in stsc if row[0] <= chunk][-1]
            for _ in range(per_chunk):
                samples.append(data[offset : offset + sizes[index]])
                offset += sizes[index]
                index += 1
        assert index == count
        out[track_id] = samples
    assert out, "no trak in the moov"
    return out


# ---------------------------------------------------------------------------
# Tracks and samples from the clip
# ---------------------------------------------------------------------------


def clip_tracks(clip: Clip) -> tuple[Track, Track]:
    return Track.video_avc(1, clip.avcc), Track.audio_aac(2, clip.asc)


def video_samples(clip: Clip) -> list[Sample]:
    """The clip's video at 90 kHz; the last frame lasts 40 ms."""
    frames = clip.video
    out = []
    for i, frame in enumerate(frames):
        end = frames[i + 1].timestamp if i + 1 < len(frames) else frame.timestamp + 40
        out.append(
            Sample(
                frame.data,
                frame.timestamp * 90,
                (end - frame.timestamp) * 90,
                frame.composition_time * 90,
                frame.keyframe,
            )
        )
    return out


def audio_samples(clip: Clip) -> list[Sample]:
    """The clip's AAC frames, 1024 samples each at 44.1 kHz."""
    return [Sample(raw, i * 1024, 1024) for i, (_, raw) in enumerate(clip.audio)]


def gops(samples: list[Sample]) -> list[list[Sample]]:
    """Samples cut before each sync sample."""
    out: list[list[Sample]] = []
    for s in samples:
        if s.is_sync or not out:
            out.append([])
        out[-1].append(s)
    return out


def small_video_track(track_id: int = 1) -> Track:
    sps = build_sps(100, 31, 1280, 720, num_units_in_tick=1, time_scale=60)
    return Track.video_avc(track_id, build_avcc_from_sps_pps(sps, b"\x68\xee\x3c\x80"))


class ProbeTestCase(SynchronousTestCase):
    """A test case writing files and probing them cleanly."""

    def write(self, name: str, *parts: bytes) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            for part in parts:
                f.write(part)
        return path

    def probe(self, path: str) -> dict[str, Any]:
        """ffprobe's report, which must be free of warnings and errors."""
        info, errors = ffprobe(path)
        self.assertEqual(errors, "", f"ffprobe complained about {path}")
        self.assertEqual(decode_errors(path), "", f"ffmpeg could not decode {path} cleanly")
        return info


# ---------------------------------------------------------------------------
# Tracks and init segments
# ---------------------------------------------------------------------------


class TrackTests(SynchronousTestCase):
    """L{Track} construction and codec strings."""

    def test_video_from_avcc(self) -> None:
        """The size comes from the SPS unless given."""
        clip = load_clip()
        video = Track.video_avc(1, clip.avcc)
        self.assertEqual(
            (video.kind, video.timescale, video.width, video.height), (VIDEO, 90000, 320, 240)
        )
        self.assertEqual(video.codec_string, "avc1.4d400d")
        self.assertEqual(Track.video_avc(1, clip.avcc, width=640, height=480).width, 640)

    def test_audio_from_asc(self) -> None:
        """Channels, rate and timescale come from the ASC."""
        audio = Track.audio_aac(2, load_clip().asc)
        self.assertEqual(
            (audio.kind, audio.timescale, audio.sample_rate, audio.channels),
            (AUDIO, 44100, 44100, 1),
        )
        self.assertEqual(audio.codec_string, "mp4a.40.2")
        self.assertEqual(
            Track.audio_aac(2, AudioSpecificConfig.create(2, 48000, 0).build()).channels, 2
        )

    def test_opus(self) -> None:
        """Opus has a dOps with big-endian fields and the codec string ``opus``."""
        opus = Track.audio_opus(3, 2, pre_skip=312)
        self.assertEqual(opus.config, b"\x00\x02\x01\x38\x00\x00\xbb\x80\x00\x00\x00")
        self.assertEqual((opus.codec_string, opus.timescale), ("opus", 48000))
        self.assertRaises(MediaError, Track.audio_opus, 3, 6)
        self.assertRaises(MediaError, Track.audio_opus, 3, 2, pre_skip=-1)

    def test_validation(self) -> None:
        """Bad ids, kinds, codecs, languages and sizes raise MediaError."""
        avcc = load_clip().avcc
        self.assertRaises(MediaError, Track, 0, VIDEO, 90000, "avc1", avcc)
        self.assertRaises(MediaError, Track, 1, AUDIO, 90000, "avc1", avcc)
        self.assertRaises(MediaError, Track, 1, VIDEO, 90000, "hvc1", avcc)
        self.assertRaises(MediaError, Track, 1, VIDEO, 0, "avc1", avcc)
        self.assertRaises(MediaError, Track, 1, VIDEO, 90000, "avc1", avcc, language="EN")
        self.assertRaises(MediaError, Track, 1, VIDEO, 90000, "avc1", avcc, width=70000)
        self.assertRaises(MediaError, Track.video_avc, 1, b"\x01\x64")
        self.assertRaises(MediaError, Track.audio_aac, 1, b"\x16")


class InitSegmentTests(ProbeTestCase):
    """L{init_segment}."""

    def test_video(self) -> None:
        """The video init segment follows the CMAF layout."""
        clip = load_clip()
        track = Track.video_avc(7, clip.avcc)
        top = root(init_segment(track))
        self.assertEqual(top.kinds(), [b"ftyp", b"moov"])
        self.assertEqual(top.child("ftyp").data, b"iso6\0\0\0\0iso6cmfcmp41")
        moov = top.child("moov")
        self.assertEqual(moov.kinds(), [b"mvhd", b"trak", b"mvex"])
        self.assertEqual(
            struct.unpack_from(">I", moov.child("mvhd").data, 96)[0], 8
        )  # next_track_ID
        tkhd = moov.child("trak/tkhd")
        self.assertEqual((tkhd.version, tkhd.flags), (0, 3))
        self.assertEqual(struct.unpack_from(">I", tkhd.data, 12)[0], 7)
        self.assertEqual(struct.unpack_from(">II", tkhd.data, 76), (320 << 16, 240 << 16))
        mdhd = moov.child("trak/mdia/mdhd")
        self.assertEqual(struct.unpack_from(">IH", mdhd.data, 12), (90000, 0))
        self.assertEqual(struct.unpack_from(">H", mdhd.data, 20)[0], 0x55C4)  # und
        self.assertEqual(moov.child("trak/mdia/hdlr").data[8:12], b"vide")
        minf = moov.child("trak/mdia/minf")
        self.assertEqual(minf.kinds(), [b"vmhd", b"dinf", b"stbl"])
        self.assertEqual(minf.child("vmhd").flags, 1)
        dref = minf.child("dinf/dref").data
        self.assertEqual(dref[4:], b"\0\0\0\x01\0\0\0\x0curl \0\0\0\x01")
        stbl = minf.child("stbl")
        self.assertEqual(stbl.kinds(), [b"stsd", b"stts", b"stsc", b"stsz", b"stco"])
        for table in ("stts", "stsc", "stco"):
            self.assertEqual(stbl.child(table).data, b"\0" * 8)
        self.assertEqual(stbl.child("stsz").data, b"\0" * 12)
        kind, fixed, children = sample_entry(stbl)
        self.assertEqual(kind, b"avc1")
        self.assertEqual(struct.unpack_from(">H", fixed, 6)[0], 1)  # data_reference_index
        self.assertEqual(struct.unpack_from(">HH", fixed, 24), (320, 240))
        self.assertEqual([(c.kind, c.data) for c in children], [(b"avcC", clip.avcc)])
        trex = moov.child("mvex/trex")
        self.assertEqual(struct.unpack_from(">5I", trex.data, 4), (7, 1, 0, 0, 0))

    def test_aac(self) -> None:
        """The AAC init segment has mp4a with an esds carrying the ASC."""
        clip = load_clip()
        moov = root(init_segment(Track.audio_aac(2, clip.asc, bitrate=64000))).child("moov")
        self.assertEqual(
            struct.unpack_from(">h", moov.child("trak/tkhd").data, 36)[0], 0x0100
        )  # volume
        self.assertEqual(struct.unpack_from(">I", moov.child("trak/mdia/mdhd").data, 12)[0], 44100)
        self.assertEqual(moov.child("trak/mdia/hdlr").data[8:12], b"soun")
        minf = moov.child("trak/mdia/minf")
        self.assertEqual(minf.kinds(), [b"smhd", b"dinf", b"stbl"])
        kind, fixed, children = sample_entry(minf.child("stbl"))
        self.assertEqual(kind, b"mp4a")
        self.assertEqual(struct.unpack_from(">HHHHI", fixed, 16), (1, 16, 0, 0, 44100 << 16))
        esds = children[0]
        self.assertEqual(esds.kind, b"esds")
        self.assertEqual(
            esds.data[4:],
            # ES_Descriptor: ES_ID 0, no flags
            b"\x03" + bytes((3 + 2 + 13 + 2 + len(clip.asc) + 3,)) + b"\0\0\0"
            # DecoderConfigDescriptor: AAC, audio stream, buffer size 0, max and average bitrate
            + b"\x04" + bytes((13 + 2 + len(clip.asc),)) + b"\x40\x15\0\0\0"
            + struct.pack(">II", 64000, 64000)
            # DecoderSpecificInfo: the ASC; SLConfigDescriptor: predefined 2
            + b"\x05" + bytes((len(clip.asc),)) + clip.asc
            + b"\x06\x01\x02",
        )  # fmt: skip

    def test_opus(self) -> None:
        """The Opus init segment has an Opus entry with dOps."""
        track = Track.audio_opus(3, 1)
        stbl = root(init_segment(track)).child("moov/trak/mdia/minf/stbl")
        kind, fixed, children = sample_entry(stbl)
        self.assertEqual((kind, struct.unpack_from(">H", fixed, 16)[0]), (b"Opus", 1))
        self.assertEqual([(c.kind, c.data) for c in children], [(b"dOps", track.config)])

    def test_probe(self) -> None:
        """
        ffprobe reads audio init segments alone cleanly, with the right codec
        (video needs a frame for its pixel format, so the segment tests
        cover it).
        """
        _, audio = clip_tracks(load_clip())
        for track, codec in ((audio, "aac"), (Track.audio_opus(3), "opus")):
            info, errors = ffprobe(self.write("init.mp4", init_segment(track)))
            self.assertEqual(errors, "")
            self.assertEqual(info["streams"][0]["codec_name"], codec)


# ---------------------------------------------------------------------------
# Media segments
# ---------------------------------------------------------------------------

samples_strategy = st.lists(
    st.builds(
        Sample,
        st.binary(max_size=50),
        st.integers(0, 1 << 40),
        st.integers(0, 0xFFFFFFFF),
        st.integers(-0x80000000, 0x7FFFFFFF) | st.just(0),
        st.booleans(),
    ),
    min_size=1,
    max_size=20,
)


class MediaSegmentTests(SynchronousTestCase):
    """L{media_segment} structure."""

    def test_structure(self) -> None:
        """styp, then moof with mfhd and a traf of tfhd, tfdt and trun, then mdat."""
        track = small_video_track(5)
        samples = [
            Sample(b"key", 900000, 3000, 6000, True),
            Sample(b"b-frame", 903000, 3000, -3000, False),
            Sample(b"p", 906000, 3000, 0, False),
        ]
        data = media_segment(track, 42, samples)
        top = root(data)
        self.assertEqual(top.kinds(), [b"styp", b"moof", b"mdat"])
        self.assertEqual(top.child("styp").data, b"msdh\0\0\0\0msdhmsix")
        self.assertEqual(top.child("moof").kinds(), [b"mfhd", b"traf"])
        self.assertEqual(top.child("moof/traf").kinds(), [b"tfhd", b"tfdt", b"trun"])
        sequence, track_id, base, rows, payloads = read_fragment(data)
        self.assertEqual((sequence, track_id, base), (42, 5, 900000))
        self.assertEqual(
            rows,
            [
                TrunEntry(3000, 3, SYNC_SAMPLE_FLAGS, 6000),
                TrunEntry(3000, 7, NON_SYNC_SAMPLE_FLAGS, -3000),
                TrunEntry(3000, 1, NON_SYNC_SAMPLE_FLAGS, 0),
            ],
        )
        self.assertEqual(payloads, [b"key", b"b-frame", b"p"])
        self.assertEqual(top.child("mdat").data, b"keyb-framep")

    def test_part(self) -> None:
        """Without styp the fragment is an LL-HLS part: moof and mdat only."""
        data = media_segment(small_video_track(), 1, [Sample(b"x", 0, 3000)], with_styp=False)
        self.assertEqual(root(data).kinds(), [b"moof", b"mdat"])
        self.assertEqual(read_fragment(data)[4], [b"x"])

    def test_no_composition_offsets(self) -> None:
        """With every offset zero (audio), trun leaves the offset field out."""
        audio = Track.audio_aac(2, b"\x12\x10")
        data = media_segment(audio, 3, [Sample(b"aa", 1024 * i, 1024) for i in range(4)])
        trun = root(data).child("moof/traf/trun")
        self.assertEqual((trun.version, trun.flags, len(trun.data)), (1, 0x701, 12 + 4 * 12))
        self.assertEqual(read_fragment(data)[2], 0)

    def test_fragment_from_columns(self) -> None:
        """
        L{fragment} (the segmenter's form: a flat trun table and the
        payloads, no object per sample) makes what L{media_segment} makes;
        a table of the wrong length is refused.
        """
        track = small_video_track(5)
        samples = [Sample(b"key", 900000, 3000, 6000, True), Sample(b"p", 903000, 3000, 0, False)]
        table = [3000, 3, SYNC_SAMPLE_FLAGS, 6000, 3000, 1, NON_SYNC_SAMPLE_FLAGS, 0]
        self.assertEqual(fragment(track, 7, 900000, table, [b"key", b"p"], True, False),
                         media_segment(track, 7, samples, with_styp=False))
        flat = [Sample(b"aa", 1024 * i, 1024) for i in range(3)]
        table = [1024, 2, SYNC_SAMPLE_FLAGS, 0] * 3
        self.assertEqual(fragment(track, 3, 0, table, [b"aa"] * 3, False),
                         media_segment(track, 3, flat))
        self.assertRaises(MediaError, fragment, track, 1, 0, [], [], False)
        self.assertRaises(MediaError, fragment, track, 1, 0, [1, 1, 0], [b"x"], False)
        self.assertRaises(MediaError, fragment, track, 1, 0, [1 << 32, 1, 0, 0], [b"x"], False)

    def test_errors(self) -> None:
        """Empty fragments and out-of-range fields raise MediaError."""
        track = small_video_track()
        self.assertRaises(MediaError, media_segment, track, 1, [])
        for bad in (
            Sample(b"", 0, -1),
            Sample(b"", 0, 1 << 32),
            Sample(b"", -1, 1),
            Sample(b"", 1 << 64, 1),
            Sample(b"", 0, 1, 1 << 31),
            Sample(b"", 0, 1, -(1 << 31) - 1),
        ):
            self.assertRaises(MediaError, media_segment, track, 1, [bad])
        self.assertRaises(MediaError, media_segment, track, 1 << 32, [Sample(b"", 0, 1)])

    @given(samples_strategy, st.integers(0, 0xFFFFFFFF), st.booleans())
    def test_round_trip(self, samples: list[Sample], sequence: int, with_styp: bool) -> None:
        """Every field of every sample is where a reader looks for it."""
        data = media_segment(small_video_track(9), sequence, samples, with_styp)
        got_sequence, track_id, base, rows, payloads = read_fragment(data)
        self.assertEqual((got_sequence, track_id, base), (sequence, 9, samples[0].dts))
        self.assertEqual(
            rows,
            [
                TrunEntry(
                    s.duration,
                    len(s.data),
                    SYNC_SAMPLE_FLAGS if s.is_sync else NON_SYNC_SAMPLE_FLAGS,
                    s.cts_offset,
                )
                for s in samples
            ],
        )
        self.assertEqual(payloads, [s.data for s in samples])


class RealMediaSegmentTests(ProbeTestCase):
    """Fragments of the real clip, checked with ffprobe and ffmpeg."""

    def test_video_segments(self) -> None:
        """
        Two GOP-long video segments after the init segment play as 50
        frames, 320x240, 2 s long.
        """
        clip = load_clip()
        video, _ = clip_tracks(clip)
        segments = gops(video_samples(clip))
        self.assertEqual([len(s) for s in segments], [25, 25])
        data = [media_segment(video, i, s) for i, s in enumerate(segments, 1)]
        info = self.probe(self.write("video.mp4", init_segment(video), *data))
        stream = info["streams"][0]
        self.assertEqual(
            (stream["codec_name"], stream["width"], stream["height"]), ("h264", 320, 240)
        )
        self.assertEqual(stream["nb_read_frames"], "50")
        self.assertApproximates(float(stream["duration"]), 2.0, 0.01)
        self.assertApproximates(float(stream["start_time"]), 0.08, 0.001)  # two B-frames of delay
        # A later segment stands alone after the init segment, as players join.
        info = self.probe(self.write("join.mp4", init_segment(video), data[1]))
        self.assertEqual(info["streams"][0]["nb_read_frames"], "25")
        self.assertApproximates(float(info["streams"][0]["start_time"]), 1.08, 0.001)

    def test_audio_segments(self) -> None:
        """AAC segments play as 88 frames of 44.1 kHz mono."""
        clip = load_clip()
        _, audio = clip_tracks(clip)
        samples = audio_samples(clip)
        data = [
            media_segment(audio, n, samples[i : i + 43])
            for n, i in enumerate(range(0, len(samples), 43), 1)
        ]
        info = self.probe(self.write("audio.mp4", init_segment(audio), *data))
        stream = info["streams"][0]
        self.assertEqual(
            (
                stream["codec_name"],
                stream["sample_rate"],
                stream["channels"],
                stream["nb_read_frames"],
            ),
            ("aac", "44100", 1, "88"),
        )
        self.assertApproximates(float(stream["duration"]), 88 * 1024 / 44100, 0.001)

    def test_parts(self) -> None:
        """LL-HLS parts of 8 frames (no styp) concatenate into the same 50 frames."""
        clip = load_clip()
        video, _ = clip_tracks(clip)
        samples = video_samples(clip)
        parts = [
            media_segment(video, n, samples[i : i + 8], with_styp=False)
            for n, i in enumerate(range(0, len(samples), 8), 1)
        ]
        self.assertEqual(len(parts), 7)
        info = self.probe(self.write("parts.mp4", init_segment(video), *parts))
        self.assertEqual(info["streams"][0]["nb_read_frames"], "50")
        self.assertApproximates(float(info["streams"][0]["duration"]), 2.0, 0.01)

    def test_opus(self) -> None:
        """Opus fragments (20 ms silence frames, as WebRTC sends) decode."""
        track = Track.audio_opus(3, 2)
        frames = [Sample(b"\xf8\xff\xfe", i * 960, 960) for i in range(50)]
        info = self.probe(
            self.write(
                "opus.mp4",
                init_segment(track),
                media_segment(track, 1, frames[:25]),
                media_segment(track, 2, frames[25:]),
            )
        )
        stream = info["streams"][0]
        self.assertEqual(
            (stream["codec_name"], stream["channels"], stream["nb_read_frames"]), ("opus", 2, "50")
        )
        self.assertApproximates(float(stream["duration"]), 1.0, 0.001)


# ---------------------------------------------------------------------------
# Progressive MP4
# ---------------------------------------------------------------------------


class SpooledClip:
    """The clip recorded as a live server would: arrival-order spool plus tables."""

    def __init__(self, clip: Clip, audio_first: bool = False, cto_shift: int = 0) -> None:
        self.video, self.audio = clip_tracks(clip)
        self.video_samples = video_samples(clip)
        self.audio_samples = audio_samples(clip)
        self.spool = io.BytesIO()
        self.video_table = SampleTable()
        self.audio_table = SampleTable()
        arrivals = [(s.dts / 90000, 0, s) for s in self.video_samples] + [
            (s.dts / 44100, 1, s) for s in self.audio_samples
        ]
        if audio_first:  # all the audio, then all the video
            arrivals.sort(key=lambda a: (-a[1], a[0]))
        else:  # interleaved by time
            arrivals.sort(key=lambda a: (a[0], a[1]))
        for _, kind, s in arrivals:
            offset = self.spool.tell()
            self.spool.write(s.data)
            if kind == 0:
                self.video_table.append(
                    offset, len(s.data), s.dts, s.duration, s.cts_offset + cto_shift, s.is_sync
                )
            else:
                self.audio_table.append(offset, len(s.data), s.dts, s.duration)

    def read(self, offset: int, size: int) -> memoryview:
        return self.spool.getbuffer()[offset : offset + size]

    def tracks(self) -> list[tuple[Track, SampleTable]]:
        return [(self.video, self.video_table), (self.audio, self.audio_table)]


class ProgressiveTests(ProbeTestCase):
    """L{write_progressive_mp4}."""

    def record(self, spooled: SpooledClip, **options: Any) -> bytes:
        out = io.BytesIO()
        written = write_progressive_mp4(spooled.tracks(), out, spooled.read, **options)
        data = out.getvalue()
        self.assertEqual(written, len(data))
        samples = read_progressive(data)
        self.assertTrue(spooled.video_samples and spooled.audio_samples)
        self.assertEqual(samples[1], [s.data for s in spooled.video_samples])
        self.assertEqual(samples[2], [s.data for s in spooled.audio_samples])
        return data

    def check_playback(self, data: bytes, duration: float = 2.08) -> dict[str, Any]:
        info = self.probe(self.write("rec.mp4", data))
        video, audio = info["streams"]
        self.assertEqual((video["codec_name"], video["width"], video["height"]), ("h264", 320, 240))
        self.assertEqual(
            (audio["codec_name"], audio["sample_rate"], audio["channels"]), ("aac", "44100", 1)
        )
        self.assertEqual((video["nb_read_frames"], audio["nb_read_frames"]), ("50", "88"))
        self.assertApproximates(float(video["duration"]), 2.0, 0.01)
        self.assertApproximates(float(info["format"]["duration"]), duration, 0.01)
        return info

    def test_recording(self) -> None:
        """
        The recording is ftyp, moov, mdat; about 2 s long, 50 video and 88
        audio frames, and decodes without a message.
        """
        spooled = SpooledClip(load_clip())
        data = self.record(spooled)
        top = root(data)
        self.assertEqual(top.kinds(), [b"ftyp", b"moov", b"mdat"])
        self.assertEqual(top.child("ftyp").data[:4], b"isom")
        info = self.check_playback(data)
        # the video starts after the B-frame delay, as it did in the source
        self.assertApproximates(float(info["streams"][0]["start_time"]), 0.08, 0.001)
        video_stbl = top.child("moov").children[1].child("mdia/minf/stbl")
        self.assertEqual(
            video_stbl.kinds(), [b"stsd", b"stts", b"ctts", b"stss", b"stsc", b"stsz", b"stco"]
        )
        self.assertEqual(table_entries(video_stbl.child("stss"), 1), [(1,), (26,)])
        self.assertEqual(table_entries(video_stbl.child("stts"), 2), [(50, 3600)])
        self.assertEqual(video_stbl.child("ctts").version, 0)
        audio_stbl = top.child("moov").children[2].child("mdia/minf/stbl")
        self.assertEqual(audio_stbl.kinds(), [b"stsd", b"stts", b"stsc", b"stsz", b"stco"])
        elst = top.child("moov").children[1].child("edts/elst")
        self.assertEqual(
            struct.unpack_from(">I" + "Iii" * 2, elst.data, 4),
            (2, 80, -1, 0x10000, 2000, 7200, 0x10000),
        )

    def test_variants(self) -> None:
        """co64, no edit lists, small chunks and another spool order all play."""
        clip = load_clip()
        data = self.record(SpooledClip(clip), co64=True)
        stbl = root(data).child("moov").children[1].child("mdia/minf/stbl")
        self.assertIn(b"co64", stbl.kinds())
        self.check_playback(data)
        data = self.record(SpooledClip(clip), edit_lists=False)
        self.assertNotIn(b"edts", root(data).child("moov").children[1].kinds())
        self.check_playback(data, duration=88 * 1024 / 44100)  # the longer track, no delay
        data = self.record(SpooledClip(clip, audio_first=True), chunk_duration=0.1)
        self.assertGreater(
            len(
                table_entries(root(data).child("moov").children[2].child("mdia/minf/stbl/stco"), 1)
            ),
            15,
        )
        self.check_playback(data)

    def test_negative_offsets(self) -> None:
        """Composition offsets shifted below zero use ctts version 1 and still play."""
        spooled = SpooledClip(load_clip(), cto_shift=-7200)
        data = self.record(spooled, edit_lists=False)
        stbl = root(data).child("moov").children[1].child("mdia/minf/stbl")
        self.assertEqual(stbl.child("ctts").version, 1)
        self.probe(self.write("negative.mp4", data))

    def test_file_source(self) -> None:
        """L{file_reader} serves samples from a spool file."""
        spooled = SpooledClip(load_clip())
        path = self.write("spool.bin", spooled.spool.getvalue())
        out = io.BytesIO()
        with open(path, "rb") as f:
            write_progressive_mp4(spooled.tracks(), out, file_reader(f))
        self.assertEqual(out.getvalue(), self.record(spooled))

    def test_rows(self) -> None:
        """Plain row tuples work as well as a SampleTable."""
        spooled = SpooledClip(load_clip())
        rows = list(
            zip(
                spooled.video_table.offsets,
                spooled.video_table.sizes,
                spooled.video_table.dts,
                spooled.video_table.durations,
                spooled.video_table.cts_offsets,
                map(bool, spooled.video_table.sync),
            )
        )
        self.assertEqual(len(rows), 50)
        a, b = io.BytesIO(), io.BytesIO()
        write_progressive_mp4([(spooled.video, rows)], a, spooled.read)
        write_progressive_mp4([(spooled.video, spooled.video_table)], b, spooled.read)
        self.assertEqual(a.getvalue(), b.getvalue())

    def test_blocks(self) -> None:
        """
        A L{SampleSource} that yields its samples in blocks of any size
        makes the same file as the whole table, whatever the chunking,
        offset width, edit lists and spool order.
        """

        class Blocks:
            def __init__(self, table: SampleTable, size: int) -> None:
                self.table, self.size = table, size

            def __len__(self) -> int:
                return len(self.table)

            def blocks(self) -> Iterator[SampleTable]:
                t = self.table
                for i in range(0, len(t), self.size):
                    j = i + self.size
                    yield SampleTable.from_columns(
                        t.offsets[i:j], t.sizes[i:j], t.dts[i:j], t.durations[i:j],
                        t.cts_offsets[i:j], t.sync[i:j],
                    )  # fmt: skip

        clip = load_clip()
        for spooled, options in [
            (SpooledClip(clip), {}),
            (SpooledClip(clip, audio_first=True), {"chunk_duration": 0.1}),
            (SpooledClip(clip, cto_shift=-7200), {"co64": True, "edit_lists": False}),
        ]:
            whole = self.record(spooled, **options)
            for size in (1, 2, 7, 64):
                out = io.BytesIO()
                sources = [(track, Blocks(table, size)) for track, table in spooled.tracks()]
                write_progressive_mp4(sources, out, spooled.read, **options)
                self.assertEqual(out.getvalue(), whole, (options, size))

    def test_errors(self) -> None:
        """Short reads, duplicate ids, bad chunking and bad rows raise MediaError."""
        spooled = SpooledClip(load_clip())
        self.assertRaises(
            MediaError, write_progressive_mp4, spooled.tracks(), io.BytesIO(), lambda o, s: b""
        )
        self.assertRaises(
            MediaError,
            write_progressive_mp4,
            [(spooled.video, spooled.video_table)] * 2,
            io.BytesIO(),
            spooled.read,
        )
        self.assertRaises(
            MediaError,
            write_progressive_mp4,
            spooled.tracks(),
            io.BytesIO(),
            spooled.read,
            chunk_duration=0,
        )
        table = SampleTable()
        self.assertRaises(MediaError, table.append, -1, 1, 0, 1)
        self.assertRaises(MediaError, table.append, 0, 1, 1 << 63, 1)
        self.assertEqual(len(table), 0)
        table.append(0, 4, 0, 1 << 33)
        self.assertRaises(
            MediaError,
            write_progressive_mp4,
            [(spooled.video, table)],
            io.BytesIO(),
            lambda o, s: b"abcd",
        )

    def test_empty_track(self) -> None:
        """A track without samples still gets a valid, empty trak."""
        out = io.BytesIO()
        write_progressive_mp4([(small_video_track(), SampleTable())], out, lambda o, s: b"")
        top = root(out.getvalue())
        self.assertEqual(top.kinds(), [b"ftyp", b"moov", b"mdat"])
        self.assertEqual(top.child("mdat").size, 8)
