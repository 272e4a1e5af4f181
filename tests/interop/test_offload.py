"""
Segment offload with a real nginx in front of a real tokengate (a twistd
subprocess, C{--offload-secret}), over loopback, with
C{contrib/nginx/tokengate-offload.conf} included verbatim: ffmpeg publishes
over RTMP, ffmpeg players read HLS through nginx with play tokens (the
playlists from tokengate through nginx, the segments from nginx's cache),
and each segment reaches tokengate once; nginx refuses forged, expired and
misplaced links by itself; a revoked session's playlists are refused at
once while the links it holds live out their lifetime.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from tests import nginxedge, procs
from tests.fixtures import frames, test_clip
from tests.helpers import http_client, require
from tests.service import TokengateProcess
from tokengate.web.offload import OffloadLinks

SECRET = "interop-offload-secret_" + "k" * 16
TTL = 6

_SEGMENT = re.compile(r"^/LiveApp/streams/s1/(?:video|audio)/(?:init\.mp4|\d+\.m4s)$")


def _nginx() -> str:
    path = nginxedge.nginxBinary()
    if path is None:
        require("nginx")  # skips naming it, or fails with TOKENGATE_REQUIRE_CLIENTS=1
    assert path is not None
    return path


class EdgeTests(TestCase):
    timeout = 150

    async def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        nginx = _nginx()
        self.running: list[procs.Running] = []
        self.addCleanup(self._stopClients)
        self.tg = TokengateProcess(self.mktemp(), extra=(
            "--offload-secret", SECRET, "--offload-ttl", str(TTL)))
        self.addCleanup(self.tg.kill)
        self.tg.start()
        code, _ = self.tg.post("/rest/v2/applications/settings/LiveApp",
                               {"playTokenControlEnabled": True})
        self.assertEqual(code, 200)
        self.edgeDir = os.path.abspath(self.mktemp())
        port = nginxedge.freePort()
        conf = nginxedge.writeConfig(self.edgeDir, port, self.tg.http, SECRET)
        self.running.append(procs.start(nginxedge.argv(nginx, self.edgeDir, conf), 140))
        self.edge = "http://127.0.0.1:{}".format(port)
        self.http = http_client(self)
        await self.waitFor(self._edgeUp, 15, "nginx to listen")

    async def _stopClients(self) -> None:
        for r in self.running:
            r.interrupt() if r is self.running[0] else r.kill()
        for r in self.running:
            result = await r.done
            if r is self.running[0] and result.timedOut:
                self.fail("nginx did not stop")

    async def _edgeUp(self) -> bool:
        try:
            r = await self.http.get(self.edge + "/time")
            await r.content()
            return r.code == 200
        except Exception:
            return False

    async def waitFor(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await condition():
                return
            await task.deferLater(reactor, 0.3)
        self.fail("timed out waiting for " + what)

    def mint(self) -> str:
        code, body = self.tg.get("/LiveApp/rest/v2/broadcasts/s1/token?expireDate={}&type=play"
                                 .format(int(time.time()) + 600))
        self.assertEqual(code, 200)
        return body["tokenId"]

    def fills(self) -> float:
        import urllib.request

        with urllib.request.urlopen(self.tg.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r"^tokengate_offload_fills_total (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    async def publish(self, seconds: int) -> None:
        url = "rtmp://127.0.0.1:{}/LiveApp/s1".format(self.tg.rtmp)
        self.running.append(procs.start(
            [self.ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-re", "-i",
             test_clip(seconds), "-c", "copy", "-f", "flv", url], seconds + 30))

        async def segments() -> bool:
            code, body = self.tg.get("/LiveApp/rest/v2/broadcasts/s1")
            return code == 200 and body.get("status") == "broadcasting"

        await self.waitFor(segments, 30, "the publication")
        await task.deferLater(reactor, 7)  # three segments

    async def get(self, url: str) -> tuple[int, bytes, Any]:
        r = await self.http.get(url if url.startswith("http") else self.edge + url)
        return r.code, await r.content(), r.headers

    async def test_playersShareTheCache(self) -> None:
        """
        Two ffmpeg players through nginx, each with its own token: both play;
        every segment they fetched reached tokengate at most once (nginx's
        log says which requests missed its cache, tokengate counts the
        fills), and at least one was served to both from the cache.
        """
        await self.publish(40)
        players = [self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-v", "info",
                               "-i", self.edge + "/LiveApp/streams/s1.m3u8?token=" + self.mint(),
                               "-t", "10", "-f", "null", "-"], 80) for _ in range(2)]
        for player in players:
            result = await player.done
            self.assertEqual(result.code, 0, result.stderr[-1500:])
            self.assertGreaterEqual(frames(result.stderr), 240, result.stderr[-1500:])
            self.assertNotIn("HTTP error", result.stderr)
        log = nginxedge.accessLog(self.edgeDir)
        segments = [(uri, status, cache) for uri, status, cache in log if _SEGMENT.match(uri)]
        self.assertTrue(segments, log)
        fetched: dict[str, int] = {}
        served: dict[str, int] = {}
        for uri, status, cache in segments:
            self.assertEqual(status, 200, (uri, cache))
            served[uri] = served.get(uri, 0) + 1
            if cache != "HIT":
                fetched[uri] = fetched.get(uri, 0) + 1
        self.assertEqual([u for u, n in fetched.items() if n > 1], [], segments)
        self.assertEqual(self.fills(), sum(fetched.values()))
        shared = [u for u, n in served.items() if n >= 2]
        self.assertTrue(shared, segments)
        # the playlists all went to tokengate (never from the cache)
        playlists = [cache for uri, _, cache in log if uri.endswith(".m3u8")]
        self.assertTrue(playlists)
        self.assertEqual(set(playlists), {"-"})

    def start(self, argv: list[str], timeout: float) -> procs.Running:
        r = procs.start(argv, timeout)
        self.running.append(r)
        return r

    async def test_linksAndRevocation(self) -> None:
        """
        nginx refuses a forged, expired, misplaced or missing link by itself
        (403, tokengate not asked); tokengate refuses them too.  A revoked
        session's playlist is refused at once, while a link it already
        holds opens its segment until it expires, and no longer.
        """
        await self.publish(40)
        asked = time.time()
        code, master, _ = await self.get("/LiveApp/streams/s1.m3u8?token=" + self.mint())
        self.assertEqual(code, 200, master)
        video = [line for line in master.decode().splitlines() if line.startswith("s1/video")][0]
        code, playlist, _ = await self.get("/LiveApp/streams/" + video)
        self.assertEqual(code, 200, playlist)
        listed = [line for line in playlist.decode().splitlines()
                  if re.match(r"^video/\d+\.m4s\?", line)]
        self.assertGreaterEqual(len(listed), 2, playlist)
        held, other = listed[-1], listed[-2]
        path, _, link = held.partition("?")
        expires = int(re.search(r"expires=(\d+)", link).group(1))
        self.assertLessEqual(expires, asked + TTL + 5)
        url = "/LiveApp/streams/s1/" + held

        code, first, headers = await self.get(url)
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"x-cache-status"), [b"MISS"])
        code, again, headers = await self.get(url)
        self.assertEqual((code, again), (200, first))
        self.assertEqual(headers.getRawHeaders(b"x-cache-status"), [b"HIT"])
        fills = self.fills()
        self.assertEqual(fills, 1)

        links = OffloadLinks(SECRET, TTL)
        n = int(path.split("/")[1].split(".")[0])
        md5 = re.search(r"md5=([^&]+)", link).group(1)
        forged = md5[:-2] + ("AA" if md5[-2:] != "AA" else "BB")
        bad = [
            "video/{}.m4s?{}".format(n, link.replace(md5, forged)),  # forged
            "{}?{}".format(path, links.link("/LiveApp/streams/s1/" + path, time.time() - 60,
                                             expires=int(time.time()) - 1)),  # expired
            "video/{}.m4s?{}".format(n - 1, link),  # another segment's link
            "audio/{}.m4s?{}".format(n, link),  # another track's
            "{}?{}&scope=track".format(path, link),  # a file's link as a track's
            "{}?{}&scope=stream".format(path, link),  # an unknown scope
            path,  # none
        ]
        for item in bad:
            code, body, _ = await self.get("/LiveApp/streams/s1/" + item)
            self.assertEqual(code, 403, item)
            # tokengate refuses it too, when asked directly
            code, body, _ = await self.get(self.tg.base + "/LiveApp/streams/s1/" + item)
            self.assertEqual(code, 403, item)
        # another stream's path with this stream's link
        code, body, _ = await self.get("/LiveApp/streams/s2/{}?{}".format(path, link))
        self.assertEqual(code, 403)
        self.assertEqual(self.fills(), fills)
        log = nginxedge.accessLog(self.edgeDir)
        refused = [entry for entry in log if entry[1] == 403]
        self.assertEqual({cache for _, _, cache in refused}, {"-"}, refused)

        # revoke every viewing session of the stream
        import urllib.request

        request = urllib.request.Request(
            self.tg.base + "/LiveApp/rest/v2/broadcasts/s1/sessions", method="DELETE")
        with urllib.request.urlopen(request, timeout=10) as r:
            self.assertEqual(r.status, 200)
        code, body, _ = await self.get("/LiveApp/streams/" + video)
        self.assertEqual(code, 403, body)
        # the links already handed out still open their segments (from the
        # cache, or filled from tokengate) until they expire...
        self.assertLess(time.time(), expires)
        code, body, _ = await self.get(url)
        self.assertEqual((code, body), (200, first))
        code, body, _ = await self.get("/LiveApp/streams/s1/" + other)
        self.assertEqual(code, 200)
        # ...and no longer: revocation is bounded by the link's lifetime
        await task.deferLater(reactor, max(0.0, expires - time.time()) + 1.1)
        for item in (held, other):
            code, body, _ = await self.get("/LiveApp/streams/s1/" + item)
            self.assertEqual(code, 403, item)
        self.assertLessEqual(expires, time.time())

    async def test_dash(self) -> None:
        """
        The MPD's templates carry links for their track (C{scope=track}),
        which nginx checks with the shipped configuration: they open the
        track's segments and nothing else; ffmpeg plays DASH through nginx.
        """
        code, _ = self.tg.post("/rest/v2/applications/settings/LiveApp",
                               {"playTokenControlEnabled": True, "dashMuxingEnabled": True})
        self.assertEqual(code, 200)
        await self.publish(40)
        code, body, _ = await self.get("/LiveApp/streams/s1/s1.mpd?token=" + self.mint())
        self.assertEqual(code, 200, body)
        mpd = body.decode()
        start = re.search(r'startNumber="(\d+)"', mpd).group(1)
        templates = {}
        for init, media in re.findall(r'initialization="([^"]+)" media="([^"]+)"', mpd):
            track = media.split("/")[0]
            templates[track] = media.replace("&amp;", "&")
            code, data, _ = await self.get("/LiveApp/streams/s1/" + init.replace("&amp;", "&"))
            self.assertEqual((code, data[4:8]), (200, b"ftyp"), init)
            code, _, _ = await self.get(
                "/LiveApp/streams/s1/" + templates[track].replace("$Number$", start))
            self.assertEqual(code, 200, templates[track])
        self.assertEqual(sorted(templates), ["audio", "video"])
        # the video track's link on the audio track, on another stream: refused
        link = templates["video"].split("?", 1)[1]
        for path in ("/LiveApp/streams/s1/audio/{}.m4s", "/LiveApp/streams/s2/video/{}.m4s"):
            code, _, _ = await self.get(path.format(start) + "?" + link)
            self.assertEqual(code, 403, path)
        # without scope=track the track's link is no file's
        code, _, _ = await self.get("/LiveApp/streams/s1/video/{}.m4s?{}".format(
            start, link.replace("&scope=track", "")))
        self.assertEqual(code, 403)
        player = self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-v", "info",
                             "-i", self.edge + "/LiveApp/streams/s1/s1.mpd?token=" + self.mint(),
                             "-t", "10", "-f", "null", "-"], 80)
        result = await player.done
        self.assertEqual(result.code, 0, result.stderr[-1500:])
        self.assertGreaterEqual(frames(result.stderr), 240, result.stderr[-1500:])
        self.assertNotIn("HTTP error", result.stderr[:20000])

    async def test_hlsJsLowLatency(self) -> None:
        """
        hls.js in low-latency mode (play.html in headless Chromium) through
        nginx: its blocking playlist reloads pass through nginx to
        tokengate, its parts and segments come from nginx with their links,
        and it plays on.
        """
        require("chromium")
        from tests import browser as chromium

        await self.publish(60)
        b = await chromium.launch(self)
        page = await b.open("{}/LiveApp/play.html?id=s1&playOrder=hls&token={}".format(
            self.edge, self.mint()))
        await page.wait_for(
            "window.tokengateState && window.tokengateState.status === 'playing'", 40)
        start = await page.evaluate("document.querySelector('video').currentTime")
        await page.wait_for(
            "document.querySelector('video').currentTime > {}".format(start + 8), 30)
        await b.close()
        log = nginxedge.accessLog(self.edgeDir)
        parts = [entry for entry in log if re.match(r"^/LiveApp/streams/s1/video/\d+\.\d+\.m4s$",
                                                   entry[0]) and entry[1] == 200]
        self.assertTrue(parts, log)
        blocking = [status for uri, status, _ in nginxedge.accessLog(self.edgeDir, blocking=True)
                    if uri.endswith("/video.m3u8")]
        # answered when the part came (499: one the browser left when it closed)
        self.assertGreater(blocking.count(200), 5, log)
        self.assertLessEqual(set(blocking), {200, 499})
        self.assertEqual([e for e in log if e[1] == 403], [])
