"""
Tests for L{tokengate.media.packager}.

Real clips from ffmpeg (H.264 with B-frames, GOP 1 s, plus AAC, in FLV) are
fed through a L{LiveStream} as an RTMP publisher would, with a
L{task.Clock} advanced by their timestamps; every segment and part is then
checked with ffprobe and ffmpeg, and the playlists and the MPD with small
checkers.  The tests skip when ffmpeg or ffprobe is missing.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Any, Iterator, Optional

from attrs import define, field, frozen
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.test_media_codecs import decode_errors, ffmpeg_output, ffprobe, require, run
from tests.test_media_fmp4 import ProbeTestCase, read_fragment, root
from tokengate.media.codecs import (
    AVC_NALU,
    AVCDecoderConfigurationRecord,
    build_video_tag,
    length_prefixed_nals,
    parse_audio_tag,
    parse_video_tag,
)
from tokengate.media.flv import TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO, iter_flv_tags
from tokengate.media.hub import ISubscriber, LiveStream
from tokengate.media.packager import MAX_WAITERS, Packager
from tokengate.rtmp import amf0

MPD_NS = "{urn:mpeg:dash:schema:mpd:2011}"
START = 1_800_000_000.0  # the clock's start, a fixed wall-clock time

# ---------------------------------------------------------------------------
# Clips
# ---------------------------------------------------------------------------

_VIDEO_IN = ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"]
_AUDIO_IN = ["-f", "lavfi", "-i", "sine=sample_rate=48000"]
_VIDEO_OUT = ["-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "2"]
_AUDIO_OUT = ["-c:a", "aac"]


def av_clip() -> str:
    """8 s of 320x240 25 fps H.264 (2 B-frames, GOP 25) and 48 kHz AAC, in FLV."""
    return ffmpeg_output(
        "packager-av.flv", *_VIDEO_IN, *_AUDIO_IN, "-t", "8", *_VIDEO_OUT, *_AUDIO_OUT, "-f", "flv"
    )


def video_clip() -> str:
    return ffmpeg_output("packager-video.flv", *_VIDEO_IN, "-t", "6", *_VIDEO_OUT, "-f", "flv")


def audio_clip() -> str:
    return ffmpeg_output("packager-audio.flv", *_AUDIO_IN, "-t", "5.5", *_AUDIO_OUT, "-f", "flv")


def small_clip() -> str:
    """4 s at 160x120: a different video configuration."""
    return ffmpeg_output(
        "packager-small.flv",
        "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", *_AUDIO_IN, "-t", "4",
        *_VIDEO_OUT, *_AUDIO_OUT, "-f", "flv",
    )  # fmt: skip


@frozen
class Tag:
    kind: int  # TAG_VIDEO, TAG_AUDIO or TAG_SCRIPT
    timestamp: int
    body: bytes


_tags: dict[str, list[Tag]] = {}


def clip_tags(path: str) -> list[Tag]:
    if path not in _tags:
        with open(path, "rb") as f:
            data = f.read()
        _tags[path] = [Tag(t.tag_type, t.timestamp, bytes(t.data)) for t in iter_flv_tags(data)]
    return _tags[path]


def play(stream: LiveStream, clock: Clock, tags: list[Tag]) -> Iterator[Tag]:
    """
    Deliver C{tags} to C{stream} as a publisher would, the clock following
    the timestamps; yield after each one.
    """
    base = clock.seconds()
    first = tags[0].timestamp
    for tag in tags:
        due = base + (tag.timestamp - first) / 1000
        if due > clock.seconds():
            clock.advance(due - clock.seconds())
        if tag.kind == TAG_VIDEO:
            stream.videoReceived(tag.timestamp, tag.body)
        elif tag.kind == TAG_AUDIO:
            stream.audioReceived(tag.timestamp, tag.body)
        else:
            values = amf0.decode_all(tag.body)
            if len(values) >= 2 and values[0] == "onMetaData":
                stream.setMetadata(dict(values[1]))
        yield tag


def publish(
    packager: Packager, clock: Clock, path_or_tags: Any, end: bool = True
) -> LiveStream:
    """One whole publication of a clip (or of a list of tags)."""
    tags = clip_tags(path_or_tags) if isinstance(path_or_tags, str) else path_or_tags
    stream = LiveStream(packager.app, packager.streamId, "RTMP", clock.seconds())
    packager.attach(stream)
    for _ in play(stream, clock, tags):
        pass
    if end:
        stream.end()
    return stream


def source_video(path: str) -> list[tuple[int, int, bool]]:
    """(dts ms, composition ms, keyframe) of each video frame of a clip."""
    out = []
    for tag in clip_tags(path):
        if tag.kind == TAG_VIDEO:
            v = parse_video_tag(tag.body)
            if v.avc_packet_type == AVC_NALU:
                out.append((tag.timestamp, v.composition_time, v.is_keyframe))
    return out


def source_audio_count(path: str) -> int:
    return sum(
        1
        for tag in clip_tags(path)
        if tag.kind == TAG_AUDIO and parse_audio_tag(tag.body).aac_packet_type == 1
    )


# ---------------------------------------------------------------------------
# Playlist and MPD checkers
# ---------------------------------------------------------------------------


def attributes(text: str) -> dict[str, str]:
    """An HLS attribute list, quotes removed."""
    out = {}
    for m in re.finditer(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)', text):
        out[m.group(1)] = m.group(2).strip('"')
    return out


def assert_close(
    testcase: SynchronousTestCase, first: float, second: float, delta: float, msg: str = ""
) -> None:
    """trial's assertAlmostEqual knows no delta."""
    if abs(first - second) > delta:
        testcase.fail(f"{first!r} != {second!r} within {delta!r} {msg}".rstrip())


def check_uri(testcase: SynchronousTestCase, uri: str, query: str) -> str:
    """Assert C{uri} carries exactly C{query}; return it without the query."""
    if query:
        testcase.assertTrue(uri.endswith("?" + query), f"{uri!r} lacks ?{query}")
        return uri[: -len(query) - 1]
    testcase.assertNotIn("?", uri)
    return uri


@define
class PlaylistSegment:
    msn: int
    duration: float
    uri: str
    parts: list[tuple[float, str, bool]] = field(factory=list)
    discontinuity: bool = False
    gap: bool = False
    map: Optional[str] = None  # the EXT-X-MAP in effect
    date: Optional[datetime] = None


@define
class MediaPlaylist:
    target: int
    sequence: int
    discontinuity_sequence: int
    part_target: float
    part_hold_back: float
    segments: list[PlaylistSegment]
    open_parts: list[tuple[float, str, bool]]
    preload: Optional[str]
    reports: list[dict[str, str]]
    ended: bool
    maps: list[str]


