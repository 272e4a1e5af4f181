# -*- test-case-name: tests.test_media_packager -*-
"""
The live CMAF packager: one live stream in (FLV tag bodies from the hub),
LL-HLS media playlists, an HLS multivariant playlist and a DASH MPD out,
all over one set of CMAF segments.

L{Packager} is a facade over L{tokengate.media.cmaf}: the
segmenter (L{tokengate.media.cmaf.segmenter}, samples into parts and
segments), the window (L{tokengate.media.cmaf.window}, the segments
held and their bounds, the lookups), the playlists
(L{tokengate.media.cmaf.hls}) and the MPD
(L{tokengate.media.cmaf.dash}).  The rules below are theirs.

Pure code: no I/O and no reactor.  Time comes from an injected clock (an
object with C{seconds()}, e.g. the reactor or C{task.Clock}); blocking
reloads are Deferreds.  One L{Packager} exists per (app, stream id) and
outlives publications: L{Packager.attach} subscribes it to each new
L{tokengate.media.hub.LiveStream} (generation) of that stream id.

URL layout
==========

The HTTP side serves, for application C{App} and stream C{id}::

    /App/streams/{id}.m3u8                 hlsMultivariant(query)
    /App/streams/{id}/video.m3u8           hlsMedia("video", query)
    /App/streams/{id}/audio.m3u8           hlsMedia("audio", query)
    /App/streams/{id}/{id}.mpd             dashMpd(query, location, utcTiming)
    /App/streams/{id}/{kind}/{name}        resource(kind, name)

where C{kind} is C{video} or C{audio} and C{name} is one of

* C{init.mp4}: the first init segment (CMAF header) of the track; a track
  whose codec configuration changes later gets C{init-1.mp4},
  C{init-2.mp4} and so on -- every init URI names one immutable init
  segment, because players cache init segments by URI (hls.js reuses the
  old one for a new EXT-X-MAP with the same URI);
* C{{msn}.m4s}: media segment number C{msn} (C{styp} then its parts);
* C{{msn}.{part}.m4s}: LL-HLS part C{part} (from 0) of segment C{msn}, a
  C{moof}+C{mdat}.

Every URI in the documents is relative to the document and carries
C{?{query}} (the HTTP gate's session credential) unless the query is
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
segment's earliest presentation time is its C{tfdt} -- what CMAF and the
MPD SegmentTimeline expect.  Audio times count 1024-sample AAC frames from
an anchor, re-anchored only when the FLV timestamps jump by more than
100 ms (a jump starts a new fragment, so C{tfdt} carries it).

The media timeline is continuous across publications: the first one starts
at its FLV timestamps, and each later one is offset so that it starts at
the wall-clock time elapsed since media time 0 (and never before the end of
the previous one).  C{availabilityStartTime} of the MPD and every
C{EXT-X-PROGRAM-DATE-TIME} derive from that one origin (wall clock of media
time 0 = arrival time of the first frame minus its timestamp), so the
program date of a segment is the wall-clock time its first frame arrived,
as long as the publisher sends in real time.

Segmentation
============

Video leads: a segment is cut at the first video keyframe at or after
C{segmentTarget} seconds from the segment start (or, as a safety valve, at
any frame once a segment reaches C{max(6 * segmentTarget, 15)} seconds or
a quarter of C{maxBytes}).  Audio follows: an audio frame goes into the
segment whose cut time is at or before the middle of the frame, so audio
segment N and video segment N cover the same time and share the number N
(HLS media sequence number, DASH C{$Number$}).  To be exact even when the
publisher interleaves audio slightly ahead of video, audio frames are held
back until video has reached them (at most one second).  Without video
(audio-only streams, or a video track silent for
C{max(2 * segmentTarget, 3)} seconds) audio leads and segments are cut by
time; a video keyframe takes the lead back with an immediate cut.  Numbers
start at 1 and continue across publications.  A segment number that a
track has no media for (it was absent during that segment) is a gap: listed
with C{EXT-X-GAP} in HLS and in the DASH timeline (to keep C{$Number$}
aligned) but not served; a gap spans from the end of the track's previous
segment, so that each track's timeline has no hole and players summing
durations keep the tracks together.

Each segment is made of parts (LL-HLS partial segments) of at most
C{partTarget} seconds: a part is closed before a frame that would make it
longer, and a new part starts at a mid-segment keyframe when the current
part is at least 85 % of the target (so parts satisfy RFC 8216bis 4.4.4.9
at common frame rates).  A part is INDEPENDENT when it starts with a
keyframe (every audio part is).  A segment's bytes are C{styp} followed by
its parts; the parts are served as slices of it.

A publication after an earlier one starts a new *period*: its first segment
carries C{EXT-X-DISCONTINUITY} (and an C{EXT-X-MAP} to a new init URI if
the codec configuration changed), and in DASH it starts a new C{Period}
(id C{p{n}}, with C{presentationTimeOffset}), listing that period's
segments with that period's init.  A period starts at its first keyframe
or at its first audio frame if that begins earlier, so no track's first
segment lies before the period.  DASH presentation time is media time: the
static MPD of an ended stream keeps the live timeline (period starts,
offsets, numbers and segment times).  A codec configuration change in the
middle of a publication does the same at the next cut.

Memory is bounded: each track keeps C{windowSegments + extraSegments}
complete segments plus the one in progress (playlists list the last
C{windowSegments}; the extra ones stay fetchable for players just behind),
and all held bytes are capped at C{maxBytes} (64 MiB), dropping the oldest
segments.  At most C{MAX_WAITERS} blocking reloads wait at once.

Playlists
=========

Media playlists (C{EXT-X-VERSION:7}) carry C{TARGETDURATION} (the
segment target rounded up, or the longest segment seen rounded to the
nearest second if that is more -- the RFC 8216 rule; it only grows),
C{EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK} (3 part
targets), C{EXT-X-PART-INF}, the media and discontinuity sequence numbers,
C{EXT-X-MAP}, C{EXT-X-PROGRAM-DATE-TIME} and C{EXTINF} (5 decimals) per
segment, C{EXT-X-PART} lines for the segments of the last three target
durations and for the segment in progress, an C{EXT-X-PRELOAD-HINT} for
the next part, and an C{EXT-X-RENDITION-REPORT} for the other track.
After the stream ended they end with C{EXT-X-ENDLIST} and have no preload
hint.  Blocking reloads (C{_HLS_msn}/C{_HLS_part}) are L{Packager.wait}.

API (what the HTTP side uses)
=============================

* C{Packager(app, streamId, clock, segmentTarget=2.0, partTarget=0.5,
  windowSegments=5, extraSegments=3, hls=True, dash=True, maxBytes=64 MiB,
  dashDelay=34)}: the MPD suggests C{dashDelay} seconds of presentation
  delay and lists C{ceil(dashDelay / segmentTarget) + 2} segments (at least
  C{windowSegments}); C{extraSegments} more stay held.
* C{attach(stream)}: subscribe to a new publication; C{close()} (alias
  C{reset()}): unsubscribe and drop everything, failing the waiters.
* C{hlsMultivariant(query)}, C{hlsMedia(kind, query)},
  C{dashMpd(query, location=None, utcTiming="/time")}: text, or None while
  there is nothing to list yet (no complete segment) or when that format is
  disabled.
* C{resource(kind, name)}, C{init(kind, version=None)},
  C{segment(kind, msn)}, C{part(kind, msn, index)}: bytes or None.
* C{wait(kind, msn, part=None)}: a Deferred firing True once the media
  playlist of C{kind} holds segment C{msn} complete or its part C{part}
  (or anything later), False when that can no longer happen (the stream
  ended or the packager closed first) or when too many are waiting.  Cancel
  it for a timeout.  A preload-hinted part may never exist (the segment
  ended first): after C{wait} fires True, C{part()} may still be None (404).
* C{edge(kind)}: C{(msn, part)} of the newest part, for range-checking
  C{_HLS_msn} (RFC 8216bis answers 400 beyond the next two segments);
  C{ended}, C{lastActivity}, C{hasVideo}, C{hasAudio}, C{bandwidth},
  C{generation}, C{metadata}.

Only C{clock.seconds()} is used: the packager arms no timers (the caller
times out its waits and expires idle packagers using C{lastActivity}).

Limits
======

* A non-independent video part decodes only after the parts before it in
  its segment (as with any LL-HLS part); segments and independent parts
  decode on their own.
* C{EXT-X-INDEPENDENT-SEGMENTS} does not hold for a safety-valve cut
  (a GOP longer than C{max(6 * segmentTarget, 15)} seconds).
* Parts meet the 85 % rule only when a frame lasts at most 15 % of the part
  target (above about 14 fps for 0.5 s parts).
* Frames between a mid-publication codec change and the next cut are
  packaged with the old init segment.
* A track missing from a later publication keeps its old playlist (without
  C{EXT-X-ENDLIST}) until the stream ends or the packager is closed.
* FLV timestamps wrapping at 2**32 ms (49.7 days) are not handled.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from tokengate.logsafe import Logger
from tokengate.media.cmaf import dash, hls, window
from tokengate.media.cmaf.segmenter import Segmenter
from tokengate.media.errors import MediaError
from tokengate.media.fmp4 import AUDIO, VIDEO
from tokengate.media.hub import Frame, ISubscriber, LiveStream

__all__ = ["Packager", "MAX_WAITERS", "MAX_BYTES", "DASH_DELAY", "VIDEO", "AUDIO"]

#: blocking reloads waiting at once, at most
MAX_WAITERS = 256
#: bytes held for one stream, at most
MAX_BYTES = 64 * 1024 * 1024
#: seconds of presentation delay the MPD suggests (and so the segments it lists)
DASH_DELAY = 34.0

_KINDS = (VIDEO, AUDIO)


@implementer(ISubscriber)
class Packager:
    """
    Packages one stream id's publications into CMAF for LL-HLS and DASH.
    See the module docstring.

    @ivar segmenter: the L{Segmenter} holding the tracks and their windows.
    @ivar dashSegments: segments the MPD lists per track.
    @ivar keep: complete segments held per track.
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
        self.dashSegments = windowSegments
        if dash and dashDelay > 0:
            self.dashSegments = max(windowSegments, math.ceil(dashDelay / segmentTarget) + 2)
        #: complete segments held per track
        self.keep = max(windowSegments, self.dashSegments) + extraSegments

        #: True once the publication ended (until the next one attaches).
        self.ended = False
        #: clock.seconds() of the last thing received.
        self.lastActivity: float = clock.seconds()
        #: publications seen (attach count)
        self.generation = 0
        self.metadata: dict[str, Any] = {}

        self.segmenter = Segmenter(
            app, streamId, clock, self._changed,
            segmentTarget=segmentTarget, partTarget=partTarget, keep=self.keep,
            maxBytes=maxBytes,
        )  # fmt: skip
        self._stream: Optional[LiveStream] = None
        self._closed = False
        self._waiters: dict[str, list[tuple[int, Optional[int], Deferred[bool]]]] = {
            VIDEO: [],
            AUDIO: [],
        }

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
                self.segmenter.finishPublication()
        self._stream = stream
        self.generation += 1
        self.ended = False
        self.lastActivity = self.clock.seconds()
        self.segmenter.startPublication()

    def metadataChanged(self, metadata: dict[str, Any]) -> None:
        self.metadata = dict(metadata) if isinstance(metadata, dict) else {}

    def configChanged(self, kind: str, body: bytes, timestamp: int) -> None:
        self.lastActivity = self.clock.seconds()
        try:
            if kind == VIDEO:
                self.segmenter.videoConfig(body)
            elif kind == AUDIO:
                self.segmenter.audioConfig(body)
        except MediaError as e:
            self._log.warn(
                "{app}/{streamId}: unusable {kind} configuration ignored: {error}",
                app=self.app, streamId=self.streamId, kind=kind, error=str(e),
            )  # fmt: skip

    def frameReceived(self, frame: Frame) -> None:
        self.lastActivity = self.clock.seconds()
        try:
            if frame.kind == VIDEO:
                self.segmenter.videoFrame(frame)
            else:
                self.segmenter.audioFrame(frame)
        except MediaError as e:
            self.segmenter.warnOnce(
                "bad-" + frame.kind,
                "{app}/{streamId}: bad {kind} frame dropped: {error}",
                kind=frame.kind,
                error=str(e),
            )

    def streamEnded(self) -> None:
        self.lastActivity = self.clock.seconds()
        self.segmenter.finishPublication()
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
        self.segmenter.reset()
        self._failWaiters()

    reset = close

    # ------------------------------------------------------------------
    # Blocking reloads
    # ------------------------------------------------------------------

    def wait(self, kind: str, msn: int, part: Optional[int] = None) -> Deferred[bool]:
        """
        A Deferred firing True once the C{kind} playlist holds segment
        C{msn} complete, or its part C{part} (or anything later); False if
        the stream ends or the packager closes first, or right away when
        L{MAX_WAITERS} are already waiting.  Cancel it to give up.
        """
        t = self.segmenter.track(kind)
        if t is None:
            return succeed(False)
        if window.available(t, msn, part):
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

    def _changed(self, kind: str) -> None:
        """A part or a segment of C{kind} completed."""
        if self._waiters[kind]:
            self._notify(kind)

    def _notify(self, kind: str) -> None:
        t = self.segmenter.track(kind)
        assert t is not None
        waiting = self._waiters[kind]
        ready = [w for w in waiting if window.available(t, w[0], w[1])]
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

    @property
    def hasVideo(self) -> bool:
        """Video is being (or was) packaged."""
        return window.present(self.segmenter.video)

    @property
    def hasAudio(self) -> bool:
        """Audio is being (or was) packaged."""
        return window.present(self.segmenter.audio)

    def edge(self, kind: str) -> Optional[tuple[int, int]]:
        """
        C{(msn, part)} of the newest part of C{kind} (part -1 when the newest
        segment is a gap), or None when there is none.
        """
        t = self.segmenter.track(kind)
        return None if t is None else window.edge(t)

    @property
    def bandwidth(self) -> int:
        """The peak bits per second of the stream (measured, else from metadata)."""
        s = self.segmenter
        return window.bandwidths(s.video, s.audio, self.metadata)[0]

    # ------------------------------------------------------------------
    # Lookups
    # ------------------------------------------------------------------

    def init(self, kind: str, version: Optional[int] = None) -> Optional[bytes]:
        """
        The init segment of C{kind}: version C{version} (0 is C{init.mp4},
        N is C{init-N.mp4}), or by default the current one.
        """
        t = self.segmenter.track(kind)
        return None if t is None else window.init(t, version)

    def segment(self, kind: str, msn: int) -> Optional[bytes]:
        """Complete segment C{msn} of C{kind}."""
        t = self.segmenter.track(kind)
        return None if t is None else window.segment(t, msn)

    def part(self, kind: str, msn: int, index: int) -> Optional[bytes]:
        """Part C{index} of segment C{msn} of C{kind}, complete or in progress."""
        t = self.segmenter.track(kind)
        return None if t is None else window.part(t, msn, index)

    def resource(self, kind: str, name: str) -> Optional[bytes]:
        """
        The bytes a file name under C{/App/streams/{id}/{kind}/} stands for:
        C{init.mp4}, C{init-N.mp4}, C{MSN.m4s} or C{MSN.PART.m4s}; None when
        unknown or not held.
        """
        parsed = window.parseResource(name)
        if parsed is None:
            return None
        version, msn, index = parsed
        if version is not None:
            return self.init(kind, version)
        if index is None:
            return self.segment(kind, msn)
        return self.part(kind, msn, index)

    # ------------------------------------------------------------------
    # Documents
    # ------------------------------------------------------------------

    def _targetDuration(self) -> int:
        return hls.targetDuration(self.segmentTarget, self.segmenter.longest)

    def hlsMultivariant(self, query: str = "") -> Optional[str]:
        """
        The multivariant playlist, served at C{/App/streams/{id}.m3u8}, or
        None until a segment is complete (or when HLS is off).
        """
        if not self.hls:
            return None
        return hls.multivariant(self.segmenter, self.streamId, self.metadata, query)

    def hlsMedia(self, kind: str, query: str = "") -> Optional[str]:
        """
        The LL-HLS media playlist of C{kind}, served at
        C{/App/streams/{id}/{kind}.m3u8}, or None until one of its segments
        is complete (or when HLS is off).
        """
        if not self.hls:
            return None
        return hls.mediaPlaylist(
            self.segmenter, kind, query,
            live=not self.ended,
            windowSegments=self.windowSegments,
            target=self._targetDuration(),
            part_target=hls.partTarget(self.partTarget, self.segmenter.longestPart),
        )  # fmt: skip

    def dashMpd(
        self, query: str = "", location: Optional[str] = None, utcTiming: str = "/time"
    ) -> Optional[str]:
        """
        The MPD, served at C{/App/streams/{id}/{id}.mpd}: dynamic while
        live, static once the stream ended; None until a segment is
        complete (or when DASH is off).  See L{tokengate.media.cmaf.dash.mpd}.
        """
        if not self.dash:
            return None
        return dash.mpd(
            self.segmenter, self.metadata, query, location, utcTiming,
            live=not self.ended,
            now=self.clock.seconds(),
            segments=self.dashSegments,
            segmentTarget=self.segmentTarget,
            dashDelay=self.dashDelay,
            maxSegmentDuration=self._targetDuration(),
        )  # fmt: skip
