# -*- test-case-name: tests.test_site -*-
"""
The HTTP site: request deadlines, request body caps and an access log that
never shows a token.
"""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING, Any, Optional, cast
from urllib.parse import unquote_to_bytes

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from tokengate.config import ACCESS_LOG_OFF
from tokengate.limits import CountedProtocol

if TYPE_CHECKING:
    from tokengate.metrics import Metrics

#: Query parameters whose values are secrets.  Redaction compares names
#: case-insensitively (the server reads them case-sensitively), so it covers
#: at least every spelling the server would read.
SECRET_PARAMS = ("token", "tokenId", "jwt", "subscriberCode", "tg", "tgs", "md5")

_SECRET_NAMES = frozenset(p.lower().encode("ascii") for p in SECRET_PARAMS)
_SEPARATOR = re.compile(rb"([&;])")
REDACTED = b"REDACTED"


def _isSecret(name: bytes) -> bool:
    """
    Whether a query parameter named C{name} (as sent, still percent-encoded)
    is one the server reads as a secret: the name is decoded exactly as
    twisted.web decodes it into C{request.args} (C{+} is a space, then
    percent-decoding), so C{%74oken} is C{token}.
    """
    if b"%" in name or b"+" in name:
        name = unquote_to_bytes(name.replace(b"+", b" "))
    return name.lower() in _SECRET_NAMES


def _redactItem(item: bytes) -> bytes:
    """
    One C{name=value} item of a query (no C{&} nor C{;} in it), its value
    redacted when the name is a secret one.  When it is not, a C{#} in it
    starts a fragment whose own C{name=value} pieces are looked at the same
    way; a secret's value runs to the end of the item.
    """
    pieces = item.split(b"#")
    for i, piece in enumerate(pieces):
        name, eq, _ = piece.partition(b"=")
        if eq and _isSecret(name):
            return b"#".join(pieces[:i] + [name + b"=" + REDACTED])
    return item


def _redactQuery(query: bytes) -> bytes:
    """
    C{query} with the value of every secret parameter replaced by
    L{REDACTED}.  Parameters are split exactly as C{twisted.web.http.parse_qs}
    splits them (on C{&} and on C{;}; a C{#} is part of a value), so a secret
    the server would read is always found; what follows a C{#} inside another
    parameter (a fragment a client sent) is looked at too.
    """
    parts = _SEPARATOR.split(query)
    for i in range(0, len(parts), 2):
        if b"=" in parts[i]:
            parts[i] = _redactItem(parts[i])
    return b"".join(parts)


def redact_uri(uri: bytes) -> bytes:
    """
    Replace the value of every secret query parameter with C{REDACTED}:
    every parameter of the query (after the first C{?}, as the server splits
    it) whose decoded name is a secret one, in any spelling
    (C{%74oken}, C{TOKEN}), however often repeated, and in a fragment.
    """
    if b"=" not in uri:
        return uri
    path, question, query = uri.partition(b"?")
    if b"#" in path:
        # no query: a fragment sent in the request line
        head, _, fragment = path.partition(b"#")
        path = head + b"#" + _redactQuery(fragment)
    if question:
        query = _redactQuery(query)
    return path + question + query


#: C{twisted.web.http._escape}, looked up once: C{twisted.web.http} is a
#: deprecation proxy, each attribute read through it costs a Python call.
_escape = http._escape

#: Printable ASCII but for C{"} and C{\\}: what L{_escape} returns unchanged.
_PLAIN_BYTES = re.compile(rb'[\x20\x21\x23-\x5b\x5d-\x7e]*').fullmatch
_PLAIN_TEXT = re.compile(r'[\x20\x21\x23-\x5b\x5d-\x7e]*').fullmatch


def _escaped(s: object) -> str:
    """
    L{_escape}, without its C{repr} round trip for the usual plain value.
    """
    if type(s) is bytes:
        if _PLAIN_BYTES(s) is not None:
            return s.decode("ascii")
    elif type(s) is str and _PLAIN_TEXT(s) is not None:
        return s
    escaped: str = _escape(s)
    return escaped


