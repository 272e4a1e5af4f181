# -*- test-case-name: tests.test_access_totp -*-
"""
Time-based subscriber codes (RFC 6238 TOTP) as Ant Media Server computes
them: HMAC-SHA1, 6 digits, a time step of C{timeTokenPeriod} seconds
(counter C{floor(unix time / period)}, RFC 4226 dynamic truncation).

Where the key comes from
========================

  - A subscriber recorded through REST carries its own C{b32Secret}: the
    key is its Base32 decoding (L{keyFromB32Secret}).
  - A subscriber I{not} recorded gets a key derived from the application's
    C{timeTokenSecretForPublish} or C{timeTokenSecretForPlay} (by type):
    the text C{secret + subscriberId + streamId + type}, padded with C{X} to
    a multiple of 8 characters, is the key (L{derivedKey}).

    Ant Media's C{TOTPGenerator.getSecretCodeForNotRecordedSubscriberId}
    Base32-I{encodes} that padded text's bytes, and its callers Base32-decode
    the result again before the HMAC: the encoding is a round trip, so the
    HMAC key is the padded text's own bytes, and the C{X} padding (counted
    in Java C{String} length, i.e. UTF-16 code units; the text's bytes are
    UTF-8) is what changes the key.  L{derivedB32Secret} gives the Base32
    form an operator can hand to an authenticator app.  An empty setting
    derives nothing (Ant Media's REST answers "Secret is not set"): the
    caller refuses.

The check
=========

L{verifyCode} accepts exactly 6 ASCII digits equal (compared in constant
time) to the code of the current step or of one step either side (clock
skew between the code's generator and this server), and says which step
matched.  Ant Media's check lives in its closed-source Enterprise
C{TokenService}; its public generator computes only the current step, and
the public source does not show a window (unverified).  tokengate is
strict where it can be: anything but six ASCII digits is refused before
any HMAC (no C{int()} that would take C{" 12345"}, C{"+12345"} or
non-ASCII digits), the window is at most one step, and the matched step is
returned so that the subscriber registry can refuse a code whose step is
older than one already used by the same subscriber (RFC 6238 section 5.2:
a verifier should not accept an OTP again once a later one was used).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import struct
from typing import Optional

#: digits in a code
DIGITS = 6
#: Ant Media's default C{timeTokenPeriod}, seconds
DEFAULT_PERIOD = 60
#: the shortest period a subscriber may carry (Ant Media's
#: C{MIN_TOTP_EXPIRATION_TIME})
MIN_PERIOD = 10
#: the longest period tokengate accepts (a day; Ant Media has no bound)
MAX_PERIOD = 86400
#: the most steps either side of the current one a check accepts
MAX_WINDOW = 1
#: the longest C{b32Secret} accepted, in characters (640 bytes of key)
MAX_B32_SECRET = 1024
#: the types a key is derived for
TYPES = ("publish", "play")

_CODE = re.compile(r"[0-9]{6}")
_B32 = re.compile(r"[A-Za-z2-7]+=*")


class SecretError(ValueError):
    """
    A C{b32Secret} or a derivation input that cannot make a key.  The
    message never quotes the secret.
    """


def _checkPeriod(period: int) -> None:
    if isinstance(period, bool) or not isinstance(period, int) or not (
            MIN_PERIOD <= period <= MAX_PERIOD):
        raise ValueError("the TOTP period must be {} to {} seconds".format(MIN_PERIOD, MAX_PERIOD))


def hotp(key: bytes, counter: int, digits: int = DIGITS) -> str:
    """
    The RFC 4226 HOTP value (HMAC-SHA1, dynamic truncation) of C{counter}.

    @param key: the shared secret's bytes.
    @param counter: the moving factor, 0 to 2**64 - 1.
    @param digits: how many decimal digits, 6 to 8.
    @return: the code, zero-padded to C{digits}.
    """
    if not 0 <= counter < 2**64:
        raise ValueError("the counter must fit in 64 bits")
    if not 6 <= digits <= 8:
        raise ValueError("a code has 6 to 8 digits")
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    binary = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(binary % 10**digits).zfill(digits)


def stepAt(now: float, period: int) -> int:
    """
    The RFC 6238 time step of C{now}: C{floor(now / period)}.

    @param now: unix time, seconds (not before 1970).
    @param period: the step, seconds.
    """
    _checkPeriod(period)
    if not (math.isfinite(now) and now >= 0):
        raise ValueError("the time must be a finite unix time")
    return int(now // period)


def totpAt(key: bytes, now: float, period: int = DEFAULT_PERIOD, digits: int = DIGITS) -> str:
    """
    The code valid at C{now}.

    @param key: the shared secret's bytes.
    @param now: unix time, seconds.
    @param period: the time step (C{timeTokenPeriod}), seconds.
    @param digits: digits in the code (Ant Media: 6).
    """
    return hotp(key, stepAt(now, period), digits)


def verifyCode(key: bytes, code: object, now: float, period: int = DEFAULT_PERIOD,
               window: int = MAX_WINDOW) -> Optional[int]:
    """
    Check a subscriber code.

    @param key: the subscriber's key (L{keyFromB32Secret} or L{derivedKey}).
    @param code: what the client sent as C{subscriberCode}; anything but a
        string of exactly six ASCII digits is refused.
    @param now: unix time, seconds.
    @param period: the time step, seconds.
    @param window: steps accepted either side of the current one, 0 or 1.
    @return: the time step whose code matched (the nearest to now first),
        or L{None} when none did.
    """
    if not 0 <= window <= MAX_WINDOW:
        raise ValueError("the window is 0 to {} steps".format(MAX_WINDOW))
    if not isinstance(code, str) or _CODE.fullmatch(code) is None:
        return None
    current = stepAt(now, period)
    given = code.encode("ascii")
    matched: Optional[int] = None
    # Every candidate is computed and compared: the time taken does not say
    # which step matched.
    for step in sorted(range(current - window, current + window + 1),
                       key=lambda s: abs(s - current)):
        if step < 0:
            continue
        if hmac.compare_digest(hotp(key, step).encode("ascii"), given) and matched is None:
            matched = step
    return matched


def _javaLength(text: str) -> int:
    """
    C{String.length()} in Java: UTF-16 code units.
    """
    return len(text.encode("utf-16-le")) // 2


def derivedKey(secretFromSettings: str, subscriberId: str, streamId: str, type: str) -> bytes:
    """
    The key of a subscriber not recorded in the registry, as Ant Media
    derives it: C{secretFromSettings + subscriberId + streamId + type},
    padded with C{X} to a multiple of 8 (Java) characters, as UTF-8 bytes.

    @param secretFromSettings: C{timeTokenSecretForPublish} or
        C{timeTokenSecretForPlay}, by C{type}.
    @param type: C{"publish"} or C{"play"}.
    @raise SecretError: when the setting is empty or the type unknown.
    """
    if not secretFromSettings:
        raise SecretError("The time token secret is not set for this type")
    if type not in TYPES:
        raise SecretError("The type must be publish or play")
    text = secretFromSettings + subscriberId + streamId + type
    remainder = _javaLength(text) % 8
    if remainder:
        text += "X" * (8 - remainder)
    return text.encode("utf-8")


def derivedB32Secret(secretFromSettings: str, subscriberId: str, streamId: str,
                     type: str) -> str:
    """
    L{derivedKey} in Base32 (RFC 4648, with C{=} padding), the form an
    authenticator app takes.
    """
    return base64.b32encode(derivedKey(secretFromSettings, subscriberId, streamId, type)).decode(
        "ascii")


def keyFromB32Secret(b32Secret: object) -> bytes:
    """
    The key of a recorded subscriber: its C{b32Secret} decoded.  Ant Media
    asks for a multiple of 8 characters of C{A-Z 2-7}; its decoder also
    takes lower case, and so does this one.  Trailing C{=} padding is
    allowed (RFC 4648); the total must still be a multiple of 8.

    @raise SecretError: for anything else (not quoting it), or more than
        L{MAX_B32_SECRET} characters.
    """
    if not isinstance(b32Secret, str) or not b32Secret:
        raise SecretError("b32Secret must be a non-empty string")
    if len(b32Secret) > MAX_B32_SECRET:
        raise SecretError("b32Secret must be at most {} characters".format(MAX_B32_SECRET))
    if _B32.fullmatch(b32Secret) is None or len(b32Secret) % 8:
        raise SecretError("b32Secret must be a multiple of 8 characters of A-Z and 2-7")
    try:
        key = base64.b32decode(b32Secret.upper())
    except (ValueError, TypeError):
        raise SecretError("b32Secret must be a multiple of 8 characters of A-Z and 2-7")
    if not key:
        raise SecretError("b32Secret must be a non-empty string")
    return key
