"""
Servers for the tests: one in-process tokengate with its HTTP and RTMP
listeners on loopback, for the real-player interop tests; and the media they
play (L{test_clip}, made by ffmpeg), shared by the in-memory playback tests
and the interop tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Any, Callable, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from tokengate.access.service import AccessRequest, Refused, Release
from tokengate.apps import Applications, AppSettings
from tokengate.rtmp.protocol import RTMPFactory
from tokengate.config import ServerConfig
from tokengate.server import Server
from tokengate.store.memory import MemoryTokenStore
from tokengate.server import buildSite
from tokengate.tokens import Outcome
from tokengate.web.rest import RestAPI

from tests.helpers import require


def restAPI(server: Server) -> RestAPI:
    """
    The REST API of C{server}, built as the composition root builds it.
    """
    return RestAPI(server.apps, server.store, server.hub, server.gate, server.revoker,
                   server.clock, server.metrics, server.config, server.subscribers,
                   server.jwks, broadcasts=server.broadcasts, streams=server.streams)


class InProcessMedia:
    """
    A mixin for a L{twisted.trial.unittest.TestCase}: L{serveMedia} starts a
    tokengate in the test's process (memory store, the real reactor) and
    sets C{dataDir}, C{server}, C{http}, C{rtmp} (the listening ports),
    C{web} (the HTTP base URL) and C{rtmpBase} (C{rtmp://127.0.0.1:PORT}).
    """

    mktemp: Callable[[], str]
    addCleanup: Callable[..., None]

    def serveMedia(self, wrapSite: Optional[Callable[[Any], Any]] = None,
                   **appSettings: Any) -> None:
        """
        @param wrapSite: called with the site before it listens (to observe
            its requests), returns the factory to listen with.
        @param appSettings: LiveApp's settings.
        """
        self.dataDir = os.path.abspath(self.mktemp())
        os.makedirs(self.dataDir)
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=reactor,
                             config=ServerConfig(), dataDir=self.dataDir)
        self.server.apps.replace("LiveApp", **appSettings)
        site = buildSite(self.server)
        if wrapSite is not None:
            site = wrapSite(site)
        self.http = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.rtmp = reactor.listenTCP(0, RTMPFactory(self.server.access, self.server.clock, self.server.metrics), interface="127.0.0.1")
        self.addCleanup(self.server.outputs.close)
        self.addCleanup(self.http.stopListening)
        self.addCleanup(self.rtmp.stopListening)
        self.web = "http://127.0.0.1:{}".format(self.http.getHost().port)
        self.rtmpBase = "rtmp://127.0.0.1:{}".format(self.rtmp.getHost().port)


_clip: dict[str, str] = {}


def test_clip(seconds: int = 4) -> str:
    """
    A short H.264/AAC FLV clip (made once per run with ffmpeg), for the
    in-memory playback tests and the interop tests alike.
    """
    key = str(seconds)
    if key in _clip and os.path.exists(_clip[key]):
        return _clip[key]
    ffmpeg = require("ffmpeg")
    path = os.path.join(tempfile.mkdtemp(prefix="tg-clip-"), "clip{}.flv".format(seconds))
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", str(seconds),
         "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
         "-bf", "2", "-c:a", "aac", "-b:a", "64k", "-f", "flv", path],
        check=True, timeout=60,
    )
    _clip[key] = path
    return path


def frames(stderr: str) -> int:
    """
    The last C{frame=N} count in an ffmpeg progress log (0 when none).
    """
    found = re.findall(r"frame=\s*(\d+)", stderr)
    return int(found[-1]) if found else 0


class RecordingPolicy:
    """
    An L{tokengate.access.service.IAccessPolicy} for tests (give it to
    C{Server(extraPolicies=[policy])} or to an C{AccessService}): records
    every L{AccessRequest} it is asked about (C{asked}); refuses with
    C{outcome} when it is set, else admits holding a release whose calls are
    counted (C{released}); waits for C{pending} first when it is set.  It
    applies (L{applies}) to the C{actions} given (both by default).
    """

    mechanism = "recording"

    def __init__(self, outcome: Optional[Outcome] = None,
                 actions: frozenset[str] = frozenset({"publish", "play"})) -> None:
        """
        @param actions: the actions it applies to (L{applies}).
        """
        self.outcome = outcome
        self.actions = actions
        self.asked: list[AccessRequest] = []
        self.released = 0
        self.pending: Optional[Deferred[None]] = None

    @property
    def last(self) -> AccessRequest:
        """
        The last request asked about (fails the test when none was).
        """
        assert self.asked, "the policy was never asked"
        return self.asked[-1]

    def applies(self, settings: AppSettings, action: str) -> bool:
        return action in self.actions

    async def admit(self, request: AccessRequest, settings: AppSettings) -> Optional[Release]:
        self.asked.append(request)
        if self.pending is not None:
            await self.pending
        if self.outcome is not None:
            raise Refused(self.outcome)

        def release() -> None:
            self.released += 1
        return release


#: the refusal outcomes a security policy may answer with
POLICY_OUTCOMES = (Outcome.BLOCKED, Outcome.BAD_CODE, Outcome.CODE_IN_USE, Outcome.UNREGISTERED,
                   Outcome.ADDRESS, Outcome.WEBHOOK_REFUSED, Outcome.WEBHOOK_UNAVAILABLE)
