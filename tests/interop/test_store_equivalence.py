"""
The store-equivalence suite of L{tests.test_store_equivalence} held to the
Redis token store, on a real redis-server started by the test: every
generated program answers as the model does, and two store instances on one
database race redemptions of one token with exactly one winner.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tokengate.store.redis import RedisTokenStore

from tests.redisserver import start_redis
from tests.test_store_equivalence import EquivalenceMixin, RaceMixin


class RedisEquivalenceTests(EquivalenceMixin, TestCase):
    def setUp(self):
        self.host, self.port = start_redis(self)

    def makeStore(self, n):
        # A fresh key prefix per program is an empty store.  Batches of 3
        # make revoke, purge and deleteApp take several scripts each.
        return RedisTokenStore.open(
            self.host, self.port, reactor, prefix="eq{}:".format(n), batch=3
        )


class RedisRaceTests(RaceMixin, TestCase):
    def setUp(self):
        self.host, self.port = start_redis(self)

    def makeStores(self, n):
        prefix = "race{}:".format(n)
        return (
            RedisTokenStore.open(self.host, self.port, reactor, prefix=prefix),
            RedisTokenStore.open(self.host, self.port, reactor, prefix=prefix),
        )
