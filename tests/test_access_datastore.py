"""
The datastore policy (C{acceptOnlyStreamsInDataStore},
C{acceptOnlyRoomsInDataStore}) and the publisher address filter
(C{allowedPublisherCIDR}), through the access service of an in-memory
server, for every protocol that publishes; and their settings.
"""

from __future__ import annotations

from twisted.internet.defer import fail
from twisted.trial.unittest import TestCase

from tokengate.access.datastore import DatastorePolicy
from tokengate.access.publisheraddress import PublisherAddressPolicy
from tokengate.access.service import AccessRequest
from tokengate.apps import AppSettings, SettingsError, UNENFORCED_SECURITY
from tokengate.auth import Refused
from tokengate.server import Server
from tokengate.store import StoreUnavailable
from tokengate.store.broadcasts import Broadcast, MemoryBroadcasts
from tokengate.tokens import PLAY, PUBLISH, Outcome, StoredToken, new_token

from tests.helpers import NOW, clock_at

PUBLISHERS = ("rtmp", "srt", "webrtc")


class Mind:
    def __init__(self) -> None:
        self.kicked: list[str] = []

    def kick(self, reason: str) -> None:
        self.kicked.append(reason)


class PolicyBase(TestCase):
    def setUp(self) -> None:
        self.clock = clock_at()
        self.registry = MemoryBroadcasts()
        self.server = Server.inMemory(clock=self.clock, broadcasts=self.registry)

    def settings(self, **changes: object) -> None:
        self.server.apps.replace("LiveApp", **changes)

    async def register(self, streamId: str) -> None:
        await self.registry.create(Broadcast("LiveApp", streamId, streamId, "", 0))

    async def mint(self, streamId: str, type: str = PUBLISH) -> str:
        token = new_token(streamId, type, NOW + 60)
        await self.server.store.add(StoredToken.fromToken("LiveApp", token))
        return token.tokenId

    async def refused(self, request: AccessRequest) -> Outcome:
        call = self.server.access.publish if request.action == PUBLISH else self.server.access.play
        e = await self.assertFailure(call(request, Mind()), Refused)
        return e.outcome

    async def admitted(self, request: AccessRequest) -> None:
        call = self.server.access.publish if request.action == PUBLISH else self.server.access.play
        session = await call(request, Mind())
        session.end()

    def policyRefusals(self, mechanism: str, reason: str) -> float:
        text = self.server.metrics.render().decode()
        needle = 'tokengate_policy_refusals_total{{mechanism="{}",reason="{}"}} '.format(
            mechanism, reason)
        for line in text.splitlines():
            if line.startswith(needle):
                return float(line[len(needle):])
        return 0.0


