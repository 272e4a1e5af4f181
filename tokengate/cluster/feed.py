# -*- test-case-name: tests.test_cluster_feed -*-
"""
The internal feed between nodes: how an edge pulls a stream from its origin.

The origin serves C{GET /internal/v1/feed/{app}/{streamId}} (see
L{tokengate.cluster.origin}) as an FLV byte stream of its hub's frames, in
the form the hub already holds them (FLV tag bodies, what RTMP carries):
the FLV file header, then one C{onMetaData} script tag for each metadata
change, one video or audio tag for each sequence header and each frame.
Nothing is transcoded or re-parsed on either side: the origin writes the
bodies it has, the edge hands the bodies it reads to its own hub.

Pure code, no I/O:

 - L{feedCredential} / L{checkFeedCredential}: the credential that opens a
   feed, an HMAC-SHA256 of C{feed|app|streamId|node|expiry} under a key
   derived from the cluster secret (short-lived, compared in constant time,
   never logged);
 - L{FeedEncoder}: hub events in, bytes out;
 - L{FeedParser}: bytes in, L{FeedMetadata} / L{FeedVideo} / L{FeedAudio}
   events out, with a bounded buffer; malformed input raises L{FeedError}
   and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any, Optional, Union

from attrs import frozen

from tokengate.media.errors import MediaError
from tokengate.media.flv import (
    TAG_AUDIO,
    TAG_SCRIPT,
    TAG_VIDEO,
    build_flv_header,
    build_flv_tag,
    parse_flv_header,
)
from tokengate.rtmp import amf0
from tokengate.rtmp.errors import RTMPProtocolError

__all__ = [
    "checkNodeRequest",
    "FEED_PATH",
    "FEED_CONTENT_TYPE",
    "NODE_HEADER",
    "EXPIRES_HEADER",
    "AUTH_SCHEME",
    "PUBLICATION_HEADER",
    "CREDENTIAL_LIFETIME",
    "CLOCK_SKEW",
    "MAX_FEED_TAG",
    "MAX_METADATA",
    "FeedError",
    "FeedMetadata",
    "FeedVideo",
    "FeedAudio",
    "FeedEvent",
    "FeedEncoder",
    "FeedParser",
    "feedKey",
    "feedCredential",
    "checkFeedCredential",
]

#: the feed's path under the origin's internal HTTP address (then
#: C{{app}/{streamId}})
FEED_PATH = "/internal/v1/feed/"

FEED_CONTENT_TYPE = b"video/x-flv"

#: the request's headers: the asking node's id, the credential's expiry,
#: and C{Authorization: TokengateFeed <credential>}; the response's: the
#: publication served (L{tokengate.cluster.origin.publicationOf})
NODE_HEADER = "x-tokengate-node"
EXPIRES_HEADER = "x-tokengate-expires"
AUTH_SCHEME = "TokengateFeed "
PUBLICATION_HEADER = "x-tokengate-publication"

#: seconds a feed credential is valid (an edge makes a new one per
#: connection); one dated further ahead than this is refused too
CREDENTIAL_LIFETIME = 30

#: seconds of clock difference between nodes a credential tolerates
CLOCK_SKEW = 30

#: the largest tag body a feed may carry (the RTMP ingest's largest message
#: is 4 MiB: a bigger one is no frame a publisher could have sent)
MAX_FEED_TAG = 8 * 1024 * 1024

#: the largest C{onMetaData} body (the RTMP ingest keeps none bigger)
MAX_METADATA = 64 * 1024

_TAG_HEADER = struct.Struct(">BHBHBBHB")
_FLV_PREFIX = 13  # the FLV header (9) and PreviousTagSize0 (4)


class FeedError(MediaError):
    """
    A malformed or oversized feed: the edge drops the connection.
    """


@frozen
class FeedMetadata:
    """
    New C{onMetaData} values.
    """

    metadata: dict[str, Any]


@frozen
class FeedVideo:
    """
    A video tag body (sequence header or frame) and its timestamp, ms.
    """

    timestamp: int
    body: bytes


@frozen
class FeedAudio:
    """
    An audio tag body (sequence header or frame) and its timestamp, ms.
    """

    timestamp: int
    body: bytes


FeedEvent = Union[FeedMetadata, FeedVideo, FeedAudio]


# --- the credential -----------------------------------------------------------


def feedKey(clusterSecret: str) -> bytes:
    """
    The key that signs feed credentials, derived from the cluster secret
    (the secret itself signs nothing directly).
    """
    return hmac.new(clusterSecret.encode("utf-8"), b"tokengate feed credential v1",
                    hashlib.sha256).digest()


#: what a credential opens: the feed, or the packaged media
#: (L{tokengate.cluster.media}); one never opens the other
PURPOSES = ("feed", "media")


def _message(purpose: str, app: str, streamId: str, node: str, expiry: int) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError("unknown credential purpose")
    return "{}|{}|{}|{}|{}".format(purpose, app, streamId, node, expiry).encode("utf-8")


def feedCredential(key: bytes, app: str, streamId: str, node: str, expiry: int,
                   purpose: str = "feed") -> str:
    """
    The credential by which node C{node} asks for the feed (or with
    C{purpose="media"}, the packaged media) of C{app/streamId} until
    C{expiry} (seconds since the epoch): lowercase hex.
    """
    return hmac.new(key, _message(purpose, app, streamId, node, expiry),
                    hashlib.sha256).hexdigest()


def checkFeedCredential(key: bytes, app: str, streamId: str, node: str, expiry: object,
                        credential: object, now: float, purpose: str = "feed") -> bool:
    """
    Whether C{credential} opens the feed (or C{purpose}) of C{app/streamId}
    for C{node} at C{now}: the HMAC matches (constant-time), C{expiry} is an
    integer not past and at most L{CREDENTIAL_LIFETIME} seconds ahead (both
    give L{CLOCK_SKEW} seconds to the nodes' clocks).
    """
    if not isinstance(expiry, int) or isinstance(expiry, bool):
        return False
    if not isinstance(credential, str) or len(credential) != 64:
        return False
    if not now - CLOCK_SKEW <= expiry <= now + CREDENTIAL_LIFETIME + CLOCK_SKEW:
        return False
    expected = feedCredential(key, app, streamId, node, expiry, purpose)
    return hmac.compare_digest(expected, credential)


def checkNodeRequest(key: Optional[bytes], request: Any, app: str, streamId: str, now: float,
                     scheme: str = AUTH_SCHEME, purpose: str = "feed") -> bool:
    """
    Whether an HTTP request of another node carries a credential for
    C{purpose} of C{app/streamId} (L{checkFeedCredential}): its node,
    expiry and C{Authorization: <scheme><credential>} headers, bounded
    before any HMAC.  Never, on a node without the cluster's key.
    """
    if key is None:
        return False
    node = request.getHeader(NODE_HEADER)
    expires = request.getHeader(EXPIRES_HEADER)
    auth = request.getHeader("authorization")
    if not node or not expires or not auth or not auth.startswith(scheme):
        return False
    if len(node) > 256 or len(expires) > 20 or not (expires.isascii() and expires.isdigit()):
        return False
    return checkFeedCredential(key, app, streamId, node, int(expires), auth[len(scheme):],
                               now, purpose)


# --- origin side --------------------------------------------------------------


def _tag(kind: int, timestamp: int, body: bytes) -> bytes:
    return build_flv_tag(kind, timestamp & 0xFFFFFFFF, body)


class FeedEncoder:
    """
    Hub events to feed bytes.  The first call's output starts with the FLV
    header.
    """

    def __init__(self) -> None:
        self._started = False

    def _prefix(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return build_flv_header()

    def header(self) -> bytes:
        """
        The FLV header, if not sent yet.
        """
        return self._prefix()

    def metadata(self, metadata: dict[str, Any]) -> bytes:
        """
        An C{onMetaData} tag (values AMF0 cannot carry make it empty: the
        metadata is advisory).
        """
        try:
            body = amf0.encode("onMetaData", amf0.ECMAArray(metadata))
        except (TypeError, ValueError):
            body = amf0.encode("onMetaData", amf0.ECMAArray())
        if len(body) > MAX_METADATA:
            body = amf0.encode("onMetaData", amf0.ECMAArray())
        return self._prefix() + _tag(TAG_SCRIPT, 0, body)

    def video(self, timestamp: int, body: bytes) -> bytes:
        """
        A video tag body (configuration or frame).
        """
        return self._prefix() + _tag(TAG_VIDEO, timestamp, body)

    def audio(self, timestamp: int, body: bytes) -> bytes:
        """
        An audio tag body (configuration or frame).
        """
        return self._prefix() + _tag(TAG_AUDIO, timestamp, body)


# --- edge side ----------------------------------------------------------------


class FeedParser:
    """
    Feed bytes to events, incrementally.  The buffer holds at most one
    partial tag (L{MAX_FEED_TAG} and its framing).
    """

    def __init__(self, maxTag: int = MAX_FEED_TAG) -> None:
        self._buffer = bytearray()
        self._maxTag = maxTag
        self._headerDone = False
        self.bytesIn = 0

    def receive(self, data: bytes) -> list[FeedEvent]:
        """
        Parse C{data}: the events of every tag completed by it.

        @raise FeedError: the feed is malformed or a tag is too big; the
            parser is then unusable.
        """
        self.bytesIn += len(data)
        buf = self._buffer
        buf += data
        events: list[FeedEvent] = []
        pos = 0
        if not self._headerDone:
            if len(buf) < _FLV_PREFIX:
                if len(buf) >= 3 and bytes(buf[:3]) != b"FLV":
                    raise FeedError("not an FLV feed")
                return events
            try:
                header = parse_flv_header(bytes(buf[:9]))
            except MediaError as e:
                raise FeedError(str(e)) from None
            if header.data_offset != 9:
                raise FeedError("unexpected FLV header size")
            self._headerDone = True
            pos = _FLV_PREFIX
        n = len(buf)
        while n - pos >= 11:
            kind, sizeHi, sizeLo, tsHi, tsLo, tsExt, _, _ = _TAG_HEADER.unpack_from(buf, pos)
            size = sizeHi << 8 | sizeLo
            if kind & 0xE0:
                raise FeedError("filtered or reserved FLV tag")
            if size > self._maxTag:
                raise FeedError("feed tag of {} bytes".format(size))
            end = pos + 11 + size + 4
            if end > n:
                break
            body = bytes(buf[pos + 11:pos + 11 + size])
            (previous,) = struct.unpack_from(">I", buf, end - 4)
            if previous != size + 11:
                raise FeedError("bad PreviousTagSize")
            timestamp = tsExt << 24 | tsHi << 8 | tsLo
            if kind == TAG_VIDEO:
                events.append(FeedVideo(timestamp, body))
            elif kind == TAG_AUDIO:
                events.append(FeedAudio(timestamp, body))
            elif kind == TAG_SCRIPT:
                events.append(FeedMetadata(_metadata(body)))
            else:
                raise FeedError("unexpected FLV tag type {}".format(kind))
            pos = end
        if pos:
            del buf[:pos]
        if len(buf) > self._maxTag + 15:
            raise FeedError("feed buffer over its bound")
        return events


def _metadata(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_METADATA:
        raise FeedError("metadata of {} bytes".format(len(body)))
    try:
        values = amf0.decode_all(body)
    except RTMPProtocolError as e:
        raise FeedError(str(e)) from None
    if len(values) != 2 or values[0] != "onMetaData" or not isinstance(values[1], dict):
        raise FeedError("a script tag that is not onMetaData")
    return dict(values[1])
