"""
Tests for L{tokengate.access.totp}: RFC 6238 vectors, an independent
implementation (pyotp), Ant Media's secret derivation and the check.
"""

from __future__ import annotations

import base64

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.access.totp import (
    MAX_B32_SECRET,
    SecretError,
    derivedB32Secret,
    derivedKey,
    hotp,
    keyFromB32Secret,
    stepAt,
    totpAt,
    verifyCode,
)

try:
    import pyotp
except ImportError:  # pragma: no cover - the test extra installs it
    pyotp = None  # type: ignore[assignment]

#: RFC 6238 Appendix B, SHA1 rows: (time, 8-digit TOTP), key "12345678901234567890", X = 30
RFC6238_SHA1 = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]

#: RFC 4226 Appendix D: HOTP values of counters 0..9, same key, 6 digits
RFC4226 = ["755224", "287082", "359152", "969429", "338314",
           "254676", "287922", "162583", "399871", "520489"]

RFC_KEY = b"12345678901234567890"

keys = st.binary(min_size=14, max_size=64)
times = st.floats(min_value=0, max_value=2**37, allow_nan=False, allow_infinity=False)
periods = st.integers(min_value=10, max_value=3600)


class VectorTests(SynchronousTestCase):
    def test_rfc6238(self) -> None:
        for t, code in RFC6238_SHA1:
            self.assertEqual(totpAt(RFC_KEY, t, period=30, digits=8), code, t)

    def test_rfc4226(self) -> None:
        self.assertEqual([hotp(RFC_KEY, c) for c in range(10)], RFC4226)

    def test_sixDigitsKeepLeadingZeros(self) -> None:
        """
        A six-digit code is the last six digits of the eight-digit one,
        zeros kept (1111111109 gives 07081804 -> 081804).
        """
        self.assertEqual(totpAt(RFC_KEY, 1111111109, period=30), "081804")

    def test_stepIsFloor(self) -> None:
        self.assertEqual(stepAt(59.999, 60), 0)
        self.assertEqual(stepAt(60, 60), 1)
        self.assertRaises(ValueError, stepAt, -1, 60)
        self.assertRaises(ValueError, stepAt, float("nan"), 60)
        self.assertRaises(ValueError, stepAt, 0, 9)
        self.assertRaises(ValueError, stepAt, 0, True)


class PyotpTests(SynchronousTestCase):
    """
    Against pyotp, an implementation nobody here wrote.
    """

    def setUp(self) -> None:
        if pyotp is None:
            raise self.skipTest("pyotp is not installed (pip install '.[test]')")

    @given(keys, times, st.integers(min_value=10, max_value=120))  # pyotp's range
    def test_sameCodes(self, key: bytes, now: float, period: int) -> None:
        b32 = base64.b32encode(key).decode("ascii")
        self.assertEqual(totpAt(key, now, period), pyotp.TOTP(b32, interval=period).at(now))

    @given(st.text(min_size=1, max_size=20), st.from_regex(r"[a-z0-9]{3,20}", fullmatch=True),
           st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True), st.sampled_from(["publish", "play"]),
           times)
    def test_derivedSecretInAnAuthenticator(self, secret: str, subscriberId: str, streamId: str,
                                            type: str, now: float) -> None:
        """
        The derived Base32 secret, given to pyotp as an authenticator app
        would take it, produces codes that verify.
        """
        b32 = derivedB32Secret(secret, subscriberId, streamId, type)
        code = pyotp.TOTP(b32, interval=60).at(now)
        key = derivedKey(secret, subscriberId, streamId, type)
        self.assertEqual(verifyCode(key, code, now, 60), stepAt(now, 60))