def parse_media(testcase: SynchronousTestCase, text: str, kind: str, query: str) -> MediaPlaylist:
    """Parse an LL-HLS media playlist, checking the rules it must follow."""
    lines = text.splitlines()
    testcase.assertEqual(lines[0], "#EXTM3U")
    testcase.assertTrue(text.endswith("\n"))
    tags: dict[str, str] = {}
    segments: list[PlaylistSegment] = []
    parts: list[tuple[float, str, bool]] = []
    maps: list[str] = []
    current_map: Optional[str] = None
    pending: dict[str, Any] = {}
    preload = None
    reports = []
    ended = False
    for line in lines[1:]:
        testcase.assertTrue(line, "blank line")
        if not line.startswith("#"):
            testcase.assertIn("duration", pending, f"URI {line} without EXTINF")
            segments.append(
                PlaylistSegment(
                    -1, pending["duration"], check_uri(testcase, line, query), parts,
                    pending.get("disc", False), pending.get("gap", False), current_map,
                    pending.get("date"),
                )
            )  # fmt: skip
            parts, pending = [], {}
            continue
        name, _, value = line[1:].partition(":")
        if name == "EXTINF":
            pending["duration"] = float(value.rstrip(","))
            testcase.assertRegex(value, r"^\d+\.\d{3,},$")
        elif name == "EXT-X-PART":
            a = attributes(value)
            parts.append(
                (float(a["DURATION"]), check_uri(testcase, a["URI"], query), a.get("INDEPENDENT") == "YES")
            )
        elif name == "EXT-X-MAP":
            current_map = check_uri(testcase, attributes(value)["URI"], query)
            maps.append(current_map)
        elif name == "EXT-X-DISCONTINUITY":
            pending["disc"] = True
        elif name == "EXT-X-GAP":
            pending["gap"] = True
        elif name == "EXT-X-PROGRAM-DATE-TIME":
            pending["date"] = datetime.fromisoformat(value.replace("Z", "+00:00"))
        elif name == "EXT-X-PRELOAD-HINT":
            a = attributes(value)
            testcase.assertEqual(a["TYPE"], "PART")
            preload = check_uri(testcase, a["URI"], query)
        elif name == "EXT-X-RENDITION-REPORT":
            a = attributes(value)
            a["URI"] = check_uri(testcase, a["URI"], query)
            reports.append(a)
        elif name == "EXT-X-ENDLIST":
            ended = True
        else:
            testcase.assertNotIn(name, tags, f"{name} twice")
            tags[name] = value
    target = int(tags["EXT-X-TARGETDURATION"])
    sequence = int(tags["EXT-X-MEDIA-SEQUENCE"])
    testcase.assertGreaterEqual(int(tags["EXT-X-VERSION"]), 7)
    control = attributes(tags["EXT-X-SERVER-CONTROL"])
    testcase.assertEqual(control["CAN-BLOCK-RELOAD"], "YES")
    part_target = float(attributes(tags["EXT-X-PART-INF"])["PART-TARGET"])
    hold_back = float(control["PART-HOLD-BACK"])
    testcase.assertGreaterEqual(hold_back, 3 * part_target - 1e-9)
    testcase.assertTrue(segments, "no segments")
    testcase.assertIsNotNone(segments[0].map, "no EXT-X-MAP before the first segment")
    for i, s in enumerate(segments):
        s.msn = sequence + i
        testcase.assertEqual(s.uri, f"{kind}/{s.msn}.m4s")
        testcase.assertLessEqual(math.floor(s.duration + 0.5), target, "EXTINF over the target")
        if s.parts:
            assert_close(testcase, sum(p[0] for p in s.parts), s.duration, 0.0005)
            names = [f"{kind}/{s.msn}.{j}.m4s" for j in range(len(s.parts))]
            testcase.assertEqual([p[1] for p in s.parts], names)
        for duration, _, independent in s.parts:
            testcase.assertLessEqual(duration, part_target + 1e-9)
        if s.parts and kind == "audio":
            testcase.assertTrue(all(p[2] for p in s.parts))
    # LL-HLS lists the parts of (at least) the last three target durations.
    testcase.assertTrue(any(s.parts for s in segments) or parts, "no EXT-X-PART listed")
    # Parts of the segment in progress come after the last URI line.
    open_parts = parts
    if ended:
        testcase.assertIsNone(preload)
        testcase.assertEqual(open_parts, [])
    else:
        testcase.assertIsNotNone(preload)
    for duration, _, _ in open_parts:
        testcase.assertLessEqual(duration, part_target + 1e-9)
    return MediaPlaylist(
        target, sequence, int(tags.get("EXT-X-DISCONTINUITY-SEQUENCE", "0")), part_target,
        hold_back, segments, open_parts, preload, reports, ended, maps,
    )  # fmt: skip


def parse_multivariant(testcase: SynchronousTestCase, text: str, query: str) -> dict[str, Any]:
    lines = text.splitlines()
    testcase.assertEqual(lines[0], "#EXTM3U")
    testcase.assertIn("#EXT-X-INDEPENDENT-SEGMENTS", lines)
    version = [line for line in lines if line.startswith("#EXT-X-VERSION:")]
    testcase.assertGreaterEqual(int(version[0].split(":")[1]), 7)
    out: dict[str, Any] = {"media": [], "variants": []}
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-MEDIA:"):
            a = attributes(line.split(":", 1)[1])
            a["URI"] = check_uri(testcase, a["URI"], query)
            out["media"].append(a)
        elif line.startswith("#EXT-X-STREAM-INF:"):
            a = attributes(line.split(":", 1)[1])
            a["URI"] = check_uri(testcase, lines[i + 1], query)
            testcase.assertGreater(int(a["BANDWIDTH"]), 0)
            out["variants"].append(a)
    testcase.assertEqual(len(out["variants"]), 1)
    return out


def parse_mpd(testcase: SynchronousTestCase, text: str, query: str) -> ET.Element:
    """Parse an MPD (well-formed XML), checking every template URI's query."""
    mpd = ET.fromstring(text.encode())
    testcase.assertEqual(mpd.tag, MPD_NS + "MPD")
    timing = mpd.find(MPD_NS + "UTCTiming")
    testcase.assertIsNotNone(timing)
    assert timing is not None
    testcase.assertEqual(timing.get("schemeIdUri"), "urn:mpeg:dash:utc:http-iso:2014")
    templates = list(mpd.iter(MPD_NS + "SegmentTemplate"))
    testcase.assertTrue(templates, "no SegmentTemplate")
    for template in templates:
        for name in ("initialization", "media"):
            check_uri(testcase, template.get(name, "").replace("$$", "$"), query)
    return mpd


def timeline(template: ET.Element) -> list[tuple[int, int]]:
    """(t, d) of each segment of a SegmentTimeline."""
    out = []
    t = 0
    node = template.find(MPD_NS + "SegmentTimeline")
    assert node is not None
    for s in node.findall(MPD_NS + "S"):
        if s.get("t") is not None:
            t = int(s.get("t", "0"))
        d = int(s.get("d", "0"))
        for _ in range(int(s.get("r", "0")) + 1):
            out.append((t, d))
            t += d
    assert out, "an empty SegmentTimeline"
    return out


def seconds(duration: str) -> float:
    m = re.fullmatch(r"PT([0-9.]+)S", duration)
    assert m is not None, duration
    return float(m.group(1))


# ---------------------------------------------------------------------------
# Test cases
# ---------------------------------------------------------------------------


class PackagerTestCase(ProbeTestCase):
    def setUp(self) -> None:
        require("ffmpeg")
        require("ffprobe")
        self.clock = Clock()
        self.clock.advance(START)

    def packager(self, **kw: Any) -> Packager:
        # the HLS window alone, unless a test is about the DASH delay
        kw.setdefault("dashDelay", 0.0)
        return Packager("LiveApp", "s1", self.clock, **kw)

    def assertClose(self, first: float, second: float, delta: float) -> None:
        assert_close(self, first, second, delta)

    def segments(self, p: Packager, kind: str) -> list[Any]:
        return list(p.segmenter.track(kind).segments)  # type: ignore[union-attr]

    def write_tree(self, p: Packager, query: str = "") -> str:
        """
        Write what the HTTP side would serve for a finished stream into a
        directory, fetching every URI of the documents through
        C{resource()}; return the directory.
        """
        top = os.path.abspath(self.mktemp())
        sid = p.streamId
        os.makedirs(os.path.join(top, sid))
        multivariant = p.hlsMultivariant(query)
        assert multivariant is not None
        with open(os.path.join(top, f"{sid}.m3u8"), "w") as f:
            f.write(multivariant)
        wanted: set[str] = set()
        for kind in ("video", "audio"):
            text = p.hlsMedia(kind, query)
            if text is None:
                continue
            with open(os.path.join(top, sid, f"{kind}.m3u8"), "w") as f:
                f.write(text)
            playlist = parse_media(self, text, kind, query)
            for s in playlist.segments:
                if not s.gap:
                    wanted.add(s.uri)
                wanted.update(part[1] for part in s.parts)
            wanted.update(playlist.maps)
        mpd = p.dashMpd(query)
        assert mpd is not None
        with open(os.path.join(top, sid, f"{sid}.mpd"), "w") as f:
            f.write(mpd)
        for template in parse_mpd(self, mpd, query).iter(MPD_NS + "SegmentTemplate"):
            init = check_uri(self, template.get("initialization", ""), query)
            media = check_uri(self, template.get("media", ""), query)
            wanted.add(init)
            number = int(template.get("startNumber", "1"))
            for i in range(len(timeline(template))):
                wanted.add(media.replace("$Number$", str(number + i)))
        for uri in sorted(wanted):
            kind, name = uri.split("/")
            data = p.resource(kind, name)
            self.assertTrue(data, f"{uri} is not served, or empty")
            assert data is not None
            os.makedirs(os.path.join(top, sid, kind), exist_ok=True)
            with open(os.path.join(top, sid, kind, name), "wb") as f:
                f.write(data)
        return top


