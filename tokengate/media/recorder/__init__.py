# -*- test-case-name: tests.test_media_recorder -*-
"""
MP4 recording of live streams, for VOD.

Three modules: L{tokengate.media.recorder.journal} (the crash-safe files of
a recording in progress), L{tokengate.media.recorder.finalize} (bounded-memory
finalizing and start-up recovery, worker-thread code) and
L{tokengate.media.recorder.manager} (L{Recorder} and L{RecordingManager},
on the reactor).  Their public names are importable from here.

A L{Recorder} is a hub subscriber (L{tokengate.media.hub.ISubscriber}).
While the stream is live it appends every sample to a spool and a journal;
when the stream ends it turns them into a standard progressive MP4 (moov
before mdat).  A L{RecordingManager} owns the directory, the worker
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

A journal row is little-endian C{track u8, flags u8 (1: sync), u16 0,
size u32, offset u64, dts i64 (ms, as received), cto i32 (ms), crc32 of the
sample bytes, crc32 of the 32 bytes before}.  Rows are appended after their
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
goes to its scratch file and is retimed there in place, and
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

from tokengate.media.fmp4 import write_progressive_mp4
from tokengate.media.recorder.finalize import (
    ATTEMPTS,
    MAX_JUMP_MS,
    MAX_RECOVERY_ATTEMPTS,
    build_tracks,
    finalize_recording,
    recover_directory,
    track_tables,
)
from tokengate.media.recorder.journal import (
    AUDIO_TRACK,
    CONFIG,
    INDEX,
    JOURNAL_MAGIC,
    OUT_TMP,
    ROW_SIZE,
    SPOOL,
    VIDEO_TRACK,
    JournalWriter,
    journal_rows,
    read_config,
    read_journal,
    valid_name,
)
from tokengate.media.recorder.manager import (
    DONE,
    ENDING,
    FINALIZING,
    RECORDING,
    Recorder,
    RecordingManager,
    RecordingRefused,
)

__all__ = [
    "Recorder",
    "RecordingManager",
    "RecordingRefused",
    "valid_name",
    "RECORDING",
    "ENDING",
    "FINALIZING",
    "DONE",
    "VIDEO_TRACK",
    "AUDIO_TRACK",
    "JOURNAL_MAGIC",
    "ROW_SIZE",
    "INDEX",
    "SPOOL",
    "CONFIG",
    "OUT_TMP",
    "ATTEMPTS",
    "MAX_JUMP_MS",
    "MAX_RECOVERY_ATTEMPTS",
    "JournalWriter",
    "journal_rows",
    "read_journal",
    "read_config",
    "track_tables",
    "build_tracks",
    "finalize_recording",
    "recover_directory",
    "write_progressive_mp4",
]