class DatastoreTests(PolicyBase):
    async def test_offAdmitsUnregistered(self) -> None:
        for protocol in PUBLISHERS:
            await self.admitted(AccessRequest("LiveApp", "walkin", PUBLISH, protocol, "10.0.0.1"))

    async def test_onlyRegisteredPublish(self) -> None:
        """
        Every protocol that publishes: an unregistered stream is refused
        with C{unregistered}, a registered one admitted.
        """
        self.settings(acceptOnlyStreamsInDataStore=True)
        await self.register("cam1")
        for protocol in PUBLISHERS:
            self.assertEqual(
                await self.refused(AccessRequest("LiveApp", "walkin", PUBLISH, protocol,
                                                 "10.0.0.1")),
                Outcome.UNREGISTERED, protocol)
            await self.admitted(AccessRequest("LiveApp", "cam1", PUBLISH, protocol, "10.0.0.1"))
        self.assertEqual(self.policyRefusals("datastore", "unregistered"), 3.0)
        # by application
        await self.refused(AccessRequest("LiveApp", "cam1x", PUBLISH, "rtmp", "10.0.0.1"))
        self.server.apps.create("Other")
        self.server.apps.replace("Other", acceptOnlyStreamsInDataStore=True)
        self.assertEqual(
            await self.refused(AccessRequest("Other", "cam1", PUBLISH, "rtmp", "10.0.0.1")),
            Outcome.UNREGISTERED)

    async def test_tokenKeptOnRefusal(self) -> None:
        """
        The refusal comes before the token is looked at: the token still
        works once the broadcast is created.
        """
        self.settings(acceptOnlyStreamsInDataStore=True, publishTokenControlEnabled=True)
        tokenId = await self.mint("cam1")
        request = AccessRequest("LiveApp", "cam1", PUBLISH, "rtmp", "10.0.0.1", tokenId)
        self.assertEqual(await self.refused(request), Outcome.UNREGISTERED)
        await self.register("cam1")
        await self.admitted(request)
        # spent now
        self.assertEqual(await self.refused(request), Outcome.UNKNOWN)

    async def test_tokenStillNeeded(self) -> None:
        """
        Being registered does not replace the token.
        """
        self.settings(acceptOnlyStreamsInDataStore=True, publishTokenControlEnabled=True)
        await self.register("cam1")
        self.assertEqual(
            await self.refused(AccessRequest("LiveApp", "cam1", PUBLISH, "srt", "10.0.0.1")),
            Outcome.MISSING)

    async def test_playNotConcerned(self) -> None:
        """
        As in Ant Media, the switch concerns publishing: a live stream (live
        since before the switch) plays.
        """
        self.server.hub.publish("LiveApp", "walkin", "RTMP")
        self.settings(acceptOnlyStreamsInDataStore=True)
        await self.admitted(AccessRequest("LiveApp", "walkin", PLAY, "hls", "10.0.0.1"))

    async def test_registryDownFailsClosed(self) -> None:
        self.settings(acceptOnlyStreamsInDataStore=True)
        self.patch(self.registry, "exists", lambda app, s: fail(StoreUnavailable("down")))
        self.assertEqual(
            await self.refused(AccessRequest("LiveApp", "cam1", PUBLISH, "rtmp", "10.0.0.1")),
            Outcome.UNAVAILABLE)
        # off: the registry is not asked
        self.settings(acceptOnlyStreamsInDataStore=False)
        await self.admitted(AccessRequest("LiveApp", "cam1", PUBLISH, "rtmp", "10.0.0.1"))

    async def test_rooms(self) -> None:
        """
        C{acceptOnlyRoomsInDataStore}: a request naming a room (publish or
        play) is admitted only when the room was created through REST; a
        request naming none is not concerned.
        """
        self.settings(acceptOnlyRoomsInDataStore=True)
        self.server.hub.publish("LiveApp", "live", "RTMP")
        for action, streamId in ((PUBLISH, "cam1"), (PLAY, "live")):
            request = AccessRequest("LiveApp", streamId, action, "webrtc", "10.0.0.1",
                                    roomId="room1")
            self.assertEqual(await self.refused(request), Outcome.UNREGISTERED, action)
            await self.admitted(AccessRequest("LiveApp", streamId, action, "webrtc", "10.0.0.1"))
        await self.register("room1")
        await self.admitted(AccessRequest("LiveApp", "cam1", PUBLISH, "webrtc", "10.0.0.1",
                                          roomId="room1"))
        await self.admitted(AccessRequest("LiveApp", "live", PLAY, "webrtc", "10.0.0.1",
                                          roomId="room1"))

    async def test_roomTokenKept(self) -> None:
        """
        A room token presented with an unregistered room is kept.
        """
        self.settings(acceptOnlyRoomsInDataStore=True, playTokenControlEnabled=True)
        self.server.hub.publish("LiveApp", "live", "RTMP")
        token = new_token("other", PLAY, NOW + 60, "room1")
        await self.server.store.add(StoredToken.fromToken("LiveApp", token))
        request = AccessRequest("LiveApp", "live", PLAY, "webrtc", "10.0.0.1", token.tokenId,
                                roomId="room1")
        self.assertEqual(await self.refused(request), Outcome.UNREGISTERED)
        await self.register("room1")
        await self.admitted(request)


