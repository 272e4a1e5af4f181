# -*- test-case-name: tests.interop.test_webrtc_media -*-
"""
The WebRTC media engine with aiortc, on Twisted's asyncio reactor: it makes
the publishing peers (L{tokengate.webrtc.publish}) and the playing peers
(L{tokengate.webrtc.play}) of the WebSocket signalling
(L{tokengate.webrtc.signalling}: C{engine.publisher(stream, session)},
C{engine.player(stream, session)}, C{engine.available},
C{engine.reason}), and holds what the WebRTC viewers of one stream share:
its video packets (made once, packetized once), its AAC to Opus
transcoder, and its re-encoder (L{Reencoder}) when its H.264 has B-frames.

Built by L{tokengate.webrtc.media.make_engine} only when aiortc imports;
importing this module imports L{tokengate.webrtc.aiortcpatches}, which
checks the aiortc internals it relies on.
"""

from __future__ import annotations

import fractions
from collections import deque
from typing import Any, Mapping, Optional, Sequence

import av
from aiortc import RTCConfiguration, RTCIceServer
from twisted.internet.defer import Deferred, DeferredList

from tokengate.logsafe import Logger
from tokengate.media.hub import VIDEO, Frame, LiveStream
from tokengate.metrics import Metrics
from tokengate.webrtc.aiortcpatches import (
    installDtlsCiphers,
    installPackCache,
    installPassthrough,
    share,
)
from tokengate.webrtc.audio import AacToOpus
from tokengate.webrtc.media import flv_to_annexb
from tokengate.webrtc.peer import VIDEO_CLOCK, Peer, PeerEvents
from tokengate.webrtc.play import PlayerPeer
from tokengate.webrtc.publish import PublisherPeer
from tokengate.webrtc.video import TranscodeSlots, VideoTranscoder

__all__ = ["AiortcEngine", "Reencoder"]

_log = Logger()


class AiortcEngine:
    """
    WebRTC media with aiortc, on Twisted's asyncio reactor: the publishing
    and playing peers of every stream (L{publisher}, L{player}) and what
    the WebRTC viewers of one stream share (its video packets, its AAC to
    Opus transcoder, its re-encoder when its H.264 has B-frames).

    @ivar transcodeSlots: the streams transcoded to H.264 at once (VP8
        publishers, B-frame streams with WebRTC viewers).
    """

    available = True
    reason = ""

    def __init__(self, reactor: Any, *, transcodes: int = 2,
                 iceServers: Sequence[Mapping[str, Any]] = (),
                 metrics: Optional[Metrics] = None) -> None:
        """
        @param reactor: Twisted's asyncio reactor (C{callFromThread},
            C{seconds}, C{addSystemEventTrigger}).
        @param transcodes: how many streams may be transcoded at once.
        @param iceServers: the ICE servers of the server's own peer
            connections (C{urls}, optional C{username}, C{credential}).
        @param metrics: where the transcodes in use are reported, if any.
        """
        installPassthrough()
        installPackCache()
        installDtlsCiphers()
        self.reactor = reactor
        self._iceServers = [dict(s) for s in iceServers]
        self.peers: set[Peer] = set()
        #: (app, streamId) -> the WebRTC publisher of that stream
        self.publishers: dict[tuple[str, str], PublisherPeer] = {}
        #: (app, streamId) -> (stream, its AAC to Opus transcoder)
        self._audio: dict[tuple[str, str], tuple[LiveStream, AacToOpus]] = {}
        #: (app, streamId) -> (stream, its recent (frame, config, packet))
        self._video: dict[tuple[str, str],
                          tuple[LiveStream, deque[tuple[Frame, Optional[bytes], av.Packet[Any]]]]] = {}
        #: (app, streamId) -> (stream, whether its H.264 has B-frames)
        self._bframes: dict[tuple[str, str], tuple[LiveStream, bool]] = {}
        #: (app, streamId) -> the re-encoder of a stream with B-frames
        self._reencoders: dict[tuple[str, str], Reencoder] = {}
        self.transcodeSlots = TranscodeSlots(transcodes)
        if metrics is not None:
            metrics.callbackGauge("tokengate_webrtc_transcodes",
                                  "Streams transcoded to H.264 for WebRTC (VP8 publishers, "
                                  "B-frame streams with WebRTC viewers)",
                                  lambda: self.transcodeSlots.used)
        reactor.addSystemEventTrigger("before", "shutdown", self.close)

    def rtcConfiguration(self) -> RTCConfiguration:
        """
        The configuration of the server's peer connections: the ICE servers
        given (C{ServerConfig.serverIceServers}).
        """
        return RTCConfiguration(iceServers=[
            RTCIceServer(urls=s["urls"], username=s.get("username"),
                         credential=s.get("credential"))
            for s in self._iceServers])

    def publisher(self, stream: LiveStream, events: PeerEvents) -> PublisherPeer:
        """
        A peer connection publishing C{stream} (C{events}: its signalling
        session).
        """
        peer = PublisherPeer(self, stream, events)
        self.peers.add(peer)
        self.publishers[(stream.app, stream.streamId)] = peer
        return peer

    def player(self, stream: LiveStream, events: PeerEvents) -> PlayerPeer:
        """
        A peer connection playing C{stream} (C{events}: its signalling
        session).
        """
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

    def reencoder(self, stream: LiveStream) -> Optional[Reencoder]:
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

    def reencoded(self, stream: LiveStream, packet: av.Packet[Any], key: bool) -> None:
        """
        A re-encoded packet of C{stream}, to its viewers that take it.
        """
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

    def videoPacket(self, stream: LiveStream, frame: Frame,
                    config: Optional[bytes]) -> av.Packet[Any]:
        """
        The Annex B C{av.Packet} of a hub video frame (SPS/PPS from
        C{config} in front of keyframes; pts in 90 kHz units on the hub's
        timeline), made once and shared by the stream's WebRTC viewers.
        """
        key = (stream.app, stream.streamId)
        known = self._video.get(key)
        if known is None or known[0] is not stream:
            known = self._video[key] = (stream, deque(maxlen=16))
        recent: deque[tuple[Frame, Optional[bytes], av.Packet[Any]]] = known[1]
        p: av.Packet[Any]
        for f, c, p in reversed(recent):
            if f is frame and c == config:
                return p
        data, _, cts = flv_to_annexb(frame.body, config)
        packet = av.Packet(data)
        packet.pts = max(0, frame.timestamp + cts) * (VIDEO_CLOCK // 1000)
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        recent.append((frame, config, share(packet)))
        return packet

    def forget(self, peer: Peer) -> None:
        """
        C{peer} is closing: drop it, and what its stream's viewers shared
        when it was the last.
        """
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

    def close(self) -> Deferred[list[tuple[bool, None]]]:
        """
        Close every peer connection (the reactor's shutdown waits for it).
        """
        return DeferredList([p.close() for p in list(self.peers)], consumeErrors=True)



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
            engine.reactor.callFromThread, self._out,
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
        if self.engine._reencoders.get((self.stream.app, self.stream.streamId)) is not self:
            return  # closed meanwhile
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.engine.reencoded(self.stream, share(packet), key)
