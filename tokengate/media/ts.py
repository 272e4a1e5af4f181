# -*- test-case-name: tests.test_media_ts -*-
"""
An MPEG-TS demuxer for H.264 and AAC (ADTS) that outputs hub-ready FLV tag
bodies.  Pure code, no I/O.

C{TSDemuxer().feed(data) -> list} of events, over a byte stream in pieces
of any size (SRT payloads are 1316 bytes from ffmpeg but 1456 from
srt-live-transmit, so nothing is assumed aligned to 188).  C{flush()}
at the end of the stream returns what the last packets complete.

Events (frozen attrs classes), timestamps in milliseconds from the first
PTS/DTS seen (0), continuous across the 33-bit wrap:

- C{VideoConfig(tag_body, timestamp_ms)}: an AVC sequence header tag body
  (C{17 00 000000} + avcC) built from the latest SPS and PPS in the stream
  (they need not share an access unit); again whenever they change.  Video
  before the first one is dropped.
- C{Video(timestamp_ms, tag_body, keyframe)}: one access unit, DTS
  timestamp, C{17|27 01} + SI24 composition time (PTS - DTS, ms) + 4-byte
  length-prefixed NAL units.  AUD, SPS, PPS and filler NAL units are left
  out (parameter sets go to the config).
- C{AudioConfig(tag_body, timestamp_ms)}: C{AF 00} + AudioSpecificConfig
  from the first ADTS header; again when it changes.
- C{Audio(timestamp_ms, tag_body)}: one per ADTS frame, C{AF 01} + raw
  frame, frame i of a PES at PTS + i * 1024 / sample rate.

Robustness: the stream resyncs on 0x47, confirmed by the sync byte of the
next packet (so a packet is handled once the first byte of the one after it
has arrived, and C{flush()} handles the last).  A continuity counter gap,
a transport error or a PES over C{max_pes_size} drops the PES being
assembled; a PES that fails to parse is dropped too.  These are counted in
C{stats} (a dict) and, with C{strict=True}, raise
L{tokengate.media.errors.MediaError} instead (after which the
demuxer is in an undefined state: discard it).  Nothing else is ever
raised.  Timestamps before the first one seen (audio slightly ahead of the
first video in stream order, as ffmpeg muxes it) are clamped to 0.  Held bytes are bounded: under 189 bytes of the stream plus one PES
per elementary stream.

PSI: the first program of the PAT; in its PMT the first stream of type
0x1B (H.264) and the first of type 0x0F (AAC ADTS); other streams are
ignored.  Sections are CRC-checked; an unchanged section is not re-parsed.
"""

from __future__ import annotations

import struct
from typing import Optional, Union

from attrs import frozen

from tokengate.media.codecs import (
    AudioSpecificConfig,
    AAC_SEQUENCE_HEADER,
    AVC_SEQUENCE_HEADER,
    FRAME_INTER,
    FRAME_KEY,
    asc_from_adts,
    build_audio_tag,
    build_avcc_from_sps_pps,
    build_video_tag,
    parse_adts,
)
from tokengate.media.codecs.h264 import annexb_access_unit
from tokengate.media.errors import MediaError

__all__ = [
    "TS_PACKET_SIZE",
    "STREAM_TYPE_H264",
    "STREAM_TYPE_AAC_ADTS",
    "VideoConfig",
    "Video",
    "AudioConfig",
    "Audio",
    "TSDemuxer",
    "crc32_mpeg2",
]

TS_PACKET_SIZE = 188
STREAM_TYPE_H264 = 0x1B
STREAM_TYPE_AAC_ADTS = 0x0F

_SYNC = 0x47
_SYNC_BYTE = b"\x47"
_WRAP33 = 1 << 33
_HALF33 = 1 << 32
_U32 = struct.Struct(">I")
_VIDEO = "video"
_AUDIO = "audio"


@frozen
class VideoConfig:
    tag_body: bytes
    timestamp_ms: int = 0


