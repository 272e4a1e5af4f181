"""
The one error type of L{tokengate.media}.
"""

from __future__ import annotations

__all__ = ["MediaError"]


class MediaError(ValueError):
    """
    Malformed, truncated or unsupported media input.

    Every parser and builder in L{tokengate.media} raises only this for
    bad input, so callers handling untrusted streams need one C{except}.
    """
