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
