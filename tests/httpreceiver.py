"""
A real HTTP server on 127.0.0.1 for tests of outgoing requests (the
authorization webhook, the JWKS key source): each path answers as the test
says, every request is recorded, and stopping it closes every connection.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import attrs
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

reactor: Any = _reactor

#: an answer: (status, headers, body), or a callable that takes the request
#: and returns bytes or NOT_DONE_YET
Answer = Union[tuple[int, dict[str, str], bytes], Callable[[Request], Any]]


@attrs.frozen
class Received:
    method: str
    path: str
    headers: dict[str, list[str]]
    body: bytes


class _Resource(Resource):
    isLeaf = True

    def __init__(self, receiver: "Receiver") -> None:
        super().__init__()
        self._receiver = receiver

    def render(self, request: Request) -> Any:
        assert request.method is not None and request.path is not None
        path = request.path.decode("ascii")
        assert request.content is not None
        self._receiver.received.append(Received(
            request.method.decode("ascii"), path,
            {k.decode("ascii").lower(): [v.decode("latin-1") for v in vs]
             for k, vs in request.requestHeaders.getAllRawHeaders()},
            request.content.read()))
        answer = self._receiver.answers.get(path, (404, {}, b"no such path"))
        if callable(answer):
            return answer(request)
        status, headers, body = answer
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


def hang(request: Request) -> Any:
    """
    An answer that never comes (until the connection is closed).
    """
    request.notifyFinish().addErrback(lambda _: None)
    return NOT_DONE_YET


def hangInBody(request: Request) -> Any:
    """
    A 200 whose headers and first bytes come, and the rest never.
    """
    request.notifyFinish().addErrback(lambda _: None)
    request.write(b"partial")
    return NOT_DONE_YET


def chunked(size: int) -> Callable[[Request], Any]:
    """
    A 200 answer of C{size} bytes with no Content-Length (chunked).
    """
    def answer(request: Request) -> Any:
        request.notifyFinish().addErrback(lambda _: None)
        for _ in range(size // 4096):
            request.write(b"x" * 4096)
        request.finish()
        return NOT_DONE_YET
    return answer


class Receiver:
    """
    Start with L{start}; the test's cleanup stops it.
    """

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.received: list[Received] = []
        self._factory = WrappingFactory(Site(_Resource(self)))
        self._port: Optional[Any] = None

    def start(self, testCase: Any) -> "Receiver":
        self._port = reactor.listenTCP(0, self._factory, interface="127.0.0.1")
        testCase.addCleanup(self.stop)
        return self

    def url(self, path: str) -> str:
        assert self._port is not None
        return "http://127.0.0.1:{}{}".format(self._port.getHost().port, path)

    def connections(self) -> int:
        """
        How many connections the server has open.
        """
        return len(self._factory.protocols)

    async def stop(self) -> None:
        if self._port is not None:
            await self._port.stopListening()
            self._port = None
        for protocol in list(self._factory.protocols):
            protocol.transport.abortConnection()
        # bounded: every connection is closed within a few iterations
        for _ in range(200):
            if not self._factory.protocols:
                break
            await deferLater(reactor, 0.01, lambda: None)
        # and the client side of each has been through its connectionLost
        await deferLater(reactor, 0.01, lambda: None)


def closedPortURL(path: str = "/") -> "Deferred[str]":
    """
    The URL of a port nobody listens on (listened on, then closed).
    """
    port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    number = port.getHost().port
    d: Deferred[Any] = Deferred.fromCoroutine(_stop(port))
    return d.addCallback(lambda _: "http://127.0.0.1:{}{}".format(number, path))


async def _stop(port: Any) -> None:
    await port.stopListening()
