# -*- test-case-name: tests.test_playback -*-
"""
The pages every application serves: C{/{App}/play.html} and its script,
and the player libraries (hls.js, dash.js) that the build fetched from npm.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from twisted.web.resource import NoResource, Resource
from twisted.web.server import Request
from twisted.web.static import File

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
PAGES = {b"play.html": "play.html", b"player.js": "player.js"}


def vendor_dir() -> Optional[str]:
    """
    Where the npm-built player libraries are: in this package when it was
    built with them, else in the installed distribution (running from a
    source checkout whose project is pip-installed).
    """
    here = os.path.join(STATIC, "vendor")
    if os.path.isdir(here):
        return here
    for entry in sys.path:
        candidate = os.path.join(entry or os.curdir, "tokengate", "web", "static", "vendor")
        if os.path.isdir(candidate):
            return os.path.abspath(candidate)
    return None


class _NoListing(File):
    def directoryListing(self) -> Resource:
        return NoResource("No listing")


class Pages:
    def __init__(self) -> None:
        vendor = vendor_dir()
        self._vendor = _NoListing(vendor) if vendor else NoResource(
            "The player libraries are missing: reinstall tokengate with npm available")
        self._files = {name: File(os.path.join(STATIC, path)) for name, path in PAGES.items()}

    def child(self, name: bytes, request: Request) -> Optional[Resource]:
        """
        The resource for C{/{App}/{name}...}, or None when it is not a page.
        """
        if name in self._files and not request.postpath:
            return self._files[name]
        if name == b"vendor":
            return self._vendor
        return None
