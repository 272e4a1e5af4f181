"""
The REST API, in memory through StubTreq.
"""

from __future__ import annotations

import json

import jwt as pyjwt
from treq.testing import StubTreq
from twisted.trial.unittest import TestCase

from tokengate.auth import StreamCredentials
from tokengate.access.service import AccessRequest
from tokengate.config import ServerConfig
from tokengate.server import Server
from tokengate.store import StoreUnavailable
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import Outcome
from tokengate.web.rest import RestAPI

from .helpers import NOW, FromPeer, clock_at, json_body
from tests.fixtures import restAPI

BASE = "http://127.0.0.1:5080"
KEY = "k" * 32


class RestBase(TestCase):
    def setUp(self):
        self.clock = clock_at()
        self.server = Server.inMemory(clock=self.clock)
        self.resource = restAPI(self.server).resource()
        self.treq = StubTreq(self.resource)

    def remote(self, host="203.0.113.9"):
        return StubTreq(FromPeer(self.resource, host))

    async def get(self, path, treq=None, **kw):
        r = await (treq or self.treq).get(BASE + path, **kw)
        return r.code, await json_body(r)

    async def post(self, path, body, treq=None, **kw):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await (treq or self.treq).post(BASE + path, data=data, **kw)
        return r.code, await json_body(r)

    async def mint(self, streamId="s1", type="play", expire=NOW + 60, app="LiveApp", extra=""):
        return await self.get(
            "/{}/rest/v2/broadcasts/{}/token?expireDate={}&type={}{}".format(
                app, streamId, expire, type, extra
            )
        )



