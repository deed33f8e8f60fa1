"""Rate-limit headers and the pacing gates, on a fake clock (no sleeping, no HTTP).

The rule is ``hooks/_pacing_rules.py``; tests/hooks/test_pacing_simulation.py checks its claim over
random interleavings, these check each behaviour on its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from airflow_provider_cfai.exceptions import CloudflareConfigError
from airflow_provider_cfai.hooks._pacing_gate import RateLimitGate, Ticket
from airflow_provider_cfai.hooks._pacing_rules import (
    CLAIM_MARGIN,
    LEASE_MAX,
    WindowState,
    parse_ratelimit,
    parse_ratelimit_policy,
)
from airflow_provider_cfai.hooks._pacing_store import MemoryStore
from airflow_provider_cfai.policy import parse_retry_after


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param('"default";r=5;t=30', (5, 30.0), id="cloudflare"),
        pytest.param("default;r=0;t=1", (0, 1.0), id="unquoted"),
        pytest.param('"default"; r=12; t=2.5', (12, 2.5), id="spaces-fraction"),
        pytest.param("", None, id="empty"),
        pytest.param('"default";t=30', None, id="no-remaining"),
        pytest.param("garbage", None, id="garbage"),
    ],
)
def test_parse_ratelimit(header: str, expected: tuple[int, float] | None) -> None:
    assert parse_ratelimit(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param('"default";q=1200;w=300', (1200, 300.0), id="cloudflare"),
        pytest.param('"default"; q=10; w=2.5', (10, 2.5), id="spaces-fraction"),
        pytest.param('"default";q=10;w=2, "burst";q=1;w=1', (10, 2.0), id="first-of-several"),
        pytest.param('"default";q=0;w=300', None, id="zero-limit"),
        pytest.param('"default";q=10', None, id="no-window"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_parse_ratelimit_policy(header: str | None, expected: tuple[int, float] | None) -> None:
    assert parse_ratelimit_policy(header) == expected


def test_parse_retry_after_seconds_date_and_garbage() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=lambda: 1445412480.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412490.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def headers(remaining: int, reset: float, limit: int | None = None, window: float | None = None) -> dict[str, str]:
    out = {"Ratelimit": f'"default";r={remaining};t={reset:g}'}
    if limit is not None:
        out["Ratelimit-Policy"] = f'"default";q={limit};w={window:g}'
    return out


def gate_on(clock: FakeClock, store: MemoryStore | None = None, **kwargs: Any) -> RateLimitGate:
    return RateLimitGate(store or MemoryStore(clock), clock=clock, **kwargs)


def test_first_request_goes_alone_until_an_answer_says_what_the_limit_is() -> None:
    clock = FakeClock()
    gate = gate_on(clock)

    first = gate.try_acquire()
    blocked = gate.try_acquire()
    assert isinstance(first, Ticket)
    assert not isinstance(blocked, Ticket)  # a blind burst could overrun an unknown limit

    gate.release(first, headers(9, 2, limit=10, window=2))

    assert isinstance(gate.try_acquire(), Ticket)


def test_a_lost_answer_lets_the_next_blind_request_go() -> None:
    clock = FakeClock()
    gate = gate_on(clock)
    first = gate.try_acquire()
    assert isinstance(first, Ticket)

    gate.release(first, None)  # no response at all: still nothing known

    assert isinstance(gate.try_acquire(), Ticket)
    assert not isinstance(gate.try_acquire(), Ticket)


def test_the_quota_counts_each_request_until_a_window_after_its_answer() -> None:
    clock = FakeClock()
    gate = gate_on(clock)
    for remaining in (7, 6, 5):  # r says more is left (others' budget): the limit says 3 per 10 s
        ticket = gate.acquire(clock.sleep)
        clock.now += 1.0  # each answer takes a second: 101, 102, 103
        gate.release(ticket, headers(remaining, 10, limit=3, window=10))
    assert clock.slept == []

    gate.acquire(clock.sleep)

    assert clock.now == pytest.approx(111.0)  # the first answer (101) plus the window


def test_an_answer_saying_nothing_is_left_closes_the_gate_until_the_announced_reset() -> None:
    clock = FakeClock()
    gate = gate_on(clock)
    ticket = gate.acquire(clock.sleep)
    gate.release(ticket, headers(0, 5, limit=100, window=60))  # someone else spent the window

    gate.acquire(clock.sleep)

    assert clock.slept == [pytest.approx(5.0)]


def test_the_earliest_reset_estimate_wins() -> None:
    clock = FakeClock()
    gate = gate_on(clock)
    first = gate.acquire(clock.sleep)
    gate.release(first, headers(2, 2, limit=100, window=60))  # reset at 102
    a, b = gate.acquire(clock.sleep), gate.acquire(clock.sleep)
    clock.now += 0.9
    gate.release(a, headers(1, 2, limit=100, window=60))  # 102.9: later, ignored
    gate.release(b, headers(0, 1, limit=100, window=60))  # 101.9: t rounded up, still the tightest

    gate.acquire(clock.sleep)

    assert clock.now == pytest.approx(101.9)


def test_answers_to_requests_granted_before_the_reset_do_not_close_the_new_window() -> None:
    clock = FakeClock()
    gate = gate_on(clock)
    first = gate.acquire(clock.sleep)
    gate.release(first, headers(5, 1, limit=10, window=1))  # reset at 101
    late = gate.acquire(clock.sleep)
    clock.now += 1.5  # the window reset while `late` was in flight
    fresh = gate.acquire(clock.sleep)

    gate.release(late, headers(0, 1, limit=10, window=1))  # the old window's last answer
    gate.release(fresh, headers(9, 1, limit=10, window=1))

    gate.acquire(clock.sleep)
    assert clock.slept == []


def test_sharers_split_the_limit_between_hosts() -> None:
    clock = FakeClock()
    hosts = [gate_on(clock, sharers=2), gate_on(clock, sharers=2)]  # one store each: two hosts
    sent = dict.fromkeys(range(2), 0)
    for i, gate in enumerate(hosts):
        while isinstance(ticket := gate.try_acquire(), Ticket):
            gate.release(ticket, headers(9, 10, limit=10, window=10))
            sent[i] += 1

    assert sent == {0: 5, 1: 5}


def test_more_sharers_than_the_limit_is_a_configuration_error() -> None:
    clock = FakeClock()
    gate = gate_on(clock, sharers=3)
    gate.release(gate.acquire(clock.sleep), headers(1, 10, limit=2, window=10))

    with pytest.raises(CloudflareConfigError, match="'rate_limit_sharers' is 3, more than the token's limit of 2"):
        gate.acquire(clock.sleep)


def test_a_dead_holders_slots_count_until_a_window_after_its_claim_would_have_lapsed() -> None:
    clock = FakeClock()
    dead: set[str] = set()
    store = MemoryStore(clock, alive=lambda holder: holder not in dead)
    crashed, survivor = gate_on(clock, store, request_timeout=3), gate_on(clock, store)
    survivor.release(survivor.acquire(clock.sleep), headers(1, 10, limit=2, window=10))  # answered at 100
    crashed.acquire(clock.sleep)  # its claim lapses at 100 + 3 + CLAIM_MARGIN = 105
    clock.now = 104.0
    dead.add(crashed.holder)  # its death is seen at 104, its request may still be counted until 105

    survivor.acquire(clock.sleep)  # the quota of 2 frees when the first answer is 10 s old

    assert clock.now == pytest.approx(110.0)
    assert crashed.holder not in store.state.held
    assert store.state.spent == [[105.0, 1]]  # the dead holder's slot, as of its claim's lapse


def test_a_holder_on_another_host_is_reaped_when_its_claim_lapses() -> None:
    clock = FakeClock()
    store = MemoryStore(clock, alive=lambda holder: None)  # liveness cannot be checked: another host
    silent, other = gate_on(clock, store, request_timeout=10), gate_on(clock, store)
    other.release(other.acquire(clock.sleep), headers(5, 10, limit=10, window=10))
    silent.acquire(clock.sleep)  # at 100; never heard of again
    assert store.state.held[silent.holder] == [1, 100.0 + 10 + CLAIM_MARGIN]

    clock.now = 100.0 + 10 + CLAIM_MARGIN - 0.01
    other.release(other.acquire(clock.sleep), headers(5, 10, limit=10, window=10))
    assert silent.holder in store.state.held
    clock.now += 0.01
    other.release(other.acquire(clock.sleep), headers(5, 10, limit=10, window=10))
    assert silent.holder not in store.state.held
    assert store.state.spent[-1] == [clock.now, 2]  # other's answer, and the silent slot: counted for a window


def test_a_holder_of_this_host_that_still_runs_keeps_its_claim_past_the_lapse() -> None:
    clock = FakeClock()
    store = MemoryStore(clock, alive=lambda holder: True)  # its pid says it runs (a stuck process)
    stuck, other = gate_on(clock, store, request_timeout=1), gate_on(clock, store)
    other.release(other.acquire(clock.sleep), headers(5, 10, limit=10, window=10))
    stuck.acquire(clock.sleep)

    clock.now += 60
    other.release(other.acquire(clock.sleep), headers(5, 10, limit=10, window=10))

    assert store.state.held[stuck.holder][0] == 1  # held, so counted: its request may still be on its way


def test_a_living_slow_request_keeps_its_claim_by_renewing_it() -> None:
    clock = FakeClock()
    store = MemoryStore(clock, alive=lambda holder: None)
    slow, other = gate_on(clock, store, request_timeout=10), gate_on(clock, store)
    other.release(other.acquire(clock.sleep), headers(5, 10, limit=10, window=10))
    slow.acquire(clock.sleep)  # a long upload: claim until 112
    for _ in range(5):
        clock.now += 8
        slow.renew()  # what its timer does while the request is in flight

    other.release(other.acquire(clock.sleep), headers(5, 10, limit=10, window=10))  # at 140

    assert store.state.held[slow.holder] == [1, 140.0 + 10 + CLAIM_MARGIN]


def test_the_first_request_of_a_vanished_holder_stalls_the_others_only_until_its_claim_lapses() -> None:
    clock = FakeClock()
    store = MemoryStore(clock, alive=lambda holder: None)
    vanished, waiting, third = (gate_on(clock, store, request_timeout=10) for _ in range(3))
    vanished.acquire(clock.sleep)  # blind: the limit is unknown, and this pod is killed mid-request

    ticket = waiting.acquire(clock.sleep)

    assert 100.0 + 10 + CLAIM_MARGIN <= clock.now <= 100.0 + 10 + CLAIM_MARGIN + 0.1
    assert not isinstance(third.try_acquire(), Ticket)  # the next one goes alone, blind again
    waiting.release(ticket, headers(9, 2, limit=10, window=2))
    assert isinstance(third.try_acquire(), Ticket)


def test_a_leased_slot_is_used_only_within_the_margin_of_the_claims_last_renewal() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    trips = 0
    transact = store.transact

    def counting(update: Any) -> Any:
        nonlocal trips
        trips += 1
        return transact(update)

    store.transact = counting  # type: ignore[method-assign]
    gate = gate_on(clock, store)
    gate.release(gate.acquire(clock.sleep), headers(10**6, 60, limit=10**6 + 1, window=60))
    gate.acquire(clock.sleep)  # a lease of LEASE_MAX slots
    before = trips
    clock.now += CLAIM_MARGIN
    assert isinstance(gate.try_acquire(), Ticket)
    assert trips == before  # within the margin: from the lease

    clock.now += 0.01
    assert isinstance(gate.try_acquire(), Ticket)

    assert trips == before + 1  # past it: the claim is renewed before the slot is used
    assert store.state.held[gate.holder][1] == clock.now + gate.claim


def test_a_server_without_ratelimit_headers_is_not_paced() -> None:
    clock = FakeClock()
    gate = gate_on(clock)
    gate.release(gate.acquire(clock.sleep), {"Content-Type": "application/json"})

    tickets = [gate.try_acquire() for _ in range(3 * LEASE_MAX)]

    assert all(isinstance(t, Ticket) for t in tickets)


@pytest.mark.parametrize(("limit", "lease"), [(1_000_000, LEASE_MAX), (40, 1)], ids=["far", "near"])
def test_leases_take_many_slots_only_while_the_limit_is_far(limit: int, lease: int) -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    gate = gate_on(clock, store)
    gate.release(gate.acquire(clock.sleep), headers(limit - 1, 60, limit=limit, window=60))

    gate.acquire(clock.sleep)

    assert store.state.held[gate.holder][0] == lease


def test_a_lease_is_given_back_when_an_answer_shows_a_lower_limit() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    gate = gate_on(clock, store)
    store.state.limit, store.state.period, store.state.exact = 10**6, 60.0, True  # learned earlier
    first = gate.acquire(clock.sleep)
    assert store.state.held[gate.holder][0] == LEASE_MAX

    gate.release(first, headers(4, 2, limit=5, window=2))  # the server's limit is 5 per 2 s now
    sent = 1
    while isinstance(ticket := gate.try_acquire(), Ticket):
        gate.release(ticket, headers(3, 2, limit=5, window=2))
        sent += 1

    assert sent == 5


def test_a_gate_gives_back_unused_slots_when_it_closes() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    gate = gate_on(clock, store)
    gate.release(gate.acquire(clock.sleep), headers(10**6, 60, limit=10**6 + 1, window=60))
    gate.release(gate.acquire(clock.sleep), headers(10**6 - 1, 60, limit=10**6 + 1, window=60))
    assert store.state.held[gate.holder][0] == LEASE_MAX  # one used, unsettled; the rest unused

    gate.close()

    assert gate.holder not in store.state.held
    assert sum(n for _, n in store.state.spent) == 2


def test_an_idle_process_gives_its_lease_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_cfai.hooks import _pacing_gate

    monkeypatch.setattr(_pacing_gate, "LEASE_IDLE", 0.05)
    store = MemoryStore()
    gate = RateLimitGate(store)
    gate.release(gate.acquire(), headers(10**6, 60, limit=10**6 + 1, window=60))
    gate.release(gate.acquire(), headers(10**6 - 1, 60, limit=10**6 + 1, window=60))
    assert store.state.held[gate.holder][0] == LEASE_MAX  # a lease, mostly unused

    deadline = time.monotonic() + 10
    while gate.holder in store.state.held and time.monotonic() < deadline:
        time.sleep(0.01)  # the gate's timer thread returns it; nothing else touches the gate

    assert gate.holder not in store.state.held
    assert sum(n for _, n in store.state.spent) == 2


def test_plain_dict_headers_are_read_whatever_their_case() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    gate = gate_on(clock, store)
    gate.release(gate.acquire(clock.sleep), {"ratelimit": '"default";r=4;t=9', "RATELIMIT-POLICY": '"x";q=5;w=9'})

    assert (store.state.limit, store.state.period) == (5, 9.0)


def test_window_state_survives_json() -> None:
    import json

    state = WindowState(limit=10, exact=True, period=2.0, held={"h|1|2|3": [2, 5.0]}, spent=[[1.5, 3]], epoch=4)

    assert WindowState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    with pytest.raises(ValueError, match="not a window state"):
        WindowState.from_dict({"held": {"h": "x"}})


def test_async_acquire_waits_without_blocking_the_event_loop() -> None:
    gate = RateLimitGate(MemoryStore())
    loop_threads: set[threading.Thread] = set()
    store_threads: set[threading.Thread] = set()
    transact = gate.store.transact

    def recording(update: Any) -> Any:
        store_threads.add(threading.current_thread())
        return transact(update)

    gate.store.transact = recording  # type: ignore[method-assign]

    async def main() -> tuple[int, float]:
        loop_threads.add(threading.current_thread())
        ticket = await gate.acquire_async()
        await gate.release_async(ticket, headers(0, 1, limit=1, window=0.2))  # nothing left for 0.2 s
        ticks = 0
        started = time.monotonic()
        waiter = asyncio.ensure_future(gate.acquire_async())
        while not waiter.done():
            ticks += 1
            await asyncio.sleep(0.01)
        await gate.release_async(waiter.result(), headers(0, 1, limit=1, window=0.2))
        return ticks, time.monotonic() - started

    ticks, waited = asyncio.run(main())

    assert waited >= 0.15  # it did wait for the window
    assert ticks >= 5  # and the loop kept running meanwhile
    assert store_threads
    assert not store_threads & loop_threads  # store I/O stayed off the loop


def test_a_waiter_cancelled_mid_trip_leaves_its_grant_to_the_next_request() -> None:
    store = MemoryStore()
    gate = RateLimitGate(store)
    inside, go_on = threading.Event(), threading.Event()
    transact = store.transact

    def slow(update: Any) -> Any:
        inside.set()
        go_on.wait(5)
        return transact(update)

    async def main() -> Ticket:
        store.transact = slow  # type: ignore[method-assign]
        waiter = asyncio.ensure_future(gate.acquire_async())
        await asyncio.to_thread(inside.wait, 5)
        waiter.cancel()  # while the store trip runs in its thread
        with pytest.raises(asyncio.CancelledError):
            await waiter
        go_on.set()
        store.transact = transact  # type: ignore[method-assign]
        while not store.state.held:
            await asyncio.sleep(0.01)  # the abandoned trip finishes on its own
        return await gate.acquire_async()

    ticket = asyncio.run(main())

    assert ticket.gate is gate
    assert store.state.slots_held() == 1  # the abandoned grant was used, not leaked beside a new one
    assert gate._waiting == 0


def test_a_request_in_flight_renews_its_claim_on_a_timer() -> None:
    store = MemoryStore()
    gate = RateLimitGate(store, request_timeout=0.01)  # a claim of 2.01 s, renewed every 0.67 s
    gate.release(gate.acquire(), headers(9, 60, limit=10, window=60))
    gate.acquire()  # in flight, never answered during this test
    first = store.state.held[gate.holder][1]

    deadline = time.monotonic() + 10
    while store.state.held[gate.holder][1] == first and time.monotonic() < deadline:
        time.sleep(0.01)  # the gate's timer thread renews it; nothing else touches the gate

    assert store.state.held[gate.holder][1] > first
    assert store.state.held[gate.holder][0] == 1


def test_the_spent_list_stays_bounded_and_no_slot_counts_shorter() -> None:
    from airflow_provider_cfai.hooks import _pacing_rules

    state = WindowState(limit=10**6, exact=True, period=1000.0)
    answers = [100.0 + i * 0.5 for i in range(1000)]
    for at in answers:
        _pacing_rules.settle(state, holder="h", answered=[at], unused=0)

    assert len(state.spent) <= _pacing_rules._SPENT_ENTRIES
    assert sum(n for _, n in state.spent) == len(answers)
    kept = [until for until, n in state.spent for _ in range(int(n))]
    assert all(k >= a for k, a in zip(kept, answers, strict=True))  # merged into later times only


def test_an_answer_saying_nothing_is_left_closes_the_shared_state_before_the_next_request() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    gate = gate_on(clock, store)
    gate.release(gate.acquire(clock.sleep), headers(8, 60, limit=10, window=60))
    first, second = gate.try_acquire(), gate.try_acquire()  # one slot each: the limit is near
    assert isinstance(first, Ticket)
    assert isinstance(second, Ticket)

    gate.release(first, headers(0, 30, limit=10, window=60))  # while `second` is still in flight

    assert store.state.closed  # every other process of the host sees it at once


def test_a_lease_is_given_back_when_the_server_has_less_left_than_it_holds() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    gate = gate_on(clock, store)
    gate.release(gate.acquire(clock.sleep), headers(10**6 - 1, 60, limit=10**6, window=60))
    ticket = gate.acquire(clock.sleep)  # a lease of LEASE_MAX
    assert store.state.held[gate.holder][0] == LEASE_MAX

    gate.release(ticket, headers(2, 60, limit=10**6, window=60))  # someone else spent the window

    assert gate.holder not in store.state.held


def test_a_lease_sized_for_an_old_limit_is_not_used_after_the_limit_changed() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    gate = gate_on(clock, store)
    gate.release(gate.acquire(clock.sleep), headers(10**6 - 1, 60, limit=10**6, window=60))
    ticket = gate.acquire(clock.sleep)  # a lease of LEASE_MAX
    gate.release(ticket, headers(10**6, 60, limit=5, window=60))  # the limit is 5 now (r says nothing)

    sent = 0
    while isinstance(ticket := gate.try_acquire(), Ticket):
        gate.release(ticket, headers(10**6, 60, limit=5, window=60))
        sent += 1

    assert sent <= 5


def test_a_ticket_issued_before_a_fork_is_not_settled_by_the_child() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    gate = gate_on(clock, store)
    gate.release(gate.acquire(clock.sleep), headers(8, 60, limit=10, window=60))
    parents = gate.acquire(clock.sleep)
    spent = store.state.slots_spent(clock.now)

    gate._reset()  # what a forked child does
    gate.release(parents, headers(7, 60, limit=10, window=60))
    gate.close()

    assert store.state.slots_spent(clock.now) == spent  # the parent settles it, not the child


def test_a_limit_estimated_below_the_sharers_is_one_slot_each_not_an_error() -> None:
    clock = FakeClock()
    gate = gate_on(clock, sharers=3)
    gate.release(gate.acquire(clock.sleep), {"Ratelimit": '"default";r=1;t=10'})  # no policy: limit >= 2

    gate.release(gate.acquire(clock.sleep), {"Ratelimit": '"default";r=1;t=10'})

    assert clock.now == pytest.approx(400.0)  # one slot per window (the default 300 s: no policy said)


def test_a_lease_beyond_demand_is_taken_only_while_half_the_quota_is_free() -> None:
    from airflow_provider_cfai.hooks._pacing_rules import pace

    state = WindowState(limit=64 * 20, exact=True, period=60.0, spent=[[100.0, 1000]])

    decision = pace(state, 100.0, holder="h", claim=10.0, want=1)

    assert decision.slots == 1  # 280 of 1280 free: one per request, not a lease of 20


def test_the_answers_a_gate_keeps_between_trips_stay_bounded() -> None:
    clock = FakeClock()
    gate = gate_on(clock)
    gate.release(gate.acquire(clock.sleep), headers(10**6, 60, limit=10**6 + 1, window=60))
    gate._waiting = 5 * LEASE_MAX  # that many requests waiting: one lease for all of them
    tickets = [gate.try_acquire() for _ in range(5 * LEASE_MAX)]
    assert all(isinstance(t, Ticket) for t in tickets)

    for n, ticket in enumerate(tickets):
        assert isinstance(ticket, Ticket)
        gate.release(ticket, headers(10**6 + n, 60, limit=10**6 + 1, window=60))  # each one news

    assert len(gate._answers) <= 4 * LEASE_MAX
