# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics, in a registry of our own (not the process-global one),
so that every server object and every test has independent counters.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

# The *_created series double every counter for no use here.
disable_created_metrics()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.minted = Counter(
            "tokengate_tokens_minted",
            "Tokens minted over the REST API",
            ["app", "type", "kind"],
            registry=r,
        )
        self.grants = Counter(
            "tokengate_grants",
            "Publish and play requests admitted",
            ["protocol", "action", "kind"],
            registry=r,
        )
        self.refusals = Counter(
            "tokengate_refusals",
            "Requests refused, by reason",
            ["protocol", "action", "reason"],
            registry=r,
        )
        self.policyRefusals = Counter(
            "tokengate_policy_refusals",
            "Publish and play requests refused, by security mechanism (token, subscriber,"
            " webhook, datastore, publisherAddress, switch, stream, throttle, store, request)"
            " and reason",
            ["mechanism", "reason"],
            registry=r,
        )
        self.revoked = Counter(
            "tokengate_tokens_revoked",
            "Tokens deleted by revocation",
            ["app"],
            registry=r,
        )
        self.purged = Counter(
            "tokengate_tokens_purged",
            "Expired tokens purged from the store",
            registry=r,
        )
        self.kicked = Counter(
            "tokengate_sessions_kicked",
            "Live sessions the server ended, by reason (revoked, expired, shutdown, idle, ...)",
            ["protocol", "action", "reason"],
            registry=r,
        )
        self.sessions = Gauge(
            "tokengate_sessions",
            "Live sessions admitted through the gate",
            ["protocol", "action"],
            registry=r,
        )
        self.store_errors = Counter(
            "tokengate_store_errors",
            "Token store calls that failed (store unreachable)",
            ["operation"],
            registry=r,
        )
        self.bytes = Counter(
            "tokengate_bytes",
            "Bytes received from and sent to clients",
            ["protocol", "direction"],
            registry=r,
        )
        self.dropped = Counter(
            "tokengate_connections_dropped",
            "Client connections the server closed: malformed input, a limit, a deadline, "
            "a client that does not read",
            ["protocol", "reason"],
            registry=r,
        )
        self.http_refusals = Counter(
            "tokengate_rest_refusals",
            "REST API calls refused by its protection",
            ["reason"],
            registry=r,
        )
        self.playback_floods = Counter(
            "tokengate_playback_floods",
            "HTTP playback sessions ended (410) for too many requests of segments that do not"
            " exist (past the end of an ended stream, far ahead of the live edge) or of the"
            " manifest of an ended stream",
            ["protocol"],
            registry=r,
        )
        self.offload_fills = Counter(
            "tokengate_offload_fills",
            "Segment requests that carried a valid offload link: an edge filling its cache"
            " (docs/offload.md)",
            [],
            registry=r,
        )
        self.malformed = Counter(
            "tokengate_malformed_requests",
            "Client JSON refused: the document (json) or a value in it (field)",
            ["protocol", "reason"],
            registry=r,
        )

    def gauge(self, name: str, doc: str, labels: list[str]) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def counter(self, name: str, doc: str, labels: list[str]) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def callbackGauge(self, name: str, doc: str, f: Callable[[], float]) -> Gauge:
        g = Gauge(name, doc, registry=self.registry)
        g.set_function(f)
        return g

    def render(self) -> bytes:
        return generate_latest(self.registry)
