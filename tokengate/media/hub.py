# -*- test-case-name: tests.test_media_hub -*-
"""
The live stream hub: one live stream per (application, stream id), fed by one
publisher (RTMP, SRT or WebRTC), fanned out to any number of subscribers
(RTMP players, the CMAF packager, WebRTC viewers).

Media travels as FLV tag bodies (what RTMP carries): a video frame is an
C{AVCVIDEOPACKET} body, an audio frame an C{AACAUDIODATA} body.  Other
ingests convert to this form once, at the edge.  Timestamps are milliseconds
(decode time); video frames carry their composition offset.

No I/O here: the hub calls its subscribers synchronously; a subscriber must
be quick and must not raise (one that raises is dropped, alone).  Slow
network subscribers bound their own queues (see the RTMP player).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Optional

from attrs import define, field, frozen
from zope.interface import Interface

from tokengate.logsafe import Logger
from tokengate.media.codecs import (
    AAC_SEQUENCE_HEADER,
    AVC_END_OF_SEQUENCE,
    AVC_SEQUENCE_HEADER,
    CODEC_AVC,
    FRAME_KEY,
    SOUND_AAC,
)

VIDEO = "video"
AUDIO = "audio"

#: A GOP cache bigger than this is dropped until the next keyframe.
MAX_GOP_BYTES = 16 * 1024 * 1024
MAX_GOP_FRAMES = 3000

#: How many ended streams are remembered for the REST status.
MAX_HISTORY = 1000

#: The publish type of a stream pulled from another node of the cluster
#: (L{tokengate.cluster.pull}): not a local publisher (not recorded here,
#: not served on to other nodes).
PULLED = "pull"


class Frame:
    """
    One media message: an FLV tag body with its timestamp.  Treat it as
    immutable (a plain slotted class: one is made per frame, so it must be
    cheap).
    """

    __slots__ = ("kind", "timestamp", "body", "keyframe", "size")

    def __init__(self, kind: str, timestamp: int, body: bytes, keyframe: bool = False) -> None:
        self.kind = kind  # VIDEO or AUDIO
        self.timestamp = timestamp  # ms, decode time
        self.body = body  # the FLV tag body
        self.keyframe = keyframe
        self.size = len(body)

    def __repr__(self) -> str:
        return "Frame({}, {}, {} bytes{})".format(
            self.kind, self.timestamp, self.size, ", key" if self.keyframe else "")


def classify_video(body: bytes) -> tuple[bool, bool]:
    """
    @return: (is a sequence header, is a keyframe) for an FLV video tag body.
    """
    if len(body) < 2:
        return False, False
    b0 = body[0]
    codec = b0 & 0x0F
    key = (b0 >> 4) == FRAME_KEY
    if codec == CODEC_AVC:
        return body[1] == AVC_SEQUENCE_HEADER, key and body[1] != AVC_END_OF_SEQUENCE
    return False, key


def classify_audio(body: bytes) -> bool:
    """
    @return: whether an FLV audio tag body is an AAC sequence header.
    """
    return len(body) >= 2 and (body[0] >> 4) == SOUND_AAC and body[1] == AAC_SEQUENCE_HEADER


class ISubscriber(Interface):
    """
    Receives a live stream.  Every method must be quick and must not raise.
    """

    def streamStarted(stream: "LiveStream") -> None:
        """
        Subscribed; the stream's metadata and codec configuration so far,
        and its GOP cache, follow through the other methods.
        """

    def metadataChanged(metadata: dict[str, Any]) -> None:
        """
        New C{onMetaData} values.
        """

    def configChanged(kind: str, body: bytes, timestamp: int) -> None:
        """
        A new sequence header (decoder configuration) for C{kind}.
        """

    def frameReceived(frame: Frame) -> None:
        """
        One media frame.  While C{stream.inBurst} is set, a subscriber that
        writes to a socket may hold the write back until its optional
        C{flushBurst()} is called (after the frames of one publisher read).
        """

    def streamEnded() -> None:
        """
        The publisher is gone; no more calls follow.
        """


@define(eq=False)
class LiveStream:
    app: str
    streamId: str
    publishType: str
    started: float
    metadata: Optional[dict[str, Any]] = None
    videoConfig: Optional[bytes] = None
    audioConfig: Optional[bytes] = None
    #: frames since the last video keyframe (all audio when there is no video)
    gop: list[Frame] = field(factory=list)
    gopBytes: int = 0
    subscribers: list[Any] = field(factory=list)
    bytesIn: int = 0
    framesIn: int = 0
    ended: bool = False
    #: how many times this stream id was published before (for discontinuities)
    generation: int = 0
    #: True while a publisher hands over the frames of one network read;
    #: subscribers may then hold their writes until L{burstEnded}
    inBurst: bool = False
    _hub: Optional["Hub"] = field(default=None, repr=False)

    _log = Logger()

    # --- publisher side ----------------------------------------------------

    def setMetadata(self, metadata: dict[str, Any]) -> None:
        self.metadata = metadata
        self._fanout("metadataChanged", metadata)

    def videoReceived(self, timestamp: int, body: bytes) -> None:
        # classify_video inlined: this runs for every frame of every stream.
        self.bytesIn += len(body)
        key = False
        if len(body) >= 2:
            b0 = body[0]
            if b0 & 0x0F == CODEC_AVC:
                if body[1] == AVC_SEQUENCE_HEADER:
                    self.videoConfig = body
                    self._fanout("configChanged", VIDEO, body, timestamp)
                    return
                key = b0 >> 4 == FRAME_KEY and body[1] != AVC_END_OF_SEQUENCE
            else:
                key = b0 >> 4 == FRAME_KEY
        frame = Frame(VIDEO, timestamp, body, key)
        self.framesIn += 1
        if key:
            self.gop = [frame]
            self.gopBytes = frame.size
        elif self.gop:
            self._cache(frame)
        if self.subscribers:
            self._deliver(frame)

    def audioReceived(self, timestamp: int, body: bytes) -> None:
        self.bytesIn += len(body)
        if len(body) >= 2 and body[0] >> 4 == SOUND_AAC and body[1] == AAC_SEQUENCE_HEADER:
            self.audioConfig = body
            self._fanout("configChanged", AUDIO, body, timestamp)
            return
        audioOnly = self.videoConfig is None
        frame = Frame(AUDIO, timestamp, body, audioOnly)
        self.framesIn += 1
        if self.gop:
            self._cache(frame)
        elif audioOnly:
            self.gop = [frame]
            self.gopBytes = frame.size
        if self.subscribers:
            self._deliver(frame)

    def _cache(self, frame: Frame) -> None:
        """
        Append a non-key frame to a non-empty GOP cache, within its bounds.
        """
        gop = self.gop
        if self.videoConfig is None and len(gop) >= 50:
            # Audio only: a short rolling window is enough to start from.
            self.gopBytes -= gop[0].size
            del gop[0]
        if self.gopBytes + frame.size > MAX_GOP_BYTES or len(gop) >= MAX_GOP_FRAMES:
            # An absurd GOP: keep nothing until the next keyframe.
            self.gop = []
            self.gopBytes = 0
        else:
            gop.append(frame)
            self.gopBytes += frame.size

    def _deliver(self, frame: Frame) -> None:
        for sub in tuple(self.subscribers):
            try:
                sub.frameReceived(frame)
            except Exception:
                self._failed(sub)

    def _fanout(self, method: str, *args: Any) -> None:
        for sub in list(self.subscribers):
            try:
                getattr(sub, method)(*args)
            except Exception:
                self._failed(sub)

    def burstEnded(self) -> None:
        """
        The publisher delivered the frames of one network read (it set
        C{inBurst} before them): subscribers with a C{flushBurst()} method
        write what they held back.
        """
        self.inBurst = False
        for sub in tuple(self.subscribers):
            flush = getattr(sub, "flushBurst", None)
            if flush is not None:
                try:
                    flush()
                except Exception:
                    self._failed(sub)

    # --- subscriber side -----------------------------------------------------

    def subscribe(self, subscriber: Any) -> None:
        """
        Add a subscriber and replay the stream's state to it: metadata,
        configurations, then the GOP cache from its keyframe.
        """
        if self.ended:
            subscriber.streamEnded()
            return
        self.subscribers.append(subscriber)
        try:
            subscriber.streamStarted(self)
            if self.metadata is not None:
                subscriber.metadataChanged(self.metadata)
            first = self.gop[0].timestamp if self.gop else 0
            if self.videoConfig is not None:
                subscriber.configChanged(VIDEO, self.videoConfig, first)
            if self.audioConfig is not None:
                subscriber.configChanged(AUDIO, self.audioConfig, first)
            for frame in list(self.gop):
                subscriber.frameReceived(frame)
        except Exception:
            self._log.failure("a new subscriber of {app}/{streamId} failed",
                              app=self.app, streamId=self.streamId)
            self._remove(subscriber)

    def unsubscribe(self, subscriber: Any) -> None:
        self._remove(subscriber)

    def _failed(self, subscriber: Any) -> None:
        """
        A subscriber raised (call from its C{except} block): log it, drop it.
        """
        self._log.failure(
            "a subscriber of {app}/{streamId} failed; dropping it",
            app=self.app,
            streamId=self.streamId,
        )
        self._remove(subscriber)

    def _remove(self, subscriber: Any) -> None:
        try:
            self.subscribers.remove(subscriber)
        except ValueError:
            pass

    def end(self) -> None:
        """
        The publisher is gone: tell every subscriber and leave the hub.
        """
        if self.ended:
            return
        self.ended = True
        subs, self.subscribers = self.subscribers, []
        for sub in subs:
            try:
                sub.streamEnded()
            except Exception:
                self._log.failure("a subscriber's streamEnded failed")
        if self._hub is not None:
            self._hub._ended(self)


@frozen
class BroadcastRecord:
    """
    What the REST API reports about a stream.
    """

    app: str
    streamId: str
    status: str  # created, broadcasting, finished
    publishType: Optional[str]
    startTime: int  # ms
    endTime: int  # ms, 0 while live
    viewers: dict[str, int]


class StreamInUse(Exception):
    """
    The stream is already being published.
    """


@define(eq=False)
class Claim:
    """
    A stream held for a publisher admitted but not live yet (an SRT caller
    between the handshake and its first media packet): nobody else may
    publish it, and it is not live (not C{broadcasting}, nothing to play).
    L{Hub.publish} with the claim makes it live; L{release} gives it up.
    """

    app: str
    streamId: str
    _hub: "Hub" = field(repr=False)
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._hub._unclaim(self)


class Hub:
    """
    Every live stream of this server.
    """

    _log = Logger()

    def __init__(self, clock: Optional[Any] = None) -> None:
        self._clock = clock
        self._live: dict[tuple[str, str], LiveStream] = {}
        self._history: OrderedDict[tuple[str, str], BroadcastRecord] = OrderedDict()
        self._generations: dict[tuple[str, str], int] = {}
        self._claims: dict[tuple[str, str], Claim] = {}
        self._publishListeners: list[Callable[[LiveStream], None]] = []
        self._viewerCounters: list[Callable[[str, str], dict[str, int]]] = []

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else time.time()

    def onPublish(self, listener: Callable[[LiveStream], None]) -> None:
        """
        Call C{listener(stream)} whenever a stream goes live (packagers and
        recorders subscribe there).
        """
        self._publishListeners.append(listener)

    def addViewerCounter(self, counter: Callable[[str, str], dict[str, int]]) -> None:
        """
        Viewers not subscribed to the hub directly (HLS sessions, say) are
        counted by C{counter(app, streamId) -> {kind: count}}.
        """
        self._viewerCounters.append(counter)

    def get(self, app: str, streamId: str) -> Optional[LiveStream]:
        return self._live.get((app, streamId))

    def isLive(self, app: str, streamId: str) -> bool:
        return (app, streamId) in self._live

    def isTaken(self, app: str, streamId: str) -> bool:
        """
        Whether the stream is live or claimed by a publisher (so it cannot
        be published).
        """
        key = (app, streamId)
        return key in self._live or key in self._claims

    def claim(self, app: str, streamId: str) -> Claim:
        """
        Hold the stream for a publisher that is not sending yet.

        @raise StreamInUse: it is live or claimed already.
        """
        key = (app, streamId)
        if self.isTaken(app, streamId):
            raise StreamInUse(streamId)
        claim = Claim(app, streamId, self)
        self._claims[key] = claim
        return claim

    def _unclaim(self, claim: Claim) -> None:
        key = (claim.app, claim.streamId)
        if self._claims.get(key) is claim:
            del self._claims[key]

    def publish(self, app: str, streamId: str, publishType: str,
                claim: Optional[Claim] = None) -> LiveStream:
        """
        Make the stream live; with the C{claim} that holds it, if any.

        @raise StreamInUse: it is live, or claimed by another claim (or the
            claim was released).
        """
        key = (app, streamId)
        if key in self._live:
            raise StreamInUse(streamId)
        held = self._claims.get(key)
        if held is not None or claim is not None:
            if held is None or held is not claim:
                raise StreamInUse(streamId)
            claim.released = True
            del self._claims[key]
        generation = self._generations.get(key, -1) + 1
        self._generations[key] = generation
        if len(self._generations) > 100_000:
            self._generations.pop(next(iter(self._generations)))
        stream = LiveStream(app, streamId, publishType, self._now(), generation=generation,
                            hub=self)
        self._live[key] = stream
        self._history.pop(key, None)
        self._log.info("{app}/{streamId} is live ({publishType})", app=app,
                       streamId=streamId, publishType=publishType)
        for listener in list(self._publishListeners):
            try:
                listener(stream)
            except Exception:
                self._log.failure("a publish listener failed")
        return stream

    def _ended(self, stream: LiveStream) -> None:
        key = (stream.app, stream.streamId)
        if self._live.get(key) is stream:
            del self._live[key]
        self._history[key] = BroadcastRecord(
            stream.app, stream.streamId, "finished", stream.publishType,
            int(stream.started * 1000), int(self._now() * 1000), {},
        )
        while len(self._history) > MAX_HISTORY:
            self._history.popitem(last=False)
        self._log.info("{app}/{streamId} ended", app=stream.app, streamId=stream.streamId)

    def discard(self, app: str, streamId: str) -> bool:
        """
        Forget the record of an ended stream (its broadcast was deleted).

        @return: whether there was one.
        """
        return self._history.pop((app, streamId), None) is not None

    def viewers(self, app: str, streamId: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        stream = self._live.get((app, streamId))
        if stream is not None:
            for sub in stream.subscribers:
                kind = getattr(sub, "viewerKind", None)
                if kind:
                    counts[kind] = counts.get(kind, 0) + 1
        for counter in self._viewerCounters:
            for kind, n in counter(app, streamId).items():
                counts[kind] = counts.get(kind, 0) + n
        return counts

    def record(self, app: str, streamId: str) -> Optional[BroadcastRecord]:
        key = (app, streamId)
        stream = self._live.get(key)
        if stream is not None:
            return BroadcastRecord(app, streamId, "broadcasting", stream.publishType,
                                   int(stream.started * 1000), 0, self.viewers(app, streamId))
        return self._history.get(key)

    def records(self, app: str) -> list[BroadcastRecord]:
        keys: list[tuple[str, str]] = []
        seen = set()
        for source in (self._live, self._history):
            for key in source:
                if key[0] == app and key not in seen:
                    seen.add(key)
                    keys.append(key)
        out = []
        for key in keys:
            r = self.record(*key)
            if r is not None:
                out.append(r)
        return out

    def forget(self, app: str) -> None:
        """
        End and forget every stream of an application (it was deleted).
        """
        for key, stream in list(self._live.items()):
            if key[0] == app:
                stream.end()
        for key in [k for k in self._claims if k[0] == app]:
            self._claims.pop(key).released = True
        for key in [k for k in self._history if k[0] == app]:
            del self._history[key]

    def liveStreams(self) -> list[LiveStream]:
        return list(self._live.values())
