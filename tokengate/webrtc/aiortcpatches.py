# -*- test-case-name: tests.test_webrtc_aiortcpatches -*-
"""
Every use tokengate makes of aiortc's private internals, in one module.

Written for B{aiortc 1.16.0} (pinned in C{setup.py}; L{WRITTEN_FOR}), with
av 18.1 and aioice 0.13.0.  Nothing of av or aioice that is private is used:
av is used through its public API (C{av.Packet}, C{av.CodecContext}) and
aioice not at all directly.  The rest of L{tokengate.webrtc} uses aiortc only
through its public API and the functions below.

The internals, what is done with each, and why:

 1. C{aiortc.rtcrtpreceiver.decoder_worker} (a module function, B{replaced}
    once per process by L{installPassthrough}).  A publisher's H.264 goes to
    the hub as it came, without decoding and encoding again: for the
    receivers marked by L{passthrough}, the replacement hands the encoded
    frames (C{(codec, encoded frame)} from the input queue, C{encoded.data},
    C{encoded.timestamp}, C{codec.clockRate}, C{codec.name}) to the track as
    C{(codec name, av.Packet)}; other receivers in the process still decode.
    The receiver starts it as C{threading.Thread(target=decoder_worker,
    args=(loop, input_q, output_q, decode_error))}, looked up when the
    thread starts.
 2. C{RTCRtpReceiver.__decoder_queue} (name-mangled, B{read}): the input
    queue that identifies a receiver to the replaced worker.
 3. C{aiortc.codecs.h264.H264Encoder.pack} (a method, B{replaced} once per
    process by L{installPackCache}): the packetizer is stateless, so an
    C{av.Packet} shared by every WebRTC viewer of a stream (L{share}) is
    packetized once; other packets as before.
 4. C{RTCRtpTransceiver._codecs} (B{read and replaced} per transceiver,
    L{negotiatedCodecs}, L{keepCodecs}): the codecs negotiated from the
    publisher's offer, narrowed to the one video codec the server takes
    (H.264, else VP8) and its retransmission before the answer is made.
 5. C{RTCRtpReceiver._handle_rtcp_packet} (a coroutine method, B{replaced}
    per receiver by L{watchSenderReports}), with C{aiortc.rtp.RtcpSrPacket}
    (C{ssrc}, C{sender_info.ntp_timestamp}, C{sender_info.rtp_timestamp}):
    the publisher's RTCP sender reports place audio and video on one
    timeline (L{tokengate.webrtc.rtpsync}).
 6. C{RTCRtpReceiver.__timestamp_mapper._origin} (B{read}): the frames'
    timestamps are RTP minus the first one; a report's RTP timestamp is made
    relative the same way.
 7. C{RTCRtpReceiver.__rtx_ssrc} (B{read}): the reports of retransmission
    streams are left out.
 8. C{RTCRtpReceiver.__active_ssrc} (B{read}) and
    C{RTCRtpReceiver._send_rtcp_pli} (B{called}), in
    L{requestPictureLoss}: browsers send keyframes only on request, so the
    server asks its WebRTC publishers for one (a PLI) every few seconds and
    when a viewer needs one.
 9. C{RTCRtpSender._send_keyframe} (B{replaced} per sender by
    L{onKeyframeRequest}): a viewer's picture loss (PLI/FIR) goes to the
    stream's publisher or re-encoder instead of aiortc's encoder, which the
    server's pre-encoded video does not use.
10. C{RTCCertificate._create_ssl_context} (a method, B{replaced} once per
    process by L{installDtlsCiphers}): aiortc's DTLS context offers only
    ECDHE-ECDSA suites, so as DTLS client (the server answers
    C{a=setup:active}) it cannot reach a DTLS server with an RSA
    certificate, such as GStreamer's webrtcbin ("no shared cipher").  The
    replacement makes the context as before, then sets L{DTLS_CIPHERS}
    (aiortc's ECDHE-ECDSA suites and their ECDHE-RSA counterparts: forward
    secret, authenticated, no NULL, anonymous or export suite) and DTLS 1.2
    as the lowest version.

At import, L{requireInternals} (L{checkInternals}) looks for each of them (on a receiver and a
transceiver built for the purpose: the name-mangled attributes exist only on
instances) and the module raises L{AiortcInternalsChanged}, naming every
missing one, when any is not there: the server then fails to start rather
than run WebRTC half broken.

Upgrading aiortc: read the diff of C{rtcrtpreceiver.py}, C{rtcrtpsender.py},
C{rtcrtptransceiver.py}, C{rtcdtlstransport.py} and C{codecs/h264.py} for the items above; run
C{python -m tokengate.webrtc.aiortcpatches} (prints the check's findings,
exit status 1 when any) and C{tests.test_webrtc_aiortcpatches},
C{tests.interop.test_webrtc_media}, C{tests.interop.test_webrtc_dtls} and
C{tests.test_webrtc_signalling} (aiortc, Chromium and GStreamer's webrtcbin
against the server); then change the pin in C{setup.py} and
L{WRITTEN_FOR}.
"""

