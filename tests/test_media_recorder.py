"""
Tests for L{tokengate.media.recorder}: MP4 recordings of live streams.

A real six-second H.264 (B-frames) + AAC clip made by ffmpeg is published
through a L{LiveStream} with a L{RecordingManager} subscribed, on the real
reactor (the recorder's worker threads need it); every wait is bounded.  The
results are checked with ffprobe and ffmpeg (skipped when missing), and with
the box reader of L{tests.test_media_fmp4}.  The crash test kills a
recording subprocess with SIGKILL and recovers what it left behind.  The
long-recording tests finalize and recover 1.5 million tiny samples (about
5.8 hours) in subprocesses whose peak memory is measured.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import unittest
import zlib
from typing import Any, Callable, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs, formatEvent
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from tests.test_media_codecs import decode_errors, ffmpeg_output, ffprobe, require, run
from tests.test_media_fmp4 import read_progressive, root, table_entries
from tokengate.apps import Applications
from tokengate.media import outputs as outputs_module
from tokengate.media import recorder as recorder_module
from tokengate.media.recorder import finalize as finalize_module
from tokengate.media.recorder import journal as journal_module
from tokengate.media.codecs import (
    AAC_RAW,
    AVC_NALU,
    FRAME_KEY,
    build_avcc_from_sps_pps,
    build_sps,
    build_video_tag,
    parse_audio_tag,
    parse_video_tag,
)
from tokengate.media.flv import TAG_AUDIO, TAG_VIDEO, iter_flv_tags
from tokengate.media.hub import Hub, ISubscriber, LiveStream
from tokengate.media.fmp4 import write_progressive_mp4
from tokengate.media.recorder import (
    ATTEMPTS,
    CONFIG,
    INDEX,
    JOURNAL_MAGIC,
    MAX_RECOVERY_ATTEMPTS,
    ROW_SIZE,
    SPOOL,
    RecordingManager,
    RecordingRefused,
    build_tracks,
    read_journal,
    valid_name,
)
from tokengate.config import ServerConfig
from tokengate.server import Server
from tokengate.store.memory import MemoryTokenStore

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Every wait on the reactor gives up after this many seconds.
WAIT = 60.0


def clip6_path() -> str:
    """Six seconds of 320x240 25 fps H.264 (2 B-frames, GOP 25) and 48 kHz AAC, in FLV."""
    return ffmpeg_output(
        "clip6.flv",
        "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
        "-f", "lavfi", "-i", "sine=sample_rate=48000",
        "-t", "6", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
        "-g", "25", "-bf", "2", "-c:a", "aac", "-f", "flv",
    )  # fmt: skip


Tag = tuple[int, int, bytes]  # FLV tag type, timestamp ms, body

_tags: Optional[list[Tag]] = None


def clip6() -> list[Tag]:
    """The clip's audio and video tags, sequence headers included, in file order."""
    global _tags
    if _tags is None:
        with open(clip6_path(), "rb") as f:
            data = f.read()
        _tags = [
            (tag.tag_type, tag.timestamp, bytes(tag.data))
            for tag in iter_flv_tags(data)
            if tag.tag_type in (TAG_AUDIO, TAG_VIDEO)
        ]
    return _tags


def media(tags: list[Tag], kind: int) -> list[bytes]:
    """The sample bytes (NAL units, raw AAC) of C{kind} tags, in order."""
    out = []
    for tag_type, _, body in tags:
        if tag_type == kind == TAG_VIDEO:
            v = parse_video_tag(body)
            if v.avc_packet_type == AVC_NALU:
                out.append(bytes(v.data))
        elif tag_type == kind == TAG_AUDIO:
            a = parse_audio_tag(body)
            if a.aac_packet_type == AAC_RAW:
                out.append(bytes(a.data))
    # compared with what was recorded: an empty list would match an empty track
    assert out, f"no {'video' if kind == TAG_VIDEO else 'audio'} samples in {len(tags)} tags"
    return out


def bounded(d: "Deferred[Any]", timeout: float = WAIT) -> "Deferred[Any]":
    return d.addTimeout(timeout, reactor)


def pause(seconds: float = 0.0) -> "Deferred[None]":
    return deferLater(reactor, seconds, lambda: None)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await pause(0.005)


async def feed(stream: LiveStream, tags: list[Tag], every: int = 20) -> None:
    """Publish C{tags}, letting the reactor run every C{every} tags."""
    for i, (tag_type, timestamp, body) in enumerate(tags):
        if tag_type == TAG_VIDEO:
            stream.videoReceived(timestamp, body)
        else:
            stream.audioReceived(timestamp, body)
        if i % every == every - 1:
            await pause()


def top_level(path: str) -> list[bytes]:
    """The kinds of the top-level boxes of a file."""
    kinds = []
    with open(path, "rb") as f:
        while True:
            head = f.read(8)
            if len(head) < 8:
                return kinds
            size, kind = struct.unpack(">I4s", head)
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0]
                f.seek(size - 16, 1)
            else:
                f.seek(size - 8, 1)
            kinds.append(kind)


