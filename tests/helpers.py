"""
Shared test helpers.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest
from twisted.web.resource import IResource, Resource

NOW = 1_800_000_000


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


def http_client(testcase: Any) -> Any:
    """
    A treq client for real loopback requests whose connections are closed
    when the test ends (trial checks for a clean reactor).
    """
    from twisted.internet import reactor
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    testcase.addCleanup(pool.closeCachedConnections)
    return _Client(pool)


class _Client:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def __getattr__(self, method: str) -> Any:
        import treq

        f = getattr(treq, method)

        def call(*args: Any, **kw: Any) -> Any:
            kw.setdefault("pool", self._pool)
            return f(*args, **kw)

        return call
