# -*- test-case-name: tests.test_access_webhook,tests.test_access_jwks -*-
"""
Bounded outgoing HTTP for the credential mechanisms that ask another
server (the authorization webhook, the JWKS key source).

One request here never blocks the reactor, never takes longer than its
timeout (connection, request and body together: the whole exchange is
cancelled when the time is up, which closes the connection), never reads
more than its body limit, never follows a redirect and never keeps a
connection for later (no pool of idle sockets to leak).  Whatever goes
wrong becomes one L{OutboundError} whose C{reason} is a short metrics
label: the callers fail closed on it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, TypeVar

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from treq.client import HTTPClient

from tokengate.jsonvalue import urlValue

_T = TypeVar("_T")


class OutboundError(Exception):
    """
    An outgoing request that did not give a usable answer.

    @ivar reason: C{timeout}, C{unreachable} (refused, no route, DNS,
        TLS), C{too_large} (body over the limit), C{busy} (too many
        requests in flight), C{error} (anything else).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason if not detail else "{}: {}".format(reason, detail))
        self.reason = reason


class _TooLarge(Exception):
    pass


def checkURL(url: object, name: str = "URL") -> str:
    """
    @return: C{url} when it is an absolute C{http} or C{https} URL with a
        host, printable ASCII, at most L{tokengate.jsonvalue.MAX_URL} characters
        (L{tokengate.jsonvalue.urlValue}, which settings use too).
    @raise ValueError: naming C{name} otherwise (not quoting the URL, which
        may carry a key).
    """
    return urlValue(url, name)


def newHTTPClient(reactor: Any) -> HTTPClient:
    """
    A treq client whose connections close after each response.
    """
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    return HTTPClient(agent)


async def _exchange(client: HTTPClient, method: str, url: str, data: Optional[bytes],
                    headers: Mapping[str, str], maxBody: int) -> tuple[int, bytes]:
    sent = Headers()
    for name, value in headers.items():
        sent.setRawHeaders(name, [value])
    response = await client.request(method, url, data=data, headers=sent, allow_redirects=False)
    body = _Body(maxBody)
    length = response.length
    if isinstance(length, int) and length > maxBody:
        body.tooLarge = True
    response.deliverBody(body)
    return response.code, await body.deferred


class _Body(Protocol):
    """
    A response body read up to a limit.  Over the limit, or when its
    L{Deferred} is cancelled (the timeout), the connection is closed at
    once (treq's C{collect} cannot be cancelled).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tooLarge = False
        self.size = 0
        self.chunks: list[bytes] = []
        self.deferred: Deferred[bytes] = Deferred(self._cancel)

    def connectionMade(self) -> None:
        if self.tooLarge:
            self._stop(_TooLarge())

    def _stop(self, reason: Exception) -> None:
        if self.transport is not None:
            # a response body's transport is also its IPushProducer
            self.transport.stopProducing()  # type: ignore[attr-defined]
        if not self.deferred.called:
            self.deferred.errback(reason)

    def _cancel(self, d: "Deferred[bytes]") -> None:
        if self.transport is not None:
            # a response body's transport is also its IPushProducer
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.deferred.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._stop(_TooLarge())
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.deferred.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.deferred.callback(b"".join(self.chunks))
        else:
            self.deferred.errback(reason)


def _classify(e: Optional[BaseException]) -> OutboundError:
    if isinstance(e, OutboundError):
        return e
    if isinstance(e, (DeferredTimeoutError, CancelledError, neterror.TimeoutError)):
        return OutboundError("timeout")
    if isinstance(e, _TooLarge):
        return OutboundError("too_large")
    if isinstance(e, (ResponseFailed, ResponseNeverReceived)):
        inner = [f.value for f in e.reasons]
        if any(isinstance(v, _TooLarge) for v in inner):
            return OutboundError("too_large")
        if any(isinstance(v, CancelledError) for v in inner):
            # the exchange was cancelled: only the timeout cancels it
            return OutboundError("timeout")
        return OutboundError("unreachable", type(inner[0]).__name__ if inner else "")
    if isinstance(e, (neterror.ConnectError, neterror.DNSLookupError, neterror.ConnectionLost,
                      OSError)):
        return OutboundError("unreachable", type(e).__name__)
    return OutboundError("error", type(e).__name__)


class Outbound:
    """
    Outgoing requests with a timeout, a body limit and a bound on how many
    are in flight at once.

    @param reactor: the reactor (its clock times the requests out).
    @param timeout: seconds for a whole exchange.
    @param maxBody: the most response body bytes read.
    @param maxInFlight: requests at once; one more fails C{busy} at once.
    @param client: the treq client (by default L{newHTTPClient}).
    """

    def __init__(self, reactor: Any, timeout: float, maxBody: int, maxInFlight: int = 64,
                 client: Optional[HTTPClient] = None) -> None:
        if not 0 < timeout <= 60:
            raise ValueError("the timeout must be more than 0 and at most 60 seconds")
        self._reactor = reactor
        self.timeout = timeout
        self.maxBody = maxBody
        self.maxInFlight = maxInFlight
        self.inFlight = 0
        self._client = client if client is not None else newHTTPClient(reactor)

    def request(self, method: str, url: str, data: Optional[bytes] = None,
                headers: Optional[Mapping[str, str]] = None,
                timeout: Optional[float] = None) -> "Deferred[tuple[int, bytes]]":
        """
        One exchange, within C{timeout} seconds (by default the client's).

        @return: a L{Deferred} firing with (status, body) or failing with
            L{OutboundError}; cancelled (closing its connection) when the
            timeout passes.
        """
        if self.inFlight >= self.maxInFlight:
            return fail(OutboundError("busy"))
        self.inFlight += 1
        d = Deferred.fromCoroutine(
            _exchange(self._client, method, url, data, headers or {}, self.maxBody))
        d.addTimeout(self.timeout if timeout is None else timeout, self._reactor)

        def done(result: _T) -> _T:
            self.inFlight -= 1
            return result

        def failed(failure: Failure) -> None:
            raise _classify(failure.value)

        d.addBoth(done)
        d.addErrback(failed)
        return d
