# -*- test-case-name: tests.test_access_subscriberpolicy -*-
"""
TOTP subscribers as a security policy of the access service
(L{tokengate.access.service.IAccessPolicy}).

When an application turns on C{enableTimeTokenForPublish} (or
C{enableTimeTokenForPlay}), every publish (play) must name a subscriber and
its current code (C{subscriberId}, C{subscriberCode}, as each protocol
carries them).  L{SubscriberPolicy} asks
L{tokengate.access.subscribers.admitSubscriber}: the record of the
subscriber if REST recorded one (its own C{b32Secret} and period), else the
key Ant Media derives from C{timeTokenSecretForPublish} /
C{timeTokenSecretForPlay} and the application's C{timeTokenPeriod}; the
code checked per RFC 6238; then the store's atomic acquire (a block in
force, a code older than one already used, a subscriber already on its
live-connection limit).

The refusals, decided before any token is redeemed (so a token presented
with them is kept):

  - no subscriber id or code, a code that does not verify, an older code
    than one this subscriber already used, a C{play} subscriber asking to
    publish: L{Outcome.BAD_CODE};
  - a block in force: L{Outcome.BLOCKED};
  - the subscriber already on its live connections: L{Outcome.CODE_IN_USE};
  - the store full, down or failing: L{Outcome.UNAVAILABLE} (fail closed).

What it admits holds the subscriber's lease: the session releases it when
it ends (logout or kick), so the subscriber may connect again.

A token kind of the same direction is checked too (both must pass): the
settings allow TOTP beside hash tokens only, as Ant Media refuses TOTP
beside one-time and JWT tokens (L{tokengate.apps.AppSettings.validate}).
"""

from __future__ import annotations

from typing import Optional, Protocol

from twisted.python.failure import Failure

from tokengate.access.service import AccessRequest, Release
from tokengate.access.subscribers import (
    Refusal,
    SubscriberLease,
    SubscriberRefused,
    SubscriberStore,
    admitSubscriber,
)
from tokengate.apps import AppSettings
from tokengate.auth import Refused
from tokengate.logsafe import Logger
from tokengate.tokens import Outcome

#: the outcome of each refusal of the subscriber registry
OUTCOMES = {
    Refusal.INVALID: Outcome.BAD_CODE,
    Refusal.REPLAYED: Outcome.BAD_CODE,
    Refusal.TYPE: Outcome.BAD_CODE,
    Refusal.BLOCKED: Outcome.BLOCKED,
    Refusal.IN_USE: Outcome.CODE_IN_USE,
    Refusal.FULL: Outcome.UNAVAILABLE,
}


class Clock(Protocol):
    """
    What the policy needs of a clock: the store's time.
    """

    def seconds(self) -> float:
        """
        Unix time, seconds.
        """


class SubscriberPolicy:
    """
    The TOTP subscriber check of an application that turns it on.  See the
    module's docstring.
    """

    mechanism = "subscriber"
    _log = Logger()

    def __init__(self, store: SubscriberStore, clock: Clock,
                 instanceIP: Optional[str] = None) -> None:
        """
        @param store: the subscriber registry (records, blocks, leases).
        @param clock: the same clock as the store's.
        @param instanceIP: this node's address, for connection events.
        """
        self._store = store
        self._clock = clock
        self._instanceIP = instanceIP

    def applies(self, settings: AppSettings, action: str) -> bool:
        """
        Whether C{settings} demand a subscriber for C{action}.
        """
        return settings.requiresSubscriber(action)

    async def admit(self, request: AccessRequest, settings: AppSettings) -> Optional[Release]:
        """
        Nothing to do unless the application demands a subscriber for the
        request's action; else admit holding the subscriber's lease, or
        raise L{Refused}.
        """
        if not self.applies(settings, request.action):
            return None
        if not request.subscriberId or not request.subscriberCode:
            raise Refused(Outcome.BAD_CODE)
        try:
            lease = await admitSubscriber(
                self._store, request.app, request.streamId, request.subscriberId,
                request.subscriberCode, request.action,
                settings.timeTokenSecret(request.action), settings.timeTokenPeriod,
                self._clock.seconds(), request.protocol, self._instanceIP)
        except SubscriberRefused as e:
            raise Refused(OUTCOMES[e.refusal])
        except Exception:
            # a store that cannot answer: fail closed, the token kept
            self._log.failure("the subscriber store failed; refused {app}/{streamId}",
                              app=request.app, streamId=request.streamId)
            raise Refused(Outcome.UNAVAILABLE)
        return _releaser(lease)


def _releaser(lease: SubscriberLease) -> Release:
    """
    What the session calls when it ends: end the lease (logged if the
    store fails to).
    """

    def release() -> None:
        lease.release().addErrback(_releaseFailed)

    return release


def _releaseFailed(failure: Failure) -> None:
    SubscriberPolicy._log.failure("ending a subscriber's connection failed", failure)


__all__ = ["SubscriberPolicy", "OUTCOMES"]
