# -*- test-case-name: tests.test_webrtc_ice,tests.interop.test_webrtc_ice -*-
"""
STUN and TURN for WebRTC.

L{IceServers} is what browsers are told in the signalling's
C{iceServerConfig} reply: STUN/TURN URIs, TURN credentials (static, or
time-limited ones derived from a secret shared with coturn's
C{use-auth-secret}, the "TURN REST API" scheme) and the ICE transport policy
(C{relay}: TURN only).  L{server_ice_servers} turns C{--server-stun} into the
ICE servers of the server's own aiortc peer connections.

Pure: no I/O, no reactor; the time is passed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Iterable, Optional, Union

from attrs import field, frozen

#: The URI schemes of RFC 7064 (STUN) and RFC 7065 (TURN).
SCHEMES = ("stun", "stuns", "turn", "turns")
TRANSPORT_POLICIES = ("all", "relay")
#: Lifetime of time-limited TURN credentials, seconds.  coturn checks the
#: expiry on every allocate and refresh, so it must outlive a viewing session.
DEFAULT_TTL = 86400
MIN_TTL = 60
#: The part of a time-limited username after the expiry.  Not secret.
USERNAME_LABEL = "tokengate"

_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
_URI = re.compile(
    r"^(?P<scheme>stuns?|turns?):(?P<host>" + _HOST + r")(?::(?P<port>[0-9]{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?$"
)


class IceConfigError(ValueError):
    """
    An invalid STUN/TURN setting; the message names the option.
    """


def parse_uris(value: Union[None, str, Iterable[str]], what: str = "--ice-servers",
               schemes: Iterable[str] = SCHEMES) -> list[str]:
    """
    STUN/TURN URIs from a comma-separated string or a list of strings (each
    of which may itself be comma-separated).  Every URI must be
    C{scheme:host[:port][?transport=udp|tcp]} with one of C{schemes}; a STUN
    URI takes no transport (RFC 7064; browsers refuse one).
    """
    if value is None:
        return []
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise IceConfigError("{} must be a string or a list of strings".format(what))
    allowed = tuple(schemes)
    uris = []
    for item in items:
        for uri in item.split(","):
            uri = uri.strip()
            if not uri:
                continue
            m = _URI.match(uri)
            if m is None:
                raise IceConfigError(
                    "{}: {!r} is not a {} URI (scheme:host[:port][?transport=udp|tcp])".format(
                        what, uri, "/".join(s + ":" for s in allowed)))
            if m.group("scheme") not in allowed:
                raise IceConfigError("{}: {!r}: only {} URIs are accepted here".format(
                    what, uri, ", ".join(s + ":" for s in allowed)))
            port = m.group("port")
            if port is not None and not 1 <= int(port) <= 65535:
                raise IceConfigError("{}: {!r}: bad port".format(what, uri))
            if m.group("scheme").startswith("stun") and m.group("transport"):
                raise IceConfigError(
                    "{}: {!r}: a STUN URI takes no ?transport= (RFC 7064)".format(what, uri))
            uris.append(uri)
    return uris


def is_turn(uri: str) -> bool:
    return uri.startswith(("turn:", "turns:"))


def turn_rest_credentials(secret: str, now: float, ttl: int = DEFAULT_TTL,
                          label: str = USERNAME_LABEL) -> tuple[str, str]:
    """
    Time-limited TURN credentials for coturn's C{use-auth-secret}: the
    username is C{"<unix expiry>:<label>"}, the credential
    base64(HMAC-SHA1(secret, username)).
    """
    username = "{}:{}".format(int(now) + int(ttl), label)
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def _checkTtl(ttl: object) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl != int(ttl):
        raise IceConfigError("--turn-credential-ttl must be a whole number of seconds")
    if int(ttl) < MIN_TTL:
        raise IceConfigError("--turn-credential-ttl must be at least {} seconds".format(MIN_TTL))
    return int(ttl)



def _uriTuple(uris: Iterable[str]) -> tuple[str, ...]:
    """
    The URIs as a tuple (the attrs converter of L{IceServers.uris}).
    """
    return tuple(uris)

@frozen
class IceServers:
    """
    The STUN/TURN configuration handed to browsers.

    With C{turnSecret}, every call of L{credentials} (so every reply) makes
    fresh credentials valid for C{credentialTtl} seconds; otherwise the
    static C{turnUsername}/C{turnCredential} are handed out.  Secrets and
    credentials stay out of C{repr}.
    """

    uris: tuple[str, ...] = field(default=(), converter=_uriTuple)
    turnUsername: str = ""
    turnCredential: str = field(default="", repr=False)
    turnSecret: str = field(default="", repr=False)
    credentialTtl: int = DEFAULT_TTL
    transportPolicy: str = "all"

    def __attrs_post_init__(self) -> None:
        parse_uris(list(self.uris))
        _checkTtl(self.credentialTtl)
        if self.transportPolicy not in TRANSPORT_POLICIES:
            raise IceConfigError("--ice-transport-policy must be all or relay")
        static = bool(self.turnUsername or self.turnCredential)
        if static and self.turnSecret:
            raise IceConfigError(
                "give either --turn-secret or --turn-username/--turn-credential, not both")
        if static and not (self.turnUsername and self.turnCredential):
            raise IceConfigError("--turn-username and --turn-credential go together")
        if self.turnUris and not (static or self.turnSecret):
            raise IceConfigError(
                "a turn:/turns: URI in --ice-servers needs --turn-secret or "
                "--turn-username and --turn-credential")
        if (static or self.turnSecret) and not self.turnUris:
            raise IceConfigError("TURN credentials need a turn:/turns: URI in --ice-servers")
        if self.transportPolicy == "relay" and not self.turnUris:
            raise IceConfigError("--ice-transport-policy relay needs a turn:/turns: URI "
                                 "in --ice-servers")

    @classmethod
    def fromConfig(cls, config: object) -> "IceServers":
        """
        From a L{tokengate.server.ServerConfig} (missing fields: defaults).
        """
        return cls(
            uris=tuple(getattr(config, "iceServers", None) or ()),
            turnUsername=getattr(config, "turnUsername", "") or "",
            turnCredential=getattr(config, "turnCredential", "") or "",
            turnSecret=getattr(config, "turnSecret", "") or "",
            credentialTtl=getattr(config, "turnCredentialTtl", DEFAULT_TTL),
            transportPolicy=getattr(config, "iceTransportPolicy", "all") or "all",
        )

    @property
    def stunUris(self) -> list[str]:
        return [u for u in self.uris if not is_turn(u)]

    @property
    def turnUris(self) -> list[str]:
        return [u for u in self.uris if is_turn(u)]

    @property
    def credentialKind(self) -> str:
        """
        C{"time-limited"}, C{"static"} or C{"none"} (for logs).
        """
        if self.turnSecret:
            return "time-limited"
        return "static" if self.turnUsername else "none"

    def credentials(self, now: float) -> tuple[str, str]:
        """
        The TURN username and credential to hand out at C{now}; C{("", "")}
        without TURN.
        """
        if self.turnSecret:
            return turn_rest_credentials(self.turnSecret, now, self.credentialTtl)
        return self.turnUsername, self.turnCredential

    def iceServers(self, now: float,
                   credentials: Optional[tuple[str, str]] = None
                   ) -> list[dict[str, Union[str, list[str]]]]:
        """
        An RTCIceServer list: one entry with the STUN URIs, one with the
        TURN URIs and their credentials.
        """
        servers: list[dict[str, Union[str, list[str]]]] = []
        if self.stunUris:
            servers.append({"urls": self.stunUris})
        if self.turnUris:
            username, credential = credentials or self.credentials(now)
            servers.append({"urls": self.turnUris, "username": username,
                            "credential": credential})
        return servers

    def reply(self, now: float) -> dict[str, object]:
        """
        The C{iceServerConfig} message.  Ant Media Server's JavaScript SDK
        reads C{stunServerUri} (a C{turn:} URI is used with
        C{turnServerUsername}/C{turnServerCredential} and Google's STUN, a
        C{stun:} URI alone) and ignores the rest; C{iceServers} and
        C{iceTransportPolicy} are for tokengate's own pages and other
        clients that want the full list.
        """
        username, credential = self.credentials(now)
        turn = [u for u in self.uris if u.startswith("turn:")]
        stun = [u for u in self.uris if u.startswith("stun:")]
        first = turn[0] if turn else (stun[0] if stun else "")
        return {
            "command": "iceServerConfig",
            "stunServerUri": first,
            "turnServerUsername": username,
            "turnServerCredential": credential,
            "iceServers": self.iceServers(now, (username, credential)),
            "iceTransportPolicy": self.transportPolicy,
        }

    def describe(self) -> str:
        """
        A log line's worth, without secrets.
        """
        if not self.uris:
            return "none (browsers gather host candidates only)"
        text = ", ".join(self.uris)
        if self.turnUris:
            text += "; TURN credentials: " + self.credentialKind
            if self.turnSecret:
                text += " ({} s)".format(self.credentialTtl)
        return text + "; transport policy: " + self.transportPolicy


def server_ice_servers(value: Union[None, str, Iterable[str]]) -> list[dict[str, str]]:
    """
    C{--server-stun} as C{ServerConfig.serverIceServers}: one entry per
    C{stun:} URI (aiortc uses the first).
    """
    return [{"urls": u} for u in parse_uris(value, "--server-stun", schemes=("stun",))]
