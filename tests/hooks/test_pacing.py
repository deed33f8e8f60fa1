"""Rate-limit header parsing and the pacing gate, on a fake clock (no sleeping)."""

from __future__ import annotations

import pytest

from airflow_provider_cfai.hooks._pacing import RateLimitGate, parse_ratelimit, parse_retry_after


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


def test_gate_spends_the_window_then_waits_for_the_reset() -> None:
    clock = FakeClock()
    gate = RateLimitGate(clock)

    for remaining in (2, 1, 0):
        window = gate.acquire(clock.sleep)
        gate.release(window, (remaining, 3.0))
    assert clock.slept == []

    gate.acquire(clock.sleep)

    assert clock.slept == [3.0]


def test_gate_never_sends_more_than_remaining_while_answers_are_outstanding() -> None:
    clock = FakeClock()
    gate = RateLimitGate(clock)
    window = gate.acquire(clock.sleep)
    gate.release(window, (3, 10.0))

    sent = [gate.acquire(clock.sleep) for _ in range(3)]  # three unanswered, three left

    assert clock.slept == []
    gate.release(sent[0], (2, 10.0))
    gate.release(sent[1], (1, 10.0))
    gate.release(sent[2], (0, 10.0))
    gate.acquire(clock.sleep)
    assert clock.slept == [10.0]


def test_answers_from_an_earlier_window_are_ignored() -> None:
    clock = FakeClock()
    gate = RateLimitGate(clock)
    first = gate.acquire(clock.sleep)
    late = gate.acquire(clock.sleep)
    gate.release(first, (0, 1.0))
    clock.now += 1.5  # the window has reset while `late` was in flight
    fresh = gate.acquire(clock.sleep)

    gate.release(late, (0, 1.0))  # the old window's last answer
    gate.release(fresh, (9, 1.0))

    assert gate.acquire(clock.sleep) == fresh
    assert clock.slept == []


def test_the_earliest_reset_estimate_wins() -> None:
    clock = FakeClock()
    gate = RateLimitGate(clock)
    a = gate.acquire(clock.sleep)
    b = gate.acquire(clock.sleep)
    gate.release(a, (1, 2.0))  # reset at 102
    clock.now += 0.9
    gate.release(b, (0, 1.0))  # t rounded up: reset at 101.9, tighter

    gate.acquire(clock.sleep)

    assert clock.slept == [pytest.approx(1.0)]
