"""
Servers for the tests: one in-process tokengate with its HTTP and RTMP
listeners on loopback, for the real-player interop tests.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from twisted.internet import reactor

from tokengate.apps import Applications
from tokengate.rtmp.protocol import RTMPFactory
from tokengate.config import ServerConfig
from tokengate.server import Server
from tokengate.store.memory import MemoryTokenStore
from tokengate.server import buildSite
from tokengate.web.rest import RestAPI


def restAPI(server: Server) -> RestAPI:
    """
    The REST API of C{server}, built as the composition root builds it.
    """
    return RestAPI(server.apps, server.store, server.hub, server.gate, server.revoker,
                   server.clock, server.metrics, server.config)


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