class SegmentTests(PackagerTestCase):
    """Segments and parts of a finished audio and video stream."""

    def setUp(self) -> None:
        super().setUp()
        self.p = self.packager()
        self.origin = self.clock.seconds()
        publish(self.p, self.clock, av_clip())

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(ISubscriber, self.p))

    def test_segments(self) -> None:
        """
        GOP 1 s and a 2 s target give 2 s segments cut on keyframes,
        numbered from 1; audio segments have the same numbers and cover the
        same time to within half an audio frame.
        """
        video = self.segments(self.p, "video")
        audio = self.segments(self.p, "audio")
        self.assertEqual([s.msn for s in video], [1, 2, 3, 4])
        self.assertEqual([s.msn for s in audio], [1, 2, 3, 4])
        self.assertEqual([s.duration for s in video], [180000] * 4)
        self.assertEqual(sum(s.frames for s in video), len(source_video(av_clip())))
        for v, a in zip(video, audio):
            self.assertTrue(v.parts[0][3], "a video segment must start with a keyframe")
            self.assertClose(a.start / 48000, v.start / 90000, delta=512 / 48000)
            self.assertClose(a.duration / 48000, v.duration / 90000, delta=1024 / 48000)
            _, _, base, rows, _ = read_fragment(self.p.part("video", v.msn, 0))  # type: ignore[arg-type]
            self.assertEqual(base, v.start)
            self.assertEqual(rows[0].flags, 0x02000000)
        for previous, following in zip(audio, audio[1:]):
            self.assertEqual(previous.start + previous.duration, following.start)
        self.assertTrue(self.p.ended)
        self.assertTrue(self.p.hasVideo)
        self.assertTrue(self.p.hasAudio)

    def test_parts(self) -> None:
        """
        Parts are at most the part target, at least 85 % of it unless last
        or independent, and sum to their segment.
        """
        for kind, timescale in (("video", 90000), ("audio", 48000)):
            held = self.segments(self.p, kind)
            self.assertEqual(len(held), 4, kind)
            for s in held:
                self.assertTrue(s.parts, f"{kind} segment {s.msn} has no parts")
                durations = [d / timescale for _, _, d, _ in s.parts]
                self.assertEqual(sum(d for _, _, d, _ in s.parts), s.duration)
                for i, (duration, (_, _, _, independent)) in enumerate(zip(durations, s.parts)):
                    self.assertLessEqual(duration, 0.5)
                    if i < len(s.parts) - 1 and not independent:
                        self.assertGreaterEqual(duration, 0.85 * 0.5)
                self.assertEqual(
                    self.p.segment(kind, s.msn),
                    s.data[:24] + b"".join(
                        self.p.part(kind, s.msn, i) for i in range(len(s.parts))  # type: ignore[misc]
                    ),
                )
                self.assertIsNone(self.p.part(kind, s.msn, len(s.parts)))

    def test_probe_segments_and_parts(self) -> None:
        """Every init + segment and init + part probes and decodes cleanly."""
        for kind in ("video", "audio"):
            init = self.p.init(kind)
            assert init is not None
            held = self.segments(self.p, kind)
            self.assertEqual(len(held), 4, kind)
            for s in held:
                segment = self.p.segment(kind, s.msn)
                assert segment is not None
                self.assertTrue(s.parts, f"{kind} segment {s.msn} has no parts")
                info = self.probe(self.write(f"{kind}-{s.msn}.mp4", init, segment))
                self.assertEqual(info["streams"][0]["codec_type"], kind)
                # A part decodes on its own when it is independent (every
                # audio part is); otherwise after the parts before it.
                start = 0
                for i, (_, _, _, independent) in enumerate(s.parts):
                    if independent:
                        start = i
                    parts = [self.p.part(kind, s.msn, j) or b"" for j in range(start, i + 1)]
                    self.assertTrue(all(parts), f"{kind} {s.msn}.{start}-{i}: a part is missing")
                    path = self.write(f"{kind}-{s.msn}.{start}-{i}.mp4", init, *parts)
                    self.probe(path)
                    if kind == "audio":
                        self.assertTrue(independent)

    def test_video_decodes_whole(self) -> None:
        """
        Init + every video segment decodes to every frame, in presentation
        order; each sample's presentation time is the source's (dts + cts),
        shifted by the B-frame delay as a whole.
        """
        init = self.p.init("video")
        assert init is not None
        segments = [self.p.segment("video", s.msn) for s in self.segments(self.p, "video")]
        self.assertEqual(len(segments), 4)
        self.assertTrue(all(segments))
        path = self.write("video.mp4", init, *segments)  # type: ignore[arg-type]
        info = self.probe(path)
        source = source_video(av_clip())
        self.assertEqual(len(source), 200)
        self.assertEqual(int(info["streams"][0]["nb_read_frames"]), len(source))
        result = run(
            require("ffprobe"), "-v", "error", "-select_streams", "v", "-show_entries",
            "frame=best_effort_timestamp", "-of", "csv=p=0", path,
        )  # fmt: skip
        stamps = [int(line.strip(",")) for line in result.stdout.split()]
        self.assertEqual(len(stamps), len(source))
        self.assertEqual([b - a for a, b in zip(stamps, stamps[1:])], [3600] * (len(source) - 1))
        # Box level: presentation times equal the source's.
        delay = source[0][1]
        presented = []
        negative = False
        for s in self.segments(self.p, "video"):
            for i in range(len(s.parts)):
                part = self.p.part("video", s.msn, i)
                assert part is not None
                _, track_id, base, rows, _ = read_fragment(part)
                self.assertEqual(track_id, 1)
                self.assertTrue(rows, f"video part {s.msn}.{i} has no samples")
                for row in rows:
                    presented.append(base + row.cto)
                    negative = negative or row.cto < 0
                    base += row.duration
        self.assertTrue(negative, "B-frames need negative composition offsets")
        expected = [(dts + cts) * 90 for dts, cts, _ in source]
        self.assertEqual(presented, expected)
        self.assertEqual(source[0][1], delay)

    def test_audio_decodes_whole(self) -> None:
        init = self.p.init("audio")
        assert init is not None
        segments = [self.p.segment("audio", s.msn) for s in self.segments(self.p, "audio")]
        self.assertEqual(len(segments), 4)
        self.assertTrue(all(segments))
        self.assertGreater(source_audio_count(av_clip()), 5)
        info = self.probe(self.write("audio.mp4", init, *segments))  # type: ignore[arg-type]
        # Audio before the first video keyframe's presentation time is dropped.
        count = int(info["streams"][0]["nb_read_frames"])
        self.assertLessEqual(count, source_audio_count(av_clip()))
        self.assertGreaterEqual(count, source_audio_count(av_clip()) - 5)

    def test_end_to_end(self) -> None:
        """
        The finished stream written to disk as served: ffmpeg decodes the
        multivariant playlist cleanly, and ffprobe reads the static MPD.
        """
        top = self.write_tree(self.p)
        master = os.path.join(top, "s1.m3u8")
        self.assertEqual(decode_errors(master), "")
        result = run(
            require("ffprobe"), "-v", "warning", "-show_entries", "stream=codec_type",
            "-of", "csv=p=0", master,
        )  # fmt: skip
        self.assertEqual(result.stderr, "")
        self.assertEqual(set(result.stdout.split()), {"audio", "video"})
        mpd = os.path.join(top, "s1", "s1.mpd")
        info, errors = ffprobe(mpd)
        self.assertEqual(errors, "")
        self.assertEqual(sorted(s["codec_type"] for s in info["streams"]), ["audio", "video"])
        self.assertEqual(decode_errors(mpd), "")
        result = run(
            require("ffmpeg"), "-nostdin", "-i", mpd, "-map", "0:v", "-f", "null", "-"
        )
        self.assertRegex(result.stderr, r"frame=\s*200 ")

    def test_finished_playlists(self) -> None:
        for kind in ("video", "audio"):
            text = self.p.hlsMedia(kind, "s=abc")
            assert text is not None
            playlist = parse_media(self, text, kind, "s=abc")
            self.assertTrue(playlist.ended)
            self.assertEqual(playlist.sequence, 1)
            self.assertEqual([s.msn for s in playlist.segments], [1, 2, 3, 4])
            self.assertEqual(playlist.maps, [f"{kind}/init.mp4"])
            self.assertEqual(playlist.target, 2)
            self.assertEqual(playlist.part_target, 0.5)
            self.assertFalse(any(s.discontinuity for s in playlist.segments))
            # Program date: the wall clock at the segment's start.
            scale = 90000 if kind == "video" else 48000
            for s, held in zip(playlist.segments, self.segments(self.p, kind)):
                assert s.date is not None
                self.assertClose(s.date.timestamp(), self.origin + held.start / scale, delta=0.001)
            # Parts are listed for the last three target durations (and
            # independent parts start each video segment).
            with_parts = [s for s in playlist.segments if s.parts]
            self.assertEqual(with_parts, playlist.segments[-len(with_parts) :])
            self.assertGreaterEqual(sum(s.duration for s in with_parts), 3 * playlist.target - 0.01)
            if kind == "video":
                self.assertEqual(len(with_parts), 3)
            for s in with_parts:
                self.assertTrue(s.parts[0][2])

    def test_multivariant(self) -> None:
        text = self.p.hlsMultivariant("s=abc")
        assert text is not None
        parsed = parse_multivariant(self, text, "s=abc")
        (variant,) = parsed["variants"]
        (audio,) = parsed["media"]
        self.assertEqual(variant["URI"], "s1/video.m3u8")
        self.assertEqual(variant["RESOLUTION"], "320x240")
        self.assertEqual(variant["FRAME-RATE"], "25.000")
        self.assertRegex(variant["CODECS"], r"^avc1\.[0-9a-f]{6},mp4a\.40\.2$")
        self.assertEqual(variant["AUDIO"], audio["GROUP-ID"])
        self.assertEqual(audio["TYPE"], "AUDIO")
        self.assertEqual(audio["DEFAULT"], "YES")
        self.assertEqual(audio["AUTOSELECT"], "YES")
        self.assertEqual(audio["URI"], "s1/audio.m3u8")
        # The clip is about 200 kbit/s.
        self.assertTrue(100_000 < int(variant["BANDWIDTH"]) < 400_000, variant["BANDWIDTH"])
        self.assertEqual(self.p.bandwidth, int(variant["BANDWIDTH"]))
        self.assertLessEqual(int(variant["AVERAGE-BANDWIDTH"]), int(variant["BANDWIDTH"]))

    def test_static_mpd(self) -> None:
        text = self.p.dashMpd("s=a&b", location="https://example.test/x.mpd?s=a&b")
        assert text is not None
        mpd = parse_mpd(self, text, "s=a&b")
        self.assertEqual(mpd.get("type"), "static")
        self.assertIsNone(mpd.get("minimumUpdatePeriod"))
        # the end of the last segment on the one timeline (the first frame at 0.08 s)
        self.assertClose(seconds(mpd.get("mediaPresentationDuration", "")), 8.08, delta=0.03)
        location = mpd.find(MPD_NS + "Location")
        assert location is not None
        self.assertEqual(location.text, "https://example.test/x.mpd?s=a&b")
        (period,) = mpd.findall(MPD_NS + "Period")
        self.assertClose(seconds(period.get("start", "")), 0.08, delta=0.0015)
        sets = {a.get("contentType"): a for a in period.findall(MPD_NS + "AdaptationSet")}
        self.assertEqual(set(sets), {"video", "audio"})
        video = sets["video"]
        self.assertEqual((video.get("width"), video.get("height")), ("320", "240"))
        self.assertEqual(video.get("frameRate"), "25")
        self.assertEqual(video.get("startWithSAP"), "1")
        self.assertEqual(video.get("segmentAlignment"), "true")
        self.assertEqual(sets["audio"].get("audioSamplingRate"), "48000")
        self.assertIsNotNone(sets["audio"].find(MPD_NS + "AudioChannelConfiguration"))
        for kind, timescale in (("video", 90000), ("audio", 48000)):
            template = next(sets[kind].iter(MPD_NS + "SegmentTemplate"))
            self.assertEqual(template.get("timescale"), str(timescale))
            self.assertEqual(template.get("startNumber"), "1")
            self.assertEqual(template.get("initialization"), f"{kind}/init.mp4?s=a&b")
            self.assertEqual(template.get("media"), f"{kind}/$Number$.m4s?s=a&b")
            held = self.segments(self.p, kind)
            self.assertEqual(timeline(template), [(s.start, s.duration) for s in held])
            representation = sets[kind].find(MPD_NS + "Representation")
            assert representation is not None
            self.assertGreater(int(representation.get("bandwidth", "0")), 0)
            self.assertTrue(representation.get("codecs"))

    def test_lookups(self) -> None:
        p = self.p
        self.assertEqual(p.resource("video", "init.mp4"), p.init("video"))
        self.assertEqual(p.resource("video", "init.mp4"), p.init("video", 0))
        self.assertEqual(p.resource("audio", "2.m4s"), p.segment("audio", 2))
        self.assertEqual(p.resource("audio", "2.1.m4s"), p.part("audio", 2, 1))
        bad = ("init-0.mp4", "init-1.mp4", "9.m4s", "1.9.m4s", "01.m4s", "1.01.m4s", "x.m4s")
        for name in bad + ("../1.m4s", "1.m4s.gz", "-1.m4s", "init.mp4/", "1.m4s\n"):
            self.assertIsNone(p.resource("video", name), name)
        self.assertIsNone(p.resource("subtitles", "1.m4s"))
        self.assertIsNone(p.segment("video", 0))
        self.assertIsNone(p.part("video", 1, -1))
        self.assertIsNone(p.init("data"))
        self.assertEqual(p.edge("video"), (4, 4))
        self.assertIsNone(p.edge("data"))

    def test_close(self) -> None:
        d = self.p.wait("video", 9)
        self.assertFalse(self.successResultOf(d))  # ended already
        self.p.close()
        self.assertIsNone(self.p.segment("video", 1))
        self.assertIsNone(self.p.init("video"))
        self.assertIsNone(self.p.hlsMedia("video", ""))
        self.assertIsNone(self.p.hlsMultivariant(""))
        self.assertIsNone(self.p.dashMpd(""))
        self.assertFalse(self.p.hasVideo)
        self.assertTrue(self.p.ended)


