# -*- test-case-name: tests.test_cluster_settings,tests.interop.test_cluster_settings -*-
"""
The applications and their settings kept in the store's Redis, in force on
every node of the cluster at once (docs/cluster.md).

L{RedisApplications} is an L{tokengate.apps.Applications} (every reader
keeps asking C{get(name)} synchronously, every listener of C{onChange} is
told of changes as before) whose contents live in Redis::

    {P}apps            HASH  application name -> its settings (JSON)
    {P}apps:{db}       pub/sub channel: "{node} {app}" after each change

A change made through REST (L{RedisApplications.store},
L{RedisApplications.add}, L{RedisApplications.remove}) is written to Redis
first (one script: the hash and the notice, atomically), then applied on
this node; the other nodes, told on the channel, read the application's
current settings from the hash and apply them (a deletion ends the
application's sessions and streams there, as here: the C{onChange}
listeners do).  Each time the subscription is (again) in place the node
reads the whole hash and applies every difference, so a notice missed
while it was cut off is caught up.

Until the first read succeeds the node knows no application, so every
publish and play is refused C{no_app} (fail closed) rather than admitted
under default settings.  The first node of a cluster seeds the hash from
its C{apps.json} (or the defaults) when the hash does not exist.

Failures: Redis out of reach, a change through REST fails (503) and
nothing changes anywhere; the nodes keep the settings they have.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Mapping, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from tokengate.access.names import isValidAppName
from tokengate.apps import (
    RESERVED_NAMES,
    Applications,
    AppSettings,
    SettingsError,
    SettingsUnavailable,
)
from tokengate.jsonvalue import JSONError, readJSON
from tokengate.logsafe import Logger
from tokengate.metrics import Metrics
from tokengate.redisclient import RedisClient, RedisSubscription, RedisUnavailable

#: the longest stored settings document read back, bytes
MAX_SETTINGS_BYTES = 1 << 20
#: the most applications read from the hash
MAX_APPS = 10_000
#: seconds between attempts at the first read while Redis is out of reach
RETRY = 1.0

#: KEYS: the hash; ARGV: channel, notice, then (name, settings) pairs.
#: Writes them and publishes the notice.
_STORE = """
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""

#: KEYS: the hash; ARGV: channel, notice, name.  Returns whether it existed.
_REMOVE = """
local n = redis.call('HDEL', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return n
"""

