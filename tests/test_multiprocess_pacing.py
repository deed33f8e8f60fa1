"""One token, many short-lived task processes: no 429 and no lockout, near the pace the limit allows.

Shaped like Airflow: every "task" is a fresh process (forked, as Airflow's supervisor forks its task
runner) that lists the account's finetunes, creates one, uploads its two adapter files and exits —
four requests. Fifteen tasks, at most four alive at a time, share one token on the emulator at 10
requests per 2 s with a lockout on the first excess. The floor is what the limit allows for those
60 requests: the last window needs no wait, so (ceil(60 / 10) - 1) * 2 s = 10 s.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
TASKS, ALIVE, LIMIT, WINDOW, LOCKOUT = 15, 4, 10, 2.0, 30.0
REQUESTS = TASKS * 4
FLOOR = (math.ceil(REQUESTS / LIMIT) - 1) * WINDOW


def task(conn_id: str, number: int, adapter: Path) -> None:
    """One Airflow-like task: four API calls through a hook made in this process."""
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    hook = CloudflareAIHook(cloudflare_conn_id=conn_id)
    hook.list_finetunes()
    finetune = hook.create_finetune(MODEL, f"mp-task-{number:02d}")
    hook.upload_adapter(finetune["id"], adapter)


def in_processes(conn_id: str, adapter: Path) -> float:
    """Run every task in its own forked process, at most ALIVE at once; the wall time."""
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    # What an Airflow worker has done before it forks a task: Airflow imported and its connection
    # machinery warmed up (on 3.1, a first lookup outside a task configures the ORM: 0.6 s of CPU).
    CloudflareAIHook(cloudflare_conn_id=conn_id).settings  # noqa: B018
    context = multiprocessing.get_context("fork")
    pending, alive, failed = list(range(TASKS)), [], []
    started = time.monotonic()
    while pending or alive:
        while pending and len(alive) < ALIVE:
            process = context.Process(target=task, args=(conn_id, pending.pop(0), adapter))
            process.start()
            alive.append(process)
        multiprocessing.connection.wait([p.sentinel for p in alive])
        for process in [p for p in alive if not p.is_alive()]:
            process.join()
            alive.remove(process)
            if process.exitcode != 0:
                failed.append(process.exitcode)
    assert failed == [], f"task processes exited with {failed}"
    return time.monotonic() - started


def in_threads(conn_id: str, adapter: Path) -> float:
    """The same tasks in this one process, ALIVE threads at a time."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=ALIVE) as pool:
        list(pool.map(lambda n: task(conn_id, n, adapter), range(TASKS)))
    return time.monotonic() - started


def check(emulator: Any, label: str, wall: float, max_ratio: float) -> None:
    state = emulator.state()
    ratio = wall / FLOOR
    print(
        f"\n{label}: {REQUESTS} requests, wall {wall:.2f} s, floor {FLOOR:.2f} s, ratio {ratio:.2f}, "
        f"429s {state['rate_limited_responses']}, lockouts {state['lockouts']}"
    )
    assert state["rate_limited_responses"] == 0
    assert state["lockouts"] == 0
    finetunes = emulator.finetunes()
    assert sorted(f["name"] for f in finetunes) == [f"mp-task-{n:02d}" for n in range(TASKS)]
    assert all(set(f["assets"]) == {"adapter_config.json", "adapter_model.safetensors"} for f in finetunes)
    assert wall >= FLOOR  # the limit was really in force
    assert ratio <= max_ratio


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    from airflow_provider_cfai.adapter_factory import write_lora_adapter

    return write_lora_adapter(tmp_path / "adapter")


@pytest.fixture
def limited(emulator: Any) -> Any:
    emulator.configure(rate_limit=LIMIT, rate_window=WINDOW, rate_lockout=LOCKOUT)
    return emulator


def test_short_lived_processes_share_the_token_without_a_429(make_hook: Any, limited: Any, adapter: Path) -> None:
    make_hook(conn_id="cfai_mp")

    wall = in_processes("cfai_mp", adapter)

    check(limited, "15 tasks in processes, host state file", wall, max_ratio=1.5)


def test_short_lived_processes_share_the_token_through_redis(
    make_hook: Any, limited: Any, adapter: Path, redis_url: str
) -> None:
    import redis

    make_hook(conn_id="cfai_mp_redis", redis_url=redis_url)

    wall = in_processes("cfai_mp_redis", adapter)

    check(limited, "15 tasks in processes, Redis", wall, max_ratio=1.5)
    assert redis.Redis.from_url(redis_url).keys("airflow-provider-cfai:ratelimit:*")  # Redis did the pacing


def test_one_process_keeps_its_pace(make_hook: Any, limited: Any, adapter: Path) -> None:
    make_hook(conn_id="cfai_mp_one")

    wall = in_threads("cfai_mp_one", adapter)

    check(limited, "15 tasks in one process, 4 threads", wall, max_ratio=1.2)


# -- pods that die ------------------------------------------------------------------------------------
# Kubernetes-shaped: every pod is a process with its own host name and its own temp dir, all sharing
# one Redis; the token allows 10 requests per 2 s and the connection's timeout is 10 s. One pod is
# SIGKILLed while its request is in flight (the emulator holds the answer back). Its claim on the
# Redis state lapses at most TIMEOUT + CLAIM_MARGIN = 12 s after it was taken, without anyone
# seeing its pid; its slot then counts one window more, so the full budget is back 14 s after.

