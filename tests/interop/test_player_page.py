"""
The embedded player page (play.html + player.js, with hls.js and dash.js
from npm) in real headless Chromium, against a small test site: HLS, DASH
and MP4 made by ffmpeg, behind a fake token check (GOOD passes, anything
else is 403; a stream that does not exist is 404).
"""

from __future__ import annotations

import atexit
import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web import static
from twisted.web.resource import Resource
from twisted.web.server import Site

import tokengate.web

from tests import browser as chromium
from tests.helpers import require

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(tokengate.web.__file__)), "static")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENDOR_NAMES = ("hls.min.js", "dash.all.min.js")

AUTH = "Not authorized: the token is invalid, expired or already used"
NOT_LIVE = "The stream is not live"

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}

_cache: dict[str, str] = {}


def _tempdir(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


def vendor_dir() -> str:
    """
    The player's npm bundles: those of the installed package (CI installs
    it with pip), else those of an editable install in the source tree,
    else built here by the same npm step as setup.py's.
    """
    if "vendor" in _cache:
        return _cache["vendor"]
    candidates = []
    try:
        dist = importlib.metadata.distribution("tokengate")
        candidates.append(str(dist.locate_file("tokengate/web/static/vendor")))
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates.append(os.path.join(STATIC_DIR, "vendor"))
    for path in candidates:
        if all(os.path.isfile(os.path.join(path, n)) for n in VENDOR_NAMES):
            _cache["vendor"] = path
            return path
    npm = require("npm")
    work = _tempdir("tg-player-npm-")
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(os.path.join(REPO, "player", name), work)
    subprocess.run([npm, "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"],
                   cwd=work, check=True, timeout=300, stdout=subprocess.DEVNULL)
    out = os.path.join(work, "vendor")
    os.makedirs(out)
    shutil.copyfile(os.path.join(work, "node_modules", "hls.js", "dist", "hls.min.js"),
                    os.path.join(out, "hls.min.js"))
    shutil.copyfile(os.path.join(work, "node_modules", "dashjs", "dist", "modern", "umd",
                                 "dash.all.min.js"), os.path.join(out, "dash.all.min.js"))
    _cache["vendor"] = out
    return out


def media_dir() -> str:
    """
    12 s of test pattern and tone as HLS (fMP4), DASH (static MPD) and a
    progressive MP4, laid out as the server's streams/ folder for stream s1;
    stream h1 exists as HLS only.
    """
    if "media" in _cache:
        return _cache["media"]
    ffmpeg = require("ffmpeg")
    out = _tempdir("tg-player-media-")
    mp4 = os.path.join(out, "s1.mp4")
    run = dict(check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "12",
         "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "veryfast", "-g", "25",
         "-c:a", "aac", "-b:a", "64k", "-movflags", "+faststart", mp4],
        **run,
    )
    subprocess.run(
        [ffmpeg, "-v", "error", "-i", mp4, "-c", "copy", "-f", "hls", "-hls_time", "2",
         "-hls_segment_type", "fmp4", "-hls_playlist_type", "vod",
         "-hls_fmp4_init_filename", "s1_init.mp4",
         "-hls_segment_filename", os.path.join(out, "s1_%03d.m4s"),
         os.path.join(out, "s1.m3u8")],
        **run,
    )
    os.makedirs(os.path.join(out, "s1"))
    subprocess.run(
        [ffmpeg, "-v", "error", "-i", mp4, "-c", "copy", "-f", "dash", "-seg_duration", "2",
         "-use_template", "1", "-use_timeline", "1",
         os.path.join(out, "s1", "s1.mpd")],
        **run,
    )
    shutil.copyfile(os.path.join(out, "s1.m3u8"), os.path.join(out, "h1.m3u8"))
    _cache["media"] = out
    return out


def _file(path: str) -> static.File:
    f = static.File(path)
    f.contentTypes = dict(f.contentTypes, **CONTENT_TYPES)
    return f


