"""
Transcoding a WebRTC publisher's media for the hub: VP8 to H.264
(tokengate.webrtc.video) and Opus/G.711 to AAC (tokengate.webrtc.audio),
with real encoders and decoders from PyAV.
"""

from __future__ import annotations

import fractions
import math
import queue
import struct
import threading

from twisted.trial.unittest import SynchronousTestCase

try:
    import av
except ImportError:  # pragma: no cover
    av = None

from tokengate.media.codecs import split_annexb

TB = fractions.Fraction(1, 90000)


def vp8_frames(count, size=(320, 240), gop=30, start=0):
    """
    VP8 frames from libvpx: (bytes, pts in 90 kHz units), a keyframe every
    C{gop} frames, a picture that changes every frame.
    """
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height = size
    enc.pix_fmt = "yuv420p"
    enc.time_base = TB
    enc.framerate = fractions.Fraction(30, 1)
    enc.gop_size = gop
    enc.bit_rate = 400000
    enc.options = {"deadline": "realtime", "cpu-used": "8"}
    out = []
    for i in range(count):
        f = av.VideoFrame(size[0], size[1], "yuv420p")
        for n, plane in enumerate(f.planes):
            plane.update(bytes([(i * 7 + n * 50) % 256]) * plane.buffer_size)
        f.pts = start + i * 3000
        f.time_base = TB
        out.extend((bytes(p), int(p.pts)) for p in enc.encode(f))
    out.extend((bytes(p), int(p.pts)) for p in enc.encode(None))
    return out


class Collect:
    def __init__(self):
        self.units = []
        self.keys = []
        self.wanted = 0
        self.lock = threading.Lock()

    def call(self, f, *args):
        with self.lock:
            f(*args)

    def deliver(self, data, pts, key):
        self.units.append((data, pts))
        self.keys.append(key)

    def want(self):
        self.wanted += 1


class _Transcoding(SynchronousTestCase):
    """
    A transcoder (L{make}) whose output the test collects; its worker
    thread must end at cleanup.
    """

    def make(self):
        raise NotImplementedError

    def setUp(self):
        if av is None:
            raise self.skipTest("PyAV not installed")
        self.c = Collect()
        self.t = self.make()
        self.addCleanup(self.finish)

    def finish(self):
        self.t.close()
        self.t._thread.join(10)
        self.assertFalse(self.t._thread.is_alive())

    def drain(self, n, timeout=20.0):
        import time

        deadline = time.time() + timeout
        while len(self.c.units) < n and time.time() < deadline:
            time.sleep(0.02)
        return list(self.c.units)


