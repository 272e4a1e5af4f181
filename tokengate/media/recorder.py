# -*- test-case-name: tests.test_media_recorder -*-
"""
MP4 recording of live streams, for VOD.

A :class:`Recorder` is a hub subscriber (:class:`~tokengate.media.hub.ISubscriber`).
While the stream is live it appends every sample to a spool and a journal;
when the stream ends it turns them into a standard progressive MP4 (moov
before mdat).  A :class:`RecordingManager` owns the directory, the worker
threads and the recorders, and recovers recordings cut short by a crash.

Files, for a recording of C{app}/C{streamId} that started at C{ms} (epoch
milliseconds)::

    {directory}/{app}/{streamId}.mp4            the finished recording
    {directory}/{app}/{streamId}.{ms}.rec/      while recording or finalizing
        index          the journal: an 8-byte magic, then fixed 36-byte rows
        media.spool    the sample bytes, appended in arrival order
        config         JSON: the avcC and the AudioSpecificConfig (base64)
        track1.samples, track2.samples
                       scratch: each track's sample table while finalizing
        out.mp4.tmp    the MP4 being written at the end
        attempts       how many times start-up recovery tried it
    {directory}/{app}/{streamId}.{ms}.corrupt/  a .rec that could not be read
    {directory}/{app}/{streamId}.{ms}.failed/   a .rec recovery gave up on

A journal row is little-endian ``track u8, flags u8 (1: sync), u16 0,
size u32, offset u64, dts i64 (ms, as received), cto i32 (ms), crc32 of the
sample bytes, crc32 of the 32 bytes before``.  Rows are appended after their
bytes, so a crash leaves at worst a torn last row and spool bytes no row
describes; both are ignored.  Sample durations are not journaled: they are
derived at the end from the next sample's time.

Threading: the reactor thread only queues memoryviews of the frame bodies
and row tuples.  All file I/O runs off the reactor thread, on two
one-thread pools: the *writer* appends batches (every C{flushInterval}
seconds, or sooner once C{flushBytes} are queued) and fsyncs the spool and
then the journal every C{fsyncInterval}; the *finalizer* writes MP4s and
runs recovery, so that writing a long recording's MP4 does not hold up the
live recordings' appends.  A recording whose queue (queued plus being
written) exceeds C{maxQueueBytes}, or whose writes fail, is stopped with a
logged error; what already reached the disk is still finalized.

Finishing takes memory bounded by a block size, not by the number of
samples: the journal is read a block of rows at a time, each track's table
goes to its scratch file (L{_TrackFile}) and is retimed there in place, and
L{write_progressive_mp4} reads it back a block at a time as a
L{SampleSource} (about 5 MB in all, for any length).  Start-up recovery
tries a C{.rec} at most L{MAX_RECOVERY_ATTEMPTS} times (each counted before
it starts, so a crash during it counts), then renames it C{.failed}.

Finishing: the MP4 is written to C{out.mp4.tmp} inside the C{.rec}
directory, fsynced, then renamed over C{{streamId}.mp4}: a recording
B{replaces} any older recording of the same stream id (a reader that has the
old file open keeps reading the old file).  Recordings finish in the order
they ended (one finalizer thread), so the latest publication wins.  The
C{.rec} directory is deleted last, so a crash at any point leaves either the
old file and a C{.rec} to recover, or the new file.

Each publication gets its own C{.rec} directory, so a republication of the
same id while the previous one is still being finalized does not collide.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import re
import shutil
import struct
import sys
import time
import zlib
from array import array
from itertools import islice
from operator import sub
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Optional

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from tokengate.logsafe import Logger, loggable
from .codecs import AAC_RAW, AVC_NALU, AudioSpecificConfig, parse_audio_tag, parse_video_tag
from .errors import MediaError
from .fmp4 import SampleSource, SampleTable, Track, file_reader, write_progressive_mp4
from .hub import AUDIO, VIDEO, ISubscriber, LiveStream

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["Recorder", "RecordingManager", "RecordingRefused", "valid_name"]

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
_REC_DIR = re.compile(r"(.+)\.([0-9]{1,20})\.rec\Z")

#: Bookkeeping (a memoryview and a row tuple) counted against the queue
#: bound for each queued sample.
_ROW_COST = 384
#: A timestamp jump larger than this (either way) within one track is a
#: discontinuity (the publisher restarted its clock): the timeline carries on.
MAX_JUMP_MS = 10_000
#: A .rec directory without a journal is left alone this long (it may be
#: being created), then removed.
_EMPTY_GRACE = 60.0
#: iovecs per writev call
_IOV_MAX = 512

# Recorder states
RECORDING = "recording"
ENDING = "ending"
FINALIZING = "finalizing"
DONE = "done"

#: (level, format, fields): log events collected in worker threads and
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


class RecordingRefused(ValueError):
    """
    A stream that cannot be recorded: its application or stream id cannot
    be a file name.  The message shows the name escaped and truncated, so
    it is safe to log.
    """


def _check(name: str, what: str) -> str:
    if not valid_name(name):
        shown = loggable(name if isinstance(name, str) else repr(name), 64)
        raise RecordingRefused(f"{what} {shown} cannot name a recording")
    return name


# ---------------------------------------------------------------------------
# Worker side: appending
# ---------------------------------------------------------------------------


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


def _fsync_dir(path: str) -> None:
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


def _lock(fd: int) -> bool:
    """Take an exclusive advisory lock on C{fd} without waiting."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class _Disk:
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
        _lock(self._journal)  # recovery in another process leaves a locked .rec alone
        os.write(self._journal, JOURNAL_MAGIC)
        self._spool = os.open(os.path.join(path, SPOOL), flags, 0o644)
        _fsync_dir(self.appDir)
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
        _fsync_dir(self.dir)

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


