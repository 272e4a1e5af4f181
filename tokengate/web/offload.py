# -*- test-case-name: tests.test_offload -*-
"""
Segment offload: links an edge (nginx, a CDN) verifies by itself.

With C{--offload-secret}, the playlists and the MPD tokengate serves carry,
for every init segment, segment and part, a short-lived link in the form of
nginx's C{secure_link} module::

    video/12.m4s?md5=<base64url(md5(expires + path + " " + secret))>&expires=<unix time>

where C{path} is the URI's path as the edge sees it (C{$uri}:
C{/App/streams/id/video/12.m4s}).  The edge checks the link with the same
secret and serves the bytes from its cache, keyed by the path alone, so one
copy serves every viewer; it fetches a segment it does not hold from
tokengate, passing the link along, and tokengate checks the same link
(L{OffloadLinks.check}) before it answers.  Playlists and MPDs still go
through tokengate (admission, the session, revocation): each reload carries
fresh links, so a link only has to outlive the time between a reload and
the fetch of what it lists (C{ttl}, 30 s by default).

A DASH C{SegmentTemplate} names every segment of a track with one URL
(C{video/$Number$.m4s?...}), so the MPD's template carries a link for the
track's directory (C{scope=track}: the signed path is
C{/App/streams/id/video/}), which opens any segment of that track until it
expires.  The two forms cannot be confused: a track's path ends with C{/},
a file's never does.

Init segments (C{init.mp4}, C{init-N.mp4}: the tracks' configuration, no
media) get long-lived links instead (L{INIT_LIFE}), stable for hours:
hls.js keeps the init segment URL of the first playlist it loaded for the
whole playback (and fetches it again after a buffer reset), and ffmpeg
fetches the init segment again whenever its URL changes.

Pure code: no I/O, time is passed in.  The configuration an edge needs is
C{contrib/nginx/tokengate-offload.conf} (C{docs/offload.md}).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
from typing import Optional

__all__ = ["OffloadLinks", "OffloadError", "SECRET_PATTERN"]

#: an offload secret: pasted verbatim into the edge's configuration (an
#: nginx string), so only characters that need no quoting there
SECRET_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{32,256}$", re.ASCII)

#: the URIs of the packaged media inside a playlist or MPD: an init segment,
#: a segment or a part of a track, relative to C{/App/streams/id/}
_RESOURCE = r"(?:video|audio)/(?:init(?:-\d{1,6})?\.mp4|\d{1,9}(?:\.\d{1,4})?\.m4s)"
#: in an HLS media playlist: a URI line, or a C{URI="..."} attribute; the
#: query the packager wrote (the session credential) is replaced
_HLS_URI = re.compile(r'(^|URI=")(' + _RESOURCE + r')(?:\?[^"\n]*)?', re.MULTILINE | re.ASCII)
#: in an MPD: the C{initialization} and C{media} attributes of a template
_MPD_INIT = re.compile(r'(initialization=")(' + _RESOURCE + r')(?:\?[^"]*)?"', re.ASCII)
_MPD_MEDIA = re.compile(r'(media=")((?:video|audio)/)\$Number\$\.m4s(?:\?[^"]*)?"', re.ASCII)

MIN_TTL = 5.0
MAX_TTL = 3600.0
#: an init segment's link is valid from L{INIT_LIFE} to twice that, and
#: the same for L{INIT_LIFE} seconds (its expiry is a multiple of it)
INIT_LIFE = 6 * 3600

_INIT_NAME = re.compile(r"/init(?:-\d{1,6})?\.mp4$", re.ASCII)


class OffloadError(ValueError):
    """
    An offload secret or lifetime out of range.
    """


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class OffloadLinks:
    """
    Issues and checks the edge's links (nginx C{secure_link_md5}).

    @ivar ttl: seconds a link stays valid after it was issued.
    """

    def __init__(self, secret: str, ttl: float = 30.0) -> None:
        """
        @param secret: the secret shared with the edge (L{SECRET_PATTERN}).
        @param ttl: seconds a link lives (L{MIN_TTL} to L{MAX_TTL}).
        @raise OffloadError: when either is out of range.
        """
        if not SECRET_PATTERN.match(secret):
            raise OffloadError("the offload secret must be 32 to 256 characters of"
                               " A-Z a-z 0-9 _ -")
        if not (isinstance(ttl, (int, float)) and MIN_TTL <= ttl <= MAX_TTL):
            raise OffloadError("the offload link lifetime must be {:g} to {:g} seconds".format(
                MIN_TTL, MAX_TTL))
        self._suffix = (" " + secret).encode("ascii")
        self.ttl = float(ttl)

    def digest(self, path: str, expires: int) -> str:
        """
        nginx's C{secure_link_md5 "$secure_link_expires$uri <secret>"} of
        C{path} (as decoded: nginx's C{$uri}), base64url without padding.
        """
        data = str(expires).encode("ascii") + path.encode("utf-8") + self._suffix
        return _b64(hashlib.md5(data).digest())

    def expiry(self, now: float, path: str = "") -> int:
        """
        The expiry of a link for C{path} issued at C{now}: whole seconds,
        at least C{ttl} ahead; for an init segment, the end of the
        L{INIT_LIFE} period after the current one.
        """
        if _INIT_NAME.search(path):
            return (int(now) // INIT_LIFE + 2) * INIT_LIFE
        return int(math.ceil(now + self.ttl))

    def _horizon(self, path: str, now: float) -> float:
        """
        The latest expiry a genuine link for C{path} issued by now can have.
        """
        if _INIT_NAME.search(path):
            return (int(now) // INIT_LIFE + 2) * INIT_LIFE
        return now + self.ttl + 1

    def link(self, path: str, now: float, expires: Optional[int] = None) -> str:
        """
        The query that opens C{path} (a file's path, or a track's directory
        ending in C{/}) until C{expires} (by default L{expiry} of C{now}).
        """
        if expires is None:
            expires = self.expiry(now, path)
        query = "md5={}&expires={}".format(self.digest(path, expires), expires)
        return query + "&scope=track" if path.endswith("/") else query

    def check(self, path: str, md5: Optional[str], expires: Optional[str],
              scope: Optional[str], now: float) -> bool:
        """
        Whether a request for the file C{path} carries a link that opens it
        now: its own, or (C{scope=track}) its track directory's.  What nginx
        checks, checked again by tokengate when the edge fetches from it.
        """
        if not md5 or not expires or len(md5) > 64 or len(expires) > 12 \
                or not expires.isascii() or not expires.isdigit():
            return False
        when = int(expires)
        if when <= now:
            return False
        if scope == "track":
            signed = path.rsplit("/", 1)[0] + "/"
        elif scope is None:
            signed = path
        else:
            return False
        if signed.endswith("/") != (scope == "track") or when > self._horizon(signed, now):
            return False
        return hmac.compare_digest(md5.encode("ascii", "replace"),
                                   self.digest(signed, when).encode("ascii"))

    @staticmethod
    def base(app: str, streamId: str) -> str:
        """
        The path of a stream's directory, as the edge sees it decoded.
        """
        return "/{}/streams/{}/".format(app, streamId)

    def signHls(self, text: str, app: str, streamId: str, now: float) -> str:
        """
        A media playlist with a link on every init segment, segment, part
        and preload hint URI (the query the packager wrote on them
        replaced); the URIs of playlists (rendition reports) keep theirs.
        """
        base = self.base(app, streamId)

        def sign(m: "re.Match[str]") -> str:
            uri = m.group(2)
            return "{}{}?{}".format(m.group(1), uri, self.link(base + uri, now))

        return _HLS_URI.sub(sign, text)

    def signMpd(self, text: str, app: str, streamId: str, now: float) -> str:
        """
        An MPD whose templates carry links: the init segment's own, the
        track's for C{media} (L{link} of the track's directory).
        """
        base = self.base(app, streamId)

        def init(m: "re.Match[str]") -> str:
            uri = m.group(2)
            return '{}{}?{}"'.format(m.group(1), uri,
                                     self.link(base + uri, now).replace("&", "&amp;"))

        def media(m: "re.Match[str]") -> str:
            track = m.group(2)
            return '{}{}$Number$.m4s?{}"'.format(
                m.group(1), track, self.link(base + track, now).replace("&", "&amp;"))

        return _MPD_MEDIA.sub(media, _MPD_INIT.sub(init, text))

