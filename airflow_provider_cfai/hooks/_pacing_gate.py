"""The gate: where a request waits for its turn under its token's rate limit.

The rule itself (when a request may go, what an answer teaches, how long a claim lives, and why no
window is ever overrun) is :mod:`._pacing_rules`. A gate only keeps a
:class:`~._pacing_rules.WindowState` in a store (:mod:`._pacing_store`), applies the rules to it
under the store's lock, and waits.

A process has one gate per token, shared by its threads and its event loop. The gate takes slots
from the state in *leases*: one per waiting request when the limit is near, up to
:data:`~._pacing_rules.LEASE_MAX` when it is far, so an unthrottled loop of calls touches the store
once per lease. Its slots are a claim that lapses ``request_timeout`` + :data:`~._pacing_rules.CLAIM_MARGIN`
seconds after its last trip to the store; while a request is in flight the gate renews it (a timer
thread), so only a gate that vanished loses its claim.

Two faces, one gate:

- sync: ``ticket = gate.acquire()`` before a request, ``gate.release(ticket, response.headers)``
  after it (``None`` when no response arrived);
- async, for an event loop such as the triggerer's: ``await gate.acquire_async()`` and
  ``await gate.release_async(ticket, headers)``. File and Redis I/O run in ``asyncio.to_thread``
  and waits are ``asyncio.sleep``: the loop is never blocked. Every deferred task in a triggerer
  shares that process, hence one gate per token: calls made from triggers (batch evaluation) are
  paced together, and with every worker process of the host through the state file.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import NamedTuple, Protocol

from airflow_provider_cfai.hooks._host import process_identity
from airflow_provider_cfai.hooks._pacing_rules import (
    CLAIM_MARGIN,
    LEASE_MAX,
    Answer,
    PacingDecision,
    WindowState,
    claim_for,
    pace,
    parse_ratelimit,
    parse_ratelimit_policy,
    reap,
    record_answer,
    renew,
    settle,
)
from airflow_provider_cfai.hooks._pacing_store import MemoryStore, StateStore

__all__ = ["DEFAULT_REQUEST_TIMEOUT", "LIVE_GATES", "AnswerInfo", "Gate", "RateLimitGate", "Ticket"]

log = logging.getLogger(__name__)

#: What a request's outcome told the caller: the response headers, or ``None`` when no response arrived.
AnswerInfo = Mapping[str, str] | None
# What :func:`_read` makes of it: (Ratelimit, Ratelimit-Policy, whether a response arrived).
_Heard = tuple[tuple[int, float] | None, tuple[int, float] | None, bool]

#: The request timeout a gate assumes when not told (the connection's default ``timeout``).
DEFAULT_REQUEST_TIMEOUT = 60.0
#: Leased slots unused for this long go back to the state, so an idle process hoards nothing.
LEASE_IDLE = 0.25
#: How often a waiting request looks again when others' answers may free a slot sooner.
POLL = 0.05
_ASYNC_POLL = 0.005  # an async waiter while a thread of this process is already talking to the store


class Ticket(NamedTuple):
    """One request's permission to go; hand it back to the gate that issued it."""

    gate: RateLimitGate
    generation: int
    epoch: int


class Gate(Protocol):
    """What the hook and the trigger use: :class:`RateLimitGate` or the Redis gate with its fallback."""

    def acquire(self, sleep: Callable[[float], None] = ...) -> Ticket: ...

    def release(self, ticket: Ticket, answer: AnswerInfo = None) -> None: ...

    async def acquire_async(self) -> Ticket: ...

    async def release_async(self, ticket: Ticket, answer: AnswerInfo = None) -> None: ...

    def allow_requests_of(self, request_timeout: float) -> None: ...

    def close(self) -> None: ...


@dataclasses.dataclass
class _Sync:
    """One trip to the store: what this gate gives back and what it asks for."""

    want: int
    answered: list[float]  # when each used slot's answer came, on this gate's clock
    unused: int
    answers: list[Answer]


@dataclasses.dataclass(frozen=True)
class _Outcome:
    decision: PacingDecision
    known: bool  # the state knows the limit, or that there is none
    policy: tuple[int, float] | None  # the state's (limit, period) when exact


_SERIALS = itertools.count(1)
#: Every gate of this process: the factory resets them in a forked child and closes them at exit.
LIVE_GATES: weakref.WeakSet[RateLimitGate] = weakref.WeakSet()


