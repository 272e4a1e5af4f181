# -*- test-case-name: tests.test_access_subscribers -*-
"""
The subscriber registry behind TOTP subscriber codes: Ant Media's
C{Subscriber} records, blocking, live connections and connection events.

The model
=========

L{Subscriber} carries Ant Media's JSON fields (C{subscriberId},
C{subscriberName}, C{streamId}, C{type}, C{b32Secret}, C{connected},
C{currentConcurrentConnections}, C{concurrentConnectionsLimit},
C{blockedType}, C{blockedUntilUnitTimeStampMs}, C{totpExpiryPeriodSeconds},
C{avgVideoBitrate}, C{avgAudioBitrate}).  As in Ant Media, C{b32Secret} is
write-only: L{Subscriber.toJSON} never includes it.  A subscriber of type
C{publish} may also play (Ant Media: "critical in conferencing"); one of
type C{play} may only play (L{Subscriber.allows}).

L{subscriberFromJSON} reads the body of C{POST .../subscribers} with Ant
Media's rules (a C{subscriberId} longer than 3 characters, a C{b32Secret}
that decodes, a period of at least 10 s) and tokengate's (the id's
characters, L{SUBSCRIBER_ID}: it rides in RTMP paths, SRT stream ids and
query strings; a C{type} of C{publish} or C{play}, where Ant Media silently
keeps no type; bounded strings and numbers).

The store
=========

L{ISubscriberStore} is the seam: every method returns a L{Deferred}, so
SQLite and Redis stores can implement it later; L{MemorySubscriberStore}
is the in-memory implementation, on an injectable clock.

  - B{Blocking} (C{PUT .../subscribers/{sid}/block/{seconds}/{type}}): the
    subscriber is refused for C{type} (or both, C{publish_play}) while
    C{now < blockedUntil}; blocking an unrecorded subscriber records it
    without a secret, as Ant Media does (its key then stays the derived
    one).  Ant Media counts the blocked interval inclusively
    (C{blockedUntil >= now}); here a block of 0 seconds unblocks.
  - B{Live connections}: L{ISubscriberStore.acquire} is one atomic step
    that refuses a blocked subscriber, a code older than the newest one
    this subscriber already used (RFC 6238 section 5.2), and a subscriber
    already on C{concurrentConnectionsLimit} live connections (1 unless
    the record says otherwise, for recorded and derived subscribers
    alike), and otherwise counts the connection and hands back a
    L{SubscriberLease} whose C{release} ends it.  Ant Media counts
    connections from asynchronous viewer events, after the fact, and only
    for recorded subscribers, so two connections at the same moment both
    pass there; here the second is refused.
  - B{Connection events} (C{GET .../connection-events/{offset}/{size}}):
    C{connected} and C{disconnected}, kept per stream, at most
    L{MAX_EVENTS_PER_STREAM} each (the oldest dropped) for at most
    L{MAX_EVENT_STREAMS} streams.

Everything a client can grow is bounded: subscribers at most
L{MAX_SUBSCRIBERS} (adding more is refused), derived subscribers' state
exists only while they hold a connection or are blocked.
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict, deque
from typing import Callable, Deque, Optional, Protocol, Sequence

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Attribute, Interface, implementer

from tokengate.access.totp import (
    DEFAULT_PERIOD,
    MAX_PERIOD,
    MIN_PERIOD,
    SecretError,
    derivedKey,
    keyFromB32Secret,
    verifyCode,
)
from tokengate.jsonvalue import JSONError, JSONValue, intValue, requireObject, stringValue



class Clock(Protocol):
    """
    What the store needs of a clock (the reactor, or a
    L{twisted.internet.task.Clock}).
    """

    def seconds(self) -> float:
        """
        Unix time, seconds.
        """

PUBLISH = "publish"
PLAY = "play"
PUBLISH_AND_PLAY = "publish_play"
#: the types a subscriber record may have
TYPES = (PUBLISH, PLAY)
#: the types a block may have
BLOCK_TYPES = (PUBLISH, PLAY, PUBLISH_AND_PLAY)

#: a subscriber id: 4 to 128 of C{A-Z a-z 0-9 _ . @ -} (an e-mail address
#: fits; C{/}, C{,}, C{=}, C{&}, C{+}, C{%} and spaces, which separate or
#: change values in RTMP paths, SRT stream ids and query strings, do not)
SUBSCRIBER_ID = re.compile(r"[A-Za-z0-9_.@-]{4,128}")
#: the most subscribers one store keeps
MAX_SUBSCRIBERS = 100_000
#: connection events kept per stream
MAX_EVENTS_PER_STREAM = 1000
#: streams whose connection events are kept (the least recently written
#: stream's events go first)
MAX_EVENT_STREAMS = 10_000
#: the longest block, seconds (ten years)
MAX_BLOCK_SECONDS = 10 * 365 * 86400
#: the most live connections a record may allow
MAX_CONNECTIONS_LIMIT = 1000
#: the longest subscriber name and protocol name
MAX_NAME = 256

_INT64 = 2**63 - 1


def isValidSubscriberId(value: object) -> bool:
    """
    @return: whether C{value} can name a subscriber on every protocol.
    """
    return isinstance(value, str) and SUBSCRIBER_ID.fullmatch(value) is not None


@attrs.frozen
class Subscriber:
    """
    One subscriber of one stream, as Ant Media's C{Subscriber}.

    @ivar blockedUntilUnitTimeStampMs: unix milliseconds; 0 when never
        blocked.
    @ivar totpExpiryPeriodSeconds: this subscriber's TOTP period, or
        L{None} for the application's C{timeTokenPeriod}.
    """

    subscriberId: str
    streamId: str
    type: Optional[str]
    b32Secret: Optional[str] = attrs.field(default=None, repr=False)
    subscriberName: Optional[str] = None
    connected: bool = False
    currentConcurrentConnections: int = 0
    concurrentConnectionsLimit: int = 1
    blockedType: Optional[str] = None
    blockedUntilUnitTimeStampMs: int = 0
    totpExpiryPeriodSeconds: Optional[int] = None
    avgVideoBitrate: int = 0
    avgAudioBitrate: int = 0

    def allows(self, action: str) -> bool:
        """
        Whether this subscriber's type lets it C{action} (C{"publish"} or
        C{"play"}): a publisher may also play.  A record without a type
        (one that only holds a block) restricts nothing here: its key is
        then derived for the requested action (L{key}), which binds a code
        to that action.
        """
        if self.type is None:
            return action in TYPES
        return action == self.type or (self.type == PUBLISH and action == PLAY)

    def isBlocked(self, action: str, nowMs: int) -> bool:
        """
        Whether a block for C{action} is in force at C{nowMs}.
        """
        return (self.blockedType in (action, PUBLISH_AND_PLAY)
                and nowMs < self.blockedUntilUnitTimeStampMs)

    def key(self, secretFromSettings: str, action: str) -> bytes:
        """
        The TOTP key: the record's own C{b32Secret}, or (when it has none)
        the key Ant Media derives from the application's secret for
        C{action}.

        @raise SecretError: when neither gives a key.
        """
        if self.b32Secret:
            return keyFromB32Secret(self.b32Secret)
        return derivedKey(secretFromSettings, self.subscriberId, self.streamId, action)

    def period(self, appPeriod: int) -> int:
        """
        The TOTP period of this subscriber: its own, else the application's.
        """
        return self.totpExpiryPeriodSeconds or appPeriod

    def toJSON(self) -> dict[str, JSONValue]:
        """
        Ant Media's JSON of the record, without C{b32Secret} (write-only).
        """
        return {
            "subscriberId": self.subscriberId,
            "subscriberName": self.subscriberName,
            "streamId": self.streamId,
            "type": self.type,
            "connected": self.connected,
            "currentConcurrentConnections": self.currentConcurrentConnections,
            "concurrentConnectionsLimit": self.concurrentConnectionsLimit,
            "blockedType": self.blockedType,
            "blockedUntilUnitTimeStampMs": self.blockedUntilUnitTimeStampMs,
            "registeredNodeIp": None,
            "avgVideoBitrate": self.avgVideoBitrate,
            "avgAudioBitrate": self.avgAudioBitrate,
            "totpExpiryPeriodSeconds": self.totpExpiryPeriodSeconds,
        }


#: fields of a POSTed subscriber that describe state the server keeps
#: (ignored, as Ant Media overwrites or ignores them)
_SERVER_FIELDS = frozenset({
    "streamId", "connected", "currentConcurrentConnections", "blockedType",
    "blockedUntilUnitTimeStampMs", "registeredNodeIp", "avgVideoBitrate", "avgAudioBitrate",
})
_CLIENT_FIELDS = frozenset({
    "subscriberId", "subscriberName", "type", "b32Secret", "concurrentConnectionsLimit",
    "totpExpiryPeriodSeconds",
})


def subscriberFromJSON(value: JSONValue, streamId: str, appPeriod: int = DEFAULT_PERIOD
                       ) -> Subscriber:
    """
    The subscriber a C{POST /{App}/rest/v2/broadcasts/{streamId}/subscribers}
    body describes (already read by L{tokengate.jsonvalue.readJSON}).

    @param streamId: the stream of the path (the body's is ignored, as in
        Ant Media).
    @param appPeriod: the application's C{timeTokenPeriod}, recorded when
        the body gives no period (as Ant Media records it).
    @raise JSONError: naming the refused field; unknown fields are refused
        too (nothing is silently dropped).
    """
    body = requireObject(value, "The subscriber")
    unknown = sorted(set(body) - _CLIENT_FIELDS - _SERVER_FIELDS)
    if unknown:
        # named when it is a plain identifier, never echoed otherwise
        field = unknown[0] if re.fullmatch(r"[A-Za-z0-9_]{1,64}", unknown[0]) else "?"
        raise JSONError("Unknown subscriber field: {}".format(field), field)
    subscriberId = body.get("subscriberId")
    if not isinstance(subscriberId, str) or len(subscriberId) <= 3:
        raise JSONError("Missing parameter: Make sure you set subscriber object correctly and "
                        "make subscriberId's length at least 3", "subscriberId")
    if not isValidSubscriberId(subscriberId):
        raise JSONError("subscriberId must be 4 to 128 of A-Z a-z 0-9 _ . @ -", "subscriberId")
    type = body.get("type")
    if type not in TYPES:
        raise JSONError("type must be publish or play", "type")
    assert isinstance(type, str)
    b32Secret: Optional[str] = None
    if body.get("b32Secret") not in (None, ""):
        b32Secret = stringValue(body["b32Secret"], "b32Secret", 1024)
        try:
            keyFromB32Secret(b32Secret)
        except SecretError:
            raise JSONError("Secret code is not multiple of 8 bytes length. Use b32Secret which "
                            "is a string and its lenght is multiple of 8 bytes and allowed "
                            "characters A-Z, 2-7", "b32Secret")
    name = body.get("subscriberName")
    subscriberName = None if name is None else stringValue(name, "subscriberName", MAX_NAME)
    limit = body.get("concurrentConnectionsLimit", 1)
    limit = intValue(limit, "concurrentConnectionsLimit", 1, MAX_CONNECTIONS_LIMIT)
    period = body.get("totpExpiryPeriodSeconds")
    if period is None:
        period = appPeriod
    period = intValue(period, "totpExpiryPeriodSeconds", MIN_PERIOD, MAX_PERIOD)
    return Subscriber(subscriberId=subscriberId, streamId=streamId, type=type,
                      b32Secret=b32Secret, subscriberName=subscriberName,
                      concurrentConnectionsLimit=limit, totpExpiryPeriodSeconds=period)


@attrs.frozen
class ConnectionEvent:
    """
    Ant Media's C{ConnectionEvent}: a subscriber connected or disconnected.
    """

    timestamp: int
    eventType: str
    type: str
    eventProtocol: str
    streamId: str
    subscriberId: str
    instanceIP: Optional[str] = None

    def toJSON(self) -> dict[str, JSONValue]:
        return attrs.asdict(self)


class Refusal(enum.Enum):
    """
    Why L{ISubscriberStore.acquire} refused a connection.
    """

    #: a block is in force (Ant Media: C{user_blocked}, 401 "Subscriber is
    #: blocked", RTMP "Subscriber X is blocked to publish stream.")
    BLOCKED = "blocked"
    #: the subscriber already holds C{concurrentConnectionsLimit} live
    #: connections
    IN_USE = "in_use"
    #: the code's time step is older than one this subscriber already used
    REPLAYED = "replayed"
    #: the store holds L{MAX_SUBSCRIBERS} and cannot track another
    FULL = "full"
    #: no valid subscriber id, or a code that does not verify, or no key
    #: to verify it with (Ant Media: 403 "Time Based subscriber id or code
    #: is invalid", C{unauthorized_access})
    INVALID = "invalid"
    #: a C{play} subscriber asked to publish
    TYPE = "type"


@attrs.frozen
class Revoked:
    """
    What L{ISubscriberStore.revokeSubscribers} deleted: how many records and
    connection events.
    """

    subscribers: int
    events: int

    def __bool__(self) -> bool:
        """
        Whether anything was deleted (Ant Media's answer).
        """
        return bool(self.subscribers or self.events)


class SubscriberRefused(Exception):
    """
    L{ISubscriberStore.acquire} refused; C{refusal} says why.
    """

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.value)
        self.refusal = refusal


class SubscriberLease:
    """
    One live connection of a subscriber.  L{release} ends it (idempotent):
    the count drops and a C{disconnected} event is recorded.
    """

    def __init__(self, streamId: str, subscriberId: str, type: str,
                 release: Callable[[], "Deferred[None]"]) -> None:
        self.streamId = streamId
        self.subscriberId = subscriberId
        self.type = type
        self._release: Optional[Callable[[], "Deferred[None]"]] = release

    @property
    def released(self) -> bool:
        return self._release is None

    def release(self) -> "Deferred[None]":
        """
        End the connection (a second call does nothing).
        """
        release, self._release = self._release, None
        return succeed(None) if release is None else release()


class ISubscriberStore(Interface):
    """
    Where subscriber records, blocks and live connections live, per
    application and stream.  Every method returns a L{Deferred}.
    """

    name = Attribute("A short name for logs and metrics.")

    def addSubscriber(app: str, subscriber: Subscriber) -> "Deferred[bool]":
        """
        Record (or replace) a subscriber; keeps its live-connection count.
        Fires L{False} when the store is full.
        """

    def getSubscriber(app: str, streamId: str, subscriberId: str
                      ) -> "Deferred[Optional[Subscriber]]":
        """
        The record, or L{None}.
        """

    def listSubscribers(app: str, streamId: str, offset: int, size: int
                        ) -> "Deferred[Sequence[Subscriber]]":
        """
        A stream's records in the order they were added.
        """

    def deleteSubscriber(app: str, streamId: str, subscriberId: str) -> "Deferred[bool]":
        """
        Delete one record; fires whether there was one.
        """

    def revokeSubscribers(app: str, streamId: str) -> "Deferred[Revoked]":
        """
        Delete every record of a stream and its connection events, as Ant
        Media's C{DELETE .../subscribers} does; fires how many of each.
        Live connections go on (and are still counted) until they end.
        """

    def deleteApp(app: str) -> "Deferred[int]":
        """
        Delete everything of an application: records, blocks, replay marks,
        live-connection state and connection events; fires how many records.
        (Its live sessions are kicked when the application is deleted: a
        lease released after this leaves nothing behind.)
        """

    def close() -> "Deferred[None]":
        """
        Stop what the store runs (lease refreshes), waiting for releases in
        flight; later calls may fail with
        L{tokengate.store.StoreUnavailable}.  The database itself is the
        token store's: whoever opened it closes it, after this.
        """

    def blockSubscriber(app: str, streamId: str, subscriberId: str, blockedType: str,
                        seconds: int) -> "Deferred[bool]":
        """
        Block for C{seconds} from now (0 unblocks), recording an unknown
        subscriber without a secret.  Fires L{False} when the store is full.
        """

    def isBlocked(app: str, streamId: str, subscriberId: str, action: str) -> "Deferred[bool]":
        """
        Whether a block for C{action} is in force now.
        """

    def acquire(app: str, streamId: str, subscriberId: str, action: str, step: int,
                protocol: str, instanceIP: Optional[str] = None) -> "Deferred[SubscriberLease]":
        """
        In one atomic step: refuse a blocked subscriber, a code whose time
        C{step} is older than the newest this subscriber used, a subscriber
        on its live-connection limit; otherwise count the connection,
        record a C{connected} event and fire a lease.  Fails with
        L{SubscriberRefused}.
        """

    def connectionEvents(app: str, streamId: str, offset: int, size: int
                         ) -> "Deferred[Sequence[ConnectionEvent]]":
        """
        A stream's connection events, oldest first.
        """


#: a subscriber's key in a store: (app, streamId, subscriberId)
_Key = tuple[str, str, str]


@attrs.define
class _State:
    """
    What the memory store keeps per (app, streamId, subscriberId) beside the
    record: live connections and the newest time step used.
    """

    live: int = 0
    lastStep: int = -1


@implementer(ISubscriberStore)
class MemorySubscriberStore:
    """
    L{ISubscriberStore} in a dict, for one process.

    @param clock: where the time comes from (the reactor, or a
        L{twisted.internet.task.Clock} in tests).
    """

    name = "memory"

    def __init__(self, clock: Clock, maxSubscribers: int = MAX_SUBSCRIBERS) -> None:
        self._clock = clock
        self._max = maxSubscribers
        self._records: dict[_Key, Subscriber] = {}
        self._state: dict[_Key, _State] = {}
        self._events: OrderedDict[tuple[str, str], Deque[ConnectionEvent]] = OrderedDict()

    def _nowMs(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _full(self, key: _Key) -> bool:
        return key not in self._records and len(self._records) >= self._max

    def _withLive(self, app: str, record: Subscriber) -> Subscriber:
        state = self._state.get((app, record.streamId, record.subscriberId))
        live = state.live if state is not None else 0
        return attrs.evolve(record, currentConcurrentConnections=live, connected=live > 0)

    def _forget(self, key: _Key) -> None:
        """
        Drop the state of a subscriber that is neither recorded nor live.
        """
        state = self._state.get(key)
        if key not in self._records and state is not None and state.live == 0:
            del self._state[key]

    def addSubscriber(self, app: str, subscriber: Subscriber) -> "Deferred[bool]":
        key = (app, subscriber.streamId, subscriber.subscriberId)
        if self._full(key):
            return succeed(False)
        self._records[key] = subscriber
        return succeed(True)

    def getSubscriber(self, app: str, streamId: str, subscriberId: str
                      ) -> "Deferred[Optional[Subscriber]]":
        record = self._records.get((app, streamId, subscriberId))
        return succeed(None if record is None else self._withLive(app, record))

    def listSubscribers(self, app: str, streamId: str, offset: int, size: int
                        ) -> "Deferred[Sequence[Subscriber]]":
        if offset < 0 or size < 0:
            return succeed([])
        records = [r for (a, s, _), r in self._records.items() if a == app and s == streamId]
        return succeed([self._withLive(app, r) for r in records[offset:offset + size]])

    def deleteSubscriber(self, app: str, streamId: str, subscriberId: str) -> "Deferred[bool]":
        key = (app, streamId, subscriberId)
        found = self._records.pop(key, None) is not None
        self._forget(key)
        return succeed(found)

    def revokeSubscribers(self, app: str, streamId: str) -> "Deferred[Revoked]":
        keys = [k for k in self._records if k[:2] == (app, streamId)]
        for key in keys:
            del self._records[key]
            self._forget(key)
        events = self._events.pop((app, streamId), ())
        return succeed(Revoked(len(keys), len(events)))

    def deleteApp(self, app: str) -> "Deferred[int]":
        records = [k for k in self._records if k[0] == app]
        for key in records:
            del self._records[key]
        # live state too: a lease released later finds it gone (L{acquire})
        for key in [k for k in self._state if k[0] == app]:
            del self._state[key]
        for where in [w for w in self._events if w[0] == app]:
            del self._events[where]
        return succeed(len(records))

    def close(self) -> "Deferred[None]":
        """
        Nothing runs: nothing to stop.
        """
        return succeed(None)

    def blockSubscriber(self, app: str, streamId: str, subscriberId: str, blockedType: str,
                        seconds: int) -> "Deferred[bool]":
        if blockedType not in BLOCK_TYPES:
            raise ValueError("the block type must be publish, play or publish_play")
        if not 0 <= seconds <= MAX_BLOCK_SECONDS:
            raise ValueError("a block lasts 0 to {} seconds".format(MAX_BLOCK_SECONDS))
        key = (app, streamId, subscriberId)
        record = self._records.get(key)
        if record is None:
            if self._full(key):
                return succeed(False)
            # As Ant Media: an unknown subscriber is recorded to hold the
            # block; without a secret or type, its key stays the derived one.
            record = Subscriber(subscriberId=subscriberId, streamId=streamId, type=None)
        self._records[key] = attrs.evolve(
            record, blockedType=blockedType,
            blockedUntilUnitTimeStampMs=min(self._nowMs() + seconds * 1000, _INT64))
        return succeed(True)

    def isBlocked(self, app: str, streamId: str, subscriberId: str, action: str
                  ) -> "Deferred[bool]":
        record = self._records.get((app, streamId, subscriberId))
        return succeed(record is not None and record.isBlocked(action, self._nowMs()))

    def acquire(self, app: str, streamId: str, subscriberId: str, action: str, step: int,
                protocol: str, instanceIP: Optional[str] = None) -> "Deferred[SubscriberLease]":
        key = (app, streamId, subscriberId)
        record = self._records.get(key)
        nowMs = self._nowMs()
        if record is not None and record.isBlocked(action, nowMs):
            return fail(SubscriberRefused(Refusal.BLOCKED))
        state = self._state.get(key)
        if state is None:
            if len(self._state) >= self._max:
                return fail(SubscriberRefused(Refusal.FULL))
            state = _State()
        if step < state.lastStep:
            return fail(SubscriberRefused(Refusal.REPLAYED))
        limit = record.concurrentConnectionsLimit if record is not None else 1
        if state.live >= limit:
            return fail(SubscriberRefused(Refusal.IN_USE))
        self._state[key] = state
        state.live += 1
        state.lastStep = step
        protocol = protocol[:MAX_NAME]
        self._event(app, ConnectionEvent(nowMs, "connected", action, protocol, streamId,
                                         subscriberId, instanceIP))

        def release() -> "Deferred[None]":
            if self._state.get(key) is not state:
                # the application was deleted meanwhile (L{deleteApp}):
                # nothing of it is written again
                return succeed(None)
            state.live -= 1
            self._event(app, ConnectionEvent(self._nowMs(), "disconnected", action, protocol,
                                             streamId, subscriberId, instanceIP))
            if state.live == 0 and key not in self._records:
                # an unrecorded (derived) subscriber: its state, replay
                # mark included, lasts while it holds a connection, so that
                # subscribers nobody recorded cannot fill the store
                self._state.pop(key, None)
            return succeed(None)

        return succeed(SubscriberLease(streamId, subscriberId, action, release))

    def _event(self, app: str, event: ConnectionEvent) -> None:
        where = (app, event.streamId)
        events = self._events.get(where)
        if events is None:
            while len(self._events) >= MAX_EVENT_STREAMS:
                self._events.popitem(last=False)
            events = self._events[where] = deque(maxlen=MAX_EVENTS_PER_STREAM)
        else:
            self._events.move_to_end(where)
        events.append(event)

    def connectionEvents(self, app: str, streamId: str, offset: int, size: int
                         ) -> "Deferred[Sequence[ConnectionEvent]]":
        if offset < 0 or size < 0:
            return succeed([])
        events = list(self._events.get((app, streamId), ()))
        return succeed(events[offset:offset + size])


class SubscriberStore(Protocol):
    """
    What L{admitSubscriber} uses of an L{ISubscriberStore}, as mypy sees it.
    """

    def getSubscriber(self, app: str, streamId: str, subscriberId: str
                      ) -> "Deferred[Optional[Subscriber]]": ...

    def acquire(self, app: str, streamId: str, subscriberId: str, action: str, step: int,
                protocol: str, instanceIP: Optional[str] = None
                ) -> "Deferred[SubscriberLease]": ...


async def admitSubscriber(store: SubscriberStore, app: str, streamId: str, subscriberId: object,
                          code: object, action: str, secretFromSettings: str, appPeriod: int,
                          now: float, protocol: str, instanceIP: Optional[str] = None
                          ) -> SubscriberLease:
    """
    The whole TOTP subscriber check, in Ant Media's terms: the record of
    (C{streamId}, C{subscriberId}) if there is one, else a derived
    subscriber; its type must allow C{action}; its code must verify (its
    own C{b32Secret} and period, else the key derived from
    C{secretFromSettings} and C{appPeriod}); then L{ISubscriberStore.acquire}
    (blocked, older code, live connections).  The code is checked before
    the block, so that a client without a valid code learns nothing about
    blocks.

    @param secretFromSettings: C{timeTokenSecretForPublish} or
        C{timeTokenSecretForPlay}, by C{action}.
    @param appPeriod: the application's C{timeTokenPeriod}.
    @param now: unix time, seconds (the same clock as the store's).
    @return: the lease of the admitted connection.
    @raise SubscriberRefused: with the reason.
    """
    if action not in TYPES or not isValidSubscriberId(subscriberId):
        raise SubscriberRefused(Refusal.INVALID)
    assert isinstance(subscriberId, str)
    record = await store.getSubscriber(app, streamId, subscriberId)
    if record is None:
        record = Subscriber(subscriberId=subscriberId, streamId=streamId, type=None)
    if not record.allows(action):
        raise SubscriberRefused(Refusal.TYPE)
    try:
        key = record.key(secretFromSettings, action)
    except SecretError:
        raise SubscriberRefused(Refusal.INVALID)
    step = verifyCode(key, code, now, record.period(appPeriod))
    if step is None:
        raise SubscriberRefused(Refusal.INVALID)
    lease: SubscriberLease = await store.acquire(app, streamId, subscriberId, action, step,
                                                 protocol, instanceIP)
    return lease
