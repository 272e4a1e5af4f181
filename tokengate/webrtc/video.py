# -*- test-case-name: tests.test_webrtc_video -*-
"""
Video transcoding to H.264 for WebRTC: a WebRTC publisher's VP8 to H.264
for the hub, and H.264 with B-frames (an RTMP or SRT source) to H.264
without them for WebRTC viewers (WebRTC has no frame reordering: browsers
drop nearly every frame of such a stream).

Browsers that cannot send H.264 send VP8; HLS, DASH, MP4, RTMP and our
WebRTC players all carry H.264, so such a publisher's video is decoded and
encoded again (libx264, constrained baseline, no B-frames, zero latency)
once, into the hub.  The work runs on one worker thread per publisher
(never on the reactor) behind a bounded queue: when the thread falls
behind, frames are dropped up to the next keyframe and the source is asked
for one.  Every keyframe of the input becomes an IDR with SPS/PPS in front,
and one can be forced (L{VideoTranscoder.forceKeyframe}), so viewers
joining and keyframe requests work as with H.264 passed through.  The
output keeps the first frame's size (later frames are scaled to it: a
browser lowers its resolution under load, and a changing size would break
the HLS/DASH renditions).

How many streams may be transcoded at once is bounded (L{TranscodeSlots},
shared by both uses); over it, a VP8-only publisher, or the first WebRTC
viewer of a stream with B-frames, is refused (C{highResourceUsage}).
"""

from __future__ import annotations

import fractions
import queue
import threading
from typing import Any, Callable, Optional
from tokengate.logsafe import Logger


_log = Logger()

#: encoded VP8 frames a transcoder may have waiting
MAX_PENDING = 30
VIDEO_CLOCK = 90000
TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)


def vp8_is_keyframe(data: bytes) -> bool:
    """
    Whether a VP8 frame is a keyframe (RFC 6386 section 9.1: the frame
    tag's first bit is 0 for a keyframe).
    """
    return bool(data) and data[0] & 0x01 == 0


