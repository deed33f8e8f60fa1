"""WorkersAIRunOperator: returns Cloudflare's result, validates inputs, surfaces LoRA errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cfai.adapter_factory import write_lora_adapter
from airflow_provider_cfai.exceptions import CloudflareInputError, CloudflarePermanentAPIError
from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator
from airflow_provider_cfai.operators.inference import WorkersAIRunOperator

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


def run(**kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("task_id", "run")
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("inputs", {"prompt": "hello"})
    return WorkersAIRunOperator(**kwargs).execute(context={})


def test_returns_result_dict_with_response(emulator: Any) -> None:
    result = run()

    assert isinstance(result["response"], str)
    assert "hello" in result["response"]


def test_with_lora_the_answer_comes_from_the_finetune(emulator: Any, tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path / "a")
    finetune_id = CreateFinetuneOperator(task_id="c", model=MODEL, finetune_name="tuned", adapter=str(folder)).execute(
        context={}
    )

    with_lora, without = run(lora=finetune_id), run()

    assert with_lora != without
    assert "tuned" in with_lora["response"]


@pytest.mark.parametrize("inputs", ["hello", ["prompt"], 3], ids=["str", "list", "int"])
def test_non_mapping_inputs_are_rejected(inputs: Any) -> None:
    with pytest.raises(CloudflareInputError, match="inputs must be a mapping"):
        WorkersAIRunOperator(task_id="run", model=MODEL, inputs=inputs)


def test_unknown_lora_is_a_permanent_error_with_code_3037(emulator: Any) -> None:
    with pytest.raises(CloudflarePermanentAPIError) as caught:
        run(lora="no-such-finetune")

    assert 3037 in caught.value.codes


def test_lora_without_files_is_error_3039(emulator: Any) -> None:
    finetune_id = CreateFinetuneOperator(task_id="c", model=MODEL, finetune_name="empty").execute(context={})

    with pytest.raises(CloudflarePermanentAPIError) as caught:
        run(lora=finetune_id)

    assert caught.value.status == 400
    assert 3039 in caught.value.codes


def test_template_fields_cover_user_arguments() -> None:
    assert set(WorkersAIRunOperator.template_fields) == {
        "model",
        "inputs",
        "lora",
        "account_id",
        "cloudflare_conn_id",
    }
