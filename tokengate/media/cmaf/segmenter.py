# -*- test-case-name: tests.test_media_packager -*-
"""
The CMAF segmenter: FLV samples in (from the hub, through
L{tokengate.media.packager.Packager}), CMAF fragments out -- LL-HLS parts
and the segments they make, cut on video keyframes with audio following,
numbered and timed on one media timeline across publications, into each
track's window (L{tokengate.media.cmaf.window}).  The rules are in
L{tokengate.media.packager}'s docstring.

Pure code: no I/O and no reactor; time comes from C{clock.seconds()}.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable, Optional

from attrs import evolve

from tokengate.logsafe import Logger
from tokengate.media.codecs import (
    CODEC_AVC,
    NAL_AUD,
    SOUND_AAC,
    AVCDecoderConfigurationRecord,
    length_prefixed_nals,
)
from tokengate.media.codecs.flv import UnsupportedCodec, audio_sample, video_sample
from tokengate.media.cmaf.window import (
    Buffer,
    Segment,
    TrackState,
    capBytes,
    dropOldest,
    pruneInits,
    trim,
)
from tokengate.media.errors import MediaError
from tokengate.media.fmp4 import (
    AUDIO,
    NON_SYNC_SAMPLE_FLAGS,
    STYP,
    SYNC_SAMPLE_FLAGS,
    VIDEO,
    Track,
    fragment,
    init_segment,
)
from tokengate.media.hub import Frame

__all__ = ["Segmenter", "VIDEO_TIMESCALE", "AAC_FRAME", "REANCHOR_MS", "HOLD_MS", "PART_MIN"]

VIDEO_TIMESCALE = 90000
AAC_FRAME = 1024
#: an audio timestamp jump (ms) that re-anchors the audio timeline
REANCHOR_MS = 100
#: how long (ms) audio is held back waiting for video to reach it
HOLD_MS = 1000
#: a mid-segment keyframe starts a new part once the part is this full
PART_MIN = 0.85


class Segmenter:
    """
    Cuts one stream id's publications into CMAF parts and segments.

    @ivar video: the video track's state and window.
    @ivar audio: the audio track's state and window.
    @ivar tracks: C{(video, audio)}.
    @ivar origin: the wall-clock time (C{clock.seconds()}) of media time 0,
        None before the first frame.
    @ivar periodStart: media time (ms) each period starts at, by period.
    @ivar longest: the longest segment seen, in seconds.
    @ivar longestPart: the longest part seen, in seconds.
    @ivar publishTime: C{clock.seconds()} when a segment last completed.
    """

    _log = Logger()

    def __init__(
        self,
        app: str,
        streamId: str,
        clock: Any,
        changed: Callable[[str], None],
        *,
        segmentTarget: float,
        partTarget: float,
        keep: int,
        maxBytes: int,
    ) -> None:
        """
        @param clock: an object with C{seconds()}.
        @param changed: called with the kind (C{"video"} or C{"audio"})
            each time a part or a segment of that track completes.
        @param keep: complete segments held per track.
        @param maxBytes: bytes held in all, at most.
        """
        self.app = app
        self.streamId = streamId
        self.clock = clock
        self._changed = changed
        self.segmentTarget = segmentTarget
        self.partTarget = partTarget
        self.keep = keep
        self.maxBytes = maxBytes
        self._targetMs = segmentTarget * 1000
        self._maxSegmentMs = max(6 * segmentTarget, 15.0) * 1000
        self._stallMs = max(2 * segmentTarget, 3.0) * 1000

        self.video = TrackState(VIDEO)
        self.audio = TrackState(AUDIO)
        self.tracks = (self.video, self.audio)
        self._leader: Optional[str] = None
        self._hold: deque[tuple[float, int, Buffer]] = deque()
        self._firstAudioMs: Optional[float] = None
        self._offset: Optional[int] = None  # ms added to this publication's timestamps
        self.origin: Optional[float] = None  # wall clock of media time 0
        self._timelineEnd = 0.0  # ms, end of everything packaged so far
        self._nextMsn = 1
        self._pubFirstMsn = 1
        self._cuts: dict[int, tuple[float, int]] = {}  # msn -> (start ms, period)
        self._period = -1
        self._periodPending = True
        self.periodStart: dict[int, float] = {}
        self._forceCut = False
        self.longest = 0.0  # seconds, longest segment seen
        self.longestPart = 0.0
        self.publishTime: Optional[float] = None
        self._warned: set[str] = set()

    def track(self, kind: str) -> Optional[TrackState]:
        """The track of C{kind} (C{"video"} or C{"audio"}), None for another kind."""
        if kind == VIDEO:
            return self.video
        if kind == AUDIO:
            return self.audio
        return None

    def startPublication(self) -> None:
        """A new publication starts (the previous one was finished)."""
        self._leader = None
        self._offset = None
        self._firstAudioMs = None
        self._hold.clear()
        self._warned.clear()
        if self._nextMsn > 1:
            self._periodPending = True
        self._pubFirstMsn = self._nextMsn
        for t in self.tracks:
            t.newPublication()

    def reset(self) -> None:
        """
        Drop every segment and the timeline's origin; numbers, periods and
        init versions continue (init URIs are never reused).
        """
        nextVersions = [t.nextVersion for t in self.tracks]
        self.video = TrackState(VIDEO)
        self.audio = TrackState(AUDIO)
        self.tracks = (self.video, self.audio)
        for t, v in zip(self.tracks, nextVersions):
            t.nextVersion = v  # init URIs are never reused
        self._hold.clear()
        self._leader = None
        self._offset = None
        self._cuts.clear()
        self.periodStart.clear()
        self._periodPending = True
        self.origin = None
        self._timelineEnd = 0.0

    def warnOnce(self, key: str, message: str, **kw: Any) -> None:
        """Log C{message} once per publication per C{key}."""
        if key not in self._warned:
            self._warned.add(key)
            self._log.warn(message, app=self.app, streamId=self.streamId, **kw)

    def videoConfig(self, body: bytes) -> None:
        """A new AVC sequence header (an FLV video tag body)."""
        if len(body) < 5 or body[0] & 0x0F != CODEC_AVC:
            self.warnOnce("video-codec", "{app}/{streamId}: video codec is not H.264; ignored")
            return
        avcc = bytes(body[5:])
        record = AVCDecoderConfigurationRecord.parse(avcc)
        nal_size = record.nal_length_size
        if nal_size != 4:
            avcc = evolve(record, length_size_minus_one=3).build()
        track = Track.video_avc(1, avcc, timescale=VIDEO_TIMESCALE)
        self._setTrack(self.video, track)
        self.video.nalSize = nal_size

    def audioConfig(self, body: bytes) -> None:
        """A new AAC sequence header (an FLV audio tag body)."""
        if len(body) < 2 or body[0] >> 4 != SOUND_AAC:
            self.warnOnce("audio-codec", "{app}/{streamId}: audio codec is not AAC; ignored")
            return
        track = Track.audio_aac(2, bytes(body[2:]))
        self._setTrack(self.audio, track)

    def _setTrack(self, t: TrackState, track: Track) -> None:
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
        pruneInits(t)

    def _mediaOffset(self, timestamp: int) -> int:
        offset = self._offset
        if offset is None:
            now = self.clock.seconds()
            if self.origin is None:
                self.origin = now - timestamp / 1000.0
                offset = 0
            else:
                start = max((now - self.origin) * 1000.0, self._timelineEnd + 500.0)
                offset = int(math.ceil(start)) - timestamp
            self._offset = offset
        return offset

    def videoFrame(self, frame: Frame) -> None:
        """Package a video frame (an FLV video tag body)."""
        t = self.video
        if t.track is None:
            return
        body = frame.body
        if not isinstance(body, bytes):
            body = bytes(body)
        try:
            sample = video_sample(body)
        except UnsupportedCodec:
            self.warnOnce("video-codec", "{app}/{streamId}: video codec is not H.264; ignored")
            return
        except MediaError:
            return
        if sample is None:
            return
        view, cts, key = sample
        if t.msn is None and not key and self._leader == VIDEO:
            return
        if t.pending is None and not key:
            return  # video starts (or restarts) at a keyframe
        if t.delay is None:
            t.delay = cts
        data = self._videoPayload(t, view)
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

    def _videoPayload(self, t: TrackState, view: memoryview) -> Buffer:
        """The CMAF sample of length-prefixed NAL units C{view}: 4-byte lengths, no AUD."""
        if t.nalSize != 4:
            out: list[Buffer] = []
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
        t = self.video
        pending, t.pending = t.pending, None
        if pending is not None and t.msn is not None:
            self._add(t, pending[0], pending[1], t.lastDur or 3000, pending[2], pending[3])

    def audioFrame(self, frame: Frame) -> None:
        """Package an audio frame (an FLV audio tag body)."""
        t = self.audio
        if t.track is None:
            return
        body = frame.body
        if not isinstance(body, bytes):
            body = bytes(body)
        try:
            data = audio_sample(body)
        except UnsupportedCodec:
            self.warnOnce("audio-codec", "{app}/{streamId}: audio codec is not AAC; ignored")
            return
        except MediaError:
            return
        if data is None:
            return
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
        middle = (dts + AAC_FRAME / 2) * 1000.0 / rate
        if self._leader == VIDEO or (self._leader is None and self.video.configured):
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
        t = self.audio
        video = self.video.lastMs
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
            if self.video.msn is not None:
                self._closeSegment(self.video)
            self._leader = AUDIO
            while hold:
                middle, dts, data = hold.popleft()
                self._audioLead(t, middle, dts, data)

    def _audioFollow(self, t: TrackState, middle: float, dts: int, data: Buffer) -> None:
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

    def _audioLead(self, t: TrackState, middle: float, dts: int, data: Buffer) -> None:
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

    def _cut(self, ms: float) -> int:
        """Start segment number N at media time C{ms}; return N."""
        msn = self._nextMsn
        self._nextMsn = msn + 1
        if self._periodPending:
            self._period += 1
            self._periodPending = False
            self.periodStart[self._period] = float(math.floor(ms))
            while len(self.periodStart) > 64:
                del self.periodStart[next(iter(self.periodStart))]
        self._cuts[msn] = (ms, self._period)
        while len(self._cuts) > 64:
            del self._cuts[next(iter(self._cuts))]
        self._forceCut = False
        return msn

    def _openSegment(self, t: TrackState, msn: int, start: int) -> None:
        if t.msn is not None:
            self._closeSegment(t)
        segments = t.segments
        if segments and segments[-1].msn >= msn:
            return  # cannot go back (should not happen)
        keep = self.keep
        if segments and segments[-1].msn < msn - 1:
            first = segments[-1].msn + 1
            if msn - first > keep:
                # The gap alone fills the window: drop the rest.
                while segments:
                    dropOldest(t)
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
        t.table = []
        t.payloads = []
        t.hasCto = False
        t.partDur = 0

    def _trackEntersPeriod(self, t: TrackState, period: int, start: int) -> None:
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
        begins = self.periodStart.get(period)
        ms = float(math.floor(start * 1000 / t.timescale))
        if begins is not None and ms < begins:
            self.periodStart[period] = ms

    def _addGap(self, t: TrackState, msn: int) -> None:
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
        t.segments.append(Segment(msn, start, duration, None, (), period, init, disc, 0))
        trim(t, self.keep)

    def _add(self, t: TrackState, data: Buffer, dts: int, duration: int, cto: int, sync: bool) -> None:
        """Append one sample to the open segment of C{t}, closing parts as needed."""
        payloads = t.payloads
        target = t.partTicks
        if payloads and (
            t.partDur + duration > target
            or dts != t.nextDts
            or (sync and t.kind == VIDEO and t.partDur >= PART_MIN * target)
        ):
            self._closePart(t)
            payloads = t.payloads
        if not payloads:
            t.firstDts = dts
            t.firstSync = sync
        payloads.append(data)
        # trun's fields (duration, size, flags, composition offset): no
        # object per sample
        t.table += (duration, len(data), SYNC_SAMPLE_FLAGS if sync else NON_SYNC_SAMPLE_FLAGS,
                    cto & 0xFFFFFFFF)
        if cto:
            t.hasCto = True
        t.partDur += duration
        t.nextDts = dts + duration
        t.segFrames += 1
        if t.partDur + duration > target:
            self._closePart(t)

    def _closePart(self, t: TrackState) -> None:
        payloads = t.payloads
        if not payloads:
            return
        assert t.track is not None
        t.seq += 1
        data = fragment(t.track, t.seq, t.firstDts, t.table, payloads, t.hasCto, with_styp=False)
        t.parts.append(data)
        t.partInfo.append((t.partDur, t.firstSync))
        t.openBytes += len(data)
        t.segDur += t.partDur
        seconds = t.partDur / t.timescale
        if seconds > self.longestPart:
            self.longestPart = seconds
        t.table = []
        t.payloads = []
        t.hasCto = False
        t.partDur = 0
        video, audio = self.video, self.audio
        if video.bytes + video.openBytes + audio.bytes + audio.openBytes > self.maxBytes:
            capBytes(self.tracks, self.maxBytes)
        self._changed(t.kind)

    def _closeSegment(self, t: TrackState) -> None:
        self._closePart(t)
        msn = t.msn
        if msn is None:
            return
        t.msn = None
        if not t.parts:
            # Nothing arrived for it: a later segment fills it as a gap.
            t.lastPeriod = t.segments[-1].period if t.segments else None
            return
        data = b"".join([STYP, *t.parts])  # one copy of the segment
        pos = len(STYP)
        parts = []
        for part, (duration, independent) in zip(t.parts, t.partInfo):
            end = pos + len(part)
            parts.append((pos, end, duration, independent))
            pos = end
        segment = Segment(
            msn, t.segStart, t.segDur, data, tuple(parts), t.segPeriod, t.segInit, t.segDisc,
            t.segFrames,
        )  # fmt: skip
        t.parts = []
        t.partInfo = []
        t.openBytes = 0
        t.segments.append(segment)
        t.bytes += len(data)
        seconds = segment.duration / t.timescale
        if seconds > self.longest:
            self.longest = seconds
        endMs = (segment.start + segment.duration) * 1000.0 / t.timescale
        if endMs > self._timelineEnd:
            self._timelineEnd = endMs
        self.publishTime = self.clock.seconds()
        trim(t, self.keep)
        capBytes(self.tracks, self.maxBytes)
        self._changed(t.kind)

    def _flushTrack(self, t: TrackState) -> None:
        if t.kind == VIDEO:
            self._flushVideo()
        if t.msn is not None:
            self._closeSegment(t)

    def finishPublication(self) -> None:
        """Package everything still buffered: the publication is over."""
        self._flushVideo()
        hold = self._hold
        while hold:
            middle, dts, data = hold.popleft()
            if self._leader == VIDEO:
                self._audioFollow(self.audio, middle, dts, data)
            else:
                self._audioLead(self.audio, middle, dts, data)
        for t in self.tracks:
            if t.msn is not None:
                self._closeSegment(t)
            t.newPublication()
        self._leader = None
        self._offset = None
