# -*- test-case-name: tests.test_srt_packets -*-
"""
The SRT package's single error type.
"""

from __future__ import annotations

__all__ = ["SRTProtocolError"]


class SRTProtocolError(Exception):
    """
    The peer sent something malformed or outside our limits, or a value
    given to an encoder does not fit its field.

    Every decoder and encoder in :mod:`tokengate.srt` raises only this (or a
    subclass of it) for bad input, so code handling untrusted datagrams needs
    one ``except``.
    """
