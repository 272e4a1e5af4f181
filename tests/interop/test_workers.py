"""
C{twistd tokengate --workers 3} as a real process on a real redis-server,
driven over loopback:

 - the three workers listen on the same HTTP, HTTPS, RTMP and SRT ports:
   HTTP and HTTPS connections from many client addresses reach every worker, all those of
   one address the same worker (each scrape says which,
   C{tokengate_worker_info}); ffmpeg publishers over RTMP and SRT land on
   more than one worker (the stream's C{originAdress} is its worker's node
   address), and an SRT caller's handshake and media all reach the one
   worker that admitted it;
 - ffmpeg publishes over RTMP to the shared port (it lands on one worker);
   ffmpeg plays it with one-time play tokens through the shared ports on
   another worker (each worker counts the plays it admitted), which serves
   it from its pull of the stream, the frames decoding: over RTMP (plays
   repeated until one lands elsewhere) and HLS (the stream published under
   new names until it lives elsewhere than the worker this test's address
   reaches);
 - a worker killed with SIGKILL is restarted by the supervisor while the
   shared port keeps serving;
 - SIGTERM to the supervisor ends it and every worker within a bound;
 - without a Redis store C{--workers} is refused with a plain message.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import time
import urllib.request
from typing import Callable, Optional

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests import procs
from tests.fixtures import test_clip
from tests.helpers import require
from tests.redisserver import start_redis_server
from tests.interop.test_store_redis import _write_certificates
from tests.service import TokengateProcess, free_port

WORKERS = 3
#: seconds SIGTERM to the supervisor may take to end everything (the
#: supervisor's own bound is 10 s before SIGKILL)
STOP_BOUND = 20.0


def consecutiveFreePorts(count: int) -> int:
    """
    The first of C{count} consecutive TCP ports on 127.0.0.1 that were all
    free a moment ago.
    """
    for _ in range(200):
        base = random.randint(20000, 60000)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no {} consecutive free ports".format(count))


def children(pid: int) -> list[int]:
    """
    The child processes of C{pid} (Linux's /proc).
    """
    try:
        with open("/proc/{}/task/{}/children".format(pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """Whether C{pid} runs (a zombie does not)."""
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class WorkersTests(TestCase):
    timeout = 300

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        redis = start_redis_server(self)
        self.base = consecutiveFreePorts(WORKERS)
        certificates = os.path.abspath(self.mktemp())
        os.makedirs(certificates)
        self.ca, cert, key, _ = _write_certificates(certificates)
        self.https = free_port()
        self.tg = TokengateProcess(self.mktemp(), extra=(
            "--https", "ssl:{}:interface=127.0.0.1".format(self.https),
            "--certificate", cert, "--private-key", key,
            "--workers", str(WORKERS), "--store", redis.url,
            "--node-address", "127.0.0.1:{}".format(self.base),
            # /metrics from every loopback address (the tests' clients)
            "--rest-allowed-cidr", "127.0.0.0/8"))
        self.addCleanup(self.tg.stop, 30)
        self.tg.start(timeout=120)
        self.running: list[procs.Running] = []
        self.errors: list[str] = []
        self.addCleanup(self._killClients)
        for index in range(WORKERS):
            self.waitBlocking(lambda index=index: "LiveApp" in self.get(
                self.internal(index), "/rest/v2/applications").get("applications", []),
                60, "worker {} ready".format(index))

    async def _killClients(self) -> None:
        for r in self.running:
            r.kill()
        for r in self.running:
            await r.done

    # --- helpers -----------------------------------------------------------

    def internal(self, index: int) -> str:
        return "http://127.0.0.1:{}".format(self.base + index)

    def address(self, index: int) -> str:
        return "127.0.0.1:{}".format(self.base + index)

    def get(self, base: str, path: str) -> dict:
        import json
        import urllib.error

        try:
            with urllib.request.urlopen(base + path, timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return {"status": e.code}
        except OSError:
            return {}

    def waitBlocking(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.fail("not within {} s: {}\n{}".format(timeout, what,
                                                          self.tg.logText()[-4000:]))
            time.sleep(0.2)

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout:
                self.fail("not within {} s: {}".format(timeout, what))
            await deferLater(reactor, 0.2, lambda: None)
        return time.monotonic() - started

    def answeringWorker(self, source: str = "127.0.0.1", tls: bool = False) -> Optional[int]:
        """
        Which worker answers a new connection to the shared HTTP (or, with
        C{tls}, HTTPS) port from the address C{source} (127.0.0.0/8 is all
        loopback).
        """
        import http.client
        import ssl

        connection: http.client.HTTPConnection
        if tls:
            connection = http.client.HTTPSConnection(
                "127.0.0.1", self.https, timeout=5, source_address=(source, 0),
                context=ssl.create_default_context(cafile=self.ca))
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.tg.http, timeout=5,
                                                    source_address=(source, 0))
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            text = response.read().decode()
        except OSError as e:
            self.errors.append(repr(e))
            return None
        finally:
            connection.close()
        m = re.search(r'tokengate_worker_info\{address="[^"]+",worker="(\d+)"\} 1', text)
        return int(m.group(1)) if m else None

    def spreadOverAddresses(self, tls: bool = False) -> dict[str, set[Optional[int]]]:
        """
        The workers that answer 4 connections from each of 40 client
        addresses.
        """
        return {source: {self.answeringWorker(source, tls) for _ in range(4)}
                for source in ("127.0.0.{}".format(n) for n in range(1, 41))}

    def workerPids(self) -> dict[int, int]:
        """
        The supervisor's workers, by index (from their command lines).
        """
        assert self.tg.proc is not None
        found = {}
        for pid in children(self.tg.proc.pid):
            try:
                with open("/proc/{}/cmdline".format(pid), "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"--worker" in argv:
                found[int(argv[argv.index(b"--worker") + 1])] = pid
        return found

    def origin(self, streamId: str) -> Optional[str]:
        body = self.get(self.internal(0), "/LiveApp/rest/v2/broadcasts/" + streamId)
        if body.get("status") == "broadcasting":
            return body.get("originAdress")
        return None

    def publishRTMP(self, streamId: str) -> procs.Running:
        r = procs.start([self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
                         "-re", "-stream_loop", "-1", "-i", test_clip(), "-c", "copy",
                         "-f", "flv", "rtmp://127.0.0.1:{}/LiveApp/{}".format(
                             self.tg.rtmp, streamId)], timeout=150)
        self.running.append(r)
        return r

    def publishSRT(self, streamId: str) -> procs.Running:
        r = procs.start([self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
                         "-re", "-stream_loop", "-1", "-i", test_clip(), "-c", "copy",
                         "-f", "mpegts", "srt://127.0.0.1:{}?streamid=LiveApp/{}".format(
                             self.tg.srt, streamId)], timeout=150)
        self.running.append(r)
        return r

    async def spread(self, publish: Callable[[str], procs.Running], prefix: str) -> set[str]:
        """
        Publish streams C{prefix}0, 1, ... one at a time (each kept live)
        until two of them live on different workers (at most 12); the
        workers' addresses they live on.
        """
        origins: set[str] = set()
        for n in range(12):
            streamId = "{}{}".format(prefix, n)
            publish(streamId)
            await self.until(lambda: self.origin(streamId) is not None, 30,
                             streamId + " broadcasting")
            origins.add(str(self.origin(streamId)))
            if len(origins) >= 2:
                break
        return origins

    # --- tests -------------------------------------------------------------

    async def test_sharedPorts(self) -> None:
        """
        Every worker answers on the shared HTTP port, every connection of
        one client address on the same worker; RTMP and SRT publishers land
        on several workers; an SRT caller stays on its worker (it is
        admitted, and only its worker receives its datagrams).
        """
        for tls in (False, True):
            seen = self.spreadOverAddresses(tls)
            for source, workers in seen.items():
                self.assertEqual(len(workers), 1, (tls, source, workers, self.errors))
            self.assertEqual(set().union(*seen.values()), set(range(WORKERS)))
        addresses = {self.address(index) for index in range(WORKERS)}
        rtmp = await self.spread(self.publishRTMP, "r")
        self.assertGreaterEqual(len(rtmp), 2)
        self.assertLessEqual(rtmp, addresses)
        srt = await self.spread(self.publishSRT, "s")
        self.assertGreaterEqual(len(srt), 2)
        self.assertLessEqual(srt, addresses)
        # each SRT caller's datagrams all reach the worker that admitted
        # it: the callers are counted where their streams live, and a worker
        # holding none receives no SRT byte while they stream
        srtStreams = [self.origin("s{}".format(n)) for n in range(12)]
        srtStreams = [o for o in srtStreams if o is not None]
        connections = [self.metric(i, r'tokengate_srt_connections') for i in range(WORKERS)]
        self.assertEqual(sum(connections), len(srtStreams))
        for index in range(WORKERS):
            self.assertEqual(connections[index], srtStreams.count(self.address(index)))
        before = [self.metric(i, r'tokengate_bytes_total\{direction="in",protocol="srt"\}')
                  for i in range(WORKERS)]
        await deferLater(reactor, 3.0, lambda: None)
        after = [self.metric(i, r'tokengate_bytes_total\{direction="in",protocol="srt"\}')
                 for i in range(WORKERS)]
        for index in range(WORKERS):
            if connections[index]:
                self.assertGreater(after[index], before[index])
            else:
                self.assertEqual(after[index], before[index])

    def metric(self, index: int, pattern: str) -> float:
        """
        A sample of worker C{index}'s metrics (its own port), 0 if absent.
        """
        with urllib.request.urlopen(self.internal(index) + "/metrics", timeout=5) as r:
            text = r.read().decode()
        m = re.search(r"^" + pattern + r" ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def mintPlay(self, streamId: str) -> str:
        import json

        url = "{}/LiveApp/rest/v2/broadcasts/{}/token?type=play&expireDate={}".format(
            self.tg.base, streamId, int(time.time()) + 600)
        with urllib.request.urlopen(url, timeout=10) as r:
            return str(json.loads(r.read())["tokenId"])

    def plays(self, index: int, protocol: str) -> float:
        """The plays worker C{index} admitted over C{protocol}."""
        with urllib.request.urlopen(self.internal(index) + "/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(v) for v in re.findall(
            r'^tokengate_grants_total\{action="play",kind="[^"]*",protocol="%s"\} ([0-9.e+]+)$'
            % protocol, text, re.M))

    async def playElsewhere(self, protocol: str, streamId: str, url: Callable[[str], str],
                            origin: int) -> int:
        """
        Play C{streamId} with a new play token until a worker other than
        C{origin} admitted a play (at most 12 attempts), each play decoding
        frames; that worker's index.
        """
        for attempt in range(12):
            before = [self.plays(i, protocol) for i in range(WORKERS)]
            r = procs.start([self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "info",
                             "-rw_timeout", "15000000", "-i", url(self.mintPlay(streamId)),
                             "-t", "2", "-f", "null", "-"], timeout=60)
            self.running.append(r)
            result = await r.done
            self.assertEqual(result.code, 0, result.stderr[-1500:])
            frames = re.findall(r"frame=\s*(\d+)", result.stderr)
            self.assertTrue(frames and int(frames[-1]) > 0, result.stderr[-1500:])
            after = [self.plays(i, protocol) for i in range(WORKERS)]
            admitted = [i for i in range(WORKERS) if after[i] > before[i]]
            self.assertEqual(len(admitted), 1, (before, after))
            if admitted[0] != origin:
                return admitted[0]
        self.fail("no {} play reached a worker other than the publisher's".format(protocol))

    async def test_playOnAnotherWorker(self) -> None:
        """
        A stream published on one worker plays, over RTMP and HLS with
        one-time play tokens, through the shared ports on another worker.
        RTMP connections are spread by their 4-tuple: plays are repeated
        until one lands elsewhere.  HTTP ones by their client address: the
        stream is published (again under new names) until it lives on
        another worker than the one this test's address reaches, then the
        HLS player's every request reaches that worker, which pulls it.
        """
        import json

        req = urllib.request.Request(
            self.tg.base + "/rest/v2/applications/settings/LiveApp",
            data=json.dumps({"playTokenControlEnabled": True}).encode(), method="POST",
            headers={"content-type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()
        for index in range(WORKERS):
            self.waitBlocking(lambda index=index: self.get(
                self.internal(index), "/rest/v2/applications/settings/LiveApp").get(
                "playTokenControlEnabled") is True, 10, "the setting on every worker")
        http = self.answeringWorker()
        self.assertIsNotNone(http, self.errors)
        for n in range(12):
            streamId = "cam{}".format(n)
            self.publishRTMP(streamId)
            await self.until(lambda: self.origin(streamId) is not None, 30,
                             streamId + " broadcasting")
            origin = [i for i in range(WORKERS) if self.address(i) == self.origin(streamId)][0]
            if origin != http:
                break
        else:
            self.fail("every stream published on worker {}".format(http))
        edge = await self.playElsewhere(
            "rtmp", streamId, lambda token: "rtmp://127.0.0.1:{}/LiveApp/{}?token={}".format(
                self.tg.rtmp, streamId, token), origin)
        self.assertNotEqual(edge, origin)
        edge = await self.playElsewhere(
            "hls", streamId, lambda token: "{}/LiveApp/streams/{}.m3u8?token={}".format(
                self.tg.base, streamId, token), origin)
        self.assertEqual(edge, http)

    async def test_killedWorkerRestarts(self) -> None:
        """
        kill -9 one worker: the shared port keeps serving at once, and the
        supervisor starts the worker again (a new process, its own port
        back, answering on the shared port too).
        """
        pids = self.workerPids()
        self.assertEqual(sorted(pids), list(range(WORKERS)))
        os.kill(pids[1], signal.SIGKILL)
        # reaped by the supervisor: every thread gone, its sockets closed
        # (the main thread of a process being killed is a zombie earlier)
        assert self.tg.proc is not None
        supervisor = self.tg.proc.pid
        await self.until(lambda: pids[1] not in children(supervisor), 10, "worker 1 gone")
        answers = [self.answeringWorker("127.0.0.{}".format(n)) for n in range(1, 41)]
        self.assertNotIn(None, answers, self.errors)
        self.assertNotIn(1, answers)
        took = await self.until(
            lambda: self.workerPids().get(1) not in (None, pids[1])
            and "LiveApp" in self.get(self.internal(1), "/rest/v2/applications").get(
                "applications", []), 60, "worker 1 restarted")
        self.assertLess(took, 60)
        seen = self.spreadOverAddresses()
        self.assertEqual(set().union(*seen.values()), set(range(WORKERS)))
        log = self.tg.logText()
        self.assertIn("worker 1 ended", log)
        self.assertIn("restart 1 in", log)
        self.assertEqual(self.workerPids()[0], pids[0])

    def test_sigterm(self) -> None:
        """
        SIGTERM to the supervisor: it and every worker end within
        L{STOP_BOUND} seconds, the supervisor exiting as twistd does on
        SIGTERM (by that signal, after its clean shutdown).
        """
        pids = self.workerPids()
        self.assertEqual(len(pids), WORKERS)
        started = time.monotonic()
        code = self.tg.stop(STOP_BOUND)
        self.assertLess(time.monotonic() - started, STOP_BOUND)
        self.assertIn(code, (0, -signal.SIGTERM))
        self.assertIn("Server Shut Down.", self.tg.logText())
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual([pid for pid in pids.values() if alive(pid)], [])


class NeedsRedisTests(TestCase):
    timeout = 60

    def test_refused(self) -> None:
        """
        C{--workers 2} with the default (SQLite) store exits at once,
        saying a Redis store is needed.
        """
        import subprocess

        from tests.service import ROOT

        tg = TokengateProcess(self.mktemp(), extra=("--workers", "2"))
        os.makedirs(tg.dataDir)
        env = dict(os.environ, PYTHONPATH=ROOT)
        result = subprocess.run(tg.argv(), cwd=ROOT, env=env, capture_output=True,
                                timeout=30)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(b"needs a Redis --store", result.stdout + result.stderr)
