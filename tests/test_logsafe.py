"""
Tests for L{tokengate.logsafe}: one rendering of client strings in logs.
"""

import ast
import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tokengate.logsafe import MAX_FIELD, Logger, loggable

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tokengate")


class LoggableTests(SynchronousTestCase):
    def test_plain(self) -> None:
        self.assertEqual(loggable("LiveApp/cam-1.x"), "LiveApp/cam-1.x")

    def test_controls(self) -> None:
        self.assertEqual(loggable("a\nb\rc\x1b[31md\x00e\x7f"),
                         "a\\x0ab\\x0dc\\x1b[31md\\x00e\\x7f")

    def test_unicodeSeparatorsAndBidi(self) -> None:
        self.assertEqual(loggable("x\u2028y\u202ez\x85"), "x\\u2028y\\u202ez\\x85")

    def test_backslashEscaped(self) -> None:
        # A client cannot forge an escape sequence that reads as a control.
        self.assertEqual(loggable("\\x0a"), "\\\\x0a")

    def test_truncated(self) -> None:
        out = loggable("a" * 60000)
        self.assertEqual(out, "a" * MAX_FIELD + "\u2026(+{} chars)".format(60000 - MAX_FIELD))

    @given(st.text())
    def test_alwaysOneSafeBoundedLine(self, s: str) -> None:
        out = loggable(s)
        self.assertFalse(any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out))
        self.assertNotIn("\u2028", out)
        self.assertLessEqual(len(out), MAX_FIELD * 6 + 40)


class LoggerTests(SynchronousTestCase):
    def test_fieldsEscapedFormatKept(self) -> None:
        events: list[dict] = []
        log = Logger(observer=events.append)
        log.info("app {app} from {peer} n={n}", app="x\ny" * 100, peer=b"\x1b\xff", n=3)
        (event,) = events
        text = formatEvent(event)
        self.assertNotIn("\n", text)
        self.assertNotIn("\x1b", text)
        self.assertIn("n=3", text)
        self.assertIn("\\x0a", text)
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertLess(len(text), 2 * MAX_FIELD + 80)

    def test_everyModuleLogsThroughIt(self) -> None:
        """
        No tokengate module creates a plain twisted.logger.Logger: every log
        event passes through the escaping one.
        """
        offenders = []
        scanned = []
        for base, _, files in os.walk(ROOT):
            for name in files:
                if not name.endswith(".py") or name == "logsafe.py":
                    continue
                path = os.path.join(base, name)
                scanned.append(os.path.relpath(path, ROOT))
                tree = ast.parse(open(path, encoding="utf-8").read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.ImportFrom) and node.module == "twisted.logger":
                        if any(a.name == "Logger" for a in node.names):
                            offenders.append(path)
        # the walk found the package (modules that log, in subpackages too)
        self.assertIn("tap.py", scanned)
        self.assertIn(os.path.join("rtmp", "protocol.py"), scanned)
        self.assertEqual(offenders, [])
