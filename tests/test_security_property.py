"""
A property over generated application settings: every settings object the
REST API accepts is enforced, and no accepted combination admits a request
that one of its mechanisms alone would refuse.

Each example draws a set of security mechanisms (each a group of Ant Media
settings that turn one mechanism on, with what it needs: a secret, a URL),
sometimes unknown fields, and a few requests (action, protocol, credentials
presented, address, whether the stream and the room it names were created
through REST, what the webhook answers).  Each request
is judged by a fresh in-memory server (the composition's own
L{tokengate.server.Server}, webhooks answered by StubTreq) under the whole
object and under each of its mechanisms alone.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from attrs import frozen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from tests.helpers import NOW, clock_at
from tokengate.access.outbound import Outbound
from tokengate.access.service import AccessRequest
from tokengate.access.totp import derivedKey, totpAt
from tokengate.access.webhook import MAX_BODY
from tokengate.apps import (
    UNENFORCED_SECURITY,
    Applications,
    AppSettings,
    SettingsError,
    _names,
)
from tokengate.auth import Refused, mint_jwt
from tokengate.jsonvalue import JSONError
from tokengate.server import Server
from tokengate.store.broadcasts import Broadcast
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import PLAY, PUBLISH, StoredToken, new_token

JWT_KEY = "k" * 32
HASH_SECRET = "h" * 16
TOTP_SECRET = "totpsecret"
HOOK = "http://127.0.0.1:9/publish"
PLAY_HOOK = "http://127.0.0.1:9/play"
SUBSCRIBER = "alice"
INSIDE, OUTSIDE = "127.0.0.1", "10.9.8.7"

#: each mechanism: the settings that turn it on (with what it needs)
GROUPS: dict[str, dict[str, Any]] = {
    "onetime-publish": {"publishTokenControlEnabled": True},
    "onetime-play": {"playTokenControlEnabled": True},
    "jwt-publish": {"publishJwtControlEnabled": True, "jwtStreamSecretKey": JWT_KEY},
    "jwt-play": {"playJwtControlEnabled": True, "jwtStreamSecretKey": JWT_KEY},
    "hash-publish": {"hashControlPublishEnabled": True, "tokenHashSecret": HASH_SECRET},
    "hash-play": {"hashControlPlayEnabled": True, "tokenHashSecret": HASH_SECRET},
    "totp-publish": {"enableTimeTokenForPublish": True,
                     "timeTokenSecretForPublish": TOTP_SECRET},
    "totp-play": {"enableTimeTokenForPlay": True, "timeTokenSecretForPlay": TOTP_SECRET},
    "webhook-publish": {"webhookAuthenticateURL": HOOK},
    "webhook-play": {"webhookPlayAuthUrl": PLAY_HOOK},
    "webrtc-off": {"webRTCEnabled": False},
    "rtmpPlayback-off": {"rtmpPlaybackEnabled": False},
    "hls-off": {"hlsMuxingEnabled": False},
    "datastore": {"acceptOnlyStreamsInDataStore": True},
    "rooms": {"acceptOnlyRoomsInDataStore": True},
    "publisherAddress": {"allowedPublisherCIDR": "127.0.0.0/8, ::1"},
}

PUBLISH_PROTOCOLS = ("rtmp", "srt", "webrtc")
PLAY_PROTOCOLS = ("rtmp", "webrtc", "hls")
TOKENS = ("none", "onetime", "jwt", "hash", "garbage")


@frozen
class Ask:
    """
    One request, and what the world around it does.
    """

    action: str
    protocol: str
    token: str = "none"
    code: Optional[str] = "good"  # good, bad, or None: no subscriber
    peer: str = INSIDE
    registered: bool = True  # the stream (and the room) were created through REST
    hookAllows: bool = True
    room: Optional[str] = None


#: for each mechanism, a request the defaults admit and it alone refuses
WITNESSES: dict[str, Ask] = {
    "onetime-publish": Ask(PUBLISH, "rtmp"),
    "onetime-play": Ask(PLAY, "hls"),
    "jwt-publish": Ask(PUBLISH, "srt", token="garbage"),
    "jwt-play": Ask(PLAY, "rtmp", token="onetime"),
    "hash-publish": Ask(PUBLISH, "webrtc", token="jwt"),
    "hash-play": Ask(PLAY, "webrtc"),
    "totp-publish": Ask(PUBLISH, "rtmp", code="bad"),
    "totp-play": Ask(PLAY, "hls", code=None),
    "webhook-publish": Ask(PUBLISH, "srt", hookAllows=False),
    "webhook-play": Ask(PLAY, "rtmp", hookAllows=False),
    "webrtc-off": Ask(PUBLISH, "webrtc"),
    "rtmpPlayback-off": Ask(PLAY, "rtmp"),
    "hls-off": Ask(PLAY, "hls"),
    "datastore": Ask(PUBLISH, "rtmp", registered=False),
    "rooms": Ask(PLAY, "webrtc", registered=False, room="r1"),
    "publisherAddress": Ask(PUBLISH, "srt", peer=OUTSIDE),
}


class Hook(Resource):
    isLeaf = True

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def render_POST(self, request: Any) -> bytes:
        request.setResponseCode(self.status)
        return b""


class Mind:
    protocolName = "test"
    peerHost = INSIDE

    def kick(self, reason: str) -> None:
        pass


def accepted(fields: dict[str, Any]) -> Optional[AppSettings]:
    """
    The settings the REST API keeps for C{fields}, or None when it refuses
    them (as C{POST /rest/v2/applications/settings/{App}} decides).
    """
    try:
        settings, _ = AppSettings.fromJSON(fields)
        settings.validate()
    except (SettingsError, JSONError):
        return None
    return settings


def admitted(settings: AppSettings, ask: Ask) -> bool:
    """
    Whether a fresh server whose application has C{settings} admits C{ask}.
    """
    clock = clock_at()
    apps = Applications(None)
    apps.replace("LiveApp")
    apps.update("LiveApp", settings)
    outbound = Outbound(clock, 3.0, MAX_BODY, 8,
                        client=StubTreq(Hook(200 if ask.hookAllows else 403)))
    store = MemoryTokenStore()
    server = Server(apps=apps, store=store, clock=clock, webhookOutbound=outbound)
    streamId = "s1"
    if ask.registered:
        for registered in (streamId, ask.room):
            if registered is not None:
                server.broadcasts.create(Broadcast("LiveApp", registered, registered, "", 0))
    if ask.action == PLAY:
        server.hub.publish("LiveApp", streamId, "RTMP")
    token: Optional[str] = None
    if ask.token == "onetime":
        t = new_token(streamId, ask.action, NOW + 60)
        store.add(StoredToken.fromToken("LiveApp", t))
        token = t.tokenId
    elif ask.token == "jwt":
        token = mint_jwt(JWT_KEY, streamId, ask.action, NOW + 60)
    elif ask.token == "hash":
        token = hashlib.sha256((streamId + ask.action + HASH_SECRET).encode()).hexdigest()
    elif ask.token == "garbage":
        token = "1234"
    code: Optional[str] = None
    if ask.code is not None:
        good = totpAt(derivedKey(TOTP_SECRET, SUBSCRIBER, streamId, ask.action),
                      clock.seconds(), settings.timeTokenPeriod)
        code = good if ask.code == "good" else "%06d" % ((int(good) + 1) % 10**6)
    request = AccessRequest("LiveApp", streamId, ask.action, ask.protocol, ask.peer, token,
                            subscriberId=SUBSCRIBER if ask.code is not None else None,
                            subscriberCode=code, roomId=ask.room)
    if ask.action == PUBLISH:
        d: Any = server.access.publish(request, Mind())
    else:
        d = server.access.play(request, Mind())
    results: list[Any] = []
    d.addBoth(results.append)
    for _ in range(10):
        if results:
            break
        clock.advance(0)
    if not results:
        raise AssertionError("the access service did not answer {!r}".format(ask))
    result = results[0]
    if hasattr(result, "value") and isinstance(result.value, Refused):
        return False
    if hasattr(result, "raiseException"):
        result.raiseException()
    result.end()
    return True


asks = st.builds(
    Ask,
    action=st.just(PUBLISH),
    protocol=st.sampled_from(PUBLISH_PROTOCOLS),
    token=st.sampled_from(TOKENS),
    code=st.sampled_from(["good", "bad", None]),
    peer=st.sampled_from([INSIDE, OUTSIDE]),
    registered=st.booleans(),
    hookAllows=st.booleans(),
    room=st.sampled_from([None, "r1"]),
) | st.builds(
    Ask,
    action=st.just(PLAY),
    protocol=st.sampled_from(PLAY_PROTOCOLS),
    token=st.sampled_from(TOKENS),
    code=st.sampled_from(["good", "bad", None]),
    peer=st.sampled_from([INSIDE, OUTSIDE]),
    registered=st.booleans(),
    hookAllows=st.booleans(),
    room=st.sampled_from([None, "r1"]),
)


def combined(names: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in names:
        fields.update(GROUPS[name])
    return fields


class SettingsPropertyTests(SynchronousTestCase):
    """
    Accepted settings are enforced; combining mechanisms never admits what
    one of them refuses.
    """

    def test_witnesses(self) -> None:
        """
        Each mechanism alone is accepted and refuses its witness, which the
        defaults admit (so the property below can fail).
        """
        defaults = accepted({})
        assert defaults is not None
        for name, ask in WITNESSES.items():
            alone = accepted(GROUPS[name])
            self.assertIsNotNone(alone, name)
            assert alone is not None
            self.assertTrue(admitted(defaults, ask), name)
            self.assertFalse(admitted(alone, ask), name)
        self.assertEqual(set(WITNESSES), set(GROUPS))

    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(names=st.lists(st.sampled_from(sorted(GROUPS)), min_size=1, max_size=4, unique=True),
           extra=st.dictionaries(st.from_regex(r"zz[a-z]{1,8}", fullmatch=True),
                                 st.integers() | st.booleans(), max_size=2),
           unenforced=st.none() | st.none() | st.none() | st.sampled_from(
               sorted(UNENFORCED_SECURITY)),
           requests=st.lists(asks, max_size=6))
    def test_acceptedIsEnforced(self, names: list[str], extra: dict[str, Any],
                                unenforced: Optional[str], requests: list[Ask]) -> None:
        fields = combined(names)
        fields.update(extra)
        if unenforced is not None:
            # an Ant Media security setting tokengate does not enforce,
            # turned on: the whole object is refused
            fields[unenforced] = "on" if UNENFORCED_SECURITY[unenforced] is _names else 720
            self.assertIsNone(accepted(fields), unenforced)
            return
        whole = accepted(fields)
        if whole is None:
            # a combination the server refuses (two token kinds for one
            # direction, TOTP beside one-time or JWT tokens): nothing to
            # enforce
            return
        for name in names:
            # enforced: what the mechanism alone refuses, the whole refuses
            self.assertFalse(admitted(whole, WITNESSES[name]),
                             "{} admitted the witness of {}".format(names, name))
        alone = {name: accepted(GROUPS[name]) for name in names}
        for ask in requests:
            if admitted(whole, ask):
                for name, settings_ in alone.items():
                    assert settings_ is not None
                    self.assertTrue(
                        admitted(settings_, ask),
                        "{} admitted {!r}, which {} alone refuses".format(names, ask, name))
