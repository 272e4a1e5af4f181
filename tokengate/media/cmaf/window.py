# -*- test-case-name: tests.test_media_packager -*-
"""
The live window of a CMAF track: its complete segments (L{Segment}), the
segment in progress, and the bounds on what is held -- a number of
segments per track and a byte budget for all of them (see
L{tokengate.media.packager}).  Also the lookups the HTTP side makes in
it: init segments, segments, parts and the newest part.

Pure code: no I/O, no clock.
"""

from __future__ import annotations

import math
import re
from collections import deque
from typing import Any, Optional, Sequence, Union

from tokengate.media.codecs import AVCDecoderConfigurationRecord
from tokengate.media.errors import MediaError
from tokengate.media.fmp4 import Track

__all__ = [
    "Buffer",
    "Segment",
    "TrackState",
    "dropOldest",
    "trim",
    "capBytes",
    "pruneInits",
    "available",
    "present",
    "edge",
    "trackBandwidth",
    "metadataRate",
    "bandwidths",
    "frameRate",
    "init",
    "segment",
    "part",
    "parseResource",
    "initName",
]

#: Sample bytes as held: C{bytes}, or a view of a frame body.
Buffer = Union[bytes, memoryview]

_RESOURCE = re.compile(
    r"(?:(init)(?:-([1-9][0-9]{0,8}))?\.mp4|(0|[1-9][0-9]{0,11})(?:\.(0|[1-9][0-9]{0,5}))?\.m4s)"
)


class Segment:
    """
    One complete segment of one track.  C{data} is None for a gap (the
    track had no media for that number).  C{parts} holds C{(start, end,
    duration, independent)} for each part, slices of C{data}.  Times are
    in the track timescale.
    """

    __slots__ = ("msn", "start", "duration", "data", "parts", "period", "init", "disc", "frames")

    def __init__(
        self,
        msn: int,
        start: int,
        duration: int,
        data: Optional[bytes],
        parts: tuple[tuple[int, int, int, bool], ...],
        period: int,
        init: int,
        disc: bool,
        frames: int,
    ) -> None:
        self.msn = msn
        self.start = start
        self.duration = duration
        self.data = data
        self.parts = parts
        self.period = period
        self.init = init
        self.disc = disc
        self.frames = frames


class TrackState:
    """
    The packaging state of one track: its configuration and init segments,
    the complete segments held (the window), and the segment in progress
    (written by L{tokengate.media.cmaf.segmenter.Segmenter}).
    """

    __slots__ = (
        "kind",
        "track",
        "timescale",
        "inits",
        "version",
        "nextVersion",
        "configured",
        "nalSize",
        "partTicks",
        "segments",
        "bytes",
        "discDropped",
        "lastPeriod",
        # the segment in progress
        "msn",
        "segStart",
        "segPeriod",
        "segInit",
        "segDisc",
        "segDur",
        "segFrames",
        "parts",
        "partInfo",
        "openBytes",
        "table",
        "payloads",
        "firstDts",
        "firstSync",
        "hasCto",
        "partDur",
        "nextDts",
        "seq",
        # video
        "pending",
        "delay",
        "lastDur",
        "lastMs",
        # audio
        "anchorMs",
        "anchorTicks",
        "count",
    )

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.track: Optional[Track] = None
        self.timescale = 1
        self.inits: dict[int, bytes] = {}
        self.version = -1
        self.nextVersion = 0
        self.configured = False  # a configuration arrived in this publication
        self.nalSize = 4
        self.partTicks = 1.0
        self.segments: deque[Segment] = deque()
        self.bytes = 0
        self.discDropped = 0
        self.lastPeriod: Optional[int] = None
        self.msn: Optional[int] = None
        self.segStart = 0
        self.segPeriod = 0
        self.segInit = 0
        self.segDisc = False
        self.segDur = 0
        self.segFrames = 0
        self.parts: list[bytes] = []
        self.partInfo: list[tuple[int, bool]] = []
        self.openBytes = 0
        # the open part's samples as columns (L{tokengate.media.fmp4.fragment}):
        # four trun fields per sample, the sample bytes, the first one's DTS
        # and sync flag, whether any composition offset is not zero
        self.table: list[int] = []
        self.payloads: list[Buffer] = []
        self.firstDts = 0
        self.firstSync = False
        self.hasCto = False
        self.partDur = 0
        self.nextDts: Optional[int] = None
        self.seq = 0
        self.pending: Optional[tuple[Buffer, int, int, bool]] = None
        self.delay: Optional[int] = None
        self.lastDur = 0
        self.lastMs: Optional[int] = None
        self.anchorMs: Optional[float] = None
        self.anchorTicks = 0
        self.count = 0

    def find(self, msn: int) -> Optional[Segment]:
        segments = self.segments
        if not segments:
            return None
        i = msn - segments[0].msn
        if 0 <= i < len(segments):
            return segments[i]
        return None

    def end(self) -> Optional[int]:
        """The end (ticks) of the last complete segment."""
        if not self.segments:
            return None
        last = self.segments[-1]
        return last.start + last.duration

    def newPublication(self) -> None:
        self.configured = False
        self.pending = None
        self.delay = None
        self.lastMs = None
        self.anchorMs = None
        self.nextDts = None