class LiveTests(PackagerTestCase):
    """Documents and waiters while the stream is live."""

    def test_nothing_yet(self) -> None:
        p = self.packager()
        self.assertIsNone(p.hlsMultivariant(""))
        self.assertIsNone(p.hlsMedia("video", ""))
        self.assertIsNone(p.dashMpd(""))
        stream = LiveStream("LiveApp", "s1", "RTMP", self.clock.seconds())
        p.attach(stream)
        tags = clip_tags(av_clip())
        feed = play(stream, self.clock, tags)
        for tag in feed:
            if tag.timestamp > 1500:
                break
        # Parts exist, but no complete segment yet.
        self.assertIsNotNone(p.part("video", 1, 0))
        self.assertIsNone(p.hlsMultivariant(""))
        self.assertIsNone(p.hlsMedia("audio", ""))
        self.assertIsNone(p.dashMpd(""))
        self.assertFalse(p.ended)
        self.assertEqual(p.lastActivity, self.clock.seconds())

    def test_sliding_window(self) -> None:
        """
        With a 1 s target: media sequence numbers follow the window, parts
        and preload hints follow the live edge, and rendition reports point
        at the other track.
        """
        p = self.packager(segmentTarget=1.0, windowSegments=3, extraSegments=1)
        stream = LiveStream("LiveApp", "s1", "RTMP", self.clock.seconds())
        p.attach(stream)
        seen = set()
        checks = 0
        for tag in play(stream, self.clock, clip_tags(av_clip())):
            video = self.segments(p, "video")
            if not video or video[-1].msn in seen:
                continue
            last = video[-1].msn
            seen.add(last)
            self.assertLessEqual(len(video), 4)
            self.assertEqual(video[0].msn, max(1, last - 3))
            self.assertIsNone(p.segment("video", last - 4))
            text = p.hlsMedia("video", "s=abc")
            assert text is not None
            playlist = parse_media(self, text, "video", "s=abc")
            self.assertEqual(playlist.sequence, max(1, last - 2))
            self.assertEqual(playlist.segments[-1].msn, last)
            self.assertFalse(playlist.ended)
            self.assertEqual(playlist.target, 1)
            # Parts of the last three target durations are listed.
            self.assertTrue(all(s.parts for s in playlist.segments[-3:]))
            # The live edge: the next segment has started.
            self.assertEqual(playlist.preload, f"video/{last + 1}.{len(playlist.open_parts)}.m4s")
            audio_edge = p.edge("audio")
            if p.hlsMedia("audio", "") is None:
                self.assertEqual(playlist.reports, [])
            else:
                assert audio_edge is not None
                (report,) = playlist.reports
                self.assertEqual(report["URI"], "audio.m3u8")
                self.assertEqual(int(report["LAST-MSN"]), audio_edge[0])
                self.assertEqual(int(report["LAST-PART"]), audio_edge[1])
            checks += 1
        self.assertGreaterEqual(checks, 6)
        # Mid-segment: the open parts, then a hint for the next one.
        text = p.hlsMedia("audio", "s=abc")
        assert text is not None
        playlist = parse_media(self, text, "audio", "s=abc")
        self.assertTrue(playlist.open_parts)
        msn, part = p.edge("audio")  # type: ignore[misc]
        self.assertEqual(playlist.open_parts[-1][1], f"audio/{msn}.{part}.m4s")
        self.assertEqual(playlist.preload, f"audio/{msn}.{part + 1}.m4s")
        stream.end()
        text = p.hlsMedia("video", "s=abc")
        assert text is not None
        playlist = parse_media(self, text, "video", "s=abc")
        self.assertTrue(playlist.ended)
        self.assertEqual(playlist.segments[-1].msn, 8)
        self.assertEqual(playlist.sequence, 6)

    def test_live_mpd(self) -> None:
        p = self.packager(windowSegments=2)
        stream = LiveStream("LiveApp", "s1", "RTMP", self.clock.seconds())
        origin = self.clock.seconds()
        p.attach(stream)
        for tag in play(stream, self.clock, clip_tags(av_clip())):
            if tag.timestamp > 6500:
                break
        text = p.dashMpd("s=abc", utcTiming="https://example.test/time")
        assert text is not None
        mpd = parse_mpd(self, text, "s=abc")
        self.assertEqual(mpd.get("type"), "dynamic")
        self.assertIsNone(mpd.find(MPD_NS + "Location"))
        self.assertEqual(
            datetime.fromisoformat(mpd.get("availabilityStartTime", "").replace("Z", "+00:00")).timestamp(),
            origin,
        )
        self.assertEqual(seconds(mpd.get("minimumUpdatePeriod", "")), 2.0)
        self.assertEqual(seconds(mpd.get("suggestedPresentationDelay", "")), 6.0)
        self.assertClose(seconds(mpd.get("timeShiftBufferDepth", "")), 4.0, delta=0.02)
        self.assertIn("urn:mpeg:dash:profile:isoff-live:2011", mpd.get("profiles", ""))
        self.assertIn("urn:mpeg:dash:profile:cmaf:2019", mpd.get("profiles", ""))
        timing = mpd.find(MPD_NS + "UTCTiming")
        assert timing is not None
        self.assertEqual(timing.get("value"), "https://example.test/time")
        self.assertIsNotNone(mpd.get("publishTime"))
        (period,) = mpd.findall(MPD_NS + "Period")
        self.assertEqual(period.get("id"), "p0")
        adaptations = period.findall(MPD_NS + "AdaptationSet")
        self.assertEqual(sorted(a.get("contentType", "") for a in adaptations), ["audio", "video"])
        for adaptation in adaptations:
            kind = adaptation.get("contentType", "")
            template = next(adaptation.iter(MPD_NS + "SegmentTemplate"))
            held = self.segments(p, kind)[-2:]
            self.assertEqual(template.get("startNumber"), str(held[0].msn))
            self.assertEqual(timeline(template), [(s.start, s.duration) for s in held])
            # Media time 0 is availabilityStartTime: segment times are wall-clock offsets.
            scale = int(template.get("timescale", "1"))
            pto = int(template.get("presentationTimeOffset", "0"))
            self.assertClose(pto / scale, 0.08, delta=0.001)

    def mpdSegments(self, text: str) -> dict[tuple[str, int], tuple[float, int, int, int]]:
        """
        (kind, number) -> (period start s, presentationTimeOffset, t, d) of
        every segment an MPD lists; checks that each track's first segment
        in a period starts at or after its presentationTimeOffset.
        """
        out = {}
        mpd = parse_mpd(self, text, "")
        periods = mpd.findall(MPD_NS + "Period")
        self.assertTrue(periods, "no Period")
        for period in periods:
            start = seconds(period.get("start", ""))
            adaptations = period.findall(MPD_NS + "AdaptationSet")
            self.assertTrue(adaptations, f"no AdaptationSet in period {period.get('id')}")
            for adaptation in adaptations:
                kind = adaptation.get("contentType", "")
                template = next(adaptation.iter(MPD_NS + "SegmentTemplate"))
                pto = int(template.get("presentationTimeOffset", "0"))
                number = int(template.get("startNumber", "1"))
                segments = timeline(template)
                self.assertGreaterEqual(segments[0][0], pto, f"{kind} starts before its period")
                for i, (t, d) in enumerate(segments):
                    out[(kind, number + i)] = (start, pto, t, d)
        return out

    def test_mpd_one_timeline(self) -> None:
        """
        When the stream ends, the static MPD keeps the live one's period
        starts, presentation time offsets, numbers and segment times, and
        lists the segments that followed; its duration is the end of the
        last segment on that timeline.
        """
        p = self.packager(dashDelay=5.0)  # ceil(5 / 2) + 2 = 5 segments listed
        self.assertEqual(p.dashSegments, 5)
        stream = LiveStream("LiveApp", "s1", "RTMP", self.clock.seconds())
        p.attach(stream)
        for tag in play(stream, self.clock, clip_tags(av_clip())):
            if tag.timestamp > 5500:
                break
        live_text = p.dashMpd("")
        assert live_text is not None
        self.assertEqual(seconds(parse_mpd(self, live_text, "").get("suggestedPresentationDelay", "")), 6.0)
        live = self.mpdSegments(live_text)
        self.assertIn(("video", 1), live)
        stream.end()
        ended_text = p.dashMpd("")
        assert ended_text is not None
        mpd = parse_mpd(self, ended_text, "")
        self.assertEqual(mpd.get("type"), "static")
        ended = self.mpdSegments(ended_text)
        for key, value in live.items():
            self.assertEqual(ended.get(key), value, key)
        self.assertGreater(max(n for _, n in ended), max(n for _, n in live))
        end = max((t + d) / (90000 if kind == "video" else 48000) - pto / (90000 if kind == "video" else 48000) + start
                  for (kind, _), (start, pto, t, d) in ended.items())  # fmt: skip
        self.assertClose(seconds(mpd.get("mediaPresentationDuration", "")), end, delta=0.002)

    def test_mpd_audio_starts_in_period(self) -> None:
        """
        Audio whose first frame begins a few milliseconds before the video
        keyframe that starts the period: the period starts with the audio,
        so no track's first segment lies before its presentationTimeOffset.
        """
        tags = [Tag(t.kind, t.timestamp + 30 if t.kind == TAG_VIDEO else t.timestamp, t.body)
                for t in clip_tags(av_clip())]  # fmt: skip
        p = self.packager()
        publish(p, self.clock, tags, end=False)
        audio = self.segments(p, "audio")[0]
        video = self.segments(p, "video")[0]
        self.assertLess(audio.start / 48000, video.start / 90000)  # the case at hand
        for text in (p.dashMpd(""), None):
            if text is None:
                p.streamEnded()
                text = p.dashMpd("")
            assert text is not None
            listed = self.mpdSegments(text)  # checks t >= presentationTimeOffset
            start, pto, t, _ = listed[("audio", 1)]
            self.assertEqual(pto, int(start * 48000))
            self.assertClose(start, audio.start / 48000, delta=0.001)

    def test_dash_delay_window(self) -> None:
        """
        The default DASH delay (34 s) is suggested to players, and the MPD
        lists (and the packager holds) that much media behind the edge.
        """
        p = Packager("LiveApp", "s1", self.clock, segmentTarget=2.0)
        self.assertEqual(p.dashSegments, 19)
        self.assertEqual(p.keep, 22)
        hls_only = Packager("LiveApp", "s1", self.clock, dash=False)
        self.assertEqual(hls_only.keep, 8)
        self.assertRaises(ValueError, Packager, "LiveApp", "s1", self.clock, dashDelay=-1)

    def test_waiters(self) -> None:
        p = self.packager()
        stream = LiveStream("LiveApp", "s1", "RTMP", self.clock.seconds())
        p.attach(stream)
        segment2 = p.wait("video", 2)
        part = p.wait("audio", 1, 2)
        never = p.wait("video", 99)
        later = p.wait("audio", 3)
        cancelled = p.wait("video", 50, 0)
        for d in (segment2, part, never, later, cancelled):
            self.assertNoResult(d)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        fired_at: dict[str, int] = {}
        segment2.addCallback(lambda ok: fired_at.setdefault("segment2", len(self.segments(p, "video"))))
        part.addCallback(lambda ok: fired_at.setdefault("part", len(p.segmenter.audio.parts)))
        for tag in play(stream, self.clock, clip_tags(av_clip())):
            if tag.timestamp > 5000:
                break
        self.assertTrue(self.successResultOf(segment2))
        self.assertTrue(self.successResultOf(part))
        self.assertEqual(fired_at, {"segment2": 2, "part": 3})
        self.assertNoResult(later)
        self.assertNoResult(never)
        # Already there: at once.
        self.assertTrue(self.successResultOf(p.wait("video", 1)))
        self.assertTrue(self.successResultOf(p.wait("video", 2, 7)))
        self.assertTrue(self.successResultOf(p.wait("video", 3, 0)))
        self.assertFalse(self.successResultOf(p.wait("data", 1)))
        # Too many waiters: the overflow fails at once.
        many = [p.wait("video", 1000 + i) for i in range(MAX_WAITERS - 2)]
        for d in many:
            self.assertNoResult(d)
        self.assertFalse(self.successResultOf(p.wait("video", 5000)))
        many[0].cancel()
        self.failureResultOf(many[0], CancelledError)
        extra = p.wait("video", 5000)
        self.assertNoResult(extra)
        self.assertFalse(self.successResultOf(p.wait("video", 5001)))
        # The end: later segments come, the rest fail.
        stream.end()
        self.assertTrue(self.successResultOf(later))
        self.assertFalse(self.successResultOf(never))
        self.assertFalse(self.successResultOf(extra))
        for d in many[1:]:
            self.assertFalse(self.successResultOf(d))
        self.assertFalse(self.successResultOf(p.wait("video", 99)))
        self.assertTrue(self.successResultOf(p.wait("video", 3)))
        self.assertFalse(self.successResultOf(p.wait("video", 4)))

    def test_wait_part_of_segment_that_ended(self) -> None:
        """
        A hinted part that never comes (the segment ended first) still
        releases a blocking reload, but is not served.
        """
        p = self.packager()
        stream = LiveStream("LiveApp", "s1", "RTMP", self.clock.seconds())
        p.attach(stream)
        d = p.wait("video", 1, 9)
        for tag in play(stream, self.clock, clip_tags(av_clip())):
            if self.segments(p, "video"):
                break
        self.assertTrue(self.successResultOf(d))
        self.assertIsNone(p.part("video", 1, 9))


