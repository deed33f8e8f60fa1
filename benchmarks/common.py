"""Shared by the benchmarks: paths, medians, child processes, test data and the report header.

The table itself (rows, figures, ratios, verdicts) is ``table.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from table import MIB, Row

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
WORK = BENCH_DIR / ".work"
PYTHON = sys.executable
CONN_ID = "cfai_bench"
LORA_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
# Child processes must not pick these up: the SDK adds X-Auth-* headers from them, Airflow its config.
_SCRUBBED_ENV = ("CLOUDFLARE_API_KEY", "CLOUDFLARE_EMAIL", "CLOUDFLARE_API_USER_SERVICE_KEY", "CLOUDFLARE_BASE_URL")


@dataclasses.dataclass
class Result:
    rows: list[Row]
    notes: list[str] = dataclasses.field(default_factory=list)  # diagnostics (profiles) for missed targets
    samples: list[str] = dataclasses.field(default_factory=list)  # raw values behind medians of few runs


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def child_env(**extra: str) -> dict[str, str]:
    """The environment for every child process.

    AIRFLOW_HOME is scratch (Airflow writes airflow.cfg there on import, and a user's own config,
    e.g. a secrets backend, must not change what is measured). Bytecode is cached under
    ``.work/pycache``: this venv ships no ``.pyc`` files and the environment may forbid writing
    them, and a child recompiling all of Airflow on every start measures the compiler, not us.
    """
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV and k != "PYTHONDONTWRITEBYTECODE"}
    env["AIRFLOW_HOME"] = str(WORK / "airflow")
    env["PYTHONPYCACHEPREFIX"] = str(WORK / "pycache")
    env.update(extra)
    return env


def airflow_env(home: Path, dags: Path, **extra: str) -> dict[str, str]:
    """:func:`child_env` for an ``airflow`` command line with its own home, DAG folder and SQLite DB."""
    return child_env(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        **extra,
    )


def run_airflow(args: list[str], env: dict[str, str], *, timeout: float = 900) -> float:
    """Run ``airflow <args>`` from this venv; its wall time in seconds, or a RuntimeError with its stderr."""
    airflow = str(Path(PYTHON).with_name("airflow"))
    start = time.perf_counter()
    proc = subprocess.run([airflow, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


class PeakRss:
    """This process's highest RSS while the ``with`` block runs, sampled every ``interval`` seconds.

    ``baseline`` is the RSS on entry; ``growth`` the peak above it. A last sample on exit catches a
    peak that lasted until the end.
    """

    def __init__(self, interval: float) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self.baseline = self.peak = 0

    def _rss(self) -> int:
        return int(self._process.memory_info().rss)

    def _sample(self) -> None:
        while not self._done.wait(self._interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = self._rss()
        self._sampler.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._sampler.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def run_json(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> Any:
    """Run a child that prints one JSON document as its last stdout line; fail loudly otherwise."""
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, env=env or child_env(), cwd=ROOT, timeout=timeout, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def adapter_file(size: int) -> tuple[Path, str]:
    """A sparse ``adapter_model.safetensors`` of exactly ``size`` bytes and its sha256 (made once per size)."""
    from airflow_provider_cfai.adapter_factory import write_lora_adapter

    folder = WORK / f"adapter-{size}"
    path = folder / "adapter_model.safetensors"
    digest_file = folder / "sha256"
    if not (path.exists() and path.stat().st_size == size and digest_file.exists()):
        write_lora_adapter(folder, weights_bytes=size, sparse=True)
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(4 * MIB):
                digest.update(chunk)
        digest_file.write_text(digest.hexdigest())
    return path, digest_file.read_text().strip()


def check_asset(emulator: Any, finetune_id: str, file_name: str, size: int, sha256: str) -> None:
    """Raise unless the emulator stored exactly this file for this finetune."""
    (finetune,) = [f for f in emulator.finetunes() if f["id"] == finetune_id]
    stored = finetune.get("assets", {}).get(file_name)
    expected = {"size": size, "sha256": sha256}
    if stored is None or {k: stored.get(k) for k in expected} != expected:
        raise RuntimeError(f"emulator holds {stored!r} for {finetune_id}/{file_name}, expected {expected}")


# -- report ------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def machine_header(command: str, mode: str) -> str:
    import psutil

    ram = psutil.virtual_memory().total / 2**30
    versions = ", ".join(
        f"{name} {_version(dist)}"
        for name, dist in (
            ("Airflow", "apache-airflow"),
            ("requests", "requests"),
            ("cloudflare SDK", "cloudflare"),
            ("airflow-provider-cfai", "airflow-provider-cfai"),
        )
    )
    return "\n".join(
        [
            f"# Benchmark results ({mode})",
            "",
            f"- Machine: {_cpu_model()}, {os.cpu_count()} cores, {ram:.1f} GiB RAM ({platform.platform()})",
            f"- Python {platform.python_version()}, {versions}",
            f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Command: `{command}`",
            "- Medians; every figure is measured beside its anchor in the same run (interleaved A/B rounds).",
        ]
    )
