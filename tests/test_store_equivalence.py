"""
One store-equivalence suite: the memory, SQLite and Redis token stores held
to the pure rules of L{tokengate.tokens.judge} over generated cases.

The model (L{Model}) is the rules themselves: a list of L{StoredToken} in
minting order, redemption by L{judge}, and the interface's other operations
(revoke a stream, list a stream's page, purge expired tokens, delete an
application) written out over that list.  Hypothesis generates programs
(sequences of L{Mint}, L{Redeem}, L{Revoke}, L{List}, L{Purge} and
L{DeleteApp}); each program runs against the model and against a fresh store
(a new memory store, a new SQLite file, a new key prefix in a real
redis-server started by the test), and every answer of the store must equal
the model's. The Redis classes, which start a real redis-server, are in
L{tests.interop.test_store_equivalence}; the suite (the mixins) is here.  The failure names the (shrunk) failing program as a list of
these operations, ready to paste into a regression test.  Each test also
checks that its programs exercised every rule (every refusal reason,
consumption, room reuse) and every operation that removes tokens, so that a
generator gone blind fails instead of passing.

Separately, for SQLite and Redis: two store instances on the same database
(two connections; for SQLite two threads) race two redemptions of one token
in the same reactor turn; exactly one wins.  Generated races (matching or
not, plain or room tokens) must answer as the model does for one of the two
serial orders.

Hypothesis runs in a worker thread and hands each whole program to the
reactor (and waits for it, bounded), so the stores run unmodified on the
real reactor that trial spins; every program and every test is bounded in
time.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import threading
import time
from datetime import timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Coroutine,
    Counter,
    Iterator,
    Optional,
    Sequence,
    Union,
)

from attrs import frozen
from hypothesis import example, given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tokengate.store import ITokenStore
from tokengate.store.memory import MemoryTokenStore
from tokengate.store.sqlite import SQLiteTokenStore
from tokengate.tokens import (
    PLAY,
    PUBLISH,
    Outcome,
    Probe,
    StoredToken,
    Token,
    digest,
    judge,
)

#: Every expiry date and every clock reading of the suite lies near T0, far in
#: the future of the wall clock (2096), so that Redis' own expiry of token
#: hashes (expireDate + grace, by Redis' clock) never fires during a run:
#: the model knows no wall clock.
T0 = 4_000_000_000

#: Small domains, so that generated probes often match a token and often
#: differ from it in exactly one respect.  Names differ in case and carry a
#: '.', which every store must compare exactly.
APPS = ("LiveApp", "liveapp")
STREAMS = ("s1", "S1", "s.2")
ROOMS = ("r1", "r2")
#: rooms that redemptions name: also one that no token has
PROBE_ROOMS = ROOMS + ("r3",)
TYPES = (PLAY, PUBLISH)

#: In a L{Redeem}, "the token's own" value of a field.
OWN = "="

#: Examples per store: each program runs against a fresh store.
MAX_EXAMPLES = 150
#: Operations per program.
MAX_OPS = 40
#: Seconds one program may take on the reactor before it fails.
PROGRAM_TIMEOUT = 20.0
#: Seconds that Hypothesis may spend shrinking a failing program.
SHRINK_BUDGET = 30.0


def tokenId(n: int) -> str:
    """
    The id of the C{n}th token minted in a program: deterministic, so that a
    failing program reproduces exactly.
    """
    return str(n).zfill(40)


# --- operations -----------------------------------------------------------


@frozen
class Mint:
    """
    Add the next token (id L{tokenId}C{(n)} for the C{n}th mint).
    """

    app: str
    streamId: str
    type: str
    expireDate: int
    roomId: Optional[str]


@frozen
class Redeem:
    """
    Redeem a token: with C{live}, the one with index C{token} modulo the
    number of tokens that the model still holds; else (or when it holds
    none) the one with that index among all minted so far, spent, revoked
    and purged ones included; a never minted one when C{token} is None or
    nothing was minted.  L{OWN} in a field stands for that token's own value.
    """

    token: Optional[int]
    live: bool
    app: str
    streamId: str
    type: str
    roomId: Optional[str]
    now: float


@frozen
class Revoke:
    app: str
    streamId: str


@frozen
class List:
    app: str
    streamId: str
    offset: int
    size: int


@frozen
class Purge:
    now: float


@frozen
class DeleteApp:
    app: str


Op = Union[Mint, Redeem, Revoke, List, Purge, DeleteApp]


# --- the model ------------------------------------------------------------


class Model:
    """
    The pure rules: tokens in minting order, redeemed by L{judge}.
    """

    def __init__(self) -> None:
        self.tokens: list[StoredToken] = []

    def add(self, token: StoredToken) -> None:
        # Programs never add a digest twice (minted ids are fresh): the
        # stores differ there (memory keeps the old place in minting order,
        # SQLite and Redis move the token to the end), and nothing in
        # tokengate adds a digest twice.
        self.tokens.append(token)

    def redeem(self, digest_: str, probe: Probe) -> Outcome:
        stored = next((t for t in self.tokens if t.digest == digest_), None)
        outcome, consume = judge(stored, probe)
        if consume and stored is not None:
            self.tokens.remove(stored)
        return outcome

    def _drop(self, doomed: Callable[[StoredToken], bool]) -> int:
        before = len(self.tokens)
        self.tokens = [t for t in self.tokens if not doomed(t)]
        return before - len(self.tokens)

    def revokeStream(self, app: str, streamId: str) -> int:
        return self._drop(lambda t: t.app == app and t.streamId == streamId)

    def listStream(
        self, app: str, streamId: str, offset: int, size: int
    ) -> list[StoredToken]:
        mine = [t for t in self.tokens if t.app == app and t.streamId == streamId]
        return mine[offset : offset + size]

    def purgeExpired(self, now: float) -> int:
        return self._drop(lambda t: not now < t.expireDate)

    def deleteApp(self, app: str) -> int:
        return self._drop(lambda t: t.app == app)


# --- strategies -----------------------------------------------------------


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """
    One of the strategies, each drawn with its weight (C{st.one_of} weighs
    its branches equally and drops repeated ones); shrinks towards the first.
    """
    slots = [i for i, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(slots).flatmap(lambda i: choices[i][1])


#: names: mostly the first, so that streams hold several tokens to page
#: through, revoke and purge
apps = weighted((2, st.just(APPS[0])), (1, st.sampled_from(APPS)))
streams = weighted((2, st.just(STREAMS[0])), (1, st.sampled_from(STREAMS)))
types = st.sampled_from(TYPES)
#: Any text that a client can send where a name is expected: REST's
#: validate-token passes the stream id, type and room id of its JSON body to
#: the store as they come (the JSON reader refuses lone surrogates), and a
#: revocation or listing the stream id of its URL path.
anyText = st.text(
    st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12
).filter(lambda text: text != OWN)


def requested(names: st.SearchStrategy) -> st.SearchStrategy:
    """
    Names in requests: mostly C{names} (those of minted tokens), sometimes
    anything.
    """
    return weighted((6, names), (1, anyText))


#: expiry dates: whole seconds around T0 (the mint API takes integers)
expiries = st.integers(min_value=-1, max_value=6).map(lambda k: T0 + k)
#: clock readings: half seconds around T0, so some fall exactly on expiry
#: dates, some just before and some just after
clocks = st.integers(min_value=-2, max_value=9).map(lambda k: T0 + k / 2)

mints = st.builds(
    Mint,
    app=apps,
    streamId=streams,
    type=types,
    expireDate=expiries,
    roomId=weighted((1, st.none()), (2, st.sampled_from(ROOMS))),
)


def mostlyOwn(others: st.SearchStrategy[Optional[str]]) -> st.SearchStrategy[Optional[str]]:
    """
    L{OWN} two times out of three, else one of C{others}.
    """
    return weighted((2, st.just(OWN)), (1, others))


#: most redemptions name a minted token, and most of their fields are the
#: token's own, so that grants, consumptions and single mismatches are common
redeems = st.builds(
    Redeem,
    token=weighted((6, st.integers(min_value=0, max_value=50)), (1, st.none())),
    live=weighted((3, st.just(True)), (1, st.just(False))),
    app=mostlyOwn(apps),
    streamId=weighted((1, st.just(OWN)), (1, requested(streams))),
    type=mostlyOwn(requested(types)),
    roomId=weighted(
        (1, st.just(OWN)), (1, requested(st.sampled_from((None, "") + PROBE_ROOMS)))
    ),
    now=clocks,
)
revokes = st.builds(Revoke, app=apps, streamId=requested(streams))
#: pages: mostly small offsets and sizes, sometimes the largest the REST
#: API passes (a Java int)
small = st.integers(min_value=0, max_value=5)
lists = st.builds(
    List,
    app=apps,
    streamId=requested(streams),
    offset=weighted((3, st.just(0)), (3, small), (1, st.just(2**31 - 1))),
    size=weighted((4, small), (1, st.just(2**31 - 1))),
)
purges = st.builds(Purge, now=clocks)
deletes = st.builds(DeleteApp, app=apps)

#: Any operation, weighted: mostly mints and redemptions, some listings,
#: and rarely one of those that remove many tokens at once.
operations = weighted(
    (4, mints), (6, redeems), (3, lists), (1, revokes), (1, purges), (1, deletes)
)

#: A program mints a few tokens, then does anything.
programs = st.builds(
    lambda first, rest: first + rest,
    st.lists(mints, min_size=1, max_size=6),
    st.lists(operations, min_size=8, max_size=MAX_OPS),
)


def resolve(
    op: Redeem, live: Sequence[StoredToken], minted: Sequence[StoredToken]
) -> tuple[str, Probe]:
    """
    The digest and probe of a L{Redeem}, given the tokens that the model
    holds and all those minted so far.
    """
    target: Optional[StoredToken] = None
    key = digest("never minted")
    if op.token is not None:
        among = live if op.live and live else minted
        if among:
            target = among[op.token % len(among)]
            key = target.digest

    def own(value: Optional[str], field: str, default: Optional[str]) -> Optional[str]:
        if value != OWN:
            return value
        return getattr(target, field) if target is not None else default

    probe = Probe(
        app=own(op.app, "app", APPS[0]) or APPS[0],
        streamId=own(op.streamId, "streamId", STREAMS[0]) or STREAMS[0],
        type=own(op.type, "type", PLAY) or PLAY,
        roomId=own(op.roomId, "roomId", None),
        now=op.now,
    )
    return key, probe


#: An explicit program that every run includes: a room token's rules, whose
#: refusals are rare in generated programs.
ROOM_PROGRAM = [
    Mint("LiveApp", "s1", PLAY, T0 + 5, "r1"),
    Redeem(0, True, OWN, OWN, OWN, OWN, T0),
    Redeem(0, True, OWN, "s.2", OWN, "r1", T0),
    Redeem(0, True, OWN, "s.2", OWN, "r2", T0),
    Redeem(0, True, OWN, "s.2", OWN, "", T0),
    Redeem(0, True, OWN, "s.2", OWN, None, T0),
    Redeem(0, True, OWN, "s1", OWN, "r2", T0),
    Redeem(0, True, OWN, OWN, PUBLISH, OWN, T0),
    Redeem(0, True, OWN, OWN, OWN, OWN, T0 + 5),
    Redeem(0, True, "liveapp", OWN, OWN, OWN, T0),
]

#: What the programs of one test must have exercised between them.
EXERCISED = [
    o.value
    for o in (
        Outcome.GRANTED,
        Outcome.UNKNOWN,
        Outcome.EXPIRED,
        Outcome.WRONG_STREAM,
        Outcome.WRONG_TYPE,
        Outcome.WRONG_ROOM,
    )
] + ["consumed", "kept", "revoked", "paged", "purged", "deleted"]


async def runProgram(
    assertEqual: Callable[[object, object, str], None],
    store: ITokenStore,
    program: Sequence[Op],
    seen: "Counter[str]",
) -> None:
    """
    Run C{program} against the model and C{store}; fail at the first answer
    of the store that differs from the model's.

    @param seen: counts what the program exercised (the model's outcomes,
        non-empty pages, tokens removed), so that a test can tell that its
        generated programs reach every rule.
    """
    model = Model()
    minted: list[StoredToken] = []

    def same(got: object, expected: object, where: str) -> None:
        assertEqual(got, expected, "{} of {}".format(where, store.name))

    for step, op in enumerate(program):
        where = "step {}: {!r}".format(step, op)
        if isinstance(op, Mint):
            token = StoredToken.fromToken(
                op.app,
                Token(
                    tokenId=tokenId(len(minted)),
                    streamId=op.streamId,
                    expireDate=op.expireDate,
                    type=op.type,
                    roomId=op.roomId,
                ),
            )
            minted.append(token)
            model.add(token)
            await store.add(token)
        elif isinstance(op, Redeem):
            key, probe = resolve(op, model.tokens, minted)
            held = len(model.tokens)
            outcome = model.redeem(key, probe)
            seen[outcome.value] += 1
            if outcome is Outcome.GRANTED:
                seen["consumed" if len(model.tokens) < held else "kept"] += 1
            same(await store.redeem(key, probe), outcome, where + " as " + repr(probe))
        elif isinstance(op, Revoke):
            expected = model.revokeStream(op.app, op.streamId)
            seen["revoked"] += expected > 0
            same(await store.revokeStream(op.app, op.streamId), expected, where)
        elif isinstance(op, List):
            page = model.listStream(op.app, op.streamId, op.offset, op.size)
            seen["paged"] += bool(page) and op.offset > 0
            same(
                list(await store.listStream(op.app, op.streamId, op.offset, op.size)),
                page,
                where,
            )
        elif isinstance(op, Purge):
            expected = model.purgeExpired(op.now)
            seen["purged"] += expected > 0
            same(await store.purgeExpired(op.now), expected, where)
        elif isinstance(op, DeleteApp):
            expected = model.deleteApp(op.app)
            seen["deleted"] += expected > 0
            same(await store.deleteApp(op.app), expected, where)
        else:  # pragma: no cover
            raise AssertionError("unknown operation {!r}".format(op))
    # Finally every stream's whole listing agrees, and every token ever
    # minted is redeemable for its own stream before any expiry exactly when
    # the model still holds it.
    for app, streamId in itertools.product(APPS, STREAMS):
        same(
            list(await store.listStream(app, streamId, 0, 2**31 - 1)),
            model.listStream(app, streamId, 0, 2**31 - 1),
            "final listing of {}/{}".format(app, streamId),
        )
    for token in minted:
        probe = Probe(token.app, token.streamId, token.type, None, T0 - 2)
        same(
            await store.redeem(token.digest, probe),
            model.redeem(token.digest, probe),
            "final redemption of {!r}".format(token),
        )


def inThread(testcase: TestCase, f: Callable[[], None]) -> Deferred[None]:
    """
    Call C{f} in a new daemon thread; the result fires with its outcome.

    Not the reactor's thread pool: trial joins that after each test, which
    would wait for ever on a Hypothesis run still waiting for the reactor
    after a timeout.  When the test is over (C{_stopped}, set in its
    cleanup) the programs still to run fail at once, so the thread ends.
    """
    d: Deferred[None] = Deferred()

    def deliver(outcome: object) -> None:
        if d.called:  # the test timed out meanwhile
            return
        if isinstance(outcome, Failure):
            d.errback(outcome)
        else:
            d.callback(None)

    def run() -> None:
        try:
            f()
        except BaseException:
            outcome: object = Failure()
        else:
            outcome = None
        reactor.callFromThread(deliver, outcome)

    testcase.addCleanup(setattr, testcase, "_stopped", True)
    threading.Thread(target=run, name="hypothesis", daemon=True).start()
    return d


if TYPE_CHECKING:
    _Mixin = TestCase
else:
    _Mixin = object


class HypothesisOnReactorMixin(_Mixin):
    """
    Run Hypothesis examples whose work is a coroutine on the reactor.
    """

    # the state of one run of Hypothesis
    _examples: Iterator[int]
    _failing: set[tuple[object, ...]]
    _failedAt: Optional[float]
    _stopped: bool

    def startHypothesis(self) -> None:
        self._examples = itertools.count()
        self._failing = set()
        self._failedAt = None
        self._stopped = False

    def runExample(
        self,
        example: Sequence[object],
        work: Callable[[int], Coroutine[Any, Any, None]],
    ) -> None:
        """
        From the Hypothesis thread: run C{work(n)} (for the C{n}th example)
        on the reactor and wait for it, at most L{PROGRAM_TIMEOUT} seconds.

        Once an example has failed, Hypothesis shrinks it, running many
        smaller ones; after L{SHRINK_BUDGET} seconds of that, new examples
        are no longer run (Hypothesis takes them as not failing), so that
        the test reports the smallest failing example found by then instead
        of running into its timeout.  Examples that failed are always run
        again, so what is reported has really failed.
        """
        if self._stopped:
            raise AssertionError("the test is over")
        key = tuple(example)
        if (
            self._failedAt is not None
            and key not in self._failing
            and time.monotonic() - self._failedAt > SHRINK_BUDGET
        ):
            return
        n = next(self._examples)
        answers: queue.Queue[object] = queue.Queue(1)

        def start() -> None:
            d = Deferred.fromCoroutine(work(n))
            d.addTimeout(PROGRAM_TIMEOUT, reactor).addBoth(answers.put)

        reactor.callFromThread(start)
        try:
            # not blockingCallFromThread: that waits for ever once the
            # reactor has stopped
            answer = answers.get(timeout=PROGRAM_TIMEOUT + 10)
        except queue.Empty:
            answer = Failure(AssertionError("the reactor did not run the example"))
        if isinstance(answer, Failure):
            self._failing.add(key)
            if self._failedAt is None:
                self._failedAt = time.monotonic()
            if answer.check(self.failureException):
                # trial does not show Hypothesis' note of the falsifying
                # example: name it, ready to paste into a test
                raise self.failureException(
                    "{}\nprogram = [\n{}]".format(
                        answer.getErrorMessage(),
                        "".join("    {!r},\n".format(op) for op in example),
                    )
                )
            answer.raiseException()


class EquivalenceMixin(HypothesisOnReactorMixin):
    """
    Generated programs against the model and one kind of store.
    """

    #: a whole test: MAX_EXAMPLES programs, each bounded by PROGRAM_TIMEOUT
    timeout = 120

    def makeStore(self, n: int) -> ITokenStore:
        """
        A fresh, empty store for the C{n}th program.
        """
        raise NotImplementedError()

    def discardStore(self, n: int) -> None:
        """
        Remove what the C{n}th program's store left behind, once closed.
        """

    async def _oneProgram(
        self, n: int, program: Sequence[Op], seen: "Counter[str]"
    ) -> None:
        store = self.makeStore(n)
        try:
            await runProgram(self.assertEqual, store, program, seen)
        finally:
            await store.close()
            self.discardStore(n)

    def test_sameAnswersAsTheRules(self):
        """
        Every answer of the store to a generated program equals the model's,
        and the programs exercised every rule and every operation.
        """
        self.startHypothesis()
        seen: Counter[str] = collections.Counter()

        @settings(max_examples=MAX_EXAMPLES, deadline=timedelta(seconds=10))
        @example(ROOM_PROGRAM)
        @given(programs)
        def sameAnswers(program):
            self.runExample(program, lambda n: self._oneProgram(n, program, seen))

        def covered(_):
            missing = [what for what in EXERCISED if not seen[what]]
            self.assertEqual(
                missing, [], "never exercised (the generator needs tuning)"
            )

        return inThread(self, sameAnswers).addCallback(covered)


class MemoryEquivalenceTests(EquivalenceMixin, TestCase):
    def makeStore(self, n):
        return MemoryTokenStore()


class SQLiteEquivalenceTests(EquivalenceMixin, TestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def path(self, n):
        return os.path.join(self.directory, "tokens{}.sqlite3".format(n))

    def makeStore(self, n):
        return SQLiteTokenStore(self.path(n), reactor)

    def discardStore(self, n):
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path(n) + suffix):
                os.remove(self.path(n) + suffix)


# --- exactly once under concurrency ---------------------------------------



def mostlyTheToken(others: st.SearchStrategy) -> st.SearchStrategy:
    """
    L{OWN} four times out of five, else one of C{others}.
    """
    return weighted((4, st.just(OWN)), (1, others))


#: In a race, redemptions mostly of the token and mostly valid, so that
#: both often want to consume it; a plain token most of the time.
raceRedeems = st.builds(
    Redeem,
    token=weighted((6, st.just(0)), (1, st.none())),
    live=st.just(True),
    app=mostlyTheToken(apps),
    streamId=mostlyTheToken(streams),
    type=mostlyTheToken(types),
    roomId=mostlyTheToken(st.sampled_from((None,) + PROBE_ROOMS)),
    now=clocks,
)
raceMints = st.builds(
    Mint,
    app=apps,
    streamId=streams,
    type=types,
    expireDate=expiries,
    roomId=weighted((3, st.none()), (1, st.sampled_from(ROOMS))),
)
#: a race: a token, and two redemptions of it (or of another) at once
races = st.tuples(raceMints, raceRedeems, raceRedeems)

#: Generated races per store.
MAX_RACES = 40


class RaceMixin(HypothesisOnReactorMixin):
    """
    Two store instances on one database (two connections) redeem in the
    same reactor turn.
    """

    timeout = 60
    ROUNDS = 100

    def makeStores(self, n: int) -> tuple[ITokenStore, ITokenStore]:
        """
        Two instances of the store on the C{n}th fresh, empty database.
        """
        raise NotImplementedError()

    def discardStores(self, n: int) -> None:
        """
        Remove what the C{n}th database left behind, once its stores are
        closed.
        """

    def openStores(self) -> tuple[ITokenStore, ITokenStore]:
        a, b = self.makeStores(0)
        self.addCleanup(b.close)
        self.addCleanup(a.close)
        return a, b

    async def test_twoConcurrentRedeemsOneWinner(self):
        """
        For each of L{ROUNDS} tokens, two concurrent valid redemptions
        through the two stores: exactly one is granted, the other is told
        UNKNOWN, and the token is spent for both stores afterwards.  Each
        store issues first in half the rounds.
        """
        a, b = self.openStores()
        wins = {a: 0, b: 0}
        for n in range(self.ROUNDS):
            token = StoredToken.fromToken(
                "LiveApp", Token(tokenId(n), "s1", T0 + 60, PLAY)
            )
            await a.add(token)
            probe = Probe("LiveApp", "s1", PLAY, None, T0)
            first, second = (a, b) if n % 2 else (b, a)
            results = await gatherResults(
                [first.redeem(token.digest, probe), second.redeem(token.digest, probe)]
            )
            self.assertEqual(
                sorted(r.value for r in results),
                sorted([Outcome.GRANTED.value, Outcome.UNKNOWN.value]),
                "round {}".format(n),
            )
            wins[first if results[0] is Outcome.GRANTED else second] += 1
            for store in (a, b):
                self.assertEqual(
                    await store.redeem(token.digest, probe), Outcome.UNKNOWN
                )
        self.assertEqual(sum(wins.values()), self.ROUNDS)

    async def test_roomTokenBothWin(self):
        """
        A room token is not consumed: both concurrent redemptions are
        granted, and it stays usable.
        """
        a, b = self.openStores()
        token = StoredToken.fromToken(
            "LiveApp", Token(tokenId(0), "s1", T0 + 60, PLAY, "r1")
        )
        await a.add(token)
        here = Probe("LiveApp", "s1", PLAY, None, T0)
        there = Probe("LiveApp", "s.2", PLAY, "r1", T0)
        results = await gatherResults(
            [a.redeem(token.digest, here), b.redeem(token.digest, there)]
        )
        self.assertEqual(results, [Outcome.GRANTED, Outcome.GRANTED])
        self.assertEqual(await b.redeem(token.digest, here), Outcome.GRANTED)

    async def _oneRace(
        self, n: int, mint: Mint, one: Redeem, other: Redeem, seen: "Counter[str]"
    ) -> None:
        a, b = self.makeStores(n)
        try:
            token = StoredToken.fromToken(
                mint.app,
                Token(tokenId(0), mint.streamId, mint.expireDate, mint.type, mint.roomId),
            )
            await a.add(token)
            requests = [resolve(one, [token], [token]), resolve(other, [token], [token])]
            got = await gatherResults(
                [a.redeem(*requests[0]), b.redeem(*requests[1])]
            )
            own = Probe(token.app, token.streamId, token.type, None, T0 - 2)
            after = await b.redeem(token.digest, own)
            serial = []
            for order in ((0, 1), (1, 0)):
                model = Model()
                model.add(token)
                answers: list[Optional[Outcome]] = [None, None]
                for i in order:
                    answers[i] = model.redeem(*requests[i])
                serial.append((answers, model.redeem(token.digest, own)))
            if serial[0] != serial[1]:
                seen["contended"] += 1
            self.assertIn(
                (got, after),
                serial,
                "the answers {} and then {} match no serial order".format(got, after),
            )
        finally:
            await a.close()
            await b.close()
            self.discardStores(n)

    def test_racesAreSerial(self):
        """
        Two redemptions at once (generated: the same token or not, matching
        or not) through the two stores answer as the model does when they
        run one after the other, in one order or the other, and leave the
        token as that order does.
        """
        self.startHypothesis()
        seen: Counter[str] = collections.Counter()

        @settings(max_examples=MAX_RACES, deadline=timedelta(seconds=10))
        @given(races)
        def serial(race):
            self.runExample(race, lambda n: self._oneRace(n, *race, seen))

        def contended(_):
            self.assertTrue(seen["contended"], "no race where the order mattered")

        return inThread(self, serial).addCallback(contended)


class SQLiteRaceTests(RaceMixin, TestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def path(self, n):
        return os.path.join(self.directory, "tokens{}.sqlite3".format(n))

    def makeStores(self, n):
        return (
            SQLiteTokenStore(self.path(n), reactor),
            SQLiteTokenStore(self.path(n), reactor),
        )

    def discardStores(self, n):
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path(n) + suffix):
                os.remove(self.path(n) + suffix)
