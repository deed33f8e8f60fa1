"""prepare_adapter: raw PEFT ``save_pretrained`` output made acceptable to Cloudflare, source untouched."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from peft_output import PEFT_CONFIG_KEYS, tensor_names, write_peft_output

from airflow_provider_cfai.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter, prepare_adapter
from airflow_provider_cfai.exceptions import AdapterValidationError

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def served_config(adapter: Any) -> dict[str, Any]:
    with adapter.config.open() as fh:
        config: dict[str, Any] = json.loads(fh.read())
    return config


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return write_peft_output(tmp_path / "peft")


def test_the_raw_folder_is_shaped_like_peft_output(raw: Path) -> None:
    config = json.loads((raw / ADAPTER_CONFIG).read_text())

    assert tuple(sorted(config)) == PEFT_CONFIG_KEYS
    assert "model_type" not in config
    assert (config["peft_type"], config["task_type"]) == ("LORA", "CAUSAL_LM")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in tensor_names(raw / ADAPTER_WEIGHTS)


def test_without_preparing_the_raw_folder_fails_with_a_hint(raw: Path) -> None:
    with pytest.raises(AdapterValidationError) as caught:
        load_adapter(raw)

    message = str(caught.value)
    assert caught.value.field == "model_type"
    assert '"mistral" for base model mistralai/Mistral-7B-Instruct-v0.2' in message
    assert "prepare_adapter=True" in message


@pytest.mark.parametrize(
    ("base_model", "expected"),
    [
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistral"),
        ("google/gemma-7b-it", "gemma"),
        ("meta-llama/Llama-2-7b-chat-hf", "llama"),
    ],
)
def test_model_type_is_inferred_from_the_base_model_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, base_model: str, expected: str
) -> None:
    caplog.set_level(logging.INFO, logger="airflow_provider_cfai.adapters")
    folder = write_peft_output(tmp_path / "peft", base_model=base_model)

    adapter = prepare_adapter(folder)

    assert adapter.model_type == expected
    assert served_config(adapter)["model_type"] == expected
    assert f"using '{expected}', inferred from base_model_name_or_path '{base_model}'" in caplog.text


def test_the_source_folder_is_left_untouched_and_the_weights_are_not_copied(raw: Path) -> None:
    before = snapshot(raw)

    adapter = prepare_adapter(raw)

    assert snapshot(raw) == before
    assert adapter.weights.path == str(raw / ADAPTER_WEIGHTS)  # streamed from the source at upload
    original = json.loads((raw / ADAPTER_CONFIG).read_text())
    assert served_config(adapter) == {**original, "model_type": "mistral"}
    assert adapter.config.size == len(json.dumps(served_config(adapter), indent=2)) + 1


def test_in_place_writes_model_type_into_the_folder(raw: Path) -> None:
    weights_before = (raw / ADAPTER_WEIGHTS).read_bytes()

    adapter = prepare_adapter(raw, in_place=True)

    assert json.loads((raw / ADAPTER_CONFIG).read_text())["model_type"] == "mistral"
    assert (raw / ADAPTER_WEIGHTS).read_bytes() == weights_before
    assert adapter.config.path == str(raw / ADAPTER_CONFIG)
    assert load_adapter(raw).model_type == "mistral"


def test_an_explicit_model_type_is_used_where_the_base_model_names_no_family(tmp_path: Path) -> None:
    folder = write_peft_output(tmp_path / "peft", base_model="./checkpoints/run-7")

    assert prepare_adapter(folder, model_type="gemma").model_type == "gemma"


@pytest.mark.parametrize("base_model", ["./checkpoints/run-7", "someone/llama-mistral-merge"], ids=["none", "two"])
def test_a_base_model_naming_no_single_family_asks_for_model_type(tmp_path: Path, base_model: str) -> None:
    folder = write_peft_output(tmp_path / "peft", base_model=base_model)

    with pytest.raises(AdapterValidationError, match=r'pass model_type="gemma"\|"llama"\|"mistral"'):
        prepare_adapter(folder)


def test_an_unsupported_explicit_model_type_is_refused(raw: Path) -> None:
    with pytest.raises(AdapterValidationError, match=r'"qwen" \(string\) is not supported'):
        prepare_adapter(raw, model_type="qwen")


def test_a_complete_adapter_is_served_from_its_own_files(tmp_path: Path) -> None:
    from airflow_provider_cfai.adapter_factory import write_lora_adapter

    folder = write_lora_adapter(tmp_path / "complete", model_type="llama")

    adapter = prepare_adapter(folder)

    assert adapter.config.path == str(folder / ADAPTER_CONFIG)
    assert adapter.model_type == "llama"


def test_preparing_still_enforces_cloudflares_limits(tmp_path: Path) -> None:
    folder = write_peft_output(tmp_path / "peft", rank=64)

    with pytest.raises(AdapterValidationError, match="rank 64 is above Cloudflare's limit of 32"):
        prepare_adapter(folder)


@pytest.mark.parametrize("load", [load_adapter, prepare_adapter], ids=["load", "prepare"])
def test_pickled_weights_are_refused_with_a_one_line_conversion_hint(raw: Path, load: Any) -> None:
    (raw / ADAPTER_WEIGHTS).rename(raw / "adapter_model.bin")

    with pytest.raises(AdapterValidationError) as caught:
        load(raw)

    message = str(caught.value)
    assert message.startswith("adapter_model.bin: file: ")
    assert "accepts only adapter_model.safetensors" in message
    assert "safe_serialization=True" in message
    assert "save_file(torch.load('adapter_model.bin'), 'adapter_model.safetensors')" in message
    assert "\n" not in message


@pytest.fixture
def memory_copy(raw: Path) -> Iterator[str]:
    fs = fsspec.filesystem("memory")
    root = f"/cfai-peft-{uuid.uuid4().hex}"
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        fs.pipe(f"{root}/adapter/{name}", (raw / name).read_bytes())
    yield f"memory://{root.lstrip('/')}/adapter"
    fs.rm(root, recursive=True)


def test_object_storage_folders_are_prepared_without_writing_to_them(memory_copy: str, raw: Path) -> None:
    fs = fsspec.filesystem("memory")
    config_path = memory_copy.removeprefix("memory://") + f"/{ADAPTER_CONFIG}"

    adapter = prepare_adapter(memory_copy)

    assert adapter.model_type == "mistral"
    assert fs.cat(config_path) == (raw / ADAPTER_CONFIG).read_bytes()
    assert served_config(adapter)["model_type"] == "mistral"


def test_object_storage_folders_can_be_prepared_in_place(memory_copy: str) -> None:
    fs = fsspec.filesystem("memory")

    prepare_adapter(memory_copy, in_place=True)

    path = memory_copy.removeprefix("memory://") + f"/{ADAPTER_CONFIG}"
    assert json.loads(fs.cat(path))["model_type"] == "mistral"


def test_a_prepared_adapter_uploads_the_completed_config_and_the_source_weights(
    hook: Any, emulator: Any, raw: Path
) -> None:
    adapter = prepare_adapter(raw)
    with adapter.config.open() as fh:
        completed = fh.read()
    finetune = hook.create_finetune(MODEL, "peft-raw")

    hook.upload_adapter(finetune["id"], adapter)

    (held,) = emulator.finetunes()
    assets = held["assets"]
    assert assets[ADAPTER_CONFIG]["sha256"] == hashlib.sha256(completed).hexdigest()
    assert assets[ADAPTER_WEIGHTS]["sha256"] == hashlib.sha256((raw / ADAPTER_WEIGHTS).read_bytes()).hexdigest()
    assert b'"model_type": "mistral"' in completed


QWEN_FIX = r"Qwen: .*documents none for Qwen.*Train the adapter from a Mistral, Gemma or Llama base model"


def test_raw_qwen_peft_output_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    folder = write_peft_output(tmp_path / "peft", base_model="Qwen/Qwen2.5-Coder-32B-Instruct")

    with pytest.raises(AdapterValidationError, match=QWEN_FIX):
        prepare_adapter(folder)
    with pytest.raises(AdapterValidationError, match=QWEN_FIX):
        load_adapter(folder)  # without prepare_adapter: the same advice


def test_model_type_qwen_is_refused_saying_what_to_do(raw: Path) -> None:
    from airflow_provider_cfai.exceptions import CloudflareInputError
    from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator

    with pytest.raises(AdapterValidationError, match=QWEN_FIX):
        prepare_adapter(raw, model_type="qwen")
    with pytest.raises(CloudflareInputError, match=r"model_type must be one of .*got 'qwen'\. " + QWEN_FIX):
        CreateFinetuneOperator(
            task_id="c", model="@cf/qwen/qwen2.5-coder-32b-instruct", finetune_name="n", model_type="qwen"
        )
