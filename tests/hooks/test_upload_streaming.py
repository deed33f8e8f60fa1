"""Uploads stream: a large adapter arrives intact while the client's memory stays flat."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cfai.adapter_factory import write_lora_adapter

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
MIB = 2**20

# Runs in a fresh process so its peak RSS is the upload's alone.
CHILD = """
import json, os, resource, sys
from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook
hook = CloudflareAIHook("cfai_stream")
hook.session  # connection, imports and pool ready before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
hook.upload_finetune_asset(sys.argv[1], "adapter_model.safetensors", sys.argv[2])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kib": after - before}))
"""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.slow
def test_large_sparse_adapter_streams_intact_with_flat_memory(
    hook: Any, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 160 * MIB
    folder = write_lora_adapter(tmp_path / "big", weights_bytes=size, sparse=True)
    weights = folder / "adapter_model.safetensors"
    finetune = hook.create_finetune(MODEL, "big")
    monkeypatch.setenv("AIRFLOW_CONN_CFAI_STREAM", emulator.connection_json())

    child = subprocess.run(
        [sys.executable, "-c", CHILD, finetune["id"], str(weights)], capture_output=True, text=True, check=False
    )

    assert child.returncode == 0, child.stderr[-2000:]
    growth_mib = json.loads(child.stdout.strip().splitlines()[-1])["growth_kib"] / 1024
    (held,) = emulator.finetunes()
    asset = held["assets"]["adapter_model.safetensors"]
    assert asset["size"] == size
    assert asset["sha256"] == sha256_of(weights)
    assert growth_mib < 32, f"peak RSS grew by {growth_mib:.1f} MiB for a {size // MIB} MiB upload"


def test_upload_progress_is_logged_at_most_every_ten_percent(
    hook: Any, emulator: Any, tmp_path: Path, read_logs: Any
) -> None:
    folder = write_lora_adapter(tmp_path / "mid", weights_bytes=24 * MIB, sparse=True)
    finetune = hook.create_finetune(MODEL, "mid")

    hook.upload_adapter(finetune["id"], str(folder))

    progress = [line for line in read_logs().splitlines() if "% uploaded" in line]
    assert 1 <= len(progress) <= 10
    assert "100% uploaded" in progress[-1]


def test_legacy_upload_answer_is_accepted(hook: Any, emulator: Any, tmp_path: Path) -> None:
    emulator.configure(upload_response="legacy")
    folder = write_lora_adapter(tmp_path / "a")
    finetune = hook.create_finetune(MODEL, "legacy")

    result = hook.upload_finetune_asset(finetune["id"], "adapter_config.json", folder / "adapter_config.json")

    assert result is not None
    assert result["file_name"] == "adapter_config.json"


def test_second_upload_refused_as_conflict_counts_as_done(hook: Any, emulator: Any, tmp_path: Path) -> None:
    emulator.configure(asset_overwrite="reject")
    folder = write_lora_adapter(tmp_path / "a")
    finetune = hook.create_finetune(MODEL, "twice")
    hook.upload_adapter(finetune["id"], str(folder))

    hook.upload_adapter(finetune["id"], str(folder))

    (held,) = emulator.finetunes()
    assert set(held["assets"]) == {"adapter_config.json", "adapter_model.safetensors"}


def test_upload_by_finetune_name(hook: Any, emulator: Any, tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path / "a")
    hook.create_finetune(MODEL, "by-name")

    hook.upload_adapter("by-name", str(folder))

    assert set(emulator.finetunes()[0]["assets"]) == {"adapter_config.json", "adapter_model.safetensors"}


def test_public_finetunes_page_until_a_short_page(hook: Any, emulator: Any) -> None:
    first_page = hook.list_public_finetunes(limit=20, offset=0)
    everything = list(hook.iter_public_finetunes(page_size=20))

    assert len(first_page) == 20
    assert len(everything) == 45  # the emulator's seeded public finetunes
    assert len({f["id"] for f in everything}) == 45
    assert all(f["public"] and f["name"].startswith("cf-public-") for f in everything)
    pages = [r for r in emulator.state()["requests"] if r["path"].rstrip("/").endswith("/finetunes/public")]
    assert len(pages) == 1 + 3  # one direct call, then 20 + 20 + 5


@pytest.mark.parametrize("kind", ["memory-url", "object-storage-path"])
def test_adapter_in_object_storage_uploads_the_same_bytes(hook: Any, emulator: Any, tmp_path: Path, kind: str) -> None:
    import fsspec
    from airflow.sdk import ObjectStoragePath

    local = write_lora_adapter(tmp_path / "a")
    memory = fsspec.filesystem("memory")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        memory.pipe(f"/{kind}/{name}", (local / name).read_bytes())
    # Airflow's ObjectStoragePath knows only the schemes providers register; file:// is built in.
    source = f"memory://{kind}" if kind == "memory-url" else ObjectStoragePath(f"file://{local}")
    finetune = hook.create_finetune(MODEL, kind)

    hook.upload_adapter(finetune["id"], source)

    assets = emulator.finetunes()[0]["assets"]
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert assets[name]["sha256"] == hashlib.sha256((local / name).read_bytes()).hexdigest()
