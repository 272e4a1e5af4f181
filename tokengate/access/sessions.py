# -*- test-case-name: tests.test_access_sessions -*-
"""
The one session registry: every live session the gate admitted, on every
protocol, and the one way the server ends one.

A session is a L{Grant}: what the gate's realm (L{GateRealm}) returns when a
login succeeds.  Connection-bound sessions (RTMP, SRT, WebRTC) keep their
grant for the life of their connection; credential-bound sessions (HTTP
playback: HLS, DASH, MP4) keep theirs while their session credential is in
use (L{tokengate.web.playback.HTTPSessions} indexes them by credential).
Both kinds live in one L{SessionRegistry}, by stream.

A session ends in one of two ways, and each happens once:

 - B{the server ends it}: L{Grant.kick}C{(reason)} (or, for many,
   L{SessionRegistry.kick}C{(grants, reason)}).  This is the only way the
   server ends a session, whatever the cause: revocation (C{"revoked"}),
   application deletion (C{"revoked"}), shutdown (C{"shutdown"}), a JWT
   expiring with kick-on-expiry (C{"expired"}), an HTTP session left idle
   (C{"idle"}), pushed out by newer ones (C{"evicted"}) or flooding the
   server with futile requests (C{"flood"}).  The kick is counted
   (C{tokengate_sessions_kicked_total}), removes the grant from the
   registry, then calls its mind's C{kick(reason)} once: the protocol ends
   the session its own way (RTMP closes its connection, HTTP playback
   revokes the session's credential).
 - B{the client ended it}: the protocol calls L{Grant.logout} when its
   connection is gone.  Nothing is told to the mind.

Both are idempotent and either one ends the grant: a kicked grant's later
logout, or a logged-out grant's later kick, does nothing.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Optional

from attrs import define, field, frozen
from twisted.cred.portal import IRealm
from twisted.internet.interfaces import IReactorTime
from zope.interface import Attribute, Interface, implementer

from tokengate.logsafe import Logger
from tokengate.metrics import Metrics
from tokengate.tokens import PLAY, PUBLISH


class IKickable(Interface):
    """
    A protocol session that the server may end (the login I{mind}).
    """

    def kick(reason: str) -> None:
        """
        End the session now, the protocol's own way; C{reason} is one of
        C{"revoked"}, C{"expired"}, C{"shutdown"}, C{"idle"}, C{"evicted"},
        C{"flood"}.  Called at most once, by L{Grant.kick}.
        """


class IGrant(Interface):
    app = Attribute("application")
    streamId = Attribute("stream id")
    action = Attribute("publish or play")
    protocol = Attribute("the protocol that asked")
    kind = Attribute("'none', 'onetime' or 'jwt': what admitted it")

    def logout() -> None:
        """
        The session ended; call once from the protocol's connectionLost.
        """


class IPublishGrant(IGrant):
    """
    Permission to publish a stream.
    """


class IPlayGrant(IGrant):
    """
    Permission to play a stream.
    """


#: the grant interface of each action
GRANT_INTERFACES = {PUBLISH: IPublishGrant, PLAY: IPlayGrant}


@frozen
class Admission:
    """
    What a checker admitted; serialised as the cred avatar id that
    L{GateRealm} turns into a L{Grant}.
    """

    app: str
    streamId: str
    action: str
    kind: str
    digest: Optional[str] = None
    expires: Optional[float] = None
    subscriberId: Optional[str] = None

    def toAvatarId(self) -> bytes:
        return json.dumps(
            [self.app, self.streamId, self.action, self.kind, self.digest, self.expires,
             self.subscriberId]
        ).encode("utf-8")

    @classmethod
    def fromAvatarId(cls, avatarId: bytes) -> "Admission":
        app, streamId, action, kind, dig, expires, subscriberId = json.loads(avatarId)
        return cls(app, streamId, action, kind, dig, expires, subscriberId)


@implementer(IPublishGrant, IPlayGrant)
@define(eq=False)
class Grant:
    """
    A live session admitted by the gate, held in a L{SessionRegistry}.

    @ivar mind: the protocol's session (an L{IKickable}), told when the
        server ends it.
    @ivar started: when the gate admitted it (the registry's clock).
    @ivar subscriberId: the TOTP subscriber the request named, or None.
    """

    app: str
    streamId: str
    action: str
    protocol: str
    peer: str
    kind: str
    digest: Optional[str]
    expires: Optional[float]
    mind: Optional[Any]
    _registry: "SessionRegistry" = field(repr=False)
    ended: bool = False
    started: float = 0.0
    subscriberId: Optional[str] = None
    _holds: list[Callable[[], None]] = field(factory=list, repr=False)

    def hold(self, release: Callable[[], None]) -> None:
        """
        Keep something the admission took (a subscriber's connection lease)
        until the session ends: C{release} is called once then (at once when
        the session has already ended).
        """
        if self.ended:
            _release(release)
        else:
            self._holds.append(release)

    def logout(self) -> None:
        """
        The client's side ended the session (its connection is gone).
        Idempotent; the mind is not told.  What the session held is released.
        """
        if not self.ended:
            self.ended = True
            self._registry._remove(self)
            holds, self._holds = self._holds, []
            for release in holds:
                _release(release)

    def kick(self, reason: str) -> None:
        """
        The server ends this session: the one way it does (see the module's
        docstring).  Counted, removed from the registry, then the mind's
        C{kick(reason)} is called, once.  Nothing when already ended.
        """
        if self.ended:
            return
        self._registry._kicked(self, reason)
        mind = self.mind
        self.logout()
        if mind is not None:
            try:
                mind.kick(reason)
            except Exception:
                self._registry._log.failure("kicking a {protocol} session failed",
                                            protocol=self.protocol)


def _release(release: Callable[[], None]) -> None:
    try:
        release()
    except Exception:
        SessionRegistry._log.failure("releasing what a session held failed")


class SessionRegistry:
    """
    Every live grant, by stream: so revocation, application deletion,
    shutdown and expiry can end them, and viewers can be counted.
    """

    _log = Logger()

    def __init__(self, metrics: Metrics, clock: IReactorTime, kickOnExpiry: bool = False) -> None:
        """
        @param kickOnExpiry: kick JWT-admitted sessions (C{"expired"}) when
            their token expires.
        """
        self._metrics = metrics
        self._clock = clock
        self._kickOnExpiry = kickOnExpiry
        self._byStream: dict[tuple[str, str], set[Grant]] = {}
        self._timers: dict[Grant, Any] = {}

    def seconds(self) -> float:
        """
        The registry's clock: what a grant's C{started} is measured in.
        """
        return self._clock.seconds()

    def add(self, grant: Grant) -> None:
        self._byStream.setdefault((grant.app, grant.streamId), set()).add(grant)
        self._metrics.sessions.labels(grant.protocol, grant.action).inc()
        if self._kickOnExpiry and grant.expires is not None:
            delay = max(0.0, grant.expires - self._clock.seconds())
            self._timers[grant] = self._clock.callLater(delay, grant.kick, "expired")

    def _kicked(self, grant: Grant, reason: str) -> None:
        self._metrics.kicked.labels(grant.protocol, grant.action, reason).inc()

    def _remove(self, grant: Grant) -> None:
        key = (grant.app, grant.streamId)
        grants = self._byStream.get(key)
        if grants is not None and grant in grants:
            grants.discard(grant)
            if not grants:
                del self._byStream[key]
            self._metrics.sessions.labels(grant.protocol, grant.action).dec()
        timer = self._timers.pop(grant, None)
        if timer is not None and timer.active():
            timer.cancel()

    def grants(self, app: str, streamId: Optional[str] = None) -> list[Grant]:
        """
        The live grants of a stream, or of every stream of C{app}.
        """
        if streamId is not None:
            return list(self._byStream.get((app, streamId), ()))
        return [g for (a, _), gs in self._byStream.items() if a == app for g in gs]

    def kick(self, grants: Iterable[Grant], reason: str) -> int:
        """
        End C{grants} (L{Grant.kick}); the number that were still live
        when asked (kicking one may end another first: a publisher's end
        ends its stream's players, which then log out).
        """
        live = [grant for grant in grants if not grant.ended]
        for grant in live:
            grant.kick(reason)
        return len(live)

    def kickSubscriber(self, app: str, streamId: str, subscriberId: str,
                       action: Optional[str] = None, reason: str = "blocked") -> int:
        """
        End the live sessions of a stream that a TOTP subscriber opened (for
        C{action} only, when given); how many.
        """
        return self.kick([g for g in self.grants(app, streamId)
                          if g.subscriberId == subscriberId
                          and (action is None or g.action == action)], reason)

    def kickTokenSessions(self, app: str, streamId: str, reason: str = "revoked") -> int:
        """
        End the sessions of a stream that a token admitted.
        """
        return self.kick(
            (g for g in self.grants(app, streamId) if g.kind != "none"), reason
        )

    def kickAll(self, reason: str = "shutdown") -> int:
        """
        End every session.
        """
        return self.kick(
            [g for gs in self._byStream.values() for g in gs], reason
        )


@implementer(IRealm)
class GateRealm:
    """
    Turns what a checker admitted into a L{Grant} held by the registry; the
    login's mind becomes the grant's mind (its C{protocolName} and
    C{peerHost}, when it has them, name the protocol and the peer).
    """

    def __init__(self, registry: SessionRegistry) -> None:
        self._registry = registry

    def requestAvatar(
        self, avatarId: "bytes | tuple[()]", mind: Any, *interfaces: Any
    ) -> tuple[Any, Grant, Callable[[], None]]:
        if not isinstance(avatarId, bytes):
            # anonymous: the gate's checkers always name what they admitted
            raise NotImplementedError("an anonymous login has no grant")
        admission = Admission.fromAvatarId(avatarId)
        wanted = GRANT_INTERFACES[admission.action]
        if wanted not in interfaces:
            raise NotImplementedError(
                "a {} admission cannot give {}".format(admission.action, interfaces)
            )
        grant = Grant(
            app=admission.app,
            streamId=admission.streamId,
            action=admission.action,
            protocol=getattr(mind, "protocolName", "unknown"),
            peer=getattr(mind, "peerHost", ""),
            kind=admission.kind,
            digest=admission.digest,
            expires=admission.expires,
            mind=mind,
            registry=self._registry,
            started=self._registry.seconds(),
            subscriberId=admission.subscriberId,
        )
        self._registry.add(grant)
        return wanted, grant, grant.logout


__all__ = ["IKickable", "IGrant", "IPublishGrant", "IPlayGrant", "GRANT_INTERFACES",
           "Admission", "Grant", "SessionRegistry", "GateRealm"]
