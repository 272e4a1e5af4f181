# -*- test-case-name: tests.test_media_packager -*-
"""
The live CMAF packager: one live stream in (FLV tag bodies from the hub),
LL-HLS media playlists, an HLS multivariant playlist and a DASH MPD out,
all over one set of CMAF segments.

Pure code: no I/O and no reactor.  Time comes from an injected clock (an
object with ``seconds()``, e.g. the reactor or ``task.Clock``); blocking
reloads are Deferreds.  One :class:`Packager` exists per (app, stream id) and
outlives publications: :meth:`Packager.attach` subscribes it to each new
:class:`~tokengate.media.hub.LiveStream` (generation) of that stream id.

URL layout
==========

The HTTP side serves, for application ``App`` and stream ``id``::

    /App/streams/{id}.m3u8                 hls_multivariant(query)
    /App/streams/{id}/video.m3u8           hls_media("video", query)
    /App/streams/{id}/audio.m3u8           hls_media("audio", query)
    /App/streams/{id}/{id}.mpd             dash_mpd(query, location, utcTiming)
    /App/streams/{id}/{kind}/{name}        resource(kind, name)

where ``kind`` is ``video`` or ``audio`` and ``name`` is one of

* ``init.mp4``: the first init segment (CMAF header) of the track; a track
  whose codec configuration changes later gets ``init-1.mp4``,
  ``init-2.mp4`` and so on -- every init URI names one immutable init
  segment, because players cache init segments by URI (hls.js reuses the
  old one for a new EXT-X-MAP with the same URI);
* ``{msn}.m4s``: media segment number ``msn`` (``styp`` then its parts);
* ``{msn}.{part}.m4s``: LL-HLS part ``part`` (from 0) of segment ``msn``, a
  ``moof``+``mdat``.

Every URI in the documents is relative to the document and carries
``?{query}`` (the HTTP gate's session credential) unless the query is
empty.  Stream ids are percent-encoded in URIs.

Tracks and timing
=================

Video is H.264 (from the AVC sequence header, the avcC) on a 90 kHz
timescale; audio is AAC (from the AudioSpecificConfig) on a timescale of its
sample rate.  Other codecs are ignored (logged once per publication).  Each
track has its own init segment and segments; video-only and audio-only
streams work.

FLV timestamps are decode times in milliseconds.  The first video keyframe's
composition offset is taken as the stream's B-frame delay *D*; video decode
times are shifted by +D and composition offsets by -D (signed, trun version
1), so every keyframe's presentation time equals its decode time and each
segment's earliest presentation time is its ``tfdt`` -- what CMAF and the
MPD SegmentTimeline expect.  Audio times count 1024-sample AAC frames from
an anchor, re-anchored only when the FLV timestamps jump by more than
100 ms (a jump starts a new fragment, so ``tfdt`` carries it).

The media timeline is continuous across publications: the first one starts
at its FLV timestamps, and each later one is offset so that it starts at
the wall-clock time elapsed since media time 0 (and never before the end of
the previous one).  ``availabilityStartTime`` of the MPD and every
``EXT-X-PROGRAM-DATE-TIME`` derive from that one origin (wall clock of media
time 0 = arrival time of the first frame minus its timestamp), so the
program date of a segment is the wall-clock time its first frame arrived,
as long as the publisher sends in real time.

Segmentation
============

Video leads: a segment is cut at the first video keyframe at or after
``segmentTarget`` seconds from the segment start (or, as a safety valve, at
any frame once a segment reaches ``max(6 * segmentTarget, 15)`` seconds or
a quarter of ``maxBytes``).  Audio follows: an audio frame goes into the
segment whose cut time is at or before the middle of the frame, so audio
segment N and video segment N cover the same time and share the number N
(HLS media sequence number, DASH ``$Number$``).  To be exact even when the
publisher interleaves audio slightly ahead of video, audio frames are held
back until video has reached them (at most one second).  Without video
(audio-only streams, or a video track silent for
``max(2 * segmentTarget, 3)`` seconds) audio leads and segments are cut by
time; a video keyframe takes the lead back with an immediate cut.  Numbers
start at 1 and continue across publications.  A segment number that a
track has no media for (it was absent during that segment) is a gap: listed
with ``EXT-X-GAP`` in HLS and in the DASH timeline (to keep ``$Number$``
aligned) but not served; a gap spans from the end of the track's previous
segment, so that each track's timeline has no hole and players summing
durations keep the tracks together.

Each segment is made of parts (LL-HLS partial segments) of at most
``partTarget`` seconds: a part is closed before a frame that would make it
longer, and a new part starts at a mid-segment keyframe when the current
part is at least 85 % of the target (so parts satisfy RFC 8216bis 4.4.4.9
at common frame rates).  A part is INDEPENDENT when it starts with a
keyframe (every audio part is).  A segment's bytes are ``styp`` followed by
its parts; the parts are served as slices of it.

A publication after an earlier one starts a new *period*: its first segment
carries ``EXT-X-DISCONTINUITY`` (and an ``EXT-X-MAP`` to a new init URI if
the codec configuration changed), and in DASH it starts a new ``Period``
(id ``p{n}``, with ``presentationTimeOffset``), listing that period's
segments with that period's init.  A period starts at its first keyframe
or at its first audio frame if that begins earlier, so no track's first
segment lies before the period.  DASH presentation time is media time: the
static MPD of an ended stream keeps the live timeline (period starts,
offsets, numbers and segment times).  A codec configuration change in the
middle of a publication does the same at the next cut.

Memory is bounded: each track keeps ``windowSegments + extraSegments``
complete segments plus the one in progress (playlists list the last
``windowSegments``; the extra ones stay fetchable for players just behind),
and all held bytes are capped at ``maxBytes`` (64 MiB), dropping the oldest
segments.  At most ``MAX_WAITERS`` blocking reloads wait at once.

Playlists
=========

Media playlists (``EXT-X-VERSION:7``) carry ``TARGETDURATION`` (the
segment target rounded up, or the longest segment seen rounded to the
nearest second if that is more -- the RFC 8216 rule; it only grows),
``EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK`` (3 part
targets), ``EXT-X-PART-INF``, the media and discontinuity sequence numbers,
``EXT-X-MAP``, ``EXT-X-PROGRAM-DATE-TIME`` and ``EXTINF`` (5 decimals) per
segment, ``EXT-X-PART`` lines for the segments of the last three target
durations and for the segment in progress, an ``EXT-X-PRELOAD-HINT`` for
the next part, and an ``EXT-X-RENDITION-REPORT`` for the other track.
After the stream ended they end with ``EXT-X-ENDLIST`` and have no preload
hint.  Blocking reloads (``_HLS_msn``/``_HLS_part``) are :meth:`Packager.wait`.

API (what the HTTP side uses)
=============================

* ``Packager(app, streamId, clock, segmentTarget=2.0, partTarget=0.5,
  windowSegments=5, extraSegments=3, hls=True, dash=True, maxBytes=64 MiB,
  dashDelay=34)``: the MPD suggests ``dashDelay`` seconds of presentation
  delay and lists ``ceil(dashDelay / segmentTarget) + 2`` segments (at least
  ``windowSegments``); ``extraSegments`` more stay held.
* ``attach(stream)``: subscribe to a new publication; ``close()`` (alias
  ``reset()``): unsubscribe and drop everything, failing the waiters.
* ``hls_multivariant(query)``, ``hls_media(kind, query)``,
  ``dash_mpd(query, location=None, utcTiming="/time")``: text, or None while
  there is nothing to list yet (no complete segment) or when that format is
  disabled.
* ``resource(kind, name)``, ``init(kind, version=None)``,
  ``segment(kind, msn)``, ``part(kind, msn, index)``: bytes or None.
* ``wait(kind, msn, part=None)``: a Deferred firing True once the media
  playlist of ``kind`` holds segment ``msn`` complete or its part ``part``
  (or anything later), False when that can no longer happen (the stream
  ended or the packager closed first) or when too many are waiting.  Cancel
  it for a timeout.  A preload-hinted part may never exist (the segment
  ended first): after ``wait`` fires True, ``part()`` may still be None (404).
* ``edge(kind)``: ``(msn, part)`` of the newest part, for range-checking
  ``_HLS_msn`` (RFC 8216bis answers 400 beyond the next two segments);
  ``ended``, ``lastActivity``, ``hasVideo``, ``hasAudio``, ``bandwidth``,
  ``generation``, ``metadata``.

Only ``clock.seconds()`` is used: the packager arms no timers (the caller
times out its waits and expires idle packagers using ``lastActivity``).

Limits
======

* A non-independent video part decodes only after the parts before it in
  its segment (as with any LL-HLS part); segments and independent parts
  decode on their own.
* ``EXT-X-INDEPENDENT-SEGMENTS`` does not hold for a safety-valve cut
  (a GOP longer than ``max(6 * segmentTarget, 15)`` seconds).
* Parts meet the 85 % rule only when a frame lasts at most 15 % of the part
  target (above about 14 fps for 0.5 s parts).
* Frames between a mid-publication codec change and the next cut are
  packaged with the old init segment.
* A track missing from a later publication keeps its old playlist (without
  ``EXT-X-ENDLIST``) until the stream ends or the packager is closed.
* FLV timestamps wrapping at 2**32 ms (49.7 days) are not handled.
"""

