# -*- test-case-name: tests.test_media_packager -*-
"""
Text shared by the playlists and the MPD: ISO 8601 times, durations and
the query suffix every URI carries.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

__all__ = ["iso", "xsDuration", "querySuffix"]

_URI_UNSAFE = re.compile(r'[\x00-\x20"<>\\^`{|}\x7f]')


def iso(seconds: float) -> str:
    """An ISO 8601 UTC timestamp with milliseconds."""
    whole = math.floor(seconds)
    millis = int(round((seconds - whole) * 1000))
    if millis == 1000:
        whole, millis = whole + 1, 0
    stamp = datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{millis:03d}Z"


def xsDuration(seconds: float) -> str:
    """An xs:duration in seconds."""
    return f"PT{max(0.0, seconds):.3f}S"


def querySuffix(query: str) -> str:
    """C{?query}, or nothing; characters that would break a document are encoded."""
    if not query:
        return ""
    return "?" + _URI_UNSAFE.sub(lambda m: "%{:02X}".format(ord(m.group())), query)