class RecorderTestCase(TestCase):
    timeout = 180

    def setUp(self) -> None:
        require("ffmpeg")
        require("ffprobe")
        self.directory = os.path.abspath(self.mktemp())
        self.hub = Hub()

    def manager(self, **options: Any) -> RecordingManager:
        options.setdefault("flushInterval", 0.05)
        options.setdefault("fsyncInterval", 0.1)
        manager = RecordingManager(self.directory, reactor, **options)
        self.addCleanup(lambda: bounded(manager.close()))
        return manager

    def probe(self, path: str) -> dict[str, Any]:
        info, errors = ffprobe(path)
        self.assertEqual(errors, "", f"ffprobe complained about {path}")
        self.assertEqual(decode_errors(path), "", f"ffmpeg could not decode {path} cleanly")
        self.assertEqual(top_level(path), [b"ftyp", b"moov", b"mdat"])
        return info

    def streams(self, info: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {s["codec_type"]: s for s in info["streams"]}

    def app_dir(self, app: str = "live") -> list[str]:
        try:
            return sorted(os.listdir(os.path.join(self.directory, app)))
        except FileNotFoundError:
            return []


class RecordingTests(RecorderTestCase):
    """Live recordings made into MP4s."""

    async def test_recording(self) -> None:
        """
        The whole clip, published live, becomes a faststart MP4 of 6 s with
        every one of its 150 video frames and every AAC frame, byte for byte,
        with even timing; the .rec directory is gone.
        """
        tags = clip6()
        manager = self.manager(flushBytes=64 * 1024)
        stream = self.hub.publish("live", "show", "RTMP")
        recorder = manager.start(stream)
        verifyObject(ISubscriber, recorder)
        self.assertTrue(manager.active("live", "show"))
        await feed(stream, tags)
        await until(lambda: recorder.recordingDirectory is not None)
        recdir = recorder.recordingDirectory
        assert recdir is not None
        self.assertEqual(os.path.basename(recdir), f"show.{recorder.started}.rec")
        stream.end()
        path = await bounded(recorder.whenFinished())
        self.assertEqual(path, manager.pathFor("live", "show"))
        self.assertEqual(path, os.path.join(self.directory, "live", "show.mp4"))
        self.assertFalse(manager.active("live", "show"))
        self.assertEqual(self.app_dir(), ["show.mp4"])
        self.assertIsNone(recorder.dropped)

        info = self.probe(path)
        streams = self.streams(info)
        video, audio = streams["video"], streams["audio"]
        self.assertEqual((video["codec_name"], video["width"], video["height"]), ("h264", 320, 240))
        self.assertEqual((audio["codec_name"], audio["sample_rate"]), ("aac", "48000"))
        self.assertEqual(video["nb_read_frames"], "150")
        self.assertEqual(int(audio["nb_read_frames"]), len(media(tags, TAG_AUDIO)))
        self.assertApproximates(float(info["format"]["duration"]), 6.0, 0.1)
        self.assertApproximates(float(video["duration"]), 6.0, 0.05)

        with open(path, "rb") as f:
            data = f.read()
        samples = read_progressive(data)
        self.assertEqual(samples[1], media(tags, TAG_VIDEO))
        self.assertEqual(samples[2], media(tags, TAG_AUDIO))
        traks = [c for c in root(data).child("moov").children if c.kind == b"trak"]
        stts = [table_entries(t.child("mdia/minf/stbl/stts"), 2) for t in traks]
        self.assertEqual(stts[0], [(150, 3600)])
        self.assertEqual(stts[1], [(len(samples[2]), 1024)])

    async def test_video_only(self) -> None:
        """A stream without audio records a video-only MP4."""
        tags = [t for t in clip6() if t[0] == TAG_VIDEO]
        manager = self.manager()
        stream = self.hub.publish("live", "v", "RTMP")
        recorder = manager.start(stream)
        await feed(stream, tags)
        stream.end()
        path = await bounded(recorder.whenFinished())
        streams = self.streams(self.probe(path))
        self.assertEqual(list(streams), ["video"])
        self.assertEqual(streams["video"]["nb_read_frames"], "150")

    async def test_audio_only(self) -> None:
        """A stream without video records an audio-only MP4 of 6 s."""
        tags = [t for t in clip6() if t[0] == TAG_AUDIO]
        manager = self.manager()
        stream = self.hub.publish("live", "a", "RTMP")
        recorder = manager.start(stream)
        await feed(stream, tags)
        stream.end()
        path = await bounded(recorder.whenFinished())
        info = self.probe(path)
        streams = self.streams(info)
        self.assertEqual(list(streams), ["audio"])
        self.assertEqual(int(streams["audio"]["nb_read_frames"]), len(media(tags, TAG_AUDIO)))
        self.assertApproximates(float(info["format"]["duration"]), 6.0, 0.1)

    async def test_configuration_change(self) -> None:
        """
        A track whose configuration changes mid-stream stops being recorded
        (an MP4 track has one), with a warning; the other track carries on.
        """
        tags = clip6()
        manager = self.manager()
        stream = self.hub.publish("live", "changed", "RTMP")
        recorder = manager.start(stream)
        await feed(stream, [t for t in tags if t[1] < 2000])
        header = next(
            body for kind, _, body in tags
            if kind == TAG_VIDEO and parse_video_tag(body).is_sequence_header
        )
        stream.videoReceived(1990, header)  # the same again: no change
        other = build_avcc_from_sps_pps(build_sps(100, 31, 640, 480), b"\x68\xee\x3c\x80")
        with capturedLogs() as events:
            stream.videoReceived(2000, build_video_tag(FRAME_KEY, other, avc_packet_type=0))
        self.assertEqual([e["log_level"].name for e in events], ["warn"])
        await feed(stream, [t for t in tags if 2000 <= t[1] < 4000])
        stream.end()
        path = await bounded(recorder.whenFinished())
        info = self.probe(path)
        streams = self.streams(info)
        self.assertEqual(streams["video"]["nb_read_frames"], "50")
        audio = [t for t in tags if t[0] == TAG_AUDIO and t[1] < 4000]
        self.assertEqual(int(streams["audio"]["nb_read_frames"]), len(media(audio, TAG_AUDIO)))

    async def test_no_configuration(self) -> None:
        """
        Without any codec configuration nothing is recorded, and nothing is
        left on disk; frames before their configuration are not recorded.
        """
        manager = self.manager()
        stream = self.hub.publish("live", "nothing", "RTMP")
        recorder = manager.start(stream)
        stream.setMetadata({"width": 320})
        for tag_type, timestamp, body in clip6()[:40]:
            parsed = parse_video_tag(body) if tag_type == TAG_VIDEO else parse_audio_tag(body)
            if parsed.is_sequence_header:
                continue
            if tag_type == TAG_VIDEO:
                stream.videoReceived(timestamp, body)
            else:
                stream.audioReceived(timestamp, body)
        await pause(0.2)
        stream.end()
        self.assertIsNone(await bounded(recorder.whenFinished()))
        self.assertEqual(recorder.samples, 0)
        self.assertFalse(os.path.exists(os.path.join(self.directory, "live")))

    async def test_ended_stream(self) -> None:
        """Recording a stream that already ended finishes at once, with nothing."""
        manager = self.manager()
        stream = self.hub.publish("live", "gone", "RTMP")
        stream.end()
        recorder = manager.start(stream)
        self.assertIsNone(await bounded(recorder.whenFinished()))
        self.assertFalse(manager.active("live", "gone"))

    async def test_republish(self) -> None:
        """
        A republication of the same id while the first recording is still
        being finalized records into its own .rec directory; the later
        recording replaces the earlier one's MP4.
        """
        tags = clip6()
        manager = self.manager()
        first = self.hub.publish("live", "again", "RTMP")
        one = manager.start(first)
        await feed(first, [t for t in tags if t[1] < 2000])
        first.end()
        second = self.hub.publish("live", "again", "RTMP")
        two = manager.start(second)
        self.assertNotEqual(one.state, "done")
        self.assertTrue(manager.active("live", "again"))
        await feed(second, [t for t in tags if t[1] < 4000])
        await until(lambda: two.recordingDirectory is not None)
        self.assertNotEqual(one.recordingDirectory, two.recordingDirectory)
        finished: list[str] = []
        one.whenFinished().addCallback(lambda _: finished.append("one"))
        second.end()
        path_two = await bounded(two.whenFinished())
        path_one = await bounded(one.whenFinished())
        finished.append("two")
        self.assertEqual(finished, ["one", "two"])
        self.assertEqual(path_one, path_two)
        self.assertEqual(self.app_dir(), ["again.mp4"])
        info = self.probe(path_two)
        self.assertEqual(self.streams(info)["video"]["nb_read_frames"], "100")
        self.assertApproximates(float(info["format"]["duration"]), 4.0, 0.1)

    async def test_close(self) -> None:
        """
        Closing the manager ends live recordings and finalizes them; it
        refuses new ones afterwards.
        """
        manager = self.manager()
        stream = self.hub.publish("live", "shutdown", "RTMP")
        recorder = manager.start(stream)
        await feed(stream, [t for t in clip6() if t[1] < 2000])
        await bounded(manager.close())
        self.assertNotIn(recorder, stream.subscribers)
        self.assertEqual(recorder.result, manager.pathFor("live", "shutdown"))
        assert recorder.result is not None
        info = self.probe(recorder.result)
        self.assertEqual(self.streams(info)["video"]["nb_read_frames"], "50")
        self.assertRaises(RuntimeError, manager.start, self.hub.publish("live", "late", "RTMP"))
        await bounded(manager.close())  # twice is fine

    def test_names(self) -> None:
        """Application and stream names that could escape the directory are refused."""
        manager = RecordingManager(self.directory, reactor)
        self.assertEqual(
            manager.pathFor("live", "Cam_1.hd-2"),
            os.path.join(self.directory, "live", "Cam_1.hd-2.mp4"),
        )
        bad = ["", ".", "..", "../x", "a/b", "a\\b", "x..y", ".hidden", "a b", "x\x00",
               "caf\u00e9", "x" * 201, "/abs"]
        for name in bad:
            self.assertFalse(valid_name(name), name)
            self.assertRaises(ValueError, manager.pathFor, "live", name)
            self.assertRaises(ValueError, manager.pathFor, name, "s")
        stream = self.hub.publish("..", "s", "RTMP")
        self.assertRaises(RecordingRefused, manager.start, stream)
        self.assertRaises(ValueError, manager.start, stream)
        self.assertEqual(stream.subscribers, [])
        self.assertEqual(manager.recorders(), [])
        self.assertFalse(os.path.exists(self.directory))


class TimelineTests(TestCase):
    """L{build_tracks}: timestamps from the journal to the MP4 tables."""

    def configs(self) -> tuple[bytes, bytes]:
        require("ffmpeg")
        avcc = asc = b""
        for tag_type, _, body in clip6():
            if tag_type == TAG_VIDEO and parse_video_tag(body).is_sequence_header:
                avcc = bytes(parse_video_tag(body).data)
            if tag_type == TAG_AUDIO and parse_audio_tag(body).is_sequence_header:
                asc = bytes(parse_audio_tag(body).data)
        self.assertTrue(avcc, "no AVC sequence header in the clip")
        self.assertTrue(asc, "no AAC sequence header in the clip")
        return avcc, asc

    def test_rebase_and_jitter(self) -> None:
        """
        The earliest sample is at 0; millisecond audio timestamps snap to
        whole frames; video starts at a sync sample and the last sample lasts
        the average.
        """
        avcc, asc = self.configs()
        rows = [(1, 0, 1, 1000, 0, False)]  # dropped: before the first sync sample
        rows += [(1, 0, 1, 1040 + 40 * i, 40, i == 0) for i in range(5)]
        rows += [(2, 0, 1, 1010 + round(i * 1024 / 48) + (i % 2), 0, True) for i in range(20)]
        (video, vtable), (audio, atable) = build_tracks(rows, avcc, asc)
        self.assertEqual(list(vtable.dts), [(30 + 40 * i) * 90 for i in range(5)])
        self.assertEqual(list(vtable.durations), [3600] * 5)
        self.assertEqual(list(vtable.cts_offsets), [3600] * 5)
        self.assertEqual(list(atable.dts), [1024 * i for i in range(20)])
        self.assertEqual(list(atable.durations), [1024] * 20)

    def test_discontinuity(self) -> None:
        """
        A publisher restarting its clock does not make the file jump back or
        leap ahead: the timeline continues after the newest sample.
        """
        avcc, asc = self.configs()
        rows = [(1, 0, 1, 500_000 + 40 * i, 0, i % 25 == 0) for i in range(50)]
        rows += [(1, 0, 1, 40 * i, 0, i % 25 == 0) for i in range(50)]
        rows += [(1, 0, 1, 3_000_000 + 40 * i, 0, i % 25 == 0) for i in range(50)]
        [(_, table)] = build_tracks(rows, avcc, None)
        self.assertEqual(list(table.dts), [3600 * i for i in range(150)])
        self.assertEqual(set(table.durations), {3600})

    def test_backwards(self) -> None:
        """Small steps back or repeated times still give increasing decode times."""
        avcc, _ = self.configs()
        rows = [(1, 0, 1, t, 0, True) for t in (0, 40, 40, 30, 120)]
        [(_, table)] = build_tracks(rows, avcc, None)
        dts = list(table.dts)
        self.assertEqual(len(dts), 5)
        self.assertEqual(dts, sorted(set(dts)))
        self.assertEqual(len(table.durations), 5)
        self.assertTrue(all(d > 0 for d in table.durations))


class DiskTests(RecorderTestCase):
    """Slow and full disks."""

    async def test_slow_disk(self) -> None:
        """
        When the writer cannot keep up, the queue stays bounded: the
        recording stops with a logged error and leaves the stream, and what
        already went to the writer is still made into a playable MP4.
        """
        writer = ThreadPool(1, 1, name="slow-disk")
        writer.start()
        self.addCleanup(writer.stop)
        gate = threading.Event()
        self.addCleanup(gate.set)
        manager = self.manager(threadpool=writer, maxQueueBytes=100_000)
        stream = self.hub.publish("live", "slow", "RTMP")
        recorder = manager.start(stream)
        tags = clip6()
        writer.callInThread(gate.wait, WAIT)  # the disk stalls
        await feed(stream, tags[:12])
        await until(lambda: recorder._inflight is not None)  # the first batch waits for it
        self.assertGreater(recorder.queuedBytes, 0)
        with capturedLogs() as events:
            await feed(stream, tags[12:])
        self.assertIsNotNone(recorder.dropped)
        self.assertIn("not keeping up", recorder.dropped or "")
        self.assertNotIn(recorder, stream.subscribers)
        self.assertLessEqual(recorder.queuedBytes, 100_000)
        self.assertLessEqual(manager._queued, 100_000)
        errors = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["streamId"], "slow")
        gate.set()
        path = await bounded(recorder.whenFinished())
        self.assertEqual(manager._queued, 0)
        assert path is not None
        frames = int(self.streams(self.probe(path))["video"]["nb_read_frames"])
        self.assertTrue(0 < frames < 150, frames)

    async def test_disk_full(self) -> None:
        """
        A failing write (a full disk) stops the recording with a logged
        error; the samples written before it still make an MP4.
        """
        calls = []
        original = journal_module._write_all

        def write_all(fd: int, views: list[memoryview]) -> None:
            calls.append(fd)
            if len(calls) > 2:  # the second batch's bytes
                raise OSError(errno.ENOSPC, "No space left on device")
            original(fd, views)

        self.patch(journal_module, "_write_all", write_all)
        manager = self.manager(flushBytes=16 * 1024)
        stream = self.hub.publish("live", "full", "RTMP")
        recorder = manager.start(stream)
        await feed(stream, clip6(), every=5)
        await until(lambda: recorder.state != "recording")
        self.assertIn("No space left", recorder.dropped or "")
        self.assertNotIn(recorder, stream.subscribers)
        path = await bounded(recorder.whenFinished())
        self.assertGreaterEqual(len(self.flushLoggedErrors(OSError)), 1)
        assert path is not None
        frames = int(self.streams(self.probe(path))["video"]["nb_read_frames"])
        self.assertTrue(0 < frames < 150, frames)
        self.assertEqual(self.app_dir(), ["full.mp4"])

    async def test_finalize_fails(self) -> None:
        """
        When the MP4 cannot be written, the .rec directory is kept, and
        recovery at the next start makes the MP4.
        """

        def no_space(*args: Any, **kwargs: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        original = finalize_module.write_progressive_mp4
        self.patch(finalize_module, "write_progressive_mp4", no_space)
        manager = self.manager()
        stream = self.hub.publish("live", "later", "RTMP")
        recorder = manager.start(stream)
        await feed(stream, clip6())
        stream.end()
        with capturedLogs() as events:
            self.assertIsNone(await bounded(recorder.whenFinished()))
        self.assertTrue(any(e["log_level"].name == "error" for e in events))
        recdir = recorder.recordingDirectory
        assert recdir is not None
        self.assertEqual(self.app_dir(), [os.path.basename(recdir)])
        self.assertEqual(sorted(os.listdir(recdir)), ["config", "index", "media.spool"])
        self.patch(finalize_module, "write_progressive_mp4", original)
        paths = await bounded(self.manager().recover())
        self.assertEqual(paths, [manager.pathFor("live", "later")])
        self.assertEqual(self.app_dir(), ["later.mp4"])
        self.assertEqual(self.streams(self.probe(paths[0]))["video"]["nb_read_frames"], "150")


CRASH_SCRIPT = r"""
import os, signal, sys
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from tokengate.media.flv import TAG_AUDIO, TAG_VIDEO, iter_flv_tags
from tokengate.media.hub import Hub
from tokengate.media.recorder import RecordingManager

directory, clip, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def main():
    with open(clip, "rb") as f:
        data = f.read()
    stream = Hub().publish("live", "crashed", "RTMP")
    manager = RecordingManager(directory, reactor, flushInterval=0.05)
    recorder = manager.start(stream)
    for i, tag in enumerate(iter_flv_tags(data)):
        if tag.timestamp >= limit:
            break
        body = bytes(tag.data)
        if tag.tag_type == TAG_VIDEO:
            stream.videoReceived(tag.timestamp, body)
        elif tag.tag_type == TAG_AUDIO:
            stream.audioReceived(tag.timestamp, body)
        if i % 20 == 19:
            await deferLater(reactor, 0.002, lambda: None)
    for _ in range(2000):  # until the writer has written everything
        if not recorder.queuedBytes:
            break
        await deferLater(reactor, 0.005, lambda: None)
    print(recorder.samples, recorder.recordingDirectory, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

def crashed(failure):
    failure.printTraceback()
    os._exit(3)

reactor.callWhenRunning(lambda: ensureDeferred(main()).addErrback(crashed))
reactor.run()
"""


class RecoveryTests(RecorderTestCase):
    """Recordings cut short by a crash."""

    def crash(self, limit_ms: int) -> tuple[int, str]:
        """Record the clip's first C{limit_ms} in a process that then kills itself."""
        env = dict(os.environ, PYTHONPATH=PROJECT)
        result = subprocess.run(
            [sys.executable, "-c", CRASH_SCRIPT, self.directory, clip6_path(), str(limit_ms)],
            cwd=PROJECT, env=env, capture_output=True, text=True, timeout=WAIT,
        )  # fmt: skip
        self.assertEqual(result.returncode, -signal.SIGKILL, result.stderr)
        samples, recdir = result.stdout.split()
        return int(samples), recdir

    async def test_crash(self) -> None:
        """
        A recording killed with SIGKILL half way is recovered at the next
        start, torn journal row and stray spool bytes notwithstanding;
        broken leftovers are moved aside or removed, without failing.
        """
        samples, recdir = self.crash(3000)
        self.assertTrue(os.path.isdir(recdir))
        expected = [t for t in clip6() if t[1] < 3000]
        self.assertEqual(samples, len(media(expected, TAG_VIDEO)) + len(media(expected, TAG_AUDIO)))
        index = os.path.join(recdir, INDEX)
        self.assertEqual((os.path.getsize(index) - len(JOURNAL_MAGIC)) % ROW_SIZE, 0)
        self.assertEqual(len(read_journal(recdir, verify=True)), samples)
        with open(index, "ab") as f:
            f.write(b"\x01\x01" + b"\xff" * (ROW_SIZE - 7))  # a torn row
        with open(os.path.join(recdir, SPOOL), "ab") as f:
            f.write(b"\x00" * 5000)  # bytes no row describes

        live = os.path.join(self.directory, "live")
        corrupt = os.path.join(live, "bad.123.rec")
        os.mkdir(corrupt)
        with open(os.path.join(corrupt, "config"), "w") as f:
            f.write("{not json")
        with open(os.path.join(corrupt, INDEX), "wb") as f:
            f.write(JOURNAL_MAGIC)
        empty = os.path.join(live, "empty.5.rec")
        os.mkdir(empty)
        os.utime(empty, (time.time() - 3600, time.time() - 3600))
        fresh = os.path.join(live, "fresh.6.rec")
        os.mkdir(fresh)
        os.mkdir(os.path.join(self.directory, "not an app"))

        manager = self.manager()
        with capturedLogs() as events:
            paths = await bounded(manager.recover())
        path = os.path.join(live, "crashed.mp4")
        self.assertEqual(paths, [path])
        self.assertEqual(self.app_dir(), ["bad.123.corrupt", "crashed.mp4", "fresh.6.rec"])
        self.assertTrue(any("bad.123.corrupt" in str(e.get("aside")) for e in events))

        info = self.probe(path)
        streams = self.streams(info)
        self.assertEqual(streams["video"]["nb_read_frames"], str(len(media(expected, TAG_VIDEO))))
        self.assertEqual(
            int(streams["audio"]["nb_read_frames"]), len(media(expected, TAG_AUDIO))
        )
        self.assertApproximates(float(info["format"]["duration"]), 3.0, 0.1)
        with open(path, "rb") as f:
            recorded = read_progressive(f.read())
        self.assertEqual(recorded[1], media(expected, TAG_VIDEO))
        self.assertEqual(await bounded(manager.recover()), [])

    async def test_damaged_spool(self) -> None:
        """
        Recovery keeps the samples before the first one whose bytes do not
        match their checksum (a power loss can leave such holes).
        """
        _, recdir = self.crash(2000)
        rows = read_journal(recdir)
        video = [r for r in rows if r[0] == 1]
        damaged = video[30]
        with open(os.path.join(recdir, SPOOL), "r+b") as f:
            f.seek(damaged[1])
            f.write(b"\x00" * damaged[2])
        paths = await bounded(self.manager().recover())
        info = self.probe(paths[0])
        self.assertEqual(self.streams(info)["video"]["nb_read_frames"], "30")

    async def test_live_recording_left_alone(self) -> None:
        """Recovery does not touch the .rec directory of a live recording."""
        manager = self.manager()
        stream = self.hub.publish("live", "busy", "RTMP")
        recorder = manager.start(stream)
        await feed(stream, clip6()[:60])
        await until(lambda: recorder.recordingDirectory is not None)
        other = self.manager()
        self.assertEqual(await bounded(other.recover()), [])
        self.assertEqual(await bounded(manager.recover()), [])
        self.assertTrue(os.path.isdir(recorder.recordingDirectory or ""))
        stream.end()
        path = await bounded(recorder.whenFinished())
        self.assertEqual(self.app_dir(), ["busy.mp4"])
        assert path is not None
        self.probe(path)

    async def test_missing_directory(self) -> None:
        """Recovery of a directory that does not exist yet finds nothing."""
        self.assertEqual(await bounded(self.manager().recover()), [])


class JournalTests(TestCase):
    """The journal's format, read back."""

    def test_config_and_rows(self) -> None:
        """The config is JSON with base64 configurations; rows are fixed-size."""
        directory = self.mktemp()
        os.makedirs(directory)
        disk = journal_module.JournalWriter(directory, "s", 42, 1.0)
        data = [memoryview(b"abc"), memoryview(b"defgh")]
        disk.write({"video": None, "audio": "EZA="}, data,
                   [(2, 0, 3, 10, 0, True), (2, 3, 5, 31, 0, True)], True)
        recdir = os.path.join(directory, "s.42.rec")
        self.assertEqual(disk.dir, recdir)
        with open(os.path.join(recdir, "config")) as f:
            self.assertEqual(json.load(f), {"video": None, "audio": "EZA=", "started": 42})
        self.assertEqual(os.path.getsize(os.path.join(recdir, INDEX)),
                         len(JOURNAL_MAGIC) + 2 * ROW_SIZE)
        self.assertEqual(read_journal(recdir, verify=True),
                         [(2, 0, 3, 10, 0, True), (2, 3, 5, 31, 0, True)])
        self.assertRaises(OSError, disk.write, None, data[:1], [(2, 8, 3, 50, 0, True)], False)
        # a second recording of the same id in the same millisecond
        again = journal_module.JournalWriter(directory, "s", 42, 1.0)
        again.write({"video": None, "audio": None}, [], [], True)
        self.assertEqual(again.dir, os.path.join(directory, "s.43.rec"))


# ---------------------------------------------------------------------------
# Long recordings, bounded memory
# ---------------------------------------------------------------------------

_AVCC = build_avcc_from_sps_pps(build_sps(66, 30, 320, 240), b"\x68\xce\x3c\x80")
_ASC = b"\x11\x90"  # AAC LC, 48 kHz, stereo
_HEAD = struct.Struct("<BBHIQqiI")


def synthetic_recording(
    appDir: str, streamId: str, samples: int, started: int = 1000, restart: Optional[int] = None
) -> tuple[str, int, int]:
    """
    Write the C{.rec} directory a recording of C{samples} tiny samples
    leaves: 25 fps video (two B-frames, a sync sample every 50) and 48 kHz
    AAC whose millisecond times jitter, interleaved by time as a publisher
    sends them.  With C{restart}, the publisher's clock restarts at 0 after
    that many samples.  Returns the directory and the video and audio
    sample counts.
    """
    recdir = os.path.join(appDir, f"{streamId}.{started}.rec")
    os.makedirs(recdir)
    config = {"format": "tokengate-recording", "version": 1, "app": "live", "streamId": streamId,
              "video": base64.b64encode(_AVCC).decode(), "audio": base64.b64encode(_ASC).decode(),
              "started": started}
    with open(os.path.join(recdir, CONFIG), "w") as f:
        json.dump(config, f)
    keys = [bytes((0, 0, 0, k + 1, 0x65)) + bytes(k) for k in range(3)]
    others = [bytes((0, 0, 0, k + 1, 0x41)) + bytes(k) for k in range(3)]
    sounds = [b"\x21" + bytes(k) for k in range(2, 4)]
    crcs = {p: zlib.crc32(p) for p in keys + others + sounds}
    pack, crc32, crc = _HEAD.pack, zlib.crc32, struct.Struct("<I").pack
    v = a = offset = clock = 0
    with open(os.path.join(recdir, INDEX), "wb") as index, open(
        os.path.join(recdir, SPOOL), "wb"
    ) as spool:
        index.write(JOURNAL_MAGIC)
        rows: list[bytes] = []
        data: list[bytes] = []
        for i in range(samples):
            if i == restart:
                clock = -40 * v  # the publisher's clock starts again at 0
            vt, at = 40 * v, a * 1024 * 1000 // 48000 + a % 2
            if vt <= at:
                cto = 80 if v == 0 else (160, 40, 40)[(v - 1) % 3]
                sync = v % 50 == 0
                payload = (keys if sync else others)[v % 3]
                head = pack(1, sync, 0, len(payload), offset, vt + clock, cto, crcs[payload])
                v += 1
            else:
                payload = sounds[a % 2]
                head = pack(2, 1, 0, len(payload), offset, at + clock, 0, crcs[payload])
                a += 1
            data.append(payload)
            offset += len(payload)
            rows += (head, crc(crc32(head)))
            if len(rows) >= 1 << 16:
                index.write(b"".join(rows))
                spool.write(b"".join(data))
                rows, data = [], []
        index.write(b"".join(rows))
        spool.write(b"".join(data))
    return recdir, v, a


MEASURE_SCRIPT = r"""
import json, sys, time
from tokengate.media.recorder import finalize_recording, recover_directory

def peak():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

before, started = peak(), time.monotonic()
if sys.argv[1] == "finalize":
    result, notes = finalize_recording(sys.argv[2], sys.argv[3])
else:
    result, notes = recover_directory(sys.argv[2])
print(json.dumps({"result": result, "growth": peak() - before, "before": before,
                  "seconds": time.monotonic() - started,
                  "notes": [[level, fmt] for level, fmt, _ in notes]}))
"""

#: What finalizing or recovering a recording may add to the peak memory of
#: the process, whatever the recording's length.  The design needs about
#: 5 MB (blocks of 8192 samples); before, 1.5 million samples took 542 MB.
MEMORY_BOUND = 24 << 20
#: about 5.8 hours of 25 fps video and 48 kHz AAC
LONG_SAMPLES = 1_500_000


def digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class LongRecordingTests(TestCase):
    """Finalizing and recovering recordings of very many samples."""

    timeout = 900

    def measure(self, *args: str) -> dict[str, Any]:
        """Run L{MEASURE_SCRIPT} in a fresh process: its result and peak memory growth."""
        if not os.path.exists("/proc/self/status"):
            raise unittest.SkipTest("needs /proc to measure memory")
        env = dict(os.environ, PYTHONPATH=PROJECT)
        result = subprocess.run(
            [sys.executable, "-c", MEASURE_SCRIPT, *args],
            cwd=PROJECT, env=env, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        measured: dict[str, Any] = json.loads(result.stdout)
        return measured

    def test_long_recording(self) -> None:
        """
        A recording of 1.5 million samples (5.8 hours) is finalized, and the
        same recording cut short by a crash is recovered at start-up, each
        in less than L{MEMORY_BOUND} of extra memory; the two MP4s are the
        same, and ffprobe finds every sample, the duration, and seeks to a
        sync sample.
        """
        ffprobe_path = require("ffprobe")
        directory = os.path.abspath(self.mktemp())
        recdir, videos, audios = synthetic_recording(
            os.path.join(directory, "live"), "long", LONG_SAMPLES
        )
        crashed = directory + ".crashed"
        shutil.copytree(directory, crashed)
        target = os.path.join(directory, "live", "long.mp4")

        finalized = self.measure("finalize", recdir, target)
        self.assertEqual(finalized["result"], target, finalized)
        self.assertLess(finalized["growth"], MEMORY_BOUND, finalized)
        self.assertEqual(os.listdir(os.path.join(directory, "live")), ["long.mp4"])

        recovered = self.measure("recover", crashed)
        path = os.path.join(crashed, "live", "long.mp4")
        self.assertEqual(recovered["result"], [path], recovered)
        self.assertLess(recovered["growth"], MEMORY_BOUND, recovered)
        self.assertEqual(os.listdir(os.path.join(crashed, "live")), ["long.mp4"])
        self.assertEqual(digest(path), digest(target))

        self.assertEqual(top_level(target), [b"ftyp", b"moov", b"mdat"])
        probe = run(
            ffprobe_path, "-v", "quiet", "-count_packets", "-of", "json",
            "-show_entries", "stream=codec_type,nb_read_packets,duration:format=duration", target,
        )  # fmt: skip
        info = json.loads(probe.stdout)
        streams = {s["codec_type"]: s for s in info["streams"]}
        self.assertEqual(int(streams["video"]["nb_read_packets"]), videos)
        self.assertEqual(int(streams["audio"]["nb_read_packets"]), audios)
        self.assertApproximates(float(streams["video"]["duration"]), videos * 0.04, 0.001)
        self.assertApproximates(float(streams["audio"]["duration"]), audios * 1024 / 48000, 0.001)
        self.assertGreater(float(info["format"]["duration"]), 2 * 3600)
        seek = run(
            ffprobe_path, "-v", "quiet", "-select_streams", "v", "-read_intervals", "10000%+#1",
            "-show_entries", "packet=pts_time,flags", "-of", "json", target,
        )  # fmt: skip
        [packet] = json.loads(seek.stdout)["packets"]
        self.assertTrue(packet["flags"].startswith("K"), packet)
        self.assertTrue(10000 - 2.1 < float(packet["pts_time"]) <= 10000, packet)

    def test_blocks(self) -> None:
        """
        The MP4 written from tables kept on disk in blocks is the one the
        same tables make in memory, across block boundaries and a restart
        of the publisher's clock; its samples are the spool's, in order.
        """
        directory = os.path.abspath(self.mktemp())
        recdir, videos, audios = synthetic_recording(directory, "s", 40_000, restart=25_000)
        rows = read_journal(recdir, verify=True)
        with open(os.path.join(recdir, SPOOL), "rb") as f:
            spool = f.read()
        expected = io.BytesIO()
        tables = build_tracks(rows, _AVCC, _ASC)
        self.assertEqual([len(t) for _, t in tables], [videos, audios])
        write_progressive_mp4(tables, expected, lambda o, n: spool[o : o + n])
        target = os.path.join(directory, "s.mp4")
        path, _ = recorder_module.finalize_recording(recdir, target)
        self.assertEqual(path, target)
        with open(target, "rb") as f:
            data = f.read()
        self.assertEqual(data, expected.getvalue())
        samples = read_progressive(data)
        self.assertGreater(videos, 0)
        self.assertGreater(audios, 0)
        for track in (1, 2):
            self.assertTrue(samples[track], f"track {track} has no samples")
            self.assertEqual(samples[track],
                             [spool[r[1] : r[1] + r[2]] for r in rows if r[0] == track])
        stts = [table_entries(t.child("mdia/minf/stbl/stts"), 2)
                for t in root(data).child("moov").children if t.kind == b"trak"]
        # the restart neither jumps back nor leaves a gap of more than a frame
        self.assertEqual(sum(count for count, _ in stts[0]), videos)
        self.assertTrue(all(3600 <= d < 2 * 3600 for _, d in stts[0]), stts[0])
        self.assertEqual(sum(count for count, _ in stts[1]), audios)
        self.assertTrue(all(1024 <= d < 2 * 1024 for _, d in stts[1]), stts[1])


class RecoveryAttemptTests(TestCase):
    """A recording that cannot be recovered is not tried at every start forever."""

    def test_bounded(self) -> None:
        """
        Recovery tries a .rec directory L{MAX_RECOVERY_ATTEMPTS} times, each
        counted before it starts; then it moves it aside to C{.failed} with
        one error, and later starts leave it alone and say nothing.  With
        its C{attempts} file removed and its name restored it is recovered.
        """
        directory = os.path.abspath(self.mktemp())
        live = os.path.join(directory, "live")
        recdir, _, _ = synthetic_recording(live, "stuck", 1000)
        calls = []

        def no_space(*args: Any, **kwargs: Any) -> int:
            calls.append(args)
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(finalize_module, "write_progressive_mp4", no_space)
        for attempt in range(1, MAX_RECOVERY_ATTEMPTS + 1):
            paths, notes = recorder_module.recover_directory(directory)
            self.assertEqual(paths, [])
            self.assertEqual([n[0] for n in notes], ["warn", "error"])
            self.assertIn("kept for recovery", notes[1][1])
            with open(os.path.join(recdir, ATTEMPTS)) as f:
                self.assertEqual(int(f.read()), attempt)
            self.assertEqual(sorted(os.listdir(live)), ["stuck.1000.rec"])
        self.assertEqual(len(calls), MAX_RECOVERY_ATTEMPTS)

        paths, notes = recorder_module.recover_directory(directory)
        self.assertEqual(paths, [])
        self.assertEqual([n[0] for n in notes], ["error"])
        self.assertEqual(notes[0][2]["aside"], os.path.join(live, "stuck.1000.failed"))
        self.assertEqual(os.listdir(live), ["stuck.1000.failed"])
        self.assertEqual(len(calls), MAX_RECOVERY_ATTEMPTS)
        self.assertEqual(recorder_module.recover_directory(directory), ([], []))

        self.patch(finalize_module, "write_progressive_mp4", write_progressive_mp4)
        os.unlink(os.path.join(live, "stuck.1000.failed", ATTEMPTS))
        os.rename(os.path.join(live, "stuck.1000.failed"), recdir)
        paths, _ = recorder_module.recover_directory(directory)
        self.assertEqual(paths, [os.path.join(live, "stuck.mp4")])

    def test_killed_attempts_count(self) -> None:
        """
        An attempt the process did not survive (killed for its memory, say)
        counts as well: the count is written before the attempt.
        """
        directory = os.path.abspath(self.mktemp())
        recdir, _, _ = synthetic_recording(os.path.join(directory, "live"), "killed", 100)
        with open(os.path.join(recdir, ATTEMPTS), "w") as f:
            f.write(f"{MAX_RECOVERY_ATTEMPTS}\n")
        self.patch(finalize_module, "finalize_recording", lambda *a, **k: self.fail("tried"))
        paths, notes = recorder_module.recover_directory(directory)
        self.assertEqual((paths, [n[0] for n in notes]), ([], ["error"]))
        self.assertFalse(os.path.exists(recdir))


class RefusedNameTests(TestCase):
    """A publication whose name cannot be a recording's file name."""

    def test_refused(self) -> None:
        """
        Stream ids such as C{..} and C{.hidden} are not recorded: one
        warning each, escaped and short, without a traceback, counted in
        C{tokengate_recordings_refused_total}; the publication carries on.
        """
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=reactor,
                        config=ServerConfig(), dataDir=dataDir)
        server.apps.replace("LiveApp", mp4MuxingEnabled=True)
        self.addCleanup(server.outputs.close)
        names = ["..", ".hidden", "x\x1b[31m\n" + "y" * 5000]
        for name in names:
            with capturedLogs() as events:
                stream = server.hub.publish("LiveApp", name, "RTMP")
            self.assertFalse(server.outputs.recordings.active("LiveApp", name))
            mine = [e for e in events if e.get("log_namespace", "").startswith(
                outputs_module.__name__)]
            self.assertEqual([e["log_level"].name for e in mine], ["warn"], mine)
            self.assertFalse(any("log_failure" in e for e in events))
            self.assertFalse(any(e["log_level"].name in ("error", "critical") for e in events))
            text = formatEvent(mine[0])
            self.assertLess(len(text), 300)
            self.assertNotIn("\x1b", text)
            self.assertNotIn("\n", text)
            self.assertIn(stream, server.hub.liveStreams())
            stream.end()
        count = server.metrics.registry.get_sample_value(
            "tokengate_recordings_refused_total", {"reason": "bad_name"})
        self.assertEqual(count, len(names))
        self.assertFalse(os.path.exists(os.path.join(dataDir, "streams")))
