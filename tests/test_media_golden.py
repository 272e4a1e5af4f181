"""
Golden outputs of the media pipeline: a deterministic synthetic publication
(no ffmpeg: H.264 and AAC tag bodies built here from a seeded generator) is
packaged by L{Packager} and recorded by L{Recorder}, and every output --
playlists, MPDs, init segments, media segments, parts, recordings -- is
hashed and compared with C{tests/data/media_golden.json}.

The hashes were recorded before the media modules were split into
C{tokengate.media.codecs}, C{tokengate.media.cmaf} and
C{tokengate.media.recorder} packages; they hold the split (and any later
refactoring) to byte-for-byte the same output.  Regenerate them only for a
deliberate change of output: C{TOKENGATE_GOLDEN_WRITE=1}.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from typing import Any, Optional

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_media_recorder import synthetic_recording
from tokengate.media.codecs import (
    AAC_SEQUENCE_HEADER,
    AVCDecoderConfigurationRecord,
    AVC_SEQUENCE_HEADER,
    FRAME_INTER,
    FRAME_KEY,
    build_audio_tag,
    build_avcc_from_sps_pps,
    build_sps,
    build_video_tag,
)
from tokengate.media.hub import Hub, LiveStream
from tokengate.media.packager import Packager
from tokengate.media.recorder import RecordingManager, finalize_recording, recover_directory

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "media_golden.json")
START = 1_800_000_000.0
QUERY = "token=x&subscriberId=y"

#: (kind, timestamp ms, body): kind "v" video, "a" audio
Tag = tuple[str, int, bytes]


def synthetic(
    seed: int,
    seconds: float,
    width: int,
    height: int,
    *,
    video: bool = True,
    audio: bool = True,
    lead: int = 0,
    nal_size: int = 4,
    gap: tuple[int, int] = (0, 0),
) -> list[Tag]:
    """
    A publication: the sequence headers, then 25 fps H.264 (two B-frames,
    a keyframe every 25 frames, an AUD in front of every fifth frame) and
    48 kHz AAC interleaved by time, with payload bytes from a seeded
    generator.  Audio is sent C{lead} ms ahead of video; NAL units have
    C{nal_size}-byte lengths; no video is sent for the frames in C{gap}.
    """
    rng = random.Random(seed)
    tags: list[Tag] = []
    sps = build_sps(100, 30, width, height, num_units_in_tick=1, time_scale=50)
    pps = b"\x68\xee\x3c\xb0"
    if video:
        avcc = build_avcc_from_sps_pps(sps, pps)
        if nal_size != 4:
            record = AVCDecoderConfigurationRecord.parse(avcc)
            avcc = evolve(record, length_size_minus_one=nal_size - 1).build()
        tags.append(("v", 0, build_video_tag(FRAME_KEY, avcc, avc_packet_type=AVC_SEQUENCE_HEADER)))
    if audio:
        tags.append(("a", 0, build_audio_tag(b"\x11\x90", aac_packet_type=AAC_SEQUENCE_HEADER)))
    frames = int(seconds * 25)
    sounds = int(seconds * 48000 / 1024)
    v = a = 0
    while (video and v < frames) or (audio and a < sounds):
        vt = 40 * v
        at = a * 1024 * 1000 // 48000 + rng.randrange(2)
        if video and v < frames and (not audio or a >= sounds or vt + lead <= at):
            key = v % 25 == 0
            cto = 80 if key else (120, 0, 0)[v % 3]
            nal = bytes((0x65 if key else 0x41,)) + rng.randbytes(rng.randrange(200, 3000 if key else 900))
            body = len(nal).to_bytes(nal_size, "big") + nal
            if v % 5 == 0:
                body = (2).to_bytes(nal_size, "big") + b"\x09\xf0" + body
            if gap[0] <= v < gap[1]:
                v += 1
                continue
            tags.append(("v", vt, build_video_tag(FRAME_KEY if key else FRAME_INTER, body,
                                                  composition_time=cto)))
            v += 1
        else:
            raw = b"\x21" + rng.randbytes(rng.randrange(100, 400))
            tags.append(("a", at, build_audio_tag(raw)))
            a += 1
    return tags


def deliver(stream: LiveStream, tag: Tag) -> None:
    kind, timestamp, body = tag
    if kind == "v":
        stream.videoReceived(timestamp, body)
    else:
        stream.audioReceived(timestamp, body)


class Transcript:
    """Hashes of named outputs, in order."""

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}
        self.resources = 0

    def add(self, name: str, value: Optional[Any]) -> None:
        if value is None:
            digest = "none"
        else:
            data = value.encode() if isinstance(value, str) else bytes(value)
            digest = hashlib.sha256(data).hexdigest()[:24]
        assert name not in self.entries, name
        self.entries[name] = digest


def snapshot(transcript: Transcript, label: str, packager: Packager) -> None:
    """
    Every document and every resource the packager holds now, hashed as one
    entry of C{transcript} (the C{.m4s} resources present are counted).
    """
    out = Transcript()
    out.add(f"{label}/multivariant", packager.hlsMultivariant(QUERY))
    out.add(f"{label}/multivariant-bare", packager.hlsMultivariant())
    for kind in ("video", "audio"):
        out.add(f"{label}/{kind}.m3u8", packager.hlsMedia(kind, QUERY))
        out.add(f"{label}/{kind}-edge", repr(packager.edge(kind)))
    out.add(f"{label}/mpd", packager.dashMpd(QUERY, location="/x/y.mpd"))
    out.add(f"{label}/mpd-bare", packager.dashMpd())
    out.add(f"{label}/bandwidth", str(packager.bandwidth))
    for kind in ("video", "audio"):
        for version in range(4):
            name = "init.mp4" if version == 0 else f"init-{version}.mp4"
            out.add(f"{label}/{kind}/{name}", packager.resource(kind, name))
        edge = packager.edge(kind)
        top = edge[0] if edge is not None else 0
        for msn in range(max(1, top - 12), top + 2):
            out.add(f"{label}/{kind}/{msn}.m4s", packager.resource(kind, f"{msn}.m4s"))
            for part in range(8):
                out.add(f"{label}/{kind}/{msn}.{part}.m4s",
                        packager.resource(kind, f"{msn}.{part}.m4s"))
    transcript.resources += sum(1 for n, h in out.entries.items() if h != "none" and ".m4s" in n)
    lines = "".join(f"{name} {digest}\n" for name, digest in out.entries.items())
    transcript.add(label, lines)


def run_packager(out: Transcript, name: str, publications: list[list[Tag]], every: int,
                 **options: Any) -> None:
    """Publish each publication in turn (real-time clock), snapshotting as it goes."""
    clock = Clock()
    clock.advance(START)
    packager = Packager("live", "show", clock, **options)
    for p, tags in enumerate(publications):
        stream = LiveStream("live", "show", "RTMP", clock.seconds())
        packager.attach(stream)
        base = clock.seconds()
        for i, tag in enumerate(tags):
            due = base + tag[1] / 1000
            if due > clock.seconds():
                clock.advance(due - clock.seconds())
            deliver(stream, tag)
            if i % every == every - 1:
                snapshot(out, f"{name}/p{p}/t{i}", packager)
        stream.end()
        snapshot(out, f"{name}/p{p}/end", packager)
        clock.advance(3.0)
    packager.close()


def packager_transcript() -> Transcript:
    out = Transcript()
    big = synthetic(1, 9.0, 320, 240)
    small = synthetic(2, 5.0, 160, 120)
    run_packager(out, "av", [big, small, big[:120]], every=37)
    run_packager(out, "video", [synthetic(3, 7.0, 320, 240, audio=False)], every=41)
    run_packager(out, "audio", [synthetic(4, 6.0, 320, 240, video=False)], every=43)
    run_packager(out, "edges", [synthetic(9, 12.0, 320, 240, lead=300, nal_size=2, gap=(100, 200)),
                                synthetic(10, 4.0, 320, 240, lead=40)], every=47)
    run_packager(out, "short", [synthetic(5, 12.0, 320, 240)], every=53,
                 segmentTarget=1.0, partTarget=0.3, windowSegments=3, extraSegments=1,
                 maxBytes=400_000, dashDelay=4.0)
    return out


def load() -> dict[str, dict[str, str]]:
    with open(GOLDEN) as f:
        return json.load(f)  # type: ignore[no-any-return]


def compare(case: SynchronousTestCase, section: str, got: dict[str, str]) -> None:
    if os.environ.get("TOKENGATE_GOLDEN_WRITE") == "1":
        data = load() if os.path.exists(GOLDEN) else {}
        data[section] = got
        with open(GOLDEN, "w") as f:
            json.dump(data, f, indent=0, sort_keys=True)
            f.write("\n")
        return
    want = load()[section]
    case.assertTrue(want, f"no recorded outputs in {section}")
    case.assertEqual(sorted(got), sorted(want), "the set of outputs changed")
    changed = [name for name in want if got[name] != want[name]]
    case.assertEqual(changed, [], f"{len(changed)} of {len(want)} snapshots changed")


class PackagerGoldenTests(SynchronousTestCase):
    def test_packager(self) -> None:
        """Playlists, MPDs, inits, segments and parts are byte-for-byte the recorded ones."""
        transcript = packager_transcript()
        # Not vacuous: the publications produced many segments and parts.
        self.assertGreater(transcript.resources, 1000)
        compare(self, "packager", transcript.entries)


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:24]


class RecorderGoldenTests(TestCase):
    timeout = 120

    async def test_recorder(self) -> None:
        """A live recording and a recovered one are byte-for-byte the recorded ones."""
        directory = os.path.abspath(self.mktemp())
        got: dict[str, str] = {}
        hub = Hub()
        manager = RecordingManager(directory, reactor, flushInterval=0.05, fsyncInterval=0.1)
        try:
            for name, tags in (("av", synthetic(6, 6.0, 320, 240)),
                               ("video", synthetic(7, 4.0, 320, 240, audio=False)),
                               ("audio", synthetic(8, 4.0, 320, 240, video=False))):
                stream = hub.publish("live", name, "RTMP")
                recorder = manager.start(stream)
                for i, tag in enumerate(tags):
                    deliver(stream, tag)
                    if i % 20 == 19:
                        await deferLater(reactor, 0, lambda: None)
                stream.end()
                path = await recorder.whenFinished().addTimeout(60, reactor)
                got[f"live/{name}"] = digest(path)
        finally:
            await manager.close().addTimeout(60, reactor)
        # A recording cut short (journal and spool on disk), finalized and recovered.
        app = os.path.join(directory, "rec")
        recdir, _, _ = synthetic_recording(app, "cut", 5000, restart=3000)
        target = os.path.join(app, "cut.mp4")
        result, _ = finalize_recording(recdir, target)
        self.assertEqual(result, target)
        got["finalized/cut"] = digest(target)
        os.unlink(target)
        synthetic_recording(app, "again", 3000)
        recovered, _ = recover_directory(directory)
        self.assertEqual([os.path.basename(p) for p in recovered], ["again.mp4"])
        got["recovered/again"] = digest(recovered[0])
        shutil.rmtree(directory, ignore_errors=True)
        compare(self, "recorder", got)
