"""200 creates from 8 threads through a rate-limited emulator: no errors, duplicates or lockouts."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


def test_200_creates_from_8_threads_respect_the_rate_limit(make_hook: Any, emulator: Any) -> None:
    limit, window, creates = 40, 1.0, 200
    emulator.configure(rate_limit=limit, rate_window=window, rate_lockout=60, max_finetunes=creates)
    hooks = [make_hook(conn_id=f"cfai_load_{i}") for i in range(8)]

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: hooks[i % 8].create_finetune(MODEL, f"load-{i:03d}"), range(creates)))
    wall = time.monotonic() - started

    state = emulator.state()
    names = [f["name"] for f in emulator.finetunes()]
    floor = (creates // limit - 1) * window
    print(
        f"load: {creates} creates, wall {wall:.2f} s, floor {floor:.2f} s, ratio {wall / floor:.2f}, "
        f"429s {state['rate_limited_responses']}, lockouts {state['lockouts']}"
    )
    assert len(results) == creates
    assert sorted(names) == sorted(f"load-{i:03d}" for i in range(creates))  # no duplicates, none missing
    assert state["rate_limited_responses"] == 0
    assert state["lockouts"] == 0
    assert wall >= floor  # the limit was really in force
