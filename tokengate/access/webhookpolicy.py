# -*- test-case-name: tests.test_access_webhookpolicy -*-
"""
The authorization webhooks as a security policy of the access service
(L{tokengate.access.service.IAccessPolicy}): an application whose
C{webhookAuthenticateURL} (publish) or C{webhookPlayAuthUrl} (play) is set
asks that URL about every publish or play, on every protocol, before the
token is redeemed (the access service runs the policies first, this one
last), so that a refusal keeps the token.

HTTP 200 admits.  Any other answer (another status, a body over the limit)
refuses with L{Outcome.WEBHOOK_REFUSED}; no usable answer (a timeout, a
refused connection, too many calls in flight) refuses with
L{Outcome.WEBHOOK_UNAVAILABLE}: the policy fails closed.  The exchange runs
on the reactor (L{tokengate.access.outbound.Outbound}: one timeout for the
whole exchange, a body limit, a global bound on calls in flight), and this
policy bounds the calls in flight per application too, so that one
application's slow webhook cannot take every slot.  A request with a
deadline (an SRT caller's connect timeout) is answered by it: the webhook
is given only the time left.

The body is Ant Media's (L{tokengate.access.webhook.WebhookRequest}):
C{mode} is C{live} for every publish (tokengate does not carry RTMP's
publish type to the access service) and C{play} for every play.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime

from tokengate.access.outbound import Outbound
from tokengate.access.service import AccessRequest, Release
from tokengate.access.webhook import (
    MAX_BODY,
    MAX_IN_FLIGHT,
    AuthorizationWebhook,
    Verdict,
    WebhookOutcome,
    WebhookRequest,
)
from tokengate.apps import AppSettings
from tokengate.auth import Refused
from tokengate.tokens import PUBLISH, Outcome

#: webhook calls in flight at once, per application
MAX_IN_FLIGHT_PER_APP = 32

#: verdicts of a receiver that answered, and refused
_ANSWERED = frozenset({Verdict.DENIED, Verdict.TOO_LARGE})


def newOutbound(reactor: IReactorTime, timeout: float) -> Outbound:
    """
    The outgoing HTTP client of the webhooks: C{timeout} seconds per
    exchange, L{MAX_BODY} bytes of answer read, L{MAX_IN_FLIGHT} calls at
    once across every application.
    """
    return Outbound(reactor, timeout, MAX_BODY, MAX_IN_FLIGHT)


class WebhookPolicy:
    """
    The authorization webhooks of every application.

    @param outbound: the bounded HTTP client (its timeout and in-flight
        bound are the webhooks').
    @param clock: the clock of requests' deadlines.
    @param maxInFlightPerApp: calls in flight at once for one application;
        one more is refused L{Outcome.WEBHOOK_UNAVAILABLE} at once.
    """

    mechanism = "webhook"

    def __init__(self, outbound: Outbound, clock: IReactorTime,
                 maxInFlightPerApp: int = MAX_IN_FLIGHT_PER_APP) -> None:
        self._outbound = outbound
        self._clock = clock
        self._maxPerApp = maxInFlightPerApp
        #: calls in flight per application (only applications with some)
        self._inFlight: dict[str, int] = {}

    def inFlight(self, app: str) -> int:
        """
        How many webhook calls of C{app} are in flight.
        """
        return self._inFlight.get(app, 0)

    def applies(self, settings: AppSettings, action: str) -> bool:
        """
        Whether the application has a webhook for C{action} (it then asks
        about every request, token or not).
        """
        return bool(settings.webhookURL(action))

    async def admit(self, request: AccessRequest, settings: AppSettings) -> Optional[Release]:
        """
        Ask the application's webhook for C{request}'s action, if it has
        one.

        @raise Refused: L{Outcome.WEBHOOK_REFUSED} or
            L{Outcome.WEBHOOK_UNAVAILABLE}.
        """
        url = settings.webhookURL(request.action)
        if not url:
            return None
        outcome = await self._ask(url, request)
        if outcome.allowed:
            return None
        if outcome.verdict in _ANSWERED:
            raise Refused(Outcome.WEBHOOK_REFUSED)
        raise Refused(Outcome.WEBHOOK_UNAVAILABLE)

    async def _ask(self, url: str, request: AccessRequest) -> WebhookOutcome:
        timeLeft: Optional[float] = None
        if request.deadline is not None:
            timeLeft = request.deadline - self._clock.seconds()
            if timeLeft <= 0:
                return WebhookOutcome(Verdict.TIMEOUT)
        if self._inFlight.get(request.app, 0) >= self._maxPerApp:
            return WebhookOutcome(Verdict.BUSY)
        try:
            webhook = AuthorizationWebhook(url, self._clock, what=request.action,
                                           outbound=self._outbound)
        except ValueError:
            # settings are checked when set; one stored by hand is refused
            return WebhookOutcome(Verdict.ERROR)
        body = WebhookRequest(
            appName=request.app,
            streamId=request.streamId,
            mode="live" if request.action == PUBLISH else "play",
            token=request.token or None,
            subscriberId=request.subscriberId or None,
            subscriberCode=request.subscriberCode or None,
            queryParams=list(request.params) if request.params else None,
        )
        self._inFlight[request.app] = self._inFlight.get(request.app, 0) + 1
        try:
            d: Deferred[WebhookOutcome] = webhook.authorize(body)
            if timeLeft is not None and timeLeft < self._outbound.timeout:
                d.addTimeout(timeLeft, self._clock)
            try:
                return await d
            except (DeferredTimeoutError, CancelledError):
                return WebhookOutcome(Verdict.TIMEOUT)
        finally:
            left = self._inFlight[request.app] - 1
            if left:
                self._inFlight[request.app] = left
            else:
                del self._inFlight[request.app]


__all__ = ["MAX_IN_FLIGHT_PER_APP", "WebhookPolicy", "newOutbound"]
