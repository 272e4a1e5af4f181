"""
Run real client processes (ffmpeg, srt-live-transmit, ...) from tests on the
running reactor, each bounded in time.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from attrs import define
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol


@define
class Result:
    code: Optional[int]
    signal: Optional[int]
    out: bytes
    err: bytes
    timedOut: bool

    @property
    def stderr(self) -> str:
        return self.err.decode("utf-8", "replace")


class _Collector(ProcessProtocol):
    def __init__(self, done: Deferred, timeout: float) -> None:
        self.done = done
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.timedOut = False
        self.timeout = timeout
        self._timer: Any = None

    def connectionMade(self) -> None:
        self._timer = reactor.callLater(self.timeout, self._kill)

    def _kill(self) -> None:
        self.timedOut = True
        try:
            self.transport.signalProcess("KILL")
        except Exception:
            pass

    def interrupt(self) -> None:
        """
        Ask the process to stop (SIGINT: ffmpeg finishes its output).
        """
        try:
            self.transport.signalProcess("INT")
        except Exception:
            pass

    def outReceived(self, data: bytes) -> None:
        if sum(map(len, self.out)) < 8 << 20:
            self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        if sum(map(len, self.err)) < 8 << 20:
            self.err.append(data)

    def processEnded(self, reason: Any) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        v = reason.value
        self.done.callback(Result(getattr(v, "exitCode", None), getattr(v, "signal", None),
                                  b"".join(self.out), b"".join(self.err), self.timedOut))


class Running:
    def __init__(self, proto: _Collector, done: Deferred) -> None:
        self.proto = proto
        self.done = done

    def interrupt(self) -> None:
        self.proto.interrupt()

    def kill(self) -> None:
        self.proto._kill()

    def stderrSoFar(self) -> str:
        return b"".join(self.proto.err).decode("utf-8", "replace")


def start(argv: Sequence[str], timeout: float = 60.0, env: Optional[dict] = None) -> Running:
    """
    Start a process; C{.done} fires with a L{Result}.  It is killed after
    C{timeout} seconds whatever happens.
    """
    done: Deferred = Deferred()
    proto = _Collector(done, timeout)
    reactor.spawnProcess(proto, argv[0], list(argv), env=env if env is not None else dict(os.environ))
    return Running(proto, done)


def run(argv: Sequence[str], timeout: float = 60.0) -> "Deferred[Result]":
    return start(argv, timeout).done


class ClientsMixin:
    """
    For interop tests: real client processes started by the test are killed
    and awaited at cleanup, then the server's live streams are ended; tokens
    are minted straight into the server's store.

    The test sets C{self.server} and calls L{startClients} in C{setUp}.
    """

    tokenType = "publish"

    def startClients(self) -> None:
        self.running: list[Running] = []
        self.addCleanup(self._killClients)

    def start(self, argv: Sequence[str], timeout: float = 60.0,
              env: Optional[dict] = None) -> Running:
        r = start(argv, timeout, env)
        self.running.append(r)
        return r

    async def _killClients(self) -> None:
        from twisted.internet.task import deferLater

        for r in self.running:
            r.kill()
        for r in self.running:
            await r.done
        # let every connection close
        for stream in self.server.hub.liveStreams():
            stream.end()
        await deferLater(reactor, 0.2)

    async def waitFor(self, condition: Any, timeout: float, what: Any,
                      interval: float = 0.2) -> None:
        """
        Poll C{condition()} every C{interval} seconds until it is true; fail
        the test after C{timeout} seconds, saying what it waited for
        (C{what}, or C{what()} when it is callable).
        """
        import time

        from twisted.internet.task import deferLater

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            await deferLater(reactor, interval)
        self.fail("timed out waiting for " + (what() if callable(what) else what))

    def mint(self, streamId: str = "s1", type: Optional[str] = None,
             expire: Optional[int] = None, app: str = "LiveApp") -> str:
        import time

        from tokengate.tokens import StoredToken, new_token

        token = new_token(streamId, type or self.tokenType, expire or int(time.time()) + 600)
        self.server.store.add(StoredToken.fromToken(app, token))
        return token.tokenId