from __future__ import annotations

import asyncio
import fractions
import inspect
import queue
import sys
import types
import weakref
from collections import OrderedDict
from typing import Any, Callable, Optional

import aiortc
import av
from aiortc import RTCCertificate, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc import rtcrtpreceiver as _rtcrtpreceiver
from aiortc.codecs import h264 as _h264
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket
from OpenSSL import SSL

__all__ = [
    "WRITTEN_FOR",
    "AiortcInternalsChanged",
    "checkInternals",
    "requireInternals",
    "installPassthrough",
    "passthrough",
    "installPackCache",
    "share",
    "negotiatedCodecs",
    "keepCodecs",
    "watchSenderReports",
    "requestPictureLoss",
    "onKeyframeRequest",
    "DTLS_CIPHERS",
    "DTLS_MIN_VERSION",
    "restrictDtls",
    "installDtlsCiphers",
]

#: the aiortc version this module was written for (and setup.py pins)
WRITTEN_FOR = "1.16.0"

_RECEIVER = "_RTCRtpReceiver__"


class AiortcInternalsChanged(RuntimeError):
    """
    The installed aiortc lacks internals that tokengate's WebRTC media relies
    on (see L{tokengate.webrtc.aiortcpatches}).
    """


def _parameters(function: Any) -> list[str]:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def checkInternals() -> list[str]:
    """
    Look for every internal this module uses.

    @return: what is missing or changed, one line each (empty when all is
        there).
    """
    problems: list[str] = []
    worker = getattr(_rtcrtpreceiver, "decoder_worker", None)
    if not callable(worker):
        problems.append("aiortc.rtcrtpreceiver.decoder_worker is gone")
    elif _parameters(worker)[:3] != ["loop", "input_q", "output_q"]:
        problems.append("aiortc.rtcrtpreceiver.decoder_worker takes {} instead of "
                        "(loop, input_q, output_q, ...)".format(_parameters(worker)))
    if not callable(getattr(_h264.H264Encoder, "pack", None)):
        problems.append("aiortc.codecs.h264.H264Encoder.pack is gone")
    for cls, name in ((RTCRtpReceiver, "_handle_rtcp_packet"),
                      (RTCRtpReceiver, "_send_rtcp_pli"),
                      (RTCRtpSender, "_send_keyframe")):
        if not callable(getattr(cls, name, None)):
            problems.append(f"aiortc.{cls.__name__}.{name} is gone")
    makeContext = getattr(RTCCertificate, "_create_ssl_context", None)
    if not callable(makeContext):
        problems.append("aiortc.RTCCertificate._create_ssl_context is gone")
    elif _parameters(makeContext) != ["self", "srtp_profiles"]:
        problems.append("aiortc.RTCCertificate._create_ssl_context takes {} instead of "
                        "(self, srtp_profiles)".format(_parameters(makeContext)))
    fields = getattr(RtcpSrPacket, "__dataclass_fields__", {})
    if not {"ssrc", "sender_info"} <= set(fields):
        problems.append("aiortc.rtp.RtcpSrPacket has no ssrc or sender_info")
    try:
        transport: Any = types.SimpleNamespace(state="new")  # what the receiver reads of it
        receiver = RTCRtpReceiver("video", transport)
    except Exception as e:
        problems.append(f"an RTCRtpReceiver cannot be made to look inside it ({e!r})")
        return problems
    attributes = vars(receiver)
    for name, kind in (("decoder_queue", queue.Queue), ("active_ssrc", dict),
                       ("rtx_ssrc", dict)):
        if not isinstance(attributes.get(_RECEIVER + name), kind):
            problems.append(f"aiortc.RTCRtpReceiver.__{name} is gone")
    mapper = attributes.get(_RECEIVER + "timestamp_mapper")
    if mapper is None or "_origin" not in vars(mapper):
        problems.append("aiortc.RTCRtpReceiver.__timestamp_mapper._origin is gone")
    try:
        transceiver = RTCRtpTransceiver("video", receiver, None)  # type: ignore[arg-type]
    except Exception as e:
        problems.append(f"an RTCRtpTransceiver cannot be made to look inside it ({e!r})")
    else:
        if not isinstance(vars(transceiver).get("_codecs"), list):
            problems.append("aiortc.RTCRtpTransceiver._codecs is gone")
    return problems


