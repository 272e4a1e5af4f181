# -*- test-case-name: tests.test_workers -*-
"""
Every core: C{twistd tokengate --workers N}.

With C{--workers N} (N > 1) the process twistd starts is a supervisor: it
serves nothing itself, it runs N worker processes (C{twistd -n tokengate
... --worker INDEX}, the same Python, reactor and options), each a node of
one cluster on the C{--store} Redis:

 - every worker opens every listening port (HTTP, HTTPS, RTMP, SRT) with
   C{SO_REUSEPORT} (L{tokengate.reuseport}), so the kernel spreads the
   clients over them;
 - each also listens on an internal HTTP port of its own, its node address
   (L{workerAddress}: the first worker's port plus its index), which the
   other nodes reach it at;
 - they share the cluster secret (the supervisor makes one when none is
   given, and hands it over in the environment, never on a command line),
   the session secret (the data directory's, made by the supervisor before
   any worker starts) and the data directory.

L{Supervisor} relays each worker's log lines prefixed with its index,
restarts a worker that ends (after a back-off that grows while it keeps
failing, each restart counted and logged), stops the workers when it stops
(SIGTERM, then SIGKILL after L{GRACE} seconds), and gives up at start-up
when a worker ends before it was ever ready (a port taken, say): that is a
configuration error, not something a restart mends.

A worker announces that it is ready (its listeners bound) on the file
descriptor named by L{READY_ENV}, and asks the kernel for SIGTERM when its
supervisor dies (L{followSupervisor}).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any, Callable, Optional, Sequence

from attrs import define, field
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from tokengate.logsafe import Logger

#: the most workers one supervisor runs
MAX_WORKERS = 256
#: seconds the supervisor waits for its workers after SIGTERM, then SIGKILL
GRACE = 10.0
#: seconds it waits after SIGKILL before it stops waiting
KILL_WAIT = 5.0
#: the first restart's delay, seconds; doubled at each failure in a row
BACKOFF_FIRST = 1.0
#: the longest delay between restarts, seconds
BACKOFF_MAX = 30.0
#: a worker that stayed up this long since it was ready restarts after
#: L{BACKOFF_FIRST} again
STABLE = 30.0
#: the longest log line relayed from a worker (characters; the rest of the
#: line is dropped, said so)
LINE_LIMIT = 4096
#: the piece of a line one log event carries (the log's field bound)
_PIECE = 240
#: the timestamp twistd starts a worker's line with (the supervisor's log
#: gives its own)
_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ")

#: the environment variable carrying the cluster secret to the workers
SECRET_ENV = "TOKENGATE_CLUSTER_SECRET"
#: the file descriptor on which a worker says it is ready
READY_ENV = "TOKENGATE_WORKER_READY_FD"
#: the supervisor's pid, which a worker checks is still its parent
SUPERVISOR_ENV = "TOKENGATE_SUPERVISOR_PID"
READY_FD = 3


def workerAddress(base: str, index: int) -> str:
    """
    Worker C{index}'s node address: C{base} (C{host:port}, the first
    worker's) with its port plus C{index}.
    """
    host, _, port = base.rpartition(":")
    return "{}:{}".format(host, int(port) + index)


def internalListener(address: str) -> str:
    """
    The endpoint of a worker's internal HTTP listener at its node address
    C{host:port}: on that host when it is an IP address, else on every
    interface.
    """
    import ipaddress

    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "tcp:{}".format(port)
    if ip.version == 6:
        return "tcp6:{}:interface={}".format(port, str(ip).replace(":", "\\:"))
    return "tcp:{}:interface={}".format(port, ip)


def reactorName(reactor: object) -> Optional[str]:
    """
    The twistd C{-r} name of the running C{reactor}, for its workers
    (None: one twistd does not know by name; the workers get the default).
    """
    from twisted.application.reactors import getReactorTypes

    module = type(reactor).__module__
    for installer in getReactorTypes():
        if getattr(installer, "moduleName", None) == module:
            return str(installer.shortName)
    return None


def workerCommand(executable: str, reactor: Optional[str], arguments: Sequence[str],
                  index: int) -> list[str]:
    """
    The command line of worker C{index}: twistd in the foreground, logging
    to its standard output (the supervisor's pipe), without a pid file, on
    the supervisor's reactor, with the supervisor's tokengate C{arguments}.
    """
    return [executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", *(("--reactor", reactor) if reactor else ()),
            "tokengate", *arguments, "--worker", str(index)]


def workerRunning() -> None:
    """
    In a worker, once its reactor runs (its listeners bound): ignore SIGINT
    (a terminal's Ctrl-C reaches the whole process group; the supervisor
    then stops its workers with SIGTERM), and tell the supervisor that this
    worker is ready.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    announceReady()


def announceReady() -> None:
    """
    In a worker: tell the supervisor that this worker listens (once; nothing
    when not started by a supervisor).
    """
    fd = os.environ.pop(READY_ENV, None)
    if fd is None or not fd.isdigit():
        return
    try:
        os.write(int(fd), b"ready\n")
        os.close(int(fd))
    except OSError:
        pass


def followSupervisor() -> None:
    """
    In a worker: have the kernel send SIGTERM when the supervisor dies
    (Linux), and end at once if it already has.
    """
    expected = os.environ.pop(SUPERVISOR_ENV, None)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG,
                                                           int(signal.SIGTERM))
        except (OSError, AttributeError):
            pass
    if expected is not None and expected.isdigit() and os.getppid() != int(expected):
        raise SystemExit("tokengate: this worker's supervisor is gone")