# ---------------------------------------------------------------------------
# Worker side: finalizing and recovering
# ---------------------------------------------------------------------------


class _Corrupt(Exception):
    """A .rec directory that cannot be made into a recording."""


Row = tuple[int, int, int, int, int, bool]  # track, offset, size, dts ms, cto ms, sync

#: Journal rows read at a time.
_JOURNAL_READ = 4096
#: Samples per block of a track file (see L{_TrackFile}).
_BLOCK = 8192
#: How many times start-up recovery tries one .rec directory before moving
#: it aside as C{.failed}.
MAX_RECOVERY_ATTEMPTS = 3
ATTEMPTS = "attempts"
#: Scratch files of a finalization, in the .rec directory.
_TRACK_FILE = "track{}.samples"


def journal_rows(recdir: str, verify: bool = False) -> Iterator[Row]:
    """
    The complete, consistent rows of a recording's journal, in order, read
    L{_JOURNAL_READ} rows at a time.  Reading stops at the first torn or
    damaged row, at a row whose bytes are not all in the spool, and (with
    C{verify}) at a row whose bytes do not match its checksum; everything
    before it is kept.  L{_Corrupt} for a journal that is not one.
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
            raise _Corrupt("the journal has no header")
        if magic != JOURNAL_MAGIC:
            raise _Corrupt("the journal has an unknown header")
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
        raise _Corrupt(f"unreadable config: {e}") from e


def _aac_frame_length(asc: bytes) -> int:
    """Samples per AAC frame at the ASC's sampling frequency: 1024, or 960."""
    parsed = AudioSpecificConfig.parse(asc)
    general_audio = {1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23}
    if parsed.object_type in general_audio and parsed.tail_bits:
        if (parsed.tail >> (parsed.tail_bits - 1)) & 1:  # frameLengthFlag
            return 960
    return 1024


