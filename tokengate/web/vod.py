# -*- test-case-name: tests.test_hostile_http -*-
"""
Serving MP4 recordings with bounded Range handling.

twisted.web's L{File} answers a Range header of any number of parts, and its
multipart producer reads a negative length (C{ValueError}, no answer) as
soon as the part separators of one write pass its buffer size: a header of
many small ranges (or two ranges whose first ends near a buffer boundary)
leaves the client without an answer and logs a traceback.

L{RecordingFile} parses the header itself (RFC 9110, section 14), then:

  - a header that does not parse is ignored: 200 with the whole file;
  - ranges that lie past the end are dropped; none left: 416;
  - the rest are sorted and overlapping or adjacent ones merged;
  - more than L{MAX_RANGES} left: ignored, 200 with the whole file (what
    Apache's C{MaxRanges} and nginx's C{max_ranges} do; the whole file is what
    the same viewer could ask for anyway);
  - one range: 206 with C{Content-Range}; several: 206
    C{multipart/byteranges}, produced by L{MultipartProducer}.
"""

from __future__ import annotations

import os
import re
import time
from typing import BinaryIO, Optional

from twisted.web import http
from twisted.web.static import File, NoRangeStaticProducer, SingleRangeStaticProducer, StaticProducer
from twisted.web.server import Request

#: most ranges (after merging) answered as ranges; more get the whole file
MAX_RANGES = 16

_RANGE_SPEC = re.compile(rb"[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*")
#: longer numbers than any file size
_MAX_DIGITS = 19


def parseRanges(header: bytes, size: int) -> Optional[list[tuple[int, int]]]:
    """
    The satisfiable byte ranges of a C{Range} header against a
    representation of C{size} bytes, as sorted, merged C{(start, stop)}
    pairs (C{stop} exclusive).

    @return: None when the header does not parse (it is then ignored);
        an empty list when no range is satisfiable (416).
    """
    unit, eq, specs = header.partition(b"=")
    if not eq or unit.strip(b" \t").lower() != b"bytes":
        return None
    ranges: list[tuple[int, int]] = []
    empty = True
    for spec in specs.split(b","):
        if not spec.strip(b" \t"):
            continue  # RFC 9110: empty list elements are ignored
        empty = False
        m = _RANGE_SPEC.fullmatch(spec)
        if m is None:
            return None
        first, last = m.group(1), m.group(2)
        if len(first) > _MAX_DIGITS or len(last) > _MAX_DIGITS:
            return None
        if first:
            start = int(first)
            if last:
                end = int(last)
                if end < start:
                    return None
                stop = min(end + 1, size)
            else:
                stop = size
            if start >= size:
                continue  # unsatisfiable
        elif last:
            suffix = int(last)
            if suffix == 0:
                continue  # unsatisfiable
            start, stop = max(0, size - suffix), size
        else:
            return None
        ranges.append((start, stop))
    if empty:
        return None
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for start, stop in ranges:
        if merged and start <= merged[-1][1]:
            if stop > merged[-1][1]:
                merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


class MultipartProducer(StaticProducer):
    """
    Writes the parts of a C{multipart/byteranges} answer, at most about
    C{bufferSize} bytes of file per write, never asking the file for a
    negative length.

    @ivar parts: C{(separator, offset, size)} for each part, then the final
        boundary as C{(boundary, 0, 0)}.
    """

    def __init__(self, request: Request, fileObject: BinaryIO,
                 parts: list[tuple[bytes, int, int]]) -> None:
        StaticProducer.__init__(self, request, fileObject)
        self.parts = parts
        self._index = 0
        self._started = False  # the current part's separator is written
        self._written = 0  # of the current part's file bytes

    def start(self) -> None:
        self.request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if not self.request:
            return
        data: list[bytes] = []
        length = 0
        # each turn writes a separator, reads file bytes, or moves to the
        # next part; the loop ends when the buffer is full or all is written
        while length < self.bufferSize and self._index < len(self.parts):
            separator, offset, size = self.parts[self._index]
            if not self._started:
                self._started = True
                data.append(separator)
                length += len(separator)
                if size:
                    self.fileObject.seek(offset)
            want = min(size - self._written, max(self.bufferSize - length, 0))
            if want:
                chunk = self.fileObject.read(want)
                if not chunk:
                    # the file is shorter than when the answer was headed
                    self._abort()
                    return
                data.append(chunk)
                length += len(chunk)
                self._written += len(chunk)
            if self._written == size:
                self._index += 1
                self._started = False
                self._written = 0
        self.request.write(b"".join(data))
        if self._index >= len(self.parts):
            self.request.unregisterProducer()
            self.request.finish()
            self.stopProducing()

    def _abort(self) -> None:
        request = self.request
        self.stopProducing()
        request.unregisterProducer()
        transport = getattr(request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()


class RecordingFile(File):
    """
    An MP4 recording, its Range requests answered by L{parseRanges}.
    """

    def makeProducer(self, request: Request, fileForReading: BinaryIO) -> StaticProducer:
        header = request.getHeader(b"range")
        size = self.getFileSize()
        ranges = parseRanges(header, size) if header is not None else None
        if ranges is None or len(ranges) > MAX_RANGES:
            self._setContentHeaders(request)
            request.setResponseCode(http.OK)
            return NoRangeStaticProducer(request, fileForReading)
        if not ranges:
            request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
            request.setHeader(b"content-range", b"bytes */%d" % (size,))
            request.setHeader(b"content-length", b"0")
            return SingleRangeStaticProducer(request, fileForReading, 0, 0)
        if len(ranges) == 1:
            start, stop = ranges[0]
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (start, stop - 1, size))
            self._setContentHeaders(request, stop - start)
            return SingleRangeStaticProducer(request, fileForReading, start, stop - start)
        boundary = b"%x%x" % (int(time.time() * 1000000), os.getpid())
        contentType = (self.type or "application/octet-stream").encode("ascii")
        parts: list[tuple[bytes, int, int]] = []
        total = 0
        for start, stop in ranges:
            separator = (b"\r\n--" + boundary + b"\r\nContent-Type: " + contentType
                         + b"\r\nContent-Range: bytes %d-%d/%d\r\n\r\n" % (start, stop - 1, size))
            parts.append((separator, start, stop - start))
            total += len(separator) + stop - start
        final = b"\r\n--" + boundary + b"--\r\n"
        parts.append((final, 0, 0))
        total += len(final)
        request.setResponseCode(http.PARTIAL_CONTENT)
        request.setHeader(b"content-type",
                          b'multipart/byteranges; boundary="' + boundary + b'"')
        request.setHeader(b"content-length", b"%d" % (total,))
        return MultipartProducer(request, fileForReading, parts)
