"""
Segment offload (L{tokengate.web.offload}): the links an edge verifies by
itself, computed as nginx's C{secure_link_md5} does, written into every
playlist and MPD, and checked by the gate when the edge fills its cache.
(Real nginx in front of a real server: C{tests.interop.test_offload}.)
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from urllib.parse import parse_qs, urlsplit

from hypothesis import given, strategies as st
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tokengate.config import ServerConfig
from tokengate.tap import Options
from tokengate.web.offload import INIT_LIFE, OffloadError, OffloadLinks

from tests.fixtures import test_clip

from .test_playback import PlaybackBase, uris

SECRET = "s3cret-offload_" + "x" * 20
NOW = 1_800_000_000.0


def nginxMd5(expires: int, path: str, secret: str) -> str:
    """
    What nginx's C{secure_link_md5 "$secure_link_expires$uri <secret>"}
    computes and C{secure_link} compares, written as its documentation
    does it (C{openssl md5 -binary | openssl base64 | tr +/ -_ | tr -d =}).
    """
    raw = hashlib.md5("{}{} {}".format(expires, path, secret).encode()).digest()
    return base64.b64encode(raw).decode().replace("+", "-").replace("/", "_").rstrip("=")


def query(link: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(link, keep_blank_values=True).items()}


class LinkTests(SynchronousTestCase):
    def setUp(self):
        self.links = OffloadLinks(SECRET, 30)

    def check(self, path, link, now=NOW):
        q = query(link)
        return self.links.check(path, q.get("md5"), q.get("expires"), q.get("scope"), now)

    def test_nginxForm(self):
        path = "/LiveApp/streams/s1/video/12.m4s"
        link = self.links.link(path, NOW)
        q = query(link)
        self.assertEqual(q["expires"], str(int(NOW) + 30))
        self.assertEqual(q["md5"], nginxMd5(int(NOW) + 30, path, SECRET))
        self.assertNotIn("scope", q)
        self.assertTrue(self.check(path, link))

    def test_boundToThePath(self):
        link = self.links.link("/LiveApp/streams/s1/video/12.m4s", NOW)
        for other in ("/LiveApp/streams/s1/video/13.m4s", "/LiveApp/streams/s1/audio/12.m4s",
                      "/LiveApp/streams/s2/video/12.m4s", "/Other/streams/s1/video/12.m4s",
                      "/LiveApp/streams/s1/video/12.0.m4s"):
            self.assertFalse(self.check(other, link), other)

    def test_expires(self):
        path = "/LiveApp/streams/s1/video/12.m4s"
        link = self.links.link(path, NOW)
        self.assertTrue(self.check(path, link, NOW + 29.9))
        self.assertFalse(self.check(path, link, NOW + 30))
        self.assertFalse(self.check(path, link, NOW + 3600))
        # a link whose expiry was moved: the digest no longer matches
        q = query(link)
        moved = "md5={}&expires={}".format(q["md5"], int(q["expires"]) + 100)
        self.assertFalse(self.check(path, moved, NOW))
        # a genuine link for far later than the server issues: refused
        far = self.links.link(path, NOW, expires=int(NOW) + 3600)
        self.assertFalse(self.check(path, far, NOW))

    def test_tampered(self):
        path = "/LiveApp/streams/s1/video/12.m4s"
        q = query(self.links.link(path, NOW))
        md5 = q["md5"]
        for bad in (md5[:-1] + ("A" if md5[-1] != "A" else "B"), md5[:-1], md5 + "A", "",
                    "é" * 22, "x" * 100):
            self.assertFalse(self.links.check(path, bad, q["expires"], None, NOW), bad)
        for expires in ("", "-1", "1e9", "+" + q["expires"], "9" * 20, "\u0661" * 10):
            self.assertFalse(self.links.check(path, md5, expires, None, NOW), expires)
        self.assertFalse(self.links.check(path, None, q["expires"], None, NOW))
        self.assertFalse(self.links.check(path, md5, None, None, NOW))
        # another secret
        other = OffloadLinks("another-secret-" + "y" * 20, 30)
        self.assertFalse(self.check(path, other.link(path, NOW)))

    def test_trackScope(self):
        """
        A track's link (DASH templates) opens the files of that track only,
        and only with C{scope=track}; a file's link is not a track's.
        """
        link = self.links.link("/LiveApp/streams/s1/video/", NOW)
        self.assertIn("scope=track", link)
        self.assertEqual(query(link)["md5"],
                         nginxMd5(int(NOW) + 30, "/LiveApp/streams/s1/video/", SECRET))
        self.assertTrue(self.check("/LiveApp/streams/s1/video/7.m4s", link))
        self.assertTrue(self.check("/LiveApp/streams/s1/video/init.mp4", link))
        self.assertFalse(self.check("/LiveApp/streams/s1/audio/7.m4s", link))
        self.assertFalse(self.check("/LiveApp/streams/s2/video/7.m4s", link))
        q = query(link)
        self.assertFalse(self.links.check("/LiveApp/streams/s1/video/7.m4s", q["md5"],
                                          q["expires"], None, NOW))
        self.assertFalse(self.links.check("/LiveApp/streams/s1/video/7.m4s", q["md5"],
                                          q["expires"], "stream", NOW))
        fileLink = query(self.links.link("/LiveApp/streams/s1/video/7.m4s", NOW))
        self.assertFalse(self.links.check("/LiveApp/streams/s1/video/7.m4s", fileLink["md5"],
                                          fileLink["expires"], "track", NOW))

    def test_initLinks(self):
        """
        An init segment's link (the tracks' configuration, no media) lives
        hours and stays the same for hours: hls.js keeps the first one it
        was given for the whole playback.
        """
        for name in ("init.mp4", "init-3.mp4"):
            path = "/LiveApp/streams/s1/video/" + name
            link = self.links.link(path, NOW)
            q = query(link)
            expires = int(q["expires"])
            self.assertEqual(expires % INIT_LIFE, 0)
            self.assertGreater(expires, NOW + INIT_LIFE)
            self.assertLessEqual(expires, NOW + 2 * INIT_LIFE)
            self.assertEqual(q["md5"], nginxMd5(expires, path, SECRET))
            self.assertEqual(self.links.link(path, NOW + 60), link)
            self.assertTrue(self.check(path, link, NOW + INIT_LIFE - 1))
            self.assertFalse(self.check(path, link, expires))
            # one further ahead than the server issues: refused
            far = self.links.link(path, NOW, expires=expires + INIT_LIFE)
            self.assertFalse(self.check(path, far))
            # and its link opens no segment
            self.assertFalse(self.check("/LiveApp/streams/s1/video/1.m4s", link))
        # a segment's link stays short-lived whatever its name looks like
        for path in ("/LiveApp/streams/s1/video/1.m4s", "/LiveApp/streams/init.mp4/video/1.m4s"):
            self.assertEqual(query(self.links.link(path, NOW))["expires"], str(int(NOW) + 30))

    @given(st.from_regex(r"\A/[A-Za-z0-9_\-]{1,20}/streams/[A-Za-z0-9_.\-]{1,40}/"
                         r"(video|audio)/[0-9]{1,9}(\.[0-9]{1,4})?\.m4s\Z"),
           st.floats(0, 4e9), st.integers(5, 3600))
    def test_roundTrip(self, path, now, ttl):
        links = OffloadLinks(SECRET, ttl)
        link = links.link(path, now)
        q = query(link)
        self.assertEqual(q["md5"], nginxMd5(int(q["expires"]), path, SECRET))
        self.assertTrue(links.check(path, q["md5"], q["expires"], None, now))
        self.assertTrue(links.check(path, q["md5"], q["expires"], None, now + ttl - 1))
        self.assertFalse(links.check(path, q["md5"], q["expires"], None, now + ttl + 1))

    def test_secretAndLifetime(self):
        for secret in ("short", "x" * 31, "has space" + "x" * 30, 'quote"' + "x" * 30,
                       "dollar$" + "x" * 30, "semi;" + "x" * 30, "é" * 40, "x" * 257):
            self.assertRaises(OffloadError, OffloadLinks, secret)
        for ttl in (0, 4.9, 3601, float("nan"), float("inf")):
            self.assertRaises(OffloadError, OffloadLinks, SECRET, ttl)
        OffloadLinks("x" * 32, 5)
        OffloadLinks("x" * 256, 3600)


class OptionsTests(SynchronousTestCase):
    def test_options(self):
        o = Options()
        o.parseOptions(["--offload-secret", SECRET, "--offload-ttl", "12"])
        self.assertEqual((o["offload-secret"], o["offload-ttl"]), (SECRET, 12.0))
        o = Options()
        o.parseOptions([])
        self.assertEqual((o["offload-secret"], o["offload-ttl"]), ("", 30.0))

    def test_configFile(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('"offload-secret" = "{}"\n"offload-ttl" = 10\n'.format(SECRET))
        o = Options()
        o.parseOptions(["--config", path])
        self.assertEqual((o["offload-secret"], o["offload-ttl"]), (SECRET, 10))
        for text in ('"offload-secret" = 12345\n', '"offload-ttl" = true\n',
                     '"offload-ttl" = "30"\n',
                     '"offload-secret" = "{}"\n"offload-ttl" = 7200\n'.format(SECRET)):
            with open(path, "w") as f:
                f.write(text)
            self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", path])

    def test_refused(self):
        for argv in (["--offload-secret", "short"],
                     ["--offload-secret", SECRET, "--offload-ttl", "1"],
                     ["--offload-secret", SECRET + "$x"]):
            self.assertRaises(usage.UsageError, Options().parseOptions, argv)


_RESOURCE_URI = re.compile(r"^(?:video|audio)/(?:init(?:-\d+)?\.mp4|\d+(?:\.\d+)?\.m4s)\?")


class OffloadBase(PlaybackBase):
    """
    The gate with C{--offload-secret}: playlists and MPDs carry links for
    their segments; a segment request with a valid link is served without a
    session (the edge filling its cache), counted; anything else is refused.
    """

    config = ServerConfig(offloadSecret=SECRET, offloadTtl=20)

    def setUp(self):
        # PlaybackBase's server, with this class's configuration
        from twisted.internet import reactor

        from tokengate.apps import Applications
        from tokengate.server import Server, buildSite
        from tokengate.store.memory import MemoryTokenStore

        from .helpers import http_client, require

        require("ffmpeg")
        self.clip = test_clip(12)
        self.dataDir = self.mktemp()
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=reactor,
                             config=self.config)
        self.server.apps.replace("LiveApp", playTokenControlEnabled=True,
                                 dashMuxingEnabled=True)
        port = reactor.listenTCP(0, buildSite(self.server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(self.server.outputs.close)
        self.base = "http://127.0.0.1:{}/LiveApp/streams/".format(port.getHost().port)
        self.http = http_client(self)
        self.links = OffloadLinks(SECRET, 20)

    def fills(self):
        return self.server.metrics.registry.get_sample_value(
            "tokengate_offload_fills_total") or 0

    async def mediaPlaylist(self):
        self.live()
        r, body = await self.get("s1.m3u8?token=" + self.mint())
        self.assertEqual(r.code, 200, body)
        video = [u for u in uris(body.decode()) if u.startswith("s1/video.m3u8")][0]
        self.assertIn("tgs=", video)
        r, body = await self.get(video)
        self.assertEqual(r.code, 200, body)
        return body.decode(), video


class OffloadGateTests(OffloadBase):
    async def test_hlsLinks(self):
        started = time.time()
        playlist, video = await self.mediaPlaylist()
        found = uris(playlist)
        resources = [u for u in found if _RESOURCE_URI.match(u)]
        # every segment, part, map and preload hint; only rendition reports
        # (playlists) keep the session credential
        self.assertGreater(len(resources), 5, playlist)
        self.assertEqual(sorted(set(found) - set(resources)),
                         sorted(u for u in found if u.startswith("audio.m3u8?tgs=")))
        self.assertIn("#EXT-X-PRELOAD-HINT", playlist)
        for uri in resources:
            path, _, link = uri.partition("?")
            q = query(link)
            self.assertEqual(set(q), {"md5", "expires"}, uri)
            if "/init" in uri:
                self.assertGreater(int(q["expires"]), started + INIT_LIFE)
            else:
                self.assertIn(int(q["expires"]), range(int(started) + 20, int(time.time()) + 22))
            self.assertEqual(q["md5"], nginxMd5(int(q["expires"]), "/LiveApp/streams/s1/" + path,
                                                SECRET))
        # a listed segment through its link: served, without a session
        segment = [u for u in resources if re.match(r"^video/\d+\.m4s\?", u)][0]
        before = self.fills()
        r, data = await self.get("s1/" + segment)
        self.assertEqual(r.code, 200, data[:200])
        self.assertEqual(r.headers.getRawHeaders(b"cache-control"), [b"max-age=30"])
        self.assertEqual(self.fills(), before + 1)
        # the same bytes as through the session
        tgs = video.split("?", 1)[1]
        r2, viaSession = await self.get("s1/" + segment.split("?")[0] + "?" + tgs)
        self.assertEqual((r2.code, viaSession), (200, data))

    async def test_badLinksRefused(self):
        playlist, _ = await self.mediaPlaylist()
        segment = [u for u in uris(playlist) if re.match(r"^video/\d+\.m4s\?", u)][0]
        path, _, link = segment.partition("?")
        q = query(link)
        n = int(path.split("/")[1].split(".")[0])
        expired = self.links.link("/LiveApp/streams/s1/" + path, time.time() - 40,
                                  expires=int(time.time()) - 1)
        for bad in (
            "{}?md5={}x&expires={}".format(path, q["md5"], q["expires"]),  # tampered
            "video/{}.m4s?{}".format(n - 1, link),  # another segment's
            "audio/{}.m4s?{}".format(n, link),  # another track's
            "{}?{}".format(path, expired),  # expired
            "{}?{}&scope=track".format(path, link),  # a file's link as a track's
            path,  # none
        ):
            before = self.fills()
            r, body = await self.get("s1/" + bad)
            self.assertEqual(r.code, 403, (bad, body))
            self.assertEqual(self.fills(), before)
        # a link of stream s1 for stream s2's segment
        r, body = await self.get("s2/{}?{}".format(path, link))
        self.assertIn(r.code, (403, 404))

    async def test_dashTemplates(self):
        self.server.apps.replace("LiveApp", playTokenControlEnabled=True, dashMuxingEnabled=True)
        self.live()
        r, body = await self.get("s1/s1.mpd?token=" + self.mint())
        self.assertEqual(r.code, 200, body)
        mpd = body.decode()
        media = re.findall(r'media="([^"]+)"', mpd)
        inits = re.findall(r'initialization="([^"]+)"', mpd)
        self.assertEqual(len(media), 2, mpd)
        self.assertNotIn("tgs=", "".join(media + inits))
        # the Location (the MPD itself) keeps the session
        self.assertRegex(mpd, r"<Location>[^<]*tgs=")
        for template in media:
            path, _, link = template.replace("&amp;", "&").partition("?")
            self.assertRegex(path, r"^(video|audio)/\$Number\$\.m4s$")
            q = query(link)
            self.assertEqual(q["scope"], "track")
            track = path.split("/")[0]
            self.assertEqual(q["md5"], nginxMd5(int(q["expires"]),
                                                "/LiveApp/streams/s1/{}/".format(track), SECRET))
            number = re.search(r'startNumber="(\d+)"', mpd).group(1)
            r, data = await self.get("s1/" + path.replace("$Number$", number) + "?" + link)
            self.assertEqual(r.code, 200, data[:200])
        for init in inits:
            path, _, link = init.replace("&amp;", "&").partition("?")
            self.assertNotIn("scope", link)
            r, data = await self.get("s1/" + path + "?" + link)
            self.assertEqual(r.code, 200, data[:200])
            self.assertEqual(data[4:8], b"ftyp")


class OffloadOffTests(OffloadBase):
    config = ServerConfig()

    async def test_offWithoutSecret(self):
        """
        Without C{--offload-secret} nothing changes: session credentials only,
        and an offload link opens nothing.
        """
        playlist, _ = await self.mediaPlaylist()
        resources = [u for u in uris(playlist) if _RESOURCE_URI.match(u)]
        self.assertTrue(resources)
        for uri in resources:
            self.assertIn("?tgs=", uri)
            self.assertNotIn("md5=", uri)
        path = resources[0].split("?")[0]
        r, body = await self.get("s1/{}?{}".format(
            path, self.links.link("/LiveApp/streams/s1/" + path, time.time())))
        self.assertEqual(r.code, 403, body)