def requireInternals() -> None:
    """
    Raise L{AiortcInternalsChanged}, naming every missing internal, unless
    L{checkInternals} finds them all (run at import).
    """
    problems = checkInternals()
    if problems:
        raise AiortcInternalsChanged(
            "tokengate's WebRTC media was written for aiortc {} and this is aiortc {}, "
            "whose internals changed: {}. Install aiortc=={} (setup.py pins it), or "
            "port tokengate/webrtc/aiortcpatches.py.".format(
                WRITTEN_FOR, getattr(aiortc, "__version__", "?"), "; ".join(problems),
                WRITTEN_FOR))


# --- 1, 2: encoded frames without decoding -------------------------------------------

_PASSTHROUGH: "weakref.WeakSet[Any]" = weakref.WeakSet()
_passthroughInstalled = False


def installPassthrough() -> None:
    """
    Replace aiortc's decoder worker by one that, for the receivers marked
    with L{passthrough}, forwards the encoded frames as C{(codec name,
    av.Packet)} (other receivers in the process still decode).  Idempotent.
    """
    global _passthroughInstalled
    if _passthroughInstalled:
        return
    original = _rtcrtpreceiver.decoder_worker

    def worker(loop: Any, input_q: Any, output_q: Any, decode_error: Any) -> None:
        if input_q not in _PASSTHROUGH:
            return original(loop, input_q, output_q, decode_error)
        while True:
            task = input_q.get()
            if task is None:
                asyncio.run_coroutine_threadsafe(output_q.put(None), loop)
                return
            codec, encoded = task
            packet = av.Packet(encoded.data)
            packet.pts = encoded.timestamp
            packet.time_base = fractions.Fraction(1, codec.clockRate)
            asyncio.run_coroutine_threadsafe(output_q.put((codec.name, packet)), loop)

    _rtcrtpreceiver.decoder_worker = worker
    _passthroughInstalled = True


def passthrough(receiver: RTCRtpReceiver) -> None:
    """
    Have C{receiver}'s track yield C{(codec name, av.Packet)}: the encoded
    frames, not decoded ones (once L{installPassthrough} ran).
    """
    _PASSTHROUGH.add(getattr(receiver, _RECEIVER + "decoder_queue"))


# --- 3: one RTP packetization per frame for all viewers --------------------------------

#: id -> [packet, its (payloads, timestamp) once packed]: the shared packets
#: of the recent frames (the senders of every viewer of a stream pack the
#: same av.Packet[Any]; the payloads are made once)
_SHARED: "OrderedDict[int, list[Any]]" = OrderedDict()
_SHARED_MAX = 256
_packCacheInstalled = False


def installPackCache() -> None:
    """
    Make aiortc's H.264 packetizer (stateless) packetize a packet given to
    L{share} once; other packets are packed as before.  Idempotent.
    """
    global _packCacheInstalled
    if _packCacheInstalled:
        return
    original = _h264.H264Encoder.pack

    def pack(self: Any, packet: Any) -> Any:
        entry = _SHARED.get(id(packet))
        if entry is None or entry[0] is not packet:
            return original(self, packet)
        if entry[1] is None:
            entry[1] = original(self, packet)
        return entry[1]

    _h264.H264Encoder.pack = pack  # type: ignore[method-assign]
    _packCacheInstalled = True


def share(packet: av.Packet[Any]) -> av.Packet[Any]:
    """
    Mark C{packet} as sent to several viewers: packetized once (among the
    last 256 shared).

    @return: C{packet}
    """
    _SHARED[id(packet)] = [packet, None]
    while len(_SHARED) > _SHARED_MAX:
        _SHARED.popitem(last=False)
    return packet


# --- 4: the negotiated codecs of a transceiver ------------------------------------------


def negotiatedCodecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """
    The codecs negotiated for C{transceiver} from the remote offer.
    """
    codecs: list[RTCRtpCodecParameters] = transceiver._codecs
    return codecs


def keepCodecs(transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecParameters]) -> None:
    """
    Answer with C{codecs} only (a subset of L{negotiatedCodecs}).
    """
    transceiver._codecs = codecs


# --- 5, 6, 7: the publisher's RTCP sender reports ----------------------------------------


