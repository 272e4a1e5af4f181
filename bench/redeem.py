"""
Redeem throughput per token store, against the in-memory store as the
baseline measured in the same run.

    python bench/redeem.py [--tokens 20000] [--window 200]

Starts its own redis-server on a free loopback port (skipped with a note
when redis-server is not installed).  Prints redeems/s per store and the
ratio to the memory store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, task  # noqa: E402

from tokengate.store.memory import MemoryTokenStore  # noqa: E402
from tokengate.store.sqlite import SQLiteTokenStore  # noqa: E402
from tokengate.tokens import Outcome, Probe, StoredToken, digest, new_token  # noqa: E402


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


async def run_store(store, n: int, window: int) -> tuple[float, float]:
    now = time.time()
    tokens = [new_token("s{}".format(i % 100), "play", int(now) + 3600) for i in range(n)]
    t0 = time.perf_counter()
    for i in range(0, n, window):
        await defer.gatherResults(
            [store.add(StoredToken.fromToken("LiveApp", t)) for t in tokens[i : i + window]]
        )
    mint = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    granted = 0
    for i in range(0, n, window):
        results = await defer.gatherResults(
            [
                store.redeem(digest(t.tokenId), Probe("LiveApp", t.streamId, "play", None, now))
                for t in tokens[i : i + window]
            ]
        )
        granted += results.count(Outcome.GRANTED)
    redeem = n / (time.perf_counter() - t0)
    assert granted == n, (granted, n)
    return mint, redeem


async def main(args) -> None:
    results = {}
    tmp = tempfile.mkdtemp()
    results["memory"] = await run_store(MemoryTokenStore(), args.tokens, args.window)
    sqlite = SQLiteTokenStore(os.path.join(tmp, "bench.sqlite3"), reactor)
    results["sqlite"] = await run_store(sqlite, args.tokens, args.window)
    await sqlite.close()
    redis_bin = shutil.which("redis-server")
    proc = None
    if redis_bin:
        from tokengate.store.redis import RedisTokenStore

        port = free_port()
        proc = subprocess.Popen(
            [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    await task.deferLater(reactor, 0.05)
            store = RedisTokenStore.fromURL("redis://127.0.0.1:{}/0".format(port), reactor)
            results["redis"] = await run_store(store, args.tokens, args.window)
            await store.close()
        finally:
            proc.terminate()
            proc.wait(10)
    else:
        print("redis-server not installed: Redis store not measured")
    base = results["memory"][1]
    print("{:8} {:>12} {:>12} {:>10}".format("store", "mints/s", "redeems/s", "vs memory"))
    for name, (mint, redeem) in results.items():
        print("{:8} {:12.0f} {:12.0f} {:10.3f}".format(name, mint, redeem, redeem / base))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--window", type=int, default=200, help="redemptions in flight")
    args = parser.parse_args()

    def run():
        d = defer.Deferred.fromCoroutine(main(args))
        d.addErrback(lambda f: (f.printTraceback(), None))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
