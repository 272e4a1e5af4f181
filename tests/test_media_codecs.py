"""
Tests for L{tokengate.media.codecs} and L{tokengate.media.flv}.

Real media comes from ffmpeg (H.264 with B-frames plus AAC, in FLV, as an
RTMP publisher sends it); the tests skip when ffmpeg or ffprobe is missing.
The clip helpers here are shared with L{tests.test_media_fmp4}.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
from typing import Any, Optional

from attrs import frozen
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.media.codecs import (
    AccessUnit,
    AAC_RAW,
    AAC_SAMPLE_RATES,
    AAC_SEQUENCE_HEADER,
    AVC_END_OF_SEQUENCE,
    AVC_NALU,
    AVC_SEQUENCE_HEADER,
    CODEC_AVC,
    FRAME_INFO,
    FRAME_INTER,
    FRAME_KEY,
    SOUND_AAC,
    AudioSpecificConfig,
    AVCDecoderConfigurationRecord,
    aac_codec_string,
    add_emulation_prevention,
    annexb_access_unit,
    audio_sample,
    video_sample,
    UnsupportedCodec,
    asc_from_adts,
    avc_codec_string,
    build_adts,
    build_audio_tag,
    build_avcc_from_sps_pps,
    build_sps,
    build_video_tag,
    is_keyframe_nals,
    length_prefixed_nals,
    length_prefixed_to_annexb,
    nal_unit_type,
    parse_adts,
    parse_audio_tag,
    parse_sps,
    parse_video_tag,
    remove_emulation_prevention,
    split_adts,
    split_annexb,
)
from tokengate.media.errors import MediaError
from tests.helpers import require
from tokengate.media.flv import (
    TAG_AUDIO,
    TAG_SCRIPT,
    TAG_VIDEO,
    build_flv_header,
    build_flv_tag,
    iter_flv_tags,
    parse_flv_header,
)

# ---------------------------------------------------------------------------
# Shared helpers: external tools and the test clip
# ---------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing text output."""
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def ffprobe(path: str, *extra: str) -> tuple[dict[str, Any], str]:
    """
    ffprobe's JSON for *path* (streams, format, counted frames) and its
    diagnostics, at warning level so warnings fail tests too.
    """
    result = run(
        require("ffprobe"),
        "-v", "warning", "-count_frames", "-show_streams", "-show_format",
        "-of", "json", *extra, path,
    )  # fmt: skip
    return json.loads(result.stdout or "{}"), result.stderr


def decode_errors(path: str) -> str:
    """What ``ffmpeg -v error -i path -f null -`` prints (nothing when clean)."""
    result = run(require("ffmpeg"), "-nostdin", "-v", "error", "-i", path, "-f", "null", "-")
    return result.stdout + result.stderr


_scratch: Optional[str] = None


def scratch_dir() -> str:
    """A temporary directory shared by this test run, removed at exit."""
    global _scratch
    if _scratch is None:
        _scratch = tempfile.mkdtemp(prefix="tokengate-media-")
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


def ffmpeg_output(name: str, *args: str) -> str:
    """Run ffmpeg once per test run to make scratch file *name*; its path."""
    path = os.path.join(scratch_dir(), name)
    if not os.path.exists(path):
        root, ext = os.path.splitext(path)
        partial = root + ".partial" + ext
        result = run(require("ffmpeg"), "-nostdin", "-v", "error", "-y", *args, partial)
        if result.returncode:
            raise AssertionError(f"ffmpeg failed making {name}: {result.stderr}")
        os.rename(partial, path)
    return path


def clip_path() -> str:
    """Two seconds of 320x240 25 fps H.264 (2 B-frames, GOP 25) and AAC, in FLV."""
    return ffmpeg_output(
        "clip.flv",
        "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-f", "lavfi", "-i", "sine",
        "-t", "2", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
        "-g", "25", "-bf", "2", "-c:a", "aac", "-f", "flv",
    )  # fmt: skip


@frozen
class VideoFrame:
    timestamp: int  # ms, the FLV DTS
    composition_time: int  # ms
    keyframe: bool
    data: bytes  # 4-byte length-prefixed NAL units


@frozen
class Clip:
    """The test clip's media, as an RTMP server receives it."""

    path: str
    avcc: bytes
    asc: bytes
    video: list[VideoFrame]
    audio: list[tuple[int, bytes]]  # (timestamp ms, raw AAC frame)
    video_tags: int
    audio_tags: int
    script_tags: int


_clip: Optional[Clip] = None


def load_clip() -> Clip:
    """The parsed test clip (made and parsed once per run)."""
    global _clip
    if _clip is None:
        path = clip_path()
        with open(path, "rb") as f:
            data = f.read()
        avcc = asc = b""
        video: list[VideoFrame] = []
        audio: list[tuple[int, bytes]] = []
        counts = {TAG_VIDEO: 0, TAG_AUDIO: 0, TAG_SCRIPT: 0}
        for tag in iter_flv_tags(data):
            counts[tag.tag_type] += 1
            if tag.tag_type == TAG_VIDEO:
                v = parse_video_tag(tag.data)
                if v.avc_packet_type == AVC_SEQUENCE_HEADER:
                    avcc = bytes(v.data)
                elif v.avc_packet_type == AVC_NALU:
                    video.append(
                        VideoFrame(tag.timestamp, v.composition_time, v.is_keyframe, bytes(v.data))
                    )
            elif tag.tag_type == TAG_AUDIO:
                a = parse_audio_tag(tag.data)
                if a.aac_packet_type == AAC_SEQUENCE_HEADER:
                    asc = bytes(a.data)
                elif a.aac_packet_type == AAC_RAW:
                    audio.append((tag.timestamp, bytes(a.data)))
        # the tests compare these lists with what the code made of the clip
        assert avcc and asc and video and audio, (len(avcc), len(asc), len(video), len(audio))
        _clip = Clip(
            path, avcc, asc, video, audio, counts[TAG_VIDEO], counts[TAG_AUDIO], counts[TAG_SCRIPT]
        )
    return _clip


def stream_info(path: str, *extra: str) -> dict[str, Any]:
    """The first stream of ffprobe's report, asserting a clean probe."""
    info, errors = ffprobe(path, *extra)
    if errors:
        raise AssertionError(f"ffprobe complained about {path}: {errors}")
    stream: dict[str, Any] = info["streams"][0]
    return stream


