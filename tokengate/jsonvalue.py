# -*- test-case-name: tests.test_jsonvalue -*-
"""
The one reader of client-supplied JSON, and typed checks of the values in
it (and of numbers written as text: AMS's numeric settings, REST path and
query integers).

L{readJSON} is for every JSON document a client sends (REST bodies,
WebSocket messages, cluster events): it returns a value or raises
L{JSONError}, never anything else, whatever the input.  It refuses, before
anything recurses:

  - input that is not UTF-8;
  - nesting deeper than C{maxDepth} (a linear scan of the brackets outside
    strings comes first, so a 100,000-deep array costs one pass, not a
    C{RecursionError});
  - number literals longer than L{MAX_NUMBER_LENGTH} characters (Python's
    int-from-text limit would otherwise raise at 4,300 digits, and nothing
    tokengate reads needs more than 20 digits) and numbers that overflow a
    float to infinity;
  - C{NaN}, C{Infinity} and C{-Infinity} (not JSON, though Python accepts
    them), duplicate keys in an object (two readers could disagree on which
    one counts) and lone UTF-16 surrogates in strings (they cannot be
    encoded again).

The field helpers (L{requireObject}, L{boolValue}, L{intValue},
L{floatValue}, L{stringValue}, L{decimalText}) raise the same error with a
message naming the field; a caller answers it protocol-correctly (REST: 400
with the reference C{Result}; WebSocket: C{invalid_json}).
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Optional, Union
from urllib.parse import urlsplit

#: what L{readJSON} returns (a recursive alias mypy can check)
JSONValue = Union[None, bool, int, float, str, list["JSONValue"], dict[str, "JSONValue"]]

#: the deepest nesting a document may have unless the caller says otherwise
MAX_DEPTH = 32
#: the longest number literal (sign, digits, point and exponent included)
MAX_NUMBER_LENGTH = 40

# A JSON string, its closing quote optional so that a match never fails (an
# unterminated string runs to the end, where json.loads fails too): one pass,
# no backtracking, whatever the quotes and backslashes.  Outside strings a
# valid document has no quote, so over the prefix json.loads accepts this
# finds the same strings it does, hence the brackets it nests.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# an escaped surrogate (\ud800-\udfff); raw surrogates cannot come from UTF-8
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_DECIMAL = re.compile(r"[0-9]+")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_URL_CHARS = re.compile(r"[\x21-\x7e]+")

#: the longest URL accepted (L{urlValue})
MAX_URL = 2048


class JSONError(ValueError):
    """
    A client's JSON (or a value in it) that tokengate refuses.  The message
    says why in words fit for the client: it never quotes the input.

    @ivar field: the name of the refused field, or L{None} when the
        document itself is refused.
    """

    def __init__(self, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.field = field

    @property
    def kind(self) -> str:
        """
        C{"field"} for a refused field, C{"json"} for a refused document (a
        metrics label).
        """
        return "json" if self.field is None else "field"


def _deeperThan(text: str, limit: int) -> bool:
    """
    Whether arrays and objects nest deeper than C{limit} in C{text},
    counting only brackets outside strings: linear time, no recursion.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if brackets.count("[") + brackets.count("{") <= limit:
        return False
    return max(accumulate(1 if c in "[{" else -1 for c in brackets)) > limit


def _refuseConstant(name: str) -> float:
    raise JSONError("NaN and Infinity are not JSON numbers")


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_LENGTH:
        raise JSONError("A number is too long")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_LENGTH:
        raise JSONError("A number is too long")
    value = float(text)
    if not math.isfinite(value):
        raise JSONError("A number is out of range")
    return value


def _object(pairs: list[tuple[str, JSONValue]]) -> dict[str, JSONValue]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise JSONError("An object has a duplicate key")
    return obj


def _checkStrings(value: JSONValue) -> None:
    """
    Refuse lone surrogates anywhere in C{value} (an explicit stack: the
    depth is already bounded, but this needs no recursion at all).
    """
    stack: list[JSONValue] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise JSONError("A string holds an unpaired surrogate")
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())


