"""
The TOTP subscriber calls of the REST API, in memory through StubTreq:
Ant Media's paths and JSON, the codes checked against pyotp, blocking
that ends live sessions.
"""

from __future__ import annotations

import base64
import json

import pyotp
from twisted.internet.defer import fail

from tokengate.access.service import AccessRequest, Refused
from tokengate.access.subscribers import Subscriber
from tokengate.store import StoreUnavailable
from tokengate.tokens import Outcome

from .helpers import NOW
from .test_rest import BASE, RestBase

B32 = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
SUBS = "/LiveApp/rest/v2/broadcasts/s1/subscribers"


def derivedB32(secret, subscriberId, streamId, type):
    text = secret + subscriberId + streamId + type
    text += "X" * (-len(text) % 8)
    return base64.b32encode(text.encode("ascii")).decode("ascii")


class Mind:
    protocolName = "rtmp"
    peerHost = "192.0.2.1"

    def __init__(self):
        self.kicked = []

    def kick(self, reason):
        self.kicked.append(reason)


class SubscriberRestTests(RestBase):
    def setUp(self):
        super().setUp()
        self.server.apps.replace("LiveApp", enableTimeTokenForPublish=True,
                                 enableTimeTokenForPlay=True,
                                 timeTokenSecretForPublish="pub-secret",
                                 timeTokenSecretForPlay="play-secret")

    async def put(self, path, treq=None):
        r = await (treq or self.treq).put(BASE + path, data=b"")
        return r.code, json.loads(await r.content())

    async def delete(self, path):
        r = await self.treq.delete(BASE + path)
        return r.code, json.loads(await r.content())

    def ok(self, message="", dataId=""):
        return (200, {"success": True, "message": message, "dataId": dataId, "errorId": 0})

    async def test_addListDelete(self):
        """
        A subscriber is added with Ant Media's JSON; listing shows it
        without its secret and with the application's period; deleting one
        and all.
        """
        self.assertEqual(await self.post(SUBS, {"subscriberId": "alice", "type": "publish",
                                                "b32Secret": B32}), self.ok())
        self.assertEqual(await self.post(SUBS, {"subscriberId": "bobby", "type": "play",
                                                "subscriberName": "Bob",
                                                "totpExpiryPeriodSeconds": 30}), self.ok())
        code, listed = await self.get(SUBS + "/list/0/10")
        self.assertEqual(code, 200)
        self.assertEqual([(s["subscriberId"], s["type"], s["totpExpiryPeriodSeconds"],
                           s["streamId"], s["connected"]) for s in listed],
                         [("alice", "publish", 60, "s1", False),
                          ("bobby", "play", 30, "s1", False)])
        self.assertNotIn("b32Secret", json.dumps(listed))
        self.assertEqual([s["subscriberId"] for s in (await self.get(SUBS + "/list/1/1"))[1]],
                         ["bobby"])
        # another application's stream of the same name has its own
        code, other = await self.get("/WebRTCAppEE/rest/v2/broadcasts/s1/subscribers/list/0/10")
        self.assertEqual((code, other), (200, []))
        self.assertEqual(await self.delete(SUBS + "/alice"), self.ok())
        self.assertEqual((await self.delete(SUBS + "/alice"))[1]["success"], False)
        self.assertEqual(await self.delete(SUBS), self.ok(dataId="1"))
        self.assertEqual(await self.get(SUBS + "/list/0/10"), (200, []))
        self.assertEqual((await self.delete(SUBS))[1]["success"], False)

    async def test_addRefused(self):
        """
        Ant Media's checks of a subscriber answer a Result with its
        messages; malformed JSON is a 400.
        """
        for body, words in (
            ({"subscriberId": "abc", "type": "play"}, "subscriberId's length at least 3"),
            ({"subscriberId": "alice", "type": "play", "b32Secret": "abc"},
             "Secret code is not multiple of 8"),
            ({"subscriberId": "alice", "type": "other"}, "type must be publish or play"),
            ({"subscriberId": "al/ce", "type": "play"}, "subscriberId must be"),
            ({"subscriberId": "alice", "type": "play", "totpExpiryPeriodSeconds": 5},
             "totpExpiryPeriodSeconds"),
            ({"subscriberId": "alice", "type": "play", "extra": 1},
             "Unknown subscriber field: extra"),
        ):
            code, answer = await self.post(SUBS, body)
            self.assertEqual((code, answer["success"]), (200, False), body)
            self.assertIn(words, answer["message"])
        code, answer = await self.post(SUBS, b"{")
        self.assertEqual((code, answer["success"]), (400, False))
        self.assertEqual(await self.get(SUBS + "/list/0/10"), (200, []))

    async def test_totp(self):
        """
        GET .../totp answers the current code in dataId: from the record's
        own secret and period, else derived from the application's secret
        for ?type= (the same key and period the check uses).
        """
        await self.post(SUBS, {"subscriberId": "alice", "type": "publish", "b32Secret": B32,
                               "totpExpiryPeriodSeconds": 30})
        self.assertEqual(await self.get(SUBS + "/alice/totp"),
                         self.ok(dataId=pyotp.TOTP(B32, interval=30).at(NOW)))
        for type_, secret in (("publish", "pub-secret"), ("play", "play-secret")):
            want = pyotp.TOTP(derivedB32(secret, "carol", "s1", type_), interval=60).at(NOW)
            self.assertEqual(await self.get(SUBS + "/carol/totp?type=" + type_),
                             self.ok(dataId=want))
        code, answer = await self.get(SUBS + "/carol/totp")
        self.assertEqual((code, answer["success"]), (200, False))
        self.server.apps.replace("LiveApp", timeTokenSecretForPlay="")
        code, answer = await self.get(SUBS + "/carol/totp?type=play")
        self.assertEqual((code, answer["success"]), (200, False))
        self.assertIn("Secret is not set", answer["message"])
        # the code the REST call gives is one the access service admits
        _, answer = await self.get(SUBS + "/carol/totp?type=publish")
        request = AccessRequest("LiveApp", "s1", "publish", "rtmp", "192.0.2.1",
                                subscriberId="carol", subscriberCode=answer["dataId"])
        publication = await self.server.access.publish(request, Mind())
        publication.end()

    async def test_blockEndsLiveSessions(self):
        """
        PUT .../block/{seconds}/{type} blocks the subscriber for that type
        and ends its live sessions of that stream and type at once; the
        answer's dataId says how many; 0 seconds unblocks.
        """
        def code(type_):
            return pyotp.TOTP(derivedB32(
                "pub-secret" if type_ == "publish" else "play-secret", "alice", "s1",
                type_), interval=60).at(self.clock.seconds())

        publisher = Mind()
        publication = await self.server.access.publish(AccessRequest(
            "LiveApp", "s1", "publish", "rtmp", "192.0.2.1", subscriberId="alice",
            subscriberCode=code("publish")), publisher)
        publication.start()
        self.assertEqual(await self.put(SUBS + "/alice/block/60/play"), self.ok(dataId="0"))
        self.assertEqual(publisher.kicked, [])
        self.assertEqual(await self.put(SUBS + "/alice/block/60/publish"), self.ok(dataId="1"))
        self.assertEqual(publisher.kicked, ["blocked"])
        publication.end()
        request = AccessRequest("LiveApp", "s1", "publish", "rtmp", "192.0.2.1",
                                subscriberId="alice", subscriberCode=code("publish"))
        e = await self.assertFailure(self.server.access.publish(request, Mind()), Refused)
        self.assertEqual(e.outcome, Outcome.BLOCKED)
        code_, listed = await self.get(SUBS + "/list/0/10")
        self.assertEqual([(s["subscriberId"], s["blockedType"]) for s in listed],
                         [("alice", "publish")])
        self.assertEqual(listed[0]["blockedUntilUnitTimeStampMs"], (NOW + 60) * 1000)
        self.assertEqual(await self.put(SUBS + "/alice/block/0/publish_play"),
                         self.ok(dataId="0"))
        publication = await self.server.access.publish(request, Mind())
        publication.end()
        for path in ("/alice/block/x/play", "/alice/block/-1/play",
                     "/alice/block/999999999999/play", "/alice/block/60/both",
                     "/a.b=c/block/60/play"):
            code_, answer = await self.put(SUBS + path)
            self.assertEqual((code_, answer["success"]), (400, False), path)

    async def test_connectionEvents(self):
        """
        The stream's connected and disconnected events, oldest first, paged
        and filtered by ?subscriberId=.
        """
        for subscriberId in ("alice", "bobby"):
            code = pyotp.TOTP(derivedB32("pub-secret", subscriberId, "s1", "publish"),
                              interval=60).at(NOW)
            publication = await self.server.access.publish(AccessRequest(
                "LiveApp", "s1", "publish", "rtmp", "192.0.2.1", subscriberId=subscriberId,
                subscriberCode=code), Mind())
            publication.end()
        path = "/LiveApp/rest/v2/broadcasts/s1/connection-events/"
        code, events = await self.get(path + "0/10")
        self.assertEqual(code, 200)
        self.assertEqual([(e["subscriberId"], e["eventType"], e["type"], e["eventProtocol"],
                           e["timestamp"]) for e in events],
                         [("alice", "connected", "publish", "rtmp", NOW * 1000),
                          ("alice", "disconnected", "publish", "rtmp", NOW * 1000),
                          ("bobby", "connected", "publish", "rtmp", NOW * 1000),
                          ("bobby", "disconnected", "publish", "rtmp", NOW * 1000)])
        self.assertEqual(len((await self.get(path + "1/2"))[1]), 2)
        code, mine = await self.get(path + "1/10?subscriberId=bobby")
        self.assertEqual([(e["subscriberId"], e["eventType"]) for e in mine],
                         [("bobby", "disconnected")])
        # deleting the stream's subscribers deletes its events, as Ant
        # Media: a success though no subscriber was recorded
        self.assertEqual(await self.delete(SUBS), self.ok(dataId="0"))
        self.assertEqual(await self.get(path + "0/10"), (200, []))
        self.assertEqual((await self.delete(SUBS))[1]["success"], False)

    async def test_deleteApplication(self):
        """
        Deleting an application deletes its subscribers, blocks and
        connection events, the leases of its live sessions (kicked)
        included: the application created again has none of them.
        """
        self.assertEqual(await self.post(SUBS, {"subscriberId": "alice", "type": "publish"}),
                         self.ok())
        self.assertEqual(await self.put(SUBS + "/ghost/block/600/publish"), self.ok(dataId="0"))
        code = pyotp.TOTP(derivedB32("pub-secret", "alice", "s1", "publish"),
                          interval=60).at(NOW)
        mind = Mind()
        await self.server.access.publish(AccessRequest(
            "LiveApp", "s1", "publish", "rtmp", "192.0.2.1", subscriberId="alice",
            subscriberCode=code), mind)
        r = await self.treq.delete(BASE + "/rest/v2/applications/LiveApp")
        self.assertEqual((r.code, json.loads(await r.content())["success"]), (200, True))
        self.assertEqual(mind.kicked, ["revoked"])
        store = self.server.subscribers
        self.assertEqual(list(await store.listSubscribers("LiveApp", "s1", 0, 10)), [])
        self.assertFalse(await store.isBlocked("LiveApp", "s1", "ghost", "publish"))
        self.assertEqual(list(await store.connectionEvents("LiveApp", "s1", 0, 10)), [])
        # the live connection went with it: the same code connects again
        self.server.apps.create("LiveApp")
        self.server.apps.replace("LiveApp", enableTimeTokenForPublish=True,
                                 timeTokenSecretForPublish="pub-secret")
        publication = await self.server.access.publish(AccessRequest(
            "LiveApp", "s1", "publish", "rtmp", "192.0.2.1", subscriberId="alice",
            subscriberCode=code), Mind())
        publication.end()
        self.assertEqual((await self.get(SUBS + "/list/0/10")), (200, []))

    async def test_deleteApplicationStoreDown(self):
        """
        A subscriber store that cannot delete: the application is deleted
        all the same, the answer says what is left, counted.
        """
        self.server.subscribers.deleteApp = lambda app: fail(StoreUnavailable("down"))
        r = await self.treq.delete(BASE + "/rest/v2/applications/LiveApp")
        answer = json.loads(await r.content())
        self.assertEqual((r.code, answer["success"], answer["message"]),
                         (200, True, "Application deleted; its TOTP subscribers could not be "
                          "deleted"))
        self.assertNotIn("LiveApp", self.server.apps)
        self.assertEqual(self.server.metrics.registry.get_sample_value(
            "tokengate_store_errors_total", {"operation": "subscribers_delete_app"}), 1.0)

    async def test_protectedAndBounded(self):
        """
        The calls are protected as every per-application call; path ids
        outside their grammar are 400s; listings are capped; a store that
        cannot answer is a 503.
        """
        remote = self.remote()
        for method, path in (("get", SUBS + "/list/0/10"), ("get", SUBS + "/alice/totp"),
                             ("post", SUBS),
                             ("get", "/LiveApp/rest/v2/broadcasts/s1/connection-events/0/1")):
            if method == "post":
                code, answer = await self.post(path, {"subscriberId": "alice", "type": "play"},
                                               treq=remote)
            else:
                code, answer = await self.get(path, treq=remote)
            self.assertEqual((code, answer["message"]), (403, "Not allowed IP"), path)
        code, answer = await self.put(SUBS + "/alice/block/60/play", treq=remote)
        self.assertEqual(code, 403)
        self.assertEqual((await self.get(SUBS + "/abc/totp?type=play"))[0], 400)
        self.assertEqual((await self.get(
            "/LiveApp/rest/v2/broadcasts/.s1/subscribers/list/0/1"))[0], 400)
        self.assertEqual((await self.get(SUBS + "/list/0/x"))[0], 400)
        for i in range(300):
            await self.server.subscribers.addSubscriber(
                "LiveApp", Subscriber("sub{:04d}".format(i), "s1", "play"))
        code, listed = await self.get(SUBS + "/list/0/1000")
        self.assertEqual((code, len(listed)), (200, 250))
        self.server.subscribers.listSubscribers = lambda *a: fail(OSError("down"))
        code, answer = await self.get(SUBS + "/list/0/10")
        self.assertEqual((code, answer["message"]),
                         (503, "Subscriber store is unavailable, try again later"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
