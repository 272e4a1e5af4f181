"""
Hostile JSON (issue 10, finding 8): deep nesting, huge and non-finite
numbers, Unicode digits and out-of-range settings are answered 400 with a
reason (REST) or C{invalid_json} with the socket kept open (WebSocket),
never a 500 or a dropped socket; and an application stored with a bad value
by an older version is not poisoned by it.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tokengate.apps import SETTINGS_FIELDS, AppSettings, Applications, SettingsError
from tokengate.jsonvalue import JSONError
from tokengate.server import Server

from .helpers import clock_at, json_body
from .test_hostile_names import LogCapture
from .test_playback import PlaybackBase, uris
from .test_webrtc_signalling import SignallingBase
from tests.fixtures import restAPI

BASE = "http://127.0.0.1:5080"
SETTINGS = "/rest/v2/applications/settings/LiveApp"
DEEP = b"[" * 100_000 + b"]" * 100_000
NINES = "9" * 400


class HostileRestJSON(TestCase):
    def setUp(self) -> None:
        self.server = Server.inMemory(clock=clock_at())
        self.treq = StubTreq(restAPI(self.server).resource())

    async def post(self, path: str, body: object) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await self.treq.post(BASE + path, data=data)
        return r.code, await json_body(r)

    async def get(self, path: str) -> tuple[int, object]:
        r = await self.treq.get(BASE + path)
        return r.code, await json_body(r)

    def malformed(self, reason: str) -> float:
        value = self.server.metrics.registry.get_sample_value(
            "tokengate_malformed_requests_total", {"protocol": "rest", "reason": reason})
        return value or 0.0

    def assertRefused(self, answer: tuple[int, dict], words: str) -> None:
        code, body = answer
        self.assertEqual((code, body["success"], body["errorId"]), (400, False, 0), body)
        self.assertIn(words, body["message"])

    async def test_deepBodies(self) -> None:
        """
        A 100,000-deep array to settings, validate-token and
        broadcasts/create: 400 "nested deeper", counted, nothing changed.
        """
        before = self.server.apps.get("LiveApp")
        for path in (SETTINGS, "/LiveApp/rest/v2/broadcasts/validate-token",
                     "/LiveApp/rest/v2/broadcasts/create"):
            self.assertRefused(await self.post(path, DEEP), "nested deeper than 32 levels")
            self.assertRefused(await self.post(path, b'{"a":' * 50_000), "nested deeper")
        self.assertEqual(self.malformed("json"), 6.0)
        self.assertEqual(self.server.apps.get("LiveApp"), before)
        self.assertEqual(self.server.hub.records("LiveApp"), [])

    async def test_badDocuments(self) -> None:
        for body, words in (
            (b'{"tokenId":"1","streamId":"s","type":"play","x":NaN}', "NaN"),
            (b'{"tokenId":"1","streamId":"s","type":"play","x":1e999}', "out of range"),
            (b'{"tokenId":"1","tokenId":"2","streamId":"s","type":"play"}', "duplicate key"),
            (b'{"tokenId":"\\ud800","streamId":"s","type":"play"}', "surrogate"),
            (b'{"tokenId":' + b"9" * 5000 + b"}", "too long"),
            (b'\xff{}', "Not UTF-8"),
            (b'[1,2]', "Token must be a JSON object"),
        ):
            self.assertRefused(await self.post("/LiveApp/rest/v2/broadcasts/validate-token", body),
                               words)
        self.assertRefused(await self.post("/LiveApp/rest/v2/broadcasts/create", [1]),
                           "Broadcast must be a JSON object")

    async def test_settingsNumbers(self) -> None:
        """
        Unicode digits, 5,000-digit numbers (as text or as JSON numbers),
        400 nines, zero, NaN: a 400 naming the field; the settings stay.
        """
        before = self.server.apps.get("LiveApp")
        for field, value, words in (
            ("hlsTime", "\u00b2", "hlsTime must be an integer from 1 to 60"),
            ("hlsTime", "\u0663", "hlsTime must be an integer from 1 to 60"),
            ("hlsTime", "9" * 5000, "hlsTime must be an integer from 1 to 60"),
            ("hlsTime", NINES, "hlsTime must be an integer from 1 to 60"),
            ("hlsTime", "0", "hlsTime must be an integer from 1 to 60"),
            ("hlsTime", 61, "hlsTime must be an integer from 1 to 60"),
            ("hlsTime", 2.5, "hlsTime must be an integer from 1 to 60"),
            ("hlsTime", True, "hlsTime must be an integer from 1 to 60"),
            ("hlsListSize", "0", "hlsListSize must be an integer from 1 to 100"),
            ("hlsListSize", 101, "hlsListSize must be an integer from 1 to 100"),
            ("jwtSecretKey", "k" * 1025, "jwtSecretKey must be at most 1024 characters"),
            ("jwtStreamSecretKey", 7, "jwtStreamSecretKey must be a string"),
            ("remoteAllowedCIDR", "127.0.0.1\n10.0.0.0/8", "must not contain control"),
            ("remoteAllowedCIDR", "x" * 4097, "at most 4096"),
            ("webRTCEnabled", 1, "webRTCEnabled must be true or false"),
        ):
            self.assertRefused(await self.post(SETTINGS, {field: value}), words)
        self.assertRefused(await self.post(SETTINGS, b'{"hlsTime":' + b"9" * 5000 + b"}"),
                           "A number is too long")
        self.assertRefused(await self.post(SETTINGS, b'{"hlsTime":NaN}'), "NaN")
        self.assertRefused(await self.post(SETTINGS, b'{"hlsTime":1e400}'), "out of range")
        self.assertEqual(self.server.apps.get("LiveApp"), before)
        self.assertGreaterEqual(self.malformed("field"), 15.0)
        # combinations are the reference server's 200 success:false
        code, body = await self.post(SETTINGS, {"remoteAllowedCIDR": ",".join(["10.0.0.1"] * 257)})
        self.assertEqual((code, body["success"]), (200, False))
        self.assertIn("more than 256 networks", body["message"])
        # in range: kept as the reference server's strings
        code, body = await self.post(SETTINGS, {"hlsTime": 60, "hlsListSize": "100"})
        self.assertEqual((code, body["success"]), (200, True))
        code, settings = await self.get(SETTINGS)
        self.assertEqual((settings["hlsTime"], settings["hlsListSize"]), ("60", "100"))

    async def test_pathIntegers(self) -> None:
        """
        Listing offsets and sizes beyond a Java int, or not ASCII digits:
        a 400 naming the part, not a 500 (nor a 404).
        """
        for path, words in (
            ("/LiveApp/rest/v2/broadcasts/s1/tokens/list/99999999999999999999999/10", "offset"),
            ("/LiveApp/rest/v2/broadcasts/s1/tokens/list/0/99999999999999999999999", "size"),
            ("/LiveApp/rest/v2/broadcasts/s1/tokens/list/2147483648/10", "offset"),
            ("/LiveApp/rest/v2/broadcasts/s1/tokens/list/" + quote("\u0663") + "/10", "offset"),
            ("/LiveApp/rest/v2/broadcasts/s1/tokens/list/-1/10", "offset"),
            ("/LiveApp/rest/v2/broadcasts/list/99999999999999999999999/10", "offset"),
            ("/LiveApp/rest/v2/broadcasts/list/0/" + quote("\u00b2"), "size"),
        ):
            code, body = await self.get(path)
            self.assertEqual(code, 400, path)
            self.assertIn(words + " must be an integer from 0 to 2147483647",
                          body["message"])  # type: ignore[index]
        code, listed = await self.get("/LiveApp/rest/v2/broadcasts/s1/tokens/list/2147483647/1000")
        self.assertEqual((code, listed), (200, []))

    async def test_expireDateDigits(self) -> None:
        """
        An expireDate in Unicode digits or of 5,000 digits is "not a
        positive integer" (the reference 400), never a 500 nor a token.
        """
        for value in ("\u0661\u0667\u0669\u0665\u0660\u0660\u0660\u0660\u0660\u0660",
                      "9" * 5000, "\u00b2"):
            code, body = await self.get("/LiveApp/rest/v2/broadcasts/s1/token?type=play&expireDate="
                                        + quote(value))
            self.assertEqual(code, 400)
            self.assertIn("Define Stream ID", body["message"])  # type: ignore[index]
        self.assertEqual(len(await self.server.store.listStream("LiveApp", "s1", 0, 10)), 0)


class StoredSettings(SynchronousTestCase):
    """
    apps.json written by an older version, which took any isdigit() text for
    the numeric settings: clamped with a warning, not poisoned; a bad
    switch refuses the load (fail closed).
    """

    def store(self, **settings: object) -> str:
        path = os.path.join(self.mktemp(), "apps.json")
        os.makedirs(os.path.dirname(path))
        with open(path, "w") as f:
            json.dump({"applications": {"LiveApp": dict(AppSettings().asJSON(), **settings)}}, f)
        return path

    def test_numbersClamped(self) -> None:
        for stored, expected in (((NINES, "0"), ("60", "1")), (("\u00b2", "-3"), ("2", "1")),
                                 (("30", "15"), ("30", "15")), (("x", 999), ("2", "100")),
                                 (("--5", "0" * 50 + "7"), ("2", "7"))):
            log = LogCapture(self)
            apps = Applications(self.store(hlsTime=stored[0], hlsListSize=stored[1]))
            settings = apps.get("LiveApp")
            self.assertEqual((settings.hlsTime, settings.hlsListSize), expected)
            warnings = [line for line in log.lines if "stored" in line]
            self.assertEqual(len(warnings), 0 if stored == expected else 2, warnings)
            for line in warnings:
                self.assertIn("application LiveApp: stored hls", line)
                self.assertNotIn("9" * 100, line)

    def test_streamOfClampedAppSegments(self) -> None:
        """
        The application with hlsTime of 400 nines packages its streams with
        a finite segment target (the clamped 60 s), not infinity.
        """
        server = Server(apps=Applications(self.store(hlsTime=NINES, dashMuxingEnabled=True)),
                        store=Server.inMemory().store, clock=clock_at())
        stream = server.hub.publish("LiveApp", "s1", "RTMP")
        self.addCleanup(stream.end)
        packager = server.outputs.packager("LiveApp", "s1")
        self.assertIsNotNone(packager)
        self.assertEqual(packager.segmentTarget, 60.0)

    def test_badSwitchRefusesLoad(self) -> None:
        for bad, words in (({"playTokenControlEnabled": "yes"}, "playTokenControlEnabled"),
                           ({"jwtSecretKey": "k\x00"}, "jwtSecretKey"),
                           ({"playTokenControlEnabled": True, "playJwtControlEnabled": True,
                             "jwtStreamSecretKey": "k" * 32}, "Only one token type")):
            e = self.assertRaises(SettingsError, Applications, self.store(**bad))
            self.assertIn("stored settings of application LiveApp", str(e))
            self.assertIn(words, str(e))

    def test_everyFieldChecked(self) -> None:
        """
        Every settings field has its type and range in SETTINGS_FIELDS, and
        validate() applies them to any change (not only to a POST).
        """
        from attrs import fields

        self.assertEqual({f.name for f in fields(AppSettings)}, set(SETTINGS_FIELDS))
        apps = Applications(None)
        self.assertRaises(JSONError, apps.replace, "LiveApp", hlsTime=NINES)
        self.assertEqual(apps.get("LiveApp").hlsTime, "2")


class HostileWebSocketJSON(SignallingBase):
    """
    Over a real Autobahn client: deep, non-finite and oversized-number
    messages within the 64 KiB cap are answered invalid_json and the
    socket keeps serving.
    """

    async def test_deepMessages(self) -> None:
        c = await self.ws()
        for raw in (b"[" * 60_000, b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 12_000,
                    b'{"command":"ping","x":NaN}', b'{"command":"ping","x":-Infinity}',
                    b'{"command":"ping","x":' + b"9" * 5000 + b"}",
                    b'{"command":"ping","x":1e999}', b'{"command":"ping","command":"ping"}',
                    b'{"command":"ping","streamId":"\\udc00"}'):
            c.raw(raw)
            await c.expect(command="error", definition="invalid_json")
            c.send(command="ping")
            await c.expect(command="pong")
        self.assertIsNone(c.factory.closeCode)
        value = self.server.metrics.registry.get_sample_value(
            "tokengate_malformed_requests_total", {"protocol": "webrtc", "reason": "json"})
        self.assertEqual(value, 9.0)


# the playback gate's sequence numbers, over a real port with a real clip
class HostilePlaybackNumbers(PlaybackBase):
    tokenControl = False

    async def test_unicodeDigits(self) -> None:
        """
        C{_HLS_msn=²} (C{isdigit()} but not C{int()}) and segment names in
        Unicode digits are not sequence numbers: the playlist is answered at
        once, the segment is not found; no 500.
        """
        self.live()
        r, body = await self.get("s1.m3u8")
        media = uris(body.decode())[0]
        for query in ("\u00b2", "\u0663", "9" * 5000):
            r, body = await self.get(media + ("&" if "?" in media else "?") + "_HLS_msn="
                                     + quote(query) + "&_HLS_part=" + quote(query))
            self.assertEqual(r.code, 200, query)
            self.assertIn(b"#EXTM3U", body)
        r, _ = await self.get(media.split("/")[0] + "/" + quote("\u0661") + ".m4s")
        self.assertEqual(r.code, 404)

