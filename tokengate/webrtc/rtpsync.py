# -*- test-case-name: tests.test_webrtc_rtpsync -*-
"""
The timeline of a WebRTC publisher: its RTP timestamps (32-bit, random
origin, one clock per track) on the hub's millisecond timeline, with audio
and video in sync.

Sans-IO: timestamps, RTCP sender reports and the time of arrival go in,
milliseconds come out.

Video defines the timeline: its first frame is 0 ms, later ones follow
its 90 kHz clock.  Audio is placed by arrival time (its first packet after
the video started lands at the video's current position) until both
tracks have sent RTCP sender reports (RFC 3550 section 6.4.1: each maps an
RTP timestamp of its track to the sender's NTP wallclock, so both tracks
can be put on one clock); from then on by the reports, re-placed when
later reports move it by more than L{RESYNC_MS} (clock drift).  A move
forward leaves a short gap in the audio; a move back drops the audio that
would overlap: audio timestamps only increase.

"""

from __future__ import annotations

from typing import Callable, Optional

#: how far (ms) the sender reports must move the audio to re-place it
RESYNC_MS = 30.0

_WRAP = 1 << 32
_HALF = 1 << 31


class TimestampUnwrapper:
    """
    32-bit RTP timestamps to a continuous (extended) count: the first one
    as it is, later ones by the shortest signed step from the highest seen.
    """

    def __init__(self) -> None:
        self.highest: Optional[int] = None

    def extend(self, ts: int) -> int:
        """
        C{ts} extended near the highest timestamp seen, without moving it
        (for a sender report's timestamp).
        """
        ts &= _WRAP - 1
        if self.highest is None:
            return ts
        delta = (ts - self.highest) % _WRAP
        if delta >= _HALF:
            delta -= _WRAP
        return self.highest + delta

    def unwrap(self, ts: int) -> int:
        ext = self.extend(ts)
        if self.highest is None or ext > self.highest:
            self.highest = ext
        return ext


def ntp_seconds(ntp: int) -> float:
    """
    A 64-bit NTP timestamp (32.32 fixed point) in seconds.
    """
    return (ntp >> 32) + (ntp & 0xFFFFFFFF) / _WRAP


class PublisherTimeline:
    """
    One publisher's audio and video timestamps on one millisecond timeline.

    @param now: the clock (seconds) for placing audio by arrival.
    @param hasVideo: whether video is expected (an audio-only publisher's
        audio starts the timeline at 0).
    @ivar audioRate: the audio track's RTP clock rate (set it before the
        first audio).
    """

    def __init__(self, now: Callable[[], float], hasVideo: bool = True,
                 videoRate: int = 90000, audioRate: int = 48000) -> None:
        self._now = now
        self.hasVideo = hasVideo
        self.videoRate = videoRate
        self.audioRate = audioRate
        self._video = TimestampUnwrapper()
        self._audio = TimestampUnwrapper()
        self._videoBase: Optional[int] = None
        #: (ms, arrival) of the newest video frame
        self._lastVideo: Optional[tuple[int, float]] = None
        #: kind -> (NTP seconds, extended RTP timestamp) of its newest report
        self._reports: dict[str, tuple[float, int]] = {}
        self._reportsUsed: Optional[tuple[tuple[float, int], tuple[float, int]]] = None
        #: ms to add to the audio clock's milliseconds, once chosen
        self.audioOffset: Optional[float] = None
        #: how the audio is placed: "rtcp", "arrival", "audio-only" or None
        self.syncedBy: Optional[str] = None
        self._lastAudio = -1
        #: audio dropped because a re-placement moved it back
        self.overlapDropped = 0

    def senderReport(self, kind: str, ntp: int, rtp: int) -> None:
        """
        An RTCP sender report of the C{kind} ("audio" or "video") track.
        """
        unwrapper = self._video if kind == "video" else self._audio
        if unwrapper.highest is None:
            return  # no media of that track yet: its timestamps are unknown
        self._reports[kind] = (ntp_seconds(ntp), unwrapper.extend(rtp))

    def video(self, ts: int) -> int:
        """
        The millisecond timestamp of a video frame (RTP timestamp C{ts}).
        """
        ext = self._video.unwrap(ts)
        if self._videoBase is None:
            self._videoBase = ext
        ms = (ext - self._videoBase) * 1000 // self.videoRate
        if self._lastVideo is None or ms >= self._lastVideo[0]:
            self._lastVideo = (ms, self._now())
        return ms

    def audioSeconds(self, ts: int) -> float:
        """
        An audio RTP timestamp as seconds of the audio track's own clock
        (extended: continuous across the 32-bit wrap).
        """
        return self._audio.unwrap(ts) / self.audioRate

    def audioStarts(self) -> bool:
        """
        Whether audio can be placed now (the video started, or there is
        none).
        """
        return not self.hasVideo or self._lastVideo is not None

    def audio(self, seconds: float) -> Optional[int]:
        """
        The millisecond timestamp of audio at C{seconds} of the audio
        track's clock (from L{audioSeconds}, or a transcoder's count that
        follows it), or L{None} to drop it: before the video started, before
        the timeline's start, or overlapping audio already placed.
        """
        offset = self._place(seconds)
        if offset is None:
            return None
        ms = round(seconds * 1000 + offset)
        if ms < 0 or ms <= self._lastAudio:
            if ms >= 0:
                self.overlapDropped += 1
            return None
        self._lastAudio = ms
        return ms

    def _place(self, seconds: float) -> Optional[float]:
        """
        The audio offset (ms) that places audio at C{seconds}, found or
        updated now; L{None} before the video started.
        """
        if not self.hasVideo:
            if self.audioOffset is None:
                self.audioOffset = -seconds * 1000
                self.syncedBy = "audio-only"
            return self.audioOffset
        if self._lastVideo is None or self._videoBase is None:
            return None  # the timeline starts with the video
        a, v = self._reports.get("audio"), self._reports.get("video")
        if a is not None and v is not None and (a, v) != self._reportsUsed:
            self._reportsUsed = (a, v)
            ntpA, rtpA = a
            ntpV, rtpV = v
            ntpVideoBase = ntpV + (self._videoBase - rtpV) / self.videoRate
            offset = (ntpA - rtpA / self.audioRate - ntpVideoBase) * 1000
            if (self.syncedBy != "rtcp" or self.audioOffset is None
                    or abs(offset - self.audioOffset) > RESYNC_MS):
                self.audioOffset = offset
                self.syncedBy = "rtcp"
        if self.audioOffset is None:
            ms, at = self._lastVideo
            self.audioOffset = ms + (self._now() - at) * 1000 - seconds * 1000
            self.syncedBy = "arrival"
        return self.audioOffset
