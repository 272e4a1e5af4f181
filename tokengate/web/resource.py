# -*- test-case-name: tests.test_playback -*-
"""
The one HTTP site: REST and metrics (Klein), playback under
C{/{App}/streams/}, C{/time}, and the pages; the composition root builds it
(L{tokengate.server.buildSite}).

Playback is the hot path, so it is dispatched here, before Klein's router.
"""

from __future__ import annotations

from typing import Any, Container

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from tokengate.web.pages import Pages
from tokengate.web.playback import PlaybackGate, PlaybackResource, TimeResource


class Root(Resource):
    """
    The site's root: dispatches C{/{App}/...} to playback, WHIP and WHEP,
    the WebRTC pages, the player pages, or the REST API.
    """

    def __init__(self, apps: Container[str], clock: IReactorTime, api: Any,
                 playback: PlaybackGate, webrtc: Any = None, whip: Any = None,
                 feed: Any = None) -> None:
        """
        @param apps: the applications' names.
        @param api: the REST API's resource.
        @param webrtc: the WebSocket and WebRTC pages (or None).
        @param whip: the WHIP and WHEP endpoints
            (L{tokengate.webrtc.whip.WhipEndpoints}, or None).
        @param feed: the internal feed other nodes pull streams from,
            C{/internal/v1/feed/{app}/{streamId}}
            (L{tokengate.cluster.origin.FeedResource}, or None).
        """
        super().__init__()
        self._apps = apps
        self._api = api
        self._playback = playback
        self._time = TimeResource(clock)
        self._pages = Pages()
        self._webrtc = webrtc  # the WebSocket and the WebRTC pages
        self._whip = whip
        self._feed = feed

    def getChildWithDefault(self, name: bytes, request: Any) -> Any:
        postpath = request.postpath
        if name == b"time" and not postpath:
            return self._time
        if (name == b"internal" and self._feed is not None and len(postpath) == 4
                and postpath[0] == b"v1" and postpath[1] == b"feed"):
            request.prepath.extend(postpath[:2])
            del postpath[:2]
            return self._feed
        try:
            app = name.decode("utf-8")
        except UnicodeDecodeError:
            app = ""
        known = app in self._apps
        # Playback first: it is the hot path.
        if known and postpath and postpath[0] == b"streams":
            request.prepath.append(postpath.pop(0))
            return PlaybackResource(self._playback, app)
        if self._whip is not None and postpath and postpath[0] in (b"whip", b"whep"):
            # any application: an unknown one is the access service's 404
            request.prepath.extend(postpath)
            page = self._whip.child(app, request)
            if page is not None:
                return page
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