class _Lines:
    """
    One output stream of a worker, cut into lines of at most L{LINE_LIMIT}
    characters.
    """

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._buffer = b""
        self._dropping = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            line, sep, rest = self._buffer.partition(b"\n")
            if not sep:
                break
            self._buffer = rest
            if self._dropping:
                self._dropping = False
                continue
            self._emit(line.decode("utf-8", "replace"))
        if len(self._buffer) > LINE_LIMIT:
            if not self._dropping:
                self._emit(self._buffer[:LINE_LIMIT].decode("utf-8", "replace")
                           + " [line cut]")
            self._dropping = True
            self._buffer = b""

    def flush(self) -> None:
        if self._buffer and not self._dropping:
            self._emit(self._buffer.decode("utf-8", "replace"))
        self._buffer = b""
        self._dropping = False


class WorkerProtocol(ProcessProtocol):
    """
    One worker process as its supervisor sees it: its log lines, its
    readiness, its end.
    """

    def __init__(self, supervisor: "Supervisor", index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self._out = _Lines(lambda line: supervisor.workerLine(index, line))
        self._err = _Lines(lambda line: supervisor.workerLine(index, line))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self._out.feed(data)
        elif childFD == 2:
            self._err.feed(data)
        elif childFD == READY_FD and b"ready" in data:
            self.supervisor.workerReady(self.index)

    def processEnded(self, reason: Failure) -> None:
        self._out.flush()
        self._err.flush()
        self.supervisor.workerEnded(self.index, reason)


@define
class _Worker:
    index: int
    process: Any = None
    pid: Optional[int] = None
    ready: bool = False
    everReady: bool = False
    readyAt: Optional[float] = None
    #: this worker's restarts so far
    restarts: int = 0
    delay: float = 0.0
    pending: Optional[IDelayedCall] = None
    #: the last lines it wrote (said when it fails at start-up)
    tail: list[str] = field(factory=list)


class Supervisor(service.Service):
    """
    Runs C{count} worker processes and keeps them running (see the module's
    docstring).

    @ivar restarts: workers restarted so far, all together.
    """

    _log = Logger()

    def __init__(self, count: int, command: Callable[[int], list[str]],
                 environment: dict[str, str], reactor: Any,
                 onFatal: Callable[[str], None], path: Optional[str] = None) -> None:
        """
        @param count: how many workers.
        @param command: worker index -> its command line (the executable first).
        @param environment: the workers' environment (the cluster secret in
            it); the readiness pipe and the supervisor's pid are added.
        @param reactor: provides C{spawnProcess} and the clock.
        @param onFatal: called once with what went wrong when a worker ends
            before it was ever ready (the caller stops the process, failed).
        @param path: the workers' working directory (None: this one's).
        """
        self.count = count
        self._command = command
        self._environment = dict(environment, **{READY_ENV: str(READY_FD),
                                                 SUPERVISOR_ENV: str(os.getpid())})
        self._reactor = reactor
        self._onFatal = onFatal
        self._path = path
        self.workers = [_Worker(index) for index in range(count)]
        self.restarts = 0
        self.stopping = False
        self.failed = False
        self._allReady = False
        self._stopped: list[Deferred[None]] = []

    def pids(self) -> list[Optional[int]]:
        """The pid of each worker, None while it is not running."""
        return [w.pid for w in self.workers]

    # --- life ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._log.info("starting {count} workers", count=self.count)
        for worker in self.workers:
            self._spawn(worker)

    def _spawn(self, worker: _Worker) -> None:
        worker.pending = None
        if self.stopping:
            return
        argv = self._command(worker.index)
        worker.ready = False
        worker.tail = []
        try:
            worker.process = self._reactor.spawnProcess(
                WorkerProtocol(self, worker.index), argv[0], argv, env=self._environment,
                path=self._path, childFDs={0: "w", 1: "r", 2: "r", READY_FD: "r"})
        except OSError as e:
            worker.process = None
            self._fatal("cannot start worker {}: {}".format(worker.index, e))
            return
        worker.pid = worker.process.pid
        self._log.info("worker {index} started (pid {pid})", index=worker.index,
                       pid=worker.pid)

    def workerLine(self, index: int, line: str) -> None:
        """A log line of worker C{index}: relayed with its index."""
        worker = self.workers[index]
        line = _STAMP.sub("", line)
        worker.tail = (worker.tail + [line])[-5:]
        for start in range(0, max(len(line), 1), _PIECE):
            self._log.info("worker {index}: {line}", index=index,
                           line=line[start:start + _PIECE])

    def workerReady(self, index: int) -> None:
        worker = self.workers[index]
        if worker.ready:
            return
        worker.ready = worker.everReady = True
        worker.readyAt = self._reactor.seconds()
        self._log.info("worker {index} ready", index=index)
        if not self._allReady and all(w.everReady for w in self.workers):
            self._allReady = True
            self._log.info("all {count} workers ready", count=self.count)

    def workerEnded(self, index: int, reason: Failure) -> None:
        worker = self.workers[index]
        wasReady, worker.ready = worker.ready, False
        worker.process = None
        worker.pid = None
        how = ("exited normally" if reason.check(ProcessDone)
               else reason.getErrorMessage())
        if self.stopping or self.failed:
            self._log.info("worker {index} stopped ({how})", index=index, how=how)
            self._checkStopped()
            return
        if not worker.everReady:
            if worker.restarts == 0:
                self._fatal("worker {} ended before it was ready ({}): {}".format(
                    index, how, " | ".join(worker.tail) or "no output"))
                return
        now = self._reactor.seconds()
        if wasReady and worker.readyAt is not None and now - worker.readyAt >= STABLE:
            worker.delay = BACKOFF_FIRST
        else:
            worker.delay = min(max(worker.delay * 2, BACKOFF_FIRST), BACKOFF_MAX)
        worker.restarts += 1
        self.restarts += 1
        self._log.warn("worker {index} ended ({how}); restart {n} in {delay:.0f} s",
                       index=index, how=how, n=worker.restarts, delay=worker.delay)
        worker.pending = self._reactor.callLater(worker.delay, self._spawn, worker)

    def _fatal(self, message: str) -> None:
        if self.failed:
            return
        self.failed = True
        self._log.error("tokengate: {message}; stopping", message=message)
        self._onFatal(message)

    # --- stopping --------------------------------------------------------------

    def _running(self) -> list[_Worker]:
        return [w for w in self.workers if w.process is not None]

    def _signal(self, name: str) -> None:
        for worker in self._running():
            try:
                worker.process.signalProcess(name)
            except OSError:
                pass  # it ended in between: its processEnded comes

    def _checkStopped(self) -> None:
        if self._running():
            return
        waiters, self._stopped = self._stopped, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    def stopService(self) -> "Deferred[None]":
        """
        Stop every worker: SIGTERM, SIGKILL after L{GRACE} seconds; fires
        when all have ended, or L{KILL_WAIT} seconds after the SIGKILL.
        """
        super().stopService()
        self.stopping = True
        for worker in self.workers:
            if worker.pending is not None and worker.pending.active():
                worker.pending.cancel()
            worker.pending = None
        d: Deferred[None] = Deferred()
        self._stopped.append(d)
        running = self._running()
        if running:
            self._log.info("stopping {n} workers", n=len(running))
        self._signal("TERM")
        kill = self._reactor.callLater(GRACE, self._kill)
        giveUp = self._reactor.callLater(GRACE + KILL_WAIT, self._giveUp, d)

        def done(result: None) -> None:
            for call in (kill, giveUp):
                if call.active():
                    call.cancel()

        d.addCallback(done)
        self._checkStopped()
        return d

    def _kill(self) -> None:
        for worker in self._running():
            self._log.warn("worker {index} (pid {pid}) did not stop in {grace:.0f} s: "
                           "killed", index=worker.index, pid=worker.pid, grace=GRACE)
        self._signal("KILL")

    def _giveUp(self, d: "Deferred[None]") -> None:
        if not d.called:
            self._log.error("workers {pids} did not end; leaving them",
                            pids=",".join(str(w.pid) for w in self._running()))
            d.callback(None)


def nodeInfo(metrics: Any, address: str, index: int) -> None:
    """
    In a worker: C{tokengate_worker_info{worker="INDEX",address="HOST:PORT"} 1}
    in its metrics, so that a scrape says which worker answered.
    """
    from prometheus_client import Gauge

    Gauge("tokengate_worker_info", "This worker of a --workers supervisor: its index and "
          "its node address", ["worker", "address"],
          registry=metrics.registry).labels(str(index), address).set(1)


def supervise(options: Any, reactor: Any) -> service.MultiService:
    """
    The service tree of a C{--workers N} supervisor (C{options}: the
    checked L{tokengate.tap.Options}): the session secret made in the data
    directory, the ports checked free, a cluster secret for the workers,
    and the L{Supervisor}.

    @raise SystemExit: with a plain message when the workers cannot run
        (no C{SO_REUSEPORT}, a port in use).
    """
    import secrets

    from tokengate.apps import Applications, SettingsError
    from tokengate.reuseport import checkFree, reusePortSupported
    from tokengate.tap import parse_udp
    from tokengate.web.sessions import load_or_create_secret

    count = int(options["workers"])
    if not reusePortSupported():
        raise SystemExit("tokengate: --workers needs SO_REUSEPORT as Linux has it")
    dataDir = options["data-dir"]
    os.makedirs(dataDir, exist_ok=True)
    if not options["session-secret"]:
        # made once here, read by every worker: playback credentials one
        # worker signs are good on the others
        load_or_create_secret(os.path.join(dataDir, "session.key"))
    try:
        # apps.json (which seeds a Redis holding no applications) made here
        # if missing, not by N workers at once
        Applications(os.path.join(dataDir, "apps.json"))
    except (OSError, SettingsError) as e:
        raise SystemExit("tokengate: {}".format(e))
    base = options["worker-base-address"]
    streams = [options["http"], *(internalListener(workerAddress(base, index))
                                  for index in range(count))]
    for key in ("https", "rtmp"):
        if options[key]:
            streams.append(options[key])
    datagrams = [parse_udp(options["srt"])] if options["srt"] else []
    problem = checkFree(streams, datagrams)
    if problem is not None:
        raise SystemExit("tokengate: the workers cannot listen on {}".format(problem))
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    # never on a command line, where ps shows it
    environment[SECRET_ENV] = options["cluster-secret"] or secrets.token_urlsafe(32)
    arguments = list(options.arguments)
    name = reactorName(reactor)

    def onFatal(message: str) -> None:
        def exitFailed() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)

        reactor.addSystemEventTrigger("after", "shutdown", exitFailed)
        reactor.callLater(0, reactor.stop)

    top = service.MultiService()
    Supervisor(count, lambda index: workerCommand(sys.executable, name, arguments, index),
               environment, reactor, onFatal, path=os.getcwd()).setServiceParent(top)
    return top