from __future__ import annotations

import math
import re
from collections import deque
from datetime import datetime, timezone
from fractions import Fraction
from typing import Any, Optional, Union
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from tokengate.media.codecs import (
    AAC_RAW,
    AVC_NALU,
    CODEC_AVC,
    NAL_AUD,
    SOUND_AAC,
    AVCDecoderConfigurationRecord,
    length_prefixed_nals,
)
from tokengate.media.errors import MediaError
from tokengate.media.fmp4 import _STYP as STYP  # the CMAF styp box, shared with fmp4
from tokengate.media.fmp4 import AUDIO, VIDEO, Sample, Track, init_segment, media_segment
from tokengate.media.hub import Frame, ISubscriber, LiveStream
from tokengate.logsafe import Logger

__all__ = ["Packager", "MAX_WAITERS", "MAX_BYTES", "VIDEO", "AUDIO"]

#: Blocking reloads waiting at once, per packager; more fail at once.
MAX_WAITERS = 256
#: Default cap on the bytes one packager holds.
MAX_BYTES = 64 * 1024 * 1024

VIDEO_TIMESCALE = 90000
AAC_FRAME = 1024
#: An audio timestamp this far (ms) from the sample count re-anchors audio time.
REANCHOR_MS = 100
#: Audio is held back at most this long (ms of media) waiting for video.
HOLD_MS = 1000
#: Parts shorter than this fraction of the part target are not cut at keyframes.
PART_MIN = 0.85
#: Default DASH presentation delay (seconds) suggested to players; the MPD
#: lists (and the packager holds) enough segments behind the live edge for it.
#: GStreamer's adaptivedemux2 (dashdemux2, 1.22) waits for 30 s of media
#: ahead of its play position before it leaves buffering, and it starts
#: ``suggestedPresentationDelay`` behind the live edge: below about 32 s it
#: never plays a live stream.
DASH_DELAY = 34.0

_KINDS = (VIDEO, AUDIO)
_RESOURCE = re.compile(
    r"(?:(init)(?:-([1-9][0-9]{0,8}))?\.mp4|(0|[1-9][0-9]{0,11})(?:\.(0|[1-9][0-9]{0,5}))?\.m4s)"
)
_URI_UNSAFE = re.compile(r'[\x00-\x20"<>\\^`{|}\x7f]')

_Buffer = Union[bytes, memoryview]


def _iso(seconds: float) -> str:
    """An ISO 8601 UTC timestamp with milliseconds."""
    whole = math.floor(seconds)
    millis = int(round((seconds - whole) * 1000))
    if millis == 1000:
        whole, millis = whole + 1, 0
    stamp = datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{millis:03d}Z"


def _duration(seconds: float) -> str:
    """An xs:duration in seconds."""
    return f"PT{max(0.0, seconds):.3f}S"


def _query_suffix(query: str) -> str:
    """``?query``, or nothing; characters that would break a document are encoded."""
    if not query:
        return ""
    return "?" + _URI_UNSAFE.sub(lambda m: "%{:02X}".format(ord(m.group())), query)