def parameter_sets(path: str) -> tuple[bytes, bytes]:
    """The first SPS and PPS of an Annex B file."""
    with open(path, "rb") as f:
        nals = split_annexb(f.read())
    return (
        next(n for n in nals if nal_unit_type(n) == 7),
        next(n for n in nals if nal_unit_type(n) == 8),
    )


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

garbage = st.binary(max_size=300)


@st.composite
def nal_units(draw: st.DrawFn) -> bytes:
    """A NAL unit as it appears in a stream: escaped, ending in a non-zero byte."""
    header = draw(st.integers(1, 0x7F).filter(lambda b: b & 0x1F))
    body = add_emulation_prevention(
        draw(st.binary(max_size=40)) + bytes((draw(st.integers(1, 255)),))
    )
    return bytes((header,)) + body


def sps_arguments() -> st.SearchStrategy[dict[str, Any]]:
    """Arguments for build_sps covering every chroma format, cropping and VUI."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        high = draw(st.booleans())
        profile = draw(
            st.sampled_from([100, 110, 122, 244, 44]) if high else st.sampled_from([66, 77, 88])
        )
        chroma = draw(st.integers(0, 3)) if high else 1
        frame_mbs_only = draw(st.booleans())
        unit_x = 1 if chroma in (0, 3) else 2
        unit_y = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
        args: dict[str, Any] = {
            "profile_idc": profile,
            "level_idc": draw(st.integers(0, 255)),
            "width": unit_x * draw(st.integers(1, 2048 // unit_x)),
            "height": unit_y * draw(st.integers(1, 1200 // unit_y)),
            "constraint_flags": draw(st.integers(0, 255)),
            "sps_id": draw(st.integers(0, 31)),
            "frame_mbs_only": frame_mbs_only,
        }
        if high:
            args["chroma_format_idc"] = chroma
            args["bit_depth_luma"] = draw(st.integers(8, 14))
            args["bit_depth_chroma"] = draw(st.integers(8, 14))
            if draw(st.booleans()):
                coefficient = st.integers(1, 255)
                args["scaling_lists"] = [
                    draw(st.none() | st.lists(coefficient, min_size=size, max_size=size))
                    for size in [16] * 6 + [64] * (6 if chroma == 3 else 2)
                ]
        if draw(st.booleans()):
            args["sar"] = (draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)))
        if draw(st.booleans()):
            args["num_units_in_tick"] = draw(st.integers(0, 0xFFFFFFFF))
            args["time_scale"] = draw(st.integers(0, 0xFFFFFFFF))
            args["fixed_frame_rate"] = draw(st.booleans())
        return args

    return build()


ascs = st.builds(
    AudioSpecificConfig.create,
    st.integers(1, 95).filter(lambda aot: aot != 31),
    st.sampled_from(AAC_SAMPLE_RATES) | st.integers(1, (1 << 24) - 1),
    st.integers(0, 15),
)
adts_ascs = st.builds(
    AudioSpecificConfig.create,
    st.integers(1, 4),
    st.sampled_from(AAC_SAMPLE_RATES),
    st.integers(0, 7),
)


# ---------------------------------------------------------------------------
# FLV files
# ---------------------------------------------------------------------------


class FlvFileTests(SynchronousTestCase):
    """L{iter_flv_tags} and friends."""

    def test_real_clip(self) -> None:
        """
        ffmpeg's FLV has one script tag, then sequence headers, 50 video
        frames, 88 AAC frames and the AVC end-of-sequence tag.
        """
        clip = load_clip()
        with open(clip.path, "rb") as f:
            header = parse_flv_header(f.read())
        self.assertEqual((header.version, header.has_audio, header.has_video), (1, True, True))
        self.assertEqual(clip.script_tags, 1)
        self.assertEqual(clip.video_tags, 1 + 50 + 1)
        self.assertEqual(len(clip.video), 50)
        self.assertEqual(clip.audio_tags, 1 + 88)
        timestamps = [frame.timestamp for frame in clip.video]
        self.assertEqual(timestamps, sorted(timestamps))
        self.assertEqual(timestamps[-1], 49 * 40)

    def test_round_trip(self) -> None:
        """Built tags read back, extended timestamps included."""
        data = build_flv_header() + b"".join(
            [
                build_flv_tag(TAG_SCRIPT, 0, b"meta"),
                build_flv_tag(TAG_VIDEO, 0x12345678, b"v" * 300),
            ]
        )
        tags = list(iter_flv_tags(data))
        self.assertEqual(
            [(t.tag_type, t.timestamp, bytes(t.data)) for t in tags],
            [(TAG_SCRIPT, 0, b"meta"), (TAG_VIDEO, 0x12345678, b"v" * 300)],
        )

    def test_truncated(self) -> None:
        """A truncated last tag raises, unless allowed, when it is dropped."""
        data = (
            build_flv_header()
            + build_flv_tag(TAG_AUDIO, 5, b"abc")
            + build_flv_tag(TAG_AUDIO, 6, b"xyz")
        )
        for cut in (5, 8, 12, 17):
            self.assertRaises(MediaError, list, iter_flv_tags(data[:-cut]))
            self.assertEqual(
                [t.timestamp for t in iter_flv_tags(data[:-cut], allow_truncated=True)], [5]
            )

    def test_not_flv(self) -> None:
        """Other files and short headers raise MediaError."""
        self.assertRaises(MediaError, parse_flv_header, b"FLX\x01\x05\x00\x00\x00\x09")
        self.assertRaises(MediaError, parse_flv_header, b"FLV")
        self.assertRaises(MediaError, parse_flv_header, b"FLV\x01\x05\x00\x00\x00\x05")

    def test_build_limits(self) -> None:
        """Out-of-range tag fields raise MediaError."""
        self.assertRaises(MediaError, build_flv_tag, 40, 0, b"")
        self.assertRaises(MediaError, build_flv_tag, TAG_AUDIO, -1, b"")
        self.assertRaises(MediaError, build_flv_tag, TAG_AUDIO, 1 << 32, b"")

    @given(garbage)
    def test_garbage(self, data: bytes) -> None:
        """Garbage raises only MediaError."""
        for candidate in (data, b"FLV\x01\x05\x00\x00\x00\x09" + data):
            try:
                list(iter_flv_tags(candidate))
            except MediaError:
                pass


# ---------------------------------------------------------------------------
# FLV tag bodies
# ---------------------------------------------------------------------------


class VideoTagTests(SynchronousTestCase):
    """L{parse_video_tag} and L{build_video_tag}."""

    def test_real_frames(self) -> None:
        """
        The clip's frames: two IDR frames 25 apart flagged as key frames, and
        B-frames, so composition times beyond 0.
        """
        clip = load_clip()
        keys = [i for i, frame in enumerate(clip.video) if frame.keyframe]
        self.assertEqual(keys, [0, 25])
        self.assertEqual(
            [
                i
                for i, frame in enumerate(clip.video)
                if is_keyframe_nals(length_prefixed_nals(frame.data))
            ],
            keys,
        )
        ctos = {frame.composition_time for frame in clip.video}
        self.assertIn(80, ctos)  # two B-frames' delay
        self.assertGreater(len(ctos), 1)

    def test_sequence_header_and_end(self) -> None:
        """The sequence header and end-of-sequence tags of the clip."""
        with open(load_clip().path, "rb") as f:
            video = [
                parse_video_tag(t.data) for t in iter_flv_tags(f.read()) if t.tag_type == TAG_VIDEO
            ]
        first, last = video[0], video[-1]
        self.assertEqual(
            (first.frame_type, first.codec_id, first.avc_packet_type), (FRAME_KEY, CODEC_AVC, 0)
        )
        self.assertTrue(first.is_sequence_header and first.is_avc and first.is_keyframe)
        self.assertEqual(bytes(first.data), load_clip().avcc)
        self.assertEqual((last.avc_packet_type, bytes(last.data)), (AVC_END_OF_SEQUENCE, b""))

    def test_round_trip(self) -> None:
        """Built tags parse back, signed composition times included."""
        for cts in (0, 1, -1, 0x7FFFFF, -0x800000, -40):
            tag = build_video_tag(FRAME_INTER, b"\x00\x00\x00\x01\x41", composition_time=cts)
            parsed = parse_video_tag(tag)
            self.assertEqual(
                (
                    parsed.frame_type,
                    parsed.codec_id,
                    parsed.avc_packet_type,
                    parsed.composition_time,
                ),
                (FRAME_INTER, CODEC_AVC, AVC_NALU, cts),
            )
            self.assertEqual(bytes(parsed.data), b"\x00\x00\x00\x01\x41")
        self.assertEqual(
            build_video_tag(FRAME_KEY, b"R", avc_packet_type=AVC_SEQUENCE_HEADER),
            b"\x17\x00\x00\x00\x00R",
        )
        self.assertRaises(MediaError, build_video_tag, FRAME_KEY, b"", composition_time=0x800000)
        self.assertRaises(MediaError, build_video_tag, 0, b"")
        self.assertRaises(MediaError, build_video_tag, FRAME_KEY, b"", avc_packet_type=3)

    def test_other_codecs(self) -> None:
        """
        Other codecs, info frames and Enhanced RTMP ex-headers are reported,
        not parsed.
        """
        vp6 = parse_video_tag(b"\x24abc")
        self.assertEqual(
            (vp6.frame_type, vp6.codec_id, vp6.avc_packet_type, bytes(vp6.data)),
            (2, 4, None, b"abc"),
        )
        info = parse_video_tag(build_video_tag(FRAME_INFO, b"\x01"))
        self.assertEqual(
            (info.frame_type, info.avc_packet_type, bytes(info.data)), (FRAME_INFO, None, b"\x01")
        )
        ex = parse_video_tag(b"\x97hvc1\x00")  # ex-header, key frame, packet type 7
        self.assertTrue(ex.is_ex_header and ex.is_keyframe)
        self.assertEqual((ex.avc_packet_type, bytes(ex.data)), (None, b"hvc1\x00"))

    def test_malformed(self) -> None:
        """Empty, truncated or unknown AVC packets raise MediaError."""
        for payload in (b"", b"\x17", b"\x17\x00\x00\x00", b"\x27\x03\x00\x00\x00"):
            self.assertRaises(MediaError, parse_video_tag, payload)
        self.assertRaises(MediaError, parse_video_tag, 42)

    @given(garbage)
    def test_garbage(self, data: bytes) -> None:
        """Garbage raises only MediaError."""
        try:
            parse_video_tag(data)
        except MediaError:
            pass

    @given(
        st.integers(1, 7),
        st.binary(max_size=20),
        st.integers(-0x800000, 0x7FFFFF),
        st.integers(0, 2),
    )
    def test_round_trip_property(
        self, frame_type: int, data: bytes, cts: int, packet_type: int
    ) -> None:
        """Any valid AVC tag round-trips."""
        tag = parse_video_tag(
            build_video_tag(frame_type, data, avc_packet_type=packet_type, composition_time=cts)
        )
        if frame_type == FRAME_INFO:
            self.assertIsNone(tag.avc_packet_type)
        else:
            self.assertEqual(
                (tag.avc_packet_type, tag.composition_time, bytes(tag.data)),
                (packet_type, cts, data),
            )


class SampleTests(SynchronousTestCase):
    """L{video_sample} and L{audio_sample}: tag bodies into media samples."""

    def test_video(self) -> None:
        nalu = b"\x00\x00\x00\x02\x65\x88"
        sample = video_sample(build_video_tag(FRAME_KEY, nalu, composition_time=-40))
        assert sample is not None
        self.assertEqual((bytes(sample[0]), sample[1], sample[2]), (nalu, -40, True))
        sample = video_sample(build_video_tag(FRAME_INTER, nalu, composition_time=80))
        assert sample is not None
        self.assertEqual(sample[1:], (80, False))
        for nothing in (
            build_video_tag(FRAME_KEY, b"\x01", avc_packet_type=AVC_SEQUENCE_HEADER),
            build_video_tag(FRAME_KEY, b"", avc_packet_type=AVC_END_OF_SEQUENCE),
            build_video_tag(FRAME_KEY, b""),
            bytes((FRAME_INFO << 4 | CODEC_AVC, 1)),
        ):
            self.assertIsNone(video_sample(nothing))
        self.assertRaises(UnsupportedCodec, video_sample, b"\x12\x01\x00\x00\x00\x00")
        self.assertRaises(UnsupportedCodec, video_sample, b"\x97\x01\x00\x00\x00\x00")
        self.assertRaises(MediaError, video_sample, b"\x17\x03\x00\x00\x00\x00")
        self.assertRaises(MediaError, video_sample, b"\x17\x01\x00")
        self.assertRaises(MediaError, video_sample, b"")

    def test_audio(self) -> None:
        sample = audio_sample(build_audio_tag(b"\x21\x10"))
        assert sample is not None
        self.assertEqual(bytes(sample), b"\x21\x10")
        self.assertIsNone(audio_sample(build_audio_tag(b"\x11\x90",
                                                       aac_packet_type=AAC_SEQUENCE_HEADER)))
        self.assertIsNone(audio_sample(b"\xaf\x01"))
        self.assertRaises(UnsupportedCodec, audio_sample, b"\x2f\x01\x00")
        self.assertRaises(MediaError, audio_sample, b"\xaf\x02\x00")
        self.assertRaises(MediaError, audio_sample, b"\xaf")
        self.assertRaises(MediaError, audio_sample, b"")

    @given(st.binary(max_size=12))
    def test_video_agrees(self, body: bytes) -> None:
        """Whatever the body, the sample is what the full parse says it is."""
        try:
            sample = video_sample(body)
        except UnsupportedCodec:
            tag = parse_video_tag(body)
            self.assertTrue(tag.codec_id != CODEC_AVC or tag.is_ex_header)
            return
        except MediaError:
            self.assertRaises(MediaError, parse_video_tag, body)
            return
        tag = parse_video_tag(body)
        if tag.avc_packet_type == AVC_NALU and len(tag.data):
            self.assertEqual(sample, (tag.data, tag.composition_time, tag.is_keyframe))
        else:
            self.assertIsNone(sample)

    @given(st.binary(max_size=6))
    def test_audio_agrees(self, body: bytes) -> None:
        try:
            sample = audio_sample(body)
        except UnsupportedCodec:
            self.assertFalse(parse_audio_tag(body).is_aac)
            return
        except MediaError:
            self.assertRaises(MediaError, parse_audio_tag, body)
            return
        tag = parse_audio_tag(body)
        if tag.aac_packet_type == AAC_RAW and len(tag.data):
            self.assertEqual(sample, tag.data)
        else:
            self.assertIsNone(sample)


class AudioTagTests(SynchronousTestCase):
    """L{parse_audio_tag} and L{build_audio_tag}."""

    def test_real_header(self) -> None:
        """ffmpeg sends ``AF 00 <ASC>`` then ``AF 01 <raw AAC>``."""
        clip = load_clip()
        header = build_audio_tag(clip.asc, aac_packet_type=AAC_SEQUENCE_HEADER)
        self.assertEqual(header[:2], b"\xaf\x00")
        parsed = parse_audio_tag(header)
        self.assertEqual(
            (
                parsed.sound_format,
                parsed.sound_rate,
                parsed.sound_size,
                parsed.sound_type,
                parsed.aac_packet_type,
            ),
            (SOUND_AAC, 3, 1, 1, AAC_SEQUENCE_HEADER),
        )
        self.assertTrue(parsed.is_aac and parsed.is_sequence_header)
        raw = parse_audio_tag(build_audio_tag(clip.audio[0][1]))
        self.assertEqual((raw.aac_packet_type, bytes(raw.data)), (AAC_RAW, clip.audio[0][1]))

    def test_other_formats(self) -> None:
        """Non-AAC formats are reported with their header bits."""
        mp3 = parse_audio_tag(b"\x2e\xff\xfb")  # MP3, 44 kHz, 16-bit, mono
        self.assertEqual(
            (mp3.sound_format, mp3.sound_rate, mp3.sound_size, mp3.sound_type), (2, 3, 1, 0)
        )
        self.assertIsNone(mp3.aac_packet_type)
        self.assertEqual(bytes(mp3.data), b"\xff\xfb")
        self.assertEqual(build_audio_tag(b"x", sound_format=2, sound_type=0), b"\x2ex")

    def test_malformed(self) -> None:
        """Empty, truncated or unknown AAC packets raise MediaError."""
        for payload in (b"", b"\xaf", b"\xaf\x02"):
            self.assertRaises(MediaError, parse_audio_tag, payload)
        self.assertRaises(MediaError, build_audio_tag, b"", sound_rate=4)
        self.assertRaises(MediaError, build_audio_tag, b"", aac_packet_type=2)

    @given(garbage)
    def test_garbage(self, data: bytes) -> None:
        """Garbage raises only MediaError."""
        try:
            parse_audio_tag(data)
        except MediaError:
            pass


# ---------------------------------------------------------------------------
# H.264
# ---------------------------------------------------------------------------

#: Encoder settings covering the SPS variants: name -> (size, ffmpeg options,
#: expected (profile_idc, chroma_format_idc, bit depth, frame_mbs_only)).
_SPS_VARIANTS = {
    # x264's custom quant matrices (in the PPS) need the High profile.
    "high-cropped": (
        "322x242",
        ["-pix_fmt", "yuv420p", "-x264-params", "cqm=jvt"],
        (100, 1, 8, True),
    ),
    "high444": ("320x240", ["-pix_fmt", "yuv444p"], (244, 3, 8, True)),
    "high422-10": ("318x178", ["-pix_fmt", "yuv422p10le"], (122, 2, 10, True)),
    "interlaced": (
        "320x240",
        ["-pix_fmt", "yuv420p", "-flags", "+ildct", "-x264-params", "tff=1"],
        (77, 1, 8, False),
    ),
    "monochrome": ("176x144", ["-pix_fmt", "gray"], (100, 0, 8, True)),
}


def variant_path(name: str) -> str:
    """An Annex B file of 0.2 s from libx264 with the settings of *name*."""
    size, options, _ = _SPS_VARIANTS[name]
    return ffmpeg_output(
        f"{name}.h264",
        "-f", "lavfi", "-i", f"testsrc=size={size}:rate=30", "-t", "0.2",
        "-c:v", "libx264", "-preset", "ultrafast", *options,
    )  # fmt: skip


class SPSTests(SynchronousTestCase):
    """L{parse_sps} and L{build_sps}."""

    def test_real_clip(self) -> None:
        """The clip's SPS agrees with ffprobe, and its VUI gives 25 fps."""
        clip = load_clip()
        sps = AVCDecoderConfigurationRecord.parse(clip.avcc).parsed_sps()
        info = stream_info(clip_path(), "-select_streams", "v")
        self.assertEqual((sps.width, sps.height), (info["width"], info["height"]))
        self.assertEqual(sps.level_idc, info["level"])
        self.assertEqual(
            sps.profile_idc, 77
        )  # Main: ultrafast has no CABAC, -bf 2 rules out Baseline
        self.assertEqual(info["profile"], "Main")
        self.assertEqual(sps.frame_rate, 25.0)
        self.assertEqual(sps.sar, (1, 1))

    def test_encoder_variants(self) -> None:
        """
        SPSs of High, 4:4:4, 4:2:2 10-bit, interlaced and monochrome streams
        with odd sizes (frame cropping) agree with ffprobe.
        """
        for name, (size, _, expected) in _SPS_VARIANTS.items():
            path = variant_path(name)
            sps = parse_sps(parameter_sets(path)[0])
            info = stream_info(path)
            self.assertEqual(f"{sps.width}x{sps.height}", size, name)
            self.assertEqual((info["width"], info["height"]), (sps.width, sps.height), name)
            self.assertEqual(sps.level_idc, info["level"], name)
            self.assertEqual(
                (sps.profile_idc, sps.chroma_format_idc, sps.bit_depth_luma, sps.frame_mbs_only),
                expected,
            )
            self.assertEqual(sps.frame_rate, 30.0, name)

    def test_scaling_lists(self) -> None:
        """High-profile SPSs with scaling lists (8, or 12 for 4:4:4) parse."""
        flat = [16] * 16
        ramp = list(range(1, 65))
        sps = parse_sps(
            build_sps(
                100, 40, 1920, 1080, scaling_lists=[flat, None, flat, None, None, flat, ramp, None]
            )
        )
        self.assertEqual((sps.width, sps.height, sps.crop), (1920, 1080, (0, 0, 0, 4)))
        sps = parse_sps(
            build_sps(
                244,
                51,
                3840,
                2160,
                chroma_format_idc=3,
                scaling_lists=[flat] * 6 + [ramp] * 6,
                num_units_in_tick=1001,
                time_scale=60000,
            )
        )
        self.assertEqual((sps.width, sps.height, sps.chroma_format_idc), (3840, 2160, 3))
        self.assertAlmostEqual(sps.frame_rate or 0, 29.97, places=2)

    def test_emulation_prevention(self) -> None:
        """``00 00 0x`` gets an ``03``, which is removed again."""
        self.assertEqual(
            add_emulation_prevention(b"\x00\x00\x00\x00\x01\x00\x00"),
            b"\x00\x00\x03\x00\x00\x03\x01\x00\x00\x03",
        )
        self.assertEqual(
            add_emulation_prevention(b"\x00\x00\x04\x00\x00\x03"), b"\x00\x00\x04\x00\x00\x03\x03"
        )
        self.assertEqual(
            remove_emulation_prevention(b"\x00\x00\x03\x00\x00\x03\x01"), b"\x00\x00\x00\x00\x01"
        )
        self.assertEqual(remove_emulation_prevention(b"\x00\x00\x03\x03"), b"\x00\x00\x03")

    @given(st.binary(max_size=64))
    def test_emulation_round_trip(self, rbsp: bytes) -> None:
        """Escaping leaves no start code prefix and is undone exactly."""
        escaped = add_emulation_prevention(rbsp)
        for bad in (b"\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x02"):
            self.assertNotIn(bad, escaped)
        self.assertEqual(remove_emulation_prevention(escaped), rbsp)

    @given(sps_arguments())
    def test_round_trip(self, args: dict[str, Any]) -> None:
        """build_sps output parses back to the same fields."""
        sps = parse_sps(build_sps(**args))
        self.assertEqual(
            (
                sps.profile_idc,
                sps.level_idc,
                sps.width,
                sps.height,
                sps.constraint_flags,
                sps.sps_id,
                sps.frame_mbs_only,
            ),
            (
                args["profile_idc"],
                args["level_idc"],
                args["width"],
                args["height"],
                args["constraint_flags"],
                args["sps_id"],
                args["frame_mbs_only"],
            ),
        )
        self.assertEqual(sps.chroma_format_idc, args.get("chroma_format_idc", 1))
        self.assertEqual(
            (sps.bit_depth_luma, sps.bit_depth_chroma),
            (args.get("bit_depth_luma", 8), args.get("bit_depth_chroma", 8)),
        )
        self.assertEqual(sps.sar, args.get("sar"))
        self.assertEqual(
            (sps.num_units_in_tick, sps.time_scale, sps.fixed_frame_rate),
            (args.get("num_units_in_tick"), args.get("time_scale"), args.get("fixed_frame_rate")),
        )

    def test_malformed(self) -> None:
        """Wrong NAL types, truncation and impossible values raise MediaError."""
        good = build_sps(66, 30, 640, 480)
        self.assertRaises(MediaError, parse_sps, b"\x68" + good[1:])
        self.assertRaises(MediaError, parse_sps, good[:5])
        self.assertRaises(MediaError, parse_sps, b"\x67\x42\x00\x1e")
        self.assertRaises(MediaError, parse_sps, b"\x67\x42\x00\x1e\x00\x00\x03\x00\x00\x03\x00")
        # One macroblock, cropped by 0 + 8 units of 2 pixels: nothing is left.
        bits = (
            "1"
            "1"
            "1"
            "1"
            "1"
            "0"  # sps id, frame num, POC type 0 and lsb, 0 refs, no gaps
            "1"
            "1"
            "1"
            "1"  # 1x1 macroblocks, frame_mbs_only, direct_8x8_inference
            "1"
            "1"
            "0001001"
            "1"
            "1"  # frame cropping 0, 8, 0, 0
            "0"
            "1"  # no VUI, rbsp_stop_one_bit
        )
        bits += "0" * (-len(bits) % 8)
        self.assertRaises(
            MediaError,
            parse_sps,
            b"\x67\x42\x00\x1e" + int(bits, 2).to_bytes(len(bits) // 8, "big"),
        )
        self.assertRaises(MediaError, build_sps, 66, 30, 15, 16)  # odd width in 4:2:0
        self.assertRaises(MediaError, build_sps, 66, 30, 16, 16, chroma_format_idc=3)

    def test_truncated_vui_tolerated(self) -> None:
        """A VUI cut short keeps the size and drops the timing, as FFmpeg does."""
        full = build_sps(77, 31, 1280, 720, num_units_in_tick=1, time_scale=60)
        sps = parse_sps(full[:-6])
        self.assertEqual((sps.width, sps.height, sps.time_scale), (1280, 720, None))

    @given(garbage)
    def test_garbage(self, data: bytes) -> None:
        """Garbage raises only MediaError, with or without an SPS header."""
        for candidate in (data, b"\x67" + data, b"\x67\x64" + data):
            try:
                parse_sps(candidate)
            except MediaError:
                pass


class AVCDecoderConfigurationRecordTests(SynchronousTestCase):
    """L{AVCDecoderConfigurationRecord}, L{build_avcc_from_sps_pps}, codec strings."""

    def test_real_record(self) -> None:
        """ffmpeg's record parses, rebuilds byte for byte and names its codec."""
        avcc = load_clip().avcc
        record = AVCDecoderConfigurationRecord.parse(avcc)
        self.assertEqual((record.profile, record.level, record.nal_length_size), (77, 13, 4))
        self.assertEqual((len(record.sps), len(record.pps), record.chroma_format), (1, 1, None))
        self.assertEqual(record.build(), avcc)
        self.assertEqual(avc_codec_string(record), "avc1." + record.sps[0][1:4].hex())
        self.assertEqual(avc_codec_string(avcc), "avc1.4d400d")
        self.assertEqual(build_avcc_from_sps_pps(record.sps[0], record.pps[0]), avcc)
        self.assertEqual(build_avcc_from_sps_pps(list(record.sps), list(record.pps)), avcc)

    def test_high_profile_fields(self) -> None:
        """High-profile records get the trailing chroma and bit-depth fields."""
        sps = build_sps(
            122, 40, 1920, 1080, chroma_format_idc=2, bit_depth_luma=10, bit_depth_chroma=10
        )
        record = AVCDecoderConfigurationRecord.parse(
            build_avcc_from_sps_pps(sps, b"\x68\xee\x3c\x80")
        )
        self.assertEqual(
            (record.chroma_format, record.bit_depth_luma_minus8, record.bit_depth_chroma_minus8),
            (2, 2, 2),
        )
        self.assertEqual(record.codec_string, "avc1.7a0028")
        self.assertEqual(AVCDecoderConfigurationRecord.parse(record.build()), record)

    def test_ffmpeg_high_record(self) -> None:
        """
        A High 4:2:0 record that ffmpeg writes into FLV round-trips, and
        L{build_avcc_from_sps_pps} builds the same bytes, trailing fields
        included.
        """
        source = variant_path("high-cropped")
        flv = ffmpeg_output("high.flv", "-i", source, "-c", "copy", "-f", "flv")
        with open(flv, "rb") as f:
            tag = next(
                parse_video_tag(t.data) for t in iter_flv_tags(f.read()) if t.tag_type == TAG_VIDEO
            )
        record = AVCDecoderConfigurationRecord.parse(tag.data)
        self.assertEqual(record.build(), bytes(tag.data))
        self.assertEqual(record.codec_string, "avc1.64000d")
        sps, pps = parameter_sets(source)
        self.assertEqual((record.sps, record.pps, record.chroma_format), ((sps,), (pps,), 1))
        self.assertEqual(build_avcc_from_sps_pps(sps, pps), bytes(tag.data))

    @given(
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(0, 255),
        st.sampled_from([0, 1, 3]),
        st.lists(st.binary(max_size=30), max_size=3),
        st.lists(st.binary(max_size=30), max_size=3),
        st.none() | st.integers(0, 3),
        st.integers(0, 7),
        st.integers(0, 7),
        st.lists(st.binary(max_size=9), max_size=2),
    )
    def test_round_trip(
        self,
        profile: int,
        compat: int,
        level: int,
        lsm1: int,
        sps: list[bytes],
        pps: list[bytes],
        chroma: Optional[int],
        luma: int,
        chroma_depth: int,
        ext: list[bytes],
    ) -> None:
        """Records round-trip; the trailing fields only for High profiles."""
        if chroma is None:
            luma = chroma_depth = 0
            ext = []
        record = AVCDecoderConfigurationRecord(
            profile, compat, level, lsm1, sps, pps, chroma, luma, chroma_depth, ext
        )
        parsed = AVCDecoderConfigurationRecord.parse(record.build())
        if chroma is None or profile in (100, 110, 122, 144):
            self.assertEqual(parsed, record)
        else:
            self.assertEqual(
                (parsed.sps, parsed.pps, parsed.chroma_format), (record.sps, record.pps, None)
            )

    def test_malformed(self) -> None:
        """Bad versions, NAL length size 3 and truncation raise MediaError."""
        avcc = load_clip().avcc
        self.assertRaises(MediaError, AVCDecoderConfigurationRecord.parse, b"\x02" + avcc[1:])
        self.assertRaises(
            MediaError, AVCDecoderConfigurationRecord.parse, avcc[:4] + b"\xfe" + avcc[5:]
        )
        for cut in range(1, len(avcc)):
            self.assertRaises(MediaError, AVCDecoderConfigurationRecord.parse, avcc[:cut])
        self.assertRaises(MediaError, AVCDecoderConfigurationRecord(66, 0, 30, 2).build)
        self.assertRaises(MediaError, AVCDecoderConfigurationRecord(66, 0, 300).build)
        self.assertRaises(MediaError, AVCDecoderConfigurationRecord(66, 0, 30).parsed_sps)
        self.assertRaises(MediaError, build_avcc_from_sps_pps, [], [b"\x68"])

    @given(garbage)
    def test_garbage(self, data: bytes) -> None:
        """Garbage raises only MediaError."""
        for candidate in (data, b"\x01" + data):
            try:
                AVCDecoderConfigurationRecord.parse(candidate).parsed_sps()
            except MediaError:
                pass


class NalUnitTests(SynchronousTestCase):
    """Annex B and length-prefixed NAL unit handling."""

    def test_real_annexb(self) -> None:
        """
        ffmpeg's Annex B of the clip holds the same slices and SEI, in order,
        as the FLV's length-prefixed frames.
        """
        clip = load_clip()
        path = ffmpeg_output(
            "clip.h264",
            "-i",
            clip.path,
            "-an",
            "-c:v",
            "copy",
            "-bsf:v",
            "h264_mp4toannexb",
            "-f",
            "h264",
        )
        with open(path, "rb") as f:
            annexb = f.read()
        from_annexb = [n for n in split_annexb(annexb) if nal_unit_type(n) not in (7, 8)]
        from_flv = [bytes(n) for frame in clip.video for n in length_prefixed_nals(frame.data)]
        self.assertGreaterEqual(len(from_flv), len(clip.video))
        self.assertEqual(from_annexb, from_flv)
        unit = annexb_access_unit(annexb, keep_parameter_sets=True)
        self.assertTrue(unit.data)
        self.assertEqual(
            b"".join(bytes(n) for n in length_prefixed_nals(unit.data)),
            b"".join(n for n in split_annexb(annexb) if nal_unit_type(n) not in (9, 12)),
        )

    def test_start_codes(self) -> None:
        """3- and 4-byte start codes, leading and trailing zeros."""
        data = b"\x00\x00\x00\x00\x01\x09\xf0\x00\x00\x01\x67\x42\x00\x00\x00\x01\x65\x88\x00\x00"
        self.assertEqual(split_annexb(data), [b"\x09\xf0", b"\x67\x42", b"\x65\x88"])
        self.assertEqual(
            annexb_access_unit(data, keep_parameter_sets=True),
            AccessUnit(b"\x00\x00\x00\x02\x67\x42\x00\x00\x00\x02\x65\x88", True,
                       (b"\x67\x42",), ()),
        )
        self.assertEqual(
            annexb_access_unit(data, keep_parameter_sets=False),
            AccessUnit(b"\x00\x00\x00\x02\x65\x88", True, (b"\x67\x42",), ()),
        )
        self.assertEqual(split_annexb(b""), [])
        self.assertEqual(split_annexb(b"\x00\x00"), [])
        self.assertRaises(MediaError, split_annexb, b"\x65\x88")
        self.assertRaises(MediaError, split_annexb, b"\x01\x00\x00\x01\x65")

    def test_length_prefixed(self) -> None:
        """Iteration with 1, 2 and 4-byte lengths; truncation raises."""
        self.assertEqual(
            [bytes(n) for n in length_prefixed_nals(b"\x02ab\x00\x01c", 1)], [b"ab", b"c"]
        )
        self.assertEqual([bytes(n) for n in length_prefixed_nals(b"\x00\x01a\x00\x00", 2)], [b"a"])
        self.assertEqual(
            length_prefixed_to_annexb(b"\x00\x00\x00\x01a\x00\x00\x00\x02bc"),
            b"\x00\x00\x00\x01a\x00\x00\x00\x01bc",
        )
        for bad in (b"\x00\x00\x00", b"\x00\x00\x00\x02a"):
            self.assertRaises(MediaError, list, length_prefixed_nals(bad))
        self.assertRaises(MediaError, list, length_prefixed_nals(b"", 5))

    def test_keyframe_and_types(self) -> None:
        """IDR detection and NAL unit types."""
        self.assertTrue(is_keyframe_nals([b"\x06\x05", b"\x65\x88"]))
        self.assertFalse(is_keyframe_nals([b"", b"\x41\x9a", b"\x06\x05"]))
        self.assertEqual(nal_unit_type(b"\x67"), 7)
        self.assertRaises(MediaError, nal_unit_type, b"")

    @given(
        st.lists(
            st.tuples(nal_units(), st.sampled_from([b"\x00\x00\x01", b"\x00\x00\x00\x01"])),
            max_size=8,
        )
    )
    def test_round_trip(self, units: list[tuple[bytes, bytes]]) -> None:
        """NAL units joined with either start code split back exactly."""
        nals = [nal for nal, _ in units]
        annexb = b"".join(code + nal for nal, code in units)
        self.assertEqual(split_annexb(annexb), nals)
        prefixed = b"".join(len(n).to_bytes(4, "big") + n for n in nals)
        self.assertEqual([bytes(n) for n in length_prefixed_nals(prefixed)], nals)
        self.assertEqual(split_annexb(length_prefixed_to_annexb(prefixed)), nals)

    @given(
        st.lists(
            st.tuples(nal_units(), st.sampled_from([b"\x00\x00\x01", b"\x00\x00\x00\x01"])),
            max_size=10,
        ),
        st.booleans(),
        st.binary(max_size=3).map(lambda b: b"\x00" * len(b)),
    )
    def test_access_unit(self, units: list[tuple[bytes, bytes]], keep: bool, tail: bytes) -> None:
        """
        The Annex B conversion keeps exactly the NAL units it should, in
        order and length-prefixed: never an AUD or filler data, SPS and PPS
        only when asked, which it reports apart either way; an IDR slice
        makes a keyframe.
        """
        annexb = b"".join(code + nal for nal, code in units) + tail
        nals = [nal for nal, _ in units]
        types = [n[0] & 0x1F for n in nals]
        kept = [n for n, t in zip(nals, types) if t not in (9, 12) and (keep or t not in (7, 8))]
        unit = annexb_access_unit(annexb, keep_parameter_sets=keep)
        self.assertEqual(unit.data, b"".join(len(n).to_bytes(4, "big") + n for n in kept))
        self.assertEqual(unit.sps, tuple(n for n, t in zip(nals, types) if t == 7))
        self.assertEqual(unit.pps, tuple(n for n, t in zip(nals, types) if t == 8))
        self.assertEqual(unit.keyframe, 5 in types)
        self.assertEqual(unit.keyframe, is_keyframe_nals(length_prefixed_nals(unit.data)))

    @given(garbage, st.sampled_from([1, 2, 4]))
    def test_garbage(self, data: bytes, length_size: int) -> None:
        """Garbage raises only MediaError."""
        for call in (
            lambda: split_annexb(data),
            lambda: annexb_access_unit(data, keep_parameter_sets=False),
            lambda: annexb_access_unit(data, keep_parameter_sets=True),
            lambda: list(length_prefixed_nals(data, length_size)),
            lambda: is_keyframe_nals(length_prefixed_nals(data, length_size)),
        ):
            try:
                call()
            except MediaError:
                pass


# ---------------------------------------------------------------------------
# AAC
# ---------------------------------------------------------------------------


class AudioSpecificConfigTests(SynchronousTestCase):
    """L{AudioSpecificConfig} and L{aac_codec_string}."""

    def test_real_config(self) -> None:
        """
        ffmpeg's ASC (LC, 44.1 kHz, mono, with an SBR sync extension in its
        tail) agrees with ffprobe and rebuilds byte for byte.
        """
        clip = load_clip()
        asc = AudioSpecificConfig.parse(clip.asc)
        info = stream_info(clip_path(), "-select_streams", "a")
        self.assertEqual(
            (asc.object_type, asc.sample_rate, asc.channel_count),
            (2, int(info["sample_rate"]), info["channels"]),
        )
        self.assertEqual(asc.sampling_frequency_index, 4)
        self.assertEqual(asc.build(), clip.asc)
        self.assertEqual(aac_codec_string(clip.asc), "mp4a.40.2")

    def test_known_bytes(self) -> None:
        """LC 48 kHz mono is ``11 88``, as ffmpeg sends over RTMP."""
        asc = AudioSpecificConfig.create(2, 48000, 1)
        self.assertEqual(asc.build(), b"\x11\x88")
        self.assertEqual(AudioSpecificConfig.parse(b"\x11\x88"), asc)
        self.assertEqual(AudioSpecificConfig.create(2, 44100, 2).build(), b"\x12\x10")

    def test_escapes(self) -> None:
        """Object types from 31 up and explicit 24-bit frequencies."""
        usac = AudioSpecificConfig.create(42, 37800, 2)
        self.assertEqual(usac.sampling_frequency_index, 15)
        parsed = AudioSpecificConfig.parse(usac.build())
        self.assertEqual(
            (parsed.object_type, parsed.sample_rate, parsed.channel_configuration), (42, 37800, 2)
        )
        self.assertEqual(parsed.codec_string, "mp4a.40.42")
        # 11111 001010 (42) | 1111 | 0x0093A8 (37800) | 0010 | GASpecificConfig 000 | padding
        bits = "11111" "001010" "1111" "000000001001001110101000" "0010" "000"
        bits += "0" * (-len(bits) % 8)
        self.assertEqual(usac.build(), int(bits, 2).to_bytes(len(bits) // 8, "big"))

    @given(ascs)
    def test_round_trip(self, asc: AudioSpecificConfig) -> None:
        """Built configurations parse back, and rebuild identically."""
        data = asc.build()
        parsed = AudioSpecificConfig.parse(data)
        self.assertEqual(
            (
                parsed.object_type,
                parsed.sampling_frequency_index,
                parsed.sample_rate,
                parsed.channel_configuration,
            ),
            (
                asc.object_type,
                asc.sampling_frequency_index,
                asc.sample_rate,
                asc.channel_configuration,
            ),
        )
        self.assertEqual(parsed.build(), data)

    def test_malformed(self) -> None:
        """Reserved indexes, object type 0 and inconsistent fields raise."""
        self.assertRaises(MediaError, AudioSpecificConfig.parse, b"\x16\x88")  # sfi 13
        self.assertRaises(MediaError, AudioSpecificConfig.parse, b"\x01\x88")  # AOT 0
        self.assertRaises(MediaError, AudioSpecificConfig.parse, b"\x11")
        self.assertRaises(MediaError, AudioSpecificConfig, 2, 3, 44100, 1)
        self.assertRaises(MediaError, AudioSpecificConfig, 2, 15, 0, 1)
        self.assertRaises(MediaError, AudioSpecificConfig, 0, 3, 48000, 1)
        self.assertRaises(MediaError, AudioSpecificConfig, 2, 3, 48000, 16)
        self.assertRaises(MediaError, AudioSpecificConfig, 2, 3, 48000, 1, 8, 3)

    @given(garbage)
    def test_garbage(self, data: bytes) -> None:
        """Garbage raises only MediaError."""
        try:
            AudioSpecificConfig.parse(data).build()
        except MediaError:
            pass


class ADTSTests(SynchronousTestCase):
    """L{parse_adts}, L{split_adts}, L{asc_from_adts} and L{build_adts}."""

    def test_real_adts(self) -> None:
        """ffmpeg's ADTS of the clip holds the FLV's raw frames, in order."""
        clip = load_clip()
        path = ffmpeg_output("clip.aac", "-i", clip.path, "-vn", "-c:a", "copy", "-f", "adts")
        with open(path, "rb") as f:
            data = f.read()
        header = parse_adts(data)
        self.assertEqual(
            (
                header.mpeg_version,
                header.protection_absent,
                header.profile,
                header.sample_rate,
                header.channel_configuration,
                header.header_length,
                header.raw_data_blocks,
            ),
            (0, True, 1, 44100, 1, 7, 1),
        )
        frames = split_adts(data)
        self.assertEqual(len(frames), 88)
        self.assertEqual([raw for _, raw in frames], [raw for _, raw in clip.audio])
        asc = asc_from_adts(header)
        self.assertEqual({a for a, _ in frames}, {asc})
        self.assertEqual(
            asc.build(), clip.asc[:2]
        )  # the same leading fields, without the SBR extension
        self.assertEqual(b"".join(build_adts(a, raw) for a, raw in frames), data)

    def test_crc(self) -> None:
        """With protection, the header is 9 bytes and the CRC is skipped."""
        asc = AudioSpecificConfig.create(2, 48000, 2)
        # sync, MPEG-4, layer 0, protection present, LC, 48 kHz, 2 channels, 12 bytes, VBR
        v = 0xFFF << 44 | 1 << 38 | 3 << 34 | 2 << 30 | 12 << 13 | 0x7FF << 2
        protected = v.to_bytes(7, "big") + b"\x12\x34" + b"abc"
        header = parse_adts(protected)
        self.assertEqual(
            (header.protection_absent, header.header_length, header.frame_length), (False, 9, 12)
        )
        self.assertEqual(split_adts(protected), [(asc, b"abc")])

    @given(st.lists(st.tuples(adts_ascs, st.binary(max_size=200)), max_size=6))
    def test_split_concatenated(self, frames: list[tuple[AudioSpecificConfig, bytes]]) -> None:
        """Concatenated ADTS frames split back into their configs and payloads."""
        data = b"".join(build_adts(asc, raw) for asc, raw in frames)
        self.assertEqual(split_adts(data), frames)
        self.assertEqual(split_adts(memoryview(data)), frames)

    def test_malformed(self) -> None:
        """Lost sync, truncation, several raw data blocks and bad fields raise."""
        asc = AudioSpecificConfig.create(2, 44100, 2)
        frame = build_adts(asc, b"x" * 10)
        self.assertRaises(MediaError, split_adts, frame[:-1])
        self.assertRaises(MediaError, split_adts, frame + b"\x00")
        self.assertRaises(MediaError, split_adts, frame[:7])  # frame length 17, 7 bytes present
        self.assertRaises(MediaError, parse_adts, frame, 1)
        self.assertRaises(MediaError, parse_adts, frame, -1)
        self.assertRaises(MediaError, split_adts, frame[:6] + bytes((frame[6] | 1,)) + frame[7:])
        self.assertRaises(MediaError, build_adts, AudioSpecificConfig.create(5, 44100, 2), b"")
        self.assertRaises(MediaError, build_adts, AudioSpecificConfig.create(2, 37800, 2), b"")
        self.assertRaises(MediaError, build_adts, AudioSpecificConfig.create(2, 44100, 8), b"")
        self.assertRaises(MediaError, build_adts, asc, b"x" * 8200)

    @given(garbage)
    def test_garbage(self, data: bytes) -> None:
        """Garbage raises only MediaError."""
        for candidate in (data, b"\xff\xf1" + data):
            try:
                split_adts(candidate)
            except MediaError:
                pass
            try:
                asc_from_adts(parse_adts(candidate))
            except MediaError:
                pass
