# -*- test-case-name: tests.test_store -*-
"""
An in-memory token store: a dict keyed by digest.  Atomic because the reactor
thread runs each call to completion.
"""

from __future__ import annotations

from typing import Sequence

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from tokengate.tokens import Outcome, Probe, StoredToken, judge
from tokengate.store import ITokenStore


@implementer(ITokenStore)
class MemoryTokenStore:
    name = "memory"

    def __init__(self) -> None:
        # dicts keep insertion order: that is minting order
        self._tokens: dict[str, StoredToken] = {}

    def add(self, token: StoredToken) -> Deferred[None]:
        self._tokens[token.digest] = token
        return succeed(None)

    def redeem(self, digest: str, probe: Probe) -> Deferred[Outcome]:
        outcome, consume = judge(self._tokens.get(digest), probe)
        if consume:
            del self._tokens[digest]
        return succeed(outcome)

    def _matching(self, app: str, streamId: str) -> list[StoredToken]:
        return [
            t
            for t in self._tokens.values()
            if t.app == app and t.streamId == streamId
        ]

    def revokeStream(self, app: str, streamId: str) -> Deferred[int]:
        doomed = self._matching(app, streamId)
        for t in doomed:
            del self._tokens[t.digest]
        return succeed(len(doomed))

    def listStream(
        self, app: str, streamId: str, offset: int, size: int
    ) -> Deferred[Sequence[StoredToken]]:
        return succeed(self._matching(app, streamId)[offset : offset + size])

    def purgeExpired(self, now: float) -> Deferred[int]:
        doomed = [d for d, t in self._tokens.items() if not now < t.expireDate]
        for d in doomed:
            del self._tokens[d]
        return succeed(len(doomed))

    def deleteApp(self, app: str) -> Deferred[int]:
        doomed = [d for d, t in self._tokens.items() if t.app == app]
        for d in doomed:
            del self._tokens[d]
        return succeed(len(doomed))

    def close(self) -> Deferred[None]:
        return succeed(None)
