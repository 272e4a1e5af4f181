# -*- test-case-name: tests.test_webrtc_media -*-
"""
WebRTC media with aiortc, on Twisted's asyncio reactor.

Publish: the browser's offer is answered with H.264 preferred (only H.264
is kept when the offer has it); the receiver's decoder is bypassed (a
per-receiver replacement of aiortc's decoder thread hands over the encoded
access units as C{av.Packet}s), and each Annex B access unit becomes an FLV
video tag body in the hub: an AVC sequence header built from SPS/PPS when
they change, then length-prefixed NAL units, keyframes marked.  A
publisher that offers no H.264 sends VP8, transcoded to H.264 on a worker
thread (L{tokengate.webrtc.video}; a bounded number at once, over it the
publish is refused with C{highResourceUsage}).  Opus or G.711 (PCMU, PCMA)
audio is transcoded to AAC (L{ToAac}).  Both are placed on one millisecond
timeline by L{PublisherTimeline}: video from its 90 kHz clock, audio by the
RTCP sender reports of both tracks (by arrival until they come).  The
publisher is asked for a keyframe (PLI) every L{KEYFRAME_INTERVAL} seconds,
since browsers send them only on request, and whenever a WebRTC viewer
asks for one.

Play: the server offers a send-only H.264 video track whose frames are the
hub's, unchanged (Annex B C{av.Packet}s with 90 kHz pts, SPS/PPS in front of
every keyframe), starting at a keyframe.  When the stream has AAC, an Opus
audio track too: the AAC is transcoded once per stream (L{AacToOpus}, shared
by the stream's viewers) and sent as pre-encoded C{av.Packet}s.  The video
packets are shared by the stream's viewers too (L{AiortcEngine.videoPacket}),
and aiortc's H.264 packetizer packetizes a shared packet once.

This relies on aiortc internals (the receiver's decoder worker, timestamp
mapper and RTCP handler, the H.264 packetizer and the transceiver's
negotiated codec list): setup.py pins aiortc.
"""

from __future__ import annotations

import asyncio
import fractions
import weakref
from collections import OrderedDict, deque
from typing import Any, Optional

from twisted.internet.defer import Deferred, DeferredList, succeed

from tokengate.logsafe import Logger
from ..media.codecs import (
    AVCDecoderConfigurationRecord,
    FRAME_INTER,
    FRAME_KEY,
    AAC_SEQUENCE_HEADER,
    AVC_SEQUENCE_HEADER,
    SOUND_AAC,
    build_audio_tag,
    build_avcc_from_sps_pps,
    build_video_tag,
    length_prefixed_to_annexb,
)
from tokengate.media.codecs.h264 import annexb_access_unit
from ..media.hub import AUDIO, VIDEO, Frame, LiveStream
from .audio import OPUS_RATE, PUBLISHER_AUDIO, AacToOpus, ToAac
from .rtpsync import PublisherTimeline
from .video import TranscodeSlots, VideoTranscoder, Vp8ToH264

_log = Logger()

#: seconds between keyframe requests to a WebRTC publisher
KEYFRAME_INTERVAL = 2.0
#: frames a viewer may have queued before it skips to the next keyframe
MAX_QUEUE = 120
VIDEO_CLOCK = 90000


class UnavailableEngine:
    """
    No WebRTC media in this process, and why.
    """

    available = False

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def close(self) -> Deferred:
        return succeed(None)


def make_engine(server: Any, reactor: Any) -> Any:
    """
    The aiortc engine when C{reactor} is Twisted's asyncio reactor and aiortc
    imports; otherwise an L{UnavailableEngine}, logged once.
    """
    try:
        from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    except ImportError:  # pragma: no cover
        AsyncioSelectorReactor = ()  # type: ignore
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
    return AiortcEngine(server, reactor)


def _bridge(coro: Any) -> Deferred:
    return Deferred.fromFuture(asyncio.ensure_future(coro))


# --- encoded frames without decoding ------------------------------------------------

_PASSTHROUGH: "weakref.WeakSet[Any]" = weakref.WeakSet()
_installed = False


