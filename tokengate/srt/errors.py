# -*- test-case-name: tests.test_srt_packets -*-
"""
The SRT package's single error type, and the reasons a listener rejects a
caller with (libsrt C{srt.h} C{SRT_REJECT_REASON} and C{access_control.h}).

A reject code goes on the wire as the handshake's request type 1000 + code
(libsrt C{URQFailure}, C{srtcore/handshake.h}): C{SRT_REJX_UNAUTHORIZED}
1401 is 2401, C{SRT_REJ_UNSECURE} 11 is 1011.  They live here, below the
stream id parser and the handshake, because both use them.
"""

from __future__ import annotations

__all__ = [
    "SRTProtocolError",
    "REJ_RESOURCE",
    "REJ_ROGUE",
    "REJ_VERSION",
    "REJ_UNSECURE",
    "REJ_MESSAGEAPI",
    "REJ_CONGESTION",
    "REJ_FILTER",
    "REJ_GROUP",
    "REJX_BAD_REQUEST",
    "REJX_UNAUTHORIZED",
    "REJX_OVERLOAD",
    "REJX_FORBIDDEN",
    "REJX_NOTFOUND",
    "REJX_BAD_MODE",
    "REJX_CONFLICT",
    "REJX_ISE",
    "REJX_DOWN",
]


class SRTProtocolError(Exception):
    """
    The peer sent something malformed or outside our limits, or a value
    given to an encoder does not fit its field.

    Every decoder and encoder in L{tokengate.srt} raises only this (or a
    subclass of it) for bad input, so code handling untrusted datagrams needs
    one C{except}.
    """


REJ_RESOURCE = 3
REJ_ROGUE = 4
REJ_VERSION = 8
REJ_UNSECURE = 11
REJ_MESSAGEAPI = 12
REJ_CONGESTION = 13
REJ_FILTER = 14
REJ_GROUP = 15
REJX_BAD_REQUEST = 1400
REJX_UNAUTHORIZED = 1401
REJX_OVERLOAD = 1402
REJX_FORBIDDEN = 1403
REJX_NOTFOUND = 1404
REJX_BAD_MODE = 1405
REJX_CONFLICT = 1409
REJX_ISE = 1500
REJX_DOWN = 1503