#: KEYS: the hash; ARGV: (name, settings) pairs.  Seeds the hash when it
#: does not exist; returns whether it did.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class RedisApplications(Applications):
    """
    See the module's docstring.
    """

    _log = Logger()

    def __init__(self, client: RedisClient, clock: IReactorTime, metrics: Metrics,
                 seed: Optional[Applications] = None, keepalive: float = 15.0) -> None:
        """
        @param seed: the applications written to Redis if it has none yet
            when this node first reads it (this node's C{apps.json}); by
            default the defaults.  Afterwards an empty Redis is seeded with
            the applications this node has in force.
        """
        super().__init__(None)
        self._apps.clear()
        self._client = client
        self._clock = clock
        self._seed = seed if seed is not None else Applications(None)
        self._keepalive = keepalive
        self.key = client.prefix + "apps"
        self.channel = "{}apps:{}".format(client.prefix, client.db)
        self.nodeId = secrets.token_hex(8)
        #: whether the settings were read from Redis at least once
        self.loaded = False
        self._subscription: Optional[RedisSubscription] = None
        self._retry: Optional[IDelayedCall] = None
        self._stopped = False
        self._errors = metrics.counter("tokengate_cluster_settings_errors_total",
                                       "Reads and writes of the cluster's settings that "
                                       "failed", ["operation"])
        self._reloads = metrics.counter("tokengate_cluster_settings_reloads_total",
                                        "Settings read again from Redis", ["reason"])

    # --- the service's life ---------------------------------------------------------

    def start(self) -> None:
        """
        Subscribe to the notices; each time the subscription is in place,
        read everything.
        """
        self._stopped = False
        if self._subscription is None:
            self._subscription = self._client.subscribe(
                self.channel, self._received, self._subscribed, keepalive=self._keepalive)

    def stop(self) -> "Deferred[None]":
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        return subscription.close()

    @property
    def subscribed(self) -> bool:
        return self._subscription is not None and self._subscription.subscribed

    def _subscribed(self) -> None:
        self._reloads.labels("subscribed").inc()
        self.reloadAll().addErrback(lambda f: self._scheduleRetry())

    def _scheduleRetry(self) -> None:
        if self._stopped or (self._retry is not None and self._retry.active()):
            return
        self._retry = self._clock.callLater(RETRY, self._retryNow)

    def _retryNow(self) -> None:
        self._retry = None
        if self.subscribed:
            self._reloads.labels("retry").inc()
            self.reloadAll().addErrback(lambda f: self._scheduleRetry())

    # --- reading -----------------------------------------------------------------------

    def reloadAll(self) -> "Deferred[None]":
        """
        Read every application from Redis (seeding it first when it holds
        none) and apply the differences.  Fails with L{SettingsUnavailable}.
        """
        return Deferred.fromCoroutine(self._reloadAll())

    async def _reloadAll(self) -> None:
        # Redis without the hash (restarted without persistence, flushed)
        # is seeded with what this node has in force once it has read the
        # cluster's settings, not with its start-up apps.json: that would
        # undo every change made through REST since (token control
        # switched on, say) on every node.
        source: Applications = self if self.loaded else self._seed
        try:
            seed: list[str] = []
            for name in source:
                settings = source.get(name)
                assert settings is not None
                seed += [name, _encode(settings)]
            await self._client.eval(_SEED, [self.key], seed)
            stored = await self._client.call(lambda conn: conn.hgetall(self.key))
        except RedisUnavailable as e:
            self._errors.labels("read").inc()
            self._log.warn("reading the applications from redis failed: {error}",
                           error=str(e))
            raise SettingsUnavailable(str(e))
        apps: dict[str, AppSettings] = {}
        for rawName, raw in list((stored or {}).items())[:MAX_APPS]:
            name = _text(rawName)
            settings = self._parse(name, raw)
            if settings is not None:
                apps[name] = settings
        self._apply(apps)
        if not self.loaded:
            self.loaded = True
            self._log.info("{n} applications read from redis", n=len(apps))

    def _parse(self, name: str, raw: Any) -> Optional[AppSettings]:
        if not isValidAppName(name) or name.lower() in RESERVED_NAMES:
            self._errors.labels("malformed").inc()
            return None
        data = raw if isinstance(raw, bytes) else _text(raw).encode("utf-8", "replace")
        if len(data) > MAX_SETTINGS_BYTES:
            self._errors.labels("malformed").inc()
            return None
        try:
            settings, repairs = AppSettings.fromStored(readJSON(data), name)
        except (JSONError, SettingsError, ValueError):
            self._errors.labels("malformed").inc()
            self._log.warn("application {app}: its settings in redis are malformed; "
                           "ignored", app=name)
            return None
        for repair in repairs:
            self._log.warn("application {app}: stored {repair}", app=name, repair=repair)
        return settings

    def _apply(self, apps: Mapping[str, AppSettings]) -> None:
        """
        Make this node's applications C{apps}, telling the listeners of
        every difference.
        """
        for name in [n for n in self._apps if n not in apps]:
            del self._apps[name]
            self._changed(name, None)
        for name, settings in apps.items():
            if self._apps.get(name) != settings:
                self._apps[name] = settings
                self._changed(name, settings)

    def _applyOne(self, name: str, settings: Optional[AppSettings]) -> None:
        if settings is None:
            if name in self._apps:
                del self._apps[name]
                self._changed(name, None)
        elif self._apps.get(name) != settings:
            self._apps[name] = settings
            self._changed(name, settings)

    def _received(self, message: Any) -> None:
        text = _text(message)
        origin, _, name = text.partition(" ")
        if not isValidAppName(name) or len(origin) > 64:
            self._errors.labels("malformed").inc()
            return
        if origin == self.nodeId or not self.loaded:
            return
        self._reloads.labels("notice").inc()
        d = self._client.call(lambda conn: conn.hget(self.key, name))

        def got(raw: Any) -> None:
            self._applyOne(name, None if raw is None else self._parse(name, raw))

        def failed(f: Any) -> None:
            f.trap(RedisUnavailable)
            self._errors.labels("read").inc()
            # the subscription is likely down too: it reads everything again
            # when in place; if not, read everything now
            self._subscribed()

        d.addCallbacks(got, failed)

    # --- writing (the REST API) --------------------------------------------------------

    def _notice(self, name: str) -> str:
        return "{} {}".format(self.nodeId, name)

    async def store(self, name: str, settings: AppSettings) -> None:
        """
        Change an application's settings on every node.

        @raise KeyError: it does not exist.
        @raise SettingsError: the settings are inconsistent.
        @raise SettingsUnavailable: Redis is out of reach (nothing changed).
        """
        if name not in self._apps:
            raise KeyError(name)
        settings.validate()
        await self._write(_STORE, [self.channel, self._notice(name), name, _encode(settings)])
        self._applyOne(name, settings)

    async def add(self, name: str, settings: Optional[AppSettings] = None) -> None:
        """
        Create an application on every node.

        @raise SettingsError: a bad or taken name.
        @raise SettingsUnavailable: Redis is out of reach.
        """
        self._checkNew(name)
        settings = settings if settings is not None else AppSettings()
        await self._write(_STORE, [self.channel, self._notice(name), name, _encode(settings)])
        self._applyOne(name, settings)

    async def remove(self, name: str) -> None:
        """
        Delete an application on every node (each ends its sessions and
        streams).

        @raise KeyError: it does not exist.
        @raise SettingsUnavailable: Redis is out of reach.
        """
        if name not in self._apps:
            raise KeyError(name)
        await self._write(_REMOVE, [self.channel, self._notice(name), name])
        self._applyOne(name, None)

    async def _write(self, script: str, args: list[str]) -> None:
        try:
            await self._client.eval(script, [self.key], args)
        except RedisUnavailable as e:
            self._errors.labels("write").inc()
            raise SettingsUnavailable(str(e))

    # the synchronous changes (tests and tools): written to Redis, then
    # applied; a refusal known at once (no such application, a bad name or
    # settings) raises, a failed write is logged and counted
    def update(self, name: str, settings: AppSettings) -> None:
        self._writeThrough(self.store(name, settings))

    def create(self, name: str, settings: Optional[AppSettings] = None) -> None:
        self._writeThrough(self.add(name, settings))

    def delete(self, name: str) -> None:
        self._writeThrough(self.remove(name))

    def _writeThrough(self, coroutine: Any) -> None:
        synchronous = True
        raised: list[Any] = []

        def caught(f: Any) -> None:
            if synchronous and not f.check(SettingsUnavailable):
                raised.append(f)
                return
            self._log.warn("an application change was not written to redis: {error}",
                           error=f.getErrorMessage())

        Deferred.fromCoroutine(coroutine).addErrback(caught)
        synchronous = False
        if raised:
            raised[0].raiseException()


def _encode(settings: AppSettings) -> str:
    return json.dumps(settings.asJSON(), sort_keys=True, separators=(",", ":"))


__all__ = ["RedisApplications"]
