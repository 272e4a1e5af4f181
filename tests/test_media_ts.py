"""
Tests for L{tokengate.media.ts}: the MPEG-TS demuxer, on real ffmpeg output
(H.264 without B-frames, GOP 25, and AAC at 48 kHz), fed whole and in
pieces of every size, shifted across the 33-bit wrap, damaged, and compared
with what ffmpeg itself puts in an FLV of the same stream.
"""

from __future__ import annotations

import os
import random
import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.media.codecs import (
    AVCDecoderConfigurationRecord,
    AudioSpecificConfig,
    parse_audio_tag,
    parse_video_tag,
)
from tokengate.media.errors import MediaError
from tokengate.media.flv import TAG_AUDIO, TAG_VIDEO, iter_flv_tags
from tokengate.media.ts import (
    Audio,
    AudioConfig,
    TSDemuxer,
    Video,
    VideoConfig,
    crc32_mpeg2,
)

from .helpers import require
from .test_media_codecs import ffmpeg_output, scratch_dir

def ts_clip(size: str = "320x240", bframes: int = 0) -> str:
    """Three seconds of H.264 (25 fps, GOP 25, no B-frames) and AAC 48 kHz, in MPEG-TS."""
    return ffmpeg_output(
        f"clip-{size}-bf{bframes}.ts",
        "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25",
        "-f", "lavfi", "-i", "sine=sample_rate=48000", "-t", "3",
        "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
        "-g", "25", "-bf", str(bframes), "-c:a", "aac", "-f", "mpegts",
    )  # fmt: skip


def ts_bytes(size: str = "320x240", bframes: int = 0) -> bytes:
    with open(ts_clip(size, bframes), "rb") as f:
        return f.read()


def flv_of_clip(bframes: int = 0) -> str:
    """The same clip remuxed by ffmpeg into FLV (-c copy)."""
    return ffmpeg_output(
        f"clip-320x240-bf{bframes}.flv", "-i", ts_clip(bframes=bframes), "-c", "copy", "-f", "flv"
    )


def demux_all(data: bytes, pieces=None, **kw) -> tuple[list, TSDemuxer]:
    demuxer = TSDemuxer(**kw)
    events: list = []
    if pieces is None:
        events += demuxer.feed(data)
    else:
        pos = 0
        for n in pieces:
            events += demuxer.feed(data[pos : pos + n])
            pos += n
        events += demuxer.feed(data[pos:])
    events += demuxer.flush()
    return events, demuxer


def of(events, cls) -> list:
    return [e for e in events if isinstance(e, cls)]


