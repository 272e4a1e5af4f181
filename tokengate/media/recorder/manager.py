# -*- test-case-name: tests.test_media_recorder -*-
"""
The reactor side of recording: L{Recorder}, the hub subscriber of one
publication, and L{RecordingManager}, which owns the directory, the worker
thread pools and the recorders (see L{tokengate.media.recorder}).
"""

from __future__ import annotations

import base64
import os
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from tokengate.logsafe import Logger, loggable
from tokengate.media.codecs.flv import audio_sample, parse_audio_tag, parse_video_tag, video_sample
from tokengate.media.errors import MediaError
from tokengate.media.fmp4 import Track
from tokengate.media.hub import AUDIO, VIDEO, ISubscriber, LiveStream
from tokengate.media.recorder.finalize import aac_frame_length, finalize_recording, recover_directory
from tokengate.media.recorder.journal import (
    AUDIO_TRACK,
    VIDEO_TRACK,
    JournalWriter,
    Note,
    Row,
    valid_name,
)

#: Bookkeeping (a memoryview and a row tuple) counted against the queue
#: bound for each queued sample.
_ROW_COST = 384

# Recorder states
RECORDING = "recording"
ENDING = "ending"
FINALIZING = "finalizing"
DONE = "done"


class RecordingRefused(ValueError):
    """
    A stream that cannot be recorded: its application or stream id cannot
    be a file name.  The message shows the name escaped and truncated, so
    it is safe to log.
    """


def _check(name: str, what: str) -> str:
    if not valid_name(name):
        shown = loggable(name if isinstance(name, str) else repr(name), 64)
        raise RecordingRefused(f"{what} {shown} cannot name a recording")
    return name


