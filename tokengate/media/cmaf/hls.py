# -*- test-case-name: tests.test_media_packager -*-
"""
LL-HLS documents over a L{Segmenter}'s windows: the multivariant playlist
and the media playlists (RFC 8216bis; the rules are in
L{tokengate.media.packager}'s docstring).  Pure code.
"""

from __future__ import annotations

import math
from typing import Any, Optional
from urllib.parse import quote

from tokengate.media.cmaf.segmenter import Segmenter
from tokengate.media.cmaf.text import iso, querySuffix
from tokengate.media.cmaf.window import bandwidths, edge, frameRate, initName, present
from tokengate.media.fmp4 import AUDIO, VIDEO

__all__ = ["multivariant", "mediaPlaylist", "targetDuration", "partTarget"]


def targetDuration(segmentTarget: float, longest: float) -> int:
    """
    EXT-X-TARGETDURATION: the segment target rounded up, or the longest
    segment seen (C{longest} seconds) rounded to the nearest second if that
    is more.
    """
    # RFC 8216 4.3.3.1: every EXTINF rounded to the nearest integer must
    # not exceed it; it only grows, so it stays constant in steady state.
    return max(1, math.ceil(segmentTarget - 0.001), math.floor(longest + 0.5))


def partTarget(target: float, longestPart: float) -> float:
    """PART-TARGET: the part target, or the longest part seen if more, in whole ms."""
    return math.ceil(max(target, longestPart) * 1000 - 1e-6) / 1000


def _partLine(kind: str, msn: int, index: int, duration: float, independent: bool, q: str) -> str:
    line = f'#EXT-X-PART:DURATION={duration:.5f},URI="{kind}/{msn}.{index}.m4s{q}"'
    return line + ",INDEPENDENT=YES" if independent else line


def multivariant(
    segmenter: Segmenter, streamId: str, metadata: dict[str, Any], query: str = ""
) -> Optional[str]:
    """
    The multivariant playlist, served at C{/App/streams/{id}.m3u8}, or
    None until a segment is complete.
    """
    video, audio = segmenter.video, segmenter.audio
    if not (video.segments or audio.segments):
        return None
    q = querySuffix(query)
    sid = quote(streamId, safe="")
    has_video = present(video) and video.track is not None
    has_audio = present(audio) and audio.track is not None
    peak, average = bandwidths(video, audio, metadata)
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    codecs = []
    if has_video:
        assert video.track is not None
        codecs.append(video.track.codec_string)
    if has_audio:
        assert audio.track is not None
        codecs.append(audio.track.codec_string)
    info = [
        f"BANDWIDTH={peak}",
        f"AVERAGE-BANDWIDTH={average}",
        'CODECS="{}"'.format(",".join(codecs)),
    ]
    if has_video:
        assert video.track is not None
        if video.track.width and video.track.height:
            info.append(f"RESOLUTION={video.track.width}x{video.track.height}")
        rate = frameRate(video, metadata)
        if rate:
            info.append(f"FRAME-RATE={rate:.3f}")
        if has_audio:
            assert audio.track is not None
            lines.append(
                '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="audio",DEFAULT=YES,'
                f'AUTOSELECT=YES,CHANNELS="{audio.track.channels or 2}",'
                f'URI="{sid}/audio.m3u8{q}"'
            )
            info.append('AUDIO="audio"')
        lines.append("#EXT-X-STREAM-INF:" + ",".join(info))
        lines.append(f"{sid}/video.m3u8{q}")
    else:
        lines.append("#EXT-X-STREAM-INF:" + ",".join(info))
        lines.append(f"{sid}/audio.m3u8{q}")
    return "\n".join(lines) + "\n"

def mediaPlaylist(
    segmenter: Segmenter,
    kind: str,
    query: str,
    *,
    live: bool,
    windowSegments: int,
    target: int,
    part_target: float,
) -> Optional[str]:
    """
    The LL-HLS media playlist of C{kind}, served at
    C{/App/streams/{id}/{kind}.m3u8}, or None until one of its segments
    is complete.

    @param live: the publication goes on (else the playlist ends).
    @param windowSegments: segments listed.
    @param target: the target duration (L{targetDuration}).
    @param part_target: the part target (L{partTarget}).
    """
    t = segmenter.track(kind)
    if t is None or not t.segments:
        return None
    q = querySuffix(query)
    held = list(t.segments)
    listed = held[-windowSegments :]
    skipped = held[: len(held) - len(listed)]
    discontinuities = t.discDropped + sum(1 for s in skipped if s.disc)
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target}",
        f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * part_target:.3f}",
        f"#EXT-X-PART-INF:PART-TARGET={part_target:.3f}",
        f"#EXT-X-MEDIA-SEQUENCE:{listed[0].msn}",
    ]
    if discontinuities:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuities}")
    # Parts for the segments that end within the last three target durations.
    with_parts = len(listed)
    recent = 0.0
    while with_parts > 0 and recent < 3 * target:
        with_parts -= 1
        recent += listed[with_parts].duration / t.timescale
    scale = float(t.timescale)
    origin = segmenter.origin or 0.0
    init = -1
    add = lines.append
    for index, s in enumerate(listed):
        if s.disc:
            add("#EXT-X-DISCONTINUITY")
        if s.init != init:
            init = s.init
            add(f'#EXT-X-MAP:URI="{kind}/{initName(init)}{q}"')
        add("#EXT-X-PROGRAM-DATE-TIME:" + iso(origin + s.start / scale))
        if index >= with_parts:
            for i, (_, _, duration, independent) in enumerate(s.parts):
                add(_partLine(kind, s.msn, i, duration / scale, independent, q))
        if s.data is None:
            add("#EXT-X-GAP")
        add(f"#EXTINF:{s.duration / scale:.5f},")
        add(f"{kind}/{s.msn}.m4s{q}")
    if live:
        if t.msn is not None and t.parts:
            if t.segDisc:
                add("#EXT-X-DISCONTINUITY")
            if t.segInit != init:
                add(f'#EXT-X-MAP:URI="{kind}/{initName(t.segInit)}{q}"')
            add("#EXT-X-PROGRAM-DATE-TIME:" + iso(origin + t.segStart / scale))
            for i, (duration, independent) in enumerate(t.partInfo):
                add(_partLine(kind, t.msn, i, duration / scale, independent, q))
        if t.msn is not None:
            hint = (t.msn, len(t.parts))
        else:
            hint = (listed[-1].msn + 1, 0)
        add(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{kind}/{hint[0]}.{hint[1]}.m4s{q}"')
        other = AUDIO if kind == VIDEO else VIDEO
        other_track = segmenter.track(other)
        assert other_track is not None
        report = edge(other_track)
        if report is not None and other_track.segments:
            msn, part = report
            add(
                f'#EXT-X-RENDITION-REPORT:URI="{other}.m3u8{q}",LAST-MSN={msn}'
                + (f",LAST-PART={part}" if part >= 0 else "")
            )
    else:
        add("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
