# -*- test-case-name: tests.test_playback -*-
"""
The one HTTP site: REST and metrics (Klein), playback under
``/{App}/streams/``, ``/time``, and the pages, built around the server core.

Playback is the hot path, so it is dispatched here, before Klein's router.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource

from ..server import Server
from .pages import Pages
from .playback import PlaybackGate, PlaybackResource, TimeResource
from .rest import RestAPI
from .site import TokengateSite


class Root(Resource):
    def __init__(self, server: Server, api: Any, playback: PlaybackGate,
                 webrtc: Any = None) -> None:
        super().__init__()
        self._server = server
        self._api = api
        self._playback = playback
        self._time = TimeResource(server.clock)
        self._pages = Pages()
        self._webrtc = webrtc  # the WebSocket and the WebRTC pages

    def getChildWithDefault(self, name: bytes, request: Any) -> Any:
        postpath = request.postpath
        if name == b"time" and not postpath:
            return self._time
        try:
            app = name.decode("utf-8")
        except UnicodeDecodeError:
            app = ""
        known = app in self._server.apps
        # Playback first: it is the hot path.
        if known and postpath and postpath[0] == b"streams":
            request.prepath.append(postpath.pop(0))
            return PlaybackResource(self._playback, app)
        if known and self._webrtc is not None:
            page = self._webrtc.child(name, request)
            if page is not None:
                return page
        if known and postpath and postpath[0] != b"rest":
            first = postpath[0]
            request.prepath.append(postpath.pop(0))
            page = self._pages.child(first, request)
            if page is not None:
                return page
            postpath.insert(0, request.prepath.pop())
        # Everything else is Klein's: give it the whole path.
        request.prepath.pop()
        postpath.insert(0, name)
        return self._api


def build_site(server: Server) -> TokengateSite:
    api = RestAPI(server.apps, server.store, server.hub, server.gate, server.revoker,
                  server.clock, server.metrics, server.config)
    playback = PlaybackGate(server, server.signer, server.outputs)
    server.playback = playback
    from tokengate.webrtc.pages import buildWebRTCPages

    root = Root(server, api.resource(), playback, buildWebRTCPages(server))
    return TokengateSite(root, maxBodySize=server.config.maxBodySize, metrics=server.metrics,
                         requestTimeout=server.config.requestTimeout)
