# -*- test-case-name: tests.test_tokens -*-
"""
Tokens: the value type, minting, digests and the redemption rules.

Pure code, no I/O.  The rules are those of the reference server's datastore
(C{validateToken}), with tokengate's refinements:

  - a token is redeemed only when it exists, its type equals the requested
    type, C{now < expireDate} (strict, unix seconds) and its stream id equals
    the requested stream id; then it is consumed, exactly once;
  - any mismatch leaves the token intact, usable for its real stream;
  - a token minted with a C{roomId} is not consumed: it stays valid until it
    expires for its own stream, and for any stream of its room when the
    request names that room.

Stores keep L{digest} of a token, never the token itself.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from typing import Optional

from attrs import field, frozen

from tokengate.access.names import isValidStreamId

PUBLISH = "publish"
PLAY = "play"
TOKEN_TYPES = (PUBLISH, PLAY)

#: Decimal digits in a minted token id.  The reference server mints 24
#: decimal digits (about 80 bits); tokengate keeps the all-digit form, which
#: is safe in URLs, RTMP stream names and SRT stream ids, with 40 digits:
#: log2(10**40) is about 132.9 bits from C{secrets}.
TOKEN_DIGITS = 40

#: The longest token id accepted anywhere (JWTs are longer than minted ids).
MAX_TOKEN_LENGTH = 2048

#: expireDate values above this are almost certainly milliseconds: it is the
#: year 5138 in seconds, and mid-1973 in milliseconds.
MAX_EXPIRE_SECONDS = 10**11


class Outcome(enum.Enum):
    """
    The result of a redemption attempt.  Everything but C{GRANTED} is a
    refusal reason, for logs and metrics; clients only ever see the reference
    server's strings.
    """

    GRANTED = "granted"
    MISSING = "missing"  # no token was presented
    UNKNOWN = "unknown"  # no such token: never minted, revoked or spent
    EXPIRED = "expired"
    WRONG_STREAM = "wrong_stream"
    WRONG_TYPE = "wrong_type"
    WRONG_ROOM = "wrong_room"
    INVALID = "invalid"  # malformed (e.g. a JWT with a bad signature)
    THROTTLED = "throttled"
    UNAVAILABLE = "unavailable"  # the store could not answer: fail closed
    NO_APP = "no_app"  # no such application
    IN_USE = "in_use"  # the stream is already being published
    NOT_LIVE = "not_live"  # play of a stream that is not live: token kept
    DISABLED = "disabled"  # the application turned this protocol off
    BLOCKED = "blocked"  # the subscriber is blocked (REST block call)
    BAD_CODE = "bad_code"  # subscriber id or TOTP code missing or wrong
    CODE_IN_USE = "code_in_use"  # the subscriber is already connected
    UNREGISTERED = "unregistered"  # not created through REST (acceptOnly...InDataStore)
    ADDRESS = "address"  # the client's address is outside allowedPublisherCIDR
    WEBHOOK_REFUSED = "webhook_refused"  # the authorization webhook said no
    WEBHOOK_UNAVAILABLE = "webhook_unavailable"  # it did not answer in time: fail closed


#: the security mechanism each refusal belongs to (the C{mechanism} label of
#: C{tokengate_policy_refusals})
MECHANISMS = {
    Outcome.MISSING: "token",
    Outcome.UNKNOWN: "token",
    Outcome.EXPIRED: "token",
    Outcome.WRONG_STREAM: "token",
    Outcome.WRONG_TYPE: "token",
    Outcome.WRONG_ROOM: "token",
    Outcome.INVALID: "request",
    Outcome.THROTTLED: "throttle",
    Outcome.UNAVAILABLE: "store",
    Outcome.NO_APP: "request",
    Outcome.IN_USE: "stream",
    Outcome.NOT_LIVE: "stream",
    Outcome.DISABLED: "switch",
    Outcome.BLOCKED: "subscriber",
    Outcome.BAD_CODE: "subscriber",
    Outcome.CODE_IN_USE: "subscriber",
    Outcome.UNREGISTERED: "datastore",
    Outcome.ADDRESS: "publisherAddress",
    Outcome.WEBHOOK_REFUSED: "webhook",
    Outcome.WEBHOOK_UNAVAILABLE: "webhook",
}


def mint_token_id() -> str:
    """
    A new token id: C{TOKEN_DIGITS} decimal digits from C{secrets}.
    """
    return str(secrets.randbelow(10**TOKEN_DIGITS)).zfill(TOKEN_DIGITS)


def digest(token_id: str) -> str:
    """
    The form in which stores keep a token: hex SHA-256 of its id.

    Token ids carry at least 128 bits of entropy, so an unsalted fast hash is
    enough to make a leaked database useless for redeeming.
    """
    return hashlib.sha256(token_id.encode("utf-8", "surrogatepass")).hexdigest()


def masked(token_id: str) -> str:
    """
    What may be shown of a token id in listings: its first six characters.
    """
    return token_id[:6] + "..."


@frozen
class Token:
    """
    A token as the REST API shows it (field order is the reference's).
    """

    tokenId: str = field(repr=lambda v: masked(v))
    streamId: str
    expireDate: int
    type: str
    roomId: Optional[str] = None

    def asJSON(self) -> dict[str, object]:
        return {
            "tokenId": self.tokenId,
            "streamId": self.streamId,
            "expireDate": self.expireDate,
            "type": self.type,
            "roomId": self.roomId,
        }


@frozen
class StoredToken:
    """
    A token as a store keeps it: its digest, a display hint and its claims.
    """

    app: str
    digest: str
    hint: str
    streamId: str
    expireDate: int
    type: str
    roomId: Optional[str] = None

    @classmethod
    def fromToken(cls, app: str, token: Token) -> "StoredToken":
        return cls(
            app=app,
            digest=digest(token.tokenId),
            hint=masked(token.tokenId),
            streamId=token.streamId,
            expireDate=token.expireDate,
            type=token.type,
            roomId=token.roomId or None,
        )

    def asListedJSON(self) -> dict[str, object]:
        """
        The listing form: the token itself is not kept, so only its hint.
        """
        return {
            "tokenId": self.hint,
            "streamId": self.streamId,
            "expireDate": self.expireDate,
            "type": self.type,
            "roomId": self.roomId,
        }


@frozen
class Probe:
    """
    A redemption request: which stream, for what, in which room, when.
    """

    app: str
    streamId: str
    type: str
    roomId: Optional[str]
    now: float


def judge(stored: Optional[StoredToken], probe: Probe) -> tuple[Outcome, bool]:
    """
    Apply the redemption rules to a stored token.

    @return: the outcome and whether the token is to be consumed.  Stores
        that cannot run this function atomically (SQL, Lua) implement the
        same rules in their own language; the shared store test suite holds
        them all to this function.
    """
    if stored is None or stored.app != probe.app:
        return Outcome.UNKNOWN, False
    if stored.type != probe.type:
        return Outcome.WRONG_TYPE, False
    if not probe.now < stored.expireDate:
        return Outcome.EXPIRED, False
    if stored.roomId:
        if stored.streamId == probe.streamId:
            return Outcome.GRANTED, False
        if probe.roomId and probe.roomId == stored.roomId:
            return Outcome.GRANTED, False
        return Outcome.WRONG_ROOM if probe.roomId else Outcome.WRONG_STREAM, False
    if stored.streamId != probe.streamId:
        return Outcome.WRONG_STREAM, False
    return Outcome.GRANTED, True


class RequestError(ValueError):
    """
    A mint request that the REST API refuses with 400 and this message.
    """


MSG_DEFINE = "Define Stream ID, Token Type and Expire Date (unix time)"
MSG_BAD_TYPE = "Invalid token type. Supported types are 'play' and 'publish'"
MSG_PAST = "Expire Date is in the past (unix time in seconds)"
#: tokengate's own (the reference server takes any string): see L{isValidStreamId}
MSG_BAD_STREAM_ID = "Stream id must be 1-128 letters, digits, '-', '_' or '.', not starting with '.'"
MSG_BAD_ROOM_ID = "Room id must be 1-128 letters, digits, '-', '_' or '.', not starting with '.'"
MSG_MILLIS = (
    "Expire Date looks like milliseconds; give it in unix time (seconds)"
)


def check_mint_request(
    streamId: Optional[str],
    type: Optional[str],
    expireDate: Optional[int],
    now: float,
    checkType: bool = True,
    roomId: Optional[str] = None,
) -> None:
    """
    Validate the parameters of a mint request in the reference order.

    @raise RequestError: with the message for the 400 answer.
    """
    if not streamId or type is None or expireDate is None or expireDate <= 0:
        raise RequestError(MSG_DEFINE)
    if checkType and type not in TOKEN_TYPES:
        raise RequestError(MSG_BAD_TYPE)
    if expireDate >= MAX_EXPIRE_SECONDS:
        raise RequestError(MSG_MILLIS)
    if expireDate <= now:
        raise RequestError(MSG_PAST)
    if not isValidStreamId(streamId):
        raise RequestError(MSG_BAD_STREAM_ID)
    if roomId and not isValidStreamId(roomId):
        raise RequestError(MSG_BAD_ROOM_ID)


def new_token(
    streamId: str, type: str, expireDate: int, roomId: Optional[str] = None
) -> Token:
    return Token(
        tokenId=mint_token_id(),
        streamId=streamId,
        expireDate=expireDate,
        type=type,
        roomId=roomId or None,
    )
