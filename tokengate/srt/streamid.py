# -*- test-case-name: tests.test_srt_connection,tests.interop.test_srt_connection -*-
"""
What an SRT caller's stream id asks for, sans-IO: the two forms Ant Media
and SRT callers use (C{App/StreamId,token=T} and the SRT access-control form
C{#!::r=App/StreamId,m=publish,token=T}) parsed into a L{StreamRequest}, or
refused with L{BadStreamId} (rejected with C{SRT_REJX_BAD_REQUEST}, 1400).

The application and stream names follow the grammar every protocol shares
(L{tokengate.access.names}).
"""

from __future__ import annotations

from typing import Optional
from urllib.parse import unquote

from attrs import field, frozen

from tokengate.access.names import isValidAppName, isValidStreamId
from tokengate.srt.errors import REJX_BAD_REQUEST, SRTProtocolError
from tokengate.srt.packets import MAX_STREAM_ID

__all__ = [
    "MODE_PUBLISH",
    "MODE_REQUEST",
    "BadStreamId",
    "StreamRequest",
    "parse_stream_id",
]

MODE_PUBLISH = "publish"
MODE_REQUEST = "request"
_MODES = frozenset({MODE_PUBLISH, MODE_REQUEST})
_ACCESS_CONTROL_PREFIX = "#!::"


class BadStreamId(SRTProtocolError):
    """The stream id is missing or malformed; reject with C{code} (1400)."""

    code = REJX_BAD_REQUEST


@frozen
class StreamRequest:
    """
    What a caller's stream id asks for.  C{mode} is C{"publish"} or
    C{"request"} (play); C{token}, C{subscriberId} and C{subscriberCode}
    are None when not given (or empty); C{extra} holds the other keys
    (C{s}, ...), percent-decoded, in the order sent.
    """

    app: str
    stream_id: str
    token: Optional[str] = field(repr=False)
    mode: str = MODE_PUBLISH
    extra: dict[str, str] = field(factory=dict, hash=False, repr=False)
    subscriberId: Optional[str] = None
    subscriberCode: Optional[str] = field(default=None, repr=False)


def _pct(value: str, what: str) -> str:
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError as e:
        raise BadStreamId(f"{what} is not UTF-8 once percent-decoded") from e


def _resource(value: str) -> tuple[str, str]:
    app, sep, stream = value.partition("/")
    if not sep:
        raise BadStreamId("the stream id needs App/StreamId")
    app, stream = _pct(app, "application"), _pct(stream, "stream id")
    if not app or not stream or "/" in app or "/" in stream:
        raise BadStreamId("the stream id needs App/StreamId")
    # The grammar every protocol shares, on the decoded names.
    if not isValidAppName(app):
        raise BadStreamId("the application name is not a valid one")
    if not isValidStreamId(stream):
        raise BadStreamId("the stream id is not a valid one")
    return app, stream


def parse_stream_id(raw: str) -> StreamRequest:
    """
    Parse a caller's stream id.  Two forms:

    - the reference form C{App/StreamId,token=T[,subscriberId=S,
      subscriberCode=C]}, mode publish;
    - the SRT access-control form
      C{#!::r=App/StreamId,m=publish,token=T[,subscriberId=S,subscriberCode=C]}:
      C{r} the resource, C{m} the mode (C{publish} or C{request},
      default C{request} as the SRT access-control specification says),
      C{u} (user) ignored.

    Ant Media's public source has no SRT form for a TOTP subscriber: both
    forms take C{subscriberId} and C{subscriberCode} as keys, like C{token}.

    In both, C{token} or C{t} is the token (C{token} wins when both are
    there; note that the SRT specification uses C{t} for a resource type,
    here it is a token).  Values are percent-decoded (ffmpeg passes streamid
    through undecoded).  Duplicate keys, keys without C{=}, an unknown mode
    or more than 512 bytes raise L{BadStreamId}.
    """
    if not isinstance(raw, str):
        raise BadStreamId("the stream id must be a str")
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_STREAM_ID:
        raise BadStreamId(f"stream id longer than {MAX_STREAM_ID} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise BadStreamId("control characters in the stream id")
    access_control = raw.startswith(_ACCESS_CONTROL_PREFIX)
    if access_control:
        items = raw[len(_ACCESS_CONTROL_PREFIX) :].split(",")
        resource: Optional[str] = None
    else:
        items = raw.split(",")
        resource = items.pop(0)
        if not resource:
            raise BadStreamId("empty stream id")
    keys: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadStreamId(f"{item!r} is not key=value")
        if key in keys:
            raise BadStreamId(f"duplicate key {key!r}")
        keys[key] = value
    if access_control:
        resource = keys.pop("r", None)
    if resource is None:
        raise BadStreamId("no r= resource in the stream id")
    app, stream = _resource(resource)
    mode = keys.pop("m", MODE_REQUEST if access_control else MODE_PUBLISH)
    if mode not in _MODES:
        raise BadStreamId(f"unsupported mode {mode!r}")
    token = keys.pop("token", None)
    if token is None:
        token = keys.pop("t", None)
    if token is not None:
        token = _pct(token, "token")
        if not token:
            token = None
    keys.pop("u", None)
    extra = {key: _pct(value, key) for key, value in keys.items()}
    subscriberId = extra.pop("subscriberId", None) or None
    subscriberCode = extra.pop("subscriberCode", None) or None
    return StreamRequest(app, stream, token, mode, extra, subscriberId, subscriberCode)
