# -*- test-case-name: tests.test_media_codecs -*-
"""
AAC: the AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1) and ADTS framing
(ISO/IEC 14496-3 1.A.2).

Pure code.  Every malformed input raises L{MediaError} and nothing else.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Union

from attrs import frozen

from tokengate.media.codecs.bits import BitReader, BitWriter, Buffer, as_bytes
from tokengate.media.errors import MediaError

__all__ = [
    "AAC_SAMPLE_RATES",
    "AudioSpecificConfig",
    "aac_codec_string",
    "ADTSHeader",
    "parse_adts",
    "split_adts",
    "asc_from_adts",
    "build_adts",
]

AAC_SAMPLE_RATES = (
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
)
_RATE_INDEX = {rate: i for i, rate in enumerate(AAC_SAMPLE_RATES)}
_CHANNEL_COUNTS = (0, 1, 2, 3, 4, 5, 6, 8, 0, 0, 0, 7, 8, 24, 8, 0)


@frozen
class AudioSpecificConfig:
    """
    An MPEG-4 AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1): the RTMP AAC
    sequence header body and the esds DecoderSpecificInfo.

    Only the leading fields are decoded.  Everything after
    channelConfiguration (GASpecificConfig, SBR/PS extensions, the byte
    padding) is kept as C{tail}, C{tail_bits} long, so that parse and build
    round-trip byte for byte.  The default tail is GASpecificConfig with
    frameLengthFlag, dependsOnCoreCoder and extensionFlag all 0.  For
    explicit HE-AAC signalling (object type 5 or 29) C{sampling_frequency}
    is the core rate.
    """

    object_type: int
    sampling_frequency_index: int
    sampling_frequency: int
    channel_configuration: int
    tail: int = 0
    tail_bits: int = 3

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.object_type <= 95 or self.object_type == 31:
            raise MediaError(f"audio object type {self.object_type} out of range")
        sfi = self.sampling_frequency_index
        if sfi == 15:
            if not 0 < self.sampling_frequency < 1 << 24:
                raise MediaError(
                    f"explicit sampling frequency {self.sampling_frequency} out of range"
                )
        elif (
            not 0 <= sfi < len(AAC_SAMPLE_RATES) or AAC_SAMPLE_RATES[sfi] != self.sampling_frequency
        ):
            raise MediaError(
                f"sampling frequency index {sfi} does not match {self.sampling_frequency}"
            )
        if not 0 <= self.channel_configuration < 16:
            raise MediaError(f"channel configuration {self.channel_configuration} out of range")
        if self.tail_bits < 0 or not 0 <= self.tail < 1 << self.tail_bits:
            raise MediaError("ASC tail does not fit its bit count")

    @classmethod
    def create(
        cls, object_type: int, sample_rate: int, channel_configuration: int
    ) -> AudioSpecificConfig:
        """An ASC with a table index when *sample_rate* has one, else explicit."""
        sfi = _RATE_INDEX.get(sample_rate, 15)
        return cls(object_type, sfi, sample_rate, channel_configuration)

    @property
    def sample_rate(self) -> int:
        """The sampling frequency in Hz."""
        return self.sampling_frequency

    @property
    def channel_count(self) -> int:
        """Channels for the configuration (0 when a PCE defines them)."""
        return _CHANNEL_COUNTS[self.channel_configuration]

    @property
    def codec_string(self) -> str:
        """The RFC 6381 codec string, C{mp4a.40.<object type>}."""
        return f"mp4a.40.{self.object_type}"

    @classmethod
    def parse(cls, data: Buffer) -> AudioSpecificConfig:
        """Parse an AudioSpecificConfig."""
        r = BitReader(as_bytes(data))
        aot = r.u(5)
        if aot == 31:
            aot = 32 + r.u(6)
        if aot == 0:
            raise MediaError("audio object type 0 (null)")
        sfi = r.u(4)
        if sfi == 15:
            rate = r.u(24)
        elif sfi < len(AAC_SAMPLE_RATES):
            rate = AAC_SAMPLE_RATES[sfi]
        else:
            raise MediaError(f"reserved sampling frequency index {sfi}")
        channels = r.u(4)
        tail_bits = r.remaining
        return cls(aot, sfi, rate, channels, r.u(tail_bits), tail_bits)

    def build(self) -> bytes:
        """Serialize, padding the last byte with zero bits."""
        w = BitWriter()
        if self.object_type < 31:
            w.u(5, self.object_type)
        else:
            w.u(5, 31)
            w.u(6, self.object_type - 32)
        w.u(4, self.sampling_frequency_index)
        if self.sampling_frequency_index == 15:
            w.u(24, self.sampling_frequency)
        w.u(4, self.channel_configuration)
        w.u(self.tail_bits, self.tail)
        w.align_zero()
        return w.getvalue()


def aac_codec_string(asc: Union[AudioSpecificConfig, Buffer]) -> str:
    """C{mp4a.40.<aot>} for an AudioSpecificConfig or its bytes."""
    if not isinstance(asc, AudioSpecificConfig):
        asc = AudioSpecificConfig.parse(asc)
    return asc.codec_string


@frozen
class ADTSHeader:
    """The fields of an ADTS frame header (ISO/IEC 14496-3 1.A.2.2)."""

    mpeg_version: int  # the ID bit: 0 MPEG-4, 1 MPEG-2
    protection_absent: bool
    profile: int  # audio object type - 1
    sampling_frequency_index: int
    channel_configuration: int
    frame_length: int  # header included
    buffer_fullness: int
    raw_data_blocks: int  # number_of_raw_data_blocks_in_frame + 1

    @property
    def header_length(self) -> int:
        """7 bytes, or 9 with the CRC."""
        return 7 if self.protection_absent else 9

    @property
    def sample_rate(self) -> int:
        """The sampling frequency in Hz."""
        return AAC_SAMPLE_RATES[self.sampling_frequency_index]


def _adts_fields(b: bytes, offset: int) -> tuple[int, int, int, int, int, int, int, int]:
    """The raw ADTS header fields at *offset*, validated."""
    if offset < 0 or offset + 7 > len(b):
        raise MediaError("truncated ADTS header")
    v = int.from_bytes(b[offset : offset + 7], "big")
    if v >> 44 != 0xFFF:
        raise MediaError(f"no ADTS sync word at offset {offset}")
    if (v >> 41) & 3:
        raise MediaError("ADTS layer is not 0")
    protection_absent = (v >> 40) & 1
    sfi = (v >> 34) & 0xF
    if sfi >= len(AAC_SAMPLE_RATES):
        raise MediaError(f"reserved ADTS sampling frequency index {sfi}")
    frame_length = (v >> 13) & 0x1FFF
    if frame_length < (7 if protection_absent else 9):
        raise MediaError(f"ADTS frame length {frame_length} shorter than its header")
    return (
        (v >> 43) & 1,
        protection_absent,
        (v >> 38) & 3,
        sfi,
        (v >> 30) & 7,
        frame_length,
        (v >> 2) & 0x7FF,
        (v & 3) + 1,
    )


def parse_adts(data: Buffer, offset: int = 0) -> ADTSHeader:
    """Parse the ADTS header at *offset*."""
    f = _adts_fields(as_bytes(data), offset)
    return ADTSHeader(f[0], f[1] == 1, f[2], f[3], f[4], f[5], f[6], f[7])


@lru_cache(maxsize=256)
def _asc_for(object_type: int, sfi: int, channels: int) -> AudioSpecificConfig:
    return AudioSpecificConfig(object_type, sfi, AAC_SAMPLE_RATES[sfi], channels)


def asc_from_adts(header: ADTSHeader) -> AudioSpecificConfig:
    """The AudioSpecificConfig an ADTS header implies."""
    return _asc_for(
        header.profile + 1, header.sampling_frequency_index, header.channel_configuration
    )


def split_adts(data: Buffer) -> list[tuple[AudioSpecificConfig, bytes]]:
    """
    Split back-to-back ADTS frames (a PES payload, an C{.aac} file) into
    (AudioSpecificConfig, raw frame) pairs.  There is no resync: garbage
    between frames or a truncated last frame raise MediaError, as do frames
    with several raw data blocks, which cannot be MP4 samples.
    """
    b = as_bytes(data)
    out = []
    pos = 0
    n = len(b)
    while pos < n:
        _, protection_absent, profile, sfi, channels, frame_length, _, blocks = _adts_fields(b, pos)
        if blocks != 1:
            raise MediaError("ADTS frames with several raw data blocks are not supported")
        end = pos + frame_length
        if end > n:
            raise MediaError("truncated ADTS frame")
        out.append(
            (_asc_for(profile + 1, sfi, channels), b[pos + (7 if protection_absent else 9) : end])
        )
        pos = end
    return out


def build_adts(asc: AudioSpecificConfig, raw: Buffer, *, buffer_fullness: int = 0x7FF) -> bytes:
    """Prefix one raw AAC frame with a 7-byte ADTS header (no CRC)."""
    if not 1 <= asc.object_type <= 4:
        raise MediaError(f"ADTS cannot carry audio object type {asc.object_type}")
    if asc.sampling_frequency_index >= len(AAC_SAMPLE_RATES):
        raise MediaError("ADTS cannot carry an explicit sampling frequency")
    if asc.channel_configuration > 7:
        raise MediaError(f"ADTS cannot carry channel configuration {asc.channel_configuration}")
    length = 7 + len(raw)
    if length > 0x1FFF:
        raise MediaError(f"AAC frame of {len(raw)} bytes too long for ADTS")
    v = (
        0xFFF << 44
        | 1 << 40  # MPEG-4, layer 0, protection absent
        | (asc.object_type - 1) << 38
        | asc.sampling_frequency_index << 34
        | asc.channel_configuration << 30
        | length << 13
        | (buffer_fullness & 0x7FF) << 2
    )
    return b"".join((v.to_bytes(7, "big"), raw))
