# -*- test-case-name: tests.interop.test_webrtc_media -*-
"""
Audio transcoding for WebRTC with PyAV: the hub's AAC (FLV AACAUDIODATA
tag bodies, after an AudioSpecificConfig) to Opus at 48 kHz for WebRTC
viewers, and a WebRTC publisher's Opus or G.711 to AAC for the hub
(L{ToAac}).

One L{AacToOpus} per live stream is shared by all of its WebRTC viewers:
each AAC frame (the hub hands every subscriber the same L{Frame} object) is
decoded and encoded once, and the Opus packets of the recent frames are kept
so that a viewer that joins (and gets the hub's GOP replayed) finds them
already made.
"""

from __future__ import annotations

import fractions
from collections import deque
from typing import TYPE_CHECKING, Any, Optional, Protocol

from tokengate.logsafe import Logger

if TYPE_CHECKING:
    # PyAV is imported where it is used (it is slow to import).
    from av.audio.codeccontext import AudioCodecContext
    from av.packet import Packet


_log = Logger()

OPUS_RATE = 48000
OPUS_FRAME = 960  # 20 ms
OPUS_TIME_BASE = fractions.Fraction(1, OPUS_RATE)
#: AAC frames whose Opus packets are kept (about 4.5 s at 44.1/48 kHz)
KEEP = 200


class AacFrame(Protocol):
    """
    What L{AacToOpus} reads of a hub frame: an FLV AACAUDIODATA tag body
    (2-byte header, then a raw AAC frame) and its timestamp in ms.
    """

    @property
    def timestamp(self) -> int: ...

    @property
    def body(self) -> bytes: ...


class AacToOpus:
    """
    Decode AAC, resample to 48 kHz stereo s16, encode Opus in 20 ms
    packets.  The packets' pts are in 48 kHz units on the hub's timeline
    (the AAC frame's millisecond timestamp times 48, then continuous).
    """

    def __init__(self, asc: bytes, bitrate: int = 64000) -> None:
        import av

        self.asc = asc
        self._decoder = av.CodecContext.create("aac", "r")
        self._decoder.extradata = asc
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=OPUS_RATE,
                                            frame_size=OPUS_FRAME)
        enc = av.CodecContext.create("libopus", "w")
        enc.sample_rate = OPUS_RATE
        enc.layout = "stereo"
        enc.format = "s16"
        enc.bit_rate = bitrate
        enc.time_base = OPUS_TIME_BASE
        enc.options = {"application": "audio", "frame_duration": "20"}
        self._encoder = enc
        self._next: Optional[int] = None
        self._lastTimestamp: Optional[int] = None
        #: (frame, packets) for the most recent AAC frames
        self._recent: deque[tuple[AacFrame, list[Packet[Any]]]] = deque(maxlen=KEEP)
        self.failed = False

    def packets(self, frame: AacFrame) -> list[Packet[Any]]:
        """
        The Opus packets (C{av.Packet}s, pts in 48 kHz units) for a hub AAC
        frame; empty for an older frame than the last one transcoded that
        is no longer kept, or when the audio cannot be decoded.
        """
        recent = self._recent
        if recent and recent[-1][0] is frame:
            return recent[-1][1]
        if self._lastTimestamp is not None and frame.timestamp <= self._lastTimestamp:
            # (mypy: reversed() over a deque of Packet[Any] infers Any)
            f: AacFrame
            p: list[Packet[Any]]
            for f, p in reversed(recent):
                if f is frame:
                    return p
            return []
        out = self._transcode(frame.body[2:], frame.timestamp)
        self._lastTimestamp = frame.timestamp
        recent.append((frame, out))
        return out

    def _transcode(self, raw: bytes, ms: int) -> list[Packet[Any]]:
        if self.failed:
            return []
        import av

        try:
            pcm = self._decoder.decode(av.Packet(raw))
            start = ms * OPUS_RATE // 1000
            if self._next is None or abs(self._next - start) > OPUS_RATE // 5:
                self._next = start  # the first frame, or a discontinuity: resync
            out: list[Packet[Any]] = []
            for f in pcm:
                f.pts = None
                for r in self._resampler.resample(f):
                    r.pts = self._next
                    r.time_base = OPUS_TIME_BASE
                    self._next += r.samples
                    for p in self._encoder.encode(r):
                        if p.pts is not None and p.pts < 0:
                            p.pts = 0  # the encoder's priming
                        out.append(p)
            return out
        except Exception:
            _log.failure("AAC to Opus transcoding failed; no more WebRTC audio for this stream")
            self.failed = True
            return []


#: WebRTC audio codecs a publisher may send: name -> (FFmpeg decoder, RTP
#: clock rate, channels)
PUBLISHER_AUDIO = {
    "opus": ("libopus", OPUS_RATE, 2),
    "pcmu": ("pcm_mulaw", 8000, 1),
    "pcma": ("pcm_alaw", 8000, 1),
}


class ToAac:
    """
    Decode a WebRTC publisher's audio (Opus, or G.711 PCMU/PCMA), encode
    AAC-LC 48 kHz stereo (FFmpeg's encoder, 1024-sample frames).

    L{config} is the AudioSpecificConfig once the encoder is open;
    L{transcode} takes a packet's payload with its pts in 48 kHz units and
    returns (pts in 48 kHz units, raw AAC frame) pairs on the same count.

    @param codec: a key of L{PUBLISHER_AUDIO} (any case)
    """

    def __init__(self, codec: str = "opus", bitrate: int = 128000) -> None:
        import av

        name, rate, channels = PUBLISHER_AUDIO[codec.lower()]
        self.codec = codec.lower()
        self.clockRate = rate
        decoder = av.CodecContext.create(name, "r")
        if not isinstance(decoder, av.AudioCodecContext):
            raise ValueError("{} is not an audio decoder".format(name))
        self._decoder: AudioCodecContext = decoder
        self._decoder.sample_rate = rate
        self._decoder.layout = "stereo" if channels == 2 else "mono"
        self._resampler = av.AudioResampler(format="fltp", layout="stereo", rate=OPUS_RATE,
                                            frame_size=1024)
        enc = av.CodecContext.create("aac", "w")
        enc.sample_rate = OPUS_RATE
        enc.layout = "stereo"
        enc.format = "fltp"
        enc.bit_rate = bitrate
        enc.time_base = OPUS_TIME_BASE
        enc.open()
        self._encoder = enc
        self.config: bytes = bytes(enc.extradata or b"")
        self._next: Optional[int] = None
        self.failed = False

    def transcode(self, data: bytes, pts: int) -> list[tuple[int, bytes]]:
        if self.failed:
            return []
        import av

        try:
            if self._next is None or abs(self._next - pts) > OPUS_RATE // 5:
                self._next = pts  # the first packet, or a gap: resync
            out: list[tuple[int, bytes]] = []
            for f in self._decoder.decode(av.Packet(data)):
                f.pts = None
                for r in self._resampler.resample(f):
                    r.pts = self._next
                    r.time_base = OPUS_TIME_BASE
                    self._next += r.samples
                    for p in self._encoder.encode(r):
                        if p.pts is None:
                            raise ValueError("the AAC encoder returned a packet without pts")
                        out.append((p.pts, bytes(p)))
            return out
        except Exception:
            _log.failure("{codec} to AAC transcoding failed; no more audio from this publisher",
                         codec=self.codec)
            self.failed = True
            return []