# ---------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------


def dropOldest(t: TrackState) -> None:
    """Drop the oldest segment of C{t}."""
    segment = t.segments.popleft()
    if segment.data is not None:
        t.bytes -= len(segment.data)
    if segment.disc:
        t.discDropped += 1


def trim(t: TrackState, keep: int) -> None:
    """Keep at most C{keep} complete segments of C{t}."""
    if len(t.segments) > keep:
        while len(t.segments) > keep:
            dropOldest(t)
        pruneInits(t)


def capBytes(tracks: Sequence[TrackState], maxBytes: int) -> None:
    """
    Drop the oldest segments (the lowest number first, never a track's last
    one) until C{tracks} hold at most C{maxBytes}.
    """
    total = sum(t.bytes + t.openBytes for t in tracks)
    while total > maxBytes:
        candidates = [t for t in tracks if len(t.segments) > 1]
        if not candidates:
            break
        t = min(candidates, key=lambda c: c.segments[0].msn)
        before = t.bytes
        dropOldest(t)
        total -= before - t.bytes
    for t in tracks:
        pruneInits(t)


def pruneInits(t: TrackState) -> None:
    """Forget the init segments no held segment (nor the current one) uses."""
    if len(t.inits) <= 1:
        return
    used = {s.init for s in t.segments}
    used.add(t.version)
    if t.msn is not None:
        used.add(t.segInit)
    for version in [v for v in t.inits if v not in used]:
        del t.inits[version]


# ---------------------------------------------------------------------------
# Lookups
# ---------------------------------------------------------------------------


def available(t: TrackState, msn: int, part: Optional[int]) -> bool:
    """Whether segment C{msn} of C{t} is complete, or its part C{part} (or anything later)."""
    segments = t.segments
    if segments and msn <= segments[-1].msn:
        return True
    if t.msn is None or msn > t.msn:
        return False
    if msn < t.msn:
        return True
    return part is not None and part < len(t.parts)


def present(t: TrackState) -> bool:
    """Whether C{t} is being (or was) packaged."""
    return t.track is not None and (bool(t.segments) or bool(t.parts) or t.msn is not None)


def edge(t: TrackState) -> Optional[tuple[int, int]]:
    """
    C{(msn, part)} of the newest part of C{t} (part -1 when the newest
    segment is a gap), or None when there is none.
    """
    if t.msn is not None and t.parts:
        return t.msn, len(t.parts) - 1
    if t.segments:
        last = t.segments[-1]
        return last.msn, len(last.parts) - 1
    return None


