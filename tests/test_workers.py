"""
L{tokengate.workers}: the supervisor of C{--workers N} in memory (a clock
and recorded processes), its helpers, and the options of workers.  The
real processes are in L{tests.interop.test_workers}.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tokengate import workers
from tokengate.tap import Options
from tokengate.workers import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    GRACE,
    KILL_WAIT,
    LINE_LIMIT,
    READY_ENV,
    READY_FD,
    SECRET_ENV,
    STABLE,
    Supervisor,
    _Lines,
    internalListener,
    reactorName,
    workerAddress,
    workerCommand,
)

REDIS = "redis://127.0.0.1:6379/0"


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class ProcessClock(Clock):
    """
    A clock that records the processes spawned on it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str],
                     env: Optional[dict[str, str]] = None, path: Optional[str] = None,
                     childFDs: Optional[dict[int, Any]] = None) -> FakeProcess:
        process = FakeProcess(1000 + len(self.spawned))
        self.spawned.append({"protocol": protocol, "args": args, "env": env, "path": path,
                             "childFDs": childFDs, "process": process})
        return process


def ended(code: int = 0, signal: Optional[int] = None) -> Failure:
    if code == 0 and signal is None:
        return Failure(ProcessDone(0))
    return Failure(ProcessTerminated(code if signal is None else None, signal))


class SupervisorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = ProcessClock()
        self.fatal: list[str] = []
        self.supervisor = Supervisor(
            3, lambda index: ["/bin/python", "worker", str(index)], {SECRET_ENV: "x" * 40},
            self.clock, self.fatal.append, path="/srv")

    def spawnedFor(self, index: int) -> list[dict[str, Any]]:
        return [s for s in self.clock.spawned if s["args"][-1] == str(index)]

    def last(self, index: int) -> dict[str, Any]:
        return self.spawnedFor(index)[-1]

    def ready(self, index: int) -> None:
        self.last(index)["protocol"].childDataReceived(READY_FD, b"ready\n")

    def end(self, index: int, reason: Optional[Failure] = None) -> None:
        self.last(index)["protocol"].processEnded(reason or ended(1))

    def test_start(self) -> None:
        """
        Each worker is spawned with its command, the environment (the
        secret, the readiness descriptor), a readiness pipe on fd 3 and
        its output piped.
        """
        self.supervisor.startService()
        self.assertEqual([s["args"] for s in self.clock.spawned],
                         [["/bin/python", "worker", str(i)] for i in range(3)])
        first = self.clock.spawned[0]
        self.assertEqual(first["env"][SECRET_ENV], "x" * 40)
        self.assertEqual(first["env"][READY_ENV], str(READY_FD))
        self.assertEqual(first["childFDs"], {0: "w", 1: "r", 2: "r", READY_FD: "r"})
        self.assertEqual(first["path"], "/srv")
        self.assertEqual(self.supervisor.pids(), [1000, 1001, 1002])

    def test_restartBackoff(self) -> None:
        """
        A worker that ends is started again after a delay that doubles
        while it keeps failing, up to L{BACKOFF_MAX}, and is back to
        L{BACKOFF_FIRST} after it stayed up L{STABLE} seconds.
        """
        self.supervisor.startService()
        for index in range(3):
            self.ready(index)
        delays = []
        for _ in range(8):
            self.end(1)
            self.assertIsNone(self.supervisor.pids()[1])
            delay = self.supervisor.workers[1].delay
            delays.append(delay)
            count = len(self.spawnedFor(1))
            self.clock.advance(delay - 0.01)
            self.assertEqual(len(self.spawnedFor(1)), count)
            self.clock.advance(0.01)
            self.assertEqual(len(self.spawnedFor(1)), count + 1)
        self.assertEqual(delays, [BACKOFF_FIRST, 2, 4, 8, 16, BACKOFF_MAX, BACKOFF_MAX,
                                  BACKOFF_MAX])
        self.assertEqual(self.supervisor.restarts, 8)
        self.assertEqual(self.supervisor.workers[1].restarts, 8)
        # up and ready long enough: the back-off starts over
        self.ready(1)
        self.clock.advance(STABLE)
        self.end(1, ended(signal=9))
        self.assertEqual(self.supervisor.workers[1].delay, BACKOFF_FIRST)
        self.assertEqual(self.fatal, [])

    def test_endedBeforeReady(self) -> None:
        """
        A worker that ends before it was ever ready, at its first start,
        is fatal: said with its last lines, and not restarted.
        """
        self.supervisor.startService()
        protocol = self.last(2)["protocol"]
        protocol.childDataReceived(2, b"tokengate: cannot listen for HTTP: taken\n")
        protocol.processEnded(ended(1))
        self.assertEqual(len(self.fatal), 1)
        self.assertIn("worker 2 ended before it was ready", self.fatal[0])
        self.assertIn("cannot listen for HTTP: taken", self.fatal[0])
        self.clock.advance(BACKOFF_MAX * 2)
        self.assertEqual(len(self.spawnedFor(2)), 1)

    def test_restartedNotReadyIsRestarted(self) -> None:
        """
        After a worker was restarted once, failing again before it is
        ready is restarted (with back-off), not fatal.
        """
        self.supervisor.startService()
        self.ready(0)
        self.end(0)
        self.clock.advance(BACKOFF_FIRST)
        self.end(0)
        self.assertEqual(self.fatal, [])
        self.clock.advance(2)
        self.assertEqual(len(self.spawnedFor(0)), 3)

    def test_stop(self) -> None:
        """
        Stopping sends SIGTERM to every worker; the result fires once all
        ended, none restarted.
        """
        self.supervisor.startService()
        d = self.supervisor.stopService()
        for spawned in self.clock.spawned:
            self.assertEqual(spawned["process"].signals, ["TERM"])
        self.assertNoResult(d)
        for index in range(3):
            self.end(index, ended(signal=15))
        self.successResultOf(d)
        self.clock.advance(GRACE + KILL_WAIT + BACKOFF_MAX)
        self.assertEqual(len(self.clock.spawned), 3)
        self.assertEqual([s["process"].signals for s in self.clock.spawned], [["TERM"]] * 3)

    def test_stopKills(self) -> None:
        """
        A worker still running L{GRACE} seconds after SIGTERM gets SIGKILL;
        the result fires L{KILL_WAIT} seconds later even if it never ends.
        """
        self.supervisor.startService()
        d = self.supervisor.stopService()
        self.end(0, ended(signal=15))
        self.end(1, ended(signal=15))
        self.clock.advance(GRACE)
        self.assertEqual(self.last(2)["process"].signals, ["TERM", "KILL"])
        self.assertEqual(self.last(0)["process"].signals, ["TERM"])
        self.assertNoResult(d)
        self.clock.advance(KILL_WAIT)
        self.successResultOf(d)

    def test_stopCancelsRestart(self) -> None:
        """
        A restart waiting when the supervisor stops does not happen.
        """
        self.supervisor.startService()
        self.ready(1)
        self.end(1)
        d = self.supervisor.stopService()
        self.end(0, ended(signal=15))
        self.end(2, ended(signal=15))
        self.successResultOf(d)
        self.clock.advance(BACKOFF_MAX)
        self.assertEqual(len(self.spawnedFor(1)), 1)

    def test_lines(self) -> None:
        """
        Output is cut into lines, a partial line is kept until its end,
        a line longer than L{LINE_LIMIT} is cut and its rest dropped, and
        what is left is said at the end.
        """
        lines: list[str] = []
        out = _Lines(lines.append)
        out.feed(b"one\ntw")
        out.feed(b"o\n")
        out.feed(b"x" * (LINE_LIMIT + 10))
        out.feed(b"y" * 100 + b"\nthree\nfour")
        out.flush()
        self.assertEqual(lines[:2], ["one", "two"])
        self.assertEqual(lines[2], "x" * LINE_LIMIT + " [line cut]")
        self.assertEqual(lines[3:], ["three", "four"])

    def test_relayed(self) -> None:
        """
        A worker's log lines are logged with its index, without their own
        timestamp; its last lines are kept.
        """
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.supervisor.startService()
        self.last(1)["protocol"].childDataReceived(
            1, b"2026-12-08T00:09:11+0000 [-] Site starting on 5080\n")
        relayed = [e for e in events if e.get("index") == 1 and "line" in e]
        self.assertEqual(len(relayed), 1)
        self.assertEqual(relayed[0]["line"], "[-] Site starting on 5080")
        self.assertEqual(self.supervisor.workers[1].tail, ["[-] Site starting on 5080"])


