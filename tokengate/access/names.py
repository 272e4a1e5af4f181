# -*- test-case-name: tests.test_access_names -*-
"""
The one grammar of stream ids and application names, for every protocol
(RTMP, SRT, WebSocket/WebRTC, HTTP playback) and for the REST API.

A stream id is 1 to 128 characters of C{A-Z a-z 0-9 _ - .} that does not
start with a dot: it names files of the stream (HLS/DASH segments, MP4
recordings) and appears in URLs, so C{..}, C{.hidden}, separators, spaces,
control characters and anything outside ASCII are refused, on every
protocol alike, before any token is looked at.
"""

from __future__ import annotations

import re

#: the most characters in a stream id
MAX_STREAM_ID = 128

_STREAM_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_APP_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def isValidStreamId(value: object) -> bool:
    """
    @return: whether C{value} is a stream id every protocol accepts.
    """
    return isinstance(value, str) and _STREAM_ID.fullmatch(value) is not None


def isValidAppName(value: object) -> bool:
    """
    @return: whether C{value} can name an application (it may still be
        unknown to the server).
    """
    return isinstance(value, str) and _APP_NAME.fullmatch(value) is not None
