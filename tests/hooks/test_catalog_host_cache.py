"""The model catalog outlives a task: one read per host and TTL, whatever the number of processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cfai.exceptions import CloudflareAuthError
from airflow_provider_cfai.hooks import _catalog

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


def catalog_reads(emulator: Any) -> int:
    return sum(1 for r in emulator.state()["requests"] if r["path"].endswith("/ai/models/search"))


def test_tasks_in_separate_processes_read_the_catalog_once(emulator: Any, tmp_path: Path) -> None:
    # Three "tasks", each a fresh interpreter as Airflow 3 runs them, on one host.
    env = {**os.environ, "AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT": emulator.connection_json()}
    code = (
        "from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook\n"
        f"assert CloudflareAIHook().get_model({MODEL!r}) is not None\n"
    )
    for _ in range(3):
        subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=120)

    assert catalog_reads(emulator) == 1


def test_a_stale_or_damaged_file_is_read_again(emulator: Any, hook: Any) -> None:
    hook.get_model(MODEL)
    (stored,) = _catalog._host_directory().glob("catalog-*.json")
    fresh = json.loads(stored.read_text())

    _catalog.CACHE.clear()  # a new process: nothing in memory
    hook.get_model(MODEL)
    assert catalog_reads(emulator) == 1  # served from the host's file

    stored.write_text(stored.read_text()[:-20])
    _catalog.CACHE.clear()
    hook.get_model(MODEL)
    assert catalog_reads(emulator) == 2  # a damaged file means "not cached"

    stored.write_text(json.dumps({**fresh, "stored_at": time.time() - _catalog.CACHE_TTL - 1}))
    _catalog.CACHE.clear()
    hook.get_model(MODEL)
    assert catalog_reads(emulator) == 3  # older than the TTL


def test_a_failed_read_is_not_shared_with_other_processes(emulator: Any, hook: Any) -> None:
    rule = emulator.add_fault(method="GET", path=r"/ai/models/search$", times=10, status=403)

    with pytest.raises(CloudflareAuthError):
        hook.list_cached_models()

    assert emulator.fired(rule) == 1
    assert list(_catalog._host_directory().glob("catalog-*.json")) == []
