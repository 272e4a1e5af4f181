"""
Tests for L{tokengate.webrtc.aiortcpatches}: the check of the aiortc
internals it relies on finds them in the pinned aiortc, names each one that
is missing or changed, and the patches it installs are installed once.
"""

from __future__ import annotations

from typing import Any, Optional

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

    def test_dtlsContextChanged(self) -> None:
        from aiortc import RTCCertificate

        def _create_ssl_context(self, profiles, extra):  # pragma: no cover - never run
            pass

        self.patch(RTCCertificate, "_create_ssl_context", _create_ssl_context)
        self.assertMissing("_create_ssl_context takes")
        self.patch(RTCCertificate, "_create_ssl_context", None)
        self.assertMissing("RTCCertificate._create_ssl_context is gone")


def _peerContext(keyType: str, maxVersion: int = 0) -> Any:
    """
    A DTLS context of a remote peer with a self-signed certificate of
    C{keyType} (C{"rsa"}, as GStreamer's webrtcbin makes, or C{"ecdsa"}),
    OpenSSL's default suites, asking for the other side's certificate.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from OpenSSL import SSL, crypto

    key: Any = (rsa.generate_private_key(65537, 2048) if keyType == "rsa"
                else ec.generate_private_key(ec.SECP256R1()))
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "peer")])
    now = datetime.datetime.now(tz=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.use_certificate(crypto.X509.from_cryptography(cert))
    ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: True)
    ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    if maxVersion:
        ctx.set_max_proto_version(maxVersion)
    return ctx


def _handshake(client: Any, server: Any) -> tuple[Optional[str], Optional[str]]:
    """
    A DTLS handshake in memory between two contexts.

    @return: the suite agreed and the protocol version, or the OpenSSL
        error that ended it and L{None}.
    """
    from OpenSSL import SSL

    c, s = SSL.Connection(client), SSL.Connection(server)
    c.set_connect_state()
    s.set_accept_state()
    for _ in range(20):
        for conn in (c, s):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                return repr(e), None
        for a, b in ((c, s), (s, c)):
            while True:
                try:
                    data = a.bio_read(65536)
                except SSL.WantReadError:
                    break
                b.bio_write(data)
        done = [conn.get_state_string() == b"SSL negotiation finished successfully"
                for conn in (c, s)]
        if all(done):
            return c.get_cipher_name(), c.get_protocol_version_name()
    return "no progress", None


class DtlsSuites(SynchronousTestCase):
    """
    L{aiortcpatches.restrictDtls}, as every DTLS context of the server has it
    (L{aiortcpatches.installDtlsCiphers}): aiortc's context as DTLS client
    reaches a DTLS server with an RSA certificate (GStreamer's webrtcbin),
    which it does not without it; with an ECDSA server as before; as DTLS
    server it picks an ECDHE-ECDSA suite; DTLS 1.0 and suites without
    forward secrecy, authentication or with NULL/export ciphers are refused.
    """

    def setUp(self) -> None:
        try:
            import aiortc  # noqa: F401
        except ImportError:
            self.skipTest("aiortc not installed")
        from aiortc import RTCCertificate
        from aiortc.rtcdtlstransport import SRTP_PROFILES

        from tokengate.webrtc import aiortcpatches

        self.patches = aiortcpatches
        certificate = RTCCertificate.generateCertificate()
        self.aiortc = lambda: aiortcpatches._aiortcContext(certificate, SRTP_PROFILES)
        self.restricted = lambda: aiortcpatches.restrictDtls(self.aiortc())

    def test_rsaServer(self) -> None:
        """
        aiortc's own suites find none in common with an RSA server ("no
        shared cipher"); the server's suites take an ECDHE-RSA one, over
        DTLS 1.2.
        """
        error, _ = _handshake(self.aiortc(), _peerContext("rsa"))
        self.assertIn("no shared cipher", error)
        suite, version = _handshake(self.restricted(), _peerContext("rsa"))
        self.assertTrue(suite.startswith("ECDHE-RSA-"), suite)
        self.assertEqual(version, "DTLSv1.2")

    def test_ecdsa(self) -> None:
        """
        An ECDSA peer (Chromium, Firefox, aiortc), either side: an
        ECDHE-ECDSA suite.
        """
        suite, version = _handshake(self.restricted(), _peerContext("ecdsa"))
        self.assertTrue(suite.startswith("ECDHE-ECDSA-"), suite)
        self.assertEqual(version, "DTLSv1.2")
        suite, version = _handshake(_peerContext("rsa"), self.restricted())
        self.assertTrue(suite.startswith("ECDHE-ECDSA-"), suite)
        self.assertEqual(version, "DTLSv1.2")

    def test_dtls10Refused(self) -> None:
        """
        A peer capped at DTLS 1.0 is refused whatever the OpenSSL build's
        security level (at level 0, where OpenSSL itself allows DTLS 1.0,
        the same suites without the lowest version take it).
        """
        dtls10 = 0xFEFF
        level0 = self.patches.DTLS_CIPHERS + b":@SECLEVEL=0"
        suitesOnly = self.aiortc()
        suitesOnly.set_cipher_list(level0)
        _, version = _handshake(suitesOnly, _peerContext("ecdsa", maxVersion=dtls10))
        self.assertEqual(version, "DTLSv1")
        restricted = self.restricted()
        restricted.set_cipher_list(level0)
        error, version = _handshake(restricted, _peerContext("ecdsa", maxVersion=dtls10))
        self.assertIsNone(version, error)
        self.assertIn("unsupported protocol", error)

    def test_suites(self) -> None:
        """
        Every suite is ECDHE (forward secret) with an ECDSA or RSA
        signature and an AEAD or AES cipher: no NULL, anonymous, export,
        static RSA, RC4 or 3DES suite.
        """
        from OpenSSL import SSL

        ctx = self.restricted()
        names = SSL.Connection(ctx).get_cipher_list()
        # TLS 1.3 suites are listed too but DTLS 1.2 never uses them
        names = [n for n in names if not n.startswith("TLS_")]
        self.assertEqual(names, self.patches.DTLS_CIPHERS.decode().split(":"))
        for n in names:
            self.assertRegex(n, r"^ECDHE-(ECDSA|RSA)-(AES(128|256)(-GCM)?|CHACHA20)-"
                                r"(SHA|SHA256|POLY1305)$")

    def test_installed(self) -> None:
        """
        Installed (once), every context aiortc makes is restricted.
        """
        from aiortc import RTCCertificate
        from aiortc.rtcdtlstransport import SRTP_PROFILES
        from OpenSSL import SSL

        self.patches.installDtlsCiphers()
        installed = RTCCertificate._create_ssl_context
        self.patches.installDtlsCiphers()
        self.assertIs(RTCCertificate._create_ssl_context, installed)
        ctx = RTCCertificate.generateCertificate()._create_ssl_context(SRTP_PROFILES)
        self.assertEqual([n for n in SSL.Connection(ctx).get_cipher_list()
                          if not n.startswith("TLS_")],
                         self.patches.DTLS_CIPHERS.decode().split(":"))
        suite, _ = _handshake(ctx, _peerContext("rsa"))
        self.assertTrue(suite.startswith("ECDHE-RSA-"), suite)
