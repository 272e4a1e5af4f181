# -*- test-case-name: tests.test_webrtc_whipwire -*-
"""
The pure part of WHIP (RFC 9725) and WHEP: what the HTTP adapter
(L{tokengate.webrtc.whip}) reads from a request and writes into an answer,
without I/O.

  - L{bearerToken}: the token of an C{Authorization: Bearer} header;
  - L{isMediaType}: a C{Content-Type} against the one expected;
  - L{checkOffer}: the offer's shape, before any token is redeemed (an
    offer the media engine cannot answer is refused while the token is
    still usable);
  - L{parseSdpFrag}: a trickle ICE SDP fragment (RFC 8840,
    C{application/trickle-ice-sdpfrag}) of a C{PATCH};
  - L{ifMatch}: an C{If-Match} header against the session's entity tag;
  - L{iceServerLinks}: the C{Link: <uri>; rel="ice-server"} headers;
  - L{newSessionId}, L{newETag}: unguessable session ids and entity tags.

Every bound is a constant here; every failure is one L{WhipError}.
"""

from __future__ import annotations

import re
import secrets
from typing import Iterable, Mapping, Optional, Sequence, Union

from attrs import field, frozen

__all__ = [
    "MAX_OFFER", "MAX_FRAGMENT", "MAX_FRAGMENT_CANDIDATES", "MAX_CANDIDATE",
    "WhipError", "OfferSummary", "Candidate", "SdpFrag",
    "bearerToken", "isMediaType", "checkOffer", "parseSdpFrag", "ifMatch",
    "iceServerLinks", "newSessionId", "newETag", "isSessionId",
]

#: the largest offer accepted (a browser's offer with simulcast and many
#: candidates is below 16 KiB)
MAX_OFFER = 64 * 1024
#: the most lines an offer may have
MAX_OFFER_LINES = 2000
#: the most media sections an offer may have (WHIP: one audio, one video)
MAX_MEDIA = 8
#: the largest trickle ICE fragment accepted, and its candidates
MAX_FRAGMENT = 16 * 1024
MAX_FRAGMENT_CANDIDATES = 64
#: the longest candidate attribute (as the WebSocket signalling)
MAX_CANDIDATE = 1024

#: bytes of randomness of a session id (192 bits) and of an entity tag
SESSION_ID_BYTES = 24
ETAG_BYTES = 12

_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{32}")

#: the video codecs a WHIP publisher may send (H.264 passes through, VP8 is
#: transcoded) and the audio codecs (transcoded to AAC)
PUBLISH_VIDEO = frozenset({"h264", "vp8"})
PUBLISH_AUDIO = frozenset({"opus", "pcmu", "pcma"})
#: what a WHEP viewer must accept: H.264 video (the hub's, unchanged)
PLAY_VIDEO = frozenset({"h264"})


class WhipError(ValueError):
    """
    A request the server does not understand: the message says why
    (secret-free, for the answer's body).
    """


def bearerToken(authorization: Optional[str]) -> Optional[str]:
    """
    The token of an C{Authorization} header: what follows C{Bearer } (any
    case), stripped; None without one.

    @raise WhipError: an C{Authorization} of another scheme, or an empty
        token.
    """
    if authorization is None:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise WhipError("Authorization must be Bearer")
    token = rest.strip()
    if not token:
        raise WhipError("Authorization: Bearer without a token")
    return token


def isMediaType(contentType: Optional[str], expected: str) -> bool:
    """
    Whether C{contentType} names the media type C{expected} (case aside,
    parameters ignored).
    """
    if contentType is None:
        return False
    return contentType.split(";", 1)[0].strip().lower() == expected


def _lines(text: str, maxLines: int) -> list[str]:
    lines = text.replace("\r\n", "\n").split("\n")
    if len(lines) > maxLines:
        raise WhipError("too many lines")
    return [ln.rstrip("\r") for ln in lines if ln.strip()]


@frozen
class OfferSummary:
    """
    What L{checkOffer} found in an offer.

    @ivar kinds: the kinds of its media sections, in order.
    @ivar mids: their C{a=mid} values (None where absent).
    @ivar iceUfrag: the offer's (first) ICE username fragment.
    @ivar icePwd: its ICE password.
    """

    kinds: tuple[str, ...]
    mids: tuple[Optional[str], ...]
    iceUfrag: str
    icePwd: str = field(repr=False)