class HelperTests(SynchronousTestCase):
    def test_workerAddress(self) -> None:
        self.assertEqual(workerAddress("127.0.0.1:5081", 0), "127.0.0.1:5081")
        self.assertEqual(workerAddress("127.0.0.1:5081", 2), "127.0.0.1:5083")
        self.assertEqual(workerAddress("[fd00::2]:6000", 1), "[fd00::2]:6001")

    def test_internalListener(self) -> None:
        self.assertEqual(internalListener("10.0.0.2:5081"), "tcp:5081:interface=10.0.0.2")
        self.assertEqual(internalListener("[fd00::2]:5081"),
                         "tcp6:5081:interface=fd00\\:\\:2")
        self.assertEqual(internalListener("node1.example:5081"), "tcp:5081")

    def test_workerCommand(self) -> None:
        argv = workerCommand("/usr/bin/python3", "asyncio", ["--workers", "2"], 1)
        self.assertEqual(argv[0], "/usr/bin/python3")
        self.assertIn("--pidfile=", argv)
        self.assertEqual(argv[argv.index("--reactor") + 1], "asyncio")
        self.assertEqual(argv[argv.index("tokengate"):],
                         ["tokengate", "--workers", "2", "--worker", "1"])
        self.assertNotIn("--reactor", workerCommand("/p", None, [], 0))

    def test_reactorName(self) -> None:
        from twisted.internet import epollreactor

        self.assertEqual(reactorName(epollreactor.EPollReactor.__new__(
            epollreactor.EPollReactor)), "epoll")
        self.assertIsNone(reactorName(object()))


class WorkerOptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Options:
        o = Options()
        o.parseOptions(list(argv))
        return o

    def test_default(self) -> None:
        o = self.parse()
        self.assertEqual(o["workers"], 1)
        self.assertIsNone(o["worker"])
        self.assertEqual(o["node-address"], "127.0.0.1:5080")

    def test_needsRedis(self) -> None:
        """
        More than one worker without a Redis store is refused, saying so.
        """
        for store in ("", "memory", "sqlite"):
            e = self.assertRaises(usage.UsageError, self.parse, "--workers", "3",
                                  "--store", store)
            self.assertIn("needs a Redis --store", str(e))
        self.assertRaises(usage.UsageError, self.parse, "--workers", "0")
        self.assertRaises(usage.UsageError, self.parse, "--workers", "100000",
                          "--store", REDIS)

    def test_addresses(self) -> None:
        """
        The first worker's node address is the HTTP port + 1 by default (or
        the one given); worker I's is that port + I.
        """
        o = self.parse("--workers", "3", "--store", REDIS, "--http", "tcp:7000")
        self.assertEqual(o["node-address"], "127.0.0.1:7001")
        self.assertEqual(o["worker-base-address"], "127.0.0.1:7001")
        o = self.parse("--workers", "3", "--store", REDIS, "--node-address", "10.0.0.2:9000")
        self.assertEqual(o["worker-base-address"], "10.0.0.2:9000")
        self.assertRaises(usage.UsageError, self.parse, "--workers", "3", "--store", REDIS,
                          "--node-address", "10.0.0.2:65534")
        self.patch(os, "environ", dict(os.environ))
        o = self.parse("--workers", "3", "--store", REDIS, "--node-address", "10.0.0.2:9000",
                       "--worker", "2")
        self.assertEqual(o["node-address"], "10.0.0.2:9002")

    def test_workerSecret(self) -> None:
        """
        A worker takes the cluster secret from the environment, and removes
        it from there; the arguments as given are kept for the workers.
        """
        self.patch(os, "environ", dict(os.environ, **{SECRET_ENV: "k" * 40}))
        o = self.parse("--workers", "2", "--store", REDIS, "--worker", "1")
        self.assertEqual(o["cluster-secret"], "k" * 40)
        self.assertNotIn(SECRET_ENV, os.environ)
        self.assertEqual(o.arguments, ["--workers", "2", "--store", REDIS, "--worker", "1"])

    def test_workerIndex(self) -> None:
        self.patch(os, "environ", dict(os.environ))
        self.assertRaises(usage.UsageError, self.parse, "--worker", "0")
        self.assertRaises(usage.UsageError, self.parse, "--workers", "2", "--store", REDIS,
                          "--worker", "2")


class SuperviseTests(SynchronousTestCase):
    def test_portTaken(self) -> None:
        """
        The supervisor refuses to start when a port is taken (with
        SO_REUSEPORT its workers would otherwise share it with another
        server), naming it.
        """
        import socket

        from tests.service import free_port

        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        o = Options()
        o.parseOptions(["--workers", "2", "--store", REDIS, "--data-dir", self.mktemp(),
                        "--http", "tcp:{}:interface=127.0.0.1".format(free_port()),
                        "--rtmp", "tcp:{}:interface=127.0.0.1".format(port),
                        "--node-address", "127.0.0.1:{}".format(free_port())])
        e = self.assertRaises(SystemExit, workers.supervise, o, ProcessClock())
        self.assertIn(str(port), str(e))
        self.assertIn("in use", str(e))

    def test_supervisor(self) -> None:
        """
        Free ports: the session secret and apps.json are made in the data
        directory, and a supervisor runs the workers with this Python, a
        cluster secret in their environment (not on their command line).
        """
        from tests.service import free_port

        import socket

        dataDir = self.mktemp()
        o = Options()
        o.parseOptions(["--workers", "2", "--store", REDIS, "--data-dir", dataDir,
                        "--http", "tcp:{}:interface=127.0.0.1".format(free_port()),
                        "--rtmp", "tcp:{}:interface=127.0.0.1".format(free_port()),
                        "--srt", "udp:{}:interface=127.0.0.1".format(
                            free_port(socket.SOCK_DGRAM)),
                        "--node-address", "127.0.0.1:{}".format(free_port())])
        clock = ProcessClock()
        top = workers.supervise(o, clock)
        self.assertTrue(os.path.exists(os.path.join(dataDir, "session.key")))
        self.assertTrue(os.path.exists(os.path.join(dataDir, "apps.json")))
        top.startService()
        self.addCleanup(top.stopService)
        self.assertEqual(len(clock.spawned), 2)
        first = clock.spawned[0]
        self.assertEqual(first["args"][0], sys.executable)
        secret = first["env"][SECRET_ENV]
        self.assertGreaterEqual(len(secret), 32)
        self.assertNotIn(secret, " ".join(first["args"]))
        self.assertEqual(first["args"][-2:], ["--worker", "0"])
