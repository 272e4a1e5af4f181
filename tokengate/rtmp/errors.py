# -*- test-case-name: tests.test_rtmp_core -*-
"""
The RTMP package's single error type.

It lives in its own module so that L{tokengate.rtmp.amf0} and
L{tokengate.rtmp.core} can both raise it without importing each other;
L{tokengate.rtmp.core} re-exports it.
"""


class RTMPProtocolError(Exception):
    """
    The peer sent something malformed or outside our limits.

    Raised by L{tokengate.rtmp.amf0.decode_one} and friends and by
    L{tokengate.rtmp.core.RTMPConnection.receive_data}.  After it, the
    connection is dead: drop it.

    @ivar limit: C{True} when the input was well-formed but exceeded one of
        the connection's limits (message size, chunk streams, bytes held),
        C{False} when it was malformed.
    """

    def __init__(self, message: str, *, limit: bool = False) -> None:
        super().__init__(message)
        self.limit = limit