class PublisherAddressTests(PolicyBase):
    async def test_emptyAdmitsEveryone(self) -> None:
        for peer in ("10.0.0.1", "2001:db8::1", ""):
            await self.admitted(AccessRequest("LiveApp", "s", PUBLISH, "rtmp", peer))

    async def test_filter(self) -> None:
        self.settings(allowedPublisherCIDR="10.0.0.0/8, 192.0.2.7 ,2001:db8::/32")
        cases = {
            "10.1.2.3": True,
            "192.0.2.7": True,
            "192.0.2.8": False,
            "127.0.0.1": False,
            "2001:db8:1::5": True,
            "2001:db9::1": False,
            "::ffff:10.9.9.9": True,  # IPv4-mapped: matched against IPv4 networks
            "::ffff:192.0.2.8": False,
            "::1": False,
            "not an address": False,
            "": False,
        }
        for protocol in PUBLISHERS:
            for peer, allowed in cases.items():
                request = AccessRequest("LiveApp", "s", PUBLISH, protocol, peer)
                if allowed:
                    await self.admitted(request)
                else:
                    self.assertEqual(await self.refused(request), Outcome.ADDRESS,
                                     (protocol, peer))
        self.assertGreater(self.policyRefusals("publisherAddress", "address"), 0)

    async def test_loopbackExactly(self) -> None:
        """
        Unlike C{remoteAllowedCIDR}, C{127.0.0.1} does not imply C{::1}.
        """
        self.settings(allowedPublisherCIDR="127.0.0.1/32")
        await self.admitted(AccessRequest("LiveApp", "s", PUBLISH, "rtmp", "127.0.0.1"))
        self.assertEqual(await self.refused(AccessRequest("LiveApp", "s", PUBLISH, "rtmp", "::1")),
                         Outcome.ADDRESS)

    async def test_playNotConcerned(self) -> None:
        self.settings(allowedPublisherCIDR="10.0.0.0/8")
        self.server.hub.publish("LiveApp", "s", "RTMP")
        await self.admitted(AccessRequest("LiveApp", "s", PLAY, "rtmp", "203.0.113.5"))

    async def test_tokenKeptOnRefusal(self) -> None:
        self.settings(allowedPublisherCIDR="10.0.0.0/8", publishTokenControlEnabled=True)
        tokenId = await self.mint("s")
        self.assertEqual(
            await self.refused(AccessRequest("LiveApp", "s", PUBLISH, "srt", "203.0.113.5",
                                             tokenId)),
            Outcome.ADDRESS)
        await self.admitted(AccessRequest("LiveApp", "s", PUBLISH, "srt", "10.0.0.5", tokenId))

    async def test_addressBeforeDatastore(self) -> None:
        """
        The order of the composition root: the address first.
        """
        self.settings(allowedPublisherCIDR="10.0.0.0/8", acceptOnlyStreamsInDataStore=True)
        self.assertEqual(
            await self.refused(AccessRequest("LiveApp", "s", PUBLISH, "rtmp", "203.0.113.5")),
            Outcome.ADDRESS)
        self.assertEqual(
            await self.refused(AccessRequest("LiveApp", "s", PUBLISH, "rtmp", "10.0.0.5")),
            Outcome.UNREGISTERED)
        # (after the cluster-wide claim, which comes first of all)
        mechanisms = [p.mechanism for p in self.server.access._policies]
        self.assertEqual(mechanisms[:3], ["cluster", PublisherAddressPolicy.mechanism,
                                          DatastorePolicy.mechanism])


class SettingsTests(TestCase):
    def test_defaults(self) -> None:
        json = AppSettings().asJSON()
        self.assertEqual((json["acceptOnlyStreamsInDataStore"], json["acceptOnlyRoomsInDataStore"],
                          json["allowedPublisherCIDR"]), (False, False, ""))
        for name in ("acceptOnlyStreamsInDataStore", "acceptOnlyRoomsInDataStore",
                     "allowedPublisherCIDR"):
            self.assertNotIn(name, UNENFORCED_SECURITY)

    def test_accepted(self) -> None:
        settings, ignored = AppSettings.fromJSON(
            {"acceptOnlyStreamsInDataStore": True, "acceptOnlyRoomsInDataStore": True,
             "allowedPublisherCIDR": "10.0.0.0/8,::ffff:0:0/96, 2001:db8::1"})
        self.assertEqual(ignored, [])
        self.assertTrue(settings.acceptOnlyStreamsInDataStore)
        self.assertEqual(len(settings.publisherNetworks() or []), 3)
        self.assertIsNone(AppSettings(allowedPublisherCIDR=" , ").publisherNetworks())

    def test_invalidCIDRRefused(self) -> None:
        for bad in ("10.0.0.0/33", "not-a-network", "10.0.0.0/8,fe80::/129", "::g"):
            e = self.assertRaises(SettingsError, AppSettings.fromJSON,
                                  {"allowedPublisherCIDR": bad})
            self.assertIn("allowedPublisherCIDR", str(e))
        self.assertRaises(SettingsError, AppSettings.fromJSON,
                          {"allowedPublisherCIDR": ",".join(["10.0.0.1"] * 257)})

    def test_wrongTypes(self) -> None:
        from tokengate.jsonvalue import JSONError

        self.assertRaises(JSONError, AppSettings.fromJSON, {"acceptOnlyStreamsInDataStore": 1})
        self.assertRaises(JSONError, AppSettings.fromJSON, {"allowedPublisherCIDR": 10})


