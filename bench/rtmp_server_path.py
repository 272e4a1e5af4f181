"""
The RTMP server's per-message Python cost, in process: the ingest
benchmark's 2 Mbps clip (pre-chunked as publishers send it, 100 ms slices)
fed to N RTMPServerProtocol publishers over string transports, with P
players (one per stream, like bench/rtmp_ingest.py), HLS packaging off as in
that benchmark (C{--hls} turns it on).  C{--per-message} feeds each message
in its own read, as an ffmpeg publisher's writes arrive (C{-re} writes a
frame at a time).  No sockets and no reactor, so it isolates what
bench/rtmp_ingest.py measures minus the reactor and the kernel, and it is
deterministic enough to compare two versions of the code.

    python bench/rtmp_server_path.py [--publishers 50] [--players 20] [--seconds 20]
        [--hls] [--per-message]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransportWithDisconnection  # noqa: E402

from bench.rtmp_ingest import CHUNK, make_clip, messages_of  # noqa: E402
from tokengate.apps import Applications  # noqa: E402
from tokengate.rtmp.core import CLIENT, RTMPConnection  # noqa: E402
from tokengate.rtmp.protocol import RTMPFactory  # noqa: E402
from tokengate.server import Server  # noqa: E402
from tokengate.store.memory import MemoryTokenStore  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402


class Peer:
    def __init__(self, factory, n: int) -> None:
        addr = IPv4Address("TCP", "127.0.0.1", 40000 + n)
        self.proto = factory.buildProtocol(addr)
        self.transport = StringTransportWithDisconnection(peerAddress=addr)
        self.transport.protocol = self.proto
        self.proto.makeConnection(self.transport)
        self.client = RTMPConnection(CLIENT)
        self.pump()

    def pump(self) -> None:
        for _ in range(10):
            out = self.client.data_to_send()
            if out:
                self.proto.dataReceived(out)
            back = self.transport.value()
            self.transport.clear()
            if back:
                self.client.receive_data(back)
            if not out and not back:
                return

    def start(self, name: str, publish: bool) -> None:
        self.client.send_set_chunk_size(CHUNK)
        self.client.send_command(0, "connect", 1, {"app": "LiveApp",
                                                  "tcUrl": "rtmp://127.0.0.1/LiveApp"})
        self.client.send_command(0, "createStream", 2, None)
        if publish:
            self.client.send_command(1, "publish", 3, None, name, "live")
        else:
            self.client.send_command(1, "play", 3, None, name, -2000.0)
        self.pump()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--publishers", type=int, default=50)
    parser.add_argument("--players", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0, help="of media per publisher")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--profile", help="write cProfile stats of one run here")
    parser.add_argument("--hls", action="store_true", help="HLS packaging on")
    parser.add_argument("--per-message", action="store_true",
                        help="one read per message instead of one per 100 ms slice")
    args = parser.parse_args(argv)
    grouped, bitrate = messages_of(make_clip(40))
    slices: list[list[bytes]] = (grouped if args.per_message
                                 else [[b"".join(s)] for s in grouped])
    nslices = int(args.seconds / 0.1)

    def run(profile=None) -> tuple[float, int]:
        clock = Clock()
        clock.advance(1_800_000_000)
        server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=clock)
        server.apps.replace("LiveApp", hlsMuxingEnabled=args.hls)
        factory = RTMPFactory(server.access, server.clock, server.metrics)
        pubs = []
        for i in range(args.publishers):
            p = Peer(factory, i)
            p.start("b{}".format(i), True)
            pubs.append(p)
        players = []
        for j in range(args.players):
            p = Peer(factory, 10000 + j)
            p.start("b{}".format(j % args.publishers), False)
            players.append(p)
        # warm up: one GOP's worth so players are past their keyframe wait
        feeds = [(p.proto, (i * 7) % (len(slices) // 4)) for i, p in enumerate(pubs)]
        for k in range(20):
            for proto, start in feeds:
                for read in slices[start + k]:
                    proto.dataReceived(read)
        for p in players:
            p.transport.clear()
        streams = server.hub.liveStreams()
        before = sum(s.framesIn for s in streams)
        if profile is not None:
            profile.enable()
        t0 = time.process_time()
        for k in range(20, 20 + nslices):
            for proto, start in feeds:
                for read in slices[(start + k) % len(slices)]:
                    proto.dataReceived(read)
            clock.advance(0.1)
            for p in players:
                p.transport.clear()
        elapsed = time.process_time() - t0
        if profile is not None:
            profile.disable()
        return elapsed, sum(s.framesIn for s in streams) - before

    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        run(prof)
        prof.dump_stats(args.profile)
        return
    best = min(run() for _ in range(args.repeat))
    elapsed, messages = best
    streamSeconds = args.publishers * args.seconds
    print("{} publishers x {:.1f} Mbps, {} players, {:g} s of media, HLS {}, {}: {:.3f} s".format(
        args.publishers, bitrate / 1e6, args.players, args.seconds, "on" if args.hls else "off",
        "a read per message" if args.per_message else "a read per 100 ms", elapsed))
    print("  {:.2f} us/message (~{} messages), {:.3f} ms CPU per stream-second".format(
        elapsed * 1e6 / messages, messages, elapsed * 1e3 / streamSeconds))


if __name__ == "__main__":
    main()
