"""
Hostile-client regression tests for recordings (issue 10, finding 12).

A publisher that sends very many tiny frames made finishing or recovering
its MP4 recording take memory in proportion to the frame count (1.5 million
frames: +542 MB to finalize, 636 MB at start-up recovery, repeated at every
start until it succeeded).  Here a real C{twistd tokengate} process
(L{tests.service.TokengateProcess}) recovers such a recording at start-up,
and its peak resident memory (C{VmHWM} in C{/proc/PID/status}) is compared
with that of the same server starting without one; and a recording whose
recovery always fails is tried a bounded number of times, then set aside.
"""

from __future__ import annotations

import os
import time
import unittest
from typing import Callable

from twisted.trial.unittest import TestCase

from tests.service import TokengateProcess
from tests.test_media_recorder import LONG_SAMPLES, MEMORY_BOUND, synthetic_recording
from tokengate.media.recorder import MAX_RECOVERY_ATTEMPTS, OUT_TMP

#: How long a server may take to recover the long recording (about 10 s on
#: an idle machine; CI shares two cores).
RECOVERY_WAIT = 300.0
#: Start-up noise between two server processes (imports, caches).
SLACK = 16 << 20


def peak_memory(pid: int) -> int:
    """A process's peak resident memory, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class StartupRecoveryTests(TestCase):
    """What a server does at start-up with recordings cut short."""

    timeout = 900

    def setUp(self) -> None:
        if not os.path.exists("/proc/self/status"):
            raise unittest.SkipTest("needs /proc to measure memory")

    def server(self, dataDir: str) -> TokengateProcess:
        process = TokengateProcess(dataDir)
        self.addCleanup(process.stop)
        return process.start(timeout=60)

    def test_long_recording_memory(self) -> None:
        """
        Recovering a recording of 1.5 million tiny frames at start-up adds
        less than L{MEMORY_BOUND} (plus start-up noise) to the server's peak
        memory, and logs no traceback.
        """
        empty = self.server(os.path.abspath(self.mktemp()))
        time.sleep(2)
        assert empty.proc is not None
        baseline = peak_memory(empty.proc.pid)
        empty.stop()

        dataDir = os.path.abspath(self.mktemp())
        live = os.path.join(dataDir, "streams", "LiveApp")
        recdir, _, _ = synthetic_recording(live, "long", LONG_SAMPLES)
        target = os.path.join(live, "long.mp4")
        server = self.server(dataDir)
        wait_for(lambda: "recovered recording" in server.logText(), RECOVERY_WAIT,
                 "the recovery")
        assert server.proc is not None
        peak = peak_memory(server.proc.pid)
        self.assertEqual(os.listdir(live), ["long.mp4"])
        self.assertGreater(os.path.getsize(target), LONG_SAMPLES * 8)
        self.assertLess(peak - baseline, MEMORY_BOUND + SLACK,
                        f"peak {peak >> 20} MiB, {baseline >> 20} MiB without the recording")
        self.assertNotIn("Traceback", server.logText())
        self.assertFalse(os.path.exists(recdir))

    def test_failing_recovery_bounded(self) -> None:
        """
        A recording whose recovery fails at every start (its MP4 cannot be
        written) is tried L{MAX_RECOVERY_ATTEMPTS} times, one start each;
        the next start sets it aside as C{.failed} with one error, and the
        starts after that do not mention it.
        """
        dataDir = os.path.abspath(self.mktemp())
        live = os.path.join(dataDir, "streams", "LiveApp")
        recdir, _, _ = synthetic_recording(live, "stuck", 1000)
        os.mkdir(os.path.join(recdir, OUT_TMP))  # where the MP4 would be written
        logs = []
        for start in range(MAX_RECOVERY_ATTEMPTS + 2):
            server = self.server(dataDir)
            if start < MAX_RECOVERY_ATTEMPTS:
                wait_for(lambda: "kept for recovery" in server.logText(), 60, "the attempt")
            elif start == MAX_RECOVERY_ATTEMPTS:
                wait_for(lambda: "not tried again" in server.logText(), 60, "the give-up")
            else:
                time.sleep(2)
            server.stop()
            logs.append(server.logText())
            os.unlink(server.log)
        for start, text in enumerate(logs[:MAX_RECOVERY_ATTEMPTS], 1):
            self.assertIn(f"attempt {start} of {MAX_RECOVERY_ATTEMPTS}", text)
            self.assertEqual(text.count("kept for recovery"), 1)
        [line] = [x for x in logs[MAX_RECOVERY_ATTEMPTS].splitlines() if "stuck" in x]
        self.assertIn("stuck.1000.failed", line)
        self.assertNotIn("stuck", logs[-1])
        self.assertEqual(sorted(os.listdir(live)), ["stuck.1000.failed"])
        for text in logs:
            self.assertNotIn("Traceback", text)
