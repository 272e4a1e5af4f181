# -*- test-case-name: tests.test_media_packager -*-
"""
The DASH MPD over a L{Segmenter}'s windows: one timeline for the life of
the packager, a C{Period} per publication or codec change, a
C{SegmentTemplate} with a C{SegmentTimeline} per track (the rules are in
L{tokengate.media.packager}'s docstring).  Pure code.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Optional
from xml.sax.saxutils import escape, quoteattr

from tokengate.media.cmaf.segmenter import Segmenter
from tokengate.media.cmaf.text import iso, querySuffix, xsDuration
from tokengate.media.cmaf.window import (
    Segment,
    TrackState,
    frameRate,
    initName,
    metadataRate,
    trackBandwidth,
)
from tokengate.media.fmp4 import VIDEO

__all__ = ["mpd"]


def mpd(
    segmenter: Segmenter,
    metadata: dict[str, Any],
    query: str = "",
    location: Optional[str] = None,
    utcTiming: str = "/time",
    *,
    live: bool,
    now: float,
    segments: int,
    segmentTarget: float,
    dashDelay: float,
    maxSegmentDuration: int,
) -> Optional[str]:
    """
    The MPD, served at C{/App/streams/{id}/{id}.mpd}: dynamic while
    live, static once the stream ended; None until a segment is
    complete.  C{location} adds a C{<Location>} (used verbatim, no query
    added); C{utcTiming} is the URL of the server's ISO time resource.

    One timeline for the life of the packager: presentation time is
    media time (seconds since media time 0, whose wall-clock time is
    C{availabilityStartTime}), so the static MPD of an ended stream
    keeps every period start, C{presentationTimeOffset}, segment number
    and segment time the live one used.  A player that was playing live
    keeps its position when the MPD turns static, plays to the last
    segment and stops (re-basing the timeline at the end sent players
    looking for segments far past the end).  C{mediaPresentationDuration}
    is the end of the last segment on that timeline.

    @param live: the publication goes on (a dynamic MPD; else static).
    @param now: C{clock.seconds()}.
    @param segments: segments listed per track.
    @param maxSegmentDuration: seconds (the HLS target duration).
    """
    tracks = [t for t in segmenter.tracks if t.segments and t.track is not None]
    if not tracks:
        return None
    q = querySuffix(query).replace("$", "$$")
    listed = {t.kind: list(t.segments)[-segments:] for t in tracks}
    end_ms = max(
        (listed[t.kind][-1].start + listed[t.kind][-1].duration) * 1000.0 / t.timescale
        for t in tracks
    )
    depth = max(sum(s.duration for s in listed[t.kind]) / t.timescale for t in tracks)
    origin = segmenter.origin or 0.0
    out = ['<?xml version="1.0" encoding="UTF-8"?>']
    attrs = [
        'xmlns="urn:mpeg:dash:schema:mpd:2011"',
        'profiles="urn:mpeg:dash:profile:isoff-live:2011,urn:mpeg:dash:profile:cmaf:2019"',
    ]
    target = segmentTarget
    if live:
        attrs += [
            'type="dynamic"',
            f'availabilityStartTime="{iso(origin)}"',
            f'publishTime="{iso(segmenter.publishTime or now)}"',
            f'minimumUpdatePeriod="{xsDuration(target)}"',
            f'timeShiftBufferDepth="{xsDuration(max(depth, target))}"',
            f'suggestedPresentationDelay="{xsDuration(max(dashDelay, 3 * target))}"',
        ]
    else:
        attrs += [
            'type="static"',
            f'mediaPresentationDuration="{xsDuration(end_ms / 1000)}"',
        ]
    attrs += [
        f'minBufferTime="{xsDuration(target)}"',
        f'maxSegmentDuration="{xsDuration(maxSegmentDuration)}"',
    ]
    out.append("<MPD " + " ".join(attrs) + ">")
    if location:
        out.append(f"  <Location>{escape(location)}</Location>")
    periods = sorted({s.period for t in tracks for s in listed[t.kind]})
    for period in periods:
        start_ms = segmenter.periodStart.get(period)
        if start_ms is None:
            start_ms = min(
                s.start * 1000.0 / t.timescale
                for t in tracks for s in listed[t.kind] if s.period == period
            )  # fmt: skip
        out.append(f'  <Period id="p{period}" start="{xsDuration(start_ms / 1000)}">')
        for t in tracks:
            periodSegments = [s for s in listed[t.kind] if s.period == period]
            if periodSegments:
                out.extend(_adaptationSet(t, periodSegments, start_ms, q, metadata))
        out.append("  </Period>")
    out.append(
        '  <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value='
        + quoteattr(utcTiming) + "/>"
    )  # fmt: skip
    out.append("</MPD>")
    return "\n".join(out) + "\n"

def _adaptationSet(
    t: TrackState, segments: list[Segment], start_ms: float, q: str, metadata: dict[str, Any]
) -> list[str]:
    track = t.track
    assert track is not None
    kind = t.kind
    peak = trackBandwidth(t)[0]
    if not peak:
        peak = metadataRate(metadata, "videodatarate" if kind == VIDEO else "audiodatarate") or (
            2_000_000 if kind == VIDEO else 128_000
        )
    codecs = track.codec_string
    if kind == VIDEO:
        extra = f' width="{track.width}" height="{track.height}"'
        rate = frameRate(t, metadata)
        if rate:
            fraction = Fraction(rate).limit_denominator(1001)
            text = str(fraction.numerator) if fraction.denominator == 1 else str(fraction)
            extra += f' frameRate="{text}"'
        head = (
            '    <AdaptationSet id="0" contentType="video" mimeType="video/mp4"'
            f' codecs="{codecs}"{extra} segmentAlignment="true" startWithSAP="1">'
        )
        rep = f'      <Representation id="video" bandwidth="{peak}" codecs="{codecs}"{extra}>'
    else:
        head = (
            '    <AdaptationSet id="1" contentType="audio" mimeType="audio/mp4"'
            f' codecs="{codecs}" audioSamplingRate="{track.sample_rate}"'
            ' segmentAlignment="true" startWithSAP="1">\n'
            '      <AudioChannelConfiguration schemeIdUri='
            '"urn:mpeg:dash:23003:3:audio_channel_configuration:2011"'
            f' value="{track.channels or 2}"/>'
        )
        rep = (
            f'      <Representation id="audio" bandwidth="{peak}" codecs="{codecs}"'
            f' audioSamplingRate="{track.sample_rate}">'
        )
    pto = int(round(start_ms * t.timescale / 1000.0))
    init = quoteattr(f"{kind}/{initName(segments[0].init)}{q}")
    media = quoteattr(f"{kind}/$Number$.m4s{q}")
    lines = [head, rep]
    lines.append(
        f'        <SegmentTemplate timescale="{t.timescale}" presentationTimeOffset="{pto}"'
        f" startNumber=\"{segments[0].msn}\" initialization={init} media={media}>"
    )
    lines.append("          <SegmentTimeline>")
    runs: list[list[Optional[int]]] = []  # [t or None, d, r]
    end: Optional[int] = None
    for s in segments:
        if runs and s.start == end and s.duration == runs[-1][1]:
            runs[-1][2] += 1  # type: ignore[operator]
        else:
            runs.append([None if s.start == end else s.start, s.duration, 0])
        end = s.start + s.duration
    for start, duration, repeat in runs:
        text = "            <S"
        if start is not None:
            text += f' t="{start}"'
        text += f' d="{duration}"'
        if repeat:
            text += f' r="{repeat}"'
        lines.append(text + "/>")
    lines += [
        "          </SegmentTimeline>",
        "        </SegmentTemplate>",
        "      </Representation>",
        "    </AdaptationSet>",
    ]
    return lines
