# -*- test-case-name: tests.test_site -*-
"""
The HTTP site: request body caps and an access log that never shows a token.
"""

from __future__ import annotations

import io
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.abstract import FileDescriptor
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

#: Query parameters whose values are secrets.
SECRET_PARAMS = ("token", "tokenId", "jwt", "subscriberCode", "tg", "tgs")

_SECRET_QUERY = re.compile(
    rb"([?&;](?:" + b"|".join(p.encode() for p in SECRET_PARAMS) + rb")=)[^&;#\s]*",
    re.IGNORECASE,
)


def redact_uri(uri: bytes) -> bytes:
    """
    Replace the value of every secret query parameter with C{REDACTED}.
    """
    return _SECRET_QUERY.sub(rb"\1REDACTED", uri)


#: C{twisted.web.http._escape}, looked up once: C{twisted.web.http} is a
#: deprecation proxy, each attribute read through it costs a Python call.
_escape = http._escape

#: Printable ASCII but for C{"} and C{\\}: what L{_escape} returns unchanged.
_PLAIN_BYTES = re.compile(rb'[\x20\x21\x23-\x5b\x5d-\x7e]*').fullmatch
_PLAIN_TEXT = re.compile(r'[\x20\x21\x23-\x5b\x5d-\x7e]*').fullmatch


def _escaped(s: Any) -> str:
    """
    L{_escape}, without its C{repr} round trip for the usual plain value.
    """
    if type(s) is bytes:
        if _PLAIN_BYTES(s) is not None:
            return s.decode("ascii")
    elif type(s) is str and _PLAIN_TEXT(s) is not None:
        return s
    return _escape(s)


def redacting_log_formatter(timestamp: str, request: Any) -> str:
    """
    The combined log format, with secrets removed from the request line and
    the referrer.
    """
    referrer = request.getHeader(b"referer")
    agent = request.getHeader(b"user-agent")
    uri = request.uri
    if b"=" in uri:
        uri = redact_uri(uri)
    return '"%s" - - %s "%s %s %s" %s %s "%s" "%s"' % (
        _escaped(getattr(request.getClientAddress(), "host", None) or "-"),
        timestamp,
        _escaped(request.method),
        _escaped(uri),
        _escaped(request.clientproto),
        request.code,
        request.sentLength or "-",
        _escaped(redact_uri(referrer)) if referrer else "-",
        _escaped(agent) if agent else "-",
    )


#: Response bodies from this size on are not copied behind their headers.
LARGE_BODY = 64 * 1024


class CappedRequest(Request):
    """
    A request whose body is refused (413) past the site's C{maxBodySize};
    the excess is discarded as it arrives, never buffered.

    A large body written at once (a media segment) is sent without a copy:
    a socket transport joins everything queued since its last send into one
    buffer, so the status line and headers queued just before the body would
    cost a copy of the whole body.  Sending them first leaves the body alone
    in the queue, where it is sent from as it is.
    """

    _received = 0
    _tooLarge = False

    def write(self, data: bytes) -> None:
        if not self.startedWriting and len(data) >= LARGE_BODY:
            transport = self.channel.transport
            if isinstance(transport, FileDescriptor) and not transport.dataBuffer:
                super().write(b"")
                # what the reactor does once the socket is writable; errors
                # (a lost connection) are left for the reactor's own call
                transport.doWrite()
        super().write(data)

    def _cap(self) -> int:
        return getattr(self.channel.site, "maxBodySize", 1 << 20)

    def gotLength(self, length: Any) -> None:
        if length is not None and length > self._cap():
            self._tooLarge = True
            self.content = io.BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._tooLarge:
            return
        self._received += len(data)
        if self._received > self._cap():
            self._tooLarge = True
            self.content = io.BytesIO()
            return
        super().handleContentChunk(data)

    def _refuse(self, code: int, message: bytes) -> None:
        self.setResponseCode(code)
        self.setHeader(b"content-type", b"application/json")
        self.write(b'{"success":false,"message":"' + message + b'","dataId":"","errorId":0}')
        self.finish()

    def process(self) -> None:
        if self._tooLarge:
            self._refuse(413, b"Request body too large")
            return
        if b"%" in self.path:
            # Every resource (Klein's router, static files) decodes the path
            # as UTF-8; one that is not is refused here, once, without the
            # traceback each of them would log.
            try:
                unquote_to_bytes(self.path).decode("utf-8")
            except UnicodeDecodeError:
                self._refuse(400, b"The request path is not UTF-8")
                return
        super().process()


class TokengateSite(Site):
    requestFactory = CappedRequest

    def __init__(self, resource: IResource, maxBodySize: int = 1 << 20, **kw: Any) -> None:
        kw.setdefault("logFormatter", redacting_log_formatter)
        super().__init__(resource, **kw)
        self.maxBodySize = maxBodySize
