"""
Hostile TOTP subscribers, in memory: whatever a client puts in
C{subscriberId} and C{subscriberCode}, the subscriber policy answers with a
refusal (never an exception), and refused attempts leave nothing behind in
the subscriber store (no state, no connection events), however many
subscriber ids a client invents.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.access.service import AccessRequest, AccessService, Refused
from tokengate.access.subscriberpolicy import SubscriberPolicy
from tokengate.access.subscribers import MemorySubscriberStore
from tokengate.access.totp import derivedKey, verifyCode
from tokengate.apps import Applications
from tokengate.auth import Throttle, build_gate
from tokengate.media.hub import Hub
from tokengate.metrics import Metrics
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import PUBLISH, Outcome

from .helpers import clock_at


class HostileSubscriberTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = clock_at()
        apps = Applications(None)
        apps.replace("LiveApp", enableTimeTokenForPublish=True,
                     timeTokenSecretForPublish="publish secret")
        self.subscribers = MemorySubscriberStore(self.clock)
        metrics = Metrics()
        # no throttle waits: every attempt reaches the policy
        gate = build_gate(apps, MemoryTokenStore(), self.clock, metrics,
                          throttle=Throttle(self.clock, threshold=10**9))
        self.access = AccessService(apps, gate, Hub(self.clock),
                                    policies=[SubscriberPolicy(self.subscribers, self.clock)])

    def attempt(self, subscriberId: object, code: object, peer: str = "192.0.2.1") -> Outcome:
        request = AccessRequest("LiveApp", "s1", PUBLISH, "rtmp", peer,
                                subscriberId=subscriberId,  # type: ignore[arg-type]
                                subscriberCode=code)  # type: ignore[arg-type]
        return self.failureResultOf(self.access.publish(request, None), Refused).value.outcome

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.none(), st.text(max_size=300)), st.one_of(st.none(), st.text(max_size=80)))
    def test_anyTextRefused(self, subscriberId: object, code: object) -> None:
        """
        Any subscriber id and code text (without the secret) is refused
        with a reason, and nothing is kept.
        """
        outcome = self.attempt(subscriberId, code)
        self.assertIn(outcome, (Outcome.BAD_CODE, Outcome.INVALID))
        self.assertEqual(self.subscribers._state, {})
        self.assertEqual(self.subscribers._events, {})

    def test_inventedSubscribersLeaveNothing(self) -> None:
        """
        Thousands of invented subscriber ids, each with a six-digit code,
        from as many addresses: all refused, the store keeps nothing.
        """
        now = self.clock.seconds()
        for i in range(5000):
            subscriberId = "sub{:06d}".format(i)
            key = derivedKey("publish secret", subscriberId, "s1", PUBLISH)
            code = i
            while verifyCode(key, "{:06d}".format(code), now) is not None:
                code += 1  # a wrong code for sure (by chance 3 in a million match)
            outcome = self.attempt(subscriberId, "{:06d}".format(code),
                                   peer="10.{}.{}.{}".format(i >> 16, (i >> 8) & 255, i & 255))
            self.assertEqual(outcome, Outcome.BAD_CODE)
        self.assertEqual(self.subscribers._state, {})
        self.assertEqual(self.subscribers._events, {})
