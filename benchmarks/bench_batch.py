"""7. Batch evaluation through WorkersAIBatchTrigger: pacing, memory, and the queue engine's latency.

Each figure is measured in a child process that runs the trigger the way the triggerer does (its
``run()`` on an event loop, the connection read with ``aget_connection``), so the rate-limit gate
starts empty and the RSS is the trigger's own.

(a) Direct engine, 1,000 prompts, emulator limit 100 requests per 1 s window (60 s lockout): the
    best any client can do is ``(ceil(N / limit) - 1) * window`` (the last window needs no wait).
(b) Direct engine, 10,000 prompts, no limit: peak RSS during the run minus RSS before it. Results
    are streamed to the output, never held, so this stays flat.
(c) Queue engine: the chunks are submitted with the hook (as the operator does from the worker),
    then the trigger polls; from the first submit to the manifest must take at most the emulator's
    processing delay plus two poll intervals.
(d) Worker slots of a deferrable batch task, read from the metadata DB: ``bench_batch_slots.py``,
    its rows shown under this benchmark's number.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import CONN_ID, PYTHON, WORK, PeakRss, Result, child_env, run_json
from table import MIB, Figure, Row

MODEL = "@cf/meta/llama-3.1-8b-instruct"
QUEUE_MODEL = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
WINDOW = 1.0
LIMIT = 100
LOCKOUT = 60.0
TARGET_RATIO = 1.2
TARGET_RSS = 64 * MIB
CONCURRENCY = 8


def run(emulator: Any, *, smoke: bool) -> Result:
    env = child_env(**{f"AIRFLOW_CONN_{CONN_ID.upper()}": emulator.connection_json()})
    rows: list[Row] = []

    n = 200 if smoke else 1000
    emulator.reset(settings=True)
    emulator.configure(rate_limit=LIMIT, rate_window=WINDOW, rate_lockout=LOCKOUT)
    out = run_json([PYTHON, __file__, "--child", "direct", str(n)], env=env, timeout=600)
    state = emulator.state()
    _check(out, n)
    floor = (math.ceil(n / LIMIT) - 1) * WINDOW
    label = f"{n} prompts, direct engine, limit {LIMIT}/{WINDOW:g} s, concurrency {CONCURRENCY}"
    refused, lockouts = state["rate_limited_responses"], state["lockouts"]
    rows += [
        Row("7", f"{label}: wall time", Figure.seconds(out["seconds"]), anchor=Figure.seconds(floor),
            anchor_name="floor the limit allows", max_ratio=TARGET_RATIO),
        Row("7", f"{label}: 429 responses (lockouts)", f"{refused} ({lockouts})", target="0 429s", ok=refused == 0),
    ]  # fmt: skip

    n = 1000 if smoke else 10_000
    emulator.reset(settings=True)
    out = run_json([PYTHON, __file__, "--child", "memory", str(n)], env=env, timeout=900)
    _check(out, n)
    rows.append(
        Row("7", f"{n:,} prompts through the trigger (direct engine): RSS growth of its process",
            Figure.mib(out["growth"]), max_value=Figure.mib(TARGET_RSS)),
    )  # fmt: skip

    n, delay, poll = (100, 1.0, 0.25) if smoke else (1000, 2.0, 0.5)
    emulator.reset(settings=True)
    emulator.configure(queue_delay=delay, queue_running_after=min(0.5, delay))
    out = run_json([PYTHON, __file__, "--child", "queue", str(n), str(poll)], env=env, timeout=600)
    _check(out, n)
    rows.append(
        Row("7", f"{n} prompts in {out['chunks']} chunk(s), queue engine, poll every {poll:g} s: submit → manifest",
            Figure.seconds(out["seconds"]), anchor=Figure.seconds(delay), anchor_name="emulator's processing delay",
            max_value=Figure.seconds(delay + 2 * poll)),
    )  # fmt: skip
    emulator.reset(settings=True)

    import bench_batch_slots

    slots = bench_batch_slots.run(emulator, smoke=smoke)
    emulator.reset(settings=True)
    rows += [dataclasses.replace(row, bench="7") for row in slots.rows]
    return Result(rows, notes=slots.notes, samples=slots.samples)


def _check(out: dict[str, Any], n: int) -> None:
    manifest = out["manifest"]
    if out["status"] != "success" or manifest is None or manifest["succeeded"] != n:
        raise RuntimeError(f"batch of {n} did not succeed: {out['status']}: {out['message']}")


# -- the child: one trigger run ----------------------------------------------------------------------


def _trigger_run(trigger: Any) -> dict[str, Any]:
    import asyncio

    async def collect() -> list[Any]:
        return [event async for event in trigger.run()]

    (event,) = asyncio.run(collect())
    payload: dict[str, Any] = event.payload
    return payload


def _inputs(folder: Path, n: int, prompt_bytes: int = 0) -> str:
    path = folder / f"inputs-{n}.jsonl"
    padding = "x" * prompt_bytes
    with path.open("w") as handle:
        for i in range(n):
            handle.write(
                json.dumps({"prompt": f"question {i} {padding}".strip(), "external_reference": f"q{i}"}) + "\n"
            )
    return str(path)


def child_direct(n: int) -> None:
    from airflow_provider_cfai.triggers.batch import WorkersAIBatchTrigger

    with tempfile.TemporaryDirectory(dir=WORK) as folder:
        inputs = _inputs(Path(folder), n)
        trigger = WorkersAIBatchTrigger(
            CONN_ID, "direct", MODEL, inputs, f"{folder}/out.jsonl", concurrency=CONCURRENCY
        )
        start = time.perf_counter()
        payload = _trigger_run(trigger)
        print(json.dumps({"seconds": time.perf_counter() - start, **payload}))


def child_memory(n: int) -> None:
    import gc

    from airflow_provider_cfai.triggers.batch import WorkersAIBatchTrigger

    with tempfile.TemporaryDirectory(dir=WORK) as folder:
        # A warm-up run loads every module and fills every pool before the baseline is taken.
        warm = WorkersAIBatchTrigger(CONN_ID, "direct", MODEL, _inputs(Path(folder), 100), f"{folder}/warm.jsonl")
        _trigger_run(warm)
        inputs = _inputs(Path(folder), n)
        gc.collect()
        with PeakRss(interval=0.01) as rss:
            trigger = WorkersAIBatchTrigger(
                CONN_ID, "direct", MODEL, inputs, f"{folder}/out.jsonl", concurrency=CONCURRENCY
            )
            payload = _trigger_run(trigger)
        print(json.dumps({"growth": rss.growth, **payload}))


def child_queue(n: int, poll: float) -> None:
    from airflow_provider_cfai.batch.engines import plan_chunks
    from airflow_provider_cfai.batch.inputs import iter_inputs
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook
    from airflow_provider_cfai.triggers.batch import WorkersAIBatchTrigger

    hook = CloudflareAIHook(CONN_ID)
    hook.session  # noqa: B018 - resolve the connection before the clock starts
    with tempfile.TemporaryDirectory(dir=WORK) as folder:
        # ~12 kB per prompt: the 10 MB limit splits the batch into two submissions.
        inputs = _inputs(Path(folder), n, prompt_bytes=12_000)
        chunks = plan_chunks(item for _, item in iter_inputs(inputs))
        start = time.perf_counter()
        request_ids = [hook.submit_batch(QUEUE_MODEL, chunk)["request_id"] for chunk in chunks]
        trigger = WorkersAIBatchTrigger(
            CONN_ID,
            "queue",
            QUEUE_MODEL,
            inputs,
            f"{folder}/out.jsonl",
            request_ids=request_ids,
            chunk_sizes=[len(chunk) for chunk in chunks],
            poll_interval=poll,
        )
        payload = _trigger_run(trigger)
        print(json.dumps({"seconds": time.perf_counter() - start, "chunks": len(chunks), **payload}))


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    WORK.mkdir(parents=True, exist_ok=True)
    mode, size = sys.argv[2], int(sys.argv[3])
    if mode == "direct":
        child_direct(size)
    elif mode == "memory":
        child_memory(size)
    else:
        child_queue(size, float(sys.argv[4]))