def _install_passthrough() -> None:
    """
    Replace aiortc's decoder worker by one that, for the receivers marked
    with L{_passthrough}, forwards the encoded frames as C{av.Packet}s (other
    receivers in the process still decode).
    """
    global _installed
    if _installed:
        return
    import av
    from aiortc import rtcrtpreceiver

    original = rtcrtpreceiver.decoder_worker

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

    rtcrtpreceiver.decoder_worker = worker
    _installed = True


def _passthrough(receiver: Any) -> None:
    _PASSTHROUGH.add(receiver._RTCRtpReceiver__decoder_queue)


# --- one RTP packetization per frame for all viewers -----------------------------------

#: id -> [packet, its (payloads, timestamp) once packed]: the shared packets
#: of the recent frames (the senders of every viewer of a stream pack the
#: same av.Packet; the payloads are made once)
_SHARED: "OrderedDict[int, list[Any]]" = OrderedDict()
_SHARED_MAX = 256
_packCache = False


def _install_pack_cache() -> None:
    """
    Make aiortc's H.264 packetizer (stateless) packetize a shared packet
    once; other packets are packed as before.
    """
    global _packCache
    if _packCache:
        return
    from aiortc.codecs import h264

    original = h264.H264Encoder.pack

    def pack(self: Any, packet: Any) -> Any:
        entry = _SHARED.get(id(packet))
        if entry is None or entry[0] is not packet:
            return original(self, packet)
        if entry[1] is None:
            entry[1] = original(self, packet)
        return entry[1]

    h264.H264Encoder.pack = pack
    _packCache = True


def _share(packet: Any) -> Any:
    _SHARED[id(packet)] = [packet, None]
    while len(_SHARED) > _SHARED_MAX:
        _SHARED.popitem(last=False)
    return packet


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


def _config_annexb(record: bytes) -> bytes:
    r = AVCDecoderConfigurationRecord.parse(record)
    return b"".join(b"\x00\x00\x00\x01" + bytes(n) for n in (*r.sps, *r.pps))


# --- the engine --------------------------------------------------------------------------


