# -*- test-case-name: tests.test_apps -*-
"""
Applications and their settings.

Each application (C{LiveApp} and C{WebRTCAppEE} exist by default) has its
own settings, named as the reference server names them.  They persist as one
JSON file in the data directory, rewritten atomically on every change.

Every field's type and range is checked in one place, L{SETTINGS_FIELDS}
(through L{tokengate.jsonvalue}): a POSTed value of the wrong type or out of
range raises L{JSONError} naming the field (a 400), the rules that combine
fields raise L{SettingsError} (the reference server's C{success:false}).
A stored value out of range (written by an older version) is clamped when
it is numeric and refuses the load otherwise (see L{AppSettings.fromStored}).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
from typing import Any, Callable, Iterator, Optional, Protocol

from attrs import asdict, define, evolve

from tokengate.access.names import isValidAppName
from tokengate.access.totp import DEFAULT_PERIOD, MAX_PERIOD, MIN_PERIOD
from tokengate.jsonvalue import (
    JSONError,
    boolValue,
    decimalText,
    intValue,
    requireObject,
    stringValue,
    urlValue,
)
from tokengate.logsafe import Logger

DEFAULT_APPS = ("LiveApp", "WebRTCAppEE")

#: First path segments that name something other than an application.
RESERVED_NAMES = frozenset({"rest", "metrics", "time", "static", "favicon.ico"})


MIN_JWT_KEY_LENGTH = 32
#: the shortest tokenHashSecret that enables hash tokens (Ant Media sets no
#: bound; a short one is guessed from any one token by brute force)
MIN_HASH_SECRET_LENGTH = 16
#: the longest secret key (C{jwtStreamSecretKey}, C{jwtSecretKey})
MAX_KEY_LENGTH = 1024
#: the longest C{remoteAllowedCIDR} and the most networks in it
MAX_CIDR_TEXT = 4096
MAX_NETWORKS = 256

_SIGNED = re.compile(r"-?[0-9]+")


class SettingsUnavailable(Exception):
    """
    The applications' shared backend (a cluster's Redis) cannot take a
    change now; nothing changed.
    """


class SettingsError(ValueError):
    """
    Settings that cannot be applied; the message is shown to the caller.
    """


class BoolField:
    """
    C{true} or C{false}.  Not repairable: a switch stored with another value
    refuses the load rather than guess (many switches are security ones).
    """

    def check(self, value: object, name: str) -> bool:
        return boolValue(value, name)

    def repair(self, value: object, name: str) -> Optional[object]:
        return None


@define(frozen=True)
class TextField:
    """
    A string of at most C{maxLength} characters, no control characters.
    Not repairable (cutting a key or a network list changes its meaning).
    """

    maxLength: int

    def check(self, value: object, name: str) -> str:
        return stringValue(value, name, self.maxLength)

    def repair(self, value: object, name: str) -> Optional[object]:
        return None


@define(frozen=True)
class URLField:
    """
    An C{http} or C{https} URL that tokengate will call
    (L{tokengate.jsonvalue.urlValue}), or C{""} for none.  Not repairable.
    """

    def check(self, value: object, name: str) -> str:
        if value == "":
            return ""
        return urlValue(value, name)

    def repair(self, value: object, name: str) -> Optional[object]:
        return None


@define(frozen=True)
class DecimalField:
    """
    An integer in [C{low}, C{high}] that the reference server keeps as a
    string (C{"2"}): a JSON integer or a string of ASCII digits is accepted
    and kept as its canonical string.  A stored value out of range is
    clamped into it; one that is not a number at all takes C{default}.
    """

    low: int
    high: int
    default: str

    def check(self, value: object, name: str) -> str:
        if isinstance(value, str):
            return str(decimalText(value, name, self.low, self.high))
        return str(intValue(value, name, self.low, self.high))

    def repair(self, value: object, name: str) -> Optional[object]:
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if isinstance(text, str) and _SIGNED.fullmatch(text) is not None:
            # an older version took any isdigit() text (inf as a float)
            if len(text.lstrip("-0")) > len(str(self.high)):
                return str(self.low if text.startswith("-") else self.high)
            return str(min(max(int(text), self.low), self.high))
        return self.default


@define(frozen=True)
class IntField:
    """
    A JSON integer in [C{low}, C{high}], kept as an integer (the reference
    server's C{int} settings).  A stored value out of range is clamped into
    it; one that is not an integer takes C{default}.
    """

    low: int
    high: int
    default: int

    def check(self, value: object, name: str) -> int:
        return intValue(value, name, self.low, self.high)

    def repair(self, value: object, name: str) -> Optional[object]:
        if isinstance(value, int) and not isinstance(value, bool):
            return min(max(value, self.low), self.high)
        return self.default


#: The type and range of every settings field: the one place they are
#: checked, for a POST (L{AppSettings.fromJSON}), for any change
#: (L{AppSettings.validate}) and for what was stored (L{AppSettings.fromStored}).
SETTINGS_FIELDS: dict[str, "BoolField | TextField | URLField | DecimalField | IntField"] = {
    "publishTokenControlEnabled": BoolField(),
    "playTokenControlEnabled": BoolField(),
    "publishJwtControlEnabled": BoolField(),
    "playJwtControlEnabled": BoolField(),
    "jwtStreamSecretKey": TextField(MAX_KEY_LENGTH),
    "enableTimeTokenForPublish": BoolField(),
    "enableTimeTokenForPlay": BoolField(),
    "timeTokenSecretForPublish": TextField(MAX_KEY_LENGTH),
    "timeTokenSecretForPlay": TextField(MAX_KEY_LENGTH),
    # seconds; Ant Media takes any int, tokengate the bounds of its TOTP
    "timeTokenPeriod": IntField(MIN_PERIOD, MAX_PERIOD, DEFAULT_PERIOD),
    "hashControlPublishEnabled": BoolField(),
    "hashControlPlayEnabled": BoolField(),
    "tokenHashSecret": TextField(MAX_KEY_LENGTH),
    "webhookAuthenticateURL": URLField(),
    "webhookPlayAuthUrl": URLField(),
    "ipFilterEnabled": BoolField(),
    "remoteAllowedCIDR": TextField(MAX_CIDR_TEXT),
    "jwtControlEnabled": BoolField(),
    "jwtSecretKey": TextField(MAX_KEY_LENGTH),
    "jwksURL": URLField(),
    "hlsMuxingEnabled": BoolField(),
    "dashMuxingEnabled": BoolField(),
    "mp4MuxingEnabled": BoolField(),
    "webRTCEnabled": BoolField(),
    "rtmpPlaybackEnabled": BoolField(),
    # only broadcasts (rooms) created through REST may publish (be joined)
    "acceptOnlyStreamsInDataStore": BoolField(),
    "acceptOnlyRoomsInDataStore": BoolField(),
    # publishers' addresses (comma-separated CIDRs; empty: everyone)
    "allowedPublisherCIDR": TextField(MAX_CIDR_TEXT),
    # segment target in whole seconds, at most a minute (a segment is held in
    # memory while it grows); a larger --part-target is lowered to it
    "hlsTime": DecimalField(1, 60, "2"),
    # segments listed in a playlist (the packager's memory is bounded apart)
    "hlsListSize": DecimalField(1, 100, "5"),
}


def _turnsOn(value: object) -> bool:
    """
    Whether a POSTed switch asks for the feature (anything but C{false}).
    """
    return value is not False


def _names(value: object) -> bool:
    """
    Whether a POSTed secret, URL or network list asks for the feature
    (anything but an empty string).
    """
    return value != ""


def _limits(value: object) -> bool:
    """
    Whether a POSTed limit asks for the feature (anything but C{0}).
    """
    return value != 0


#: Ant Media's stream-security settings that tokengate does not enforce: a
#: POST whose value would change what is admitted is refused, naming the
#: fields (a setting accepted and not enforced would fail open); their
#: neutral values (C{false}, C{""}), as Ant Media's own clients send them
#: in a whole settings object, are accepted.
UNENFORCED_SECURITY: dict[str, Callable[[object], bool]] = {
    # HLS AES-128 encryption: segments would be served in the clear
    "hlsEncryptionKeyInfoFile": _names,
    # a Content-Security-Policy header on the server's pages
    "contentSecurityPolicyHeaderValue": _names,
    # publish limits: streams above them would be admitted
    "maxResolutionAccept": _limits,
    "maxBitrateAccept": _limits,
    "maxFpsAccept": _limits,
}

#: unknown fields named in a settings answer, at most
MAX_NAMED_FIELDS = 20

_FIELD_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


def unknownFields(data: object) -> tuple[list[str], list[str]]:
    """
    The fields of a POSTed settings object that tokengate does not keep.

    @return: the unenforced security fields whose value asks for their
        feature (L{UNENFORCED_SECURITY}), and every other field that is not
        a setting (kept out; names that are not plain identifiers are
        reported as one C{"?"}), both sorted.
    @raise JSONError: when C{data} is not an object.
    """
    obj = requireObject(data, "Settings")
    refused: list[str] = []
    ignored: set[str] = set()
    for name, value in obj.items():
        if name in SETTINGS_FIELDS or name in _ALIASES:
            continue
        wants = UNENFORCED_SECURITY.get(name)
        if wants is not None:
            if value is not None and wants(value):
                refused.append(name)
            continue
        ignored.add(name if _FIELD_NAME.fullmatch(name) else "?")
    return sorted(refused), sorted(ignored)


@define
class AppSettings:
    """
    An application's settings.  Field names are the reference server's JSON
    names; missing ones take these defaults ("null fields will be set to
    default values"); unknown ones are refused or kept out (L{fromJSON}).
    """

    # one-time tokens
    publishTokenControlEnabled: bool = False
    playTokenControlEnabled: bool = False
    # JWT stream tokens (HS256 over jwtStreamSecretKey)
    publishJwtControlEnabled: bool = False
    playJwtControlEnabled: bool = False
    jwtStreamSecretKey: str = ""
    # TOTP subscriber codes (tokengate.access.subscriberpolicy): with a
    # token kind of the same direction, both must pass (hash only: Ant
    # Media refuses TOTP with one-time or JWT tokens)
    enableTimeTokenForPublish: bool = False
    enableTimeTokenForPlay: bool = False
    timeTokenSecretForPublish: str = ""
    timeTokenSecretForPlay: str = ""
    timeTokenPeriod: int = DEFAULT_PERIOD
    # hash tokens: sha256 hex of streamId + role + tokenHashSecret (reusable)
    hashControlPublishEnabled: bool = False
    hashControlPlayEnabled: bool = False
    tokenHashSecret: str = ""
    # authorization webhooks (tokengate.access.webhookpolicy): "" is off,
    # else an http(s) URL POSTed before each publish / play; 200 admits
    webhookAuthenticateURL: str = ""
    webhookPlayAuthUrl: str = ""
    # protection of this application's REST API: each filter that is on
    # must pass (the address filter AND the JWT filter); one must be on
    ipFilterEnabled: bool = True
    remoteAllowedCIDR: str = "127.0.0.1"
    jwtControlEnabled: bool = False
    jwtSecretKey: str = ""
    # RS256 keys of the JWTs (REST and stream) instead of the HS256 secrets
    jwksURL: str = ""
    # media
    hlsMuxingEnabled: bool = True
    dashMuxingEnabled: bool = False
    mp4MuxingEnabled: bool = False
    webRTCEnabled: bool = True
    rtmpPlaybackEnabled: bool = True
    # datastore: only broadcasts created through REST publish
    # (tokengate.access.datastore)
    acceptOnlyStreamsInDataStore: bool = False
    acceptOnlyRoomsInDataStore: bool = False
    # publisher address filter (tokengate.access.publisheraddress)
    allowedPublisherCIDR: str = ""
    hlsTime: str = "2"
    hlsListSize: str = "5"

    def asJSON(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def fromJSON(cls, data: object) -> tuple["AppSettings", list[str]]:
        """
        Build settings from a POSTed object and validate them.

        @return: the settings, and the fields of C{data} that are not
            settings and were kept out (see L{unknownFields}).
        @raise JSONError: when a field has the wrong type or is out of its
            range (the message names the field).
        @raise SettingsError: when the combination is invalid, or a
            security setting tokengate does not enforce would be turned on
            (the message names every such field).
        """
        refused, ignored = unknownFields(data)
        if refused:
            raise SettingsError(
                "Not supported by tokengate, so refused (nothing was changed): "
                + ", ".join(refused))
        values: dict[str, Any] = {}
        for name, value in _present(data):
            values[name] = SETTINGS_FIELDS[name].check(value, name)
        settings = cls(**values)
        settings.validate()
        return settings, ignored

    @classmethod
    def fromStored(cls, data: object, app: str) -> tuple["AppSettings", list[str]]:
        """
        Build settings from what was stored, which an older version may
        have written with values this one refuses: a numeric field out of
        range is clamped into it (not a number at all: its default), and
        the repair is reported; anything else wrong refuses the load.

        @return: the settings and one message per repaired field.
        @raise SettingsError: naming the application and the field.
        """
        values: dict[str, Any] = {}
        repairs: list[str] = []
        try:
            for name, value in _present(data):
                spec = SETTINGS_FIELDS[name]
                try:
                    values[name] = spec.check(value, name)
                except JSONError as e:
                    repaired = spec.repair(value, name)
                    if repaired is None:
                        raise
                    values[name] = repaired
                    repairs.append("{}; using {}".format(e, repaired))
            settings = cls(**values)
            settings.validate()
        except (JSONError, SettingsError) as e:
            raise SettingsError("stored settings of application {}: {}".format(app, e))
        return settings, repairs

    def validate(self) -> None:
        """
        Check every field's type and range (L{SETTINGS_FIELDS}) and the
        rules that combine fields.

        @raise JSONError: a field of the wrong type or out of range.
        @raise SettingsError: an invalid combination.
        """
        for name, spec in SETTINGS_FIELDS.items():
            spec.check(getattr(self, name), name)
        for direction, onetime, jwt_, totp, hash_ in (
            (
                "publish",
                self.publishTokenControlEnabled,
                self.publishJwtControlEnabled,
                self.enableTimeTokenForPublish,
                self.hashControlPublishEnabled,
            ),
            (
                "play",
                self.playTokenControlEnabled,
                self.playJwtControlEnabled,
                self.enableTimeTokenForPlay,
                self.hashControlPlayEnabled,
            ),
        ):
            if onetime + jwt_ + hash_ > 1:
                raise SettingsError(
                    "Only one token type can be enabled for {}: one-time token, "
                    "JWT or hash".format(direction)
                )
            if totp and (onetime or jwt_):
                # Ant Media's rule (isTokenSecuritySettingsValid): TOTP
                # counts as a token type beside one-time and JWT, not hash
                raise SettingsError(
                    "Only one token type can be enabled for {}: TOTP cannot be combined "
                    "with one-time or JWT tokens (it can with hash tokens)".format(direction)
                )
        if (self.publishJwtControlEnabled or self.playJwtControlEnabled) and not self.jwksURL \
                and len(self.jwtStreamSecretKey) < MIN_JWT_KEY_LENGTH:
            raise SettingsError(
                "jwtStreamSecretKey must be at least {} characters (or set jwksURL)".format(
                    MIN_JWT_KEY_LENGTH
                )
            )
        if (self.hashControlPublishEnabled or self.hashControlPlayEnabled) and len(
            self.tokenHashSecret
        ) < MIN_HASH_SECRET_LENGTH:
            raise SettingsError(
                "tokenHashSecret must be at least {} characters to enable hash "
                "tokens".format(MIN_HASH_SECRET_LENGTH)
            )
        if self.jwtControlEnabled and not self.jwksURL \
                and len(self.jwtSecretKey) < MIN_JWT_KEY_LENGTH:
            raise SettingsError(
                "jwtSecretKey must be at least {} characters (or set jwksURL)".format(
                    MIN_JWT_KEY_LENGTH)
            )
        if not self.ipFilterEnabled and not self.jwtControlEnabled:
            raise SettingsError(
                "ipFilterEnabled can be false only with jwtControlEnabled true (and "
                "jwtSecretKey or jwksURL): otherwise anyone could call this "
                "application's REST API")
        parse_cidrs(self.remoteAllowedCIDR)
        parse_cidrs(self.allowedPublisherCIDR, "allowedPublisherCIDR", impliedLoopback=False)

    def tokenKind(self, action: str) -> Optional[str]:
        """
        Which token the application demands for an action: C{"onetime"},
        C{"jwt"}, C{"hash"} or L{None} (no token control).
        """
        if action == "publish":
            if self.publishTokenControlEnabled:
                return "onetime"
            if self.publishJwtControlEnabled:
                return "jwt"
            if self.hashControlPublishEnabled:
                return "hash"
        else:
            if self.playTokenControlEnabled:
                return "onetime"
            if self.playJwtControlEnabled:
                return "jwt"
            if self.hashControlPlayEnabled:
                return "hash"
        return None

    def webhookURL(self, action: str) -> str:
        """
        The authorization webhook the application asks about C{action}
        (C{webhookAuthenticateURL} for publish, C{webhookPlayAuthUrl} for
        play), C{""} for none.
        """
        return self.webhookAuthenticateURL if action == "publish" else self.webhookPlayAuthUrl

    def requiresSubscriber(self, action: str) -> bool:
        """
        Whether C{action} (C{"publish"} or C{"play"}) needs a TOTP
        subscriber id and code (C{enableTimeTokenForPublish},
        C{enableTimeTokenForPlay}).
        """
        if action == "publish":
            return self.enableTimeTokenForPublish
        return action == "play" and self.enableTimeTokenForPlay

    def timeTokenSecret(self, action: str) -> str:
        """
        The secret from which the keys of subscribers not recorded through
        REST are derived for C{action} (C{""}: none, such subscribers are
        refused).
        """
        return self.timeTokenSecretForPublish if action == "publish" else (
            self.timeTokenSecretForPlay)

    def allowedNetworks(
        self,
    ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return _cached_cidrs(self.remoteAllowedCIDR)

    def publisherNetworks(
        self,
    ) -> Optional[list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
        """
        The networks publishers must come from (C{allowedPublisherCIDR},
        exactly as written: no loopback of the other family implied), or
        None when it is empty (everyone may publish).
        """
        return _cached_publisher_cidrs(self.allowedPublisherCIDR) or None


_ALIASES = {"hlsEnabled": "hlsMuxingEnabled", "dashEnabled": "dashMuxingEnabled"}


def _present(data: object) -> Iterator[tuple[str, object]]:
    """
    The settings fields present (and not null) in a settings object, the
    aliases of the media switches resolved.  Unknown fields are skipped.

    @raise JSONError: when C{data} is not an object.
    """
    obj = requireObject(data, "Settings")
    for name in SETTINGS_FIELDS:
        value = obj.get(name)
        if value is None:
            alias = next((a for a, n in _ALIASES.items() if n == name), None)
            value = obj.get(alias) if alias is not None else None
        if value is not None:
            yield name, value


def parse_cidrs(
    text: str, field: str = "remoteAllowedCIDR", impliedLoopback: bool = True,
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """
    Parse a comma-separated list of addresses and networks (IPv4 and IPv6).

    @param field: the setting's name, for the error's message.
    @param impliedLoopback: whether C{127.0.0.1} and C{::1} each imply the
        loopback address of the other family.
    @raise SettingsError: naming C{field} and what is not a network.
    """
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) > MAX_NETWORKS:
        raise SettingsError("{}: more than {} networks".format(field, MAX_NETWORKS))
    for part in parts:
        try:
            net = ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise SettingsError("{}: {!r} is not a network".format(field, part))
        networks.append(net)
        if impliedLoopback and net.num_addresses == 1 and net.network_address.is_loopback:
            other = "::1/128" if net.version == 4 else "127.0.0.1/32"
            networks.append(ipaddress.ip_network(other))
    return networks


@functools.lru_cache(maxsize=256)
def _cached_cidrs(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return parse_cidrs(text)


@functools.lru_cache(maxsize=256)
def _cached_publisher_cidrs(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return parse_cidrs(text, "allowedPublisherCIDR", impliedLoopback=False)


@functools.lru_cache(maxsize=4096)
def _address(host: str) -> Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def address_allowed(
    host: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    addr = _address(host)
    if addr is None:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks if net.version == addr.version)


class ISettingsLookup(Protocol):
    """
    The applications' settings, by name.
    """

    def get(self, name: str) -> Optional["AppSettings"]:
        """
        @return: the settings of application C{name}, or None.
        """


class Applications:
    """
    The applications of this server and their settings, persisted in
    C{apps.json} in the data directory.
    """

    _log = Logger()

    def __init__(self, path: Optional[str]) -> None:
        self._path = path
        self._apps: dict[str, AppSettings] = {}
        self._listeners: list[Callable[[str, Optional[AppSettings]], None]] = []
        #: whether the applications are known (a cluster's backend: read
        #: from Redis at least once); until then none is
        self.loaded = True
        loaded = self._load() if path else None
        if loaded is None:
            for name in DEFAULT_APPS:
                self._apps[name] = AppSettings()
            self._save()
        else:
            self._apps = loaded

    def _load(self) -> Optional[dict[str, AppSettings]]:
        assert self._path is not None
        try:
            with open(self._path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return None
        stored = raw.get("applications") if isinstance(raw, dict) else None
        if not isinstance(stored, dict):
            raise SettingsError("{}: no applications object".format(self._path))
        apps = {}
        for name, data in stored.items():
            apps[name], repairs = AppSettings.fromStored(data, name)
            for repair in repairs:
                self._log.warn("application {app}: stored {repair}", app=name, repair=repair)
        return apps

    def _save(self) -> None:
        if not self._path:
            return
        tmp = self._path + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(self._path)), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(
                {"applications": {n: s.asJSON() for n, s in self._apps.items()}},
                f,
                indent=1,
                sort_keys=True,
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)

    def onChange(self, listener: Callable[[str, Optional[AppSettings]], None]) -> None:
        """
        Call C{listener(name, settings)} after every change; settings are
        L{None} when the application was deleted.
        """
        self._listeners.append(listener)

    def _changed(self, name: str, settings: Optional[AppSettings]) -> None:
        for listener in self._listeners:
            try:
                listener(name, settings)
            except Exception:
                self._log.failure("settings listener failed")

    def __contains__(self, name: object) -> bool:
        return name in self._apps

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._apps))

    def get(self, name: str) -> Optional[AppSettings]:
        return self._apps.get(name)

    def update(self, name: str, settings: AppSettings) -> None:
        if name not in self._apps:
            raise KeyError(name)
        settings.validate()
        self._apps[name] = settings
        self._save()
        self._changed(name, settings)

    def _checkNew(self, name: str) -> None:
        """
        @raise SettingsError: C{name} cannot name a new application.
        """
        if not isValidAppName(name) or name.lower() in RESERVED_NAMES:
            raise SettingsError(
                "Application name must be 1-64 letters, digits, '-' or '_' "
                "and not one of: " + ", ".join(sorted(RESERVED_NAMES))
            )
        if name in self._apps:
            raise SettingsError("Application {} already exists".format(name))

    def create(self, name: str, settings: Optional[AppSettings] = None) -> None:
        self._checkNew(name)
        self._apps[name] = settings if settings is not None else AppSettings()
        self._save()
        self._changed(name, self._apps[name])

    def delete(self, name: str) -> None:
        del self._apps[name]
        self._save()
        self._changed(name, None)

    # the REST API's changes: a cluster's backend (tokengate.cluster.settings)
    # writes them to every node first, and may fail with SettingsUnavailable

    async def store(self, name: str, settings: AppSettings) -> None:
        """
        L{update}, as the REST API asks it.
        """
        self.update(name, settings)

    async def add(self, name: str, settings: Optional[AppSettings] = None) -> None:
        """
        L{create}, as the REST API asks it.
        """
        self.create(name, settings)

    async def remove(self, name: str) -> None:
        """
        L{delete}, as the REST API asks it.
        """
        self.delete(name)

    def replace(self, name: str, **changes: Any) -> AppSettings:
        """
        Change some settings of an application (for tests and tools).
        """
        settings = evolve(self._apps[name], **changes)
        self.update(name, settings)
        return settings
