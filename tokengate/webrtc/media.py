# -*- test-case-name: tests.interop.test_webrtc_media -*-
"""
WebRTC media: the choice of engine (L{make_engine}: aiortc's
L{tokengate.webrtc.engine.AiortcEngine}, or L{UnavailableEngine} and why),
and H.264 between Annex B and FLV for the WebRTC paths (L{AnnexBToFLV},
L{flv_to_annexb}, L{config_annexb}).

The engine is L{tokengate.webrtc.engine}; the publishing and playing peers
are L{tokengate.webrtc.publish} and L{tokengate.webrtc.play}; every private
aiortc internal used is in L{tokengate.webrtc.aiortcpatches} (setup.py pins
aiortc).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred, succeed

from tokengate.logsafe import Logger

if TYPE_CHECKING:
    from tokengate.config import ServerConfig
    from tokengate.metrics import Metrics
from tokengate.media.codecs import (
    AVCDecoderConfigurationRecord,
    AVC_SEQUENCE_HEADER,
    FRAME_INTER,
    FRAME_KEY,
    build_avcc_from_sps_pps,
    build_video_tag,
    length_prefixed_to_annexb,
)
from tokengate.media.codecs.h264 import annexb_access_unit

__all__ = ["UnavailableEngine", "make_engine", "AnnexBToFLV", "flv_to_annexb", "config_annexb"]

_log = Logger()


class UnavailableEngine:
    """
    No WebRTC media in this process, and why.
    """

    available = False

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def close(self) -> Deferred[None]:
        return succeed(None)


def make_engine(reactor: Any, config: "ServerConfig", metrics: "Metrics") -> Any:
    """
    The aiortc engine (L{tokengate.webrtc.engine.AiortcEngine}) when
    C{reactor} is Twisted's asyncio reactor and aiortc imports; otherwise an
    L{UnavailableEngine}, logged once.

    @param config: the settings the engine uses (C{webrtcTranscodes},
        C{serverIceServers}).
    @param metrics: where the engine counts.
    @raise tokengate.webrtc.aiortcpatches.AiortcInternalsChanged: aiortc
        imports but lacks internals the engine relies on.
    """
    try:
        from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    except ImportError:  # pragma: no cover
        AsyncioSelectorReactor = ()  # type: ignore[assignment, misc]
    if not isinstance(reactor, AsyncioSelectorReactor):
        reason = ("WebRTC media needs Twisted's asyncio reactor (start with "
                  "'twistd -r asyncio -n tokengate'); this process runs {}".format(
                      type(reactor).__name__))
        _log.warn("WebRTC media is off: {reason}", reason=reason)
        return UnavailableEngine(reason)
    try:
        import aiortc  # noqa: F401
        import av  # noqa: F401
    except ImportError as e:
        reason = "aiortc is not installed ({})".format(e)
        _log.warn("WebRTC media is off: {reason}", reason=reason)
        return UnavailableEngine(reason)
    # Outside the ImportError guard: an aiortc whose internals changed stops
    # the server with AiortcInternalsChanged rather than run without WebRTC.
    from tokengate.webrtc.engine import AiortcEngine

    return AiortcEngine(reactor, transcodes=config.webrtcTranscodes,
                        iceServers=config.serverIceServers, metrics=metrics)


# --- H.264 between Annex B and FLV ---------------------------------------------------


class AnnexBToFLV:
    """
    Turns Annex B access units into FLV video tag bodies.
    """

    def __init__(self) -> None:
        self.sps: Optional[bytes] = None
        self.pps: Optional[bytes] = None

    def convert(self, data: bytes, ms: int) -> list[tuple[int, bytes]]:
        """
        @return: (ms timestamp, tag body) pairs: a sequence header when the
            parameter sets changed, then the frame (none before the first
            keyframe with SPS/PPS).
        """
        unit = annexb_access_unit(data, keep_parameter_sets=True)
        out: list[tuple[int, bytes]] = []
        sps = unit.sps[-1] if unit.sps else None
        pps = unit.pps[-1] if unit.pps else None
        key = unit.keyframe
        if sps is not None and pps is not None and (sps != self.sps or pps != self.pps):
            self.sps, self.pps = sps, pps
            record = build_avcc_from_sps_pps(sps, pps)
            out.append((ms, build_video_tag(FRAME_KEY, record,
                                            avc_packet_type=AVC_SEQUENCE_HEADER)))
        if self.sps is None or not unit.data:
            return out
        out.append((ms, build_video_tag(FRAME_KEY if key else FRAME_INTER, unit.data)))
        return out


def flv_to_annexb(body: bytes, config: Optional[bytes]) -> tuple[bytes, bool, int]:
    """
    An FLV AVC NALU tag body as Annex B (SPS/PPS from C{config}, an avcC
    record, in front of keyframes).

    @return: (Annex B, is a keyframe, composition offset in ms)
    """
    key = (body[0] >> 4) == FRAME_KEY
    cts = int.from_bytes(body[2:5], "big", signed=True)
    data = length_prefixed_to_annexb(body[5:])
    if key and config is not None:
        data = config + data
    return data, key, cts


def config_annexb(record: bytes) -> bytes:
    """The SPS and PPS of an avcC record, as Annex B."""
    r = AVCDecoderConfigurationRecord.parse(record)
    return b"".join(b"\x00\x00\x00\x01" + bytes(n) for n in (*r.sps, *r.pps))
