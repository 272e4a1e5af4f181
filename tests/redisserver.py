"""
A throwaway redis-server for tests.

L{start_redis} starts one on a free loopback port, in a temporary directory,
with persistence off, and registers its shutdown as a cleanup of the test.
L{RedisServer} gives tests that need it control over the process: stop it,
start it again on the same port, freeze it (SIGSTOP) and thaw it.

Every wait is bounded.  The server is also killed when this process exits
(C{atexit}) and, on Linux, when it dies without running any cleanup
(C{PR_SET_PDEATHSIG}), so no redis-server outlives a test run.

When C{redis-server} is not installed the test is skipped with
C{SkipTest("redis-server not installed")} (L{tests.helpers.require}); CI
installs it, and sets C{TOKENGATE_REQUIRE_CLIENTS} so that it would fail
instead.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional, Sequence

#: Seconds to wait for redis-server to answer PING after starting it.
START_TIMEOUT = 10.0
#: Seconds to wait for it to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0

_live: set["RedisServer"] = set()


def redis_server_path() -> str:
    """
    The redis-server executable.  When it is missing, raise
    C{SkipTest("redis-server not installed")}, or fail when
    C{TOKENGATE_REQUIRE_CLIENTS} is set (as in CI).
    """
    from .helpers import require

    return require("redis-server")


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pdeathsig():
    """
    A preexec_fn that makes the child get SIGKILL when this process dies,
    even by SIGKILL, when no cleanup gets to run (Linux only; else None).
    libc is loaded here, before forking: the child only makes the call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    PR_SET_PDEATHSIG = 1
    sig = int(signal.SIGKILL)

    def preexec() -> None:  # pragma: no cover (runs in the child)
        prctl(PR_SET_PDEATHSIG, sig)

    return preexec


_PREEXEC = _pdeathsig()


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """
    Whether a Redis server answers PING at host:port (blocking, bounded).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """
    One redis-server process on 127.0.0.1, restartable on the same port.
    """

    host = "127.0.0.1"

    def __init__(
        self, directory: str, port: Optional[int] = None, extra_args: Sequence[str] = ()
    ) -> None:
        """
        @param extra_args: more redis-server options, e.g. for TLS.
        """
        self.executable = redis_server_path()
        self.extra_args = list(extra_args)
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._starts = 0

    @property
    def url(self) -> str:
        return "redis://{}:{}/0".format(self.host, self.port)

    def start(self) -> None:
        """
        Start the server and wait until it answers PING.

        @raise RuntimeError: if it does not within L{START_TIMEOUT}.
        """
        if self.process is not None:
            raise RuntimeError("redis-server is already running")
        self._starts += 1
        log = os.path.join(self.directory, "redis-{}.log".format(self._starts))
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", self.directory,
            "--daemonize", "no",
            "--logfile", log,
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
            preexec_fn=_PREEXEC,
        )
        _live.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if ping(self.host, self.port):
                return
            time.sleep(0.02)
        code = self.process.poll()
        self.stop()
        try:
            with open(log, encoding="utf-8", errors="replace") as f:
                tail = f.read()[-2000:]
        except OSError:
            tail = ""
        raise RuntimeError(
            "redis-server on port {} did not start (exit code {}):\n{}".format(
                self.port, code, tail
            )
        )

    def stop(self) -> None:
        """
        Stop the server (SIGTERM, then SIGKILL), waiting a bounded time.
        Harmless when it is not running.
        """
        process, self.process = self.process, None
        _live.discard(self)
        if process is None or process.poll() is not None:
            return
        try:
            process.send_signal(signal.SIGCONT)  # it may be frozen
            process.terminate()
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
        except OSError:
            pass

    def freeze(self) -> None:
        """
        SIGSTOP the server: connections stay open, nothing is answered.
        """
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """
        SIGCONT the server; harmless when it is not running.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        server.stop()


def start_redis_server(testcase, extra_args: Sequence[str] = ()) -> RedisServer:
    """
    Start a L{RedisServer} for C{testcase}, stopped in its cleanup.
    """
    server = RedisServer(os.path.abspath(testcase.mktemp()), extra_args=extra_args)
    for attempt in range(3):
        try:
            server.start()
            break
        except RuntimeError:
            # most likely somebody took the port in between: try another
            if attempt == 2:
                raise
            server.port = free_port()
    testcase.addCleanup(server.stop)
    return server


def start_redis(testcase) -> tuple[str, int]:
    """
    Start a redis-server for C{testcase} and return its C{(host, port)}.

    It listens on 127.0.0.1 only, keeps nothing on disk and is stopped in
    the test's cleanup.  Raises L{SkipTest} when redis-server is missing.
    """
    server = start_redis_server(testcase)
    return server.host, server.port
