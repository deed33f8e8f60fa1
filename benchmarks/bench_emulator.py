"""6. The emulator itself: list latency with a full account, and memory while receiving a big upload.

(a) is timed per call from a bare ``requests`` session, so it is the whole round trip a test pays.
(b) samples the emulator process's RSS while curl uploads the adapter: it should stream to disk.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench_upload import FILE_NAME, curl_upload
from common import LORA_MODEL, Result, adapter_file, check_asset, median
from table import MIB, Figure, Row

FINETUNES = 100
TARGET_LIST = 0.005
TARGET_RSS = 32 * MIB


def run(emulator: Any, *, smoke: bool) -> Result:
    import requests

    emulator.reset()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {emulator.token}"
    url = f"{emulator.base_url}/accounts/{emulator.account_id}/ai/finetunes"
    for i in range(FINETUNES):
        session.post(url, json={"model": LORA_MODEL, "name": f"bench-emu-{i:03d}"}).raise_for_status()

    calls = 50 if smoke else 200
    for _ in range(20):  # warm-up: connection, list cache
        listed = session.get(url).json()["result"]
    if len(listed) != FINETUNES:
        raise RuntimeError(f"listed {len(listed)} finetunes, expected {FINETUNES}")
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        session.get(url).json()
        samples.append(time.perf_counter() - start)
    list_time = median(samples)

    size = 16 * MIB if smoke else 256 * MIB
    path, sha256 = adapter_file(size)
    emulator.reset()
    finetune_id = session.post(url, json={"model": LORA_MODEL, "name": "bench-emu-upload"}).json()["result"]["id"]
    growth = _upload_rss_growth(emulator, finetune_id, str(path))
    check_asset(emulator, finetune_id, FILE_NAME, size, sha256)
    emulator.reset()

    p90 = Figure.ms(sorted(samples)[int(calls * 0.9)])
    rows = [
        Row("6", f"emulator GET /ai/finetunes, {FINETUNES} finetunes (n={calls}; p90 {p90})", Figure.ms(list_time),
            max_value=Figure.ms(TARGET_LIST), strict=True),
        Row("6", f"emulator RSS growth receiving a {size // MIB} MiB upload (curl)", Figure.mib(growth),
            max_value=Figure.mib(TARGET_RSS)),
    ]  # fmt: skip
    return Result(rows)


def _upload_rss_growth(emulator: Any, finetune_id: str, path: str) -> int:
    """Peak RSS of the emulator (and any children) during one curl upload, minus its RSS just before."""
    import psutil

    process = psutil.Process(emulator.pid)

    def rss() -> int:
        return int(sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]))

    baseline = peak = rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        curl_upload(emulator, finetune_id, path)
    finally:
        done.set()
        sampler.join()
    return peak - baseline
