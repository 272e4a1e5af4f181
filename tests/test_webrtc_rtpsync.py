"""
The timeline of a WebRTC publisher (tokengate.webrtc.rtpsync): RTP
timestamps across the 32-bit wrap, audio placed by arrival and then by the
RTCP sender reports.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.webrtc.rtpsync import (
    RESYNC_MS,
    PublisherTimeline,
    TimestampUnwrapper,
    ntp_seconds,
)

WRAP = 1 << 32


def ntp(seconds: float) -> int:
    whole = int(seconds)
    return (whole << 32) | int((seconds - whole) * WRAP)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Unwrapper(SynchronousTestCase):
    def test_wrap(self):
        u = TimestampUnwrapper()
        self.assertEqual(u.unwrap(WRAP - 10), WRAP - 10)
        self.assertEqual(u.unwrap(5), WRAP + 5)
        # an older (reordered) one from before the wrap
        self.assertEqual(u.unwrap(WRAP - 3), WRAP - 3)
        self.assertEqual(u.highest, WRAP + 5)
        self.assertEqual(u.extend(WRAP - 1), WRAP - 1)

    @given(st.integers(0, WRAP - 1), st.lists(st.integers(-5000, 90000), max_size=200))
    def test_continuous(self, origin, steps):
        """
        Any walk with steps well under half the range unwraps to the walk.
        """
        u = TimestampUnwrapper()
        true = origin
        self.assertEqual(u.unwrap(origin), origin)
        for step in steps:
            true += step
            self.assertEqual(u.unwrap(true % WRAP), true)

    def test_ntp(self):
        self.assertEqual(ntp_seconds((5 << 32) | (1 << 31)), 5.5)


class Timeline(SynchronousTestCase):
    def test_video_from_zero_across_wrap(self):
        t = PublisherTimeline(Clock())
        start = WRAP - 9000  # 100 ms before the wrap
        self.assertEqual(t.video(start), 0)
        self.assertEqual(t.video((start + 3000) % WRAP), 33)
        self.assertEqual(t.video((start + 90000) % WRAP), 1000)

    def test_audio_waits_for_video(self):
        clock = Clock()
        t = PublisherTimeline(clock)
        self.assertFalse(t.audioStarts())
        self.assertIsNone(t.audio(t.audioSeconds(48000)))
        self.assertIsNone(t.syncedBy)

    def test_audio_only(self):
        t = PublisherTimeline(Clock(), hasVideo=False)
        self.assertTrue(t.audioStarts())
        s = t.audioSeconds(123456)
        self.assertEqual(t.audio(s), 0)
        self.assertEqual(t.audio(s + 0.02), 20)
        self.assertEqual(t.syncedBy, "audio-only")

    def test_arrival_then_reports(self):
        """
        Audio is first placed where the video is when it arrives; once both
        tracks have reported, by the reports (here the audio was captured
        400 ms before the video it arrived with), and only forward.
        """
        clock = Clock()
        t = PublisherTimeline(clock)
        v0, a0 = 1_000_000, 7_000_000
        t.video(v0)
        clock.now += 0.5
        self.assertEqual(t.video(v0 + 45000), 500)
        # audio at a0 arrives now: placed at 500 ms
        self.assertEqual(t.audio(t.audioSeconds(a0)), 500)
        self.assertEqual(t.syncedBy, "arrival")
        # reports: video v0 was captured at NTP 100.0, audio a0 at 100.1
        t.senderReport("video", ntp(100.0), v0)
        t.senderReport("audio", ntp(100.1), a0)
        # a0 + 20 ms now belongs at 120 ms: before what was placed, dropped
        self.assertIsNone(t.audio(t.audioSeconds(a0 + 960)))
        self.assertEqual(t.syncedBy, "rtcp")
        self.assertEqual(t.overlapDropped, 1)
        # ... until the audio passes the last placed
        self.assertEqual(t.audio(t.audioSeconds(a0 + 48000 * 4 // 10 + 960)), 520)

    def test_reports_only_when_both(self):
        clock = Clock()
        t = PublisherTimeline(clock)
        t.video(0)
        t.senderReport("video", ntp(50.0), 0)
        t.senderReport("audio", ntp(50.0), 0)  # no audio yet: ignored
        self.assertEqual(t.audio(t.audioSeconds(480)), 0)
        self.assertEqual(t.syncedBy, "arrival")

    def test_drift_resync(self):
        clock = Clock()
        t = PublisherTimeline(clock)
        t.video(0)
        t.audio(t.audioSeconds(0))
        t.senderReport("video", ntp(10.0), 0)
        t.senderReport("audio", ntp(10.0), 0)
        self.assertEqual(t.audio(0.02), 20)
        first = t.audioOffset
        # a small move is ignored
        t.senderReport("audio", ntp(11.0 + RESYNC_MS / 2000), 48000)
        self.assertEqual(t.audio(1.0), 1000)
        self.assertEqual(t.audioOffset, first)
        # a larger one re-places the audio (forward: a gap)
        t.senderReport("audio", ntp(12.0 + 2 * RESYNC_MS / 1000), 96000)
        self.assertEqual(t.audio(2.0), 2000 + int(2 * RESYNC_MS))

    @settings(max_examples=200)
    @given(
        videoOrigin=st.integers(0, WRAP - 1),
        audioOrigin=st.integers(0, WRAP - 1),
        captureSkew=st.floats(-2.0, 2.0),
        arrivalDelay=st.floats(0.0, 0.5),
        audioRate=st.sampled_from([48000, 8000]),
    )
    def test_reports_give_capture_alignment(self, videoOrigin, audioOrigin, captureSkew,
                                            arrivalDelay, audioRate):
        """
        Whatever the RTP origins (wrap included) and however late audio
        arrives, once both tracks reported, audio captured at wallclock W
        lands within 1 ms of where video captured at W is.
        """
        clock = Clock()
        t = PublisherTimeline(clock, audioRate=audioRate)
        base = 5000.0  # the wallclock of the first video frame
        t.video(videoOrigin)
        clock.now += 3.0
        t.video((videoOrigin + 3 * 90000) % WRAP)
        # audio captured at base + 3 + captureSkew + k*20ms
        first = base + 3.0 + captureSkew

        def audioTs(wall):
            return (audioOrigin + round((wall - first) * audioRate)) % WRAP

        clock.now += arrivalDelay
        t.audio(t.audioSeconds(audioTs(first)))
        t.senderReport("video", ntp(base + 3.0), (videoOrigin + 3 * 90000) % WRAP)
        t.senderReport("audio", ntp(first + 1.0), audioTs(first + 1.0))
        placed = t._lastAudio
        for k in range(1, 200):
            wall = first + 1.0 + k * 0.02
            ms = t.audio(t.audioSeconds(audioTs(wall)))
            expected = (wall - base) * 1000
            if ms is None:
                # dropped only before the timeline's start or where audio
                # was already placed by arrival
                self.assertTrue(expected < 1 or expected <= placed + 1, (expected, placed))
                continue
            self.assertLessEqual(abs(ms - expected), 1.0)
            placed = ms
        self.assertEqual(t.syncedBy, "rtcp")
