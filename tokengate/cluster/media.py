# -*- test-case-name: tests.test_cluster_media -*-
"""
The internal media channel between nodes: how an edge serves HLS, LL-HLS
and DASH from its origin's packager, so that every node serves the same
playlists, MPDs and segment names (a player may reach any node for each
request: a load balancer without sticky sessions).

The origin serves (L{tokengate.cluster.mediaorigin})::

    GET /internal/v1/media/{app}/{streamId}/{object}

with the headers of the feed (L{tokengate.cluster.feed}: the asking node,
the expiry, C{Authorization: TokengateMedia <credential>}, the credential
made with C{purpose="media"}, which opens no feed and which no feed
credential replaces), where C{object} is one of L{OBJECTS}'s documents or
C{{kind}/{file}} (C{video} or C{audio}; C{init.mp4}, C{init-N.mp4},
C{MSN.m4s}, C{MSN.PART.m4s}).  Media playlists take C{_HLS_msn} and
C{_HLS_part} (an LL-HLS blocking reload).

The documents are the packager's, not decorated for any viewer: every URI
carries C{?}L{QUERY_MARKER} where a viewer's session credential goes, and
the MPD's C{<Location>} is L{LOCATION_MARKER}.  The edge puts its viewer's
credential and its own location there (L{decorateHls}, L{decorateMpd}),
exactly what the packager would have written for a local stream.

Pure code: no I/O.
"""

from __future__ import annotations

import re
from typing import Optional
from xml.sax.saxutils import escape

from tokengate.media.cmaf.text import querySuffix

__all__ = [
    "MEDIA_PATH",
    "AUTH_SCHEME",
    "PURPOSE",
    "QUERY_MARKER",
    "LOCATION_MARKER",
    "MULTIVARIANT",
    "MPD",
    "objectName",
    "parseObject",
    "decorateHls",
    "decorateMpd",
    "documentEnded",
]

#: the channel's path under the origin's internal address
MEDIA_PATH = "/internal/v1/media/"

#: the C{Authorization} scheme of a media request
AUTH_SCHEME = "TokengateMedia "

#: the credential's purpose (L{tokengate.cluster.feed.feedCredential})
PURPOSE = "media"

#: the query the origin writes into every URI of a document: never a
#: viewer's (the edge replaces C{?QUERY_MARKER} whole)
QUERY_MARKER = "tokengate-query"

#: the MPD's C{<Location>} as the origin writes it
LOCATION_MARKER = "tokengate-location:"

#: the object names of the documents
MULTIVARIANT = "main.m3u8"
MPD = "main.mpd"

_KINDS = ("video", "audio")
_FILE = re.compile(r"(?:init(?:-\d{1,6})?\.mp4|\d{1,9}(?:\.\d{1,4})?\.m4s)", re.ASCII)
_LOCATION_LINE = "  <Location>{}</Location>\n".format(LOCATION_MARKER)


def objectName(what: str, details: tuple[str, ...]) -> Optional[str]:
    """
    The object a playback request stands for (see
    L{tokengate.web.playback.PlaybackGate.parse}): C{what} C{hls},
    C{media}, C{dash} or C{resource}, with its details; None for anything
    else (an MP4 recording is no object of the channel).
    """
    if what == "hls":
        return MULTIVARIANT
    if what == "dash":
        return MPD
    if what == "media" and len(details) == 1 and details[0] in _KINDS:
        return details[0] + ".m3u8"
    if what == "resource" and len(details) == 2 and details[0] in _KINDS \
            and _FILE.fullmatch(details[1]):
        return details[0] + "/" + details[1]
    return None


def parseObject(parts: list[str]) -> Optional[tuple[str, tuple[str, ...]]]:
    """
    The object the path segments after C{{app}/{streamId}/} name, as
    C{(what, details)} of L{objectName}; None for anything else.
    """
    if len(parts) == 1:
        name = parts[0]
        if name == MULTIVARIANT:
            return "hls", ()
        if name == MPD:
            return "dash", ()
        if name in ("video.m3u8", "audio.m3u8"):
            return "media", (name[:-5],)
        return None
    if len(parts) == 2 and parts[0] in _KINDS and _FILE.fullmatch(parts[1]):
        return "resource", (parts[0], parts[1])
    return None


def decorateHls(text: str, query: str) -> str:
    """
    An origin's playlist as the packager would have written it with
    C{query} (the viewer's credential, or empty).
    """
    return text.replace("?" + QUERY_MARKER, querySuffix(query))


def decorateMpd(text: str, query: str, location: Optional[str]) -> str:
    """
    An origin's MPD as the packager would have written it with C{query}
    and C{location} (None: no C{<Location>}).
    """
    text = text.replace("?" + QUERY_MARKER, escape(querySuffix(query).replace("$", "$$")))
    if location:
        return text.replace(_LOCATION_LINE, "  <Location>{}</Location>\n".format(
            escape(location)))
    return text.replace(_LOCATION_LINE, "")


def documentEnded(what: str, text: str) -> bool:
    """
    Whether a playlist or MPD is the final one of an ended stream.
    """
    if what == "dash":
        return 'type="static"' in text
    return "#EXT-X-ENDLIST" in text