class BoundsTests(PackagerTestCase):
    def test_byte_cap(self) -> None:
        """Past maxBytes the oldest segments go, whatever the window."""
        p = self.packager(segmentTarget=1.0, windowSegments=5, extraSegments=3, maxBytes=120_000)
        stream = LiveStream("LiveApp", "s1", "RTMP", self.clock.seconds())
        p.attach(stream)
        checks = 0
        for _ in play(stream, self.clock, clip_tags(av_clip())):
            held = sum(len(s.data) for kind in ("video", "audio") for s in self.segments(p, kind))
            open_bytes = p.segmenter.video.openBytes + p.segmenter.audio.openBytes
            if len(self.segments(p, "video")) > 1 and len(self.segments(p, "audio")) > 1:
                self.assertLessEqual(held + open_bytes, 120_000)
                checks += 1
        self.assertGreater(checks, 100)
        stream.end()
        video = self.segments(p, "video")
        self.assertLess(len(video), 8)
        self.assertEqual(video[-1].msn, 8)
        self.assertIsNone(p.segment("video", 1))
        text = p.hlsMedia("video", "")
        assert text is not None
        playlist = parse_media(self, text, "video", "")
        self.assertEqual(playlist.sequence, video[0].msn)

    def test_window(self) -> None:
        p = self.packager(segmentTarget=1.0, windowSegments=2, extraSegments=1)
        publish(p, self.clock, av_clip())
        for kind in ("video", "audio"):
            self.assertEqual([s.msn for s in self.segments(p, kind)], [6, 7, 8])
            text = p.hlsMedia(kind, "")
            assert text is not None
            playlist = parse_media(self, text, kind, "")
            self.assertEqual([s.msn for s in playlist.segments], [7, 8])
            self.assertIsNotNone(p.segment(kind, 6))  # extra: still served
            self.assertIsNone(p.segment(kind, 5))