class RateLimitGate:
    """Keeps one token's requests within its limit, for every thread and coroutine of a process and
    every other process sharing ``store``.

    :param store: where the state lives (default: this process's memory).
    :param sharers: how many separate states may spend the token at once; this one takes
        ``1 / sharers`` of the limit.
    :param clock: seconds, on the same clock as ``store``'s up to an offset.
    :param poll: seconds between looks at the store while others' answers may free a slot.
    :param request_timeout: the longest one request of this gate takes to reach the server; its
        claim lives that long plus :data:`~._pacing_rules.CLAIM_MARGIN` without renewal.
    """

    def __init__(
        self,
        store: StateStore | None = None,
        *,
        sharers: int = 1,
        clock: Callable[[], float] = time.monotonic,
        poll: float = POLL,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.store: StateStore = store if store is not None else MemoryStore(clock)
        self.sharers = sharers
        self._clock = clock
        self._poll = poll
        self.request_timeout = request_timeout
        self._serial = next(_SERIALS)
        self._generation = 0
        self._reset()
        LIVE_GATES.add(self)

    def __repr__(self) -> str:
        return f"RateLimitGate({self.store.description}, sharers={self.sharers})"

    def _reset(self) -> None:
        """Start with nothing leased; also what a forked child does (its parent's leases are not its own)."""
        self._cond = threading.Condition()
        self._generation += 1
        self.holder = f"{process_identity()}|{self._serial}"
        self._free = 0  # leased, not used yet
        self._renewed_at = 0.0  # when the last trip to the store began: the claim runs from then
        self._last_take = 0.0
        self._timer: threading.Timer | None = None
        self._claim_timer: threading.Timer | None = None
        self._in_flight = 0  # used, not answered
        self._done: list[float] = []  # answer times of used slots not settled in the store yet
        self._answers: list[Answer] = []
        self._epoch = 0
        self._bulk = False  # the last lease went beyond demand: the limit is far
        self._known = False
        self._policy: tuple[int, float] | None = None
        self._dirty = False  # an answer changed the picture: settle before using another slot
        self._syncing = False
        self._waiting = 0

    # -- sync face --------------------------------------------------------------------------------

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> Ticket:
        """Wait until a request may go without overrunning any window; the ticket goes to :meth:`release`."""
        with self._cond:
            ticket = self._take()
            if ticket is not None:
                return ticket
            self._waiting += 1
            try:
                while True:
                    ticket = self._take()
                    if ticket is not None:
                        return ticket
                    if self._syncing:
                        self._cond.wait(self._poll)
                        continue
                    job = self._begin(self._waiting)
                    self._cond.release()
                    try:
                        decision = self._sync(job)
                    finally:
                        self._cond.acquire()
                    if decision.send:
                        continue
                    delay = self._delay(decision)
                    if self._in_flight or self._syncing:
                        self._cond.wait(delay)  # an answer of this process may come sooner
                        continue
                    self._cond.release()
                    try:
                        sleep(delay)
                    finally:
                        self._cond.acquire()
            finally:
                self._waiting -= 1

    def release(self, ticket: Ticket, answer: AnswerInfo = None) -> None:
        """Account for the answer of a request :meth:`acquire` let through.

        :param answer: the response's headers (``Ratelimit``, ``Ratelimit-Policy``), or ``None`` when
            no response arrived.
        """
        with self._cond:
            job = self._note(ticket, _read(answer))
        if job is not None:
            self._sync_quietly(job)

    def close(self) -> None:
        """Give back every unused slot and settle every answered one (at exit)."""
        with self._cond:
            if self._syncing or not (self._free or self._done):
                return
            job = self._begin(0)
        self._sync_quietly(job)

    # -- async face -------------------------------------------------------------------------------

    async def acquire_async(self) -> Ticket:
        """:meth:`acquire` for an event loop: store I/O in a worker thread, waits with ``asyncio.sleep``."""
        import asyncio

        with self._cond:
            self._waiting += 1
        try:
            while True:
                with self._cond:
                    ticket = self._take()
                    if ticket is not None:
                        return ticket
                    job = None if self._syncing else self._begin(self._waiting)
                if job is None:
                    await asyncio.sleep(_ASYNC_POLL)
                    continue
                # If this waiter is cancelled meanwhile, the thread still completes the trip and
                # applies it to the gate: its grant waits there for the next request.
                decision = await asyncio.to_thread(self._sync, job)
                if not decision.send:
                    await asyncio.sleep(self._delay(decision))
        finally:
            with self._cond:
                self._waiting -= 1

    async def release_async(self, ticket: Ticket, answer: AnswerInfo = None) -> None:
        """:meth:`release` for an event loop."""
        import asyncio

        with self._cond:
            job = self._note(ticket, _read(answer))
        if job is not None:
            await asyncio.to_thread(self._sync_quietly, job)

    # -- non-blocking steps (simulations drive these directly) ------------------------------------

    @property
    def claim(self) -> float:
        """Seconds this gate's claim lives without renewal."""
        return claim_for(self.request_timeout)

    def allow_requests_of(self, request_timeout: float) -> None:
        """Another user of this gate sends requests that take up to ``request_timeout`` seconds."""
        self.request_timeout = max(self.request_timeout, request_timeout)

    def renew(self) -> None:
        """One trip to the store: settle what was answered, give back unused slots, renew the claim."""
        with self._cond:
            if self._syncing:
                return
            job = self._begin(0)
        self._sync(job)

    def try_acquire(self) -> Ticket | float:
        """A ticket now, or how many seconds to wait before asking again; never sleeps."""
        with self._cond:
            ticket = self._take()
            if ticket is not None:
                return ticket
            if self._syncing:
                return self._poll
            job = self._begin(max(1, self._waiting))
        decision = self._sync(job)
        if decision.send:
            return self.try_acquire()
        return self._delay(decision)

    # -- internals (``_take``, ``_note``, ``_begin`` run under the condition's lock) ---------------

    def _take(self) -> Ticket | None:
        if not self._free or self._dirty:
            return None
        if self._clock() - self._renewed_at > CLAIM_MARGIN:
            return None  # the claim could lapse before a request on this slot is counted: renew it first
        self._free -= 1
        self._in_flight += 1
        self._last_take = self._clock()
        self._keep_claim()
        return Ticket(self, self._generation, self._epoch)

    def _note(self, ticket: Ticket, info: _Heard) -> _Sync | None:
        if ticket.gate is not self or ticket.generation != self._generation:
            return None  # issued before a fork, to the parent
        now = self._clock()
        ratelimit, policy, responded = info
        self._in_flight = max(0, self._in_flight - 1)
        self._done.append(now)
        kept = self._answers[-1] if self._answers else None
        if not (kept is not None and _adds_nothing(ticket.epoch, ratelimit, policy, now, kept)):
            self._answers.append(Answer(ticket.epoch, ratelimit, policy, responded, now))
            if len(self._answers) > 4 * LEASE_MAX:
                del self._answers[: -2 * LEASE_MAX]  # the limit and the brake need only recent answers
        if ratelimit is not None and ratelimit[0] <= 0 and ticket.epoch == self._epoch:
            self._dirty = True  # the brake closed
        elif policy is not None and policy != self._policy:
            self._dirty = True  # the server's limit is not what this lease was sized for
        elif ratelimit is not None and ratelimit[0] < self._free:
            self._dirty = True  # the server has less left than this lease holds: give it back
        if self._waiting:
            self._cond.notify_all()
        idle = not self._in_flight and not self._waiting
        if self._syncing or not (self._dirty or not self._known or (idle and not self._bulk)):
            return None  # settled with the next lease; nothing waits for it here
        return self._begin(0)

    def _begin(self, want: int) -> _Sync:
        """Take the counters to settle out of the gate; :meth:`_sync` puts them back if the trip fails."""
        job = _Sync(want, self._done, self._free, self._answers)
        self._done, self._free, self._answers = [], 0, []
        self._syncing = True
        return job

    def _sync(self, job: _Sync) -> PacingDecision:
        """One trip to the store (no lock held while it runs); its outcome is applied to the gate."""
        generation = self._generation
        started = self._clock()
        try:
            outcome = self.store.transact(self._update(job, started))
        except BaseException:
            with self._cond:
                if generation == self._generation:
                    self._done[:0] = job.answered
                    self._free += job.unused
                    self._answers[:0] = job.answers
                    self._syncing = False
                    self._cond.notify_all()
            raise
        with self._cond:
            if generation == self._generation:
                decision = outcome.decision
                self._syncing = False
                self._renewed_at = started
                self._free += decision.slots
                if decision.slots:
                    self._last_take = self._clock()
                    self._bulk = decision.slots > job.want
                    if self._bulk:
                        self._return_when_idle()
                elif job.want:
                    self._bulk = False
                self._epoch = decision.epoch
                self._known = outcome.known
                self._policy = outcome.policy
                self._dirty = False
                self._cond.notify_all()
        return outcome.decision

    def _return_when_idle(self) -> None:
        """Give a lease back once this process stops using it (a timer thread; lock held by the caller)."""
        if self._timer is not None or self._clock is not time.monotonic:
            return  # a fake clock drives its gate by hand (tests, simulations)
        self._timer = threading.Timer(LEASE_IDLE, self._on_idle_timer, args=(self._generation,))
        self._timer.daemon = True
        self._timer.start()

    def _on_idle_timer(self, generation: int) -> None:
        with self._cond:
            if generation != self._generation:
                return
            self._timer = None
            if not self._free and not self._done:
                return
            if self._syncing or self._waiting or self._clock() - self._last_take < LEASE_IDLE:
                self._return_when_idle()
                return
            job = self._begin(0)
        self._sync_quietly(job)

    def _keep_claim(self) -> None:
        """Renew the claim while a request is in flight, before it lapses (a timer thread; lock held
        by the caller): a slow request that lives keeps its slot held."""
        if self._claim_timer is not None or self._clock is not time.monotonic:
            return  # a fake clock drives its gate by hand (tests, simulations call renew())
        self._claim_timer = threading.Timer(self.claim / 3, self._on_claim_timer, args=(self._generation,))
        self._claim_timer.daemon = True
        self._claim_timer.start()

    def _on_claim_timer(self, generation: int) -> None:
        with self._cond:
            if generation != self._generation:
                return
            self._claim_timer = None
            if not self._in_flight:
                return
            if self._syncing:  # that trip renews the claim too
                self._keep_claim()
                return
            job = self._begin(0)
        self._sync_quietly(job)
        with self._cond:
            if generation == self._generation and self._in_flight:
                self._keep_claim()

    def _sync_quietly(self, job: _Sync) -> None:
        try:
            self._sync(job)
        except Exception as error:  # settled on the next trip that works
            log.debug("Could not settle rate-limit slots in %s: %s", self.store.description, error)

    def _update(self, job: _Sync, started: float) -> Callable[[WindowState, float], _Outcome]:
        holder, sharers, alive, claim = self.holder, self.sharers, self.store.alive, self.claim

        def update(state: WindowState, now: float) -> _Outcome:
            # Times measured here move to the store's clock by an offset that can only make them
            # later than they were (the store read its clock after ``started``): safe for (G).
            shift = max(0.0, now - started)
            reap(state, now, alive)
            for answer in job.answers:
                record_answer(state, dataclasses.replace(answer, answered_at=answer.answered_at + shift))
            settle(state, holder=holder, answered=[t + shift for t in job.answered], unused=job.unused)
            if job.want:
                decision = pace(state, now, holder=holder, claim=claim, want=job.want, sharers=sharers)
            else:
                decision = PacingDecision(epoch=state.epoch)
            renew(state, now, holder=holder, claim=claim)
            policy = (state.limit, state.window) if state.exact and state.limit is not None else None
            return _Outcome(decision, state.limit is not None or state.unmetered, policy)

        return update

    def _delay(self, decision: PacingDecision) -> float:
        return min(decision.wait, self._poll) if decision.for_answer else decision.wait


def _adds_nothing(
    epoch: int, ratelimit: tuple[int, float] | None, policy: tuple[int, float] | None, at: float, kept: Answer
) -> bool:
    """Whether :func:`~._pacing_rules.record_answer` would learn nothing from this answer
    after ``kept``: same epoch and policy, ``r`` no higher and above 0, a reset no earlier."""
    if ratelimit is None or kept.ratelimit is None or ratelimit[0] <= 0:
        return False
    return (
        epoch == kept.epoch
        and policy == kept.policy
        and ratelimit[0] <= kept.ratelimit[0]
        and at + ratelimit[1] >= kept.answered_at + kept.ratelimit[1]
    )


def _read(answer: AnswerInfo) -> _Heard:
    if answer is None:
        return None, None, False
    return (
        parse_ratelimit(_header(answer, "Ratelimit")),
        _policy(_header(answer, "Ratelimit-Policy")),
        True,
    )


@functools.lru_cache(maxsize=16)
def _policy(value: str | None) -> tuple[int, float] | None:
    return parse_ratelimit_policy(value)  # the same few strings, answer after answer


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and isinstance(headers, dict):  # a plain dict is case-sensitive; HTTP is not
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value
