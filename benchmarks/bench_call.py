"""2. Per-call overhead: ``hook.list_finetunes()`` vs bare ``requests`` vs the official Cloudflare SDK.

All three talk to the same emulator URL from one process; each round times a block of calls per
client, clients take turns (rotating who goes first), and the ratio is the median of the per-round
ratios, so machine noise that hits one round hits every client in it.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Callable
from typing import Any

from common import CONN_ID, LORA_MODEL, Result, Row, median, ms

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

    vs_bare = median(h / b for h, b in zip(per_call["hook"], per_call["bare"], strict=True))
    vs_sdk = median(h / s for h, s in zip(per_call["hook"], per_call["sdk"], strict=True))
    hook_ms = ms(median(per_call["hook"]))
    label = f"hook.list_finetunes() per call ({FINETUNES} finetunes, {rounds}x{calls})"
    rows = [
        Row("2", label + " vs bare requests", hook_ms, f"bare requests: {ms(median(per_call['bare']))}",
            f"{vs_bare:.3f}x", f"≤ {TARGET_BARE:g}x bare", vs_bare <= TARGET_BARE),
        Row("2", label + " vs official SDK", hook_ms, f"cloudflare SDK: {ms(median(per_call['sdk']))}",
            f"{vs_sdk:.3f}x", f"≤ {TARGET_SDK:g}x SDK", vs_sdk <= TARGET_SDK),
    ]  # fmt: skip
    notes = [] if rows[0].ok and rows[1].ok else [_profile(clients["hook"], calls * 5)]
    return Result(rows, notes)


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
