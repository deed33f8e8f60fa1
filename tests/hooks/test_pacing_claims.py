"""A host that dies holding a claim on the shared pacing state, on a fake clock, for both shared stores.

Pods have their own host names, so no one can check a dead pod's pid: its claim lapses on its own,
``request_timeout`` + CLAIM_MARGIN after its last trip to the state. Then the others get the full
budget back one window later (the dead pod's request may have been counted just before the lapse).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cfai.hooks._pacing_file import FileStore
from airflow_provider_cfai.hooks._pacing_gate import RateLimitGate, Ticket
from airflow_provider_cfai.hooks._pacing_redis import RedisStore
from airflow_provider_cfai.hooks._pacing_rules import CLAIM_MARGIN
from airflow_provider_cfai.hooks._pacing_store import StateStore

LIMIT, WINDOW, TIMEOUT = 10, 2.0, 10.0
LAPSE = 100.0 + TIMEOUT + CLAIM_MARGIN  # the dead pod's claim, taken at 100
HEADERS = {"Ratelimit": f'"default";r={LIMIT - 1};t=2', "Ratelimit-Policy": f'"default";q={LIMIT};w=2'}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["host-file", "redis"])
def store_for(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return lambda clock: RedisStore(url, "digest", clock=clock)
    return lambda clock: FileStore(tmp_path / "token.json", clock)


def pod(store: StateStore, clock: FakeClock, name: str) -> RateLimitGate:
    gate = RateLimitGate(store, clock=clock, request_timeout=TIMEOUT)
    gate.holder = gate.holder.replace(socket.gethostname(), name, 1)  # its own host: no pid check
    return gate


def budget(gate: RateLimitGate) -> int:
    """How many requests the gate lets through now, each answered at once."""
    sent = 0
    while isinstance(ticket := gate.try_acquire(), Ticket):
        gate.release(ticket, HEADERS)
        sent += 1
    return sent


def test_a_pod_killed_during_the_first_request_delays_the_others_until_its_claim_lapses(store_for: Any) -> None:
    clock = FakeClock()
    dead, alive = pod(store_for(clock), clock, "pod-a"), pod(store_for(clock), clock, "pod-b")
    dead.acquire(clock.sleep)  # the token's first request: blind; the pod is killed before the answer

    ticket = alive.acquire(clock.sleep)

    assert LAPSE <= clock.now <= LAPSE + 0.1  # waited for the lapse, not for an hour
    alive.release(ticket, HEADERS)
    assert budget(alive) == LIMIT - 2  # the dead pod's request counts for one window after the lapse
    clock.now = LAPSE + WINDOW + 0.2
    assert budget(alive) == LIMIT  # then the full budget is back


def test_a_pod_killed_mid_request_holds_its_slot_only_until_its_claim_lapses(store_for: Any) -> None:
    clock = FakeClock()
    dead, alive = pod(store_for(clock), clock, "pod-a"), pod(store_for(clock), clock, "pod-b")
    alive.release(alive.acquire(clock.sleep), HEADERS)  # the limit is known
    dead.acquire(clock.sleep)  # killed while its request is in flight

    clock.now = 103.0
    assert budget(alive) == LIMIT - 1  # the others keep going, one slot short
    clock.now = LAPSE
    assert budget(alive) == LIMIT - 1  # reaped: counted one window more, as if answered now
    clock.now = LAPSE + WINDOW + 0.1
    assert budget(alive) == LIMIT
