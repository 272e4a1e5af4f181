# -*- test-case-name: tests.test_logsafe -*-
"""
One log-safe rendering of client-supplied strings.

Anything a client sends (an RTMP application name, a WebSocket stream id, an
SRT stream id, a URL) may hold control characters that forge or hide log
lines (CR, LF, ESC sequences, NUL) and may be very long.  L{loggable} renders
such a string escaped and truncated; L{Logger} applies it to every string
field of every event that tokengate logs, so no call site can forget it.
"""

from __future__ import annotations

import re

from twisted.logger import Logger as _TwistedLogger
from twisted.logger import LogLevel

#: the longest rendering of one field, before the truncation marker
MAX_FIELD = 256

# C0 controls, DEL, C1 controls, the Unicode line and paragraph separators and
# the bidirectional overrides and isolates (which reorder what a terminal shows).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\\\\]")


def _escape(match: "re.Match[str]") -> str:
    c = match.group()
    if c == "\\":
        return "\\\\"
    n = ord(c)
    return "\\x{:02x}".format(n) if n < 0x100 else "\\u{:04x}".format(n)


def loggable(value: str, limit: int = MAX_FIELD) -> str:
    """
    Render a client-supplied string for a log line: control characters,
    line separators, bidi controls and backslashes escaped (C{\\x1b},
    C{\\u2028}, C{\\\\}), at most C{limit} characters of the original kept and
    the rest summarized as C{…(+N chars)}.

    @param value: the string as the client sent it.
    @param limit: how many characters of it to keep.
    @return: a single printable line.
    """
    extra = len(value) - limit
    if extra > 0:
        value = value[:limit]
    value = _UNSAFE.sub(_escape, value)
    if extra > 0:
        value += "\u2026(+{} chars)".format(extra)
    return value


def _safeField(value: object) -> object:
    if isinstance(value, str):
        return loggable(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value[: MAX_FIELD + 1])
        return loggable(raw.decode("utf-8", "backslashreplace"), MAX_FIELD) + (
            "\u2026(+{} bytes)".format(len(value) - len(raw)) if len(value) > len(raw) else ""
        )
    return value


class Logger(_TwistedLogger):
    """
    A L{twisted.logger.Logger} whose events carry every string (and bytes)
    field in its L{loggable} rendering.  The format string itself is the
    program's, not a client's, and is left alone; so are non-string fields
    such as failures.  Every tokengate module logs through this class.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        for key, value in kwargs.items():
            if not key.startswith("log_"):
                kwargs[key] = _safeField(value)
        super().emit(level, format, **kwargs)