class AiortcEngine:
    available = True
    reason = ""

    def __init__(self, server: Any, reactor: Any) -> None:
        _install_passthrough()
        _install_pack_cache()
        self._server = server
        self._reactor = reactor
        self.peers: set[Any] = set()
        #: (app, streamId) -> the WebRTC publisher of that stream
        self.publishers: dict[tuple[str, str], "PublisherPeer"] = {}
        #: (app, streamId) -> (stream, its AAC to Opus transcoder)
        self._audio: dict[tuple[str, str], tuple[LiveStream, AacToOpus]] = {}
        #: (app, streamId) -> (stream, its recent (frame, config, packet))
        self._video: dict[tuple[str, str], tuple[LiveStream, deque]] = {}
        #: (app, streamId) -> (stream, whether its H.264 has B-frames)
        self._bframes: dict[tuple[str, str], tuple[LiveStream, bool]] = {}
        #: (app, streamId) -> the re-encoder of a stream with B-frames
        self._reencoders: dict[tuple[str, str], "Reencoder"] = {}
        #: streams transcoded to H.264 at once (VP8 publishers, B-frames)
        config = getattr(server, "config", None)
        self.transcodeSlots = TranscodeSlots(getattr(config, "webrtcTranscodes", 2))
        metrics = getattr(server, "metrics", None)
        if metrics is not None:
            metrics.callbackGauge("tokengate_webrtc_transcodes",
                                  "Streams transcoded to H.264 for WebRTC (VP8 publishers, "
                                  "B-frame streams with WebRTC viewers)",
                                  lambda: self.transcodeSlots.used)
        reactor.addSystemEventTrigger("before", "shutdown", self.close)

    def rtcConfiguration(self) -> Any:
        """
        The configuration of the server's peer connections: the ICE servers
        of C{ServerConfig.serverIceServers}.
        """
        from aiortc import RTCConfiguration, RTCIceServer

        servers = getattr(self._server.config, "serverIceServers", None) or []
        return RTCConfiguration(iceServers=[
            RTCIceServer(urls=s["urls"], username=s.get("username"),
                         credential=s.get("credential"))
            for s in servers])

    def publisher(self, stream: LiveStream, events: Any) -> "PublisherPeer":
        peer = PublisherPeer(self, stream, events)
        self.peers.add(peer)
        self.publishers[(stream.app, stream.streamId)] = peer
        return peer

    def player(self, stream: LiveStream, events: Any) -> "PlayerPeer":
        peer = PlayerPeer(self, stream, events)
        self.peers.add(peer)
        return peer

    def requestKeyframe(self, stream: LiveStream) -> None:
        """
        A keyframe for the WebRTC viewers of C{stream}: the next one
        re-encoded, or one asked of its WebRTC publisher.
        """
        known = self._reencoders.get((stream.app, stream.streamId))
        if known is not None and known.stream is stream:
            known.transcoder.forceKeyframe()
            return
        self._askPublisher(stream)

    def _askPublisher(self, stream: LiveStream) -> None:
        peer = self.publishers.get((stream.app, stream.streamId))
        if peer is not None and peer.stream is stream:
            peer.requestKeyframe()

    # --- H.264 with B-frames: re-encoded once per stream for its viewers ---------

    def hasBFrames(self, stream: LiveStream, frame: Optional[Frame] = None) -> bool:
        """
        Whether C{stream}'s H.264 has B-frames (a frame with a composition
        offset: in its GOP cache, or C{frame}); once seen, for good.
        """
        key = (stream.app, stream.streamId)
        known = self._bframes.get(key)
        if known is not None and known[0] is stream and known[1]:
            return True
        frames = [frame] if frame is not None else list(stream.gop)
        found = any(f.kind == VIDEO and len(f.body) >= 5 and f.body[1] == 1
                    and f.body[2:5] != b"\x00\x00\x00" for f in frames)
        if known is None or known[0] is not stream or found:
            self._bframes[key] = (stream, found)
        return found

    def reencoder(self, stream: LiveStream) -> Optional["Reencoder"]:
        """
        The re-encoder of C{stream} (made, taking a transcoding slot, when
        there is none), or L{None} when every slot is taken.
        """
        key = (stream.app, stream.streamId)
        known = self._reencoders.get(key)
        if known is not None and known.stream is stream:
            return known
        if known is not None:
            self._dropReencoder(key)
        if not self.transcodeSlots.take():
            return None
        r = self._reencoders[key] = Reencoder(self, stream)
        return r

    def _dropReencoder(self, key: tuple[str, str]) -> None:
        r = self._reencoders.pop(key, None)
        if r is not None:
            r.transcoder.close()
            self.transcodeSlots.give()

    def reencoded(self, stream: LiveStream, packet: Any, key: bool) -> None:
        for p in list(self.peers):
            if isinstance(p, PlayerPeer) and p.stream is stream and p.reencoding:
                p.videoOut(packet, key)

    def audioTranscoder(self, stream: LiveStream) -> Optional[AacToOpus]:
        """
        The shared AAC to Opus transcoder of C{stream} (a new one when the
        stream or its AudioSpecificConfig changed); L{None} without AAC.
        """
        config = stream.audioConfig
        if config is None or len(config) < 3:
            return None
        key = (stream.app, stream.streamId)
        known = self._audio.get(key)
        if known is not None and known[0] is stream and known[1].asc == config[2:]:
            return known[1]
        try:
            transcoder = AacToOpus(bytes(config[2:]))
        except Exception:
            _log.failure("no AAC to Opus transcoder")
            return None
        self._audio[key] = (stream, transcoder)
        return transcoder

    def videoPacket(self, stream: LiveStream, frame: Frame, config: Optional[bytes]) -> Any:
        """
        The Annex B C{av.Packet} of a hub video frame (SPS/PPS from
        C{config} in front of keyframes; pts in 90 kHz units on the hub's
        timeline), made once and shared by the stream's WebRTC viewers.
        """
        import av

        key = (stream.app, stream.streamId)
        known = self._video.get(key)
        if known is None or known[0] is not stream:
            known = self._video[key] = (stream, deque(maxlen=16))
        recent = known[1]
        for f, c, p in reversed(recent):
            if f is frame and c == config:
                return p
        data, _, cts = flv_to_annexb(frame.body, config)
        packet = av.Packet(data)
        packet.pts = max(0, frame.timestamp + cts) * (VIDEO_CLOCK // 1000)
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        recent.append((frame, config, _share(packet)))
        return packet

    def _forget(self, peer: Any) -> None:
        self.peers.discard(peer)
        if isinstance(peer, PlayerPeer):
            key = (peer.stream.app, peer.stream.streamId)
            if not any(isinstance(p, PlayerPeer) and p.stream is peer.stream
                       for p in self.peers):
                self._audio.pop(key, None)
                self._video.pop(key, None)
                self._bframes.pop(key, None)
                self._dropReencoder(key)
        if isinstance(peer, PublisherPeer):
            key = (peer.stream.app, peer.stream.streamId)
            if self.publishers.get(key) is peer:
                del self.publishers[key]

    def close(self) -> Deferred:
        """
        Close every peer connection (the reactor's shutdown waits for it).
        """
        return DeferredList([p.close() for p in list(self.peers)], consumeErrors=True)


class _Peer:
    def __init__(self, engine: AiortcEngine, stream: LiveStream, events: Any) -> None:
        from aiortc import RTCPeerConnection

        self.engine = engine
        self.stream = stream
        self.events = events
        self.pc = RTCPeerConnection(configuration=engine.rtcConfiguration())
        self._closing: Optional[Deferred] = None
        self._connected = False
        self.pc.on("connectionstatechange", self._stateChanged)

    def _stateChanged(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and not self._connected:
            self._connected = True
            self.onConnected()
            self.events.connected()
        elif state in ("failed", "closed") and self._closing is None:
            self.events.ended(state)

    def onConnected(self) -> None:
        pass

    def addCandidate(self, candidate: str, sdpMid: Optional[str],
                     sdpMLineIndex: Optional[int]) -> Deferred:
        from aiortc.sdp import candidate_from_sdp

        text = candidate[len("candidate:"):] if candidate.startswith("candidate:") else candidate
        if not text:
            return succeed(None)
        c = candidate_from_sdp(text)
        c.sdpMid = sdpMid
        c.sdpMLineIndex = sdpMLineIndex
        return _bridge(self.pc.addIceCandidate(c))

    def close(self) -> Deferred:
        if self._closing is None:
            self.engine._forget(self)
            self.onClose()
            self._closing = _bridge(self.pc.close())
        d: Deferred = Deferred()
        self._closing.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def onClose(self) -> None:
        pass


class HighResourceUsage(Exception):
    """
    Every transcoding slot is taken: a VP8-only publisher, or the first
    WebRTC viewer of a stream with B-frames, is refused.
    """

    definition = "highResourceUsage"


class PublisherPeer(_Peer):
    def __init__(self, engine: AiortcEngine, stream: LiveStream, events: Any) -> None:
        super().__init__(engine, stream, events)
        self.converter = AnnexBToFLV()
        self.videoCodec: Optional[str] = None
        self.audioCodec: Optional[str] = None
        self._tasks: list[Any] = []
        self._receiver: Any = None
        self._pli: Any = None
        self._lastPli = -1e9
        #: the publisher's audio to AAC, made at the first audio packet
        self.audio: Optional[ToAac] = None
        #: VP8 to H.264, for a publisher that offered no H.264
        self.transcoder: Optional[Vp8ToH264] = None
        self._slot = False
        self._configSent = False
        self.timeline = PublisherTimeline(engine._reactor.seconds)
        self.pc.on("track", self._track)

    def answer(self, sdp: str) -> Deferred:
        return _bridge(self._answer(sdp))

    async def _answer(self, sdp: str) -> str:
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        hasVideo = False
        for t in self.pc.getTransceivers():
            if t.kind == "video":
                self._chooseVideoCodec(t)
                self._receiver = t.receiver
                hasVideo = True
            _passthrough(t.receiver)
            self._watchSenderReports(t.receiver, t.kind)
        self.timeline.hasVideo = hasVideo
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return self.pc.localDescription.sdp

    def _chooseVideoCodec(self, t: Any) -> None:
        """
        H.264 when offered (packetization mode 1 first), else VP8 (to be
        transcoded, when a slot is free): only it and its retransmission
        stay in the answer.
        """
        def named(name: str) -> list[Any]:
            return [c for c in t._codecs if c.mimeType.lower() == name]

        chosen = named("video/h264")
        if chosen:
            chosen.sort(key=lambda c: str(c.parameters.get("packetization-mode")) != "1")
        else:
            chosen = named("video/vp8")
            if not chosen:
                return  # nothing we can use: aiortc refuses the offer
            if not self._slot:
                if not self.engine.transcodeSlots.take():
                    raise HighResourceUsage()
                self._slot = True
        pts = {c.payloadType for c in chosen}
        rtx = [c for c in t._codecs if c.mimeType.lower() == "video/rtx"
               and c.parameters.get("apt") in pts]
        t._codecs = chosen + rtx

    def _watchSenderReports(self, receiver: Any, kind: str) -> None:
        """
        Hand the RTCP sender reports of the receiver's media (not of its
        retransmissions) to the timeline.
        """
        from aiortc.rtcrtpreceiver import RtcpSrPacket

        handle = receiver._handle_rtcp_packet
        timeline = self.timeline

        async def handleRtcp(packet: Any) -> None:
            # The frames' timestamps are aiortc's (RTP minus the first
            # one): the report's is made relative the same way.
            origin = receiver._RTCRtpReceiver__timestamp_mapper._origin
            if isinstance(packet, RtcpSrPacket) and origin is not None and \
                    packet.ssrc not in receiver._RTCRtpReceiver__rtx_ssrc:
                timeline.senderReport(kind, packet.sender_info.ntp_timestamp,
                                      (packet.sender_info.rtp_timestamp - origin) % (1 << 32))
            await handle(packet)

        receiver._handle_rtcp_packet = handleRtcp

    def _track(self, track: Any) -> None:
        self._tasks.append(asyncio.ensure_future(self._pump(track)))

    async def _pump(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                item = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(item, tuple):
                continue
            codec, packet = item
            if self.stream.ended:
                continue
            if track.kind == "audio":
                self._audio(codec, packet)
                continue
            if track.kind != "video":
                continue
            self.videoCodec = codec
            ms = self.timeline.video(int(packet.pts))
            if codec == "H264":
                self._video(bytes(packet), ms)
            elif codec == "VP8" and self._slot:
                if self.transcoder is None:
                    self.transcoder = Vp8ToH264(self.engine._reactor.callFromThread,
                                                self._transcoded, self.requestKeyframe)
                self.transcoder.frame(bytes(packet), ms * (VIDEO_CLOCK // 1000))

    def _transcoded(self, data: bytes, pts: int, key: bool) -> None:
        if self._closing is None and not self.stream.ended:
            self._video(data, pts // (VIDEO_CLOCK // 1000))

    def _video(self, data: bytes, ms: int) -> None:
        try:
            for ms, body in self.converter.convert(data, ms):
                self.stream.videoReceived(ms, body)
        except Exception:
            _log.failure("a bad H.264 access unit from a WebRTC publisher")

    def _audio(self, codec: str, packet: Any) -> None:
        """
        Opus or G.711 from the publisher: AAC into the hub (a sequence
        header, then raw frames), placed on the video's timeline by
        L{PublisherTimeline}.
        """
        name = codec.lower()
        if name not in PUBLISHER_AUDIO:
            return
        if self.audio is None or self.audio.codec != name:
            try:
                self.audio = ToAac(name)
            except Exception:
                _log.failure("no {codec} to AAC transcoder", codec=codec)
                return
            self.audioCodec = name
            self.timeline.audioRate = self.audio.clockRate
            self._configSent = False
        seconds = self.timeline.audioSeconds(int(packet.pts))
        if not self.timeline.audioStarts():
            return  # the video has not started: the timeline starts with it
        for apts, raw in self.audio.transcode(bytes(packet), round(seconds * OPUS_RATE)):
            ms = self.timeline.audio(apts / OPUS_RATE)
            if ms is None:
                continue
            if not self._configSent:
                self._configSent = True
                self.stream.audioReceived(
                    ms, build_audio_tag(self.audio.config, aac_packet_type=AAC_SEQUENCE_HEADER))
            self.stream.audioReceived(ms, build_audio_tag(raw))

    def onConnected(self) -> None:
        from twisted.internet.task import LoopingCall

        self._pli = LoopingCall(self.requestKeyframe)
        self._pli.clock = self.engine._reactor
        self._pli.start(KEYFRAME_INTERVAL, now=True)

    def requestKeyframe(self) -> None:
        now = self.engine._reactor.seconds()
        receiver = self._receiver
        if receiver is None or self._closing is not None or now - self._lastPli < 0.5:
            return
        self._lastPli = now
        for ssrc in list(receiver._RTCRtpReceiver__active_ssrc):
            asyncio.ensure_future(receiver._send_rtcp_pli(ssrc))

    def onClose(self) -> None:
        if self._pli is not None and self._pli.running:
            self._pli.stop()
        for t in self._tasks:
            t.cancel()
        if self.transcoder is not None:
            self.transcoder.close()
        if self._slot:
            self._slot = False
            self.engine.transcodeSlots.give()


class Reencoder:
    """
    The H.264 of a stream with B-frames (browsers' WebRTC has no frame
    reordering and drops nearly all of it), decoded and encoded again
    without B-frames once, for all of the stream's WebRTC viewers.
    """

    #: frames waiting: room for a whole GOP replayed to the first viewer
    MAX_PENDING = 300

    def __init__(self, engine: AiortcEngine, stream: LiveStream) -> None:
        self.engine = engine
        self.stream = stream
        self.transcoder = VideoTranscoder(
            engine._reactor.callFromThread, self._out,
            lambda: engine._askPublisher(stream), decoder="h264",
            maxPending=self.MAX_PENDING)
        self._last: Optional[Frame] = None

    def feed(self, frame: Frame, config: Optional[bytes]) -> None:
        """
        A hub video frame (every viewer hands over every frame, and a new
        viewer the GOP again: each is fed once, in order).
        """
        last = self._last
        if last is not None and (frame is last or frame.timestamp < last.timestamp):
            return
        self._last = frame
        data, key, cts = flv_to_annexb(frame.body, config)
        self.transcoder.frame(data, max(0, frame.timestamp + cts) * (VIDEO_CLOCK // 1000), key,
                              dts=frame.timestamp * (VIDEO_CLOCK // 1000))

    def _out(self, data: bytes, pts: int, key: bool) -> None:
        import av

        if self.engine._reencoders.get((self.stream.app, self.stream.streamId)) is not self:
            return  # closed meanwhile
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.engine.reencoded(self.stream, _share(packet), key)


def _track_class() -> Any:
    from aiortc import MediaStreamTrack

    class _HubTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self, kind: str = "video") -> None:
            super().__init__()
            self.kind = kind
            self.queue: asyncio.Queue = asyncio.Queue()

        async def recv(self) -> Any:
            from aiortc.mediastreams import MediaStreamError

            if self.readyState != "live":
                raise MediaStreamError
            item = await self.queue.get()
            if item is None:
                self.stop()
                raise MediaStreamError
            return item

    return _HubTrack


class PlayerPeer(_Peer):
    viewerKind = "webrtc"

    def __init__(self, engine: AiortcEngine, stream: LiveStream, events: Any) -> None:
        super().__init__(engine, stream, events)
        from aiortc import RTCRtpSender

        self.track = _track_class()()
        t = self.pc.addTransceiver(self.track, direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video").codecs
        t.setCodecPreferences([c for c in caps if c.mimeType.lower() in ("video/h264", "video/rtx")])
        # A viewer's picture loss: ask the publisher (WebRTC) for a keyframe.
        t.sender._send_keyframe = self._pictureLost
        # Audio when the stream has AAC: Opus transcoded once per stream.
        self.audioTrack: Any = None
        self._audioTrack: Any = None
        if stream.audioConfig is not None and len(stream.audioConfig) > 2 \
                and stream.audioConfig[0] >> 4 == SOUND_AAC:
            self.audioTrack = self._audioTrack = _track_class()("audio")
            a = self.pc.addTransceiver(self.audioTrack, direction="sendonly")
            a.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("audio").codecs
                                   if c.mimeType.lower() == "audio/opus"])
        self.audioSent = 0
        self._config: Optional[bytes] = None
        self._waitKey = True
        self._videoStarted = False
        #: this viewer's video comes from the stream's re-encoder
        self.reencoding = False
        self._warned = False
        self._subscribed = False
        self.framesSent = 0

    def offer(self) -> Deferred:
        return _bridge(self._offer())

    async def _offer(self) -> str:
        if self.engine.hasBFrames(self.stream):
            self._reencode()
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        return self.pc.localDescription.sdp

    def accept(self, sdp: str) -> Deferred:
        from aiortc import RTCSessionDescription

        return _bridge(self._accept(RTCSessionDescription(sdp=sdp, type="answer")))

    async def _accept(self, answer: Any) -> None:
        await self.pc.setRemoteDescription(answer)
        if self.audioTrack is not None and not any(
                t.kind == "audio" and t.currentDirection in ("sendonly", "sendrecv")
                for t in self.pc.getTransceivers()):
            self.audioTrack = None  # the viewer declined the audio: do not transcode for it

    def onConnected(self) -> None:
        self._subscribed = True
        self.stream.subscribe(self)
        self.engine.requestKeyframe(self.stream)

    def onClose(self) -> None:
        if self._subscribed:
            self._subscribed = False
            self.stream.unsubscribe(self)
        self.track.queue.put_nowait(None)
        if self._audioTrack is not None:
            self._audioTrack.queue.put_nowait(None)

    def _pictureLost(self) -> None:
        self.engine.requestKeyframe(self.stream)

    # --- ISubscriber ---------------------------------------------------------------------

    def streamStarted(self, stream: LiveStream) -> None:
        self._waitKey = True

    def metadataChanged(self, metadata: dict[str, Any]) -> None:
        pass

    def configChanged(self, kind: str, body: bytes, timestamp: int) -> None:
        if kind == VIDEO and len(body) > 5 and body[0] & 0x0F == 7:
            try:
                self._config = _config_annexb(body[5:])
            except Exception:
                self._config = None

    def _reencode(self) -> None:
        """
        Take this stream's video from its re-encoder (B-frames).
        """
        if self.engine.reencoder(self.stream) is None:
            raise HighResourceUsage()
        self.reencoding = True
        self._waitKey = True

    def frameReceived(self, frame: Frame) -> None:
        if frame.kind == AUDIO:
            self._audioFrame(frame)
            return
        if frame.kind != VIDEO or len(frame.body) < 6 or frame.body[0] & 0x0F != 7:
            return
        if frame.body[1] != 1:
            return
        if not self.reencoding and self.engine.hasBFrames(self.stream, frame):
            try:
                self._reencode()
            except HighResourceUsage:
                if not self._warned:
                    self._warned = True
                    _log.warn("{app}/{streamId} has B-frames and no transcoding slot is "
                              "free: its WebRTC viewers get it as it is",
                              app=self.stream.app, streamId=self.stream.streamId)
        if self.reencoding:
            reencoder = self.engine.reencoder(self.stream)
            if reencoder is not None:
                reencoder.feed(frame, self._config)
            return
        self.videoOut(self.engine.videoPacket(self.stream, frame, self._config), frame.keyframe)

    def videoOut(self, packet: Any, key: bool) -> None:
        """
        An Annex B packet for this viewer (from the hub, or re-encoded).
        """
        q = self.track.queue
        if q.qsize() >= MAX_QUEUE:
            # The viewer's sender lags: drop what is queued, restart at a keyframe.
            while not q.empty():
                q.get_nowait()
            self._waitKey = True
        if self._waitKey:
            if not key:
                if self.reencoding:
                    self.engine.requestKeyframe(self.stream)
                return
            self._waitKey = False
        self._videoStarted = True
        q.put_nowait(packet)
        self.framesSent += 1

    def _audioFrame(self, frame: Frame) -> None:
        if self.audioTrack is None or not self._videoStarted or self._waitKey:
            return  # no audio track, or the video has not started
        body = frame.body
        if len(body) < 3 or body[0] >> 4 != SOUND_AAC or body[1] != 1:
            return
        transcoder = self.engine.audioTranscoder(self.stream)
        if transcoder is None:
            return
        q = self.audioTrack.queue
        if q.qsize() >= MAX_QUEUE:
            while not q.empty():
                q.get_nowait()
        for p in transcoder.packets(frame):  # shared by the stream's viewers
            q.put_nowait(p)
            self.audioSent += 1

    def streamEnded(self) -> None:
        self._subscribed = False
        self.events.ended("stream ended")