@implementer(ISubscriber)
class Recorder:
    """
    Records one publication of one stream (see the module docstring).

    Every method runs on the reactor thread and only queues; C{state} goes
    C{recording} -> C{ending} (last batch being written) -> C{finalizing}
    -> C{done}.  C{result} is then the MP4's path, or None when nothing was
    recorded or finalizing failed.  C{dropped} says why a recording was
    stopped early (queue overflow, write error), else None.
    """

    _log = Logger()

    def __init__(self, manager: "RecordingManager", app: str, streamId: str, started: int) -> None:
        self._manager = manager
        self.app = app
        self.streamId = streamId
        self.path = manager.pathFor(app, streamId)
        self.started = started
        self.state = RECORDING
        self.dropped: Optional[str] = None
        self.result: Optional[str] = None
        self.samples = 0
        self._stream: Optional[LiveStream] = None
        self._disk = JournalWriter(os.path.dirname(self.path), streamId, started, manager.fsyncInterval)
        self._configs: dict[str, bytes] = {}
        self._configDirty = False
        self._refused: set[str] = set()
        self._videoStarted = False
        self._views: list[memoryview] = []
        self._rows: list[Row] = []
        self._pendingBytes = 0
        self._inflight: Optional[Deferred[None]] = None
        self._inflightBytes = 0
        self._offset = 0
        self._submitted = False
        self._waiters: list[Deferred[Optional[str]]] = []

    def __repr__(self) -> str:
        return f"<Recorder {self.app}/{self.streamId} {self.state}>"

    @property
    def queuedBytes(self) -> int:
        """Bytes held in memory: queued, plus being written."""
        return self._pendingBytes + self._inflightBytes

    @property
    def recordingDirectory(self) -> Optional[str]:
        """The C{.rec} directory, once the first batch created it."""
        return self._disk.dir

    def whenFinished(self) -> "Deferred[Optional[str]]":
        """Fires with C{result} once the recording is done."""
        if self.state == DONE:
            return succeed(self.result)
        d: Deferred[Optional[str]] = Deferred()
        self._waiters.append(d)
        return d

    # --- ISubscriber ----------------------------------------------------------

    def streamStarted(self, stream: LiveStream) -> None:
        self._stream = stream

    def metadataChanged(self, metadata: dict[str, Any]) -> None:
        pass

    def configChanged(self, kind: str, body: bytes, timestamp: int) -> None:
        if self.state != RECORDING or kind in self._refused:
            return
        try:
            if kind == VIDEO:
                vtag = parse_video_tag(body)
                if not vtag.is_sequence_header:
                    raise MediaError("not an H.264 sequence header")
                config = bytes(vtag.data)
                Track.video_avc(VIDEO_TRACK, config)
            elif kind == AUDIO:
                atag = parse_audio_tag(body)
                if not atag.is_sequence_header:
                    raise MediaError("not an AAC sequence header")
                config = bytes(atag.data)
                Track.audio_aac(AUDIO_TRACK, config)
                aac_frame_length(config)
            else:
                return
        except MediaError as e:
            self._refuse(kind, "its configuration is unusable ({error})", error=e)
            return
        old = self._configs.get(kind)
        if old == config:
            return
        if old is not None:
            self._refuse(kind, "its configuration changed mid-stream; the rest is not recorded")
            return
        self._configs[kind] = config
        self._configDirty = True

    def frameReceived(self, frame: Any) -> None:
        if self.state != RECORDING:
            return
        kind = frame.kind
        if kind not in self._configs or kind in self._refused:
            return
        try:
            if kind == VIDEO:
                vsample = video_sample(frame.body)
                if vsample is None:
                    return
                data, cto, sync = vsample
                if not self._videoStarted:
                    if not sync:
                        return
                    self._videoStarted = True
                track = VIDEO_TRACK
            else:
                asample = audio_sample(frame.body)
                if asample is None:
                    return
                track, cto, sync, data = AUDIO_TRACK, 0, True, asample
        except MediaError:
            return
        size = len(data)
        self._views.append(data)
        self._rows.append((track, self._offset, size, frame.timestamp, cto, sync))
        self._offset += size
        self.samples += 1
        cost = size + _ROW_COST
        self._pendingBytes += cost
        manager = self._manager
        manager._queued += cost
        if self.queuedBytes > manager.maxQueueBytes:
            self._drop("the disk is not keeping up ({queued} bytes queued)".format(
                queued=self.queuedBytes))
        elif manager._queued > manager.maxTotalQueueBytes:
            self._drop("the disk is not keeping up ({queued} bytes queued for all "
                       "recordings)".format(queued=manager._queued))
        elif self._pendingBytes >= manager.flushBytes and self._inflight is None:
            self._flush()

    def streamEnded(self) -> None:
        self._end()

    # --- internals --------------------------------------------------------------

    def _refuse(self, kind: str, why: str, **fields: Any) -> None:
        self._refused.add(kind)
        self._log.warn("recording of {app}/{streamId}: not recording {kind}: " + why,
                       app=self.app, streamId=self.streamId, kind=kind, **fields)

    def _configDocument(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": "tokengate-recording", "version": 1,
                               "app": self.app, "streamId": self.streamId}
        for kind in (VIDEO, AUDIO):
            value = self._configs.get(kind)
            doc[kind] = None if value is None else base64.b64encode(value).decode("ascii")
        return doc

    def _drop(self, reason: str) -> None:
        """Stop recording: drop the queue, leave the stream, keep what is on disk."""
        if self.state != RECORDING:
            return
        self._log.error("recording of {app}/{streamId} stopped: {reason}",
                        app=self.app, streamId=self.streamId, reason=reason)
        self.dropped = reason
        self._manager._queued -= self._pendingBytes
        self._pendingBytes = 0
        self._views, self._rows = [], []
        self._configDirty = False
        if self._stream is not None:
            self._stream.unsubscribe(self)
        self._end()

    def _end(self) -> None:
        if self.state != RECORDING:
            return
        self.state = ENDING
        self._manager._recordingStopped()
        if self._inflight is None:
            self._flushFinal()

    def _submit(self, final: bool) -> "Deferred[None]":
        views, rows = self._views, self._rows
        config = self._configDocument() if self._configDirty else None
        self._views, self._rows = [], []
        self._configDirty = False
        self._inflightBytes, self._pendingBytes = self._pendingBytes, 0
        if config is not None or rows:
            self._submitted = True
        d = self._manager._write(self._disk.write, config, views, rows, final)
        self._inflight = d
        return d

    def _flush(self) -> None:
        """Hand the queued batch to the writer (called by the manager's timer too)."""
        if self.state != RECORDING or self._inflight is not None:
            return
        if not self._rows and not self._configDirty:
            return
        self._submit(False).addCallbacks(self._written, self._writeFailed)

    def _settled(self) -> None:
        self._manager._queued -= self._inflightBytes
        self._inflightBytes = 0
        self._inflight = None

    def _written(self, _: object) -> None:
        self._settled()
        if self.state == ENDING:
            self._flushFinal()
        elif self.state == RECORDING and self._pendingBytes >= self._manager.flushBytes:
            self._flush()

    def _writeFailed(self, failure: Failure) -> None:
        self._settled()
        self._log.failure("cannot write the recording of {app}/{streamId}", failure,
                          app=self.app, streamId=self.streamId)
        if self.state == RECORDING:
            self._drop("write error: {}".format(failure.getErrorMessage()))
        elif self.state == ENDING:
            self._flushFinal()

    def _flushFinal(self) -> None:
        if not self._submitted and not self._rows:
            self._finish(None)  # no media, and nothing on disk
            return

        def done(result: object) -> None:
            self._settled()
            if isinstance(result, Failure):
                self._log.failure("cannot write the end of the recording of {app}/{streamId}",
                                  result, app=self.app, streamId=self.streamId)
            self._finalize()

        self._submit(True).addBoth(done)

    def _finalize(self) -> None:
        self.state = FINALIZING
        recdir = self._disk.dir
        if recdir is None:
            self._finish(None)
            return

        def done(result: tuple[Optional[str], list[Note]]) -> None:
            path, notes = result
            self._manager._emit(notes)
            self._finish(path)

        def failed(failure: Failure) -> None:
            self._log.failure("finalizing {recdir} failed", failure, recdir=recdir)
            self._finish(None)

        self._manager._finalize(finalize_recording, recdir, self.path).addCallbacks(done, failed)

    def _finish(self, path: Optional[str]) -> None:
        self.state = DONE
        self.result = path
        self._manager._done(self)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(path)


