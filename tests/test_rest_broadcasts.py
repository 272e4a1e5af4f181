"""
The broadcasts REST calls (create, get, list, delete) over the broadcast
registry, in memory through StubTreq.
"""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.defer import fail
from twisted.trial.unittest import TestCase

from tokengate.access.service import AccessRequest
from tokengate.server import Server
from tokengate.store import StoreUnavailable
from tokengate.store.broadcasts import MemoryBroadcasts

from tests.fixtures import restAPI
from tests.helpers import NOW, clock_at, json_body

BASE = "http://127.0.0.1:5080"
PATH = "/LiveApp/rest/v2/broadcasts"


class Mind:
    def __init__(self) -> None:
        self.kicked: list[str] = []

    def kick(self, reason: str) -> None:
        self.kicked.append(reason)


class BroadcastRestTests(TestCase):
    def setUp(self) -> None:
        self.clock = clock_at()
        self.registry = MemoryBroadcasts(limit=3)
        self.server = Server.inMemory(clock=self.clock, broadcasts=self.registry)
        self.treq = StubTreq(restAPI(self.server).resource())

    async def call(self, method: str, path: str, body: object = None):
        kw = {}
        if body is not None:
            kw["data"] = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await self.treq.request(method, BASE + path, **kw)
        return r.code, await json_body(r)

    async def test_create(self) -> None:
        code, body = await self.call("POST", PATH + "/create",
                                     {"streamId": " cam1 ", "name": "Door", "description": "d",
                                      "type": "liveStream", "unknownField": [1]})
        self.assertEqual(code, 200)
        self.assertEqual((body["streamId"], body["name"], body["description"], body["status"],
                          body["date"]), ("cam1", "Door", "d", "created", NOW * 1000))
        stored = await self.registry.get("LiveApp", "cam1")
        self.assertEqual((stored.name, stored.description), ("Door", "d"))
        # a name defaults to the stream id; no stream id: a random one
        code, body = await self.call("POST", PATH + "/create", {"streamId": "cam2"})
        self.assertEqual(body["name"], "cam2")
        code, body = await self.call("POST", PATH + "/create", b"")
        self.assertEqual(code, 200)
        self.assertRegex(body["streamId"], "^[0-9a-f]{16}$")
        self.assertTrue(await self.registry.exists("LiveApp", body["streamId"]))

    async def test_createRefusals(self) -> None:
        await self.call("POST", PATH + "/create", {"streamId": "cam1"})
        self.assertEqual(
            await self.call("POST", PATH + "/create", {"streamId": "cam1"}),
            (400, {"success": False, "dataId": "", "errorId": 0, "message":
                   "Stream id is already being used. Please change stream id or keep it empty"}))
        code, body = await self.call("POST", PATH + "/create", {"streamId": "a/b"})
        self.assertEqual((code, body["success"]), (400, False))
        code, body = await self.call("POST", PATH + "/create", {"streamId": "c", "name": 5})
        self.assertEqual(code, 400)
        self.assertIn("name", body["message"])
        code, body = await self.call("POST", PATH + "/create",
                                     {"streamId": "c", "description": "x" * 1025})
        self.assertEqual(code, 400)
        self.assertIn("description", body["message"])
        self.assertFalse(await self.registry.exists("LiveApp", "c"))

    async def test_createBounded(self) -> None:
        """
        Past the per-application bound a create is refused, counted, and
        nothing is kept; another application has its own bound.
        """
        for i in range(3):
            code, _ = await self.call("POST", PATH + "/create", {"streamId": "s{}".format(i)})
            self.assertEqual(code, 200)
        code, body = await self.call("POST", PATH + "/create", {"streamId": "s3"})
        self.assertEqual((code, body["message"]),
                         (400, "An application holds at most 3 broadcasts; delete some first"))
        self.assertEqual(await self.registry.count("LiveApp"), 3)
        self.assertIn('tokengate_rest_refusals_total{reason="broadcast_limit"} 1.0',
                      self.server.metrics.render().decode())
        code, _ = await self.call("POST", "/WebRTCAppEE/rest/v2/broadcasts/create",
                                  {"streamId": "s3"})
        self.assertEqual(code, 200)

    async def test_getMergesLiveStatus(self) -> None:
        self.assertEqual((await self.call("GET", PATH + "/cam1"))[0], 404)
        await self.call("POST", PATH + "/create", {"streamId": "cam1", "name": "Door"})
        code, body = await self.call("GET", PATH + "/cam1")
        self.assertEqual((code, body["status"], body["name"]), (200, "created", "Door"))
        stream = self.server.hub.publish("LiveApp", "cam1", "RTMP")
        code, body = await self.call("GET", PATH + "/cam1")
        self.assertEqual((body["status"], body["publishType"], body["name"]),
                         ("broadcasting", "RTMP", "Door"))
        stream.end()
        code, body = await self.call("GET", PATH + "/cam1")
        self.assertEqual((body["status"], body["name"]), ("finished", "Door"))
        # a stream published without being created is shown too
        self.server.hub.publish("LiveApp", "walkin", "SRT")
        code, body = await self.call("GET", PATH + "/walkin")
        self.assertEqual((code, body["status"], body["name"]), (200, "broadcasting", "walkin"))

    async def test_listPages(self) -> None:
        """
        Created broadcasts first, in creation order, then streams published
        without being created; pages cut across the two.
        """
        for s in ("c1", "c2", "c3"):
            await self.call("POST", PATH + "/create", {"streamId": s})
        self.server.hub.publish("LiveApp", "c2", "RTMP")
        self.server.hub.publish("LiveApp", "w1", "RTMP")
        self.server.hub.publish("LiveApp", "w2", "RTMP").end()
        self.server.hub.publish("WebRTCAppEE", "x", "RTMP")

        async def ids(offset: int, size: int) -> list[str]:
            code, body = await self.call("GET", PATH + "/list/{}/{}".format(offset, size))
            self.assertEqual(code, 200)
            return [b["streamId"] for b in body]

        self.assertEqual(await ids(0, 10), ["c1", "c2", "c3", "w1", "w2"])
        self.assertEqual(await ids(0, 2), ["c1", "c2"])
        self.assertEqual(await ids(2, 2), ["c3", "w1"])
        self.assertEqual(await ids(4, 2), ["w2"])
        self.assertEqual(await ids(5, 2), [])
        self.assertEqual(await ids(1, 0), [])
        code, body = await self.call("GET", PATH + "/list/0/10")
        self.assertEqual([b["status"] for b in body],
                         ["created", "broadcasting", "created", "broadcasting", "finished"])

    async def test_deleteNotLive(self) -> None:
        await self.call("POST", PATH + "/create", {"streamId": "cam1"})
        self.assertEqual(await self.call("DELETE", PATH + "/cam1"),
                         (200, {"success": True, "dataId": "", "errorId": 0,
                                "message": "broadcast is deleted but could not stopped "}))
        self.assertFalse(await self.registry.exists("LiveApp", "cam1"))
        self.assertEqual((await self.call("GET", PATH + "/cam1"))[0], 404)
        self.assertEqual(await self.call("DELETE", PATH + "/cam1"),
                         (200, {"success": False, "message": "", "dataId": "", "errorId": 0}))

    async def test_deleteLiveKicksPublisher(self) -> None:
        """
        Deleting a live broadcast stops it: its publisher is kicked (the
        session registry), its players are not told by the REST call but
        lose the stream; the record is forgotten.
        """
        await self.call("POST", PATH + "/create", {"streamId": "cam1"})
        mind = Mind()
        publication = await self.server.access.publish(
            AccessRequest("LiveApp", "cam1", "publish", "rtmp", "127.0.0.1"), mind)
        publication.start()
        player = Mind()
        await self.server.access.play(
            AccessRequest("LiveApp", "cam1", "play", "rtmp", "127.0.0.1"), player)
        code, body = await self.call("DELETE", PATH + "/cam1")
        self.assertEqual((code, body["success"], body["message"]),
                         (200, True, "broadcast is deleted and stopped successfully"))
        self.assertEqual(mind.kicked, ["deleted"])
        self.assertEqual(player.kicked, [])
        self.assertEqual(self.server.gate.registry.grants("LiveApp", "cam1")[0].action, "play")

    async def test_deleteUnregisteredLive(self) -> None:
        """
        A stream published without being created is a broadcast too: its
        deletion stops it.
        """
        mind = Mind()
        await self.server.access.publish(
            AccessRequest("LiveApp", "walkin", "publish", "srt", "127.0.0.1"), mind)
        code, body = await self.call("DELETE", PATH + "/walkin")
        self.assertEqual((code, body["success"]), (200, True))
        self.assertEqual(mind.kicked, ["deleted"])

    async def test_deleteApplicationDeletesBroadcasts(self) -> None:
        self.server.apps.create("Tmp")
        await self.call("POST", "/Tmp/rest/v2/broadcasts/create", {"streamId": "cam1"})
        await self.call("POST", PATH + "/create", {"streamId": "cam1"})
        code, body = await self.call("DELETE", "/rest/v2/applications/Tmp")
        self.assertEqual((code, body["success"]), (200, True))
        self.assertEqual(await self.registry.count("Tmp"), 0)
        self.assertTrue(await self.registry.exists("LiveApp", "cam1"))
        # an application of that name again starts with none
        self.server.apps.create("Tmp")
        code, body = await self.call("GET", "/Tmp/rest/v2/broadcasts/list/0/10")
        self.assertEqual(body, [])

    async def test_registryDown(self) -> None:
        """
        A registry that cannot answer: 503, counted, nothing half-done.
        """
        def down(*a: object) -> object:
            return fail(StoreUnavailable("down"))

        for name in ("create", "get", "list", "count", "delete", "exists", "registered"):
            self.patch(self.registry, name, down)
        for method, path, body in (("POST", PATH + "/create", {"streamId": "c"}),
                                   ("GET", PATH + "/c", None),
                                   ("GET", PATH + "/list/0/10", None),
                                   ("DELETE", PATH + "/c", None)):
            code, answer = await self.call(method, path, body)
            self.assertEqual((code, answer["message"]),
                             (503, "Broadcast store is unavailable, try again later"), path)
        self.assertIn('tokengate_store_errors_total{operation="broadcast_create"} 1.0',
                      self.server.metrics.render().decode())

    async def test_deleteApplicationWithRegistryDown(self) -> None:
        """
        The application is deleted and its tokens too when its broadcasts
        cannot be: the answer says what is left.
        """
        from tokengate.tokens import PUBLISH, StoredToken, new_token

        self.server.apps.create("Tmp")
        token = new_token("cam1", PUBLISH, self.clock.seconds() + 60)
        await self.server.store.add(StoredToken.fromToken("Tmp", token))
        self.patch(self.registry, "deleteApp", lambda app: fail(StoreUnavailable("down")))
        code, body = await self.call("DELETE", "/rest/v2/applications/Tmp")
        self.assertEqual((code, body["success"]), (200, True))
        self.assertIn("its broadcasts could not be deleted", body["message"])
        self.assertNotIn("Tmp", self.server.apps)
        self.assertEqual(await self.server.store.listStream("Tmp", "cam1", 0, 10), [])
