# -*- test-case-name: tests.test_rest -*-
"""
The one HTTP site: REST, metrics (and, as they land, playback, WebSocket
and pages), built around the server core.
"""

from __future__ import annotations

from ..server import Server
from .rest import RestAPI
from .site import TokengateSite


def build_site(server: Server) -> TokengateSite:
    api = RestAPI(server)
    return TokengateSite(api.resource(), maxBodySize=server.config.maxBodySize)