POD_TIMEOUT = 10.0


def pod(name: str, conn_id: str, state_dir: str, requests: int) -> None:
    """One pod: its own host name and temp dir, a fresh gate, ``requests`` list calls."""
    import os
    import socket

    socket.gethostname = lambda: name  # type: ignore[assignment]  # this process is another host
    os.environ["CFAI_RATE_LIMIT_DIR"] = state_dir
    from airflow_provider_cfai.hooks import _pacing
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    _pacing._GATES.clear()  # the parent's gates are not this pod's
    hook = CloudflareAIHook(cloudflare_conn_id=conn_id)
    for _ in range(requests):
        hook.list_finetunes()


def start_pod(name: str, conn_id: str, tmp_path: Path, requests: int) -> multiprocessing.process.BaseProcess:
    state_dir = tmp_path / name
    state_dir.mkdir(mode=0o700)
    process = multiprocessing.get_context("fork").Process(target=pod, args=(name, conn_id, str(state_dir), requests))
    process.start()
    return process


def kill_mid_request(emulator: Any, conn_id: str, tmp_path: Path) -> float:
    """Start a pod whose one request the emulator answers only after a minute; SIGKILL it once the
    request was counted. Returns when it was counted (the emulator's clock: time.time())."""
    import os
    import signal

    rule = emulator.add_fault(method="GET", path=r"/ai/finetunes$", action="delay_after_commit", delay=60)
    victim = start_pod("pod-victim", conn_id, tmp_path, 1)
    deadline = time.monotonic() + 30
    while not emulator.fired(rule) and time.monotonic() < deadline and victim.is_alive():
        multiprocessing.connection.wait([victim.sentinel], timeout=0.02)  # until the emulator has it
    assert emulator.fired(rule) == 1
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    assert victim.exitcode == -signal.SIGKILL
    (counted,) = [r["time"] for r in emulator.state()["requests"] if r["fault"] == "delay_after_commit"]
    return float(counted)


def run_pods(names: list[str], conn_id: str, tmp_path: Path, requests: int) -> None:
    pods = [start_pod(name, conn_id, tmp_path, requests) for name in names]
    for process in pods:
        process.join(timeout=120)
    assert [p.exitcode for p in pods] == [0] * len(pods)


def answered_after(emulator: Any, since: float) -> list[float]:
    return sorted(r["time"] for r in emulator.state()["requests"] if r["fault"] is None and r["time"] > since)


def busiest(times: list[float], window: float) -> int:
    import bisect

    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


@pytest.fixture
def pods_on_redis(make_hook: Any, limited: Any, redis_url: str) -> str:
    make_hook(conn_id="cfai_pods", redis_url=redis_url, timeout=POD_TIMEOUT)
    return "cfai_pods"


def test_a_pod_killed_during_the_tokens_first_request_delays_the_others_by_its_claim_only(
    pods_on_redis: str, limited: Any, tmp_path: Path
) -> None:
    from airflow_provider_cfai.hooks._pacing_rules import CLAIM_MARGIN

    counted = kill_mid_request(limited, pods_on_redis, tmp_path)  # the limit is not known yet

    run_pods(["pod-1", "pod-2", "pod-3"], pods_on_redis, tmp_path, 10)

    times = answered_after(limited, counted)
    assert len(times) == 30
    first = times[0] - counted
    print(f"\nfirst request of the others {first:.2f} s after the dead pod's, bound {POD_TIMEOUT + CLAIM_MARGIN:g} s")
    assert POD_TIMEOUT <= first <= POD_TIMEOUT + CLAIM_MARGIN + 1.0  # they waited for its claim, then went on
    assert limited.state()["rate_limited_responses"] == 0
    assert limited.state()["lockouts"] == 0
    assert busiest(times, WINDOW) <= LIMIT


def test_a_pod_killed_mid_request_gives_its_slot_back_when_its_claim_lapses(
    pods_on_redis: str, limited: Any, tmp_path: Path
) -> None:
    from airflow_provider_cfai.hooks._pacing_rules import CLAIM_MARGIN

    run_pods(["pod-0"], pods_on_redis, tmp_path, 1)  # the limit is known
    counted = kill_mid_request(limited, pods_on_redis, tmp_path)

    run_pods(["pod-1", "pod-2", "pod-3"], pods_on_redis, tmp_path, 15)  # while the claim lives: 9 per window
    lapse = counted + POD_TIMEOUT + CLAIM_MARGIN
    before = [t for t in answered_after(limited, counted) if t < lapse - 0.5]
    assert len(before) >= LIMIT
    assert busiest(before, WINDOW) <= LIMIT - 1  # the dead pod's request still counts

    # The bound under test is a time: let it pass (the dead slot counts until lapse + one window).
    time.sleep(max(0.0, lapse + WINDOW + 0.2 - time.time()))
    since = time.time()
    run_pods(["pod-4"], pods_on_redis, tmp_path, LIMIT)

    fresh = answered_after(limited, since)
    span = fresh[-1] - fresh[0]
    print(f"\nbusiest window while the claim lived: {busiest(before, WINDOW)}; then {LIMIT} requests in {span:.2f} s")
    assert len(fresh) == LIMIT
    assert span < WINDOW  # the full budget in one window: the dead pod's slot is free again
    assert limited.state()["rate_limited_responses"] == 0
    assert limited.state()["lockouts"] == 0