class RestTests(RestBase):
    # --- minting ---------------------------------------------------------------

    async def test_mint(self):
        code, body = await self.mint()
        self.assertEqual(code, 200)
        self.assertEqual(list(body), ["tokenId", "streamId", "expireDate", "type", "roomId"])
        self.assertEqual(body["streamId"], "s1")
        self.assertEqual(body["expireDate"], NOW + 60)
        self.assertEqual(body["type"], "play")
        self.assertIsNone(body["roomId"])
        self.assertRegex(body["tokenId"], r"^[0-9]{40}$")
        code, body = await self.mint(extra="&roomId=room1")
        self.assertEqual(body["roomId"], "room1")

    async def test_mintErrors(self):
        def err(m):
            return {"success": False, "message": m, "dataId": "", "errorId": 0}

        define = err("Define Stream ID, Token Type and Expire Date (unix time)")
        self.assertEqual(await self.get("/LiveApp/rest/v2/broadcasts/s1/token?type=play"), (400, define))
        self.assertEqual(await self.get("/LiveApp/rest/v2/broadcasts/s1/token?expireDate=x&type=play"), (400, define))
        self.assertEqual(
            await self.mint(type="Play"),
            (400, err("Invalid token type. Supported types are 'play' and 'publish'")),
        )
        code, body = await self.mint(expire=(NOW + 60) * 1000)
        self.assertEqual(code, 400)
        self.assertIn("milliseconds", body["message"])
        code, body = await self.mint(expire=NOW - 1)
        self.assertEqual(code, 400)
        self.assertIn("past", body["message"])
        code, body = await self.mint(app="NoSuchApp")
        self.assertEqual(code, 404)

    async def test_jwt(self):
        code, body = await self.get(
            "/LiveApp/rest/v2/broadcasts/s1/jwt-token?expireDate={}&type=publish".format(NOW + 60)
        )
        self.assertEqual(code, 400)
        self.assertIn("JWT stream key is not set", body["message"])
        self.server.apps.replace("LiveApp", jwtStreamSecretKey=KEY, publishJwtControlEnabled=True)
        code, body = await self.get(
            "/LiveApp/rest/v2/broadcasts/s1/jwt-token?expireDate={}&type=publish".format(NOW + 60)
        )
        self.assertEqual(code, 200)
        claims = pyjwt.decode(body["tokenId"], KEY, algorithms=["HS256"], options={"verify_exp": False})
        self.assertEqual(claims, {"streamId": "s1", "type": "publish", "exp": NOW + 60})
        grant = await self.server.gate.login(
            StreamCredentials("LiveApp", "s1", "publish", body["tokenId"], "1.2.3.4", "rtmp")
        )
        self.assertEqual(grant.kind, "jwt")

    # --- validate, revoke, list ------------------------------------------------------

    async def test_validateConsumes(self):
        _, token = await self.mint()
        probe = {"tokenId": token["tokenId"], "streamId": "s1", "type": "play"}
        wrong = dict(probe, streamId="s2")
        path = "/LiveApp/rest/v2/broadcasts/validate-token"
        self.assertEqual((await self.post(path, wrong))[1]["success"], False)
        self.assertEqual((await self.post(path, dict(probe, type="publish")))[1]["success"], False)
        code, body = await self.post(path, probe)
        self.assertEqual((code, body["success"]), (200, True))
        self.assertNotIn(token["tokenId"], json.dumps(body))
        self.assertEqual((await self.post(path, probe))[1]["success"], False)
        self.assertEqual((await self.post(path, {"tokenId": 5}))[1]["success"], False)
        # counted through the gate, with the reasons
        metrics = self.server.metrics.render().decode()
        self.assertIn('tokengate_grants_total{action="play",kind="onetime",protocol="rest"} 1.0',
                      metrics)
        for reason, n in (("wrong_stream", 1), ("wrong_type", 1), ("unknown", 1)):
            self.assertIn('tokengate_refusals_total{action="%s",protocol="rest",reason="%s"} %d.0'
                          % ("publish" if reason == "wrong_type" else "play", reason, n), metrics)
        # the caller is never throttled (it is the application's backend)
        self.assertEqual(self.server.gate._throttle.score("127.0.0.1"), 0.0)

    async def test_malformedBodies(self):
        path = "/LiveApp/rest/v2/broadcasts/validate-token"
        code, body = await self.post(path, b"{nope")
        self.assertEqual((code, body["success"]), (400, False))
        code, body = await self.post(path, b"[1,2]")
        self.assertEqual(code, 400)
        code, body = await self.post("/rest/v2/applications/settings/LiveApp", b"\xff\xfe")
        self.assertEqual(code, 400)

    async def test_revokeAndList(self):
        tokens = [(await self.mint())[1] for _ in range(3)]
        await self.mint(streamId="s2")
        code, listed = await self.get("/LiveApp/rest/v2/broadcasts/s1/tokens/list/0/10")
        self.assertEqual(code, 200)
        self.assertEqual(len(listed), 3)
        for t, l in zip(tokens, listed):
            self.assertNotEqual(l["tokenId"], t["tokenId"])
            self.assertTrue(l["tokenId"].startswith(t["tokenId"][:6]))
            self.assertEqual(l["expireDate"], t["expireDate"])
        self.assertEqual(len((await self.get("/LiveApp/rest/v2/broadcasts/s1/tokens/list/2/10"))[1]), 1)
        self.assertEqual(len((await self.get("/LiveApp/rest/v2/broadcasts/s1/tokens/list/0/1"))[1]), 1)
        r = await self.treq.delete(BASE + "/LiveApp/rest/v2/broadcasts/s1/tokens")
        body = await json_body(r)
        self.assertEqual((r.code, body["success"], body["dataId"]), (200, True, "3"))
        self.assertEqual((await self.get("/LiveApp/rest/v2/broadcasts/s1/tokens/list/0/10"))[1], [])
        self.assertEqual(len((await self.get("/LiveApp/rest/v2/broadcasts/s2/tokens/list/0/10"))[1]), 1)
        r = await self.treq.delete(BASE + "/LiveApp/rest/v2/broadcasts/s1/tokens")
        self.assertEqual((await json_body(r))["success"], False)

    async def test_listCapped(self):
        for _ in range(260):
            await self.mint()
        code, listed = await self.get("/LiveApp/rest/v2/broadcasts/s1/tokens/list/0/1000")
        self.assertEqual(len(listed), 250)

    async def test_revokeKicksTokenSessions(self):
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True)
        _, token = await self.mint(type="publish")
        kicked = []

        class Mind:
            protocolName = "rtmp"
            peerHost = "10.0.0.1"

            def kick(self, reason):
                kicked.append(reason)

        grant = await self.server.gate.login(
            StreamCredentials("LiveApp", "s1", "publish", token["tokenId"], "10.0.0.1", "rtmp"),
            Mind(),
        )
        self.server.hub.publish("LiveApp", "s1", "RTMP")
        # a session admitted without a token (play control is off) stays
        await self.server.gate.login(StreamCredentials("LiveApp", "s1", "play", None, "10.0.0.2", "rtmp"))
        r = await self.treq.delete(BASE + "/LiveApp/rest/v2/broadcasts/s1/tokens")
        body = await json_body(r)
        self.assertEqual(kicked, ["revoked"])
        self.assertTrue(grant.ended)
        self.assertEqual(body["message"], "0 tokens revoked, 1 sessions ended")
        self.assertEqual(len(self.server.gate.registry.grants("LiveApp", "s1")), 1)

    async def test_storeDown(self):
        class Down(MemoryTokenStore):
            def add(self, *args):
                from twisted.internet.defer import fail
                return fail(StoreUnavailable("down"))

            redeem = listStream = revokeStream = add

        self.server = Server(apps=self.server.apps, store=Down(), clock=self.clock)
        self.treq = StubTreq(restAPI(self.server).resource())
        code, body = await self.mint()
        self.assertEqual(code, 503)
        self.assertEqual(body["message"], "Token store is unavailable, try again later")
        code, _ = await self.post("/LiveApp/rest/v2/broadcasts/validate-token",
                                  {"tokenId": "1", "streamId": "s1", "type": "play"})
        self.assertEqual(code, 503)

    # --- protection --------------------------------------------------------------

    async def test_remoteRefused(self):
        remote = self.remote()
        code, body = await self.get("/LiveApp/rest/v2/broadcasts/s1/tokens/list/0/10", remote)
        self.assertEqual((code, body["message"]), (403, "Not allowed IP"))
        code, body = await self.get("/rest/v2/applications", remote)
        self.assertEqual((code, body["message"]), (403, "Not allowed IP"))
        r = await remote.get(BASE + "/metrics")
        self.assertEqual(r.code, 403)
        # unknown applications are not revealed to outsiders
        code, body = await self.get("/Nope/rest/v2/broadcasts/s1/tokens/list/0/10", remote)
        self.assertEqual(code, 403)
        self.assertIn('tokengate_rest_refusals_total{reason="ip"} 4.0', self.server.metrics.render().decode())

    async def test_ipv6Loopback(self):
        code, _ = await self.get("/rest/v2/applications", self.remote("::1"))
        self.assertEqual(code, 200)

    async def test_allowedCIDR(self):
        self.server.apps.replace("LiveApp", remoteAllowedCIDR="127.0.0.1, 203.0.113.0/24")
        code, _ = await self.mint()
        self.assertEqual(code, 200)
        code, _ = await self.get("/LiveApp/rest/v2/broadcasts/s1/tokens/list/0/10", self.remote())
        self.assertEqual(code, 200)
        code, _ = await self.get("/LiveApp/rest/v2/broadcasts/s1/tokens/list/0/10", self.remote("198.51.100.1"))
        self.assertEqual(code, 403)

    async def test_appJwt(self):
        """
        The application's JWT filter and its address filter must both pass
        (Ant Media's IPFilter and JWTFilter on /rest/*); the full matrix
        is in tests.test_rest_protection.
        """
        secret = "s" * 32
        self.server.apps.replace("LiveApp", jwtControlEnabled=True, jwtSecretKey=secret)
        remote = self.remote()
        path = "/LiveApp/rest/v2/broadcasts/s1/tokens/list/0/10"
        code, body = await self.get(path)
        self.assertEqual((code, body["message"]), (403, "Invalid App JWT Token"))
        good = pyjwt.encode({"exp": NOW + 60}, secret, algorithm="HS256")
        expired = pyjwt.encode({"exp": NOW - 1}, secret, algorithm="HS256")
        forged = pyjwt.encode({"exp": NOW + 60}, "x" * 32, algorithm="HS256")
        for token, expected in ((good, 200), ("Bearer " + good, 200), (expired, 403), (forged, 403)):
            code, _ = await self.get(path, headers={"Authorization": token})
            self.assertEqual(code, expected, token)
        # a valid JWT does not open the API to an address the filter refuses
        code, body = await self.get(path, remote, headers={"Authorization": good})
        self.assertEqual((code, body["message"]), (403, "Not allowed IP"))
        self.server.apps.replace("LiveApp", ipFilterEnabled=False)
        code, _ = await self.get(path, remote, headers={"Authorization": good})
        self.assertEqual(code, 200)
        code, body = await self.get(path, remote)
        self.assertEqual((code, body["message"]), (403, "Invalid App JWT Token"))

    async def test_serverJwt(self):
        secret = "m" * 32
        self.server = Server.inMemory(clock=self.clock,
                                      config=ServerConfig(restJwtSecretKey=secret))
        self.resource = restAPI(self.server).resource()
        local = StubTreq(self.resource)
        token = pyjwt.encode({"sub": "ops", "exp": NOW + 3600}, secret, algorithm="HS256")
        bearer = {"Authorization": "Bearer " + token}
        code, _ = await self.get("/rest/v2/applications", local, headers=bearer)
        self.assertEqual(code, 200)
        code, body = await self.get("/rest/v2/applications", local)
        self.assertEqual((code, body["message"]), (403, "Invalid App JWT Token"))
        # the JWT does not open the management API to other addresses
        code, body = await self.get("/rest/v2/applications", self.remote(), headers=bearer)
        self.assertEqual((code, body["message"]), (403, "Not allowed IP"))

    # --- applications and settings -------------------------------------------------------

    async def test_applications(self):
        self.assertEqual(await self.get("/rest/v2/applications"),
                         (200, {"applications": ["LiveApp", "WebRTCAppEE"]}))
        code, body = await self.post("/rest/v2/applications/Mine", b"")
        self.assertEqual((code, body["success"]), (200, True))
        self.assertEqual((await self.post("/rest/v2/applications/Mine", b""))[1]["success"], False)
        self.assertEqual((await self.post("/rest/v2/applications/rest", b""))[1]["success"], False)
        self.assertEqual((await self.post("/rest/v2/applications/a.b", b""))[1]["success"], False)
        code, _ = await self.mint(app="Mine")
        self.assertEqual(code, 200)
        r = await self.treq.delete(BASE + "/rest/v2/applications/Mine")
        self.assertEqual((await json_body(r))["success"], True)
        self.assertEqual((await self.mint(app="Mine"))[0], 404)
        self.assertEqual(len(await self.server.store.listStream("Mine", "s1", 0, 10)), 0)

    async def test_settings(self):
        code, settings = await self.get("/rest/v2/applications/settings/LiveApp")
        self.assertEqual(code, 200)
        self.assertIs(settings["playTokenControlEnabled"], False)
        self.assertIs(settings["hlsMuxingEnabled"], True)
        path = "/rest/v2/applications/settings/LiveApp"
        ok = await self.post(path, dict(settings, playTokenControlEnabled=True))
        self.assertEqual(ok, (200, {"success": True, "message": "", "dataId": "", "errorId": 0}))
        ok = await self.post(path, dict(settings, playTokenControlEnabled=True, someUnknownField=1))
        self.assertEqual(ok, (200, {"success": True,
                                    "message": "Unknown settings ignored: someUnknownField",
                                    "dataId": "", "errorId": 0}))
        self.assertTrue(self.server.apps.get("LiveApp").playTokenControlEnabled)
        # null and missing fields take defaults
        await self.post(path, {"playTokenControlEnabled": True, "hlsMuxingEnabled": None})
        self.assertTrue(self.server.apps.get("LiveApp").hlsMuxingEnabled)
        await self.post(path, {"dashEnabled": True, "mp4MuxingEnabled": True})
        s = self.server.apps.get("LiveApp")
        self.assertTrue(s.dashMuxingEnabled and s.mp4MuxingEnabled)
        for bad, words in (
            ({"playTokenControlEnabled": True, "playJwtControlEnabled": True, "jwtStreamSecretKey": KEY}, "Only one token type"),
            ({"publishJwtControlEnabled": True, "jwtStreamSecretKey": "short"}, "at least 32"),
            ({"jwtControlEnabled": True, "jwtSecretKey": "short"}, "at least 32"),
            ({"remoteAllowedCIDR": "nonsense"}, "not a network"),
            ({"enableTimeTokenForPlay": True, "playTokenControlEnabled": True},
             "TOTP cannot be combined"),
            ({"enableTimeTokenForPublish": True, "publishJwtControlEnabled": True,
              "jwtStreamSecretKey": KEY}, "TOTP cannot be combined"),
            ({"hashControlPlayEnabled": True}, "tokenHashSecret must be at least 16"),
            ({"hashControlPlayEnabled": True, "tokenHashSecret": "x" * 15}, "at least 16"),
            ({"hashControlPlayEnabled": True, "playTokenControlEnabled": True,
              "tokenHashSecret": "x" * 16}, "Only one token type"),
        ):
            code, body = await self.post(path, bad)
            self.assertEqual((code, body["success"]), (200, False), bad)
            self.assertIn(words, body["message"])
        # a field of the wrong type (or out of range) is a 400 naming it, as
        # the reference server's JSON binding refuses it
        for bad, words in (
            ({"hlsMuxingEnabled": "yes"}, "hlsMuxingEnabled must be true or false"),
            ([1], "Settings must be a JSON object"),
        ):
            code, body = await self.post(path, bad)
            self.assertEqual((code, body["success"]), (400, False), bad)
            self.assertIn(words, body["message"])
        self.assertEqual((await self.get("/rest/v2/applications/settings/Nope"))[0], 404)

    async def test_metrics(self):
        await self.mint()
        await self.mint(type="publish")
        r = await self.treq.get(BASE + "/metrics")
        self.assertEqual(r.code, 200)
        text = (await r.content()).decode()
        self.assertIn('tokengate_tokens_minted_total{app="LiveApp",kind="onetime",type="play"} 1.0', text)
        self.assertTrue(r.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))

    async def test_refusalReasonsCounted(self):
        self.server.apps.replace("LiveApp", playTokenControlEnabled=True)
        _, token = await self.mint()
        gate = self.server.gate
        self.server.hub.publish("LiveApp", "s1", "RTMP")
        self.server.hub.publish("LiveApp", "s2", "RTMP")
        for creds, reason in (
            (StreamCredentials("LiveApp", "s2", "play", token["tokenId"], "10.0.0.1", "hls"), Outcome.WRONG_STREAM),
            (StreamCredentials("LiveApp", "s1", "play", None, "10.0.0.1", "hls"), Outcome.MISSING),
            (StreamCredentials("LiveApp", "s1", "play", "123", "10.0.0.1", "hls"), Outcome.UNKNOWN),
        ):
            e = await self.assertFailure(gate.login(creds), Exception)
            self.assertEqual(e.outcome, reason)
        text = self.server.metrics.render().decode()
        self.assertIn('tokengate_refusals_total{action="play",protocol="hls",reason="wrong_stream"} 1.0', text)
        self.assertNotIn(token["tokenId"], text)