class RecordingManager:
    """
    Records live streams into C{directory} (see the module docstring).

    @param reactor: provides L{IReactorTime} and L{IReactorThreads}.
    @param threadpool: the writer pool, which must have exactly one thread
        (the caller starts and stops it); by default one is made, started at
        first use and stopped by L{close}.
    @param finalizer: the same for finalizing and recovery (a pool apart, so
        a long MP4 write does not stall live appends).
    """

    _log = Logger()

    def __init__(
        self,
        directory: str,
        reactor: Any,
        threadpool: Optional[ThreadPool] = None,
        *,
        finalizer: Optional[ThreadPool] = None,
        flushInterval: float = 0.5,
        flushBytes: int = 1 << 20,
        fsyncInterval: float = 1.0,
        maxQueueBytes: int = 32 << 20,
        maxTotalQueueBytes: int = 256 << 20,
    ) -> None:
        for pool in (threadpool, finalizer):
            if pool is not None and pool.max != 1:
                raise ValueError("a recording thread pool must have exactly one thread")
        self.directory = os.path.abspath(directory)
        self._reactor = reactor
        self.flushInterval = flushInterval
        self.flushBytes = flushBytes
        self.fsyncInterval = fsyncInterval
        self.maxQueueBytes = maxQueueBytes
        self.maxTotalQueueBytes = maxTotalQueueBytes
        self._writer = threadpool
        self._finalizer = finalizer
        self._ownPools: list[ThreadPool] = []
        self._trigger: Any = None
        self._recorders: dict[tuple[str, str], list[Recorder]] = {}
        self._queued = 0
        self._loop: Optional[LoopingCall] = None
        self._closed = False
        self._closing = False
        self._closeWaiters: Optional[list[Deferred[None]]] = []

    # --- public API -------------------------------------------------------------

    def pathFor(self, app: str, streamId: str) -> str:
        """
        Where the recording of C{app}/C{streamId} goes; L{RecordingRefused}
        (a ValueError) for a name that cannot be a file name.
        """
        return os.path.join(self.directory, _check(app, "application"),
                            _check(streamId, "stream id") + ".mp4")

    def active(self, app: str, streamId: str) -> bool:
        """Whether a recording of C{app}/C{streamId} is live or still being finalized."""
        return bool(self._recorders.get((app, streamId)))

    def recorders(self) -> list[Recorder]:
        """Every recording not done yet."""
        return [r for rs in self._recorders.values() for r in rs]

    def start(self, stream: LiveStream) -> Recorder:
        """
        Record C{stream}: subscribe a new L{Recorder} to it.
        L{RecordingRefused} (nothing subscribed, nothing on disk) for a name
        that cannot be a file name, RuntimeError once closed.
        """
        if self._closed:
            raise RuntimeError("the recording manager is closed")
        for existing in self._recorders.get((stream.app, stream.streamId), ()):
            if existing._stream is stream and existing.state == RECORDING:
                return existing
        self.pathFor(stream.app, stream.streamId)
        started = int(self._reactor.seconds() * 1000)
        recorder = Recorder(self, stream.app, stream.streamId, started)
        self._recorders.setdefault((stream.app, stream.streamId), []).append(recorder)
        self._startLoop()
        stream.subscribe(recorder)
        return recorder

    def recover(self) -> "Deferred[list[str]]":
        """
        Finalize the recordings a crash left behind (call at start-up).
        Fires with the paths of the MP4s made; never fails.
        """
        if self._closed:
            return succeed([])
        d = self._finalize(recover_directory, self.directory)

        def done(result: tuple[list[str], list[Note]]) -> list[str]:
            paths, notes = result
            self._emit(notes)
            return paths

        def failed(failure: Failure) -> list[str]:
            self._log.failure("recovering recordings failed", failure)
            return []

        return d.addCallbacks(done, failed)

    def close(self) -> "Deferred[None]":
        """
        Shut down: end every recording (as if its stream ended), wait for
        all of them to be finalized, then stop the threads.
        """
        d: Deferred[None] = Deferred()
        if self._closeWaiters is None:
            d.callback(None)
            return d
        self._closeWaiters.append(d)
        if self._closing:
            return d
        self._closing = self._closed = True
        for recorder in self.recorders():
            if recorder.state == RECORDING:
                if recorder._stream is not None:
                    recorder._stream.unsubscribe(recorder)
                recorder._end()
        waits = [r.whenFinished() for r in self.recorders()]

        def stopped(_: object) -> None:
            self._stopLoop()
            if self._trigger is not None:
                self._reactor.removeSystemEventTrigger(self._trigger)
                self._trigger = None
            for pool in self._ownPools:
                pool.stop()
            self._ownPools = []
            waiters, self._closeWaiters = self._closeWaiters or [], None
            for waiter in waiters:
                waiter.callback(None)

        DeferredList(waits, consumeErrors=True).addCallback(stopped)
        return d

    stop = close

    # --- internals ----------------------------------------------------------------

    def _pools(self) -> tuple[ThreadPool, ThreadPool]:
        for attr, name in (("_writer", "tokengate-recorder"),
                           ("_finalizer", "tokengate-recorder-finalize")):
            if getattr(self, attr) is None:
                pool = ThreadPool(1, 1, name=name)
                setattr(self, attr, pool)
                self._ownPools.append(pool)
        for pool in self._ownPools:
            if not pool.started:
                pool.start()
        if self._ownPools and self._trigger is None:
            self._trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._stopPools)
        assert self._writer is not None and self._finalizer is not None
        return self._writer, self._finalizer

    def _stopPools(self) -> None:
        self._trigger = None
        for pool in self._ownPools:
            pool.stop()

    def _write(self, f: Callable[..., None], *args: Any) -> "Deferred[None]":
        try:
            writer, _ = self._pools()
        except Exception:
            return fail()
        return deferToThreadPool(self._reactor, writer, f, *args)

    def _finalize(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        try:
            _, finalizer = self._pools()
        except Exception:
            return fail()
        return deferToThreadPool(self._reactor, finalizer, f, *args)

    def _emit(self, notes: list[Note]) -> None:
        for level, fmt, fields in notes:
            getattr(self._log, level)(fmt, **fields)

    def _done(self, recorder: Recorder) -> None:
        key = (recorder.app, recorder.streamId)
        rs = self._recorders.get(key, [])
        if recorder in rs:
            rs.remove(recorder)
        if not rs:
            self._recorders.pop(key, None)

    def _startLoop(self) -> None:
        if self._loop is None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self._reactor
            self._loop.start(self.flushInterval, now=False).addErrback(
                lambda f: self._log.failure("the recording flush timer failed", f))

    def _stopLoop(self) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()

    def _recordingStopped(self) -> None:
        if not any(r.state == RECORDING for r in self.recorders()):
            self._stopLoop()

    def _tick(self) -> None:
        live = False
        for recorder in self.recorders():
            if recorder.state == RECORDING:
                live = True
                recorder._flush()
        if not live:
            self._stopLoop()
