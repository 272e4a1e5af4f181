# -*- test-case-name: tests.test_access_webhook -*-
"""
The authorization webhook (Ant Media's C{webhookAuthenticateURL} for
publish; C{webhookPlayAuthUrl} for play, which Ant Media's public source
does not implement and tokengate defines the same way).

Before a publish (or play) is admitted, tokengate POSTs a JSON object to
the operator's URL with C{Content-Type: application/json}; HTTP 200 allows,
anything else refuses.  The fields are those of Ant Media's
C{security/AcceptOnlyStreamsWithWebhook.java}:

  - C{appName}: the application;
  - C{name} and C{streamId}: the stream id (C{name} is Ant Media's
    backward-compatible duplicate);
  - C{mode}: for publish, RTMP's publish type when the client gave one
    (C{live}, C{record}, C{append}), else C{live}; for play, C{play};
  - C{token}, C{subscriberId}, C{subscriberCode}, C{metaData}: each only
    when present, as Ant Media omits null ones;
  - C{queryParams}: only when the client sent query parameters, rendered as
    Ant Media renders them (a Java C{Map.toString()}: C{{k=v, k2=v2}}, no
    escaping, in the order received).

tokengate's rules beyond Ant Media's (which waits up to 2 s to connect and
5 s per read, on a thread, follows its HTTP client's defaults and refuses
on an I/O error):

  - the reactor is never blocked; the whole exchange has one timeout
    (3 s unless configured), after which the request is cancelled and the
    connection closed;
  - only 200 allows: 3xx (redirects are not followed), 2xx other than
    200, 4xx, 5xx, a timeout, a refused connection, a body over
    L{MAX_BODY} bytes (the body is otherwise ignored), or more than
    C{maxInFlight} webhook calls at once all refuse, each with its own
    reason (a metrics label);
  - the token, the subscriber code and the URL (which may carry a key)
    are never logged.
"""

from __future__ import annotations

import enum
import json
from typing import Any, Mapping, Optional, Sequence

import attrs
from twisted.internet.defer import Deferred

from tokengate.access.outbound import Outbound, OutboundError, checkURL
from tokengate.jsonvalue import JSONValue
from tokengate.logsafe import Logger

#: the default time for one webhook exchange, seconds
DEFAULT_TIMEOUT = 3.0
#: the most response body bytes read (the body is not used)
MAX_BODY = 64 * 1024
#: webhook calls in flight at once, per webhook
MAX_IN_FLIGHT = 64

log = Logger()


def javaMapText(pairs: Sequence[tuple[str, str]]) -> str:
    """
    Query parameters as Ant Media sends them: Java's C{AbstractMap.toString()},
    C{{key=value, key2=value2}} (nothing escaped), a later duplicate key
    replacing an earlier one in its place, as a C{HashMap.put} does.
    """
    merged: dict[str, str] = {}
    for key, value in pairs:
        merged[key] = value
    return "{" + ", ".join("{}={}".format(k, v) for k, v in merged.items()) + "}"


@attrs.frozen
class WebhookRequest:
    """
    What the webhook is asked about.

    @ivar mode: C{live}, C{record}, C{append} (publish) or C{play}.
    @ivar queryParams: the client's query parameters in the order sent, or
        L{None} when it sent none.
    """

    appName: str
    streamId: str
    mode: str
    token: Optional[str] = attrs.field(default=None, repr=False)
    subscriberId: Optional[str] = None
    subscriberCode: Optional[str] = attrs.field(default=None, repr=False)
    metaData: Optional[str] = None
    queryParams: Optional[Sequence[tuple[str, str]]] = attrs.field(default=None, repr=False)

    def toJSON(self) -> dict[str, JSONValue]:
        """
        The body Ant Media posts.
        """
        body: dict[str, JSONValue] = {
            "appName": self.appName,
            "name": self.streamId,
            "streamId": self.streamId,
            "mode": self.mode,
        }
        for key, value in (("token", self.token), ("subscriberId", self.subscriberId),
                           ("subscriberCode", self.subscriberCode),
                           ("metaData", self.metaData)):
            if value is not None:
                body[key] = value
        if self.queryParams is not None:
            body["queryParams"] = javaMapText(self.queryParams)
        return body


class Verdict(enum.Enum):
    """
    The webhook's answer, as a metrics label.
    """

    ALLOWED = "allowed"
    #: the receiver answered, not 200
    DENIED = "denied"
    TIMEOUT = "timeout"
    #: refused connection, no route, DNS, TLS
    UNREACHABLE = "unreachable"
    #: the response body was over the limit
    TOO_LARGE = "too_large"
    #: too many webhook calls in flight
    BUSY = "busy"
    ERROR = "error"


@attrs.frozen
class WebhookOutcome:
    """
    @ivar status: the HTTP status when the receiver answered.
    """

    verdict: Verdict
    status: Optional[int] = None

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOWED


class AuthorizationWebhook:
    """
    One webhook URL.

    @param url: the operator's C{http} or C{https} URL.
    @param reactor: the reactor (connections and the timeout's clock).
    @param timeout: seconds for a whole exchange.
    @param what: C{"publish"} or C{"play"}, for logs.
    @param outbound: the request machinery (by default an L{Outbound} on
        C{reactor}).
    """

    def __init__(self, url: str, reactor: Any, timeout: float = DEFAULT_TIMEOUT,
                 what: str = "publish", maxInFlight: int = MAX_IN_FLIGHT,
                 outbound: Optional[Outbound] = None) -> None:
        self.url = checkURL(url, "the webhook URL")
        self.what = what
        self._outbound = outbound if outbound is not None else Outbound(
            reactor, timeout, MAX_BODY, maxInFlight)

    def authorize(self, request: WebhookRequest) -> "Deferred[WebhookOutcome]":
        """
        Ask the webhook.  Never fails: every failure is a refusing
        L{WebhookOutcome}.
        """
        return Deferred.fromCoroutine(self._authorize(request))

    async def _authorize(self, request: WebhookRequest) -> WebhookOutcome:
        body = json.dumps(request.toJSON(), separators=(",", ":")).encode("utf-8")
        try:
            status, _ = await self._outbound.request(
                "POST", self.url, body, {"Content-Type": "application/json"})
        except OutboundError as e:
            outcome = WebhookOutcome(Verdict(e.reason))
        else:
            outcome = WebhookOutcome(Verdict.ALLOWED if status == 200 else Verdict.DENIED,
                                     status)
        if not outcome.allowed:
            log.info("the {what} webhook refused {app}/{streamId}: {verdict} (HTTP {status})",
                     what=self.what, app=request.appName, streamId=request.streamId,
                     verdict=outcome.verdict.value, status=outcome.status)
        return outcome


def fromSettings(url: str, reactor: Any, timeout: float = DEFAULT_TIMEOUT, what: str = "publish"
                 ) -> Optional[AuthorizationWebhook]:
    """
    The webhook for a setting's value: L{None} for an empty setting (no
    webhook), else an L{AuthorizationWebhook}.

    @raise ValueError: for a value that is not an http(s) URL.
    """
    return AuthorizationWebhook(url, reactor, timeout, what) if url else None


def queryPairs(query: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """
    Query parameters as parsed by twisted.web (C{request.args}, decoded)
    flattened to pairs, for L{WebhookRequest.queryParams}.
    """
    return [(k, v) for k, values in query.items() for v in values]