class Vp8ToH264Tests(_Transcoding):
    def make(self):
        from tokengate.webrtc.video import Vp8ToH264

        # room for every frame of a test: the worker may be slower than
        # the test feeds it (test_full_queue checks the bound)
        return Vp8ToH264(self.c.call, self.c.deliver, self.c.want, maxPending=200)

    def test_transcode(self):
        """
        Every VP8 frame becomes an H.264 access unit with the same pts;
        VP8 keyframes become IDRs with SPS/PPS in front; the H.264 is
        constrained baseline at level 3.0 and decodes to the same frames.
        """
        frames = vp8_frames(90)
        keys = {pts for data, pts in frames if data[0] & 1 == 0}
        self.assertEqual(len(keys), 3)
        for data, pts in frames:
            self.t.frame(data, pts)
        units = self.drain(90)
        self.assertEqual([pts for _, pts in units], [pts for _, pts in frames])
        dec = av.CodecContext.create("h264", "r")
        decoded = 0
        for data, pts in units:
            types = [n[0] & 0x1F for n in split_annexb(data)]
            self.assertEqual(5 in types, pts in keys, (pts, types))
            if 5 in types:
                self.assertEqual(types[:2], [7, 8])
                sps = next(n for n in split_annexb(data) if n[0] & 0x1F == 7)
                self.assertEqual(sps[1], 66)  # baseline
                self.assertEqual(sps[3], 30)  # level 3.0
            for f in dec.decode(av.Packet(data)):
                self.assertEqual((f.width, f.height), (320, 240))
                decoded += 1
        self.assertEqual(decoded, 90)
        self.assertEqual(self.t.dropped, 0)

    def test_starts_at_keyframe(self):
        frames = vp8_frames(40)
        for data, pts in frames[1:]:  # the first keyframe is lost
            self.t.frame(data, pts)
        units = self.drain(10)
        self.assertEqual(self.t.dropped, 29)
        self.assertEqual(units[0][1], frames[30][1])

    def test_size_kept(self):
        """
        A publisher that lowers its resolution keeps the first size.
        """
        first = vp8_frames(10)
        smaller = vp8_frames(10, size=(160, 120), start=30000)
        for data, pts in first + smaller:
            self.t.frame(data, pts)
        units = self.drain(20)
        self.assertEqual(len(units), 20)
        dec = av.CodecContext.create("h264", "r")
        sizes = {(f.width, f.height) for data, _ in units for f in dec.decode(av.Packet(data))}
        self.assertEqual(sizes, {(320, 240)})

    def test_full_queue(self):
        """
        When the worker falls behind, frames are dropped up to the next
        keyframe and one is asked for.
        """
        frames = vp8_frames(31)
        worker = self.t._queue
        self.t._queue = queue.Queue(1)  # one the worker does not read
        self.addCleanup(setattr, self.t, "_queue", worker)
        self.t.frame(*frames[0])
        self.t.frame(*frames[1])  # full
        self.assertEqual(self.t.dropped, 1)
        self.assertEqual(self.c.wanted, 1)
        self.t._queue.get_nowait()
        for f in frames[2:30]:
            self.t.frame(*f)
        self.assertEqual(self.t.dropped, 29)
        self.assertEqual(self.c.wanted, 1)
        self.t.frame(*frames[30])  # the keyframe
        self.assertEqual(self.t._queue.get_nowait()[1], frames[30][1])


def h264_with_bframes(count, gop=30):
    """
    H.264 from libx264 with B-frames: (Annex B, pts, dts, keyframe), in
    decode order.
    """
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height = 320, 240
    enc.pix_fmt = "yuv420p"
    enc.time_base = TB
    enc.framerate = fractions.Fraction(30, 1)
    enc.gop_size = gop
    enc.max_b_frames = 3
    enc.options = {"preset": "veryfast", "x264-params": "scenecut=0"}
    out = []
    for i in range(count):
        f = av.VideoFrame(320, 240, "yuv420p")
        for n, plane in enumerate(f.planes):
            plane.update(bytes([(i * 7 + n * 50) % 256]) * plane.buffer_size)
        f.pts = i * 3000
        f.time_base = TB
        out.extend(enc.encode(f))
    out.extend(enc.encode(None))
    return [(bytes(p), int(p.pts), int(p.dts), bool(p.is_keyframe)) for p in out]


class BFramesTests(_Transcoding):
    """
    H.264 with B-frames re-encoded without them (for WebRTC viewers).
    """

    def make(self):
        from tokengate.webrtc.video import VideoTranscoder

        return VideoTranscoder(self.c.call, self.c.deliver, self.c.want, decoder="h264",
                               maxPending=200)

    def test_reordered(self):
        frames = h264_with_bframes(60)
        pts = [p for _, p, _, _ in frames]
        self.assertNotEqual(pts, sorted(pts))  # the source has B-frames
        for data, p, d, key in frames:
            self.t.frame(data, p, key, dts=d)
        # the decoder keeps its reordering delay (here 2 frames) until more come
        units = self.drain(58)
        self.assertEqual(len(units), 58)
        self.assertEqual([p for _, p in units], sorted(pts)[:58])  # in presentation order
        self.assertEqual([p for (_, p), k in zip(units, self.c.keys) if k], [0, 90000])
        dec = av.CodecContext.create("h264", "r")
        types = []
        for data, _ in units:
            types.extend(int(f.pict_type) for f in dec.decode(av.Packet(data)))
        self.assertEqual(len(types), 58)
        self.assertNotIn(int(av.video.frame.PictureType.B), types)

    def test_forced_keyframe(self):
        frames = h264_with_bframes(20)
        for data, p, d, key in frames[:10]:
            self.t.frame(data, p, key, dts=d)
        self.drain(5)
        self.t.forceKeyframe()
        for data, p, d, key in frames[10:]:
            self.t.frame(data, p, key, dts=d)
        self.drain(20)
        # the IDR of the start, and one forced after it
        self.assertGreaterEqual(self.c.keys.count(True), 2)
        self.assertTrue(self.c.keys[0])


