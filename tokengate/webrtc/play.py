# -*- test-case-name: tests.interop.test_webrtc_media -*-
"""
The playing peer: the hub's stream to a browser's WebRTC tracks.

The server offers a send-only H.264 video track whose frames are the hub's,
unchanged (Annex B C{av.Packet}s with 90 kHz pts, SPS/PPS in front of every
keyframe), starting at a keyframe.  When the stream has AAC, an Opus audio
track too: the AAC is transcoded once per stream
(L{tokengate.webrtc.audio.AacToOpus}, shared by the stream's viewers) and
sent as pre-encoded C{av.Packet}s.  The video packets are shared by the
stream's viewers too (L{tokengate.webrtc.engine.AiortcEngine.videoPacket}),
and aiortc's H.264 packetizer packetizes a shared packet once.  A stream
whose H.264 has B-frames is re-encoded once for its WebRTC viewers
(L{tokengate.webrtc.engine.Reencoder}).  A viewer's picture loss asks the
stream's publisher (or re-encoder) for a keyframe.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Optional

import av
from aiortc import MediaStreamTrack, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from twisted.internet.defer import Deferred

from tokengate.logsafe import Logger
from tokengate.media.codecs import SOUND_AAC
from tokengate.media.hub import AUDIO, VIDEO, Frame, LiveStream
from tokengate.webrtc.aiortcpatches import onKeyframeRequest
from tokengate.webrtc.media import config_annexb
from tokengate.webrtc.peer import HighResourceUsage, Peer, PeerEvents, bridge

if TYPE_CHECKING:
    from tokengate.webrtc.engine import AiortcEngine

__all__ = ["MAX_QUEUE", "HubTrack", "PlayerPeer"]

_log = Logger()

#: frames a viewer may have queued before it skips to the next keyframe
MAX_QUEUE = 120


class HubTrack(MediaStreamTrack):
    """
    A send-only track fed from the hub: it yields what is put on its
    C{queue} (pre-encoded C{av.Packet}s); L{None} ends it.
    """

    kind = "video"

    def __init__(self, kind: str = "video") -> None:
        super().__init__()
        self.kind = kind
        self.queue: asyncio.Queue[Optional[av.Packet[Any]]] = asyncio.Queue()

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        item = await self.queue.get()
        if item is None:
            self.stop()
            raise MediaStreamError
        return item


class PlayerPeer(Peer):
    """
    A browser playing a stream: the hub's frames to its tracks.
    """

    viewerKind = "webrtc"

    def __init__(self, engine: AiortcEngine, stream: LiveStream, events: PeerEvents) -> None:
        super().__init__(engine, stream, events)
        self.track = HubTrack()
        t = self.pc.addTransceiver(self.track, direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video").codecs
        t.setCodecPreferences([c for c in caps if c.mimeType.lower() in ("video/h264", "video/rtx")])
        # A viewer's picture loss: ask the publisher (WebRTC) for a keyframe.
        onKeyframeRequest(t.sender, self._pictureLost)
        # Audio when the stream has AAC: Opus transcoded once per stream.
        self.audioTrack: Optional[HubTrack] = None
        self._audioTrack: Optional[HubTrack] = None
        if stream.audioConfig is not None and len(stream.audioConfig) > 2 \
                and stream.audioConfig[0] >> 4 == SOUND_AAC:
            self.audioTrack = self._audioTrack = HubTrack("audio")
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

    def offer(self) -> Deferred[str]:
        """
        The server's offer: a L{Deferred} of its SDP (fails with
        L{HighResourceUsage} for a stream with B-frames when no transcoding
        slot is free).
        """
        return bridge(self._offer())

    async def _offer(self) -> str:
        if self.engine.hasBFrames(self.stream):
            self._reencode()
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        return self.pc.localDescription.sdp

    def answer(self, sdp: str) -> Deferred[str]:
        """
        Answer a viewer's offer C{sdp} (WHEP: the viewer offers to receive):
        a L{Deferred} of the answer's SDP, whose send-only tracks are this
        peer's (matched to the offer's sections by kind); fails with
        L{HighResourceUsage} as L{offer} does.
        """
        return bridge(self._answer(RTCSessionDescription(sdp=sdp, type="offer")))

    async def _answer(self, offer: RTCSessionDescription) -> str:
        if self.engine.hasBFrames(self.stream):
            self._reencode()
        await self.pc.setRemoteDescription(offer)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self._audioDeclined()
        return self.pc.localDescription.sdp

    def _audioDeclined(self) -> None:
        """
        Stop transcoding audio for a viewer that does not take it.
        """
        if self.audioTrack is not None and not any(
                t.kind == "audio" and t.currentDirection in ("sendonly", "sendrecv")
                for t in self.pc.getTransceivers()):
            self.audioTrack = None

    def accept(self, sdp: str) -> Deferred[None]:
        """
        The viewer's answer C{sdp}: a L{Deferred} that fires once it is set.
        """
        return bridge(self._accept(RTCSessionDescription(sdp=sdp, type="answer")))

    async def _accept(self, answer: RTCSessionDescription) -> None:
        await self.pc.setRemoteDescription(answer)
        self._audioDeclined()  # the viewer declined the audio: do not transcode for it

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
                self._config = config_annexb(body[5:])
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

    def videoOut(self, packet: av.Packet[Any], key: bool) -> None:
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
