"""
The live stream hub.
"""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tokengate.media.hub import AUDIO, VIDEO, Hub, ISubscriber, StreamInUse

AVC_HEADER = bytes([0x17, 0x00, 0, 0, 0]) + b"avcC"
AAC_HEADER = bytes([0xAF, 0x00, 0x11, 0x88])


def key(n=0):
    return bytes([0x17, 0x01, 0, 0, 0]) + bytes([n]) * 10


def inter(n=0):
    return bytes([0x27, 0x01, 0, 0, 0]) + bytes([n]) * 10


def aac(n=0):
    return bytes([0xAF, 0x01]) + bytes([n]) * 5


@implementer(ISubscriber)
class Recorder:
    viewerKind = "rtmp"

    def __init__(self, fail_on=None):
        self.events = []
        self.fail_on = fail_on

    def _add(self, *e):
        if self.fail_on == e[0]:
            raise RuntimeError("boom")
        self.events.append(e)

    def streamStarted(self, stream):
        self._add("started")

    def metadataChanged(self, metadata):
        self._add("meta", metadata)

    def configChanged(self, kind, body, timestamp):
        self._add("config", kind, timestamp)

    def frameReceived(self, frame):
        self._add("frame", frame.kind, frame.timestamp, frame.keyframe)

    def streamEnded(self):
        self._add("ended")


class HubTests(SynchronousTestCase):
    def setUp(self):
        self.hub = Hub()
        self.stream = self.hub.publish("LiveApp", "s1", "RTMP")

    def feed(self):
        s = self.stream
        s.setMetadata({"width": 320})
        s.videoReceived(0, AVC_HEADER)
        s.audioReceived(0, AAC_HEADER)
        s.videoReceived(0, key())
        s.audioReceived(10, aac())
        s.videoReceived(40, inter())
        s.videoReceived(80, key(1))
        s.audioReceived(90, aac())
        s.videoReceived(120, inter())

    def test_inUse(self):
        self.assertRaises(StreamInUse, self.hub.publish, "LiveApp", "s1", "SRT")
        self.hub.publish("Other", "s1", "SRT")

    def test_claim(self):
        """
        A claimed stream is taken but not live; only its claim publishes it.
        """
        claim = self.hub.claim("LiveApp", "s2")
        self.assertTrue(self.hub.isTaken("LiveApp", "s2"))
        self.assertFalse(self.hub.isLive("LiveApp", "s2"))
        self.assertIsNone(self.hub.record("LiveApp", "s2"))
        self.assertRaises(StreamInUse, self.hub.claim, "LiveApp", "s2")
        self.assertRaises(StreamInUse, self.hub.publish, "LiveApp", "s2", "RTMP")
        other = Hub().claim("LiveApp", "s2")
        self.assertRaises(StreamInUse, self.hub.publish, "LiveApp", "s2", "SRT", claim=other)
        stream = self.hub.publish("LiveApp", "s2", "SRT", claim=claim)
        self.assertTrue(claim.released)
        self.assertEqual(self.hub.record("LiveApp", "s2").status, "broadcasting")
        stream.end()
        self.assertFalse(self.hub.isTaken("LiveApp", "s2"))
        # a used claim does not publish again
        self.assertRaises(StreamInUse, self.hub.publish, "LiveApp", "s2", "SRT", claim=claim)

    def test_claimReleased(self):
        claim = self.hub.claim("LiveApp", "s2")
        claim.release()
        claim.release()
        self.assertFalse(self.hub.isTaken("LiveApp", "s2"))
        self.assertRaises(StreamInUse, self.hub.publish, "LiveApp", "s2", "SRT", claim=claim)
        self.hub.publish("LiveApp", "s2", "RTMP")
        self.assertRaises(StreamInUse, self.hub.claim, "LiveApp", "s2")
        # a released claim does not free a stream someone else holds
        claim.release()
        self.assertTrue(self.hub.isLive("LiveApp", "s2"))

    def test_forgetDropsClaims(self):
        claim = self.hub.claim("LiveApp", "s2")
        self.hub.forget("LiveApp")
        self.assertFalse(self.hub.isTaken("LiveApp", "s2"))
        self.assertRaises(StreamInUse, self.hub.publish, "LiveApp", "s2", "SRT", claim=claim)

    def test_lateSubscriberStartsAtKeyframe(self):
        self.feed()
        r = Recorder()
        self.stream.subscribe(r)
        self.assertEqual(r.events, [
            ("started",), ("meta", {"width": 320}),
            ("config", VIDEO, 80), ("config", AUDIO, 80),
            ("frame", VIDEO, 80, True), ("frame", AUDIO, 90, False), ("frame", VIDEO, 120, False),
        ])

    def test_liveFanoutAndEnd(self):
        r1, r2 = Recorder(), Recorder()
        self.stream.subscribe(r1)
        self.stream.subscribe(r2)
        self.feed()
        self.assertEqual(r1.events, r2.events)
        self.assertEqual(len([e for e in r1.events if e[0] == "frame"]), 6)
        self.stream.end()
        self.assertEqual(r1.events[-1], ("ended",))
        self.assertFalse(self.hub.isLive("LiveApp", "s1"))
        rec = self.hub.record("LiveApp", "s1")
        self.assertEqual((rec.status, rec.publishType), ("finished", "RTMP"))
        # republish: a new generation
        again = self.hub.publish("LiveApp", "s1", "RTMP")
        self.assertEqual(again.generation, 1)
        self.assertEqual(self.hub.record("LiveApp", "s1").status, "broadcasting")

    def test_failingSubscriberDroppedAlone(self):
        bad, good = Recorder(fail_on="frame"), Recorder()
        self.stream.subscribe(bad)
        self.stream.subscribe(good)
        self.feed()
        self.assertNotIn(bad, self.stream.subscribers)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len([e for e in good.events if e[0] == "frame"]), 6)

    def test_viewers(self):
        self.stream.subscribe(Recorder())
        self.hub.addViewerCounter(lambda app, sid: {"hls": 2} if sid == "s1" else {})
        self.assertEqual(self.hub.viewers("LiveApp", "s1"), {"rtmp": 1, "hls": 2})
        rec = self.hub.record("LiveApp", "s1")
        self.assertEqual((rec.status, rec.viewers), ("broadcasting", {"rtmp": 1, "hls": 2}))

    def test_discard(self):
        """
        The record of an ended stream is kept until it is discarded (its
        broadcast was deleted); a live stream's is not discarded.
        """
        self.assertFalse(self.hub.discard("LiveApp", "s1"))
        self.stream.end()
        self.assertEqual(self.hub.record("LiveApp", "s1").status, "finished")
        self.assertEqual([r.streamId for r in self.hub.records("LiveApp")], ["s1"])
        self.assertTrue(self.hub.discard("LiveApp", "s1"))
        self.assertIsNone(self.hub.record("LiveApp", "s1"))
        self.assertEqual(self.hub.records("LiveApp"), [])
        self.assertFalse(self.hub.discard("LiveApp", "s1"))

    def test_gopBounded(self):
        from tokengate.media import hub as hubmod

        self.stream.videoReceived(0, key())
        big = inter() + b"x" * (1024 * 1024)
        for i in range(40):
            self.stream.videoReceived(i, big)
        self.assertLessEqual(self.stream.gopBytes, hubmod.MAX_GOP_BYTES)