class BroadcastTests(RestBase):
    """
    Broadcast status and the liveness prechecks.
    """

    async def test_unknown(self):
        code, body = await self.get("/LiveApp/rest/v2/broadcasts/nope")
        self.assertEqual((code, body["message"]), (404, "Broadcast is not found"))

    async def test_lifecycle(self):
        code, created = await self.post("/LiveApp/rest/v2/broadcasts/create", {"streamId": "cam1"})
        self.assertEqual((code, created["status"], created["streamId"]), (200, "created", "cam1"))
        stream = self.server.hub.publish("LiveApp", "cam1", "RTMP")
        stream.videoReceived(0, bytes([0x17, 0, 0, 0, 0]) + b"cfg")
        code, live = await self.get("/LiveApp/rest/v2/broadcasts/cam1")
        self.assertEqual((live["status"], live["publishType"], live["rtmpViewerCount"]),
                         ("broadcasting", "RTMP", 0))
        self.assertGreater(live["receivedBytes"], 0)
        stream.end()
        code, ended = await self.get("/LiveApp/rest/v2/broadcasts/cam1")
        self.assertEqual(ended["status"], "finished")
        code, listed = await self.get("/LiveApp/rest/v2/broadcasts/list/0/10")
        self.assertEqual([b["streamId"] for b in listed], ["cam1"])
        code, body = await self.post("/LiveApp/rest/v2/broadcasts/create", {"streamId": "a/b"})
        self.assertEqual(code, 400)
        code, body = await self.post("/LiveApp/rest/v2/broadcasts/create", b"")
        self.assertEqual(body["status"], "created")

    async def test_playNotLiveKeepsToken(self):
        self.server.apps.replace("LiveApp", playTokenControlEnabled=True)
        _, token = await self.mint()
        request = AccessRequest("LiveApp", "s1", "play", "hls", "10.0.0.1", token["tokenId"])
        e = await self.assertFailure(self.server.access.play(request, None), Exception)
        self.assertEqual(e.outcome, Outcome.NOT_LIVE)
        self.server.hub.publish("LiveApp", "s1", "RTMP")
        viewing = await self.server.access.play(request, None)
        self.assertEqual(viewing.grant.kind, "onetime")

    async def test_publishInUseKeepsToken(self):
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True)
        _, token = await self.mint(type="publish")
        stream = self.server.hub.publish("LiveApp", "s1", "RTMP")
        request = AccessRequest("LiveApp", "s1", "publish", "rtmp", "10.0.0.1",
                                token["tokenId"])
        e = await self.assertFailure(self.server.access.publish(request, None), Exception)
        self.assertEqual(e.outcome, Outcome.IN_USE)
        stream.end()
        publication = await self.server.access.publish(request, None)
        self.assertEqual(publication.grant.kind, "onetime")

    async def test_deleteAppEndsStreams(self):
        self.server.apps.create("Tmp")
        stream = self.server.hub.publish("Tmp", "s1", "RTMP")
        r = await self.treq.delete(BASE + "/rest/v2/applications/Tmp")
        self.assertEqual(r.code, 200)
        self.assertTrue(stream.ended)

    async def test_webhookSettings(self):
        """
        The authorization webhooks' URLs are settings with Ant Media's
        names (default C{""}), returned by GET; one that is not an http(s)
        URL is a 400 naming the field, not quoting the value, and changes
        nothing.
        """
        path = "/rest/v2/applications/settings/LiveApp"
        code, stored = await self.get(path)
        self.assertEqual((stored["webhookAuthenticateURL"], stored["webhookPlayAuthUrl"]),
                         ("", ""))
        code, body = await self.post(path, {"webhookAuthenticateURL": "http://127.0.0.1:9/p",
                                            "webhookPlayAuthUrl": "https://h.example/play?k=1"})
        self.assertEqual((code, body["success"]), (200, True))
        code, stored = await self.get(path)
        self.assertEqual((stored["webhookAuthenticateURL"], stored["webhookPlayAuthUrl"]),
                         ("http://127.0.0.1:9/p", "https://h.example/play?k=1"))
        for name in ("webhookAuthenticateURL", "webhookPlayAuthUrl"):
            code, body = await self.post(path, {name: "javascript:secret-key"})
            self.assertEqual((code, body["success"]), (400, False), name)
            self.assertIn(name, body["message"])
            self.assertNotIn("secret-key", body["message"])
        code, stored = await self.get(path)
        self.assertEqual(stored["webhookAuthenticateURL"], "http://127.0.0.1:9/p")

    async def test_unenforcedSecuritySettingsRefused(self):
        """
        Ant Media's security settings that tokengate does not enforce are
        refused when a POST would turn them on, naming them, and nothing
        changes (accepted and not enforced, they would fail open); their
        neutral values, as Ant Media's clients send a whole settings
        object, are accepted.  Other unknown fields are kept out and named.
        """
        path = "/rest/v2/applications/settings/LiveApp"
        for field, value in (("hlsEncryptionKeyInfoFile", "/keys/info"),
                             ("contentSecurityPolicyHeaderValue", "default-src 'self'"),
                             ("maxResolutionAccept", 720), ("maxBitrateAccept", 1),
                             ("maxFpsAccept", 30)):
            code, body = await self.post(path, {"playTokenControlEnabled": True, field: value})
            self.assertEqual((code, body["success"]), (200, False), field)
            self.assertIn(field, body["message"])
            self.assertFalse(self.server.apps.get("LiveApp").playTokenControlEnabled, field)
        code, body = await self.post(path, {"hlsEncryptionKeyInfoFile": "", "maxFpsAccept": 0,
                                            "maxResolutionAccept": 0, "maxBitrateAccept": 0,
                                            "contentSecurityPolicyHeaderValue": ""})
        self.assertEqual((code, body["success"]), (200, True))
        # the rule, held with two made-up settings too
        from tokengate import apps

        self.patch(apps, "UNENFORCED_SECURITY", {"madeUpSwitch": apps._turnsOn,
                                                 "madeUpURL": apps._names})
        for field, value in (("madeUpSwitch", True), ("madeUpSwitch", 1),
                             ("madeUpURL", "http://127.0.0.1:9/hook")):
            code, body = await self.post(path, {"playTokenControlEnabled": True, field: value})
            self.assertEqual((code, body["success"]), (200, False), field)
            self.assertIn(field, body["message"])
            self.assertFalse(self.server.apps.get("LiveApp").playTokenControlEnabled, field)
        two = await self.post(path, {"madeUpURL": "x", "madeUpSwitch": True})
        self.assertEqual(two[1]["message"], "Not supported by tokengate, so refused (nothing "
                                            "was changed): madeUpSwitch, madeUpURL")
        code, body = await self.post(path, {"madeUpURL": "", "madeUpSwitch": False})
        self.assertEqual((code, body["success"]), (200, True))
        neutral = {"hashControlPublishEnabled": False, "hashControlPlayEnabled": False,
                   "tokenHashSecret": "", "acceptOnlyStreamsInDataStore": False,
                   "webhookAuthenticateURL": "", "jwksURL": "", "ipFilterEnabled": True,
                   "allowedPublisherCIDR": None, "timeTokenPeriod": 60,
                   "someUnknownField": 1}
        code, body = await self.post(path, dict(neutral, playTokenControlEnabled=True))
        self.assertEqual((code, body["success"], body["message"]),
                         (200, True, "Unknown settings ignored: someUnknownField"))
        self.assertTrue(self.server.apps.get("LiveApp").playTokenControlEnabled)
        many = {"unknown{}".format(i): i for i in range(25)}
        many["bad name!"] = 1
        code, body = await self.post(path, many)
        self.assertTrue(body["success"])
        self.assertTrue(body["message"].endswith(" and 6 more"), body["message"])
        self.assertNotIn("bad name!", body["message"])
        code, stored = await self.get(path)
        self.assertNotIn("unknown1", stored)
        self.assertNotIn("someUnknownField", stored)
        self.assertEqual(stored["timeTokenPeriod"], 60)