def readJSON(data: Union[bytes, bytearray, memoryview, str],
             maxDepth: int = MAX_DEPTH) -> JSONValue:
    """
    Parse one client-supplied JSON document.

    @param data: the document, UTF-8 bytes or text (its size must already
        be bounded by the transport: a request body cap, a message cap).
    @param maxDepth: the deepest nesting of arrays and objects accepted
        (C{[]} and C{{}} are depth 1, a scalar is depth 0).
    @return: the value.
    @raise JSONError: for anything else than a JSON document within the
        limits above; never any other exception.
    """
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise JSONError("Not UTF-8")
    try:
        if _deeperThan(text, maxDepth):
            raise JSONError("JSON nested deeper than {} levels".format(maxDepth))
        value: JSONValue = json.loads(
            text,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_refuseConstant,
            object_pairs_hook=_object,
        )
        if _SURROGATE_ESCAPE.search(text) is not None:
            _checkStrings(value)
    except JSONError:
        raise
    except (ValueError, RecursionError, MemoryError):
        # json.JSONDecodeError is a ValueError; RecursionError cannot happen
        # within the depth limit, but fail closed if it ever did.
        raise JSONError("Malformed JSON")
    return value


# --- typed values -------------------------------------------------------------------------


def requireObject(value: object, what: str) -> dict[str, JSONValue]:
    """
    @return: C{value} when it is a JSON object.
    @raise JSONError: C{"<what> must be a JSON object"} otherwise.
    """
    if not isinstance(value, dict):
        raise JSONError("{} must be a JSON object".format(what))
    return value


def boolValue(value: object, name: str) -> bool:
    """
    @return: C{value} when it is C{true} or C{false}.
    @raise JSONError: naming C{name} otherwise.
    """
    if not isinstance(value, bool):
        raise JSONError("{} must be true or false".format(name), name)
    return value


def intValue(value: object, name: str, low: int, high: int) -> int:
    """
    @return: C{value} when it is a JSON integer in [C{low}, C{high}].
    @raise JSONError: naming C{name} and the range otherwise (C{true} is not
        an integer, nor is C{2.0}).
    """
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise JSONError("{} must be an integer from {} to {}".format(name, low, high), name)
    return value


def floatValue(value: object, name: str, low: float, high: float) -> float:
    """
    @return: C{value} as a float when it is a finite JSON number in
        [C{low}, C{high}].
    @raise JSONError: naming C{name} and the range otherwise.
    """
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not low <= value <= high):
        raise JSONError("{} must be a number from {:g} to {:g}".format(name, low, high), name)
    return float(value)


def stringValue(value: object, name: str, maxLength: int, allowControl: bool = False) -> str:
    """
    @return: C{value} when it is a string of at most C{maxLength}
        characters and (unless C{allowControl}) no control characters.
    @raise JSONError: naming C{name} otherwise.
    """
    if not isinstance(value, str):
        raise JSONError("{} must be a string".format(name), name)
    if len(value) > maxLength:
        raise JSONError("{} must be at most {} characters".format(name, maxLength), name)
    if not allowControl and _CONTROL.search(value) is not None:
        raise JSONError("{} must not contain control characters".format(name), name)
    return value


def urlValue(value: object, name: str) -> str:
    """
    @return: C{value} when it is an absolute C{http} or C{https} URL with a
        host, printable ASCII, at most L{MAX_URL} characters (the URLs a
        setting names for tokengate to call: C{jwksURL}, the webhooks).
    @raise JSONError: naming C{name} otherwise (not quoting the URL, which
        may carry a key).
    """
    message = "{} must be an http or https URL".format(name)
    if (not isinstance(value, str) or not value or len(value) > MAX_URL
            or not _URL_CHARS.fullmatch(value)):
        raise JSONError(message, name)
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError for a bad port
    except ValueError:
        raise JSONError(message, name)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JSONError(message, name)
    return value


def decimalText(text: object, name: str, low: int, high: int) -> int:
    """
    An integer written as text: ASCII digits only (no sign, no spaces, no
    C{²} or other Unicode digits that C{int()} or C{str.isdigit()} take),
    within [C{low}, C{high}] (C{low >= 0}).  For REST path and query
    integers and for numeric settings the reference server keeps as strings.

    @raise JSONError: naming C{name} and the range otherwise.
    """
    if (not isinstance(text, str) or len(text) > len(str(high))
            or _DECIMAL.fullmatch(text) is None or not low <= int(text) <= high):
        raise JSONError("{} must be an integer from {} to {}".format(name, low, high), name)
    return int(text)


def optionalDecimalText(text: Optional[str], name: str, low: int, high: int) -> Optional[int]:
    """
    L{decimalText}, or L{None} for L{None}.
    """
    return None if text is None else decimalText(text, name, low, high)
