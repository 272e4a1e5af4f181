"""
Micro-benchmark of the sans-IO RTMP parser's receive path.

Builds N MB of chunked video messages (a 2 Mbps-like mix: 2-16 KB frames, a
60 KB keyframe every 60 frames) as a publisher would send them, feeds them to
a server RTMPConnection in TCP-sized reads, and compares its throughput with
a baseline that does only the irreducible Python work on the same bytes:
slicing every chunk payload out of the stream and joining each message once.
It also times the player-side writer (send_video + data_to_send).

    python bench/rtmp_parser_bench.py [--mb 64] [--chunk-size 4096 --chunk-size 128]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tokengate.rtmp.core import (  # noqa: E402
    CLIENT,
    SERVER,
    RTMPConnection,
    VideoData,
)

PUBLISHER_MBYTES_PER_S = 2e6 / 8 / 1e6  # one 2 Mbps publisher


def build(total: int, chunk_size: int, seed: int = 1):
    """
    The server-bound bytes after the handshake, the number of messages and
    the payload spans of every message (for the baseline).
    """
    rng = random.Random(seed)
    client = RTMPConnection(CLIENT)
    server = RTMPConnection(SERVER)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    handshake = client.data_to_send()  # C2
    client.send_set_chunk_size(chunk_size)
    blob = rng.randbytes(70000)
    size = 0
    frame = 0
    ts = 0
    sizes = []
    while size < total:
        n = 60000 if frame % 60 == 0 else rng.randint(2000, 16000)
        start = rng.randrange(0, len(blob) - n)
        payload = (b"\x17\x01" if frame % 60 == 0 else b"\x27\x01") + blob[start : start + n - 2]
        client.send_video(1, ts, payload)
        sizes.append(n)
        size += n
        frame += 1
        ts += 33
    prefix = client.data_to_send()
    # Where the payload spans are: walk the known layout.
    spans = []
    pos = 16  # the Set Chunk Size message: 12-byte header + 4 bytes
    first = True
    for n in sizes:
        header = 12 if first else 8  # fmt 0 once, then fmt 1
        first = False
        pos += header
        message = []
        left = n
        while left:
            take = min(left, chunk_size)
            message.append((pos, pos + take))
            pos += take
            left -= take
            if left:
                pos += 1  # fmt 3 basic header
        spans.append(message)
    assert pos == len(prefix), (pos, len(prefix))
    return handshake, prefix, spans, sum(sizes)


def run_parser(handshake: bytes, reads: list[bytes]) -> tuple[float, int]:
    server = RTMPConnection(SERVER)
    server.receive_data(b"\x03" + bytes(1536))
    server.data_to_send()
    server.receive_data(handshake)
    count = 0
    start = time.perf_counter()
    for data in reads:
        for event in server.receive_data(data):
            if type(event) is VideoData:
                count += 1
    return time.perf_counter() - start, count


def run_baseline(wire: bytes, spans) -> tuple[float, int]:
    count = 0
    start = time.perf_counter()
    for message in spans:
        if len(message) == 1:
            (a, b), = message
            payload = wire[a:b]
        else:
            payload = b"".join([wire[a:b] for a, b in message])
        if payload:
            count += 1
    return time.perf_counter() - start, count


def run_writer(payloads: list[bytes], chunk_size: int) -> float:
    """
    Seconds to send C{payloads} to one player: send_video + data_to_send.
    """
    player = RTMPConnection(SERVER)
    player.receive_data(b"\x03" + bytes(1536) + bytes(1536))
    player.send_set_chunk_size(chunk_size)
    player.data_to_send()
    start = time.perf_counter()
    for i, payload in enumerate(payloads):
        player.send_video(1, i * 33, payload)
        player.data_to_send()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--mb", type=float, default=64.0, help="megabytes of video")
    parser.add_argument("--chunk-size", type=int, action="append", help="default: 4096 and 128")
    parser.add_argument("--read-size", type=int, default=65536, help="bytes per receive_data call")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)
    total = int(args.mb * 1e6)
    print(f"Python {sys.version.split()[0]}, {args.mb:g} MB of video, reads of {args.read_size} bytes")
    for chunk_size in args.chunk_size or [4096, 128]:
        handshake, wire, spans, payload_bytes = build(total, chunk_size)
        reads = [wire[i : i + args.read_size] for i in range(0, len(wire), args.read_size)]
        parse_time = min(run_parser(handshake, reads)[0] for _ in range(args.repeat))
        base_time = min(run_baseline(wire, spans)[0] for _ in range(args.repeat))
        _, count = run_parser(handshake, reads)
        assert count == len(spans), (count, len(spans))
        mb = len(wire) / 1e6
        parser_rate = mb / parse_time
        base_rate = mb / base_time
        payloads = [b"".join(wire[a:b] for a, b in message) for message in spans[:2000]]
        write_time = min(run_writer(payloads, chunk_size) for _ in range(args.repeat))
        write_rate = sum(map(len, payloads)) / 1e6 / write_time
        print(
            f"chunk size {chunk_size:5d}: {len(spans)} messages, {mb:.1f} MB on the wire\n"
            f"  parser   {parser_rate:9.1f} MB/s  ({parse_time * 1e6 / len(spans):.2f} us/message)\n"
            f"  baseline {base_rate:9.1f} MB/s  (bytes slicing + one join per message)\n"
            f"  ratio parser/baseline = {parser_rate / base_rate:.2f}; "
            f"~{parser_rate / PUBLISHER_MBYTES_PER_S:.0f} 2 Mbps publishers per core (parsing only)\n"
            f"  writer   {write_rate:9.1f} MB/s  "
            f"({write_time * 1e6 / len(payloads):.2f} us/message: send_video + data_to_send)"
        )


if __name__ == "__main__":
    main()