class SingleTrackTests(PackagerTestCase):
    def test_video_only(self) -> None:
        p = self.packager()
        publish(p, self.clock, video_clip())
        self.assertTrue(p.hasVideo)
        self.assertFalse(p.hasAudio)
        self.assertEqual([s.duration for s in self.segments(p, "video")], [180000] * 3)
        self.assertIsNone(p.hlsMedia("audio", ""))
        text = p.hlsMultivariant("")
        assert text is not None
        parsed = parse_multivariant(self, text, "")
        self.assertEqual(parsed["media"], [])
        (variant,) = parsed["variants"]
        self.assertRegex(variant["CODECS"], r"^avc1\.[0-9a-f]{6}$")
        self.assertNotIn("AUDIO", variant)
        self.assertEqual(variant["URI"], "s1/video.m3u8")
        text = p.hlsMedia("video", "")
        assert text is not None
        self.assertEqual(parse_media(self, text, "video", "").reports, [])
        top = self.write_tree(p)
        self.assertEqual(decode_errors(os.path.join(top, "s1.m3u8")), "")
        info, errors = ffprobe(os.path.join(top, "s1", "s1.mpd"))
        self.assertEqual(errors, "")
        self.assertEqual([s["codec_type"] for s in info["streams"]], ["video"])

    def test_audio_only(self) -> None:
        """Without video, audio segments are cut by time."""
        p = self.packager()
        publish(p, self.clock, audio_clip())
        self.assertFalse(p.hasVideo)
        self.assertTrue(p.hasAudio)
        audio = self.segments(p, "audio")
        self.assertEqual([s.msn for s in audio], [1, 2, 3])
        for s in audio[:-1]:
            self.assertTrue(2.0 <= s.duration / 48000 < 2.0 + 1024 / 48000)
        text = p.hlsMultivariant("q=1")
        assert text is not None
        parsed = parse_multivariant(self, text, "q=1")
        (variant,) = parsed["variants"]
        self.assertEqual(variant["CODECS"], "mp4a.40.2")
        self.assertEqual(variant["URI"], "s1/audio.m3u8")
        self.assertNotIn("RESOLUTION", variant)
        top = self.write_tree(p)
        self.assertEqual(decode_errors(os.path.join(top, "s1.m3u8")), "")
        info, errors = ffprobe(os.path.join(top, "s1", "s1.mpd"))
        self.assertEqual(errors, "")
        self.assertEqual([s["codec_type"] for s in info["streams"]], ["audio"])

    def test_other_video_codec_ignored(self) -> None:
        """A video codec other than H.264 is ignored: the audio goes on alone."""
        tags = []
        for tag in clip_tags(av_clip()):
            if tag.kind == TAG_VIDEO:
                # Claim codec 12 (HEVC in some legacy FLV extensions).
                tag = Tag(tag.kind, tag.timestamp, bytes([tag.body[0] & 0xF0 | 12]) + tag.body[1:])
            tags.append(tag)
        p = self.packager()
        publish(p, self.clock, tags)
        self.assertFalse(p.hasVideo)
        self.assertEqual(len(self.segments(p, "audio")), 4)

    def test_two_byte_nal_lengths(self) -> None:
        """An avcC with 2-byte NAL lengths is rewritten to 4-byte ones."""
        tags = []
        for tag in clip_tags(av_clip()):
            if tag.kind == TAG_VIDEO:
                v = parse_video_tag(tag.body)
                if v.avc_packet_type == 0:
                    record = AVCDecoderConfigurationRecord.parse(v.data)
                    body = tag.body[:5] + AVCDecoderConfigurationRecord(
                        record.profile, record.compat, record.level, 1, record.sps, record.pps,
                        record.chroma_format, record.bit_depth_luma_minus8,
                        record.bit_depth_chroma_minus8,
                    ).build()  # fmt: skip
                    tag = Tag(tag.kind, tag.timestamp, body)
                elif v.avc_packet_type == AVC_NALU:
                    nals = b"".join(
                        len(n).to_bytes(2, "big") + bytes(n) for n in length_prefixed_nals(v.data)
                    )
                    tag = Tag(
                        tag.kind,
                        tag.timestamp,
                        build_video_tag(tag.body[0] >> 4, nals, composition_time=v.composition_time),
                    )
            tags.append(tag)
        p = self.packager()
        publish(p, self.clock, tags)
        init = p.init("video")
        assert init is not None
        self.assertEqual(root(init).child("moov").kind, b"moov")
        segments = [p.segment("video", s.msn) for s in self.segments(p, "video")]
        self.assertEqual(len(segments), 4)
        self.assertTrue(all(segments))
        info = self.probe(self.write("v.mp4", init, *segments))  # type: ignore[arg-type]
        self.assertEqual(int(info["streams"][0]["nb_read_frames"]), len(source_video(av_clip())))

    def test_audio_ahead_of_video(self) -> None:
        """
        A publisher sending audio 300 ms ahead of video: audio is held back
        until video reaches it, so the cuts stay aligned.
        """
        tags = clip_tags(av_clip())
        headers = 3  # metadata, video and audio sequence headers
        self.assertEqual([t.kind for t in tags[:headers]], [TAG_SCRIPT, TAG_VIDEO, TAG_AUDIO])
        tags = tags[:headers] + sorted(
            tags[headers:], key=lambda t: t.timestamp - (300 if t.kind == TAG_AUDIO else 0)
        )
        self.assertEqual(tags[headers].kind, TAG_AUDIO)
        p = self.packager()
        publish(p, self.clock, tags)
        video = self.segments(p, "video")
        audio = self.segments(p, "audio")
        self.assertEqual([s.msn for s in audio], [s.msn for s in video])
        self.assertEqual(len(video), 4)
        for v, a in zip(video, audio):
            self.assertClose(a.start / 48000, v.start / 90000, delta=512 / 48000)