def watchSenderReports(receiver: RTCRtpReceiver,
                       report: Callable[[int, int], None]) -> None:
    """
    Call C{report(ntp timestamp, rtp timestamp)} with every RTCP sender
    report of C{receiver}'s media (not of its retransmissions), the RTP
    timestamp made relative to the first frame's as the frames' timestamps
    are, before aiortc handles the packet.
    """
    handle = receiver._handle_rtcp_packet

    async def handleRtcp(packet: Any) -> None:
        origin: Optional[int] = getattr(receiver, _RECEIVER + "timestamp_mapper")._origin
        if isinstance(packet, RtcpSrPacket) and origin is not None and \
                packet.ssrc not in getattr(receiver, _RECEIVER + "rtx_ssrc"):
            report(packet.sender_info.ntp_timestamp,
                   (packet.sender_info.rtp_timestamp - origin) % (1 << 32))
        await handle(packet)

    receiver._handle_rtcp_packet = handleRtcp  # type: ignore[method-assign]


# --- 8, 9: keyframes on request ----------------------------------------------------------


def requestPictureLoss(receiver: RTCRtpReceiver) -> None:
    """
    Send a picture loss indication (PLI) for every source C{receiver} is
    receiving: the sender answers with a keyframe.
    """
    active: dict[int, Any] = getattr(receiver, _RECEIVER + "active_ssrc")
    for ssrc in list(active):
        asyncio.ensure_future(receiver._send_rtcp_pli(ssrc))


def onKeyframeRequest(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """
    Call C{callback} instead of aiortc's encoder when the remote side of
    C{sender} asks for a keyframe (PLI or FIR).
    """
    sender._send_keyframe = callback  # type: ignore[method-assign]


# --- 10: DTLS suites for RSA peers ------------------------------------------------------

#: the DTLS cipher suites of every peer connection, client and server: aiortc's
#: own ECDHE-ECDSA suites, each followed by its ECDHE-RSA counterpart, so that
#: a DTLS server with an RSA certificate (GStreamer's webrtcbin) is reached; the
#: server's own certificate is ECDSA, so as DTLS server it still picks an
#: ECDHE-ECDSA suite
DTLS_CIPHERS = b":".join([
    b"ECDHE-ECDSA-AES128-GCM-SHA256", b"ECDHE-RSA-AES128-GCM-SHA256",
    b"ECDHE-ECDSA-CHACHA20-POLY1305", b"ECDHE-RSA-CHACHA20-POLY1305",
    b"ECDHE-ECDSA-AES128-SHA", b"ECDHE-RSA-AES128-SHA",
    b"ECDHE-ECDSA-AES256-SHA", b"ECDHE-RSA-AES256-SHA",
])

#: the lowest DTLS version taken (DTLS 1.2; OpenSSL's DTLS1_2_VERSION, which
#: pyOpenSSL does not name)
DTLS_MIN_VERSION = 0xFEFD

#: aiortc's own maker of DTLS contexts (before L{installDtlsCiphers})
#: (looked up leniently: L{requireInternals} names it when it is gone)
_aiortcContext: Callable[[Any, Any], SSL.Context] = getattr(
    RTCCertificate, "_create_ssl_context", None)  # type: ignore[assignment]
_dtlsCiphersInstalled = False


def restrictDtls(context: SSL.Context) -> SSL.Context:
    """
    Set L{DTLS_CIPHERS} and L{DTLS_MIN_VERSION} on a DTLS context.

    @return: C{context}
    """
    context.set_cipher_list(DTLS_CIPHERS)
    context.set_min_proto_version(DTLS_MIN_VERSION)
    return context


def installDtlsCiphers() -> None:
    """
    Make every DTLS context aiortc creates offer L{DTLS_CIPHERS} and take
    DTLS 1.2 at least (L{restrictDtls}).  Idempotent.
    """
    global _dtlsCiphersInstalled
    if _dtlsCiphersInstalled:
        return

    def createContext(self: Any, srtp_profiles: Any) -> SSL.Context:
        return restrictDtls(_aiortcContext(self, srtp_profiles))

    RTCCertificate._create_ssl_context = createContext  # type: ignore[method-assign]
    _dtlsCiphersInstalled = True


if __name__ != "__main__":
    requireInternals()


if __name__ == "__main__":  # pragma: no cover - the upgrade check
    found = checkInternals()
    print("aiortc {} (written for {}): {}".format(
        getattr(aiortc, "__version__", "?"), WRITTEN_FOR,
        "every internal is there" if not found else "; ".join(found)))
    sys.exit(1 if found else 0)
