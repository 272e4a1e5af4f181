# -*- test-case-name: tests.test_playback -*-
"""
What every live stream turns into, by its application's switches: CMAF for
HLS and DASH (one packager per stream, kept across republishes for a while
so playlists continue with a discontinuity), and an MP4 recording.
"""

from __future__ import annotations

import os
from typing import Any, Optional


from tokengate.apps import ISettingsLookup
from tokengate.logsafe import Logger
from tokengate.media.hub import PULLED, Hub, LiveStream
from tokengate.metrics import Metrics

#: keep an ended stream's packager this long (players finish; a republish
#: within it continues the same playlists)
RETAIN_AFTER_END = 60.0


class Outputs:
    """
    The packagers and recorders of this node's live streams.
    """

    _log = Logger()

    def __init__(self, apps: ISettingsLookup, hub: Hub, clock: Any, metrics: Metrics,
                 dataDir: Optional[str], partTarget: float = 0.5) -> None:
        """
        @param apps: the applications' settings (which outputs a stream gets).
        @param hub: told to call us when a stream goes live.
        @param dataDir: where recordings go (None: not recorded).
        @param partTarget: LL-HLS part duration, seconds.
        """
        self._apps = apps
        self._clock = clock
        self.partTarget = partTarget
        self.recordings = None
        self._packagers: dict[tuple[str, str], Any] = {}
        self._recordingsDir = os.path.join(dataDir, "streams") if dataDir else None
        if self._recordingsDir is not None:
            from tokengate.media.recorder import RecordingManager

            self.recordings = RecordingManager(self._recordingsDir, clock)
        self._notRecorded = metrics.counter(
            "tokengate_recordings_refused",
            "Publications of applications that record which were not recorded, by reason",
            ["reason"],
        )
        hub.onPublish(self._published)

    def recordingPath(self, app: str, streamId: str) -> Optional[str]:
        """
        Where the stream's MP4 recording is (or would be); None when this
        server does not record or the name cannot be a file name.
        """
        if self.recordings is None:
            return None
        try:
            return str(self.recordings.pathFor(app, streamId))
        except ValueError:
            return None

    def hasRecording(self, app: str, streamId: str) -> bool:
        """
        Whether an MP4 recording of the stream exists (an MP4 play needs one).
        """
        path = self.recordingPath(app, streamId)
        return path is not None and os.path.isfile(path)

    def packager(self, app: str, streamId: str) -> Optional[Any]:
        return self._packagers.get((app, streamId))

    def _published(self, stream: LiveStream) -> None:
        settings = self._apps.get(stream.app)
        if settings is None:
            return
        if settings.hlsMuxingEnabled or settings.dashMuxingEnabled:
            key = (stream.app, stream.streamId)
            packager = self._packagers.get(key)
            if packager is None:
                from tokengate.media.packager import Packager

                # hlsTime is an integer from 1 to 60 (apps.SETTINGS_FIELDS); a
                # part never exceeds its segment
                segmentTarget = float(settings.hlsTime)
                packager = Packager(
                    stream.app, stream.streamId, self._clock,
                    segmentTarget=segmentTarget,
                    partTarget=min(self.partTarget, segmentTarget),
                    windowSegments=int(settings.hlsListSize),
                    hls=settings.hlsMuxingEnabled, dash=settings.dashMuxingEnabled,
                )
                self._packagers[key] = packager
            packager.attach(stream)
        if (settings.mp4MuxingEnabled and self.recordings is not None
                and stream.publishType != PULLED):
            # a pulled copy is recorded by its origin, not by every edge
            from tokengate.media.recorder import RecordingRefused

            try:
                self.recordings.start(stream)
            except RecordingRefused as e:
                # the publication goes on, unrecorded: one line, no traceback
                self._notRecorded.labels("bad_name").inc()
                self._log.warn("not recording a stream of {app}: {reason}",
                               app=stream.app, reason=str(e))
            except Exception:
                self._log.failure("cannot record {app}/{streamId}", app=stream.app,
                                  streamId=stream.streamId)

    def sweep(self) -> None:
        """
        Drop packagers of streams that ended long enough ago.
        """
        now = self._clock.seconds()
        for key, packager in list(self._packagers.items()):
            if packager.ended and now - packager.lastActivity > RETAIN_AFTER_END:
                del self._packagers[key]
                packager.close()

    def forget(self, app: str) -> None:
        for key in [k for k in self._packagers if k[0] == app]:
            self._packagers.pop(key).close()

    def recover(self) -> Any:
        if self.recordings is None:
            from twisted.internet.defer import succeed

            return succeed([])
        return self.recordings.recover()

    def close(self) -> Any:
        for packager in self._packagers.values():
            packager.close()
        self._packagers.clear()
        if self.recordings is not None:
            return self.recordings.close()
        from twisted.internet.defer import succeed

        return succeed(None)