class _Segment:
    """
    One complete segment of one track.  ``data`` is None for a gap (the
    track had no media for that number).  ``parts`` holds ``(start, end,
    duration, independent)`` for each part, slices of ``data``.  Times are
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


class _Track:
    """The packaging state of one track."""

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
        "samples",
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
        self.segments: deque[_Segment] = deque()
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
        self.samples: list[Sample] = []
        self.partDur = 0
        self.nextDts: Optional[int] = None
        self.seq = 0
        self.pending: Optional[tuple[_Buffer, int, int, bool]] = None
        self.delay: Optional[int] = None
        self.lastDur = 0
        self.lastMs: Optional[int] = None
        self.anchorMs: Optional[float] = None
        self.anchorTicks = 0
        self.count = 0

    def find(self, msn: int) -> Optional[_Segment]:
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


@implementer(ISubscriber)
class Packager:
    """
    Packages one stream id's publications into CMAF for LL-HLS and DASH.
    See the module docstring.
    """

    _log = Logger()

    def __init__(
        self,
        app: str,
        streamId: str,
        clock: Any,
        segmentTarget: float = 2.0,
        partTarget: float = 0.5,
        windowSegments: int = 5,
        extraSegments: int = 3,
        hls: bool = True,
        dash: bool = True,
        maxBytes: int = MAX_BYTES,
        dashDelay: float = DASH_DELAY,
    ) -> None:
        if segmentTarget <= 0 or partTarget <= 0 or partTarget > segmentTarget:
            raise ValueError("need 0 < partTarget <= segmentTarget")
        if windowSegments < 1 or extraSegments < 0:
            raise ValueError("need windowSegments >= 1 and extraSegments >= 0")
        if not 0 <= dashDelay <= 600:
            raise ValueError("need 0 <= dashDelay <= 600")
        self.app = app
        self.streamId = streamId
        self.clock = clock
        self.segmentTarget = segmentTarget
        self.partTarget = partTarget
        self.windowSegments = windowSegments
        self.extraSegments = extraSegments
        self.hls = hls
        self.dash = dash
        self.maxBytes = maxBytes
        self.dashDelay = dashDelay
        #: segments the MPD lists: the delay and two more (at least the HLS window)
        self._dashSegments = windowSegments
        if dash and dashDelay > 0:
            self._dashSegments = max(windowSegments, math.ceil(dashDelay / segmentTarget) + 2)
        #: complete segments held per track
        self._keep = max(windowSegments, self._dashSegments) + extraSegments
        self._targetMs = segmentTarget * 1000
        self._maxSegmentMs = max(6 * segmentTarget, 15.0) * 1000
        self._stallMs = max(2 * segmentTarget, 3.0) * 1000

        #: True once the publication ended (until the next one attaches).
        self.ended = False
        #: clock.seconds() of the last thing received.
        self.lastActivity: float = clock.seconds()
        #: publications seen (attach count)
        self.generation = 0
        self.metadata: dict[str, Any] = {}

        self._stream: Optional[LiveStream] = None
        self._closed = False
        self._video = _Track(VIDEO)
        self._audio = _Track(AUDIO)
        self._tracks = (self._video, self._audio)
        self._leader: Optional[str] = None
        self._hold: deque[tuple[float, int, _Buffer]] = deque()
        self._firstAudioMs: Optional[float] = None
        self._offset: Optional[int] = None  # ms added to this publication's timestamps
        self._origin: Optional[float] = None  # wall clock of media time 0
        self._timelineEnd = 0.0  # ms, end of everything packaged so far
        self._nextMsn = 1
        self._pubFirstMsn = 1
        self._cuts: dict[int, tuple[float, int]] = {}  # msn -> (start ms, period)
        self._period = -1
        self._periodPending = True
        self._periodStart: dict[int, float] = {}
        self._forceCut = False
        self._longest = 0.0  # seconds, longest segment seen
        self._longestPart = 0.0
        self._publishTime: Optional[float] = None
        self._waiters: dict[str, list[tuple[int, Optional[int], Deferred[bool]]]] = {
            VIDEO: [],
            AUDIO: [],
        }
        self._warned: set[str] = set()

    # ------------------------------------------------------------------
    # Publications
    # ------------------------------------------------------------------

    def attach(self, stream: LiveStream) -> None:
        """
        Package C{stream}, a new publication of this stream id.  The
        previous one (if it has not ended) is finished and left.
        """
        if stream is self._stream and not self.ended:
            return
        self._closed = False
        stream.subscribe(self)

    def streamStarted(self, stream: LiveStream) -> None:
        old = self._stream
        if old is not None and old is not stream:
            if not old.ended:
                old.unsubscribe(self)
            if not self.ended:
                self._finishPublication()
        self._stream = stream
        self.generation += 1
        self.ended = False
        self.lastActivity = self.clock.seconds()
        self._leader = None
        self._offset = None
        self._firstAudioMs = None
        self._hold.clear()
        self._warned.clear()
        if self._nextMsn > 1:
            self._periodPending = True
        self._pubFirstMsn = self._nextMsn
        for t in self._tracks:
            t.newPublication()

    def metadataChanged(self, metadata: dict[str, Any]) -> None:
        self.metadata = dict(metadata) if isinstance(metadata, dict) else {}

    def configChanged(self, kind: str, body: bytes, timestamp: int) -> None:
        self.lastActivity = self.clock.seconds()
        try:
            if kind == VIDEO:
                self._videoConfig(body)
            elif kind == AUDIO:
                self._audioConfig(body)
        except MediaError as e:
            self._log.warn(
                "{app}/{streamId}: unusable {kind} configuration ignored: {error}",
                app=self.app, streamId=self.streamId, kind=kind, error=str(e),
            )  # fmt: skip

    def frameReceived(self, frame: Frame) -> None:
        self.lastActivity = self.clock.seconds()
        try:
            if frame.kind == VIDEO:
                self._videoFrame(frame)
            else:
                self._audioFrame(frame)
        except MediaError as e:
            self._warnOnce(
                "bad-" + frame.kind,
                "{app}/{streamId}: bad {kind} frame dropped: {error}",
                kind=frame.kind,
                error=str(e),
            )

    def streamEnded(self) -> None:
        self.lastActivity = self.clock.seconds()
        self._finishPublication()
        self.ended = True
        self._failWaiters()

    def close(self) -> None:
        """
        Leave the stream and drop every segment; waiting reloads get False.
        The packager may be attached again (numbers continue).
        """
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.unsubscribe(self)
        self._closed = True
        self.ended = True
        nextVersions = [t.nextVersion for t in self._tracks]
        self._video = _Track(VIDEO)
        self._audio = _Track(AUDIO)
        self._tracks = (self._video, self._audio)
        for t, v in zip(self._tracks, nextVersions):
            t.nextVersion = v  # init URIs are never reused
        self._hold.clear()
        self._leader = None
        self._offset = None
        self._cuts.clear()
        self._periodStart.clear()
        self._periodPending = True
        self._origin = None
        self._timelineEnd = 0.0
        self._failWaiters()

    reset = close

    def _warnOnce(self, key: str, message: str, **kw: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._log.warn(message, app=self.app, streamId=self.streamId, **kw)

    # ------------------------------------------------------------------
    # Configuration
    # ------------------------------------------------------------------

    def _videoConfig(self, body: bytes) -> None:
        if len(body) < 5 or body[0] & 0x0F != CODEC_AVC:
            self._warnOnce("video-codec", "{app}/{streamId}: video codec is not H.264; ignored")
            return
        avcc = bytes(body[5:])
        record = AVCDecoderConfigurationRecord.parse(avcc)
        nal_size = record.nal_length_size
        if nal_size != 4:
            avcc = evolve(record, length_size_minus_one=3).build()
        track = Track.video_avc(1, avcc, timescale=VIDEO_TIMESCALE)
        self._setTrack(self._video, track)
        self._video.nalSize = nal_size

    def _audioConfig(self, body: bytes) -> None:
        if len(body) < 2 or body[0] >> 4 != SOUND_AAC:
            self._warnOnce("audio-codec", "{app}/{streamId}: audio codec is not AAC; ignored")
            return
        track = Track.audio_aac(2, bytes(body[2:]))
        self._setTrack(self._audio, track)

    def _setTrack(self, t: _Track, track: Track) -> None:
        data = init_segment(track)
        t.configured = True
        t.partTicks = self.partTarget * track.timescale
        if t.version >= 0 and t.inits.get(t.version) == data:
            return
        if t.track is not None and track.timescale != t.timescale and t.msn is not None:
            # A new timescale cannot continue the open segment.
            self._flushTrack(t)
            t.anchorMs = None
            t.nextDts = None
        t.track = track
        t.timescale = track.timescale
        t.version = t.nextVersion
        t.nextVersion += 1
        t.inits[t.version] = data
        if t.segments or t.msn is not None:
            # Mid-publication change (or a republish): the next cut starts a period.
            self._periodPending = True
            self._forceCut = True
        self._pruneInits(t)

    # ------------------------------------------------------------------
    # Timing
    # ------------------------------------------------------------------

    def _mediaOffset(self, timestamp: int) -> int:
        offset = self._offset
        if offset is None:
            now = self.clock.seconds()
            if self._origin is None:
                self._origin = now - timestamp / 1000.0
                offset = 0
            else:
                start = max((now - self._origin) * 1000.0, self._timelineEnd + 500.0)
                offset = int(math.ceil(start)) - timestamp
            self._offset = offset
        return offset

    # ------------------------------------------------------------------
    # Video
    # ------------------------------------------------------------------

    def _videoFrame(self, frame: Frame) -> None:
        t = self._video
        body = frame.body
        if t.track is None or len(body) < 6:
            return
        b0 = body[0]
        if b0 & 0x0F != CODEC_AVC or b0 >> 4 >= 8:
            self._warnOnce("video-codec", "{app}/{streamId}: video codec is not H.264; ignored")
            return
        if body[1] != AVC_NALU:
            return
        key = frame.keyframe
        if t.msn is None and not key and self._leader == VIDEO:
            return
        if t.pending is None and not key:
            return  # video starts (or restarts) at a keyframe
        if not isinstance(body, bytes):
            body = bytes(body)
        cts = body[2] << 16 | body[3] << 8 | body[4]
        if cts & 0x800000:
            cts -= 0x1000000
        if t.delay is None:
            t.delay = cts
        data = self._videoPayload(t, body)
        if not data:
            return
        ms = frame.timestamp + self._mediaOffset(frame.timestamp) + t.delay
        dts = ms * 90
        pending = t.pending
        if pending is not None:
            duration = dts - pending[1]
            if duration <= 0:
                duration = 1
                dts = pending[1] + 1
            t.lastDur = duration
            if t.msn is not None:
                self._add(t, pending[0], pending[1], duration, pending[2], pending[3])
        if self._leader != VIDEO:
            if key:
                self._leader = VIDEO
                self._openSegment(t, self._cut(ms), dts)
        elif t.msn is None:
            if key:
                self._openSegment(t, self._cut(ms), dts)
        else:
            last = self._cuts.get(self._nextMsn - 1)
            elapsed = ms - last[0] if last is not None else 0.0
            if (
                (key and (self._forceCut or elapsed >= self._targetMs - 1))
                or elapsed >= self._maxSegmentMs
                or t.openBytes > self.maxBytes // 4
            ):
                self._openSegment(t, self._cut(ms), dts)
        t.pending = (data, dts, (cts - t.delay) * 90, key)
        t.lastMs = ms
        if self._hold:
            self._releaseAudio()

    def _videoPayload(self, t: _Track, body: bytes) -> _Buffer:
        view = memoryview(body)[5:]
        if t.nalSize != 4:
            out: list[_Buffer] = []
            for nal in length_prefixed_nals(view, t.nalSize):
                if nal[0] & 0x1F != NAL_AUD:
                    out.append(len(nal).to_bytes(4, "big"))
                    out.append(nal)
            return b"".join(out)
        if len(view) > 4 and view[4] & 0x1F == NAL_AUD:
            # An access unit delimiter first: drop it (CMAF samples carry none).
            size = int.from_bytes(view[:4], "big")
            view = view[4 + size :]
        return view

    def _flushVideo(self) -> None:
        t = self._video
        pending, t.pending = t.pending, None
        if pending is not None and t.msn is not None:
            self._add(t, pending[0], pending[1], t.lastDur or 3000, pending[2], pending[3])

    # ------------------------------------------------------------------
    # Audio
    # ------------------------------------------------------------------

    def _audioFrame(self, frame: Frame) -> None:
        t = self._audio
        body = frame.body
        if t.track is None or len(body) < 3:
            return
        if body[0] >> 4 != SOUND_AAC:
            self._warnOnce("audio-codec", "{app}/{streamId}: audio codec is not AAC; ignored")
            return
        if body[1] != AAC_RAW:
            return
        if not isinstance(body, bytes):
            body = bytes(body)
        ms = frame.timestamp + self._mediaOffset(frame.timestamp)
        rate = t.timescale
        anchor = t.anchorMs
        if anchor is None or abs(ms - (anchor + t.count * AAC_FRAME * 1000.0 / rate)) > REANCHOR_MS:
            ticks = ms * rate // 1000
            if anchor is not None and ticks < t.anchorTicks + t.count * AAC_FRAME:
                ticks = t.anchorTicks + t.count * AAC_FRAME  # never overlap earlier frames
            t.anchorTicks = ticks
            t.anchorMs = ticks * 1000.0 / rate
            t.count = 0
        dts = t.anchorTicks + t.count * AAC_FRAME
        t.count += 1
        data = memoryview(body)[2:]
        middle = (dts + AAC_FRAME / 2) * 1000.0 / rate
        if self._leader == VIDEO or (self._leader is None and self._video.configured):
            if self._firstAudioMs is None:
                self._firstAudioMs = middle
            self._hold.append((middle, dts, data))
            self._releaseAudio()
        else:
            self._leader = AUDIO
            self._audioLead(t, middle, dts, data)

    def _releaseAudio(self) -> None:
        """Hand held audio to the segmenter once video has reached it."""
        hold = self._hold
        t = self._audio
        video = self._video.lastMs
        newest = hold[-1][0]
        while hold:
            middle = hold[0][0]
            if (video is None or middle > video) and newest - middle <= HOLD_MS:
                break
            middle, dts, data = hold.popleft()
            self._audioFollow(t, middle, dts, data)
        reference = video if video is not None else self._firstAudioMs
        if reference is not None and newest - reference > self._stallMs:
            # No video for a while: audio leads from here.
            self._log.info("{app}/{streamId}: no video for a while; audio leads",
                           app=self.app, streamId=self.streamId)  # fmt: skip
            self._flushVideo()
            if self._video.msn is not None:
                self._closeSegment(self._video)
            self._leader = AUDIO
            while hold:
                middle, dts, data = hold.popleft()
                self._audioLead(t, middle, dts, data)

    def _audioFollow(self, t: _Track, middle: float, dts: int, data: _Buffer) -> None:
        cuts = self._cuts
        msn = t.msn
        if msn is None:
            msn = self._nextMsn - 1
            while msn >= self._pubFirstMsn and msn in cuts and cuts[msn][0] > middle:
                msn -= 1
            if msn < self._pubFirstMsn or msn not in cuts:
                return  # before the first video keyframe
            self._openSegment(t, msn, dts)
        else:
            n = msn
            while (n + 1) in cuts and middle >= cuts[n + 1][0]:
                n += 1
            if n != msn:
                self._openSegment(t, n, dts)
        if t.msn is not None:
            self._add(t, data, dts, AAC_FRAME, 0, True)

    def _audioLead(self, t: _Track, middle: float, dts: int, data: _Buffer) -> None:
        last = self._nextMsn - 1
        start = dts * 1000.0 / t.timescale
        if t.msn is None or t.msn != last or last not in self._cuts:
            self._openSegment(t, self._cut(start), dts)
        else:
            elapsed = start - self._cuts[last][0]
            if (
                self._forceCut
                or elapsed >= self._targetMs - 1
                or t.openBytes > self.maxBytes // 4
            ):
                self._openSegment(t, self._cut(start), dts)
        if t.msn is not None:
            self._add(t, data, dts, AAC_FRAME, 0, True)

    # ------------------------------------------------------------------
    # Segments and parts
    # ------------------------------------------------------------------

    def _cut(self, ms: float) -> int:
        """Start segment number N at media time C{ms}; return N."""
        msn = self._nextMsn
        self._nextMsn = msn + 1
        if self._periodPending:
            self._period += 1
            self._periodPending = False
            self._periodStart[self._period] = float(math.floor(ms))
            while len(self._periodStart) > 64:
                del self._periodStart[next(iter(self._periodStart))]
        self._cuts[msn] = (ms, self._period)
        while len(self._cuts) > 64:
            del self._cuts[next(iter(self._cuts))]
        self._forceCut = False
        return msn

    def _openSegment(self, t: _Track, msn: int, start: int) -> None:
        if t.msn is not None:
            self._closeSegment(t)
        segments = t.segments
        if segments and segments[-1].msn >= msn:
            return  # cannot go back (should not happen)
        keep = self._keep
        if segments and segments[-1].msn < msn - 1:
            first = segments[-1].msn + 1
            if msn - first > keep:
                # The gap alone fills the window: drop the rest.
                while segments:
                    self._dropOldest(t)
                first = msn - keep
            for gap in range(first, msn):
                self._addGap(t, gap)
        cut = self._cuts.get(msn)
        period = cut[1] if cut is not None else self._period
        if t.lastPeriod != period:
            self._trackEntersPeriod(t, period, start)
        t.msn = msn
        t.segStart = start
        t.segPeriod = period
        t.segInit = t.version
        t.segDisc = t.lastPeriod is not None and t.lastPeriod != period
        t.lastPeriod = period
        t.segDur = 0
        t.segFrames = 0
        t.parts = []
        t.partInfo = []
        t.openBytes = 0
        t.samples = []
        t.partDur = 0

    def _trackEntersPeriod(self, t: _Track, period: int, start: int) -> None:
        """
        The first segment of C{t} in C{period} starts at C{start} (ticks).
        A period starts no later than the first segment of any of its
        tracks: audio's first frame may begin a few milliseconds before the
        video keyframe that started the period, and a track whose first
        segment started before its C{presentationTimeOffset} gives players
        negative times (GStreamer's dashdemux2 wraps them).  Whole
        milliseconds, rounded down, so every track's offset stays at or
        before its first segment.
        """
        begins = self._periodStart.get(period)
        ms = float(math.floor(start * 1000 / t.timescale))
        if begins is not None and ms < begins:
            self._periodStart[period] = ms

    def _addGap(self, t: _Track, msn: int) -> None:
        """
        Number C{msn} has no media of C{t}: list a gap, from where the
        track's previous segment ended (in the same period) to where the
        next number starts, so that the track's timeline has no hole.
        """
        cut = self._cuts.get(msn)
        after = self._cuts.get(msn + 1)
        period = cut[1] if cut is not None else self._period
        scale = t.timescale / 1000.0
        previous = t.segments[-1] if t.segments else None
        if previous is not None and previous.period == period:
            start = previous.start + previous.duration
        elif cut is not None:
            start = int(round(cut[0] * scale))
        else:
            start = t.end() or 0
        if after is not None:
            duration = max(1, int(round(after[0] * scale)) - start)
        else:
            duration = int(round(self._targetMs * scale))
        disc = t.lastPeriod is not None and t.lastPeriod != period
        if t.lastPeriod != period:
            self._trackEntersPeriod(t, period, start)
        t.lastPeriod = period
        init = t.segments[-1].init if t.segments else t.version
        t.segments.append(_Segment(msn, start, duration, None, (), period, init, disc, 0))
        self._trim(t)

    def _add(self, t: _Track, data: _Buffer, dts: int, duration: int, cto: int, sync: bool) -> None:
        """Append one sample to the open segment of C{t}, closing parts as needed."""
        samples = t.samples
        target = t.partTicks
        if samples and (
            t.partDur + duration > target
            or dts != t.nextDts
            or (sync and t.kind == VIDEO and t.partDur >= PART_MIN * target)
        ):
            self._closePart(t)
            samples = t.samples
        samples.append(Sample(data, dts, duration, cto, sync))
        t.partDur += duration
        t.nextDts = dts + duration
        t.segFrames += 1
        if t.partDur + duration > target:
            self._closePart(t)

    def _closePart(self, t: _Track) -> None:
        samples = t.samples
        if not samples:
            return
        assert t.track is not None
        t.seq += 1
        data = media_segment(t.track, t.seq, samples, with_styp=False)
        t.parts.append(data)
        t.partInfo.append((t.partDur, samples[0].is_sync))
        t.openBytes += len(data)
        t.segDur += t.partDur
        seconds = t.partDur / t.timescale
        if seconds > self._longestPart:
            self._longestPart = seconds
        t.samples = []
        t.partDur = 0
        video, audio = self._video, self._audio
        if video.bytes + video.openBytes + audio.bytes + audio.openBytes > self.maxBytes:
            self._capBytes()
        if self._waiters[t.kind]:
            self._notify(t.kind)

    def _closeSegment(self, t: _Track) -> None:
        self._closePart(t)
        msn = t.msn
        if msn is None:
            return
        t.msn = None
        if not t.parts:
            # Nothing arrived for it: a later segment fills it as a gap.
            t.lastPeriod = t.segments[-1].period if t.segments else None
            return
        data = STYP + b"".join(t.parts)
        pos = len(STYP)
        parts = []
        for part, (duration, independent) in zip(t.parts, t.partInfo):
            end = pos + len(part)
            parts.append((pos, end, duration, independent))
            pos = end
        segment = _Segment(
            msn, t.segStart, t.segDur, data, tuple(parts), t.segPeriod, t.segInit, t.segDisc,
            t.segFrames,
        )  # fmt: skip
        t.parts = []
        t.partInfo = []
        t.openBytes = 0
        t.segments.append(segment)
        t.bytes += len(data)
        seconds = segment.duration / t.timescale
        if seconds > self._longest:
            self._longest = seconds
        end = (segment.start + segment.duration) * 1000.0 / t.timescale
        if end > self._timelineEnd:
            self._timelineEnd = end
        self._publishTime = self.clock.seconds()
        self._trim(t)
        self._capBytes()
        if self._waiters[t.kind]:
            self._notify(t.kind)

    def _flushTrack(self, t: _Track) -> None:
        if t.kind == VIDEO:
            self._flushVideo()
        if t.msn is not None:
            self._closeSegment(t)

    def _finishPublication(self) -> None:
        """Package everything still buffered: the publication is over."""
        self._flushVideo()
        hold = self._hold
        while hold:
            middle, dts, data = hold.popleft()
            if self._leader == VIDEO:
                self._audioFollow(self._audio, middle, dts, data)
            else:
                self._audioLead(self._audio, middle, dts, data)
        for t in self._tracks:
            if t.msn is not None:
                self._closeSegment(t)
            t.newPublication()
        self._leader = None
        self._offset = None

    # ------------------------------------------------------------------
    # Bounds
    # ------------------------------------------------------------------

    def _dropOldest(self, t: _Track) -> None:
        segment = t.segments.popleft()
        if segment.data is not None:
            t.bytes -= len(segment.data)
        if segment.disc:
            t.discDropped += 1

    def _trim(self, t: _Track) -> None:
        keep = self._keep
        if len(t.segments) > keep:
            while len(t.segments) > keep:
                self._dropOldest(t)
            self._pruneInits(t)

    def _capBytes(self) -> None:
        tracks = self._tracks
        total = sum(t.bytes + t.openBytes for t in tracks)
        while total > self.maxBytes:
            candidates = [t for t in tracks if len(t.segments) > 1]
            if not candidates:
                break
            t = min(candidates, key=lambda c: c.segments[0].msn)
            before = t.bytes
            self._dropOldest(t)
            total -= before - t.bytes
        for t in tracks:
            self._pruneInits(t)

    def _pruneInits(self, t: _Track) -> None:
        if len(t.inits) <= 1:
            return
        used = {s.init for s in t.segments}
        used.add(t.version)
        if t.msn is not None:
            used.add(t.segInit)
        for version in [v for v in t.inits if v not in used]:
            del t.inits[version]

    # ------------------------------------------------------------------
    # Blocking reloads
    # ------------------------------------------------------------------

    def _track(self, kind: str) -> Optional[_Track]:
        if kind == VIDEO:
            return self._video
        if kind == AUDIO:
            return self._audio
        return None

    @staticmethod
    def _available(t: _Track, msn: int, part: Optional[int]) -> bool:
        segments = t.segments
        if segments and msn <= segments[-1].msn:
            return True
        if t.msn is None or msn > t.msn:
            return False
        if msn < t.msn:
            return True
        return part is not None and part < len(t.parts)

    def wait(self, kind: str, msn: int, part: Optional[int] = None) -> Deferred[bool]:
        """
        A Deferred firing True once the C{kind} playlist holds segment
        C{msn} complete, or its part C{part} (or anything later); False if
        the stream ends or the packager closes first, or right away when
        L{MAX_WAITERS} are already waiting.  Cancel it to give up.
        """
        t = self._track(kind)
        if t is None:
            return succeed(False)
        if self._available(t, msn, part):
            return succeed(True)
        if self.ended or self._closed:
            return succeed(False)
        waiters = self._waiters
        if len(waiters[VIDEO]) + len(waiters[AUDIO]) >= MAX_WAITERS:
            return succeed(False)
        entry: list[Any] = []

        def cancel(d: Deferred[bool]) -> None:
            try:
                waiters[kind].remove(entry[0])
            except ValueError:
                pass

        d: Deferred[bool] = Deferred(cancel)
        entry.append((msn, part, d))
        waiters[kind].append(entry[0])
        return d

    def _notify(self, kind: str) -> None:
        t = self._track(kind)
        assert t is not None
        waiting = self._waiters[kind]
        ready = [w for w in waiting if self._available(t, w[0], w[1])]
        if ready:
            self._waiters[kind] = [w for w in waiting if w not in ready]
            for _, _, d in ready:
                d.callback(True)

    def _failWaiters(self) -> None:
        for kind in _KINDS:
            if self._waiters[kind]:
                self._notify(kind)
        waiting = self._waiters[VIDEO] + self._waiters[AUDIO]
        self._waiters = {VIDEO: [], AUDIO: []}
        for _, _, d in waiting:
            d.callback(False)

    # ------------------------------------------------------------------
    # State for the HTTP side
    # ------------------------------------------------------------------

    def _present(self, t: _Track) -> bool:
        return t.track is not None and (bool(t.segments) or bool(t.parts) or t.msn is not None)

    @property
    def hasVideo(self) -> bool:
        """Video is being (or was) packaged."""
        return self._present(self._video)

    @property
    def hasAudio(self) -> bool:
        """Audio is being (or was) packaged."""
        return self._present(self._audio)

    def edge(self, kind: str) -> Optional[tuple[int, int]]:
        """
        C{(msn, part)} of the newest part of C{kind} (part -1 when the newest
        segment is a gap), or None when there is none.
        """
        t = self._track(kind)
        if t is None:
            return None
        if t.msn is not None and t.parts:
            return t.msn, len(t.parts) - 1
        if t.segments:
            last = t.segments[-1]
            return last.msn, len(last.parts) - 1
        return None

    def _trackBandwidth(self, t: _Track) -> tuple[int, int]:
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

    def _metadataRate(self, key: str) -> int:
        value = self.metadata.get(key)
        if isinstance(value, (int, float)) and 0 < value < 1e7:
            return int(value * 1000)
        return 0

    def _bandwidths(self) -> tuple[int, int]:
        """The variant's (BANDWIDTH, AVERAGE-BANDWIDTH)."""
        peak = average = 0
        for t, key, fallback in (
            (self._video, "videodatarate", 2_000_000),
            (self._audio, "audiodatarate", 128_000),
        ):
            if not self._present(t):
                continue
            p, a = self._trackBandwidth(t)
            if not p:
                p = a = self._metadataRate(key) or fallback
            peak += p
            average += a
        return peak or 2_000_000, average or peak or 2_000_000

    @property
    def bandwidth(self) -> int:
        """The peak bits per second of the stream (measured, else from metadata)."""
        return self._bandwidths()[0]

    def _frameRate(self) -> Optional[float]:
        value = self.metadata.get("framerate")
        if isinstance(value, (int, float)) and 0 < value <= 1000:
            return float(value)
        t = self._video
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

    # ------------------------------------------------------------------
    # Lookups
    # ------------------------------------------------------------------

    def init(self, kind: str, version: Optional[int] = None) -> Optional[bytes]:
        """
        The init segment of C{kind}: version C{version} (0 is ``init.mp4``,
        N is ``init-N.mp4``), or by default the current one.
        """
        t = self._track(kind)
        if t is None or t.version < 0:
            return None
        return t.inits.get(t.version if version is None else version)

    def segment(self, kind: str, msn: int) -> Optional[bytes]:
        """Complete segment C{msn} of C{kind}."""
        t = self._track(kind)
        if t is None:
            return None
        s = t.find(msn)
        return s.data if s is not None else None

    def part(self, kind: str, msn: int, index: int) -> Optional[bytes]:
        """Part C{index} of segment C{msn} of C{kind}, complete or in progress."""
        t = self._track(kind)
        if t is None or index < 0:
            return None
        if t.msn == msn:
            return t.parts[index] if index < len(t.parts) else None
        s = t.find(msn)
        if s is None or s.data is None or index >= len(s.parts):
            return None
        start, end, _, _ = s.parts[index]
        return s.data[start:end]

    def resource(self, kind: str, name: str) -> Optional[bytes]:
        """
        The bytes a file name under C{/App/streams/{id}/{kind}/} stands for:
        C{init.mp4}, C{init-N.mp4}, C{MSN.m4s} or C{MSN.PART.m4s}; None when
        unknown or not held.
        """
        m = _RESOURCE.fullmatch(name)
        if m is None:
            return None
        if m.group(1):
            return self.init(kind, int(m.group(2) or 0))
        msn = int(m.group(3))
        if m.group(4) is None:
            return self.segment(kind, msn)
        return self.part(kind, msn, int(m.group(4)))

    # ------------------------------------------------------------------
    # HLS
    # ------------------------------------------------------------------

    def _targetDuration(self) -> int:
        # RFC 8216 4.3.3.1: every EXTINF rounded to the nearest integer must
        # not exceed it; it only grows, so it stays constant in steady state.
        return max(1, math.ceil(self.segmentTarget - 0.001), math.floor(self._longest + 0.5))

    def _partTarget(self) -> float:
        return math.ceil(max(self.partTarget, self._longestPart) * 1000 - 1e-6) / 1000

    @staticmethod
    def _initName(version: int) -> str:
        return "init.mp4" if version == 0 else f"init-{version}.mp4"

    @staticmethod
    def _partLine(
        kind: str, msn: int, index: int, duration: float, independent: bool, q: str
    ) -> str:
        line = f'#EXT-X-PART:DURATION={duration:.5f},URI="{kind}/{msn}.{index}.m4s{q}"'
        return line + ",INDEPENDENT=YES" if independent else line

    def hls_multivariant(self, query: str = "") -> Optional[str]:
        """
        The multivariant playlist, served at C{/App/streams/{id}.m3u8}, or
        None until a segment is complete.
        """
        if not self.hls:
            return None
        video, audio = self._video, self._audio
        if not (video.segments or audio.segments):
            return None
        q = _query_suffix(query)
        sid = quote(self.streamId, safe="")
        has_video = self._present(video) and video.track is not None
        has_audio = self._present(audio) and audio.track is not None
        peak, average = self._bandwidths()
        lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
        codecs = []
        if has_video:
            assert video.track is not None
            codecs.append(video.track.codec_string)
        if has_audio:
            assert audio.track is not None
            codecs.append(audio.track.codec_string)
        info = [
            f"BANDWIDTH={peak}",
            f"AVERAGE-BANDWIDTH={average}",
            'CODECS="{}"'.format(",".join(codecs)),
        ]
        if has_video:
            assert video.track is not None
            if video.track.width and video.track.height:
                info.append(f"RESOLUTION={video.track.width}x{video.track.height}")
            rate = self._frameRate()
            if rate:
                info.append(f"FRAME-RATE={rate:.3f}")
            if has_audio:
                assert audio.track is not None
                lines.append(
                    '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="audio",DEFAULT=YES,'
                    f'AUTOSELECT=YES,CHANNELS="{audio.track.channels or 2}",'
                    f'URI="{sid}/audio.m3u8{q}"'
                )
                info.append('AUDIO="audio"')
            lines.append("#EXT-X-STREAM-INF:" + ",".join(info))
            lines.append(f"{sid}/video.m3u8{q}")
        else:
            lines.append("#EXT-X-STREAM-INF:" + ",".join(info))
            lines.append(f"{sid}/audio.m3u8{q}")
        return "\n".join(lines) + "\n"

    def hls_media(self, kind: str, query: str = "") -> Optional[str]:
        """
        The LL-HLS media playlist of C{kind}, served at
        C{/App/streams/{id}/{kind}.m3u8}, or None until one of its segments
        is complete.
        """
        t = self._track(kind)
        if not self.hls or t is None or not t.segments:
            return None
        q = _query_suffix(query)
        live = not self.ended
        target = self._targetDuration()
        part_target = self._partTarget()
        held = list(t.segments)
        listed = held[-self.windowSegments :]
        skipped = held[: len(held) - len(listed)]
        discontinuities = t.discDropped + sum(1 for s in skipped if s.disc)
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:7",
            f"#EXT-X-TARGETDURATION:{target}",
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * part_target:.3f}",
            f"#EXT-X-PART-INF:PART-TARGET={part_target:.3f}",
            f"#EXT-X-MEDIA-SEQUENCE:{listed[0].msn}",
        ]
        if discontinuities:
            lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuities}")
        # Parts for the segments that end within the last three target durations.
        with_parts = len(listed)
        recent = 0.0
        while with_parts > 0 and recent < 3 * target:
            with_parts -= 1
            recent += listed[with_parts].duration / t.timescale
        scale = float(t.timescale)
        origin = self._origin or 0.0
        init = -1
        add = lines.append
        for index, s in enumerate(listed):
            if s.disc:
                add("#EXT-X-DISCONTINUITY")
            if s.init != init:
                init = s.init
                add(f'#EXT-X-MAP:URI="{kind}/{self._initName(init)}{q}"')
            add("#EXT-X-PROGRAM-DATE-TIME:" + _iso(origin + s.start / scale))
            if index >= with_parts:
                for i, (_, _, duration, independent) in enumerate(s.parts):
                    add(self._partLine(kind, s.msn, i, duration / scale, independent, q))
            if s.data is None:
                add("#EXT-X-GAP")
            add(f"#EXTINF:{s.duration / scale:.5f},")
            add(f"{kind}/{s.msn}.m4s{q}")
        if live:
            if t.msn is not None and t.parts:
                if t.segDisc:
                    add("#EXT-X-DISCONTINUITY")
                if t.segInit != init:
                    add(f'#EXT-X-MAP:URI="{kind}/{self._initName(t.segInit)}{q}"')
                add("#EXT-X-PROGRAM-DATE-TIME:" + _iso(origin + t.segStart / scale))
                for i, (duration, independent) in enumerate(t.partInfo):
                    add(self._partLine(kind, t.msn, i, duration / scale, independent, q))
            if t.msn is not None:
                hint = (t.msn, len(t.parts))
            else:
                hint = (listed[-1].msn + 1, 0)
            add(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{kind}/{hint[0]}.{hint[1]}.m4s{q}"')
            other = AUDIO if kind == VIDEO else VIDEO
            report = self.edge(other)
            if report is not None and self._track(other).segments:  # type: ignore[union-attr]
                msn, part = report
                add(
                    f'#EXT-X-RENDITION-REPORT:URI="{other}.m3u8{q}",LAST-MSN={msn}'
                    + (f",LAST-PART={part}" if part >= 0 else "")
                )
        else:
            add("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------
    # DASH
    # ------------------------------------------------------------------

    def dash_mpd(
        self, query: str = "", location: Optional[str] = None, utcTiming: str = "/time"
    ) -> Optional[str]:
        """
        The MPD, served at C{/App/streams/{id}/{id}.mpd}: dynamic while
        live, static once the stream ended; None until a segment is
        complete.  C{location} adds a C{<Location>} (used verbatim, no query
        added); C{utcTiming} is the URL of the server's ISO time resource.

        One timeline for the life of the packager: presentation time is
        media time (seconds since media time 0, whose wall-clock time is
        C{availabilityStartTime}), so the static MPD of an ended stream
        keeps every period start, C{presentationTimeOffset}, segment number
        and segment time the live one used.  A player that was playing live
        keeps its position when the MPD turns static, plays to the last
        segment and stops (re-basing the timeline at the end sent players
        looking for segments far past the end).  C{mediaPresentationDuration}
        is the end of the last segment on that timeline.
        """
        if not self.dash:
            return None
        tracks = [t for t in self._tracks if t.segments and t.track is not None]
        if not tracks:
            return None
        q = _query_suffix(query).replace("$", "$$")
        live = not self.ended
        listed = {t.kind: list(t.segments)[-self._dashSegments :] for t in tracks}
        end_ms = max(
            (listed[t.kind][-1].start + listed[t.kind][-1].duration) * 1000.0 / t.timescale
            for t in tracks
        )
        depth = max(sum(s.duration for s in listed[t.kind]) / t.timescale for t in tracks)
        origin = self._origin or 0.0
        now = self.clock.seconds()
        out = ['<?xml version="1.0" encoding="UTF-8"?>']
        attrs = [
            'xmlns="urn:mpeg:dash:schema:mpd:2011"',
            'profiles="urn:mpeg:dash:profile:isoff-live:2011,urn:mpeg:dash:profile:cmaf:2019"',
        ]
        target = self.segmentTarget
        if live:
            attrs += [
                'type="dynamic"',
                f'availabilityStartTime="{_iso(origin)}"',
                f'publishTime="{_iso(self._publishTime or now)}"',
                f'minimumUpdatePeriod="{_duration(target)}"',
                f'timeShiftBufferDepth="{_duration(max(depth, target))}"',
                f'suggestedPresentationDelay="{_duration(max(self.dashDelay, 3 * target))}"',
            ]
        else:
            attrs += [
                'type="static"',
                f'mediaPresentationDuration="{_duration(end_ms / 1000)}"',
            ]
        attrs += [
            f'minBufferTime="{_duration(target)}"',
            f'maxSegmentDuration="{_duration(self._targetDuration())}"',
        ]
        out.append("<MPD " + " ".join(attrs) + ">")
        if location:
            out.append(f"  <Location>{escape(location)}</Location>")
        periods = sorted({s.period for t in tracks for s in listed[t.kind]})
        for period in periods:
            start_ms = self._periodStart.get(period)
            if start_ms is None:
                start_ms = min(
                    s.start * 1000.0 / t.timescale
                    for t in tracks for s in listed[t.kind] if s.period == period
                )  # fmt: skip
            out.append(f'  <Period id="p{period}" start="{_duration(start_ms / 1000)}">')
            for t in tracks:
                segments = [s for s in listed[t.kind] if s.period == period]
                if segments:
                    out.extend(self._adaptationSet(t, segments, start_ms, q))
            out.append("  </Period>")
        out.append(
            '  <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value='
            + quoteattr(utcTiming) + "/>"
        )  # fmt: skip
        out.append("</MPD>")
        return "\n".join(out) + "\n"

    def _adaptationSet(
        self, t: _Track, segments: list[_Segment], start_ms: float, q: str
    ) -> list[str]:
        track = t.track
        assert track is not None
        kind = t.kind
        peak = self._trackBandwidth(t)[0]
        if not peak:
            peak = self._metadataRate("videodatarate" if kind == VIDEO else "audiodatarate") or (
                2_000_000 if kind == VIDEO else 128_000
            )
        codecs = track.codec_string
        if kind == VIDEO:
            extra = f' width="{track.width}" height="{track.height}"'
            rate = self._frameRate()
            if rate:
                fraction = Fraction(rate).limit_denominator(1001)
                text = str(fraction.numerator) if fraction.denominator == 1 else str(fraction)
                extra += f' frameRate="{text}"'
            head = (
                '    <AdaptationSet id="0" contentType="video" mimeType="video/mp4"'
                f' codecs="{codecs}"{extra} segmentAlignment="true" startWithSAP="1">'
            )
            rep = f'      <Representation id="video" bandwidth="{peak}" codecs="{codecs}"{extra}>'
            inner = []
        else:
            head = (
                '    <AdaptationSet id="1" contentType="audio" mimeType="audio/mp4"'
                f' codecs="{codecs}" audioSamplingRate="{track.sample_rate}"'
                ' segmentAlignment="true" startWithSAP="1">\n'
                '      <AudioChannelConfiguration schemeIdUri='
                '"urn:mpeg:dash:23003:3:audio_channel_configuration:2011"'
                f' value="{track.channels or 2}"/>'
            )
            rep = (
                f'      <Representation id="audio" bandwidth="{peak}" codecs="{codecs}"'
                f' audioSamplingRate="{track.sample_rate}">'
            )
            inner = []
        pto = int(round(start_ms * t.timescale / 1000.0))
        init = quoteattr(f"{kind}/{self._initName(segments[0].init)}{q}")
        media = quoteattr(f"{kind}/$Number$.m4s{q}")
        lines = [head, rep, *inner]
        lines.append(
            f'        <SegmentTemplate timescale="{t.timescale}" presentationTimeOffset="{pto}"'
            f" startNumber=\"{segments[0].msn}\" initialization={init} media={media}>"
        )
        lines.append("          <SegmentTimeline>")
        runs: list[list[Optional[int]]] = []  # [t or None, d, r]
        end: Optional[int] = None
        for s in segments:
            if runs and s.start == end and s.duration == runs[-1][1]:
                runs[-1][2] += 1  # type: ignore[operator]
            else:
                runs.append([None if s.start == end else s.start, s.duration, 0])
            end = s.start + s.duration
        for start, duration, repeat in runs:
            text = "            <S"
            if start is not None:
                text += f' t="{start}"'
            text += f' d="{duration}"'
            if repeat:
                text += f' r="{repeat}"'
            lines.append(text + "/>")
        lines += [
            "          </SegmentTimeline>",
            "        </SegmentTemplate>",
            "      </Representation>",
            "    </AdaptationSet>",
        ]
        return lines