def checkOffer(sdp: str, publish: bool) -> OfferSummary:
    """
    Check the shape of a WHIP (C{publish}) or WHEP offer before the token
    is looked at: SDP version 0, at most L{MAX_MEDIA} media sections, ICE
    credentials, a DTLS fingerprint, and media the server can take: for
    WHIP a sending audio or video section with a codec the server takes
    (H.264 or VP8 video, Opus or G.711 audio), for WHEP a receiving video
    section offering H.264.

    @raise WhipError: with the reason.
    """
    if len(sdp) > MAX_OFFER:
        raise WhipError("the offer is too large")
    lines = _lines(sdp, MAX_OFFER_LINES)
    if not lines or lines[0] != "v=0":
        raise WhipError("the offer is not SDP (no v=0)")
    kinds: list[str] = []
    mids: list[Optional[str]] = []
    codecs: list[set[str]] = []
    directions: list[str] = []
    ufrag = pwd = ""
    fingerprint = False
    sessionDirection = "sendrecv"
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise WhipError("the offer has a line that is not SDP")
        if line.startswith("m="):
            if len(kinds) >= MAX_MEDIA:
                raise WhipError("the offer has too many media sections")
            kinds.append(line[2:].split(" ", 1)[0])
            mids.append(None)
            codecs.append(set())
            directions.append("")
            continue
        if line.startswith("a=ice-ufrag:") and not ufrag:
            ufrag = line[len("a=ice-ufrag:"):].strip()
        elif line.startswith("a=ice-pwd:") and not pwd:
            pwd = line[len("a=ice-pwd:"):].strip()
        elif line.startswith("a=fingerprint:"):
            fingerprint = True
        elif not kinds:
            if line[2:] in ("sendrecv", "sendonly", "recvonly", "inactive"):
                sessionDirection = line[2:]
        elif line.startswith("a=mid:"):
            mids[-1] = line[len("a=mid:"):].strip()[:64]
        elif line.startswith("a=rtpmap:"):
            parts = line.split(" ", 1)
            if len(parts) == 2:
                codecs[-1].add(parts[1].split("/", 1)[0].strip().lower())
        elif line[2:] in ("sendrecv", "sendonly", "recvonly", "inactive"):
            directions[-1] = line[2:]
    if not kinds:
        raise WhipError("the offer has no media")
    if not ufrag or not pwd:
        raise WhipError("the offer has no ICE credentials")
    if not fingerprint:
        raise WhipError("the offer has no DTLS fingerprint")
    wanted = ("sendrecv", "sendonly") if publish else ("sendrecv", "recvonly")
    usable = False
    for kind, names, direction in zip(kinds, codecs, directions):
        if (direction or sessionDirection) not in wanted:
            continue
        if publish:
            if (kind == "video" and names & PUBLISH_VIDEO) or \
                    (kind == "audio" and names & PUBLISH_AUDIO):
                usable = True
        elif kind == "video" and names & PLAY_VIDEO:
            usable = True
    if not usable:
        if publish:
            raise WhipError("the offer sends neither H.264/VP8 video nor Opus/G.711 audio")
        raise WhipError("the offer receives no H.264 video")
    return OfferSummary(tuple(kinds), tuple(mids), ufrag, pwd)


@frozen
class Candidate:
    """
    One candidate of a fragment: the attribute's value (C{candidate:...}),
    and the media section it belongs to (its mid, or its index in the
    fragment).
    """

    candidate: str
    mid: Optional[str]
    index: int


@frozen
class SdpFrag:
    """
    A trickle ICE SDP fragment (RFC 8840).

    @ivar iceUfrag: the ICE username fragment it names, or None.
    @ivar icePwd: its password, or None.
    @ivar candidates: its candidates, in order.
    @ivar ended: whether it says C{a=end-of-candidates}.
    """

    iceUfrag: Optional[str]
    icePwd: Optional[str] = field(repr=False)
    candidates: tuple[Candidate, ...]
    ended: bool


