# -*- test-case-name: tests.test_media_codecs -*-
"""
Shared pieces of the codec modules: the buffer type, zero-copy views of
it, and MSB-first bit reading and writing with exp-Golomb codes (for
configuration records only, not per frame).

Every malformed input raises L{MediaError} and nothing else.
"""

from __future__ import annotations

from typing import Union

from tokengate.media.errors import MediaError

__all__ = ["Buffer", "as_bytes", "as_view", "BitReader", "BitWriter"]

#: Anything exposing the buffer protocol as bytes: C{bytes}, C{bytearray}
#: or C{memoryview}.
Buffer = Union[bytes, bytearray, memoryview]


def as_bytes(data: Buffer) -> bytes:
    """C{data} as C{bytes}, without a copy when it already is."""
    if isinstance(data, bytes):
        return data
    try:
        return bytes(data)
    except TypeError as e:
        raise MediaError(f"expected a bytes-like object, got {type(data).__name__}") from e


def as_view(data: Buffer) -> memoryview:
    """A flat, byte-format C{memoryview} of C{data}."""
    try:
        view = memoryview(data)
    except TypeError as e:
        raise MediaError(f"expected a bytes-like object, got {type(data).__name__}") from e
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class BitReader:
    """MSB-first bit reader with exp-Golomb codes, over an immutable buffer."""

    __slots__ = ("_value", "_nbits", "pos")

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._nbits = len(data) * 8
        self.pos = 0

    @property
    def remaining(self) -> int:
        return self._nbits - self.pos

    def u(self, n: int) -> int:
        end = self.pos + n
        if end > self._nbits:
            raise MediaError("truncated bitstream")
        self.pos = end
        return (self._value >> (self._nbits - end)) & ((1 << n) - 1)

    def flag(self) -> bool:
        return self.u(1) == 1

    def ue(self) -> int:
        left = self._nbits - self.pos
        rest = self._value & ((1 << left) - 1)
        if not rest:
            raise MediaError("truncated exp-Golomb code")
        zeros = left - rest.bit_length()
        if zeros > 31:
            raise MediaError("exp-Golomb code longer than 32 bits")
        self.pos += zeros
        return self.u(zeros + 1) - 1

    def se(self) -> int:
        k = self.ue()
        return (k + 1) >> 1 if k & 1 else -(k >> 1)


class BitWriter:
    """MSB-first bit writer with exp-Golomb codes."""

    __slots__ = ("_value", "_nbits")

    def __init__(self) -> None:
        self._value = 0
        self._nbits = 0

    def u(self, n: int, v: int) -> None:
        if v < 0 or v >> n:
            raise MediaError(f"value {v} does not fit in {n} bits")
        self._value = (self._value << n) | v
        self._nbits += n

    def flag(self, v: bool) -> None:
        self.u(1, 1 if v else 0)

    def ue(self, v: int) -> None:
        if not 0 <= v < 0xFFFFFFFF:
            raise MediaError(f"value {v} out of exp-Golomb range")
        n = (v + 1).bit_length()
        self.u(2 * n - 1, v + 1)

    def se(self, v: int) -> None:
        self.ue(2 * v - 1 if v > 0 else -2 * v)

    def align_zero(self) -> None:
        self.u(-self._nbits % 8, 0)

    def rbsp_trailing_bits(self) -> None:
        self.u(1, 1)
        self.align_zero()

    def getvalue(self) -> bytes:
        if self._nbits % 8:
            raise MediaError("bit writer not byte aligned")
        return self._value.to_bytes(self._nbits // 8, "big")