class DirectRouteTests(RestBase):
    """
    The mints L{RestGuard} routes itself (L{RestAPI.directRoute}) are
    answered as Klein answers them: every request below gets the same
    status, headers and body (but for the fresh tokenId) both ways.
    """

    CASES = [
        "/LiveApp/rest/v2/broadcasts/s1/token?expireDate={exp}&type=play",
        "/LiveApp/rest/v2/broadcasts/s1/token?expireDate={exp}&type=publish&roomId=r1",
        "/LiveApp/rest/v2/broadcasts/s1/token?type=play",
        "/LiveApp/rest/v2/broadcasts/s1/token?expireDate=x&type=play",
        "/LiveApp/rest/v2/broadcasts/s1/token?expireDate={exp}&type=Play",
        "/LiveApp/rest/v2/broadcasts/s1/token?expireDate=1&type=play",
        "/NoApp/rest/v2/broadcasts/s1/token?expireDate={exp}&type=play",
        "/LiveApp/rest/v2/broadcasts/s%201/token?expireDate={exp}&type=play",
        "/LiveApp/rest/v2/broadcasts/s1/jwt-token?expireDate={exp}&type=play",
        "/LiveApp/rest/v2/broadcasts/s1/token/?expireDate={exp}&type=play",
        "/LiveApp/rest/v2/broadcasts//token?expireDate={exp}&type=play",
    ]

    async def answers(self, treq=None):
        out = []
        for case in self.CASES:
            r = await (treq or self.treq).get(BASE + case.format(exp=NOW + 60))
            body = await r.content()
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = body
            if isinstance(parsed, dict) and "tokenId" in parsed:
                parsed["tokenId"] = len(parsed["tokenId"])
            out.append((case, r.code, r.headers.getRawHeaders(b"content-type"), parsed))
        return out

    async def test_sameAsKlein(self):
        self.server.apps.replace("LiveApp", jwtStreamSecretKey=KEY)
        direct = await self.answers()
        self.assertEqual([a[1] for a in direct],
                         [200, 200, 400, 400, 400, 400, 404, 400, 200, 404, 404])
        self.patch(RestAPI, "directRoute", lambda api, request: None)
        self.assertEqual(await self.answers(), direct)

    async def test_protected(self):
        """
        The address filter and the JWT filter apply to a direct mint as to
        any call: refused from outside the filter, and without a valid
        JWT when the application asks for one.
        """
        self.assertEqual((await self.mint())[0], 200)
        code, _ = await self.get(self.CASES[0].format(exp=NOW + 60), treq=self.remote())
        self.assertEqual(code, 403)
        self.server.apps.replace("LiveApp", jwtControlEnabled=True, jwtSecretKey=KEY)
        code, body = await self.mint()
        self.assertEqual((code, body["message"]), (403, "Invalid App JWT Token"))
        good = pyjwt.encode({"exp": NOW + 60}, KEY, algorithm="HS256")
        code, _ = await self.get(self.CASES[0].format(exp=NOW + 60),
                                 headers={"Authorization": "Bearer " + good})
        self.assertEqual(code, 200)

    async def test_storeDown(self):
        async def down(token):
            raise StoreUnavailable("down")
        self.patch(self.server.store, "add", down)
        self.assertEqual(await self.mint(),
                         (503, {"success": False, "message": "Token store is unavailable, try again later",
                                "dataId": "", "errorId": 0}))
