# -*- test-case-name: tests.interop.test_webrtc_media -*-
"""
The publishing peer: a browser's WebRTC tracks into the hub.

The browser's offer is answered with H.264 preferred (only H.264 is kept
when the offer has it); the receiver's decoder is bypassed
(L{tokengate.webrtc.aiortcpatches.passthrough}: the track yields the encoded
access units as C{av.Packet}s), and each Annex B access unit becomes an FLV
video tag body in the hub (L{AnnexBToFLV}): an AVC sequence header built
from SPS/PPS when they change, then length-prefixed NAL units, keyframes
marked.  A publisher that offers no H.264 sends VP8, transcoded to H.264 on
a worker thread (L{tokengate.webrtc.video}; a bounded number at once, over
it the publish is refused with C{highResourceUsage}).  Opus or G.711 (PCMU,
PCMA) audio is transcoded to AAC (L{ToAac}).  Both are placed on one
millisecond timeline by L{PublisherTimeline}: video from its 90 kHz clock,
audio by the RTCP sender reports of both tracks (by arrival until they
come).  The publisher is asked for a keyframe (PLI) every
L{KEYFRAME_INTERVAL} seconds, since browsers send them only on request, and
whenever a WebRTC viewer asks for one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Optional

import av
from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCRtpTransceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from tokengate.logsafe import Logger
from tokengate.media.codecs import AAC_SEQUENCE_HEADER, build_audio_tag
from tokengate.media.hub import LiveStream
from tokengate.webrtc.aiortcpatches import (
    keepCodecs,
    negotiatedCodecs,
    passthrough,
    requestPictureLoss,
    watchSenderReports,
)
from tokengate.webrtc.audio import OPUS_RATE, PUBLISHER_AUDIO, ToAac
from tokengate.webrtc.media import AnnexBToFLV
from tokengate.webrtc.peer import VIDEO_CLOCK, HighResourceUsage, Peer, PeerEvents, bridge
from tokengate.webrtc.rtpsync import PublisherTimeline
from tokengate.webrtc.video import Vp8ToH264

if TYPE_CHECKING:
    from tokengate.webrtc.engine import AiortcEngine

__all__ = ["KEYFRAME_INTERVAL", "PublisherPeer"]

_log = Logger()

#: seconds between keyframe requests to a WebRTC publisher
KEYFRAME_INTERVAL = 2.0


class PublisherPeer(Peer):
    """
    A browser publishing a stream: its tracks into the hub.
    """

    def __init__(self, engine: AiortcEngine, stream: LiveStream, events: PeerEvents) -> None:
        super().__init__(engine, stream, events)
        self.converter = AnnexBToFLV()
        self.videoCodec: Optional[str] = None
        self.audioCodec: Optional[str] = None
        self._tasks: list[Any] = []
        self._receiver: Optional[RTCRtpReceiver] = None
        self._pli: Optional[LoopingCall] = None
        self._lastPli = -1e9
        #: the publisher's audio to AAC, made at the first audio packet
        self.audio: Optional[ToAac] = None
        #: VP8 to H.264, for a publisher that offered no H.264
        self.transcoder: Optional[Vp8ToH264] = None
        self._slot = False
        self._configSent = False
        self.timeline = PublisherTimeline(engine.reactor.seconds)
        self.pc.on("track", self._track)

    def answer(self, sdp: str) -> Deferred[str]:
        """
        Answer the publisher's offer C{sdp}: a L{Deferred} of the answer's
        SDP (fails with L{HighResourceUsage} for VP8 without a free
        transcoding slot).
        """
        return bridge(self._answer(sdp))

    async def _answer(self, sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        hasVideo = False
        for t in self.pc.getTransceivers():
            if t.kind == "video":
                self._chooseVideoCodec(t)
                self._receiver = t.receiver
                hasVideo = True
            passthrough(t.receiver)
            self._watchSenderReports(t.receiver, t.kind)
        self.timeline.hasVideo = hasVideo
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return self.pc.localDescription.sdp

    def _chooseVideoCodec(self, t: RTCRtpTransceiver) -> None:
        """
        H.264 when offered (packetization mode 1 first), else VP8 (to be
        transcoded, when a slot is free): only it and its retransmission
        stay in the answer.
        """
        codecs = negotiatedCodecs(t)

        def named(name: str) -> list[RTCRtpCodecParameters]:
            return [c for c in codecs if c.mimeType.lower() == name]

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
        rtx = [c for c in codecs if c.mimeType.lower() == "video/rtx"
               and c.parameters.get("apt") in pts]
        keepCodecs(t, chosen + rtx)

    def _watchSenderReports(self, receiver: RTCRtpReceiver, kind: str) -> None:
        """
        Hand the RTCP sender reports of the receiver's media (not of its
        retransmissions) to the timeline.
        """
        timeline = self.timeline

        def report(ntp: int, rtp: int) -> None:
            timeline.senderReport(kind, ntp, rtp)

        watchSenderReports(receiver, report)

    def _track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._pump(track)))

    async def _pump(self, track: MediaStreamTrack) -> None:
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
                    self.transcoder = Vp8ToH264(self.engine.reactor.callFromThread,
                                                self._transcoded, self.requestKeyframe)
                self.transcoder.frame(bytes(packet), ms * (VIDEO_CLOCK // 1000))

    def _transcoded(self, data: bytes, pts: int, key: bool) -> None:
        if not self.closing and not self.stream.ended:
            self._video(data, pts // (VIDEO_CLOCK // 1000))

    def _video(self, data: bytes, ms: int) -> None:
        try:
            for ms, body in self.converter.convert(data, ms):
                self.stream.videoReceived(ms, body)
        except Exception:
            _log.failure("a bad H.264 access unit from a WebRTC publisher")

    def _audio(self, codec: str, packet: av.Packet[Any]) -> None:
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
        if packet.pts is None:
            return  # the passthrough always sets it
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
        self._pli = LoopingCall(self.requestKeyframe)
        self._pli.clock = self.engine.reactor
        self._pli.start(KEYFRAME_INTERVAL, now=True)

    def requestKeyframe(self) -> None:
        """
        Ask the publisher for a keyframe (a PLI), at most every half second.
        """
        now = self.engine.reactor.seconds()
        receiver = self._receiver
        if receiver is None or self.closing or now - self._lastPli < 0.5:
            return
        self._lastPli = now
        requestPictureLoss(receiver)

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
