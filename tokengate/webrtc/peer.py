# -*- test-case-name: tests.interop.test_webrtc_media -*-
"""
What the publishing (L{tokengate.webrtc.publish}) and the playing
(L{tokengate.webrtc.play}) peer connections share: the aiortc peer
connection and its life (connected, ended, closed), ICE candidates from the
browser, and the refusal when no transcoding slot is free.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Coroutine, Optional, Protocol, TypeVar

from aiortc import RTCPeerConnection
from aiortc.sdp import candidate_from_sdp
from twisted.internet.defer import Deferred, succeed

from tokengate.media.hub import LiveStream

if TYPE_CHECKING:
    from tokengate.webrtc.engine import AiortcEngine

__all__ = ["VIDEO_CLOCK", "HighResourceUsage", "PeerEvents", "Peer", "bridge"]

#: the RTP clock rate of video (90 kHz)
VIDEO_CLOCK = 90000


_T = TypeVar("_T")


def bridge(coro: Coroutine[Any, Any, _T]) -> Deferred[_T]:
    """
    Run C{coro} as an asyncio task (aiortc's coroutines need asyncio's loop,
    which Twisted's asyncio reactor runs): a L{Deferred} of its result.
    """
    return Deferred.fromFuture(asyncio.ensure_future(coro))


class HighResourceUsage(Exception):
    """
    Every transcoding slot is taken: a VP8-only publisher, or the first
    WebRTC viewer of a stream with B-frames, is refused.
    """

    definition = "highResourceUsage"


class PeerEvents(Protocol):
    """
    What a peer tells its signalling session.
    """

    def connected(self) -> None:
        """The peer connection is up."""

    def ended(self, why: str = "") -> None:
        """The peer connection failed or closed, or the stream ended."""


class Peer:
    """
    One aiortc peer connection of the engine, for one stream.  Subclasses
    override L{onConnected} and L{onClose}.
    """

    def __init__(self, engine: AiortcEngine, stream: LiveStream, events: PeerEvents) -> None:
        self.engine = engine
        self.stream = stream
        self.events = events
        self.pc = RTCPeerConnection(configuration=engine.rtcConfiguration())
        self._closing: Optional[Deferred[None]] = None
        self._connected = False
        self.pc.on("connectionstatechange", self._stateChanged)

    @property
    def closing(self) -> bool:
        """Whether L{close} was called."""
        return self._closing is not None

    def _stateChanged(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and not self._connected:
            self._connected = True
            self.onConnected()
            self.events.connected()
        elif state in ("failed", "closed") and self._closing is None:
            self.events.ended(state)

    def onConnected(self) -> None:
        """The peer connection is up (before the session hears of it)."""

    def addCandidate(self, candidate: str, sdpMid: Optional[str],
                     sdpMLineIndex: Optional[int]) -> Deferred[None]:
        """
        A remote ICE candidate (C{candidate:...}, or empty at the end of
        the candidates).
        """
        text = candidate[len("candidate:"):] if candidate.startswith("candidate:") else candidate
        if not text:
            return succeed(None)
        c = candidate_from_sdp(text)
        c.sdpMid = sdpMid
        c.sdpMLineIndex = sdpMLineIndex
        return bridge(self.pc.addIceCandidate(c))

    def close(self) -> Deferred[None]:
        """
        Close the peer connection (once): fires when it is closed.
        """
        if self._closing is None:
            self.engine.forget(self)
            self.onClose()
            self._closing = bridge(self.pc.close())
        d: Deferred[None] = Deferred()

        def done(result: Any) -> Any:
            d.callback(None)
            return result

        self._closing.addBoth(done)
        return d

    def onClose(self) -> None:
        """The peer is being closed: release what it holds."""