class _TrackFile:
    """
    One track's samples, kept in a seekable binary file in blocks of
    C{block} samples rather than in memory.  Within a block the columns
    follow each other: offsets, sizes, times and composition offsets
    (native int64), then sync flags (a byte each); only the last block may
    be short.  Appending holds one block; reading returns one block.
    """

    _WIDTH = 4 * 8 + 1  # bytes per sample

    def __init__(self, f: BinaryIO, block: int = _BLOCK) -> None:
        self._f = f
        self.block = block
        self.count = 0
        self._pending = self._empty()

    @staticmethod
    def _empty() -> tuple["array[int]", ...]:
        return (array("q"), array("q"), array("q"), array("q"), array("B"))

    def append(self, offset: int, size: int, t: int, cto: int, sync: bool) -> None:
        offsets, sizes, times, ctos, syncs = self._pending
        offsets.append(offset)
        sizes.append(size)
        times.append(t)
        ctos.append(cto)
        syncs.append(sync)
        self.count += 1
        if len(syncs) == self.block:
            self.flush()

    def flush(self) -> None:
        """Write the pending (last) block out; call before reading."""
        if len(self._pending[4]):
            self._f.seek(0, os.SEEK_END)
            self._f.write(b"".join(column.tobytes() for column in self._pending))
            self._pending = self._empty()

    @property
    def blocks(self) -> int:
        return -(-self.count // self.block)

    def _span(self, k: int) -> tuple[int, int]:
        return k * self.block * self._WIDTH, min(self.block, self.count - k * self.block)

    def read(self, k: int) -> tuple["array[int]", ...]:
        """Block C{k}'s columns: offsets, sizes, times, composition offsets, sync flags."""
        start, m = self._span(k)
        self._f.seek(start)
        data = self._f.read(self._WIDTH * m)
        if len(data) != self._WIDTH * m:
            raise OSError(errno.EIO, "a track file is shorter than written")
        view, q = memoryview(data), 8 * m
        columns = self._empty()
        for i in range(4):
            columns[i].frombytes(view[i * q : (i + 1) * q])
        columns[4].frombytes(view[4 * q :])
        return columns

    def time(self, k: int) -> int:
        """The time of block C{k}'s first sample."""
        start, m = self._span(k)
        self._f.seek(start + 2 * 8 * m)
        return int.from_bytes(self._f.read(8), sys.byteorder, signed=True)

    def rewrite(self, k: int, column: int, values: "array[int]") -> None:
        """Replace block C{k}'s column C{column} (0 to 4)."""
        start, m = self._span(k)
        assert len(values) == m
        self._f.seek(start + column * 8 * m)
        self._f.write(values.tobytes())


class _TrackTable:
    """
    A L{SampleSource} over a retimed L{_TrackFile}: each sample lasts until
    the next one, the last one C{lastDuration}.
    """

    def __init__(self, file: _TrackFile, lastDuration: int) -> None:
        self._file = file
        self._lastDuration = lastDuration

    def __len__(self) -> int:
        return self._file.count

    def blocks(self) -> Iterator[SampleTable]:
        f = self._file
        n = f.blocks
        for k in range(n):
            offsets, sizes, dts, ctos, sync = f.read(k)
            following = f.time(k + 1) if k + 1 < n else dts[-1] + self._lastDuration
            durations = array("q", map(sub, islice(dts, 1, None), dts))
            durations.append(following - dts[-1])
            yield SampleTable.from_columns(offsets, sizes, dts, durations, ctos, sync)


def _video_clock(base: int) -> Callable[[int], int]:
    """Milliseconds to strictly increasing 90 kHz decode times."""
    previous = -1 << 63

    def clock(t: int) -> int:
        nonlocal previous
        d = (t - base) * 90
        if d <= previous:
            d = previous + 1
        previous = d
        return d

    return clock


def _audio_clock(base: int, rate: int, frame: int) -> Callable[[int], int]:
    """
    Milliseconds to decode times at the sampling rate, snapped to whole
    frames while the timestamps agree within half a frame.
    """
    previous = -1 << 63
    expected: Optional[int] = None
    half = frame // 2

    def clock(t: int) -> int:
        nonlocal previous, expected
        actual = ((t - base) * rate + 500) // 1000
        d = expected if expected is not None and abs(actual - expected) <= half else actual
        if d <= previous:
            d = previous + 1
        previous = d
        expected = d + frame
        return d

    return clock


def track_tables(
    rows: Iterable[Row],
    video: Optional[bytes],
    audio: Optional[bytes],
    scratch: Callable[[int], BinaryIO],
) -> list[tuple[Track, SampleSource]]:
    """
    The MP4 tracks and sample tables for journal rows (in arrival order),
    kept in the files C{scratch(track number)} opens (read-write, empty),
    so that memory does not depend on how many rows there are: one pass
    places the rows, one retimes each track in place.

    Timestamps are rebased so that the earliest sample is at 0.  A jump of
    more than L{MAX_JUMP_MS} within a track (a publisher restarting its
    clock) continues the timeline after the newest sample so far.  Video
    starts at its first sync sample and runs at 90 kHz with strictly
    increasing decode times; each sample lasts until the next, the last one
    the average.  Audio runs at its sampling rate; decode times snap to
    whole AAC frames while the millisecond timestamps agree within half a
    frame, so jitter does not make uneven durations; the last frame lasts a
    frame.
    """
    tracks: dict[int, Track] = {}
    if video:
        tracks[VIDEO_TRACK] = Track.video_avc(VIDEO_TRACK, video)
    if audio:
        tracks[AUDIO_TRACK] = Track.audio_aac(AUDIO_TRACK, audio)
    files = {number: _TrackFile(scratch(number)) for number in tracks}
    shift = 0
    last: dict[int, int] = {}
    step: dict[int, int] = {}
    firsts: list[int] = []
    newest: Optional[int] = None
    for number, offset, size, dts, cto, sync in rows:
        out = files.get(number)
        if out is None:
            continue
        if number == VIDEO_TRACK and not out.count and not sync:
            continue
        t = dts + shift
        prev = last.get(number)
        if prev is None:
            firsts.append(t)
        elif abs(t - prev) > MAX_JUMP_MS:
            assert newest is not None
            target = newest + step.get(number, 20)
            shift += target - t
            t = target
        if prev is not None and t > prev:
            step[number] = t - prev
        last[number] = t
        newest = t if newest is None or t > newest else newest
        out.append(offset, size, t, cto, sync)
    if not firsts:
        return []
    base = min(firsts)
    result: list[tuple[Track, SampleSource]] = []
    for number, track in tracks.items():
        f = files[number]
        f.flush()
        n = f.count
        if not n:
            continue
        if number == VIDEO_TRACK:
            clock = _video_clock(base)
        else:
            frame = _aac_frame_length(track.config)
            clock = _audio_clock(base, track.timescale, frame)
        for k in range(f.blocks):
            _, _, times, ctos, _ = f.read(k)
            f.rewrite(k, 2, array("q", map(clock, times)))
            if number == VIDEO_TRACK:
                f.rewrite(k, 3, array("q", [c * 90 for c in ctos]))
            else:  # audio: no composition offsets, every frame a sync sample
                f.rewrite(k, 3, array("q", bytes(8 * len(ctos))))
                f.rewrite(k, 4, array("B", b"\x01" * len(ctos)))
        if number == VIDEO_TRACK:
            first, final = f.time(0), f.read(f.blocks - 1)[2][-1]
            lastDuration = max(1, (final - first) // (n - 1) if n > 1 else 3600)
        else:
            lastDuration = frame
        result.append((track, _TrackTable(f, lastDuration)))
    return result


def build_tracks(
    rows: Iterable[Row], video: Optional[bytes], audio: Optional[bytes]
) -> list[tuple[Track, SampleTable]]:
    """L{track_tables} in memory, as whole L{SampleTable}s (for tests and small inputs)."""
    result = []
    for track, source in track_tables(rows, video, audio, lambda _: io.BytesIO()):
        table = SampleTable()
        for block in source.blocks():
            for column in SampleTable.__slots__:
                getattr(table, column).extend(getattr(block, column))
        result.append((track, table))
    return result


def _move_aside(recdir: str, suffix: str = ".corrupt") -> str:
    stem = recdir[: -len(".rec")] if recdir.endswith(".rec") else recdir
    aside = stem + suffix
    n = 1
    while os.path.exists(aside):
        n += 1
        aside = f"{stem}{suffix}{n}"
    os.rename(recdir, aside)
    return aside


def _scratch(recdir: str, opened: list[BinaryIO]) -> Callable[[int], BinaryIO]:
    def open_track(number: int) -> BinaryIO:
        f = open(os.path.join(recdir, _TRACK_FILE.format(number)), "w+b", buffering=1 << 16)
        opened.append(f)
        return f

    return open_track


def finalize_recording(recdir: str, target: str, verify: bool = False) -> tuple[Optional[str], list[Note]]:
    """
    Make the MP4 of a recording directory and install it at C{target}.

    Memory stays bounded whatever the recording's length: the journal is
    read in blocks, each track's sample table is kept in a scratch file in
    the directory (about 33 bytes a sample), and the MP4 is written from it
    block by block (L{write_progressive_mp4} with a L{SampleSource}).

    Returns the path (None when there was no media; the directory is then
    removed) and log notes.  A directory that cannot be read as a recording
    is moved aside to C{.corrupt}; an I/O error (a full disk, say) leaves it
    where it is, for recovery at the next start.  Never raises.
    """
    notes: list[Note] = []
    tmp = os.path.join(recdir, OUT_TMP)
    opened: list[BinaryIO] = []
    try:
        try:
            config = read_config(recdir)
            rows = journal_rows(recdir, verify)
            if config is None:
                if next(rows, None) is not None:
                    raise _Corrupt("media but no config")
                tracks: list[tuple[Track, SampleSource]] = []
            else:
                tracks = track_tables(rows, config[VIDEO], config[AUDIO], _scratch(recdir, opened))
            if not tracks:
                _close_all(opened)
                shutil.rmtree(recdir)
                notes.append(("info", "{recdir}: no media, nothing recorded", {"recdir": recdir}))
                return None, notes
            with open(tmp, "wb", buffering=1 << 20) as out, open(
                os.path.join(recdir, SPOOL), "rb", buffering=1 << 20
            ) as src:
                write_progressive_mp4(tracks, out, file_reader(src))
                out.flush()
                os.fsync(out.fileno())
            _close_all(opened)
            os.replace(tmp, target)
            _fsync_dir(os.path.dirname(target))
            shutil.rmtree(recdir, ignore_errors=True)
            samples = sum(len(table) for _, table in tracks)
            notes.append(("info", "recorded {target} ({samples} samples)",
                          {"target": target, "samples": samples}))
            return target, notes
        except OSError as e:
            _close_all(opened)
            for name in [OUT_TMP] + [_TRACK_FILE.format(n) for n in (VIDEO_TRACK, AUDIO_TRACK)]:
                try:
                    os.unlink(os.path.join(recdir, name))
                except OSError:
                    pass
            notes.append(("error", "cannot finalize {recdir} ({error}); it is kept for recovery",
                          {"recdir": recdir, "error": e}))
            return None, notes
        except (_Corrupt, MediaError, ValueError, KeyError, struct.error) as e:
            _close_all(opened)
            aside = _move_aside(recdir)
            notes.append(("error", "recording {recdir} is unreadable ({error}); moved to {aside}",
                          {"recdir": recdir, "error": e, "aside": aside}))
            return None, notes
    except Exception as e:
        _close_all(opened)
        notes.append(("error", "cannot finalize {recdir}: {error!r}", {"recdir": recdir, "error": e}))
        return None, notes


def _close_all(files: list[BinaryIO]) -> None:
    while files:
        try:
            files.pop().close()
        except OSError:
            pass


def _count_attempt(recdir: str) -> int:
    """
    Count one more recovery attempt of C{recdir}, durably, before it is
    made (a crash or an out-of-memory kill during it counts too); the count.
    """
    path = os.path.join(recdir, ATTEMPTS)
    try:
        with open(path, "rb") as f:
            done = int(f.read(32).strip() or b"0")
    except FileNotFoundError:
        done = 0
    except ValueError:
        done = MAX_RECOVERY_ATTEMPTS
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"%d\n" % (done + 1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(recdir)
    return done + 1


def recover_directory(directory: str, now: Optional[float] = None) -> tuple[list[str], list[Note]]:
    """
    Finalize every leftover C{.rec} directory under C{directory}, oldest
    first within each application.  A C{.rec} whose journal is locked
    belongs to a live recording (here or in another process) and is skipped.
    Each directory is tried at most L{MAX_RECOVERY_ATTEMPTS} times (counted
    in its C{attempts} file); then it is moved aside to C{.failed}, with one
    error logged, and no later start tries it again.  Never raises.
    """
    paths: list[str] = []
    notes: list[Note] = []
    now = time.time() if now is None else now
    try:
        apps = sorted(os.listdir(directory))
    except FileNotFoundError:
        return paths, notes
    except OSError as e:
        notes.append(("error", "cannot list {directory}: {error}", {"directory": directory, "error": e}))
        return paths, notes
    for app in apps:
        appDir = os.path.join(directory, app)
        if not valid_name(app) or not os.path.isdir(appDir):
            continue
        try:
            names = os.listdir(appDir)
        except OSError as e:
            notes.append(("error", "cannot list {dir}: {error}", {"dir": appDir, "error": e}))
            continue
        found = []
        for name in names:
            m = _REC_DIR.match(name)
            if m and valid_name(m.group(1)) and os.path.isdir(os.path.join(appDir, name)):
                found.append((int(m.group(2)), m.group(1), name))
        for _, streamId, name in sorted(found):
            recdir = os.path.join(appDir, name)
            try:
                fd = os.open(os.path.join(recdir, INDEX), os.O_RDONLY)
            except FileNotFoundError:
                try:
                    if now - os.stat(recdir).st_mtime > _EMPTY_GRACE:
                        shutil.rmtree(recdir)
                        notes.append(("info", "removed {recdir}: nothing recorded", {"recdir": recdir}))
                except OSError as e:
                    notes.append(("error", "cannot remove {recdir}: {error}",
                                  {"recdir": recdir, "error": e}))
                continue
            except OSError as e:
                notes.append(("error", "cannot open {recdir}: {error}", {"recdir": recdir, "error": e}))
                continue
            try:
                if not _lock(fd):
                    notes.append(("info", "{recdir} is being recorded; left alone", {"recdir": recdir}))
                    continue
                try:
                    attempt = _count_attempt(recdir)
                except OSError as e:
                    notes.append(("error", "cannot recover {recdir}: cannot count the attempt "
                                  "({error}); it is left for the next start",
                                  {"recdir": recdir, "error": e}))
                    continue
                if attempt > MAX_RECOVERY_ATTEMPTS:
                    try:
                        aside = _move_aside(recdir, ".failed")
                    except OSError as e:
                        notes.append(("error", "cannot move {recdir} aside: {error}",
                                      {"recdir": recdir, "error": e}))
                        continue
                    notes.append(("error", "recovering {recdir} failed {attempts} times; moved to "
                                  "{aside}, not tried again",
                                  {"recdir": recdir, "attempts": MAX_RECOVERY_ATTEMPTS,
                                   "aside": aside}))
                    continue
                notes.append(("warn", "recovering {recdir}, cut short (attempt {attempt} of "
                              "{attempts})", {"recdir": recdir, "attempt": attempt,
                                             "attempts": MAX_RECOVERY_ATTEMPTS}))
                path, more = finalize_recording(
                    recdir, os.path.join(appDir, streamId + ".mp4"), verify=True
                )
                notes.extend(more)
                if path is not None:
                    paths.append(path)
            finally:
                os.close(fd)
    return paths, notes


# ---------------------------------------------------------------------------
# Reactor side
# ---------------------------------------------------------------------------


@implementer(ISubscriber)
class Recorder:
    """
    Records one publication of one stream (see the module docstring).

    Every method runs on the reactor thread and only queues; C{state} goes
    C{recording} -> C{ending} (last batch being written) -> C{finalizing}
    -> C{done}.  C{result} is then the MP4's path, or None when nothing was
    recorded or finalizing failed.  C{dropped} says why a recording was
    stopped early (queue overflow, write error), else None.
    """

    _log = Logger()

    def __init__(self, manager: "RecordingManager", app: str, streamId: str, started: int) -> None:
        self._manager = manager
        self.app = app
        self.streamId = streamId
        self.path = manager.path_for(app, streamId)
        self.started = started
        self.state = RECORDING
        self.dropped: Optional[str] = None
        self.result: Optional[str] = None
        self.samples = 0
        self._stream: Optional[LiveStream] = None
        self._disk = _Disk(os.path.dirname(self.path), streamId, started, manager.fsyncInterval)
        self._configs: dict[str, bytes] = {}
        self._configDirty = False
        self._refused: set[str] = set()
        self._videoStarted = False
        self._views: list[memoryview] = []
        self._rows: list[Row] = []
        self._pendingBytes = 0
        self._inflight: Optional[Deferred[None]] = None
        self._inflightBytes = 0
        self._offset = 0
        self._submitted = False
        self._waiters: list[Deferred[Optional[str]]] = []

    def __repr__(self) -> str:
        return f"<Recorder {self.app}/{self.streamId} {self.state}>"

    @property
    def queuedBytes(self) -> int:
        """Bytes held in memory: queued, plus being written."""
        return self._pendingBytes + self._inflightBytes

    @property
    def recordingDirectory(self) -> Optional[str]:
        """The C{.rec} directory, once the first batch created it."""
        return self._disk.dir

    def whenFinished(self) -> "Deferred[Optional[str]]":
        """Fires with C{result} once the recording is done."""
        if self.state == DONE:
            return succeed(self.result)
        d: Deferred[Optional[str]] = Deferred()
        self._waiters.append(d)
        return d

    # --- ISubscriber ----------------------------------------------------------

    def streamStarted(self, stream: LiveStream) -> None:
        self._stream = stream

    def metadataChanged(self, metadata: dict[str, Any]) -> None:
        pass

    def configChanged(self, kind: str, body: bytes, timestamp: int) -> None:
        if self.state != RECORDING or kind in self._refused:
            return
        try:
            if kind == VIDEO:
                vtag = parse_video_tag(body)
                if not vtag.is_sequence_header:
                    raise MediaError("not an H.264 sequence header")
                config = bytes(vtag.data)
                Track.video_avc(VIDEO_TRACK, config)
            elif kind == AUDIO:
                atag = parse_audio_tag(body)
                if not atag.is_sequence_header:
                    raise MediaError("not an AAC sequence header")
                config = bytes(atag.data)
                Track.audio_aac(AUDIO_TRACK, config)
                _aac_frame_length(config)
            else:
                return
        except MediaError as e:
            self._refuse(kind, "its configuration is unusable ({error})", error=e)
            return
        old = self._configs.get(kind)
        if old == config:
            return
        if old is not None:
            self._refuse(kind, "its configuration changed mid-stream; the rest is not recorded")
            return
        self._configs[kind] = config
        self._configDirty = True

    def frameReceived(self, frame: Any) -> None:
        if self.state != RECORDING:
            return
        kind = frame.kind
        if kind not in self._configs or kind in self._refused:
            return
        try:
            if kind == VIDEO:
                vtag = parse_video_tag(frame.body)
                if vtag.avc_packet_type != AVC_NALU:
                    return
                sync = vtag.is_keyframe
                if not self._videoStarted:
                    if not sync:
                        return
                    self._videoStarted = True
                track, cto, data = VIDEO_TRACK, vtag.composition_time, vtag.data
            else:
                atag = parse_audio_tag(frame.body)
                if atag.aac_packet_type != AAC_RAW:
                    return
                track, cto, sync, data = AUDIO_TRACK, 0, True, atag.data
        except MediaError:
            return
        size = len(data)
        if not size:
            return
        self._views.append(data)  # type: ignore[arg-type]
        self._rows.append((track, self._offset, size, frame.timestamp, cto, sync))
        self._offset += size
        self.samples += 1
        cost = size + _ROW_COST
        self._pendingBytes += cost
        manager = self._manager
        manager._queued += cost
        if self.queuedBytes > manager.maxQueueBytes:
            self._drop("the disk is not keeping up ({queued} bytes queued)".format(
                queued=self.queuedBytes))
        elif manager._queued > manager.maxTotalQueueBytes:
            self._drop("the disk is not keeping up ({queued} bytes queued for all "
                       "recordings)".format(queued=manager._queued))
        elif self._pendingBytes >= manager.flushBytes and self._inflight is None:
            self._flush()

    def streamEnded(self) -> None:
        self._end()

    # --- internals --------------------------------------------------------------

    def _refuse(self, kind: str, why: str, **fields: Any) -> None:
        self._refused.add(kind)
        self._log.warn("recording of {app}/{streamId}: not recording {kind}: " + why,
                       app=self.app, streamId=self.streamId, kind=kind, **fields)

    def _configDocument(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": "tokengate-recording", "version": 1,
                               "app": self.app, "streamId": self.streamId}
        for kind in (VIDEO, AUDIO):
            value = self._configs.get(kind)
            doc[kind] = None if value is None else base64.b64encode(value).decode("ascii")
        return doc

    def _drop(self, reason: str) -> None:
        """Stop recording: drop the queue, leave the stream, keep what is on disk."""
        if self.state != RECORDING:
            return
        self._log.error("recording of {app}/{streamId} stopped: {reason}",
                        app=self.app, streamId=self.streamId, reason=reason)
        self.dropped = reason
        self._manager._queued -= self._pendingBytes
        self._pendingBytes = 0
        self._views, self._rows = [], []
        self._configDirty = False
        if self._stream is not None:
            self._stream.unsubscribe(self)
        self._end()

    def _end(self) -> None:
        if self.state != RECORDING:
            return
        self.state = ENDING
        self._manager._recordingStopped()
        if self._inflight is None:
            self._flushFinal()

    def _submit(self, final: bool) -> "Deferred[None]":
        views, rows = self._views, self._rows
        config = self._configDocument() if self._configDirty else None
        self._views, self._rows = [], []
        self._configDirty = False
        self._inflightBytes, self._pendingBytes = self._pendingBytes, 0
        if config is not None or rows:
            self._submitted = True
        d = self._manager._write(self._disk.write, config, views, rows, final)
        self._inflight = d
        return d

    def _flush(self) -> None:
        """Hand the queued batch to the writer (called by the manager's timer too)."""
        if self.state != RECORDING or self._inflight is not None:
            return
        if not self._rows and not self._configDirty:
            return
        self._submit(False).addCallbacks(self._written, self._writeFailed)

    def _settled(self) -> None:
        self._manager._queued -= self._inflightBytes
        self._inflightBytes = 0
        self._inflight = None

    def _written(self, _: object) -> None:
        self._settled()
        if self.state == ENDING:
            self._flushFinal()
        elif self.state == RECORDING and self._pendingBytes >= self._manager.flushBytes:
            self._flush()

    def _writeFailed(self, failure: Failure) -> None:
        self._settled()
        self._log.failure("cannot write the recording of {app}/{streamId}", failure,
                          app=self.app, streamId=self.streamId)
        if self.state == RECORDING:
            self._drop("write error: {}".format(failure.getErrorMessage()))
        elif self.state == ENDING:
            self._flushFinal()

    def _flushFinal(self) -> None:
        if not self._submitted and not self._rows:
            self._finish(None)  # no media, and nothing on disk
            return

        def done(result: object) -> None:
            self._settled()
            if isinstance(result, Failure):
                self._log.failure("cannot write the end of the recording of {app}/{streamId}",
                                  result, app=self.app, streamId=self.streamId)
            self._finalize()

        self._submit(True).addBoth(done)

    def _finalize(self) -> None:
        self.state = FINALIZING
        recdir = self._disk.dir
        if recdir is None:
            self._finish(None)
            return

        def done(result: tuple[Optional[str], list[Note]]) -> None:
            path, notes = result
            self._manager._emit(notes)
            self._finish(path)

        def failed(failure: Failure) -> None:
            self._log.failure("finalizing {recdir} failed", failure, recdir=recdir)
            self._finish(None)

        self._manager._finalize(finalize_recording, recdir, self.path).addCallbacks(done, failed)

    def _finish(self, path: Optional[str]) -> None:
        self.state = DONE
        self.result = path
        self._manager._done(self)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(path)


class RecordingManager:
    """
    Records live streams into C{directory} (see the module docstring).

    @param reactor: provides L{IReactorTime} and L{IReactorThreads}.
    @param threadpool: the writer pool, which must have exactly one thread
        (the caller starts and stops it); by default one is made, started at
        first use and stopped by L{close}.
    @param finalizer: the same for finalizing and recovery (a pool apart, so
        a long MP4 write does not stall live appends).
    """

    _log = Logger()

    def __init__(
        self,
        directory: str,
        reactor: Any,
        threadpool: Optional[ThreadPool] = None,
        *,
        finalizer: Optional[ThreadPool] = None,
        flushInterval: float = 0.5,
        flushBytes: int = 1 << 20,
        fsyncInterval: float = 1.0,
        maxQueueBytes: int = 32 << 20,
        maxTotalQueueBytes: int = 256 << 20,
    ) -> None:
        for pool in (threadpool, finalizer):
            if pool is not None and pool.max != 1:
                raise ValueError("a recording thread pool must have exactly one thread")
        self.directory = os.path.abspath(directory)
        self._reactor = reactor
        self.flushInterval = flushInterval
        self.flushBytes = flushBytes
        self.fsyncInterval = fsyncInterval
        self.maxQueueBytes = maxQueueBytes
        self.maxTotalQueueBytes = maxTotalQueueBytes
        self._writer = threadpool
        self._finalizer = finalizer
        self._ownPools: list[ThreadPool] = []
        self._trigger: Any = None
        self._recorders: dict[tuple[str, str], list[Recorder]] = {}
        self._queued = 0
        self._loop: Optional[LoopingCall] = None
        self._closed = False
        self._closing = False
        self._closeWaiters: Optional[list[Deferred[None]]] = []

    # --- public API -------------------------------------------------------------

    def path_for(self, app: str, streamId: str) -> str:
        """
        Where the recording of C{app}/C{streamId} goes; L{RecordingRefused}
        (a ValueError) for a name that cannot be a file name.
        """
        return os.path.join(self.directory, _check(app, "application"),
                            _check(streamId, "stream id") + ".mp4")

    def active(self, app: str, streamId: str) -> bool:
        """Whether a recording of C{app}/C{streamId} is live or still being finalized."""
        return bool(self._recorders.get((app, streamId)))

    def recorders(self) -> list[Recorder]:
        """Every recording not done yet."""
        return [r for rs in self._recorders.values() for r in rs]

    def start(self, stream: LiveStream) -> Recorder:
        """
        Record C{stream}: subscribe a new L{Recorder} to it.
        L{RecordingRefused} (nothing subscribed, nothing on disk) for a name
        that cannot be a file name, RuntimeError once closed.
        """
        if self._closed:
            raise RuntimeError("the recording manager is closed")
        for existing in self._recorders.get((stream.app, stream.streamId), ()):
            if existing._stream is stream and existing.state == RECORDING:
                return existing
        self.path_for(stream.app, stream.streamId)
        started = int(self._reactor.seconds() * 1000)
        recorder = Recorder(self, stream.app, stream.streamId, started)
        self._recorders.setdefault((stream.app, stream.streamId), []).append(recorder)
        self._startLoop()
        stream.subscribe(recorder)
        return recorder

    def recover(self) -> "Deferred[list[str]]":
        """
        Finalize the recordings a crash left behind (call at start-up).
        Fires with the paths of the MP4s made; never fails.
        """
        if self._closed:
            return succeed([])
        d = self._finalize(recover_directory, self.directory)

        def done(result: tuple[list[str], list[Note]]) -> list[str]:
            paths, notes = result
            self._emit(notes)
            return paths

        def failed(failure: Failure) -> list[str]:
            self._log.failure("recovering recordings failed", failure)
            return []

        return d.addCallbacks(done, failed)

    def close(self) -> "Deferred[None]":
        """
        Shut down: end every recording (as if its stream ended), wait for
        all of them to be finalized, then stop the threads.
        """
        d: Deferred[None] = Deferred()
        if self._closeWaiters is None:
            d.callback(None)
            return d
        self._closeWaiters.append(d)
        if self._closing:
            return d
        self._closing = self._closed = True
        for recorder in self.recorders():
            if recorder.state == RECORDING:
                if recorder._stream is not None:
                    recorder._stream.unsubscribe(recorder)
                recorder._end()
        waits = [r.whenFinished() for r in self.recorders()]

        def stopped(_: object) -> None:
            self._stopLoop()
            if self._trigger is not None:
                self._reactor.removeSystemEventTrigger(self._trigger)
                self._trigger = None
            for pool in self._ownPools:
                pool.stop()
            self._ownPools = []
            waiters, self._closeWaiters = self._closeWaiters or [], None
            for waiter in waiters:
                waiter.callback(None)

        DeferredList(waits, consumeErrors=True).addCallback(stopped)
        return d

    stop = close

    # --- internals ----------------------------------------------------------------

    def _pools(self) -> tuple[ThreadPool, ThreadPool]:
        for attr, name in (("_writer", "tokengate-recorder"),
                           ("_finalizer", "tokengate-recorder-finalize")):
            if getattr(self, attr) is None:
                pool = ThreadPool(1, 1, name=name)
                setattr(self, attr, pool)
                self._ownPools.append(pool)
        for pool in self._ownPools:
            if not pool.started:
                pool.start()
        if self._ownPools and self._trigger is None:
            self._trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._stopPools)
        assert self._writer is not None and self._finalizer is not None
        return self._writer, self._finalizer

    def _stopPools(self) -> None:
        self._trigger = None
        for pool in self._ownPools:
            pool.stop()

    def _write(self, f: Callable[..., None], *args: Any) -> "Deferred[None]":
        try:
            writer, _ = self._pools()
        except Exception:
            return fail()
        return deferToThreadPool(self._reactor, writer, f, *args)

    def _finalize(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        try:
            _, finalizer = self._pools()
        except Exception:
            return fail()
        return deferToThreadPool(self._reactor, finalizer, f, *args)

    def _emit(self, notes: list[Note]) -> None:
        for level, fmt, fields in notes:
            getattr(self._log, level)(fmt, **fields)

    def _done(self, recorder: Recorder) -> None:
        key = (recorder.app, recorder.streamId)
        rs = self._recorders.get(key, [])
        if recorder in rs:
            rs.remove(recorder)
        if not rs:
            self._recorders.pop(key, None)

    def _startLoop(self) -> None:
        if self._loop is None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self._reactor
            self._loop.start(self.flushInterval, now=False).addErrback(
                lambda f: self._log.failure("the recording flush timer failed", f))

    def _stopLoop(self) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()

    def _recordingStopped(self) -> None:
        if not any(r.state == RECORDING for r in self.recorders()):
            self._stopLoop()

    def _tick(self) -> None:
        live = False
        for recorder in self.recorders():
            if recorder.state == RECORDING:
                live = True
                recorder._flush()
        if not live:
            self._stopLoop()
