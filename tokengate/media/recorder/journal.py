# -*- test-case-name: tests.test_media_recorder -*-
"""
The crash-safe files of a recording in progress: the C{.rec} directory's
journal (C{index}), spool (C{media.spool}) and C{config}, written by
L{JournalWriter} on a worker thread and read back by L{journal_rows} and
L{read_config}.  The layout is described in L{tokengate.media.recorder}.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import struct
import time
import zlib
from typing import Any, Iterator, Optional

from tokengate.media.hub import AUDIO, VIDEO

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

#: Track numbers in the journal, and the MP4 track ids.
VIDEO_TRACK = 1
AUDIO_TRACK = 2

JOURNAL_MAGIC = b"TGRJ\x00\x00\x00\x01"
_ROW_HEAD = struct.Struct("<BBHIQqiI")
_CRC = struct.Struct("<I")
ROW_SIZE = _ROW_HEAD.size + _CRC.size  # 36
_SYNC = 1

INDEX = "index"
SPOOL = "media.spool"
CONFIG = "config"
OUT_TMP = "out.mp4.tmp"

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}\Z")
REC_DIR = re.compile(r"(.+)\.([0-9]{1,20})\.rec\Z")

#: iovecs per writev call
_IOV_MAX = 512

#: emitted on the reactor thread.
Note = tuple[str, str, dict[str, Any]]


def valid_name(name: str) -> bool:
    """
    Whether C{name} may be an application or stream id on disk: 1 to 200 of
    C{[A-Za-z0-9_.-]}, no C{..}, and not starting with a dot.
    """
    return (
        isinstance(name, str)
        and _NAME.match(name) is not None
        and ".." not in name
        and not name.startswith(".")
    )


def _write_all(fd: int, views: list[memoryview]) -> None:
    """Write every buffer, in order, with few system calls."""
    pending = [v for v in views if len(v)]
    i = 0
    while i < len(pending):
        n = os.writev(fd, pending[i : i + _IOV_MAX])
        if n <= 0:
            raise OSError(errno.EIO, "writev wrote nothing")
        while n:
            v = pending[i]
            if n >= len(v):
                n -= len(v)
                i += 1
            else:
                pending[i] = v[n:]
                n = 0


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def lock_journal(fd: int) -> bool:
    """Take an exclusive advisory lock on C{fd} without waiting."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class JournalWriter:
    """
    The files of one recording.  Only the writer thread touches it (the
    reactor reads C{dir} once the final write is done).
    """

    def __init__(self, appDir: str, streamId: str, started: int, fsyncInterval: float) -> None:
        self.appDir = appDir
        self.streamId = streamId
        self.started = started
        self.fsyncInterval = fsyncInterval
        self.dir: Optional[str] = None
        self._spool = -1
        self._journal = -1
        self._lastSync = 0.0
        self.closed = False

    def _open(self) -> None:
        os.makedirs(self.appDir, exist_ok=True)
        started = self.started
        while True:
            path = os.path.join(self.appDir, f"{self.streamId}.{started}.rec")
            try:
                os.mkdir(path)
                break
            except FileExistsError:
                started += 1
        self.dir = path
        self.started = started
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self._journal = os.open(os.path.join(path, INDEX), flags, 0o644)
        lock_journal(self._journal)  # recovery in another process leaves a locked .rec alone
        os.write(self._journal, JOURNAL_MAGIC)
        self._spool = os.open(os.path.join(path, SPOOL), flags, 0o644)
        fsync_dir(self.appDir)
        self._lastSync = time.monotonic()

    def _writeConfig(self, config: dict[str, Any]) -> None:
        assert self.dir is not None
        config = dict(config, started=self.started)
        tmp = os.path.join(self.dir, CONFIG + ".tmp")
        with open(tmp, "w", encoding="ascii") as f:
            json.dump(config, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.dir, CONFIG))
        fsync_dir(self.dir)

    def write(self, config: Optional[dict[str, Any]], views: list[memoryview],
              rows: list[tuple[int, int, int, int, int, bool]], final: bool) -> None:
        """
        Append one batch: the configuration if it changed, the sample bytes,
        then their journal rows; fsync when due, and close after the final
        batch.  A failure closes the files and propagates.
        """
        if self.closed:
            if views or rows:
                raise OSError(errno.EBADF, "the recording's files are closed")
            return
        try:
            if self.dir is None:
                if config is None and not rows:
                    self.closed = final
                    return
                self._open()
            if config is not None:
                self._writeConfig(config)
            if rows:
                _write_all(self._spool, views)
                pack, crc32, crc = _ROW_HEAD.pack, zlib.crc32, _CRC.pack
                out = []
                for (track, offset, size, dts, cto, sync), view in zip(rows, views):
                    head = pack(track, _SYNC if sync else 0, 0, size, offset, dts, cto,
                                crc32(view))
                    out.append(head)
                    out.append(crc(crc32(head)))
                _write_all(self._journal, [memoryview(b"".join(out))])
            now = time.monotonic()
            if final or now - self._lastSync >= self.fsyncInterval:
                os.fsync(self._spool)
                os.fsync(self._journal)
                self._lastSync = now
        except BaseException:
            self.close()
            raise
        if final:
            self.close()

    def close(self) -> None:
        self.closed = True
        for fd in (self._spool, self._journal):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._spool = self._journal = -1