def h264_level(width: int, height: int) -> str:
    """
    The H.264 level to announce for a picture size at up to 30 frames a
    second (x264 would derive one from the 90 kHz timestamps' "frame
    rate", far too high for hardware decoders).
    """
    macroblocks = ((width + 15) // 16) * ((height + 15) // 16)
    for level, frameSize in (("3.0", 1620), ("3.1", 3600), ("4.0", 8192), ("5.1", 36864)):
        if macroblocks <= frameSize:
            return level
    return "5.2"


class TranscodeSlots:
    """
    At most C{limit} concurrent transcodes (0: none).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def give(self) -> None:
        self.used = max(0, self.used - 1)


class VideoTranscoder:
    """
    Decode (VP8, or H.264 with B-frames), encode H.264 Annex B
    (constrained baseline, no B-frames), on a worker thread.

    @param decoder: the FFmpeg decoder: C{"vp8"} or C{"h264"}.
    @param deliver: called in the reactor thread (through
        C{callFromThread}) with each encoded access unit: (Annex B bytes,
        its pts in 90 kHz units, the same as its input frame's, whether it
        is an IDR).
    @param wantKeyframe: called in the reactor thread when frames were
        dropped and the next usable one is a keyframe.
    """

    def __init__(self, callFromThread: Callable[..., Any],
                 deliver: Callable[[bytes, int, bool], None],
                 wantKeyframe: Callable[[], None], decoder: str = "vp8",
                 preset: str = "veryfast", maxPending: int = MAX_PENDING) -> None:
        self._callFromThread = callFromThread
        self._deliver = deliver
        self._wantKeyframe = wantKeyframe
        self._decoderName = decoder
        self._preset = preset
        self._queue: "queue.Queue[Optional[tuple[bytes, int, int, bool]]]" = \
            queue.Queue(maxPending)
        self._skipping = True  # until the first keyframe
        self._forceKey = False
        self.framesIn = 0
        self.framesOut = 0
        self.dropped = 0
        self.failed = False
        self._thread = threading.Thread(target=self._run, name="tokengate-to-h264",
                                        daemon=True)
        self._thread.start()

    # --- the reactor side ---------------------------------------------------------

    def frame(self, data: bytes, pts: int, key: bool, dts: Optional[int] = None) -> None:
        """
        An encoded frame (pts, and dts for H.264 with B-frames, in 90 kHz
        units, extended: no wrap); C{key} when it is a keyframe.
        """
        if self.failed:
            return
        if self._skipping and not key:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait((data, pts, pts if dts is None else dts, key))
            self._skipping = False
            self.framesIn += 1
        except queue.Full:
            self.dropped += 1
            if not self._skipping:
                self._skipping = True
                self._wantKeyframe()

    def forceKeyframe(self) -> None:
        """
        Make the next encoded frame an IDR (a new viewer, a picture loss).
        """
        self._forceKey = True

    def close(self) -> None:
        """
        Stop the worker thread (it finishes the frame at hand, drops the
        rest).
        """
        self.failed = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        try:
            self._queue.put_nowait(None)
        except queue.Full:  # pragma: no cover - just emptied
            pass

    # --- the worker thread -----------------------------------------------------------

    def _run(self) -> None:
        import av

        I, NONE = av.video.frame.PictureType.I, av.video.frame.PictureType.NONE
        decoder = av.CodecContext.create(self._decoderName, "r")
        assert isinstance(decoder, av.VideoCodecContext)
        encoder: Any = None
        size: Optional[tuple[int, int]] = None
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                data, pts, dts, key = item
                packet = av.Packet(data)
                packet.pts, packet.dts = pts, dts
                packet.time_base = TIME_BASE
                try:
                    frames = decoder.decode(packet)
                except av.FFmpegError:
                    # A frame whose references were lost: wait for a keyframe.
                    self._skipping = True
                    self._callFromThread(self._wantKeyframe)
                    continue
                for f in frames:
                    if size is None:
                        size = (f.width - f.width % 2, f.height - f.height % 2)
                        encoder = self._encoder(*size)
                    idr = f.key_frame or self._forceKey
                    self._forceKey = False
                    fpts = f.pts
                    if (f.width, f.height) != size or f.format.name != "yuv420p":
                        f = f.reformat(width=size[0], height=size[1], format="yuv420p")
                    f.pts = fpts
                    f.time_base = TIME_BASE
                    f.pict_type = I if idr else NONE
                    for p in encoder.encode(f):
                        self.framesOut += 1
                        self._callFromThread(self._deliver, bytes(p), int(p.pts),
                                             bool(p.is_keyframe))
        except Exception:
            self.failed = True
            _log.failure("transcoding {decoder} to H.264 failed; no more of this video",
                         decoder=self._decoderName)
        finally:
            del decoder, encoder

    def _encoder(self, width: int, height: int) -> Any:
        import av

        enc = av.CodecContext.create("libx264", "w")
        enc.width = width
        enc.height = height
        enc.pix_fmt = "yuv420p"
        enc.time_base = TIME_BASE
        # No frame rate: the timestamps are the input's (variable rate).
        enc.gop_size = 300  # keyframes follow the input's
        enc.max_b_frames = 0
        enc.options = {"preset": self._preset, "tune": "zerolatency", "profile": "baseline",
                       "level": h264_level(width, height),
                       "x264-params": "forced-idr=1:repeat-headers=1:scenecut=0"}
        enc.open()
        return enc


class Vp8ToH264(VideoTranscoder):
    """
    A VP8 publisher's video as H.264 for the hub.
    """

    def __init__(self, callFromThread: Callable[..., Any],
                 deliver: Callable[[bytes, int, bool], None],
                 wantKeyframe: Callable[[], None], **kw: Any) -> None:
        super().__init__(callFromThread, deliver, wantKeyframe, decoder="vp8", **kw)

    def frame(self, data: bytes, pts: int, key: Optional[bool] = None,
              dts: Optional[int] = None) -> None:
        super().frame(data, pts, vp8_is_keyframe(data) if key is None else key)