class Helpers(SynchronousTestCase):
    def test_keyframe_bit(self):
        from tokengate.webrtc.video import vp8_is_keyframe

        self.assertTrue(vp8_is_keyframe(b"\x50\x00"))
        self.assertFalse(vp8_is_keyframe(b"\x51\x00"))
        self.assertFalse(vp8_is_keyframe(b""))

    def test_levels(self):
        from tokengate.webrtc.video import h264_level

        self.assertEqual(h264_level(640, 480), "3.0")
        self.assertEqual(h264_level(1280, 720), "3.1")
        self.assertEqual(h264_level(1920, 1080), "4.0")
        self.assertEqual(h264_level(3840, 2160), "5.1")
        self.assertEqual(h264_level(7680, 4320), "5.2")

    def test_slots(self):
        from tokengate.webrtc.video import TranscodeSlots

        s = TranscodeSlots(2)
        self.assertTrue(s.take())
        self.assertTrue(s.take())
        self.assertFalse(s.take())
        s.give()
        self.assertTrue(s.take())
        self.assertFalse(TranscodeSlots(0).take())


def g711(codec, count):
    enc = av.CodecContext.create(codec, "w")
    enc.sample_rate = 8000
    enc.layout = "mono"
    enc.format = "s16"
    enc.time_base = fractions.Fraction(1, 8000)
    enc.open()
    out = []
    for i in range(count):
        f = av.AudioFrame(format="s16", layout="mono", samples=160)
        f.sample_rate = 8000
        f.pts = i * 160
        f.planes[0].update(struct.pack("<160h", *[
            int(8000 * math.sin((i * 160 + k) * 2 * math.pi * 440 / 8000)) for k in range(160)]))
        out.extend(bytes(p) for p in enc.encode(f))
    return out


class ToAacTests(SynchronousTestCase):
    def setUp(self):
        if av is None:
            raise self.skipTest("PyAV not installed")

    def check(self, codec, packets, step):
        """
        The AAC decodes: 48 kHz stereo, about as many samples as went in,
        pts continuous in 48 kHz units.
        """
        from tokengate.webrtc.audio import ToAac

        t = ToAac(codec)
        self.assertTrue(t.config.startswith(b"\x11\x90"))  # AAC-LC 48 kHz stereo
        out = []
        for i, data in enumerate(packets):
            out.extend(t.transcode(data, 48000 * 10 + i * step))
        self.assertFalse(t.failed)
        pts = [p for p, _ in out]
        self.assertEqual(pts, list(range(pts[0], pts[0] + 1024 * len(pts), 1024)))
        dec = av.CodecContext.create("aac", "r")
        dec.extradata = t.config
        samples = 0
        for _, raw in out:
            for f in dec.decode(av.Packet(raw)):
                self.assertEqual((f.sample_rate, len(f.layout.channels)), (48000, 2))
                samples += f.samples
        self.assertGreater(samples, len(packets) * step - 3 * 1024)
        return t

    def test_pcmu(self):
        t = self.check("PCMU", g711("pcm_mulaw", 100), 960)
        self.assertEqual(t.clockRate, 8000)

    def test_pcma(self):
        self.check("pcma", g711("pcm_alaw", 100), 960)

    def test_opus(self):
        enc = av.CodecContext.create("libopus", "w")
        enc.sample_rate = 48000
        enc.layout = "stereo"
        enc.format = "s16"
        enc.time_base = fractions.Fraction(1, 48000)
        enc.open()
        packets = []
        for i in range(100):
            f = av.AudioFrame(format="s16", layout="stereo", samples=960)
            f.sample_rate = 48000
            f.pts = i * 960
            f.planes[0].update(struct.pack("<1920h", *[
                int(8000 * math.sin((i * 960 + k // 2) * 2 * math.pi * 440 / 48000))
                for k in range(1920)]))
            packets.extend(bytes(p) for p in enc.encode(f))
        self.check("opus", packets, 960)
