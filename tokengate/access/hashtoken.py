# -*- test-case-name: tests.test_access_hashtoken -*-
"""
Ant Media's hash tokens (C{hashControlPublishEnabled},
C{hashControlPlayEnabled}, C{tokenHashSecret}).

The token is the SHA-256 of C{streamId + role + tokenHashSecret} (UTF-8),
in lower-case hex, where the role is C{"publish"} or C{"play"} (Ant
Media's C{ConsoleAppRestServiceTest.testHashControl} computes it so; the
client presents it where a one-time token goes, e.g. C{?token=}).  It is
not one-time and does not expire: whoever knows it may publish or play
that stream for as long as the secret stays the same.  The concatenation
has no separator, yet cannot be ambiguous: the role is a suffix of the
text before the secret, and C{"publish"} and C{"play"} do not end one
another, so the text determines role and stream id.

Where tokengate is stricter than Ant Media (whose checker is closed
source): an empty secret verifies nothing (with no secret anybody could
compute the hash of a stream id), the token must be exactly 64 lower-case
hex digits (the form Ant Media's own test produces), and the comparison
takes the same time wherever the first difference is.
"""

from __future__ import annotations

import hashlib
import hmac
import re

#: the roles a hash token is computed for
ROLES = ("publish", "play")
#: characters in a hash token
TOKEN_LENGTH = 64

_HEX = re.compile(r"[0-9a-f]{64}")


def hashToken(streamId: str, role: str, secret: str) -> str:
    """
    The hash token of a stream and role.

    @param streamId: the stream's name.
    @param role: C{"publish"} or C{"play"}.
    @param secret: the application's C{tokenHashSecret}, not empty.
    @return: 64 lower-case hex digits.
    @raise ValueError: for an unknown role or an empty secret.
    """
    if role not in ROLES:
        raise ValueError("the role must be publish or play")
    if not secret:
        raise ValueError("the hash secret is empty")
    return hashlib.sha256((streamId + role + secret).encode("utf-8")).hexdigest()


def verifyHashToken(token: object, streamId: str, role: str, secret: str) -> bool:
    """
    Whether C{token} is the hash token of this stream and role.

    @param token: what the client presented (anything: a non-string, a
        wrong length or upper-case hex is refused).
    @param secret: the application's C{tokenHashSecret}; empty refuses.
    """
    if not secret or role not in ROLES:
        return False
    if not isinstance(token, str) or _HEX.fullmatch(token) is None:
        return False
    return hmac.compare_digest(token.encode("ascii"),
                               hashToken(streamId, role, secret).encode("ascii"))
