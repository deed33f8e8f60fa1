"""2. Per-call overhead: ``hook.list_finetunes()`` vs bare ``requests`` vs the official Cloudflare SDK.

All three talk to the same emulator URL from one process; each round times a block of calls per
client, clients take turns (rotating who goes first). The table judges the ratio of the medians it
prints; the median of the per-round ratios (noise that hits one round hits every client in it) is
shown beside it, with every round's figures under "Raw samples".
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Callable
from typing import Any

from common import CONN_ID, LORA_MODEL, Result, median
from table import Figure, Row

FINETUNES = 20
TARGET_BARE = 1.15
TARGET_SDK = 1.0


def _clients(emulator: Any) -> dict[str, Callable[[], Any]]:
    import cloudflare
    import requests

    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    hook = CloudflareAIHook(CONN_ID)
    url = f"{emulator.base_url}/accounts/{emulator.account_id}/ai/finetunes"
    session = requests.Session()
    auth = {"Authorization": f"Bearer {emulator.token}"}
    sdk = cloudflare.Cloudflare(api_token=emulator.token, base_url=emulator.base_url)
    return {
        "hook": hook.list_finetunes,
        "bare": lambda: session.get(url, headers=auth).json()["result"],
        "sdk": lambda: sdk.ai.finetunes.list(account_id=emulator.account_id),
    }


def run(emulator: Any, *, smoke: bool) -> Result:
    emulator.reset()
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    setup = CloudflareAIHook(CONN_ID)
    for i in range(FINETUNES):
        setup.create_finetune(LORA_MODEL, f"bench-call-{i:02d}")

    clients = _clients(emulator)
    rounds, calls = (3, 10) if smoke else (15, 40)
    for name, call in clients.items():  # warm-up: connections, lazy imports, caches
        for _ in range(calls):
            got = call()
        if len(list(got)) != FINETUNES:
            raise RuntimeError(f"{name} listed {len(list(got))} finetunes, expected {FINETUNES}")

    names = list(clients)
    per_call: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            call = clients[name]
            start = time.perf_counter()
            for _ in range(calls):
                call()
            per_call[name].append((time.perf_counter() - start) / calls)

    paired = {
        other: median(h / o for h, o in zip(per_call["hook"], per_call[other], strict=True))
        for other in ("bare", "sdk")
    }
    hook = Figure.ms(median(per_call["hook"]))
    label = f"hook.list_finetunes() per call ({FINETUNES} finetunes, {rounds}x{calls})"
    rows = [
        Row("2", label + " vs bare requests", hook, anchor=Figure.ms(median(per_call["bare"])),
            anchor_name="bare requests", paired=paired["bare"], max_ratio=TARGET_BARE),
        Row("2", label + " vs official SDK", hook, anchor=Figure.ms(median(per_call["sdk"])),
            anchor_name="cloudflare SDK", paired=paired["sdk"], max_ratio=TARGET_SDK),
    ]  # fmt: skip
    samples = [f"2. per call, round by round (ms), {name}: {_fmt(per_call[name])}" for name in names]
    notes = [] if all(row.verdict for row in rows) else [_profile(clients["hook"], calls * 5)]
    return Result(rows, notes, samples)


def _fmt(seconds: list[float]) -> str:
    return ", ".join(f"{s * 1000:.3f}" for s in seconds)


def _profile(call: Callable[[], Any], calls: int, top: int = 15) -> str:
    """cProfile of the hook's calls, to show where its time above bare requests goes."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        call()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    text = "\n".join("    " + line for line in out.getvalue().strip().splitlines())
    return f"cProfile of {calls} x hook.list_finetunes() (top {top} by own time):\n\n{text}"