class RepublishTests(PackagerTestCase):
    def test_republish_same_configuration(self) -> None:
        """
        A second publication continues the numbers after a discontinuity,
        on a timeline that follows the wall clock; DASH gets a new Period.
        """
        p = self.packager()
        publish(p, self.clock, av_clip())
        self.assertTrue(p.ended)
        self.clock.advance(5)
        restart = self.clock.seconds()
        stream = LiveStream("LiveApp", "s1", "RTMP", self.clock.seconds())
        p.attach(stream)
        self.assertFalse(p.ended)
        self.assertEqual(p.generation, 2)
        for tag in play(stream, self.clock, clip_tags(av_clip())):
            pass
        for kind in ("video", "audio"):
            text = p.hlsMedia(kind, "s=1")
            assert text is not None
            playlist = parse_media(self, text, kind, "s=1")
            self.assertFalse(playlist.ended)
            msns = [s.msn for s in playlist.segments]
            self.assertEqual(msns, [3, 4, 5, 6, 7])
            self.assertEqual([s.discontinuity for s in playlist.segments], [False, False, True, False, False])
            self.assertEqual(playlist.maps, [f"{kind}/init.mp4"])  # same configuration
            first = playlist.segments[2]
            assert first.date is not None
            self.assertClose(first.date.timestamp(), restart + 0.08, delta=0.03)
        stream.end()
        text = p.dashMpd("")
        assert text is not None
        mpd = parse_mpd(self, text, "")
        periods = mpd.findall(MPD_NS + "Period")
        self.assertEqual([x.get("id") for x in periods], ["p0", "p1"])
        # Static: the live timeline is kept (presentation time is media
        # time), so the second period starts where it started live.
        self.assertClose(seconds(periods[1].get("start", "")), restart - START + 0.08, delta=0.002)
        for period in periods:
            adaptations = period.findall(MPD_NS + "AdaptationSet")
            self.assertEqual(sorted(a.get("contentType", "") for a in adaptations), ["audio", "video"])
            for adaptation in adaptations:
                template = next(adaptation.iter(MPD_NS + "SegmentTemplate"))
                kind = adaptation.get("contentType", "")
                held = [s for s in self.segments(p, kind)[-5:] if s.period == int(period.get("id", "p")[1:])]
                self.assertEqual(template.get("startNumber"), str(held[0].msn))
                self.assertEqual(timeline(template), [(s.start, s.duration) for s in held])
        # Each publication decodes cleanly on its own.
        for kind in ("video", "audio"):
            init = p.init(kind)
            assert init is not None
            second = [p.segment(kind, msn) for msn in (5, 6, 7, 8)]
            self.assertTrue(all(second), kind)
            self.probe(self.write(f"{kind}.mp4", init, *second))  # type: ignore[arg-type]

    def test_republish_new_configuration(self) -> None:
        """A new resolution gets a new init URI; the old one stays served."""
        p = self.packager(windowSegments=4, extraSegments=2)
        publish(p, self.clock, av_clip())
        old = p.init("video")
        self.clock.advance(2)
        publish(p, self.clock, small_clip())
        text = p.hlsMedia("video", "s=1")
        assert text is not None
        playlist = parse_media(self, text, "video", "s=1")
        self.assertEqual(playlist.maps, ["video/init.mp4", "video/init-1.mp4"])
        self.assertEqual(
            [s.map for s in playlist.segments], ["video/init.mp4"] * 2 + ["video/init-1.mp4"] * 2
        )
        self.assertEqual([s.discontinuity for s in playlist.segments], [False, False, True, False])
        self.assertEqual(p.resource("video", "init.mp4"), old)
        new = p.resource("video", "init-1.mp4")
        self.assertNotEqual(new, old)
        self.assertEqual(p.init("video"), new)
        # Audio did not change.
        text = p.hlsMedia("audio", "s=1")
        assert text is not None
        self.assertEqual(parse_media(self, text, "audio", "s=1").maps, ["audio/init.mp4"])
        assert new is not None
        segments = [p.segment("video", 5) or b"", p.segment("video", 6) or b""]
        self.assertTrue(all(segments))
        info = self.probe(self.write("v.mp4", new, *segments))
        self.assertEqual(info["streams"][0]["width"], 160)
        text = p.dashMpd("")
        assert text is not None
        mpd = parse_mpd(self, text, "")
        inits = [t.get("initialization") for t in mpd.iter(MPD_NS + "SegmentTemplate")]
        self.assertIn("video/init.mp4", inits)
        self.assertIn("video/init-1.mp4", inits)
        # Once the old segments leave, so does the old init.
        for _ in range(2):
            self.clock.advance(2)
            publish(p, self.clock, small_clip())
        self.assertEqual({s.init for s in self.segments(p, "video")}, {1})
        self.assertIsNone(p.resource("video", "init.mp4"))
        self.assertEqual(p.resource("video", "init-1.mp4"), new)

    def test_query_everywhere(self) -> None:
        """Every URI of every document carries the query, even odd ones."""
        p = self.packager()
        stream = LiveStream("LiveApp", "s1", "RTMP", self.clock.seconds())
        p.attach(stream)
        for tag in play(stream, self.clock, clip_tags(av_clip())):
            if tag.timestamp > 5100:
                break
        query = "s=a.b_c-d~e&t=%2F"
        for kind in ("video", "audio"):
            text = p.hlsMedia(kind, query)
            assert text is not None
            parse_media(self, text, kind, query)
            uris = re.findall(r'URI="([^"]*)"', text)
            uris += [x for x in text.splitlines() if not x.startswith("#")]
            self.assertTrue(uris)
            for uri in uris:
                check_uri(self, uri, query)
        text = p.hlsMultivariant(query)
        assert text is not None
        parse_multivariant(self, text, query)
        text = p.dashMpd(query)
        assert text is not None
        parse_mpd(self, text, query)
        # An empty query adds nothing.
        for text in (p.hlsMedia("video", ""), p.hlsMultivariant(""), p.dashMpd("")):
            assert text is not None
            self.assertNotIn("?", text.replace('<?xml version="1.0" encoding="UTF-8"?>', ""))
        # Characters that would break a document are encoded.
        text = p.hlsMedia("video", 's="x"\n')
        assert text is not None
        self.assertIn("?s=%22x%22%0A", text)
        self.assertNotIn('"x"', text)


