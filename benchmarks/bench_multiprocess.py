"""8. One token, many short-lived task processes: wall time against the floor the limit allows.

Shaped like Airflow: each "task" is a fresh process (forked, as Airflow's supervisor forks its task
runner) that lists the finetunes, creates one, uploads its two adapter files and exits: 4 requests.
At most 4 tasks are alive at once, all on one token; the emulator allows 10 requests per 2 s and
locks the token out for 30 s on the first excess. The floor for N requests is
``(ceil(N / 10) - 1) * 2 s`` (the last window needs no wait). Three runs, each in a child process
with its own empty pacing state: tasks in processes sharing the host's state file; the same with
the Redis limiter (a local ``redis-server``); and all tasks in one process on 4 threads.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import multiprocessing.connection
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import CONN_ID, PYTHON, WORK, Result, child_env, run_json
from table import Figure, Row

LIMIT, WINDOW, LOCKOUT, ALIVE = 10, 2.0, 30.0, 4
MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
TARGETS = {"processes": 1.5, "redis": 1.5, "threads": 1.2}
LABELS = {
    "processes": "task processes (≤4 alive), host state file",
    "redis": "task processes (≤4 alive), Redis limiter",
    "threads": "one process, 4 threads",
}


def run(emulator: Any, *, smoke: bool) -> Result:
    tasks = 6 if smoke else 15
    requests = 4 * tasks
    floor = (math.ceil(requests / LIMIT) - 1) * WINDOW
    adapter = WORK / "adapter-tiny"
    if not (adapter / "adapter_config.json").exists():
        from airflow_provider_cfai.adapter_factory import write_lora_adapter

        write_lora_adapter(adapter)
    rows: list[Row] = []
    with _redis() as redis_url:
        for mode in ("processes", "redis", "threads"):
            label = f"{tasks} tasks x 4 requests, limit {LIMIT}/{WINDOW:g} s, {LABELS[mode]}"
            if mode == "redis" and redis_url is None:
                rows.append(Row("8", f"{label}: not run (redis-server is not installed)", "—"))
                continue
            emulator.reset()
            emulator.configure(rate_limit=LIMIT, rate_window=WINDOW, rate_lockout=LOCKOUT)
            extra = {"redis_url": redis_url} if mode == "redis" else {}
            state_dir = WORK / f"pacing-state-{mode}"
            shutil.rmtree(state_dir, ignore_errors=True)
            state_dir.mkdir(mode=0o700, parents=True)
            env = child_env(
                **{
                    f"AIRFLOW_CONN_{CONN_ID.upper()}": emulator.connection_json(**extra),
                    "CFAI_RATE_LIMIT_DIR": str(state_dir),
                }
            )
            out = run_json([PYTHON, __file__, "--child", mode, str(tasks), str(adapter)], env=env, timeout=600)
            state = emulator.state()
            if out["failed"] or len(state["finetunes"]) != tasks:
                raise RuntimeError(
                    f"{mode}: {len(state['finetunes'])} of {tasks} tasks done; failures: {out['failed']}"
                )
            lockouts, refused = state["lockouts"], state["rate_limited_responses"]
            rows += [
                Row("8", f"{label}: wall time", Figure.seconds(out["seconds"]), anchor=Figure.seconds(floor),
                    anchor_name="floor the limit allows", max_ratio=TARGETS[mode]),
                Row("8", f"{label}: lockouts (429s received)", f"{lockouts} ({refused})",
                    target="0 lockouts, 0 429s", ok=lockouts == 0 and refused == 0),
            ]  # fmt: skip
    return Result(rows)


class _redis:
    """A throwaway ``redis-server`` on a free loopback port; ``None`` when none is installed."""

    def __enter__(self) -> str | None:
        binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )
        self.proc: subprocess.Popen[bytes] | None = None
        if binary is None:
            return None
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return f"redis://127.0.0.1:{port}/0"
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {port}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _task(number: int, adapter: str) -> None:
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    hook = CloudflareAIHook(CONN_ID)
    hook.list_finetunes()
    finetune = hook.create_finetune(MODEL, f"bench-mp-{number:02d}")
    hook.upload_adapter(finetune["id"], adapter)


def child(mode: str, tasks: int, adapter: str) -> None:
    """Run the tasks (forked processes, or threads of this one); print wall time and failures."""
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    # What an Airflow worker has done before it forks a task: Airflow imported and its connection
    # machinery warmed up (on 3.1, a first lookup outside a task configures the ORM: 0.6 s of CPU).
    CloudflareAIHook(CONN_ID).settings  # noqa: B018

    failed: list[str] = []
    start = time.perf_counter()
    if mode == "threads":
        with ThreadPoolExecutor(max_workers=ALIVE) as pool:
            for number, future in enumerate([pool.submit(_task, n, adapter) for n in range(tasks)]):
                if future.exception() is not None:
                    failed.append(f"task {number}: {future.exception()}")
    else:
        context = multiprocessing.get_context("fork")
        pending = list(range(tasks))
        alive: list[multiprocessing.process.BaseProcess] = []
        while pending or alive:
            while pending and len(alive) < ALIVE:
                process = context.Process(target=_task, args=(pending.pop(0), adapter))
                process.start()
                alive.append(process)
            multiprocessing.connection.wait([p.sentinel for p in alive])
            for process in [p for p in alive if not p.is_alive()]:
                process.join()
                alive.remove(process)
                if process.exitcode:
                    failed.append(f"a task process exited with {process.exitcode}")
    print(json.dumps({"seconds": time.perf_counter() - start, "failed": failed}))


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