class SettingsRestTests(TestCase):
    """
    The settings answer: an invalid network is refused naming the field,
    nothing changes; GET returns the three fields.
    """

    async def test_roundTrip(self) -> None:
        import json as jsonlib

        from treq.testing import StubTreq

        from tests.fixtures import restAPI
        from tests.helpers import json_body

        server = Server.inMemory(clock=clock_at())
        treq = StubTreq(restAPI(server).resource())
        url = "http://127.0.0.1:5080/rest/v2/applications/settings/LiveApp"
        r = await treq.post(url, data=jsonlib.dumps(
            {"allowedPublisherCIDR": "10.0.0.0/8,300.1.1.1", "acceptOnlyStreamsInDataStore": True}
        ).encode())
        body = await json_body(r)
        self.assertEqual((r.code, body["success"]), (200, False))
        self.assertIn("allowedPublisherCIDR", body["message"])
        self.assertIn("300.1.1.1", body["message"])
        self.assertFalse(server.apps.get("LiveApp").acceptOnlyStreamsInDataStore)
        r = await treq.post(url, data=jsonlib.dumps(
            {"allowedPublisherCIDR": "10.0.0.0/8", "acceptOnlyStreamsInDataStore": True,
             "acceptOnlyRoomsInDataStore": True}).encode())
        self.assertEqual(await json_body(r), {"success": True, "message": "", "dataId": "",
                                              "errorId": 0})
        r = await treq.get(url)
        got = await json_body(r)
        self.assertEqual((got["allowedPublisherCIDR"], got["acceptOnlyStreamsInDataStore"],
                          got["acceptOnlyRoomsInDataStore"]), ("10.0.0.0/8", True, True))


class PublisherNetworksProperties(TestCase):
    """
    C{allowedPublisherCIDR} against Python's own reading of addresses and
    networks, for generated lists.
    """

    def test_membership(self) -> None:
        import ipaddress

        from hypothesis import given, settings as hsettings
        from hypothesis import strategies as st

        v4 = st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False),
                       st.integers(0, 2**32 - 1), st.integers(0, 32))
        v6 = st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False),
                       st.integers(0, 2**128 - 1), st.integers(0, 128))
        mapped = st.ip_addresses(v=4).map(lambda a: ipaddress.IPv6Address("::ffff:" + str(a)))
        peers = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6), mapped)

        @hsettings(max_examples=300, deadline=None)
        @given(st.lists(st.one_of(v4, v6), min_size=1, max_size=8), peers)
        def check(networks: list, peer: object) -> None:
            text = ", ".join(str(n) for n in networks)
            settings, _ = AppSettings.fromJSON({"allowedPublisherCIDR": text})
            got = settings.publisherNetworks()
            self.assertEqual(got, networks)
            addr = ipaddress.ip_address(peer)  # type: ignore[arg-type]
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            expected = any(addr in n for n in networks if n.version == addr.version)
            from tokengate.apps import address_allowed

            self.assertEqual(address_allowed(str(peer), networks), expected)

        check()

    def test_garbageRefusedCleanly(self) -> None:
        from hypothesis import given, settings as hsettings
        from hypothesis import strategies as st

        from tokengate.jsonvalue import JSONError

        @hsettings(max_examples=300, deadline=None)
        @given(st.text(max_size=60))
        def check(text: str) -> None:
            try:
                settings, _ = AppSettings.fromJSON({"allowedPublisherCIDR": text})
            except (SettingsError, JSONError):
                return
            # accepted: every part is a network
            import ipaddress

            for part in filter(None, (p.strip() for p in text.split(","))):
                ipaddress.ip_network(part, strict=False)

        check()


class AppliesTests(TestCase):
    """
    What each policy says it applies to (HTTP delivery asks, through
    L{tokengate.access.service.AccessService.admissionRequired}).
    """

    def test_publisherAddress(self) -> None:
        policy = PublisherAddressPolicy()
        self.assertFalse(policy.applies(AppSettings(), PUBLISH))
        on = AppSettings(allowedPublisherCIDR="10.0.0.0/8")
        self.assertTrue(policy.applies(on, PUBLISH))
        self.assertFalse(policy.applies(on, PLAY))

    def test_datastore(self) -> None:
        policy = DatastorePolicy(MemoryBroadcasts())
        self.assertFalse(policy.applies(AppSettings(), PUBLISH))
        self.assertFalse(policy.applies(AppSettings(), PLAY))
        streams = AppSettings(acceptOnlyStreamsInDataStore=True)
        self.assertEqual((policy.applies(streams, PUBLISH), policy.applies(streams, PLAY)),
                         (True, False))
        rooms = AppSettings(acceptOnlyRoomsInDataStore=True)
        self.assertEqual((policy.applies(rooms, PUBLISH), policy.applies(rooms, PLAY)),
                         (True, True))