def parseSdpFrag(text: str) -> SdpFrag:
    """
    Parse a trickle ICE fragment: session-level and media-level
    C{a=ice-ufrag}, C{a=ice-pwd}, C{a=group}, C{m=} lines with their
    C{a=mid}, C{a=candidate} and C{a=end-of-candidates}.  At most
    L{MAX_FRAGMENT_CANDIDATES} candidates of at most L{MAX_CANDIDATE}
    characters each.

    @raise WhipError: with the reason.
    """
    if len(text) > MAX_FRAGMENT:
        raise WhipError("the fragment is too large")
    lines = _lines(text, MAX_FRAGMENT_CANDIDATES * 4 + 64)
    ufrag: Optional[str] = None
    pwd: Optional[str] = None
    candidates: list[Candidate] = []
    ended = False
    index = -1
    mid: Optional[str] = None
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise WhipError("the fragment has a line that is not SDP")
        if line.startswith("m="):
            index += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:"):].strip()[:64]
            # candidates listed before their mid take it
            candidates = [Candidate(c.candidate, mid, c.index)
                          if c.index == index and c.mid is None else c for c in candidates]
        elif line.startswith("a=ice-ufrag:"):
            value = line[len("a=ice-ufrag:"):].strip()
            if ufrag is not None and value != ufrag:
                raise WhipError("the fragment names two ICE username fragments")
            ufrag = value
        elif line.startswith("a=ice-pwd:"):
            value = line[len("a=ice-pwd:"):].strip()
            if pwd is not None and value != pwd:
                raise WhipError("the fragment names two ICE passwords")
            pwd = value
        elif line.startswith("a=candidate:"):
            value = line[2:]
            if len(value) > MAX_CANDIDATE:
                raise WhipError("a candidate is too long")
            if len(value.split()) < 8:
                raise WhipError("a candidate is malformed")
            if len(candidates) >= MAX_FRAGMENT_CANDIDATES:
                raise WhipError("the fragment has too many candidates")
            candidates.append(Candidate(value, mid, max(index, 0)))
        elif line == "a=end-of-candidates":
            ended = True
        elif line.startswith(("a=group:", "a=ice-options:", "c=", "a=")):
            continue
        else:
            raise WhipError("the fragment has a line a fragment does not have")
    return SdpFrag(ufrag, pwd, tuple(candidates), ended)


def ifMatch(header: Optional[str], etag: str) -> Optional[bool]:
    """
    Whether an C{If-Match} header matches the entity tag C{etag} (strong
    comparison, RFC 9110 13.1.1): None without the header, True for C{*} or
    a list naming C{etag}, else False.
    """
    if header is None:
        return None
    tags = [t.strip() for t in header.split(",")]
    if "*" in tags:
        return True
    return etag in tags


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def iceServerLinks(servers: Sequence[Mapping[str, Union[str, Sequence[str]]]]
                   ) -> list[str]:
    """
    The C{Link} header values of RFC 9725 (4.6) for an RTCIceServer list
    (L{tokengate.webrtc.ice.IceServers.iceServers}): one per URI, with the
    TURN username and credential (C{credential-type="password"}).
    """
    links: list[str] = []
    for server in servers:
        urls = server.get("urls", ())
        uris: Iterable[str] = [urls] if isinstance(urls, str) else urls
        username = server.get("username")
        credential = server.get("credential")
        for uri in uris:
            link = "<{}>; rel=\"ice-server\"".format(uri)
            if isinstance(username, str) and isinstance(credential, str) and username:
                link += "; username={}; credential={}; credential-type=\"password\"".format(
                    _quoted(username), _quoted(credential))
            links.append(link)
    return links


def newSessionId() -> str:
    """
    An unguessable session id (192 random bits, 32 URL-safe characters).
    """
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def isSessionId(value: str) -> bool:
    """
    Whether C{value} has the shape of a L{newSessionId}.
    """
    return _SESSION_ID.fullmatch(value) is not None


def newETag() -> str:
    """
    A fresh strong entity tag (quoted).
    """
    return '"' + secrets.token_hex(ETAG_BYTES) + '"'