@frozen
class Video:
    timestamp_ms: int
    tag_body: bytes
    keyframe: bool


@frozen
class AudioConfig:
    tag_body: bytes
    timestamp_ms: int = 0


@frozen
class Audio:
    timestamp_ms: int
    tag_body: bytes


Event = Union[VideoConfig, Video, AudioConfig, Audio]


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) if c & 0x80000000 else (c << 1)
        table.append(c & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc32_mpeg2(data: bytes) -> int:
    """CRC-32/MPEG-2 (a PSI section including its CRC gives 0)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ b]
    return crc


class _PES:
    """One elementary stream being reassembled."""

    __slots__ = ("kind", "parts", "size", "total")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.parts: Optional[list[bytes]] = None  # None: not inside a PES
        self.size = 0
        self.total = -1  # 6 + PES_packet_length; 0 unbounded; -1 not known yet


class TSDemuxer:
    """See the module docstring."""

    def __init__(self, *, max_pes_size: int = 8 << 20, strict: bool = False) -> None:
        self.max_pes_size = max_pes_size
        self.strict = strict
        self._tail = b""
        self._cc: dict[int, int] = {}
        self._pmt_pid: Optional[int] = None
        self._streams: dict[int, _PES] = {}
        self._sections: dict[int, bytearray] = {}
        self._last_section: dict[int, bytes] = {}
        self._ref: Optional[int] = None  # unwrapped 90 kHz reference
        self._origin: Optional[int] = None
        self._video_params: Optional[tuple[tuple[bytes, ...], tuple[bytes, ...]]] = None
        self._sps: tuple[bytes, ...] = ()
        self._pps: tuple[bytes, ...] = ()
        self._audio_asc: Optional[AudioSpecificConfig] = None
        self.video_pid: Optional[int] = None
        self.audio_pid: Optional[int] = None
        self.stats = {
            "packets": 0,
            "resyncs": 0,
            "bytes_skipped": 0,
            "cc_errors": 0,
            "transport_errors": 0,
            "pes_dropped": 0,
            "psi_errors": 0,
            "video_frames": 0,
            "audio_frames": 0,
            "video_without_config": 0,
        }

    # -- byte stream -------------------------------------------------------------

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> list[Event]:
        """Feed bytes of the transport stream; the events they complete."""
        if not isinstance(data, bytes):
            if not isinstance(data, (bytearray, memoryview)):
                raise MediaError(f"expected bytes, got {type(data).__name__}")
            data = bytes(data)
        buf = self._tail + data if self._tail else data
        events: list[Event] = []
        n = len(buf)
        pos = 0
        packet = self._packet
        stats = self.stats
        streams = self._streams
        ccs = self._cc
        max_pes = self.max_pes_size
        while pos + TS_PACKET_SIZE < n:
            if buf[pos] == _SYNC and buf[pos + TS_PACKET_SIZE] == _SYNC:
                b1 = buf[pos + 1]
                b3 = buf[pos + 3]
                pid = (b1 & 0x1F) << 8 | buf[pos + 2]
                pes = streams.get(pid)
                # The hot path: the continuation of a PES being assembled, no
                # transport error, no PUSI, no adaptation field, the next
                # continuity counter.  Everything else goes to _packet.
                if (
                    pes is not None
                    and not b1 & 0xC0
                    and b3 & 0x30 == 0x10
                    and pes.total >= 0
                    and pes.parts is not None
                    and ccs.get(pid, -1) == (b3 - 1) & 0x0F
                ):
                    ccs[pid] = b3 & 0x0F
                    stats["packets"] += 1
                    pes.parts.append(buf[pos + 4 : pos + TS_PACKET_SIZE])
                    size = pes.size + 184
                    pes.size = size
                    if size > max_pes:
                        self._drop(pes, "PES larger than max_pes_size")
                    elif 0 < pes.total <= size:
                        self._finish(pes, events)
                else:
                    packet(buf, pos, events)
                    streams = self._streams  # a new PMT may have replaced it
                pos += TS_PACKET_SIZE
                continue
            # Lost sync: the next 0x47 followed by 0x47 188 bytes later.
            stats["resyncs"] += 1
            i = buf.find(_SYNC_BYTE, pos + 1)
            while i >= 0 and i + TS_PACKET_SIZE < n and buf[i + TS_PACKET_SIZE] != _SYNC:
                i = buf.find(_SYNC_BYTE, i + 1)
            if i < 0:
                i = n
            stats["bytes_skipped"] += i - pos
            pos = i
        self._tail = buf[pos:]
        return events

    def flush(self) -> list[Event]:
        """End of stream: handle the last packet and emit unfinished PESes."""
        events: list[Event] = []
        tail = self._tail
        self._tail = b""
        if len(tail) >= TS_PACKET_SIZE and tail[0] == _SYNC:
            self._packet(tail, 0, events)
        for pes in self._streams.values():
            if pes.parts:
                self._finish(pes, events)
        return events

    # -- TS packets --------------------------------------------------------------

    def _packet(self, buf: bytes, pos: int, events: list[Event]) -> None:
        self.stats["packets"] += 1
        b1 = buf[pos + 1]
        pid = (b1 & 0x1F) << 8 | buf[pos + 2]
        b3 = buf[pos + 3]
        pes = self._streams.get(pid)
        if b1 & 0x80:  # transport_error_indicator
            self.stats["transport_errors"] += 1
            if pes is not None:
                self._drop(pes, "transport error")
            return
        start = pos + 4
        discontinuity = False
        if b3 & 0x20:  # adaptation field
            af_len = buf[start]
            if af_len > 183:
                if pes is not None:
                    self._drop(pes, "bad adaptation field length")
                return
            if af_len:
                discontinuity = bool(buf[start + 1] & 0x80)
            start += 1 + af_len
        if not b3 & 0x10:  # no payload
            return
        end = pos + TS_PACKET_SIZE
        cc = b3 & 0x0F
        last = self._cc.get(pid)
        self._cc[pid] = cc
        gap = False
        if last is not None and not discontinuity:
            if cc == last:
                return  # a duplicate packet
            if cc != (last + 1) & 0x0F:
                self.stats["cc_errors"] += 1
                gap = True
        if start >= end:
            return
        pusi = b1 & 0x40
        if pes is not None:
            if gap:
                self._drop(pes, "continuity counter gap")
            if pusi:
                if pes.parts:
                    self._finish(pes, events)
                first = buf[start:end]
                pes.parts = [first]
                pes.size = end - start
                pes.total = -1
                if self._origin is None:
                    self._set_origin(first)
            elif pes.parts is None:
                return  # inside a PES we are not assembling
            else:
                pes.parts.append(buf[start:end])
                pes.size += end - start
                if pes.size > self.max_pes_size:
                    self._drop(pes, "PES larger than max_pes_size")
                    return
            if pes.total < 0 and pes.size >= 6:
                head = pes.parts[0] if len(pes.parts[0]) >= 6 else b"".join(pes.parts)
                length = head[4] << 8 | head[5]
                pes.total = 6 + length if length else 0
            if pes.total > 0 and pes.size >= pes.total:
                self._finish(pes, events)
            return
        if pid == 0 or pid == self._pmt_pid:
            self._psi(pid, buf[start:end], pusi, gap)

    def _set_origin(self, head: bytes) -> None:
        """Start the timeline at the first PES header seen in stream order."""
        if len(head) >= 14 and head[:3] == b"\0\0\1" and head[7] & 0x80:
            t = _timestamp(head, 14) if head[7] >> 6 == 3 and len(head) >= 19 else _timestamp(head, 9)
            self._origin = self._ref = t

    def _drop(self, pes: _PES, why: str) -> None:
        if pes.parts:
            self.stats["pes_dropped"] += 1
            if self.strict:
                pes.parts = None
                raise MediaError(f"{pes.kind} PES dropped: {why}")
        pes.parts = None

    # -- PSI ---------------------------------------------------------------------

    def _psi(self, pid: int, payload: bytes, pusi: int, gap: bool) -> None:
        sections = self._sections
        if gap:
            sections.pop(pid, None)
        if pusi:
            pointer = payload[0]
            current = sections.get(pid)
            if current is not None:
                current += payload[1 : 1 + pointer]
                self._section_done(pid)
            sections[pid] = bytearray(payload[1 + pointer :])
        elif pid in sections:
            sections[pid] += payload
        else:
            return
        self._section_done(pid)

    def _section_done(self, pid: int) -> None:
        section = self._sections.get(pid)
        if section is None or len(section) < 3:
            return
        if section[0] == 0xFF:  # stuffing only
            del self._sections[pid]
            return
        length = 3 + ((section[1] & 0x0F) << 8 | section[2])
        if len(section) < length:
            if len(section) > 4096:
                del self._sections[pid]
            return
        del self._sections[pid]
        raw = bytes(section[:length])
        if self._last_section.get(pid) == raw:
            return
        if length < 12 or crc32_mpeg2(raw) != 0:
            self._psi_error("PSI section with a bad length or CRC")
            return
        self._last_section[pid] = raw
        if pid == 0:
            self._pat(raw)
        else:
            self._pmt(raw)

    def _psi_error(self, why: str) -> None:
        self.stats["psi_errors"] += 1
        if self.strict:
            raise MediaError(why)

    def _pat(self, section: bytes) -> None:
        if section[0] != 0x00:
            return self._psi_error("PAT with a wrong table id")
        for i in range(8, len(section) - 4 - 3, 4):
            program = section[i] << 8 | section[i + 1]
            if program:
                pmt_pid = (section[i + 2] & 0x1F) << 8 | section[i + 3]
                if pmt_pid != self._pmt_pid:
                    if self._pmt_pid is not None:
                        self._last_section.pop(self._pmt_pid, None)
                    self._pmt_pid = pmt_pid
                return None
        return None

    def _pmt(self, section: bytes) -> None:
        if section[0] != 0x02:
            return self._psi_error("PMT with a wrong table id")
        end = len(section) - 4
        pos = 12 + ((section[10] & 0x0F) << 8 | section[11])
        video = audio = None
        while pos + 5 <= end:
            stream_type = section[pos]
            pid = (section[pos + 1] & 0x1F) << 8 | section[pos + 2]
            pos += 5 + ((section[pos + 3] & 0x0F) << 8 | section[pos + 4])
            if stream_type == STREAM_TYPE_H264 and video is None:
                video = pid
            elif stream_type == STREAM_TYPE_AAC_ADTS and audio is None:
                audio = pid
        if video == audio and video is not None:
            return self._psi_error("PMT maps video and audio to one PID")
        streams = {}
        for stream_pid, kind in ((video, _VIDEO), (audio, _AUDIO)):
            if stream_pid is None:
                continue
            old = self._streams.get(stream_pid)
            streams[stream_pid] = old if old is not None and old.kind == kind else _PES(kind)
        self._streams = streams
        self.video_pid, self.audio_pid = video, audio
        return None

    # -- PES -----------------------------------------------------------------------

    def _finish(self, pes: _PES, events: list[Event]) -> None:
        parts = pes.parts
        total = pes.total
        pes.parts = None
        assert parts is not None
        data = b"".join(parts) if len(parts) > 1 else parts[0]
        if total > 0:
            if len(data) < total:
                return self._bad_pes(pes, "truncated PES")
            data = data[:total]
        if len(data) < 9 or data[0] or data[1] or data[2] != 1:
            return self._bad_pes(pes, "no PES start code")
        flags = data[7]
        header_end = 9 + data[8]
        if len(data) < header_end:
            return self._bad_pes(pes, "truncated PES header")
        pts_dts = flags >> 6
        if pts_dts < 2 or header_end < (19 if pts_dts == 3 else 14):
            return self._bad_pes(pes, "PES without a PTS")
        pts = self._unwrap(_timestamp(data, 9))
        dts = self._unwrap(_timestamp(data, 14)) if pts_dts == 3 else pts
        if self._origin is None:
            self._origin = dts
        if self._ref is None or dts > self._ref:
            self._ref = dts
        payload = data[header_end:]
        try:
            if pes.kind is _VIDEO:
                self._video(dts, pts, payload, events)
            else:
                self._audio(pts, payload, events)
        except MediaError as e:
            return self._bad_pes(pes, str(e))
        return None

    def _bad_pes(self, pes: _PES, why: str) -> None:
        self.stats["pes_dropped"] += 1
        if self.strict:
            raise MediaError(f"{pes.kind} PES dropped: {why}")

    def _unwrap(self, t: int) -> int:
        ref = self._ref
        if ref is None:
            self._ref = t
            return t
        return ref + (((t - ref + _HALF33) % _WRAP33) - _HALF33)

    def _ms(self, t90: int) -> int:
        origin = self._origin
        assert origin is not None  # set by the first PES
        ms = (t90 - origin) // 90
        return ms if ms > 0 else 0

    def _video(self, dts: int, pts: int, payload: bytes, events: list[Event]) -> None:
        unit = annexb_access_unit(payload, keep_parameter_sets=False)
        sps, pps, keyframe = unit.sps, unit.pps, unit.keyframe
        ts = self._ms(dts)
        if sps:
            self._sps = sps
        if pps:
            self._pps = pps
        if (sps or pps) and self._sps and self._pps:
            params = (self._sps, self._pps)
            if params != self._video_params:
                avcc = build_avcc_from_sps_pps(self._sps, self._pps)
                self._video_params = params
                events.append(
                    VideoConfig(
                        build_video_tag(FRAME_KEY, avcc, avc_packet_type=AVC_SEQUENCE_HEADER), ts
                    )
                )
        if not unit.data:
            return
        if self._video_params is None:
            self.stats["video_without_config"] += 1
            return
        cts = self._ms(pts) - ts if pts != dts else 0
        body = build_video_tag(
            FRAME_KEY if keyframe else FRAME_INTER, unit.data, composition_time=cts
        )
        self.stats["video_frames"] += 1
        events.append(Video(ts, body, keyframe))

    def _audio(self, pts: int, payload: bytes, events: list[Event]) -> None:
        pos = 0
        n = len(payload)
        i = 0
        origin = self._origin
        assert origin is not None  # set by the first PES
        while pos < n:
            header = parse_adts(payload, pos)
            end = pos + header.frame_length
            if end > n:
                raise MediaError("truncated ADTS frame")
            asc = asc_from_adts(header)
            rate = header.sample_rate
            t = ((pts - origin) * rate + i * 1024 * 90000) // (90 * rate)
            if t < 0:
                t = 0
            if asc != self._audio_asc:
                self._audio_asc = asc
                events.append(
                    AudioConfig(
                        build_audio_tag(asc.build(), aac_packet_type=AAC_SEQUENCE_HEADER), t
                    )
                )
            if header.raw_data_blocks == 1:
                raw = payload[pos + header.header_length : end]
                events.append(Audio(t, build_audio_tag(raw)))
                self.stats["audio_frames"] += 1
            pos = end
            i += 1


def _timestamp(data: bytes, i: int) -> int:
    """A 33-bit PTS/DTS packed in 5 bytes with marker bits."""
    return (
        (data[i] >> 1 & 0x07) << 30
        | data[i + 1] << 22
        | (data[i + 2] >> 1) << 15
        | data[i + 3] << 7
        | data[i + 4] >> 1
    )