def count_adts_frames(data: bytes) -> int:
    """Audio frames in a TS, counted the slow way (ffprobe's packet count)."""
    ffprobe = require("ffprobe")
    path = os.path.join(scratch_dir(), "count.ts")
    with open(path, "wb") as f:
        f.write(data)
    out = subprocess.run(
        [ffprobe, "-v", "error", "-select_streams", "a", "-count_packets",
         "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", path],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    return int(out.split()[0])


def shift_timestamps(data: bytes, offset: int) -> bytes:
    """*data* with every PES PTS/DTS moved by *offset* (mod 2**33)."""
    out = bytearray(data)
    for pos in range(0, len(out) - 187, 188):
        b1, b3 = out[pos + 1], out[pos + 3]
        if not b1 & 0x40 or not b3 & 0x10:
            continue
        start = pos + 4 + (1 + out[pos + 4] if b3 & 0x20 else 0)
        if out[start : start + 3] != b"\0\0\1" or out[start + 3] < 0xC0:
            continue
        flags = out[start + 7] >> 6
        fields = [start + 9] + ([start + 14] if flags == 3 else [])
        for i in fields:
            prefix = out[i] & 0xF0
            t = (
                (out[i] >> 1 & 7) << 30 | out[i + 1] << 22 | (out[i + 2] >> 1) << 15
                | out[i + 3] << 7 | out[i + 4] >> 1
            )  # fmt: skip
            t = (t + offset) % (1 << 33)
            out[i] = prefix | (t >> 29 & 0x0E) | 1
            out[i + 1] = t >> 22 & 0xFF
            out[i + 2] = (t >> 14 & 0xFE) | 1
            out[i + 3] = t >> 7 & 0xFF
            out[i + 4] = (t << 1 & 0xFE) | 1
    return bytes(out)


class RealStreamTests(SynchronousTestCase):
    def setUp(self):
        self.data = ts_bytes()
        self.events, self.demuxer = demux_all(self.data)
        # tests compare other demuxings with these events: they must not be empty
        self.assertEqual(len(of(self.events, Video)), 75)
        self.assertTrue(of(self.events, Audio))

    def test_counts(self):
        videos = of(self.events, Video)
        audios = of(self.events, Audio)
        self.assertEqual(len(videos), 75)
        self.assertEqual(len(audios), count_adts_frames(self.data))
        self.assertTrue(138 <= len(audios) <= 144, len(audios))
        self.assertEqual(len(of(self.events, VideoConfig)), 1)
        self.assertEqual(len(of(self.events, AudioConfig)), 1)
        self.assertEqual(self.demuxer.stats["pes_dropped"], 0)
        self.assertEqual(self.demuxer.stats["cc_errors"], 0)
        self.assertEqual(self.demuxer.stats["resyncs"], 0)
        self.assertEqual(self.demuxer.stats["packets"], len(self.data) // 188)
        self.assertEqual((self.demuxer.video_pid, self.demuxer.audio_pid), (0x100, 0x101))

    def test_order(self):
        kinds = [type(e) for e in self.events]
        self.assertLess(kinds.index(VideoConfig), kinds.index(Video))
        self.assertLess(kinds.index(AudioConfig), kinds.index(Audio))

    def test_keyframes(self):
        videos = of(self.events, Video)
        self.assertEqual([i for i, v in enumerate(videos) if v.keyframe], [0, 25, 50])
        for v in videos:
            tag = parse_video_tag(v.tag_body)
            self.assertEqual(tag.is_keyframe, v.keyframe)
            self.assertEqual(tag.avc_packet_type, 1)
            self.assertEqual(tag.composition_time, 0)
            types = [nal[0] & 0x1F for nal in _nals(bytes(tag.data))]
            self.assertNotIn(9, types)  # AUD
            self.assertNotIn(7, types)  # SPS
            self.assertNotIn(8, types)  # PPS
            self.assertEqual(5 in types, v.keyframe)

    def test_timestamps(self):
        videos = of(self.events, Video)
        self.assertEqual([v.timestamp_ms for v in videos], [40 * i for i in range(75)])
        audios = [a.timestamp_ms for a in of(self.events, Audio)]
        self.assertTrue(138 <= len(audios) <= 144, len(audios))
        self.assertEqual(audios, sorted(audios))
        # frames of 1024 samples at 48 kHz: 21.33 ms apart
        self.assertTrue(all(20 <= b - a <= 22 for a, b in zip(audios[1:], audios[2:])))
        self.assertLessEqual(audios[0], 22)
        self.assertLessEqual(abs(audios[-1] - audios[1] - (len(audios) - 2) * 1024000 / 48000), 1)

    def test_config(self):
        config = of(self.events, VideoConfig)[0].tag_body
        tag = parse_video_tag(config)
        self.assertTrue(tag.is_sequence_header)
        self.assertTrue(tag.is_keyframe)
        record = AVCDecoderConfigurationRecord.parse(tag.data)
        self.assertTrue(record.codec_string.startswith("avc1.42"), record.codec_string)
        sps = record.parsed_sps()
        self.assertEqual((sps.width, sps.height), (320, 240))
        audio = parse_audio_tag(of(self.events, AudioConfig)[0].tag_body)
        self.assertTrue(audio.is_sequence_header)
        asc = AudioSpecificConfig.parse(audio.data)
        self.assertEqual((asc.object_type, asc.sample_rate, asc.channel_configuration), (2, 48000, 1))
        self.assertEqual(bytes(audio.data), b"\x11\x88")

    def test_sameAsFFmpegFLV(self):
        """
        The sequence headers equal ffmpeg's own FLV of the same stream, and so
        do the AAC frames, in order.
        """
        with open(flv_of_clip(), "rb") as f:
            tags = list(iter_flv_tags(f.read()))
        video = [bytes(t.data) for t in tags if t.tag_type == TAG_VIDEO]
        audio = [bytes(t.data) for t in tags if t.tag_type == TAG_AUDIO]
        self.assertEqual(of(self.events, VideoConfig)[0].tag_body, video[0])
        # ffmpeg writes an empty AAC header (AF 00) first, then the real one
        headers = [a for a in audio if a[1] == 0]
        self.assertEqual(of(self.events, AudioConfig)[0].tag_body, headers[-1])
        frames = [a for a in audio if a[1] == 1]
        self.assertTrue(frames)
        self.assertEqual([a.tag_body for a in of(self.events, Audio)], frames)
        nalus = [v for v in video if parse_video_tag(v).avc_packet_type == 1]
        self.assertEqual(len(nalus), 75)
        self.assertEqual(len(of(self.events, Video)), len(nalus))
        flv_keys = [parse_video_tag(v).is_keyframe for v in nalus]
        self.assertEqual([v.keyframe for v in of(self.events, Video)], flv_keys)
        # the same slices, once ffmpeg's in-band AUD, SPS and PPS are left out
        for ours, theirs in zip(of(self.events, Video), nalus):
            mine = list(_nals(bytes(parse_video_tag(ours.tag_body).data)))
            ffmpegs = [
                n for n in _nals(bytes(parse_video_tag(theirs).data)) if n[0] & 0x1F not in (7, 8, 9)
            ]
            self.assertEqual(mine, ffmpegs)

    def test_srtPayloadSizes(self):
        for size in (1316, 1456, 188, 1, 187, 189, 7):
            n = -(-len(self.data) // size)
            events, _ = demux_all(self.data, [size] * n)
            self.assertEqual(events, self.events, size)

    @settings(max_examples=40)
    @given(st.lists(st.integers(0, 3000), max_size=60))
    def test_anySplit(self, pieces):
        events, _ = demux_all(self.data, pieces)
        self.assertEqual(events, self.events)

    def test_flushGivesLastFrame(self):
        demuxer = TSDemuxer()
        events = demuxer.feed(self.data)
        self.assertEqual(len(of(events, Video)), 74)
        self.assertEqual(len(of(demuxer.flush(), Video)), 1)

    def test_wrap33(self):
        first = self._firstTimestamp()
        for cut in (0.5, 1.0, 2.2):
            offset = (1 << 33) - first - int(cut * 90000)
            shifted = shift_timestamps(self.data, offset)
            self.assertNotEqual(shifted, self.data)
            events, _ = demux_all(shifted, [1316] * (len(shifted) // 1316 + 1))
            self.assertEqual(events, self.events, cut)

    def _firstTimestamp(self) -> int:
        d = self.data
        for pos in range(0, len(d), 188):
            b3 = d[pos + 3]
            if d[pos + 1] & 0x40 and (d[pos + 1] & 0x1F) << 8 | d[pos + 2] == 0x100:
                start = pos + 4 + (1 + d[pos + 4] if b3 & 0x20 else 0)
                i = start + 9
                return (
                    (d[i] >> 1 & 7) << 30 | d[i + 1] << 22 | (d[i + 2] >> 1) << 15
                    | d[i + 3] << 7 | d[i + 4] >> 1
                )  # fmt: skip
        raise AssertionError("no video PES")


class BFrameTests(SynchronousTestCase):
    def test_compositionTimes(self):
        """
        With B-frames, DTS timestamps and PTS - DTS composition times match
        ffmpeg's FLV of the same stream (up to its choice of origin).
        """
        events, demuxer = demux_all(ts_bytes(bframes=2))
        videos = of(events, Video)
        self.assertEqual(len(videos), 75)
        with open(flv_of_clip(bframes=2), "rb") as f:
            tags = [t for t in iter_flv_tags(f.read()) if t.tag_type == TAG_VIDEO]
        tags = [t for t in tags if parse_video_tag(t.data).avc_packet_type == 1]
        self.assertEqual(len(tags), 75)
        ours = [parse_video_tag(v.tag_body).composition_time for v in videos]
        theirs = [parse_video_tag(t.data).composition_time for t in tags]
        self.assertEqual(ours, theirs)
        self.assertTrue(any(ours))
        self.assertEqual(
            [v.timestamp_ms - videos[0].timestamp_ms for v in videos],
            [t.timestamp - tags[0].timestamp for t in tags],
        )
        ts = [v.timestamp_ms for v in videos]
        self.assertEqual(ts, sorted(ts))


def _nals(data: bytes):
    pos = 0
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        yield data[pos + 4 : pos + 4 + n]
        pos += 4 + n


class DamageTests(SynchronousTestCase):
    def setUp(self):
        self.data = ts_bytes()
        self.clean, _ = demux_all(self.data)
        # tests compare damaged demuxings with these events: they must not be empty
        self.assertEqual(len(of(self.clean, Video)), 75)
        self.assertTrue(of(self.clean, Audio))

    def test_leadingGarbage(self):
        garbage = bytes(random.Random(1).randrange(256) for _ in range(5000)) + b"\x47" * 10
        events, demuxer = demux_all(garbage + self.data)
        self.assertEqual(events, self.clean)
        self.assertGreater(demuxer.stats["resyncs"], 0)

    def test_lostSRTPacket(self):
        """
        A 1456-byte srt-live-transmit payload lost in the middle: the stream
        resyncs, the broken PES are dropped, the rest comes out.
        """
        chunks = [self.data[i : i + 1456] for i in range(0, len(self.data), 1456)]
        damaged = b"".join(chunks[:30] + chunks[31:])
        events, demuxer = demux_all(damaged, [1456] * len(chunks))
        videos = of(events, Video)
        self.assertGreaterEqual(len(videos), 70)
        self.assertLess(len(videos), 75)
        self.assertGreater(demuxer.stats["resyncs"], 0)
        self.assertGreater(demuxer.stats["cc_errors"], 0)
        self.assertGreater(demuxer.stats["pes_dropped"], 0)
        ts = [v.timestamp_ms for v in videos]
        self.assertEqual(ts, sorted(ts))
        self.assertEqual(len(set(ts)), len(ts))
        self.assertTrue(set(ts) <= {40 * i for i in range(75)})

    def test_alignedLoss(self):
        """Seven whole TS packets (one ffmpeg SRT payload) lost: no resync needed."""
        damaged = self.data[: 1316 * 20] + self.data[1316 * 21 :]
        events, demuxer = demux_all(damaged)
        self.assertEqual(demuxer.stats["resyncs"], 0)
        self.assertGreater(demuxer.stats["cc_errors"], 0)
        self.assertGreaterEqual(len(of(events, Video)), 72)

    def test_corruptBytes(self):
        rnd = random.Random(7)
        data = bytearray(self.data)
        for _ in range(200):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        events, demuxer = demux_all(bytes(data), [1316] * 100)
        self.assertGreater(len(of(events, Video)), 20)
        for v in of(events, Video):
            parse_video_tag(v.tag_body)

    def test_maxPesSize(self):
        # audio PES are about 3 KB, key frames 6-8 KB, other frames smaller
        events, demuxer = demux_all(self.data, max_pes_size=5000)
        self.assertEqual(demuxer.stats["pes_dropped"], 3)
        # the SPS and PPS travel with the key frames: no config, no video
        self.assertEqual(of(events, Video), [])
        self.assertEqual(of(events, VideoConfig), [])
        self.assertEqual(demuxer.stats["video_without_config"], 72)
        self.assertEqual(of(events, Audio), of(self.clean, Audio))
        self.assertRaises(MediaError, demux_all, self.data, max_pes_size=5000, strict=True)

    def test_configChange(self):
        events, _ = demux_all(self.data + ts_bytes("160x120"))
        configs = of(events, VideoConfig)
        self.assertEqual(len(configs), 2)
        sizes = [
            AVCDecoderConfigurationRecord.parse(parse_video_tag(c.tag_body).data).parsed_sps()
            for c in configs
        ]
        self.assertEqual([(s.width, s.height) for s in sizes], [(320, 240), (160, 120)])
        self.assertGreaterEqual(len(of(events, Video)), 148)
        ts = [e.timestamp_ms for e in events if isinstance(e, (Video, Audio))]
        self.assertTrue(all(t >= 0 for t in ts))

    def test_videoBeforeConfigDropped(self):
        # start after the first keyframe's packets: P frames before the next SPS
        start = self.data.index(b"\x47\x41\x00", 188 * 40)
        events, demuxer = demux_all(self.data[start:])
        videos = of(events, Video)
        self.assertTrue(videos[0].keyframe)
        self.assertGreater(demuxer.stats["video_without_config"], 0)
        self.assertEqual(len(videos), 50)

    def test_notBytes(self):
        self.assertRaises(MediaError, TSDemuxer().feed, "text")
        self.assertRaises(MediaError, TSDemuxer().feed, 12)

    @given(st.binary(max_size=3000))
    def test_garbage(self, data):
        TSDemuxer().feed(data)
        try:
            d = TSDemuxer(strict=True)
            d.feed(data)
            d.flush()
        except MediaError:
            pass

    @given(st.binary(min_size=1, max_size=200), st.integers(0, 600))
    def test_garbageInRealStream(self, junk, at):
        """
        Junk between two packets costs at most the packet before it (whose
        next sync byte is missing: it might be the truncated one) and the
        PES it belonged to; if that was the first key frame, the first GOP
        goes too, for want of the SPS and PPS.
        """
        data = self.data[: at * 188] + junk + self.data[at * 188 :]
        events, demuxer = demux_all(data)
        self.assertGreaterEqual(demuxer.stats["packets"], len(self.data) // 188 - 1)
        self.assertGreaterEqual(len(of(events, Video)), 50)
        self.assertLessEqual(demuxer.stats["pes_dropped"], 1)
        try:
            demux_all(data, strict=True)
        except MediaError:
            pass

    @settings(max_examples=50)
    @given(st.lists(st.tuples(st.integers(0, 600), st.integers(0, 187), st.integers(0, 255)), max_size=30))
    def test_bitFlips(self, flips):
        data = bytearray(self.data)
        for packet, offset, value in flips:
            data[packet * 188 + offset] = value
        demux_all(bytes(data))
        try:
            demux_all(bytes(data), strict=True)
        except MediaError:
            pass


class PSITests(SynchronousTestCase):
    def test_crc(self):
        # the PAT ffmpeg writes, CRC included, checks to 0
        pat = bytes.fromhex("00b00d0001c100000001f0002ab104b2")
        self.assertEqual(crc32_mpeg2(pat), 0)
        self.assertNotEqual(crc32_mpeg2(pat[:-1] + b"\0"), 0)

    def test_otherStreamTypesIgnored(self):
        pat = _section(0x00, 1, b"\x00\x01\xf0\x00")
        es = b"\x06\xe0\x50\xf0\x00" + b"\x1b\xe1\x00\xf0\x00" + b"\x0f\xe1\x01\xf0\x00"
        pmt = _section(0x02, 1, b"\xe1\x00\xf0\x00" + es)
        data = _psi_packet(0, pat) + _psi_packet(0x1000, pmt)
        demuxer = TSDemuxer()
        demuxer.feed(data + _psi_packet(0x1FFF, b""))
        self.assertEqual((demuxer.video_pid, demuxer.audio_pid), (0x100, 0x101))

    def test_badCrcIgnored(self):
        pat = bytearray(_section(0x00, 1, b"\x00\x01\xf0\x00"))
        pat[-1] ^= 1
        demuxer = TSDemuxer()
        demuxer.feed(_psi_packet(0, bytes(pat)) * 2)
        self.assertEqual(demuxer.stats["psi_errors"], 1)
        self.assertRaises(MediaError, TSDemuxer(strict=True).feed, _psi_packet(0, bytes(pat)) * 2)


def _section(table_id: int, ext: int, body: bytes) -> bytes:
    length = 5 + len(body) + 4
    head = bytes([table_id, 0xB0 | length >> 8, length & 0xFF, ext >> 8, ext & 0xFF, 0xC1, 0, 0])
    crc = crc32_mpeg2(head + body)
    return head + body + crc.to_bytes(4, "big")


_cc: dict[int, int] = {}


def _psi_packet(pid: int, section: bytes) -> bytes:
    cc = _cc.get(pid, -1) + 1 & 15
    _cc[pid] = cc
    payload = b"\x00" + section
    return bytes([0x47, 0x40 | pid >> 8, pid & 0xFF, 0x10 | cc]) + payload + b"\xff" * (184 - len(payload))
