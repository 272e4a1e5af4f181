# -*- test-case-name: tests.test_sessions -*-
"""
Playback session credentials: what keeps an HLS, DASH or MP4 viewing session
going after its one-time token is spent.

A credential is C{base64url(payload) "." base64url(mac)} where the payload
names the application, the stream, the session id, when the session started
and when this credential was issued, and the MAC is HMAC-SHA256 over it with
the server's session secret (truncated to 128 bits).  Any node holding the
same secret can check one without a store lookup: that is what lets players
without cookies, and clusters without sticky load balancers, keep playing.

Credentials expire when idle: each playlist or manifest the server sends
carries freshly issued ones, so a playing session always holds a recent
credential, and one not used for C{idle} seconds stops working.  Revocation
is by stream (every session of a stream started before a given time) or by
session id.

Pure code: no I/O, time is passed in.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
from collections import OrderedDict
from attrs import frozen

VERSION = 1
MAC_BYTES = 16
MAX_CREDENTIAL_LENGTH = 1024


class InvalidCredential(ValueError):
    """
    A credential that is malformed, forged, for another stream, expired or
    revoked.
    """


@frozen
class Session:
    app: str
    streamId: str
    sessionId: str
    started: float  # when the token was redeemed
    issued: float  # when this credential was made
    kind: str  # hls, dash, vod


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_secret(path: str) -> bytes:
    """
    The session secret kept in the data directory (created on first use,
    readable by the owner only).
    """
    try:
        with open(path, "rb") as f:
            data = f.read().strip()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(32).encode("ascii")
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    return secret


class SessionSigner:
    """
    Issues and checks session credentials.
    """

    def __init__(self, secret: bytes, idle: float = 120.0, vodIdle: float = 6 * 3600.0,
                 maxRevokedSessions: int = 100_000) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must have at least 16 bytes")
        self._secret = secret
        self.idle = idle
        self.vodIdle = vodIdle
        self._streamRevoked: dict[tuple[str, str], float] = {}
        self._sessionRevoked: OrderedDict[str, float] = OrderedDict()
        self._maxRevoked = maxRevokedSessions
        # credentials already verified: a playlist's segments all carry the
        # same one, so most checks are a dict lookup (bounded, and cleared
        # whole when full: entries are cheap to recompute)
        self._verified: dict[str, Session] = {}
        self._maxVerified = 50_000

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:MAC_BYTES]

    def new(self, app: str, streamId: str, kind: str, now: float) -> Session:
        return Session(app, streamId, secrets.token_urlsafe(12), now, now, kind)

    def issue(self, session: Session, now: float) -> str:
        """
        A credential for C{session}, issued now.
        """
        payload = json.dumps(
            [VERSION, session.app, session.streamId, session.sessionId,
             round(session.started, 3), round(now, 3), session.kind],
            separators=(",", ":"),
        ).encode("utf-8")
        return _b64(payload) + "." + _b64(self._mac(payload))

    def check(self, credential: str, app: str, streamId: str, now: float) -> Session:
        """
        The session a credential carries, if it is genuine, for this stream,
        fresh and not revoked.

        @raise InvalidCredential: otherwise.
        """
        session = self._verified.get(credential)
        if session is None:
            session = self._verify(credential)
            if len(self._verified) >= self._maxVerified:
                self._verified.clear()
            self._verified[credential] = session
        if session.app != app or session.streamId != streamId:
            raise InvalidCredential("wrong stream")
        idle = self.vodIdle if session.kind == "vod" else self.idle
        if not (session.issued - 5 <= now < session.issued + idle):
            raise InvalidCredential("expired")
        revoked = self._streamRevoked.get((app, streamId))
        if revoked is not None and session.started <= revoked:
            raise InvalidCredential("revoked")
        if session.sessionId in self._sessionRevoked:
            raise InvalidCredential("revoked")
        return session

    def _verify(self, credential: str) -> Session:
        """
        Decode a credential and check its MAC (nothing about time or scope).
        """
        if not credential or len(credential) > MAX_CREDENTIAL_LENGTH:
            raise InvalidCredential("malformed")
        body, _, mac = credential.partition(".")
        try:
            payload = _unb64(body)
            given = _unb64(mac)
        except (ValueError, TypeError):
            raise InvalidCredential("malformed")
        if not hmac.compare_digest(given, self._mac(payload)):
            raise InvalidCredential("forged")
        try:
            version, sApp, sStream, sid, started, issued, kind = json.loads(payload)
        except (ValueError, TypeError):
            raise InvalidCredential("malformed")
        if version != VERSION:
            raise InvalidCredential("version")
        if not all(isinstance(v, str) for v in (sApp, sStream, sid, kind)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (started, issued)
        ):
            raise InvalidCredential("malformed")
        return Session(sApp, sStream, sid, started, issued, kind)

    def revokeStream(self, app: str, streamId: str, now: float) -> None:
        """
        End every session of a stream that started up to C{now} (an earlier
        time than one already recorded for the stream changes nothing).
        """
        key = (app, streamId)
        if now > self._streamRevoked.get(key, float("-inf")):
            self._streamRevoked[key] = now

    def revokeSession(self, sessionId: str, now: float) -> None:
        self._sessionRevoked[sessionId] = now
        while len(self._sessionRevoked) > self._maxRevoked:
            self._sessionRevoked.popitem(last=False)

    def forgetRevocations(self, now: float) -> None:
        """
        Drop revocations older than any credential that could still be
        valid.
        """
        horizon = now - max(self.idle, self.vodIdle) - 5
        for key in [k for k, t in self._streamRevoked.items() if t < horizon]:
            del self._streamRevoked[key]
        while self._sessionRevoked and next(iter(self._sessionRevoked.values())) < horizon:
            self._sessionRevoked.popitem(last=False)


@functools.lru_cache(maxsize=4096)
def cookie_name(app: str, streamId: str) -> str:
    """
    The session cookie of one stream (all streams share the cookie path).
    """
    return "tgs_" + hashlib.sha256((app + "/" + streamId).encode("utf-8")).hexdigest()[:12]


__all__ = ["Session", "SessionSigner", "InvalidCredential", "cookie_name",
           "load_or_create_secret"]
