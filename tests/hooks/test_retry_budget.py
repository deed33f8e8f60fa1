"""``retry_budget`` bounds the waiting between attempts, for the whole call, recovery included.

The hook's waits go to a fake sleep (nothing sleeps); the emulator produces the failures over HTTP.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_cfai.exceptions import CloudflareAPIError

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
LIST = r"^/accounts/[0-9a-f]+/ai/finetunes/?$"


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def budget_hook(make_hook: Any, waits: list[float]) -> Any:
    def factory(**extra: Any) -> Any:
        hook = make_hook(**extra)
        hook._sleep = waits.append
        return hook

    return factory


def requests_to(emulator: Any, method: str) -> int:
    return sum(1 for r in emulator.state()["requests"] if r["method"] == method and "/ai/finetunes" in r["path"])


def test_a_slow_attempt_does_not_use_up_the_budget(budget_hook: Any, emulator: Any, waits: list[float]) -> None:
    # The case: timeout=2, retry_budget=2.5 gave up after one slow attempt without waiting.
    hook = budget_hook(timeout=2, retry_budget=0.6, max_retries=3)
    rule = emulator.add_fault(method="GET", path=LIST, times=1, status=503, delay=1.0)

    assert hook.list_finetunes() == []

    assert len(waits) == 1
    assert 0.5 <= waits[0] <= 0.6
    assert requests_to(emulator, "GET") == 2
    assert emulator.fired(rule) == 1


def test_waiting_stops_before_the_budget_is_exceeded(budget_hook: Any, emulator: Any, waits: list[float]) -> None:
    hook = budget_hook(retry_budget=2.0, max_retries=10)
    rule = emulator.add_fault(method="GET", path=LIST, times=10, status=503)

    with pytest.raises(CloudflareAPIError, match="HTTP 503"):
        hook.list_finetunes()

    assert emulator.fired(rule) == 3
    # 0.5 s + jitter, then 1 s + jitter; the next (2 s) would pass the budget.
    assert len(waits) == 2
    assert sum(waits) <= 2.0
    assert requests_to(emulator, "GET") == 3


def test_retry_after_longer_than_the_budget_left_stops_at_once(
    budget_hook: Any, emulator: Any, waits: list[float]
) -> None:
    hook = budget_hook(retry_budget=10, max_retries=5)
    unavailable = emulator.add_fault(method="GET", path=LIST, times=1, status=503)
    limited = emulator.add_fault(method="GET", path=LIST, times=1, status=429, headers={"Retry-After": "10"})

    with pytest.raises(CloudflareAPIError, match="HTTP 429"):
        hook.list_finetunes()

    assert (emulator.fired(unavailable), emulator.fired(limited)) == (1, 1)
    assert len(waits) == 1  # after the 503; 10 s more would pass the budget
    assert requests_to(emulator, "GET") == 2


def test_recovery_lookup_inside_a_create_shares_the_budget(budget_hook: Any, emulator: Any, waits: list[float]) -> None:
    hook = budget_hook(retry_budget=100, max_retries=3)
    create = emulator.add_fault(method="POST", path=LIST, times=1, status=503)
    lookup = emulator.add_fault(method="GET", path=LIST, times=10, status=503)

    with pytest.raises(CloudflareAPIError, match=r"GET .* failed with HTTP 503"):
        hook.create_finetune(MODEL, "bot")

    # One POST whose outcome is unknown, then the recovery look-ups as the call's remaining attempts:
    # never a create re-sent blindly, never a look-up with a retry budget of its own.
    assert requests_to(emulator, "POST") == 1
    assert requests_to(emulator, "GET") == 3
    assert len(waits) == 3
    assert emulator.finetunes() == []
    assert (emulator.fired(create), emulator.fired(lookup)) == (1, 3)


def test_recovery_finds_the_finetune_an_unknown_create_made(
    budget_hook: Any, emulator: Any, waits: list[float]
) -> None:
    hook = budget_hook(retry_budget=100, max_retries=3)
    create = emulator.add_fault(method="POST", path=LIST, times=1, action="drop_after_commit")
    lookup = emulator.add_fault(method="GET", path=LIST, times=1, status=502)

    created = hook.create_finetune(MODEL, "bot")

    (held,) = emulator.finetunes()
    assert created["id"] == held["id"]
    assert requests_to(emulator, "POST") == 1
    assert requests_to(emulator, "GET") == 2
    assert len(waits) == 2
    assert (emulator.fired(create), emulator.fired(lookup)) == (1, 1)