class Streams(Resource):
    """
    /LiveApp/streams/: the entry files (X.m3u8, X/X.mpd, X.mp4) need
    token=GOOD; what they reference (segments, init) is served without one,
    as the real server's session credentials would let it be.  Every
    request is logged.
    """

    isLeaf = True

    def __init__(self, root: str) -> None:
        super().__init__()
        self.root = root
        self.log: list[tuple[str, str, Optional[str]]] = []

    @staticmethod
    def is_entry(path: str) -> bool:
        parts = path.split("/")
        if len(parts) == 1:
            return parts[0].endswith((".m3u8", ".mp4")) and "_" not in parts[0]
        return len(parts) == 2 and parts[1] == parts[0] + ".mpd"

    def render(self, request: Any) -> Any:
        path = "/".join(p.decode("utf-8") for p in request.postpath)
        token = (request.args.get(b"token") or [b""])[0].decode("utf-8", "replace") or None
        self.log.append((request.method.decode(), path, token))
        full = os.path.join(self.root, *path.split("/"))
        if ".." in path.split("/") or not os.path.isfile(full):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain")
            return b"Stream is not live\n"
        if self.is_entry(path) and token != "GOOD":
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"success": False,
                               "message": "Invalid Token for streamId:" + path.split("/")[0]}).encode()
        return _file(full).render(request)

    def entries(self) -> list[str]:
        """
        The entry files requested, in order, repeats (retries) removed.
        """
        out: list[str] = []
        for _, p, _ in self.log:
            if self.is_entry(p) and p not in out:
                out.append(p)
        return out


class Time(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        t = time.time()
        return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (t % 1 * 1000)).encode()


def site(media: str, vendor: str) -> tuple[Site, Streams]:
    root = Resource()
    app = Resource()
    root.putChild(b"LiveApp", app)
    root.putChild(b"time", Time())
    for name in ("play.html", "player.js"):
        app.putChild(name.encode(), _file(os.path.join(STATIC_DIR, name)))
    app.putChild(b"vendor", _file(vendor))
    streams = Streams(media)
    app.putChild(b"streams", streams)
    return Site(root), streams


STATE = "window.tokengateState"


class PlayerPageTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        media, vendor = media_dir(), vendor_dir()
        s, self.streams = site(media, vendor)
        s.displayTracebacks = False
        self.port = reactor.listenTCP(0, s, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = "http://127.0.0.1:{}".format(self.port.getHost().port)
        self.browser = await chromium.launch(self)

    async def open(self, query: str) -> chromium.Page:
        self.page = await self.browser.open(self.base + "/LiveApp/play.html?" + query)
        return self.page

    async def state(self) -> dict:
        return await self.page.evaluate("JSON.parse(JSON.stringify({}))".format(STATE))

    def check_requests(self, page: chromium.Page) -> None:
        """
        The page fetched nothing off this site, and sent the token only
        with the entry request (never with segments).
        """
        self.assertTrue(page.requests, "the page made no request")
        for url in page.requests:
            if url.startswith(("data:", "blob:", "about:")):
                continue
            self.assertTrue(url.startswith(self.base + "/"), "request off the site: " + url)
        for method, path, token in self.streams.log:
            if not self.streams.is_entry(path):
                self.assertIsNone(token, "token re-appended to " + path)

    async def assert_plays(self, query: str, tech: str, shot: str) -> dict:
        page = await self.open(query)
        await page.wait_for(STATE + ".status === 'playing'", timeout=30)
        start = await page.evaluate(STATE + ".currentTime")
        await page.wait_for("{0}.status === 'playing' && {0}.currentTime >= {1}".format(
            STATE, start + 3), timeout=20)
        state = await self.state()
        self.assertEqual(state["tech"], tech, page.debug())
        self.assertIsNone(state["error"])
        self.assertTrue(await page.evaluate("document.querySelector('#error').hidden"))
        self.assertFalse(await page.evaluate("document.querySelector('#video').hidden"))
        self.assertTrue(await page.evaluate("document.querySelector('#video').muted"))
        # The picture itself: look at it in _trial_temp when in doubt.
        png = await page.screenshot(os.path.abspath("player-{}.png".format(shot)))
        self.assertTrue(png.startswith(b"\x89PNG"))
        self.check_requests(page)
        if tech != "vod":
            # segments were fetched (and checked above to go without the token)
            segments = [p for _, p, _ in self.streams.log if not self.streams.is_entry(p)]
            self.assertTrue(segments, self.streams.log)
        return state

    async def assert_error(self, query: str, message: str) -> dict:
        page = await self.open(query)
        await page.wait_for(STATE + ".status === 'error'", timeout=30)
        text = await page.evaluate("document.querySelector('#error').textContent")
        self.assertEqual(text, message, page.debug())
        state = await self.state()
        self.assertEqual(state["error"], message)
        self.assertFalse(await page.evaluate("document.querySelector('#error').hidden"))
        self.assertTrue(await page.evaluate("document.querySelector('#video').hidden"))
        self.assertEqual(await page.evaluate(
            "document.querySelector('#error').getAttribute('role')"), "alert")
        self.check_requests(page)
        return state

    # -- each technology, good and bad token --------------------------------------

    async def test_hlsPlays(self) -> None:
        await self.assert_plays("id=s1&playOrder=hls&token=GOOD", "hls", "hls")
        self.assertEqual(self.streams.entries(), ["s1.m3u8"])

    async def test_dashPlays(self) -> None:
        await self.assert_plays("id=s1&playOrder=dash&token=GOOD", "dash", "dash")
        self.assertEqual(self.streams.entries(), ["s1/s1.mpd"])

    async def test_vodPlays(self) -> None:
        await self.assert_plays("id=s1&playOrder=vod&token=GOOD", "vod", "vod")
        self.assertEqual(self.streams.entries(), ["s1.mp4"])

    async def test_hlsBadToken(self) -> None:
        await self.assert_error("id=s1&playOrder=hls&token=BAD", AUTH)

    async def test_dashBadToken(self) -> None:
        await self.assert_error("id=s1&playOrder=dash&token=BAD", AUTH)

    async def test_vodBadToken(self) -> None:
        await self.assert_error("id=s1&playOrder=vod&token=BAD", AUTH)

    # -- playOrder ------------------------------------------------------------------

    async def test_defaultOrderFallsThroughWebRTC(self) -> None:
        """
        Without playOrder the page tries webrtc, then hls; with no WebRTC
        technology registered, hls plays.
        """
        state = await self.assert_plays("id=s1&token=GOOD", "hls", "default")
        self.assertEqual([(a["tech"], a["kind"]) for a in state["attempts"]],
                         [("webrtc", "unavailable")])

    async def test_notLiveFallsThrough(self) -> None:
        """
        A 404 (not live; the server keeps the token) moves on to the next
        technology.
        """
        state = await self.assert_plays("id=h1&playOrder=dash,hls&token=GOOD", "hls", "fallthrough")
        self.assertEqual([(a["tech"], a["kind"]) for a in state["attempts"]], [("dash", "notlive")])
        self.assertEqual(self.streams.entries(), ["h1/h1.mpd", "h1.m3u8"])

    async def test_notLive(self) -> None:
        state = await self.assert_error("id=nope&playOrder=hls,dash,vod&token=GOOD", NOT_LIVE)
        self.assertEqual([a["kind"] for a in state["attempts"]], ["notlive"] * 3)

    async def test_refusedTokenIsNotRetried(self) -> None:
        """
        After a 403 the page does not try the other technologies: a spent
        one-time token would only be refused again.
        """
        state = await self.assert_error("id=s1&playOrder=hls,dash,vod&token=BAD", AUTH)
        await deferLater(reactor, 1.0, lambda: None)
        self.assertEqual(set(self.streams.entries()), {"s1.m3u8"})
        self.assertEqual([(a["tech"], a["kind"]) for a in state["attempts"]], [("hls", "auth")])
        self.assertEqual((await self.state())["status"], "error")

    async def test_noStreamId(self) -> None:
        await self.assert_error("playOrder=hls&token=GOOD",
                                "Playback failed: no stream id (the id parameter) in the address")
        self.assertEqual(self.streams.log, [])
