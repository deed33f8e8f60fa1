"""Bad input fails with a message that names the field and the fix, and leaves nothing behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from connections import connection_json

from airflow_provider_cfai.adapter_factory import write_lora_adapter
from airflow_provider_cfai.exceptions import AirflowFailException, CloudflareAIError
from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook
from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator, UploadFinetuneAssetsOperator
from airflow_provider_cfai.operators.inference import WorkersAIRunOperator

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


def create(tmp: Path, **kwargs: Any) -> str:
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("finetune_name", "bad-input")
    return CreateFinetuneOperator(task_id="create", **kwargs).execute(context={})


def adapter(tmp: Path, **kwargs: Any) -> str:
    return str(write_lora_adapter(tmp / "adapter", **kwargs))


def broken_adapter(tmp: Path, file_name: str, content: bytes | None) -> str:
    folder = Path(adapter(tmp))
    if content is None:
        (folder / file_name).unlink()
    else:
        (folder / file_name).write_bytes(content)
    return str(folder)


def config_with(tmp: Path, **changes: Any) -> str:
    folder = Path(adapter(tmp))
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return str(folder)


def hook_on(monkeypatch: pytest.MonkeyPatch, emulator: Any, **conn: Any) -> CloudflareAIHook:
    monkeypatch.setenv("AIRFLOW_CONN_CFAI_BAD", connection_json(emulator, max_retries=0, **conn))
    return CloudflareAIHook(cloudflare_conn_id="cfai_bad")


def sparse_301mb(tmp: Path) -> str:
    folder = Path(adapter(tmp))
    with open(folder / "adapter_model.safetensors", "r+b") as handle:
        handle.truncate(301_000_000)
    return str(folder)


Case = Callable[[Path, Any, pytest.MonkeyPatch], Any]

CASES: list[Any] = [
    pytest.param(lambda t, e, m: create(t, model=""), "model must be a non-empty string", id="empty-model"),
    pytest.param(lambda t, e, m: create(t, finetune_name="   "), "finetune_name must be a non-empty", id="blank-name"),
    pytest.param(lambda t, e, m: create(t, if_exists="overwrite"), "if_exists must be one of", id="bad-if-exists"),
    pytest.param(lambda t, e, m: create(t, adapter=str(t / "nowhere")), "location: does not exist", id="no-folder"),
    pytest.param(
        lambda t, e, m: create(t, adapter=broken_adapter(t, "adapter_config.json", None)),
        "adapter_config.json: file: not found",
        id="missing-config",
    ),
    pytest.param(
        lambda t, e, m: create(t, adapter=broken_adapter(t, "adapter_model.safetensors", None)),
        "adapter_model.safetensors: file: not found",
        id="missing-weights",
    ),
    pytest.param(
        lambda t, e, m: create(t, adapter=broken_adapter(t, "adapter_config.json", b"{not json")),
        "adapter_config.json: ",
        id="bad-json",
    ),
    pytest.param(lambda t, e, m: create(t, adapter=config_with(t, r=64)), "r: rank 64 is above", id="rank-64"),
    pytest.param(lambda t, e, m: create(t, adapter=config_with(t, r=0)), "adapter_config.json: r:", id="rank-0"),
    pytest.param(
        lambda t, e, m: create(t, adapter=config_with(t, model_type="gpt2")),
        "adapter_config.json: model_type:",
        id="unknown-model-type",
    ),
    pytest.param(
        lambda t, e, m: create(t, adapter=broken_adapter(t, "adapter_model.safetensors", b"garbage" * 100)),
        "adapter_model.safetensors: ",
        id="garbage-safetensors",
    ),
    pytest.param(
        lambda t, e, m: create(t, adapter=broken_adapter(t, "adapter_model.safetensors", b"")),
        "adapter_model.safetensors: ",
        id="empty-safetensors",
    ),
    pytest.param(lambda t, e, m: create(t, adapter=sparse_301mb(t)), "above Cloudflare's limit", id="301MB-file"),
    pytest.param(lambda t, e, m: hook_on(m, e, login="").list_finetunes(), "no account ID", id="conn-no-account"),
    pytest.param(
        lambda t, e, m: hook_on(m, e, password="").list_finetunes(), "no credentials", id="conn-no-credentials"
    ),
    pytest.param(
        lambda t, e, m: hook_on(m, e, host="http//127.0.0.1:1/x").list_finetunes(),
        "not a valid API base URL",
        id="conn-malformed-host",
    ),
    pytest.param(
        lambda t, e, m: hook_on(m, e, password="wrong-token").create_finetune(MODEL, "x"),
        r"HTTP 401: \[10000\]",
        id="wrong-token",
    ),
    pytest.param(
        lambda t, e, m: hook_on(m, e).upload_finetune_asset("x", "../../etc/passwd", __file__),
        "file_name must be one of",
        id="path-traversal-file-name",
    ),
    pytest.param(
        lambda t, e, m: WorkersAIRunOperator(task_id="r", model=MODEL, inputs={"prompt": "x"}, lora="ghost").execute(
            {}
        ),
        r"\[3037\]",
        id="unknown-lora",
    ),
    pytest.param(
        lambda t, e, m: WorkersAIRunOperator(task_id="r", model=MODEL, inputs=["prompt"]),
        "inputs must be a mapping",
        id="non-mapping-inputs",
    ),
    pytest.param(
        lambda t, e, m: create(t, finetune_name="existing", if_exists="fail"),
        "already exists",
        id="if-exists-fail-on-existing",
    ),
    pytest.param(
        lambda t, e, m: create(t, finetune_name="existing", model="@cf/google/gemma-7b-it-lora"),
        "already exists with model",
        id="existing-name-other-model",
    ),
    pytest.param(
        lambda t, e, m: UploadFinetuneAssetsOperator(task_id="u", finetune_id="", adapter="x"),
        "finetune_id must be a non-empty string",
        id="upload-empty-finetune-id",
    ),
    pytest.param(
        lambda t, e, m: create(t, account_id="not-an-account"), "not 32 hexadecimal characters", id="bad-account-arg"
    ),
]


def snapshot(emulator: Any) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(f["id"], f["name"], tuple(sorted(f.get("assets", {})))) for f in emulator.finetunes()]


@pytest.mark.parametrize(("action", "expected"), CASES)
def test_bad_input_fails_clearly_and_changes_nothing(
    action: Case, expected: str, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(tmp_path, finetune_name="existing")
    before = snapshot(emulator)

    with pytest.raises(CloudflareAIError, match=expected) as caught:
        action(tmp_path, emulator, monkeypatch)

    assert isinstance(caught.value, AirflowFailException), "bad input must not burn Airflow retries"
    assert emulator.token not in str(caught.value)
    assert snapshot(emulator) == before


def test_the_table_has_at_least_twenty_rows() -> None:
    assert len(CASES) >= 20