def redacting_log_formatter(timestamp: str, request: Request) -> str:
    """
    The combined log format, with secrets removed from the request line and
    the referrer.
    """
    referrer = request.getHeader(b"referer")
    agent = request.getHeader(b"user-agent")
    uri = redact_uri(request.uri)
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
    in the queue, where it is sent from as it is; it is then sent at once,
    in one send of as much as the socket takes (the connection's send limit
    raised to the body's size), not 128 KiB per reactor iteration.
    """

    _received = 0
    _tooLarge = False

    def write(self, data: bytes) -> None:
        if not self.startedWriting and len(data) >= LARGE_BODY:
            transport = self.channel.transport
            if isinstance(transport, CountedProtocol):
                transport = transport.transport
            if isinstance(transport, FileDescriptor) and not transport.dataBuffer:
                super().write(b"")
                # what the reactor does once the socket is writable; errors
                # (a lost connection) are left for the reactor's own call
                transport.doWrite()
                if (not transport.dataBuffer and not transport._tempDataBuffer
                        and not transport.disconnecting):
                    super().write(data)
                    # The body at once, as much as the socket takes in one
                    # send, rather than SEND_LIMIT (128 KiB) a reactor
                    # iteration: the rest waits for the socket as usual.
                    if transport.SEND_LIMIT < len(data):
                        transport.SEND_LIMIT = len(data)
                    transport.doWrite()
                    return
        super().write(data)

    def _cap(self) -> int:
        # Site.buildProtocol sets the channel's site; HTTPChannel does not
        # declare it.
        cap: int = getattr(getattr(self.channel, "site"), "maxBodySize", 1 << 20)
        return cap

    def gotLength(self, length: Optional[int]) -> None:
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


#: Seconds a client has to send a request's line and headers (from the
#: connection, or from the first byte of a later request on it).
REQUEST_TIMEOUT = 20.0

#: Bytes per second a request body must average: each body byte buys
#: C{1 / BODY_MIN_RATE} seconds more, up to L{REQUEST_TIMEOUT} ahead.
BODY_MIN_RATE = 1024.0

_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                     b"Content-Length: 0\r\n\r\n")


class DeadlineChannel(http.HTTPChannel):
    """
    An HTTP/1.1 channel with a deadline for receiving each request.

    twisted.web's idle timeout restarts on every byte, so a client sending
    one header byte now and then (slowloris) holds its connection for ever.
    Here a request's line and headers must arrive within C{requestTimeout}
    seconds of the connection (for its first request) or of the request's
    first byte (for the next ones on a kept-alive connection); its body must
    then arrive at C{bodyMinRate} bytes per second on average, with at most
    C{requestTimeout} seconds of credit.  A client that misses the deadline
    is answered 408 and disconnected.  Only receiving is timed: once the
    request is complete the deadline stops, so a long response (an LL-HLS
    blocking reload, an MP4 download, a WebSocket) is not cut; the idle
    timeout between requests is twisted.web's.
    """

    requestTimeout = REQUEST_TIMEOUT
    bodyMinRate = BODY_MIN_RATE
    #: when the request being received must be complete; None when none is
    _deadlineAt: Optional[float] = None
    #: the timer that checks C{_deadlineAt}
    _deadlineCall: Optional[IDelayedCall] = None
    _inBody = False
    #: timed out: what the client still sends is ignored
    _timedOutAlready = False
    #: the clock of C{callLater} (the site's reactor)
    clock: Optional[IReactorTime] = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._startDeadline()

    def _now(self) -> float:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = cast(IReactorTime, reactor)
        return float(self.clock.seconds())

    def _startDeadline(self) -> None:
        self._inBody = False
        if self.requestTimeout:
            self._deadlineAt = self._now() + self.requestTimeout
            self._schedule(self.requestTimeout)

    def _schedule(self, delay: float) -> None:
        if self._deadlineCall is None or not self._deadlineCall.active():
            self._deadlineCall = self.callLater(delay, self._checkDeadline)

    def _stopDeadline(self) -> None:
        self._deadlineAt = None
        self._inBody = False
        if self._deadlineCall is not None and self._deadlineCall.active():
            self._deadlineCall.cancel()
        self._deadlineCall = None

    def _checkDeadline(self) -> None:
        self._deadlineCall = None
        if self._deadlineAt is None:
            return
        left = self._deadlineAt - self._now()
        if left > 0:
            # the body bought more time since this call was scheduled
            self._schedule(left)
            return
        self._timedOut()

    def _timedOut(self) -> None:
        phase = "body_timeout" if self._inBody else "request_timeout"
        self._deadlineAt = None
        self._timedOutAlready = True
        metrics = getattr(getattr(self, "site", None), "metrics", None)
        if metrics is not None:
            metrics.refusals.labels("http", "request", phase).inc()
        if self.transport is not None:
            self.transport.write(_TIMEOUT_RESPONSE)
        # as twisted.web's idle timeout does, but without a log line per
        # client (a flood of them is counted, not logged): close, and abort
        # if the client does not read what is left
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._timedOutAlready:
            return
        if self._deadlineAt is None:
            if not self._handlingRequest:
                self._startDeadline()
        elif self._inBody:
            now = self._now()
            self._deadlineAt = min(self._deadlineAt + len(data) / self.bodyMinRate,
                                   now + self.requestTimeout)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self.length != 0 and self._deadlineAt is not None:
            # the body's own allowance starts now
            self._inBody = True
            self._deadlineAt = self._now() + self.requestTimeout

    def allContentReceived(self) -> None:
        self._stopDeadline()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopDeadline()
        super().connectionLost(reason)


class TokengateSite(Site):
    """
    The site: L{CappedRequest}s over L{DeadlineChannel}s, logged by
    L{redacting_log_formatter}: to the server's log (through the twistd log
    observer, one event per request), or straight to a file of their own,
    appended a line at a time (about a fifth less CPU per small request),
    or not at all.

    @ivar metrics: where refusals are counted (None: not counted).
    """

    requestFactory = CappedRequest
    # HTTP/1.1 only, without the generic channel that negotiates HTTP/2.
    protocol = DeadlineChannel  # type: ignore[assignment]  # Site declares the generic channel

    def __init__(self, resource: IResource, maxBodySize: int = 1 << 20,
                 metrics: Optional[Metrics] = None, requestTimeout: float = REQUEST_TIMEOUT,
                 accessLog: Optional[str] = None, **kw: Any) -> None:
        """
        @param accessLog: the access log: a file path, L{ACCESS_LOG_OFF}, or
            None for the server's log.
        """
        kw.setdefault("logFormatter", redacting_log_formatter)
        if accessLog is not None and accessLog != ACCESS_LOG_OFF:
            kw.setdefault("logPath", accessLog)
        self._accessLogOff = accessLog == ACCESS_LOG_OFF
        super().__init__(resource, **kw)
        self.maxBodySize = maxBodySize
        self.metrics = metrics
        self.requestTimeout = requestTimeout

    def startFactory(self) -> None:
        super().startFactory()
        if self._accessLogOff:
            self._logFile = None

    def buildProtocol(  # type: ignore[override]  # a DeadlineChannel (see protocol)
            self, addr: Optional[IAddress]) -> Optional[DeadlineChannel]:
        channel = cast(Optional[DeadlineChannel], super().buildProtocol(addr))
        if channel is not None:
            channel.requestTimeout = self.requestTimeout
            channel.clock = self.reactor
        return channel
