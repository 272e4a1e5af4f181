"""
Tests for L{tokengate.webrtc.aiortcpatches}: the check of the aiortc
internals it relies on finds them in the pinned aiortc, names each one that
is missing or changed, and the patches it installs are installed once.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase


class AiortcInternals(SynchronousTestCase):
    def setUp(self) -> None:
        try:
            import aiortc  # noqa: F401
        except ImportError:
            self.skipTest("aiortc not installed")
        from tokengate.webrtc import aiortcpatches

        self.patches = aiortcpatches

    def test_pinnedVersion(self) -> None:
        """
        The installed aiortc is the one the module was written for, and has
        every internal.
        """
        import aiortc

        self.assertEqual(aiortc.__version__, self.patches.WRITTEN_FOR)
        self.assertEqual(self.patches.checkInternals(), [])
        self.patches.requireInternals()  # does not raise

    def assertMissing(self, expected: str) -> None:
        problems = self.patches.checkInternals()
        self.assertTrue(any(expected in p for p in problems), problems)
        e = self.assertRaises(self.patches.AiortcInternalsChanged, self.patches.requireInternals)
        self.assertIn(expected, str(e))
        self.assertIn("aiortc==" + self.patches.WRITTEN_FOR, str(e))

    def test_methodGone(self) -> None:
        from aiortc import RTCRtpReceiver, RTCRtpSender

        self.patch(RTCRtpSender, "_send_keyframe", None)
        self.assertMissing("RTCRtpSender._send_keyframe")
        self.patch(RTCRtpReceiver, "_send_rtcp_pli", None)
        self.assertMissing("RTCRtpReceiver._send_rtcp_pli")

    def test_packGone(self) -> None:
        from aiortc.codecs import h264

        self.patch(h264.H264Encoder, "pack", None)
        self.assertMissing("H264Encoder.pack")

    def test_decoderWorkerChanged(self) -> None:
        from aiortc import rtcrtpreceiver

        def decoder_worker(loop, queue, output, error):  # pragma: no cover - never run
            pass

        self.patch(rtcrtpreceiver, "decoder_worker", decoder_worker)
        self.assertMissing("decoder_worker takes")

    def test_receiverAttributeGone(self) -> None:
        """
        The name-mangled attributes exist only on instances: the check
        makes a receiver and looks inside it.
        """
        from aiortc import RTCRtpReceiver

        original = RTCRtpReceiver.__init__
        for name in ("decoder_queue", "active_ssrc", "rtx_ssrc", "timestamp_mapper"):
            def init(self, *a, _name=name, **kw):
                original(self, *a, **kw)
                delattr(self, "_RTCRtpReceiver__" + _name)

            self.patch(RTCRtpReceiver, "__init__", init)
            self.assertMissing("RTCRtpReceiver.__" + name)

    def test_transceiverCodecsGone(self) -> None:
        from aiortc import RTCRtpTransceiver

        original = RTCRtpTransceiver.__init__

        def init(self, *a, **kw):
            original(self, *a, **kw)
            del self._codecs

        self.patch(RTCRtpTransceiver, "__init__", init)
        self.assertMissing("RTCRtpTransceiver._codecs")

    def test_installedOnce(self) -> None:
        """
        Installing the passthrough and the packetization cache again leaves
        aiortc's functions as they are after the first time.
        """
        from aiortc import rtcrtpreceiver
        from aiortc.codecs import h264

        self.patches.installPassthrough()
        self.patches.installPackCache()
        worker, pack = rtcrtpreceiver.decoder_worker, h264.H264Encoder.pack
        self.patches.installPassthrough()
        self.patches.installPackCache()
        self.assertIs(rtcrtpreceiver.decoder_worker, worker)
        self.assertIs(h264.H264Encoder.pack, pack)