class Corrupt(Exception):
    """A .rec directory that cannot be made into a recording."""


Row = tuple[int, int, int, int, int, bool]  # track, offset, size, dts ms, cto ms, sync

#: Journal rows read at a time.
_JOURNAL_READ = 4096


def journal_rows(recdir: str, verify: bool = False) -> Iterator[Row]:
    """
    The complete, consistent rows of a recording's journal, in order, read
    L{_JOURNAL_READ} rows at a time.  Reading stops at the first torn or
    damaged row, at a row whose bytes are not all in the spool, and (with
    C{verify}) at a row whose bytes do not match its checksum; everything
    before it is kept.  L{Corrupt} for a journal that is not one.
    """
    try:
        f = open(os.path.join(recdir, INDEX), "rb")
    except FileNotFoundError:
        return
    with f:
        magic = f.read(len(JOURNAL_MAGIC))
        if len(magic) < len(JOURNAL_MAGIC):
            if JOURNAL_MAGIC.startswith(magic):
                return
            raise Corrupt("the journal has no header")
        if magic != JOURNAL_MAGIC:
            raise Corrupt("the journal has an unknown header")
        try:
            spoolSize = os.path.getsize(os.path.join(recdir, SPOOL))
        except FileNotFoundError:
            spoolSize = 0
        spool = (open(os.path.join(recdir, SPOOL), "rb", buffering=1 << 20)
                 if verify and spoolSize else None)
        unpack, crcOf, crc32 = _ROW_HEAD.unpack_from, _CRC.unpack_from, zlib.crc32
        headSize, want = _ROW_HEAD.size, ROW_SIZE * _JOURNAL_READ
        expected = 0
        try:
            while True:
                data = f.read(want)
                usable = len(data) - len(data) % ROW_SIZE
                view = memoryview(data)
                for i in range(0, usable, ROW_SIZE):
                    if crcOf(data, i + headSize)[0] != crc32(view[i : i + headSize]):
                        return
                    track, flags, _, size, offset, dts, cto, dataCrc = unpack(data, i)
                    if track not in (VIDEO_TRACK, AUDIO_TRACK) or offset != expected:
                        return
                    if offset + size > spoolSize:
                        return
                    if spool is not None and crc32(spool.read(size)) != dataCrc:
                        return
                    yield (track, offset, size, dts, cto, bool(flags & _SYNC))
                    expected = offset + size
                if len(data) < want:
                    return
        finally:
            if spool is not None:
                spool.close()


def read_journal(recdir: str, verify: bool = False) -> list[Row]:
    """Every row L{journal_rows} reads, in a list (for small journals and tests)."""
    return list(journal_rows(recdir, verify))


def read_config(recdir: str) -> Optional[dict[str, Optional[bytes]]]:
    """The codec configurations of a recording, or None without a config file."""
    try:
        with open(os.path.join(recdir, CONFIG), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        config = json.loads(raw)
        out = {}
        for kind in (VIDEO, AUDIO):
            value = config.get(kind)
            out[kind] = None if value is None else base64.b64decode(value, validate=True)
        return out
    except (ValueError, TypeError, AttributeError) as e:
        raise Corrupt(f"unreadable config: {e}") from e
