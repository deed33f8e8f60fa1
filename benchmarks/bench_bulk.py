"""4. Bulk creates through a rate limit: 8 threads, one hook each, against a scaled-down Cloudflare limit.

The emulator enforces ``limit`` calls per ``window`` with a 60 s lockout once exceeded, so the best
any client can do is ``(ceil(N / limit) - 1) * window`` (the last window needs no wait); one
lockout costs a minute. The creates run in a child process so the hook's process-wide pacing
state starts empty, as on a fresh worker.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
from typing import Any

from common import CONN_ID, LORA_MODEL, PYTHON, Result, child_env, run_json
from table import Figure, Row

THREADS = 8
WINDOW = 1.0
LOCKOUT = 60.0
TARGET_RATIO = 1.2


def run(emulator: Any, *, smoke: bool) -> Result:
    n, limit = (40, 20) if smoke else (200, 40)
    emulator.reset()
    emulator.configure(rate_limit=limit, rate_window=WINDOW, rate_lockout=LOCKOUT, max_finetunes=n)
    env = child_env(**{f"AIRFLOW_CONN_{CONN_ID.upper()}": emulator.connection_json()})
    out = run_json([PYTHON, __file__, "--child", str(n)], env=env, timeout=900)
    state = emulator.state()
    if out["errors"] or len(state["finetunes"]) != n:
        raise RuntimeError(f"{len(state['finetunes'])} of {n} finetunes created; errors: {out['errors'][:3]}")

    floor = (math.ceil(n / limit) - 1) * WINDOW
    lockouts = state["lockouts"]
    label = f"{n} creates, {THREADS} threads, limit {limit}/{WINDOW:g} s"
    rows = [
        Row("4", f"{label}: wall time", Figure.seconds(out["seconds"]), anchor=Figure.seconds(floor),
            anchor_name="floor the limit allows", max_ratio=TARGET_RATIO),
        Row("4", f"{label}: lockouts (429s received)", f"{lockouts} ({state['rate_limited_responses']})",
            target="0 lockouts", ok=lockouts == 0),
    ]  # fmt: skip
    return Result(rows)


def child(n: int) -> None:
    """Create ``n`` finetunes from THREADS threads, one hook per thread; print wall time and errors."""
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    hooks = [CloudflareAIHook(CONN_ID) for _ in range(THREADS)]
    for hook in hooks:
        hook.session  # noqa: B018 - resolve the connection before the clock starts
    names: queue.Queue[str] = queue.Queue()
    for i in range(n):
        names.put(f"bench-bulk-{i:04d}")
    errors: list[str] = []
    start_line = threading.Barrier(THREADS + 1)

    def work(hook: CloudflareAIHook) -> None:
        start_line.wait()
        while True:
            try:
                name = names.get_nowait()
            except queue.Empty:
                return
            try:
                hook.create_finetune(LORA_MODEL, name)
            except Exception as error:
                errors.append(f"{name}: {error}")

    threads = [threading.Thread(target=work, args=(hook,)) for hook in hooks]
    for thread in threads:
        thread.start()
    start_line.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    print(json.dumps({"seconds": time.perf_counter() - start, "errors": errors}))


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    child(int(sys.argv[2]))
