"""3. Streaming upload: ``hook.upload_finetune_asset()`` of a big adapter vs ``curl -F file=@PATH``.

The hook runs in a child process that reports its own peak RSS growth over the upload (baseline
taken after every import and after the hook has resolved its connection and built its session, so
the figure is what the upload itself costs). curl reports its own transfer time (``-w``), the hook
child its own, so neither pays for process start-up. Runs alternate hook/curl, each on a fresh
finetune, and the emulator's recorded size and sha256 are checked after every upload.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from common import (
    CONN_ID,
    LORA_MODEL,
    PYTHON,
    PeakRss,
    Result,
    adapter_file,
    check_asset,
    child_env,
    median,
    run_json,
)
from table import MIB, Figure, Row

FILE_NAME = "adapter_model.safetensors"
TARGET_RSS = 32 * MIB
TARGET_RATIO = 1.5


def curl_upload(emulator: Any, finetune_id: str, path: str) -> float:
    """The anchor: curl's multipart upload of the same file; returns curl's own total time."""
    url = f"{emulator.base_url}/accounts/{emulator.account_id}/ai/finetunes/{finetune_id}/finetune-assets"
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{http_code}", "-F", f"file_name={FILE_NAME}"]
    cmd += ["-F", f"file=@{path}", "-H", f"Authorization: Bearer {emulator.token}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout.split()
    if out[1] != "200":
        raise RuntimeError(f"curl upload answered HTTP {out[1]}")
    return float(out[0])


def run(emulator: Any, *, smoke: bool) -> Result:
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    # Seven rounds: single uploads on a shared machine swing by 2x either way (see the raw samples).
    size, runs = (16 * MIB, 1) if smoke else (256 * MIB, 7)
    path, sha256 = adapter_file(size)
    emulator.reset()
    env = child_env(**{f"AIRFLOW_CONN_{CONN_ID.upper()}": emulator.connection_json()})
    setup = CloudflareAIHook(CONN_ID)
    hook_times: list[float] = []
    curl_times: list[float] = []
    growths: list[int] = []
    for i in range(runs):
        order = ("hook", "curl") if i % 2 == 0 else ("curl", "hook")
        for kind in order:
            finetune_id = setup.create_finetune(LORA_MODEL, f"bench-upload-{kind}-{i}")["id"]
            if kind == "hook":
                out = run_json([PYTHON, __file__, "--child", finetune_id, str(path)], env=env)
                hook_times.append(out["seconds"])
                growths.append(out["rss_growth"])
            else:
                curl_times.append(curl_upload(emulator, finetune_id, str(path)))
            check_asset(emulator, finetune_id, FILE_NAME, size, sha256)
    emulator.reset()  # frees the stored copies

    paired = median(h / c for h, c in zip(hook_times, curl_times, strict=True))
    label = f"upload {size // MIB} MiB adapter (n={runs})"
    rows = [
        Row("3", f"{label}: hook peak RSS growth (worst run)", Figure.mib(max(growths)),
            max_value=Figure.mib(TARGET_RSS)),
        Row("3", f"{label}: wall time", Figure.seconds(median(hook_times)),
            anchor=Figure.seconds(median(curl_times)), anchor_name="curl -F", paired=paired, max_ratio=TARGET_RATIO),
    ]  # fmt: skip
    samples = [
        f"3. upload hook (s): {_fmt(hook_times)}; curl (s): {_fmt(curl_times)}; "
        f"hook RSS growth (MiB): {_fmt([g / MIB for g in growths])}"
    ]
    return Result(rows, samples=samples)


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def child(finetune_id: str, path: str) -> None:
    """Upload once through the hook and print its time and peak RSS growth as JSON."""
    import resource

    import requests  # noqa: F401 - imported before the baseline, like everything the upload uses
    import requests_toolbelt  # noqa: F401
    import tenacity  # noqa: F401

    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    hook = CloudflareAIHook(CONN_ID)
    hook.session  # noqa: B018 - resolves the connection and builds the session, no request yet
    max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # ru_maxrss cannot see a peak below an earlier one (e.g. during imports); sampling can.
    with PeakRss(interval=0.005) as rss:
        start = time.perf_counter()
        hook.upload_finetune_asset(finetune_id, FILE_NAME, path)
        seconds = time.perf_counter() - start
    peak = rss.peak
    max_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if max_after > max_before:  # the lifetime peak rose, so it happened during the upload
        peak = max(peak, max_after)
    print(json.dumps({"seconds": seconds, "rss_growth": peak - rss.baseline, "baseline": rss.baseline}))


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    child(sys.argv[2], sys.argv[3])
