# -*- test-case-name: tests.test_webrtc_signalling -*-
"""
What WebRTC adds to the site of every application:

  - C{/{App}/websocket}: the signalling WebSocket (L{signalling})
  - C{/{App}?id=&token=}: the publish page (camera preview, publish)
  - C{/{App}/webrtc.js}: play.html's WebRTC technology
  - C{/{App}/publish.js}: the publish page's script
  - C{/{App}/ice.js}: the ICE side both share
  - C{/{App}/whip.html?id=&token=}: the WHIP publish page
  - C{/{App}/whippublish.js}: its script
  - C{/{App}/whipclient.js}: the WHIP/WHEP client it and play.html's WHEP
    technology share
  - C{/{App}/whep.js}: play.html's WHEP technology
"""

from __future__ import annotations

import html
import os
from typing import Any, Container, Optional

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from twisted.web.static import File

from tokengate.logsafe import Logger
from tokengate.webrtc.signalling import SignallingFactory

STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "web", "static")
SCRIPTS = {b"webrtc.js": "webrtc.js", b"publish.js": "publish.js", b"ice.js": "ice.js",
           b"whipclient.js": "whipclient.js", b"whippublish.js": "whippublish.js",
           b"whep.js": "whep.js"}
#: the publish pages under C{/{App}/} (besides C{/{App}} itself)
PAGES = {b"whip.html": "whip.html"}


class PublishPage(Resource):
    """
    A publish page of one application (its name in the page, not cached,
    no referrer).
    """

    isLeaf = True

    def __init__(self, app: str, filename: str = "publish.html") -> None:
        super().__init__()
        self._app = app
        self._filename = filename

    def render_GET(self, request: Request) -> bytes:
        with open(os.path.join(STATIC, self._filename), encoding="utf-8") as f:
            text = f.read()
        text = text.replace("__APP__", html.escape(self._app, quote=True))
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return text.encode("utf-8")

    render_HEAD = render_GET


class WebRTCPages:
    """
    The WebSocket and the WebRTC pages of every application.

    @ivar factory: the signalling's factory.
    @ivar engine: the media engine (or None).
    """

    _log = Logger()

    def __init__(self, apps: Container[str], factory: SignallingFactory,
                 engine: Any = None) -> None:
        """
        @param apps: the applications' names (pages exist for these only).
        @param factory: the signalling behind C{/{App}/websocket}.
        @param engine: the media engine the signalling uses.
        """
        from autobahn.twisted.resource import WebSocketResource

        self._apps = apps
        self.factory = factory
        self.engine = engine
        self._ws = WebSocketResource(self.factory)
        self._scripts = {name: File(os.path.join(STATIC, path))
                         for name, path in SCRIPTS.items()}

    def child(self, name: bytes, request: Request) -> Optional[IResource]:
        try:
            app = name.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if app not in self._apps:
            return None
        postpath = request.postpath
        if not postpath or postpath == [b""]:
            return PublishPage(app)
        prepath = request.prepath  # a list while the request is routed
        if len(postpath) == 1 and prepath is not None:
            if postpath[0] in PAGES:
                prepath.append(postpath.pop(0))
                return PublishPage(app, PAGES[prepath[-1]])
            if postpath[0] == b"websocket":
                prepath.append(postpath.pop(0))
                return self._ws
            if postpath[0] in self._scripts:
                prepath.append(postpath.pop(0))
                return self._scripts[prepath[-1]]
        return None