def trackBandwidth(t: TrackState) -> tuple[int, int]:
    """(peak, average) bits per second over the held segments, 0 when unknown."""
    peak = 0.0
    total_bytes = 0
    total_ticks = 0
    for s in t.segments:
        if s.data is None or s.duration <= 0:
            continue
        rate = len(s.data) * 8.0 * t.timescale / s.duration
        if rate > peak:
            peak = rate
        total_bytes += len(s.data)
        total_ticks += s.duration
    average = total_bytes * 8.0 * t.timescale / total_ticks if total_ticks else 0.0
    return int(math.ceil(peak)), int(math.ceil(average))


def init(t: TrackState, version: Optional[int] = None) -> Optional[bytes]:
    """Init segment version C{version} of C{t} (by default the current one)."""
    if t.version < 0:
        return None
    return t.inits.get(t.version if version is None else version)


def segment(t: TrackState, msn: int) -> Optional[bytes]:
    """Complete segment C{msn} of C{t}."""
    s = t.find(msn)
    return s.data if s is not None else None


def part(t: TrackState, msn: int, index: int) -> Optional[bytes]:
    """Part C{index} of segment C{msn} of C{t}, complete or in progress."""
    if index < 0:
        return None
    if t.msn == msn:
        return t.parts[index] if index < len(t.parts) else None
    s = t.find(msn)
    if s is None or s.data is None or index >= len(s.parts):
        return None
    start, end, _, _ = s.parts[index]
    return s.data[start:end]


def parseResource(name: str) -> Optional[tuple[Optional[int], int, Optional[int]]]:
    """
    A resource file name: C{init.mp4} or C{init-N.mp4} as C{(N, 0, None)}
    (version 0 for C{init.mp4}), C{MSN.m4s} as C{(None, MSN, None)},
    C{MSN.PART.m4s} as C{(None, MSN, PART)}; None for anything else.
    """
    m = _RESOURCE.fullmatch(name)
    if m is None:
        return None
    if m.group(1):
        return int(m.group(2) or 0), 0, None
    return None, int(m.group(3)), None if m.group(4) is None else int(m.group(4))


def initName(version: int) -> str:
    """The file name of init segment version C{version}."""
    return "init.mp4" if version == 0 else f"init-{version}.mp4"


# ---------------------------------------------------------------------------
# Stream description (for the playlists and the MPD)
# ---------------------------------------------------------------------------


def metadataRate(metadata: dict[str, Any], key: str) -> int:
    """The bit rate C{onMetaData} gives under C{key} (kbit/s) in bit/s, 0 when absent or absurd."""
    value = metadata.get(key)
    if isinstance(value, (int, float)) and 0 < value < 1e7:
        return int(value * 1000)
    return 0


def bandwidths(video: TrackState, audio: TrackState, metadata: dict[str, Any]) -> tuple[int, int]:
    """The variant's (BANDWIDTH, AVERAGE-BANDWIDTH)."""
    peak = average = 0
    for t, key, fallback in (
        (video, "videodatarate", 2_000_000),
        (audio, "audiodatarate", 128_000),
    ):
        if not present(t):
            continue
        p, a = trackBandwidth(t)
        if not p:
            p = a = metadataRate(metadata, key) or fallback
        peak += p
        average += a
    return peak or 2_000_000, average or peak or 2_000_000


def frameRate(video: TrackState, metadata: dict[str, Any]) -> Optional[float]:
    """The video frame rate: from C{onMetaData}, else the SPS, else measured; None if unknown."""
    value = metadata.get("framerate")
    if isinstance(value, (int, float)) and 0 < value <= 1000:
        return float(value)
    t = video
    if t.track is not None:
        try:
            rate = AVCDecoderConfigurationRecord.parse(t.track.config).parsed_sps().frame_rate
        except MediaError:
            rate = None
        if rate and 0 < rate <= 1000:
            return rate
    frames = sum(s.frames for s in t.segments if s.data is not None)
    ticks = sum(s.duration for s in t.segments if s.data is not None)
    if frames and ticks:
        return frames * t.timescale / ticks
    return None
