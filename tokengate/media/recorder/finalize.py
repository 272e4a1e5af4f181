# -*- test-case-name: tests.test_media_recorder -*-
"""
Finishing recordings in bounded memory: L{finalize_recording} turns a
C{.rec} directory into a progressive MP4 (the journal read a block of rows
at a time, each track's sample table in a scratch file), and
L{recover_directory} finalizes those a crash left behind, a bounded number
of times each.  Worker-thread code: no reactor.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import struct
import sys
import time
from array import array
from itertools import islice
from operator import sub
from typing import BinaryIO, Callable, Iterable, Iterator, Optional

from tokengate.media.codecs import AudioSpecificConfig
from tokengate.media.errors import MediaError
from tokengate.media.fmp4 import SampleSource, SampleTable, Track, file_reader, write_progressive_mp4
from tokengate.media.hub import AUDIO, VIDEO
from tokengate.media.recorder.journal import (
    AUDIO_TRACK,
    INDEX,
    OUT_TMP,
    REC_DIR,
    SPOOL,
    VIDEO_TRACK,
    Corrupt,
    Note,
    Row,
    fsync_dir,
    journal_rows,
    lock_journal,
    read_config,
    valid_name,
)

#: A timestamp jump larger than this (either way) within one track is a
#: discontinuity (the publisher restarted its clock): the timeline carries on.
MAX_JUMP_MS = 10_000
#: A .rec directory without a journal is left alone this long (it may be
#: being created), then removed.
_EMPTY_GRACE = 60.0

#: Samples per block of a track file (see L{_TrackFile}).
_BLOCK = 8192
#: How many times start-up recovery tries one .rec directory before moving
#: it aside as C{.failed}.
MAX_RECOVERY_ATTEMPTS = 3
ATTEMPTS = "attempts"
#: Scratch files of a finalization, in the .rec directory.
_TRACK_FILE = "track{}.samples"


def aac_frame_length(asc: bytes) -> int:
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
            frame = aac_frame_length(track.config)
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
                    raise Corrupt("media but no config")
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
            fsync_dir(os.path.dirname(target))
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
        except (Corrupt, MediaError, ValueError, KeyError, struct.error) as e:
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
    fsync_dir(recdir)
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
            m = REC_DIR.match(name)
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
                if not lock_journal(fd):
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