class LeaderTests(PackagerTestCase):
    """Who cuts segments when one track is missing for a while."""

    def test_video_pause(self) -> None:
        """
        Video silent for 4 s while audio goes on: audio takes the lead (cut
        by time), the video playlist marks the missing numbers as gaps, and
        video takes the lead back at its next keyframe.
        """
        tags = [
            t for t in clip_tags(av_clip())
            if not (t.kind == TAG_VIDEO and 2000 <= t.timestamp < 6000 and t.body[1] == AVC_NALU)
        ]  # fmt: skip
        p = self.packager(segmentTarget=1.0, windowSegments=8, extraSegments=0)
        publish(p, self.clock, tags)
        video = self.segments(p, "video")
        audio = self.segments(p, "audio")
        msns = [s.msn for s in video]
        self.assertEqual(msns, list(range(msns[0], msns[0] + len(msns))))
        gaps = [s.msn for s in video if s.data is None]
        self.assertTrue(gaps)
        self.assertEqual([s.msn for s in audio], list(range(audio[0].msn, audio[-1].msn + 1)))
        self.assertNotIn(None, [s.data for s in audio])
        # Both timelines stay without holes (gaps included), so that HLS
        # players summing EXTINFs keep the tracks together; the segments
        # after the pause line up again.
        for track in (video, audio):
            for previous, following in zip(track, track[1:]):
                self.assertEqual(previous.start + previous.duration, following.start)
        self.assertClose(
            sum(s.duration for s in video) / 90000, sum(s.duration for s in audio) / 48000, 0.03
        )
        after = [s for s in video if s.msn > gaps[-1]]
        self.assertTrue(after)
        for v in after:
            a = next(s for s in audio if s.msn == v.msn)
            self.assertClose(a.start / 48000, v.start / 90000, delta=512 / 48000)
        text = p.hlsMedia("video", "")
        assert text is not None
        playlist = parse_media(self, text, "video", "")
        self.assertEqual([s.msn for s in playlist.segments if s.gap], gaps)
        self.assertEqual(p.resource("video", f"{gaps[0]}.m4s"), None)
        text = p.dashMpd("")
        assert text is not None
        parse_mpd(self, text, "")
        # The video around the pause still decodes.
        init = p.init("video")
        assert init is not None
        data = [s.data for s in video if s.data is not None]
        self.assertTrue(data)
        self.assertTrue(all(data))
        info = self.probe(self.write("v.mp4", init, *data))
        self.assertEqual(int(info["streams"][0]["nb_read_frames"]), sum(s.frames for s in video))

    def test_late_video(self) -> None:
        """
        Audio first (no video configuration yet) leads; video arriving later
        takes over with a cut at its first keyframe.
        """
        tags = clip_tags(av_clip())
        header = next(t for t in tags if t.kind == TAG_VIDEO)
        late: list[Tag] = []
        for t in tags:
            if t.kind == TAG_VIDEO and t.timestamp < 3000:
                continue
            if t.kind == TAG_VIDEO and header not in late:
                late.append(header)
            late.append(t)
        p = self.packager()
        publish(p, self.clock, late)
        video = self.segments(p, "video")
        audio = self.segments(p, "audio")
        self.assertEqual(audio[0].msn, 1)
        self.assertGreater(video[0].msn, 1)
        self.assertNotIn(None, [s.data for s in video + audio])
        self.assertClose(video[0].start / 90000, 3.08, delta=0.001)
        for v in video:
            a = next(s for s in audio if s.msn == v.msn)
            self.assertClose(a.start / 48000, v.start / 90000, delta=512 / 48000)
        top = self.write_tree(p)
        self.assertEqual(decode_errors(os.path.join(top, "s1.m3u8")), "")


class AttachTests(PackagerTestCase):
    def test_attach(self) -> None:
        """
        Attaching the same stream twice subscribes once; a stream
        subscribed directly also works, and a new one replaces it.
        """
        p = self.packager()
        first = LiveStream("LiveApp", "s1", "RTMP", self.clock.seconds())
        p.attach(first)
        p.attach(first)
        self.assertEqual(first.subscribers, [p])
        self.assertEqual(p.generation, 1)
        second = LiveStream("LiveApp", "s1", "RTMP", self.clock.seconds())
        second.subscribe(p)
        self.assertEqual(first.subscribers, [])
        self.assertEqual(p.generation, 2)
        first.end()  # the old one ending does not end the new one
        self.assertFalse(p.ended)
        for _ in play(second, self.clock, clip_tags(av_clip())):
            pass
        second.end()
        self.assertTrue(p.ended)
        self.assertEqual(len(self.segments(p, "video")), 4)
        # An ended stream ends the packager at once.
        third = LiveStream("LiveApp", "s1", "RTMP", self.clock.seconds())
        third.end()
        p.attach(third)
        self.assertTrue(p.ended)

    def test_formats_disabled(self) -> None:
        p = self.packager(hls=False)
        publish(p, self.clock, audio_clip())
        self.assertIsNone(p.hlsMultivariant(""))
        self.assertIsNone(p.hlsMedia("audio", ""))
        self.assertIsNotNone(p.dashMpd(""))
        p = self.packager(dash=False)
        publish(p, self.clock, audio_clip())
        self.assertIsNone(p.dashMpd(""))
        self.assertIsNotNone(p.hlsMedia("audio", ""))
        self.assertRaises(ValueError, self.packager, partTarget=3.0)
        self.assertRaises(ValueError, self.packager, windowSegments=0)
