# -*- test-case-name: tests.test_media_codecs -*-
"""
Codec building blocks, pure code, no I/O:

  - L{tokengate.media.codecs.flv}: FLV/RTMP tag bodies, and the one parser
    of tag bodies into media samples (L{video_sample}, L{audio_sample});
  - L{tokengate.media.codecs.h264}: NAL units, SPS, avcC, Annex B and the
    one Annex B to length-prefixed conversion (L{annexb_access_unit});
  - L{tokengate.media.codecs.aac}: AudioSpecificConfig and ADTS;
  - L{tokengate.media.codecs.bits}: the buffer type and bit reading/writing.

Every name of those modules' C{__all__} is importable from here too.
Everything here may run once per frame for many streams, so the per-frame
paths avoid copies where they can: they hand back C{memoryview} slices of
their input, or join their output once.  Every malformed input raises
L{MediaError} and nothing else.
"""

from __future__ import annotations

from tokengate.media.codecs.bits import Buffer
from tokengate.media.codecs.flv import (
    AAC_RAW,
    AAC_SEQUENCE_HEADER,
    AVC_END_OF_SEQUENCE,
    AVC_NALU,
    AVC_SEQUENCE_HEADER,
    CODEC_AVC,
    FRAME_DISPOSABLE,
    FRAME_INFO,
    FRAME_INTER,
    FRAME_KEY,
    SOUND_AAC,
    audio_sample,
    AudioTag,
    build_audio_tag,
    build_video_tag,
    parse_audio_tag,
    parse_video_tag,
    UnsupportedCodec,
    video_sample,
    VideoSample,
    VideoTag,
)
from tokengate.media.codecs.h264 import (
    NAL_AUD,
    NAL_FILLER,
    NAL_IDR,
    NAL_PPS,
    NAL_SEI,
    NAL_SLICE,
    NAL_SPS,
    SPS,
    AccessUnit,
    add_emulation_prevention,
    annexb_access_unit,
    avc_codec_string,
    AVCDecoderConfigurationRecord,
    build_avcc_from_sps_pps,
    build_sps,
    is_keyframe_nals,
    length_prefixed_nals,
    length_prefixed_to_annexb,
    nal_unit_type,
    parse_sps,
    remove_emulation_prevention,
    split_annexb,
)
from tokengate.media.codecs.aac import (
    AAC_SAMPLE_RATES,
    aac_codec_string,
    ADTSHeader,
    asc_from_adts,
    AudioSpecificConfig,
    build_adts,
    parse_adts,
    split_adts,
)

__all__ = [
    "Buffer",
    "FRAME_KEY",
    "FRAME_INTER",
    "FRAME_DISPOSABLE",
    "FRAME_INFO",
    "CODEC_AVC",
    "AVC_SEQUENCE_HEADER",
    "AVC_NALU",
    "AVC_END_OF_SEQUENCE",
    "SOUND_AAC",
    "AAC_SEQUENCE_HEADER",
    "AAC_RAW",
    "VideoTag",
    "AudioTag",
    "parse_video_tag",
    "parse_audio_tag",
    "build_video_tag",
    "build_audio_tag",
    "UnsupportedCodec",
    "VideoSample",
    "video_sample",
    "audio_sample",
    "NAL_SLICE",
    "NAL_IDR",
    "NAL_SEI",
    "NAL_SPS",
    "NAL_PPS",
    "NAL_AUD",
    "SPS",
    "AVCDecoderConfigurationRecord",
    "parse_sps",
    "build_sps",
    "remove_emulation_prevention",
    "add_emulation_prevention",
    "avc_codec_string",
    "nal_unit_type",
    "split_annexb",
    "length_prefixed_nals",
    "length_prefixed_to_annexb",
    "is_keyframe_nals",
    "build_avcc_from_sps_pps",
    "NAL_FILLER",
    "AccessUnit",
    "annexb_access_unit",
    "AAC_SAMPLE_RATES",
    "AudioSpecificConfig",
    "aac_codec_string",
    "ADTSHeader",
    "parse_adts",
    "split_adts",
    "asc_from_adts",
    "build_adts",
]