class DerivationTests(SynchronousTestCase):
    def test_antMediaVectors(self) -> None:
        """
        Ant Media's C{TokenFilterTest.testGeneratedSecret}: "secret" +
        "sub1" + "stream1" + "publish" is 24 characters, kept as is;
        "secret123" makes 27, padded with five X.
        """
        self.assertEqual(derivedKey("secret", "sub1", "stream1", "publish"),
                         b"secretsub1stream1publish")
        self.assertEqual(derivedKey("secret123", "sub1", "stream1", "publish"),
                         b"secret123sub1stream1publishXXXXX")
        # base32(1) of coreutils gives the same text
        self.assertEqual(derivedB32Secret("secret", "sub1", "stream1", "publish"),
                         "ONSWG4TFORZXKYRRON2HEZLBNUYXA5LCNRUXG2A=")

    def test_paddingCountsJavaCharacters(self) -> None:
        """
        The padding counts UTF-16 code units (Java's C{String.length()}),
        and the key is UTF-8: "é" is one unit, two bytes; an emoji is two
        units, four bytes.
        """
        # 1 + 2 + 1 + 7 = 11 units (12 bytes) -> 5 X, not 4
        self.assertEqual(derivedKey("\u00e9", "ab", "c", "publish"),
                         "\u00e9abcpublish".encode() + b"X" * 5)
        key = derivedKey("\U0001f600", "ab", "c", "play")  # 2 + 7 units = 9 -> 7 X
        self.assertEqual(key, "\U0001f600abcplay".encode() + b"X" * 7)

    def test_emptySecretOrUnknownType(self) -> None:
        self.assertRaises(SecretError, derivedKey, "", "sub1", "s", "play")
        self.assertRaises(SecretError, derivedKey, "x", "sub1", "s", "publish_play")

    def test_typesDeriveDifferentKeys(self) -> None:
        self.assertNotEqual(derivedKey("s", "sub1", "st", "play"),
                            derivedKey("s", "sub1", "st", "publish"))


class B32SecretTests(SynchronousTestCase):
    def test_decodes(self) -> None:
        self.assertEqual(keyFromB32Secret("JBSWY3DPEHPK3PXP"), base64.b32decode("JBSWY3DPEHPK3PXP"))
        # Ant Media's decoder takes lower case ("mysecret" in testTOTPGenerator)
        self.assertEqual(keyFromB32Secret("mysecret"), base64.b32decode("MYSECRET"))
        self.assertEqual(keyFromB32Secret("ONSWG4TFORZXKYRRON2HEZLBNUYXA5LCNRUXG2A="),
                         b"secretsub1stream1publish")

    def test_refused(self) -> None:
        for bad in ["", "ABC", "ABCDEFG1", "ABCDEFGH ", "ABCDEFG=H", "========", "A=======",
                    "\u0410BCDEFGH", "A" * (MAX_B32_SECRET + 8), None, 12345678]:
            with self.assertRaises(SecretError, msg=repr(bad)) as e:
                keyFromB32Secret(bad)
            if isinstance(bad, str) and bad:
                self.assertNotIn(bad, str(e.exception))


class VerifyTests(SynchronousTestCase):
    KEY = b"secretsub1stream1publish"

    def test_window(self) -> None:
        now = 1_700_000_000.0
        step = stepAt(now, 60)
        for delta in (-1, 0, 1):
            code = hotp(self.KEY, step + delta)
            self.assertEqual(verifyCode(self.KEY, code, now, 60), step + delta)
            if delta:
                self.assertIsNone(verifyCode(self.KEY, code, now, 60, window=0))
        self.assertEqual(verifyCode(self.KEY, hotp(self.KEY, step), now, 60, window=0), step)

    def test_notCodes(self) -> None:
        now = 1_700_000_000.0
        code = totpAt(self.KEY, now)
        for bad in [int(code), " " + code[1:], code + " ", "+" + code[1:], code[:5],
                    code + "0", "\u0661" * 6, code.encode(), None]:
            self.assertIsNone(verifyCode(self.KEY, bad, now), repr(bad))

    def test_windowBounded(self) -> None:
        self.assertRaises(ValueError, verifyCode, self.KEY, "123456", 0.0, 60, 2)

    @given(keys, times, periods)
    def test_verifiesAtItsTimeOnly(self, key: bytes, now: float, period: int) -> None:
        """
        The code for time t verifies at t (its own step); two periods
        before or after it does not (unless, with chance 1e-6 per step, a
        neighbouring step has the same code, which is left out).
        """
        code = totpAt(key, now, period)
        step = stepAt(now, period)
        self.assertEqual(verifyCode(key, code, now, period), step)
        for sign in (-1, 1):
            later = now + sign * 2 * period
            if later < 0:
                continue
            around = stepAt(later, period)
            assume(all(hotp(key, s) != code for s in range(around - 1, around + 2) if s >= 0))
            self.assertIsNone(verifyCode(key, code, later, period))
