# -*- test-case-name: tests.test_apps -*-
"""
Applications and their settings.

Each application (``LiveApp`` and ``WebRTCAppEE`` exist by default) has its
own settings, named as the reference server names them.  They persist as one
JSON file in the data directory, rewritten atomically on every change.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
from typing import Any, Callable, Iterator, Optional

from attrs import asdict, define, evolve, fields

from tokengate.access.names import isValidAppName
from tokengate.logsafe import Logger

DEFAULT_APPS = ("LiveApp", "WebRTCAppEE")

#: First path segments that name something other than an application.
RESERVED_NAMES = frozenset({"rest", "metrics", "time", "static", "favicon.ico"})


MIN_JWT_KEY_LENGTH = 32


class SettingsError(ValueError):
    """
    Settings that cannot be applied; the message is shown to the caller.
    """


@define
class AppSettings:
    """
    An application's settings.  Field names are the reference server's JSON
    names; unknown fields in a POST are ignored, missing ones take these
    defaults ("null fields will be set to default values").
    """

    # one-time tokens
    publishTokenControlEnabled: bool = False
    playTokenControlEnabled: bool = False
    # JWT stream tokens (HS256 over jwtStreamSecretKey)
    publishJwtControlEnabled: bool = False
    playJwtControlEnabled: bool = False
    jwtStreamSecretKey: str = ""
    # TOTP subscriber codes: not implemented; refused when enabled
    enableTimeTokenForPublish: bool = False
    enableTimeTokenForPlay: bool = False
    # protection of this application's REST API
    remoteAllowedCIDR: str = "127.0.0.1"
    jwtControlEnabled: bool = False
    jwtSecretKey: str = ""
    # media
    hlsMuxingEnabled: bool = True
    dashMuxingEnabled: bool = False
    mp4MuxingEnabled: bool = False
    webRTCEnabled: bool = True
    rtmpPlaybackEnabled: bool = True
    hlsTime: str = "2"
    hlsListSize: str = "5"

    def asJSON(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def fromJSON(cls, data: object) -> "AppSettings":
        """
        Build settings from a POSTed object and validate them.

        @raise SettingsError: when a field has the wrong type or the
            combination is invalid.
        """
        if not isinstance(data, dict):
            raise SettingsError("Settings must be a JSON object")
        data = dict(data)
        # Accept the short names of the media switches too.
        for alias, name in _ALIASES.items():
            if alias in data and name not in data:
                data[name] = data[alias]
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data or data[f.name] is None:
                continue
            value = data[f.name]
            if f.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise SettingsError("{} must be true or false".format(f.name))
            elif f.name in ("hlsTime", "hlsListSize"):
                if isinstance(value, bool) or not isinstance(value, (int, str)):
                    raise SettingsError("{} must be a number".format(f.name))
                value = str(value)
                if not value.isdigit() or int(value) < 1:
                    raise SettingsError("{} must be a positive number".format(f.name))
            elif not isinstance(value, str):
                raise SettingsError("{} must be a string".format(f.name))
            values[f.name] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for direction, onetime, jwt_, totp in (
            (
                "publish",
                self.publishTokenControlEnabled,
                self.publishJwtControlEnabled,
                self.enableTimeTokenForPublish,
            ),
            (
                "play",
                self.playTokenControlEnabled,
                self.playJwtControlEnabled,
                self.enableTimeTokenForPlay,
            ),
        ):
            if onetime + jwt_ + totp > 1:
                raise SettingsError(
                    "Only one token type can be enabled for {}: one-time token, "
                    "JWT or TOTP".format(direction)
                )
            if totp:
                raise SettingsError(
                    "Time-based (TOTP) tokens are not supported by tokengate; "
                    "use one-time tokens or JWT"
                )
        if (self.publishJwtControlEnabled or self.playJwtControlEnabled) and len(
            self.jwtStreamSecretKey
        ) < MIN_JWT_KEY_LENGTH:
            raise SettingsError(
                "jwtStreamSecretKey must be at least {} characters".format(
                    MIN_JWT_KEY_LENGTH
                )
            )
        if self.jwtControlEnabled and len(self.jwtSecretKey) < MIN_JWT_KEY_LENGTH:
            raise SettingsError(
                "jwtSecretKey must be at least {} characters".format(MIN_JWT_KEY_LENGTH)
            )
        parse_cidrs(self.remoteAllowedCIDR)

    def tokenKind(self, action: str) -> Optional[str]:
        """
        Which token the application demands for an action: ``"onetime"``,
        ``"jwt"`` or L{None} (no token control).
        """
        if action == "publish":
            if self.publishTokenControlEnabled:
                return "onetime"
            if self.publishJwtControlEnabled:
                return "jwt"
        else:
            if self.playTokenControlEnabled:
                return "onetime"
            if self.playJwtControlEnabled:
                return "jwt"
        return None

    def allowedNetworks(
        self,
    ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return _cached_cidrs(self.remoteAllowedCIDR)


_ALIASES = {"hlsEnabled": "hlsMuxingEnabled", "dashEnabled": "dashMuxingEnabled"}


def parse_cidrs(
    text: str,
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """
    Parse a comma-separated list of addresses and networks.  The loopback
    address of the other family is implied by ``127.0.0.1`` and ``::1``.
    """
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            net = ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise SettingsError("remoteAllowedCIDR: {!r} is not a network".format(part))
        networks.append(net)
        if net.num_addresses == 1 and net.network_address.is_loopback:
            other = "::1/128" if net.version == 4 else "127.0.0.1/32"
            networks.append(ipaddress.ip_network(other))
    return networks


@functools.lru_cache(maxsize=256)
def _cached_cidrs(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return parse_cidrs(text)


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


class Applications:
    """
    The applications of this server and their settings, persisted in
    ``apps.json`` in the data directory.
    """

    _log = Logger()

    def __init__(self, path: Optional[str]) -> None:
        self._path = path
        self._apps: dict[str, AppSettings] = {}
        self._listeners: list[Callable[[str, Optional[AppSettings]], None]] = []
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
        apps = {}
        for name, data in raw.get("applications", {}).items():
            apps[name] = AppSettings.fromJSON(data)
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

    def create(self, name: str, settings: Optional[AppSettings] = None) -> None:
        if not isValidAppName(name) or name.lower() in RESERVED_NAMES:
            raise SettingsError(
                "Application name must be 1-64 letters, digits, '-' or '_' "
                "and not one of: " + ", ".join(sorted(RESERVED_NAMES))
            )
        if name in self._apps:
            raise SettingsError("Application {} already exists".format(name))
        self._apps[name] = settings if settings is not None else AppSettings()
        self._save()
        self._changed(name, self._apps[name])

    def delete(self, name: str) -> None:
        del self._apps[name]
        self._save()
        self._changed(name, None)

    def replace(self, name: str, **changes: Any) -> AppSettings:
        """
        Change some settings of an application (for tests and tools).
        """
        settings = evolve(self._apps[name], **changes)
        self.update(name, settings)
        return settings
