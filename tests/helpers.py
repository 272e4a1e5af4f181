"""
Shared test helpers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Callable, Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest
from twisted.web.resource import IResource, Resource

NOW = 1_800_000_000


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0,
                     interval: float = 0.02) -> None:
    """
    Wait (on the real reactor) until C{predicate()} is true.

    @raise AssertionError: when it is not within C{timeout} seconds.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("not true within {}s".format(timeout))
        await deferLater(reactor, interval, lambda: None)


def require(binary: str) -> str:
    """
    The path of a real client binary; skip (naming it) when it is missing.
    CI sets TOKENGATE_REQUIRE_CLIENTS=1, which turns the skip into a failure.
    """
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("TOKENGATE_REQUIRE_CLIENTS"):
            raise AssertionError("{} is required but not installed".format(binary))
        raise SkipTest("{} not installed".format(binary))
    return path


def clock_at(now: float = NOW) -> Clock:
    clock = Clock()
    clock.advance(now)
    return clock


class FromPeer(Resource):
    """
    Serve C{inner} as if every request came from C{host}.
    """

    isLeaf = True

    def __init__(self, inner: IResource, host: str) -> None:
        super().__init__()
        self._inner = inner
        self._host = host

    def render(self, request: Any) -> Any:
        cls = IPv6Address if ":" in self._host else IPv4Address
        request.client = cls("TCP", self._host, 40000)
        return self._inner.render(request)


async def json_body(response: Any) -> Any:
    return json.loads(await response.content())


def http_client(testcase: Any, source: Optional[str] = None) -> Any:
    """
    A treq client for real loopback requests whose connections are closed
    when the test ends (trial checks for a clean reactor).

    @param source: the local address to connect from (another loopback
        address, e.g. C{"127.0.0.2"}, is another client to the server).
    """
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    testcase.addCleanup(pool.closeCachedConnections)
    agent = None
    if source is not None:
        agent = Agent(reactor, pool=pool, bindAddress=(source, 0))
    return _Client(pool, agent)


class _Client:
    def __init__(self, pool: Any, agent: Any = None) -> None:
        self._pool = pool
        self._agent = agent

    def __getattr__(self, method: str) -> Any:
        import treq

        f = getattr(treq, method)

        def call(*args: Any, **kw: Any) -> Any:
            if self._agent is not None:
                kw.setdefault("agent", self._agent)
            else:
                kw.setdefault("pool", self._pool)
            return f(*args, **kw)

        return call
