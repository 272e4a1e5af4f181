# -*- test-case-name: tests.test_subscriber_stores -*-
"""
The persistent subscriber stores' common parts, and the one place that
builds a subscriber store beside a token store (L{open_subscriber_store}).

  - L{tokengate.access.subscribers.MemorySubscriberStore} beside a memory
    token store;
  - L{tokengate.access.subscribers_sqlite.SQLiteSubscriberStore} beside a
    SQLite token store: its own tables in the same database file, on the
    token store's database thread;
  - L{tokengate.access.subscribers_redis.RedisSubscriberStore} beside a
    Redis token store: its own keys on the same Redis client.

The persistent stores keep a record as the JSON of L{recordJSON} (every
field a client set, the secret included, and none of the state the store
computes: live connections, blocks), and connection events as the JSON of
L{tokengate.access.subscribers.ConnectionEvent.toJSON}.
"""

from __future__ import annotations

import json
from typing import Callable, Optional

from twisted.internet.interfaces import IReactorTime

from tokengate.access.subscribers import (
    ConnectionEvent,
    ISubscriberStore,
    MemorySubscriberStore,
    Subscriber,
)
from tokengate.metrics import Metrics
from tokengate.store import ITokenStore

#: what a persistent store calls with an operation's name when the
#: database fails (the composition root counts it in
#: C{tokengate_store_errors{operation}})
ErrorCounter = Callable[[str], None]

#: the record fields a persistent store keeps in its JSON
_RECORD_FIELDS = ("type", "b32Secret", "subscriberName", "concurrentConnectionsLimit",
                  "totpExpiryPeriodSeconds", "avgVideoBitrate", "avgAudioBitrate")


def recordJSON(subscriber: Subscriber) -> str:
    """
    The stored JSON of a record: the fields of L{_RECORD_FIELDS}.
    """
    return json.dumps({name: getattr(subscriber, name) for name in _RECORD_FIELDS},
                      separators=(",", ":"), sort_keys=True)


def recordFromJSON(text: str, streamId: str, subscriberId: str, blockedType: Optional[str],
                   blockedUntil: int, live: int) -> Subscriber:
    """
    The record stored as C{text} (by L{recordJSON}), with the state the
    store keeps beside it.
    """
    fields = json.loads(text)
    return Subscriber(subscriberId=subscriberId, streamId=streamId, type=fields.get("type"),
                      b32Secret=fields.get("b32Secret"),
                      subscriberName=fields.get("subscriberName"),
                      concurrentConnectionsLimit=fields.get("concurrentConnectionsLimit", 1),
                      totpExpiryPeriodSeconds=fields.get("totpExpiryPeriodSeconds"),
                      avgVideoBitrate=fields.get("avgVideoBitrate", 0),
                      avgAudioBitrate=fields.get("avgAudioBitrate", 0),
                      blockedType=blockedType, blockedUntilUnitTimeStampMs=blockedUntil,
                      currentConcurrentConnections=live, connected=live > 0)


def eventJSON(event: ConnectionEvent) -> str:
    """
    The stored JSON of a connection event.
    """
    return json.dumps(event.toJSON(), separators=(",", ":"), sort_keys=True)


def eventFromJSON(text: str) -> ConnectionEvent:
    """
    The connection event stored as C{text} by L{eventJSON}.
    """
    return ConnectionEvent(**json.loads(text))


def open_subscriber_store(tokens: ITokenStore, clock: IReactorTime,
                          metrics: Optional[Metrics] = None) -> ISubscriberStore:
    """
    The subscriber store of the same backend as the token store C{tokens}
    (built by L{tokengate.store.open_store}): in memory, in the same SQLite
    file, or on the same Redis client.

    @param clock: the reactor (or a L{twisted.internet.task.Clock}): the
        time of blocks and events, and the Redis store's lease refreshes.
    @param metrics: where a call the database fails (it then fails with
        L{tokengate.store.StoreUnavailable}) is counted, as the token
        store's are: C{tokengate_store_errors{operation="subscriber_..."}}.
    @raise ValueError: for a token store of no known backend.
    """
    onError: Optional[ErrorCounter] = None
    if metrics is not None:
        errors = metrics.store_errors
        onError = lambda operation: errors.labels(operation).inc()  # noqa: E731

    from tokengate.store.memory import MemoryTokenStore
    from tokengate.store.redis import RedisTokenStore
    from tokengate.store.sqlite import SQLiteTokenStore

    if isinstance(tokens, MemoryTokenStore):
        return MemorySubscriberStore(clock)
    if isinstance(tokens, SQLiteTokenStore):
        from tokengate.access.subscribers_sqlite import SQLiteSubscriberStore

        return SQLiteSubscriberStore(tokens.path, tokens.run, clock, onError=onError)
    if isinstance(tokens, RedisTokenStore):
        from tokengate.access.subscribers_redis import RedisSubscriberStore

        return RedisSubscriberStore(tokens.client, clock, onError=onError)
    raise ValueError("no subscriber store for the token store {!r}".format(tokens))
