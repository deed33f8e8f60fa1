"""WorkersAIRunOperator: returns Cloudflare's result, validates inputs, surfaces LoRA errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cfai.adapter_factory import write_lora_adapter
from airflow_provider_cfai.exceptions import AirflowFailException, CloudflareInputError, CloudflarePermanentAPIError
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
def test_non_mapping_inputs_are_rejected_at_parse_naming_the_task(inputs: Any) -> None:
    with pytest.raises(CloudflareInputError, match="inputs must be a mapping such as") as caught:
        WorkersAIRunOperator(task_id="smoke_test", model=MODEL, inputs=inputs)

    assert "'smoke_test'" in str(caught.value)
    assert "{'prompt': '...'}" in str(caught.value)


def test_inputs_rendered_to_a_string_fail_before_any_call_naming_the_task(emulator: Any) -> None:
    operator = WorkersAIRunOperator(task_id="smoke_test", model=MODEL, inputs="{{ params.inputs }}")
    operator.inputs = "hello"  # what the template rendered to

    with pytest.raises(CloudflareInputError, match="'smoke_test': inputs must be a mapping"):
        operator.execute(context={})

    assert emulator.state()["requests"] == []


BAD_LORAS = [
    pytest.param(12345, id="int"),
    pytest.param({"id": "x"}, id="dict"),
    pytest.param(["x"], id="list"),
    pytest.param("", id="empty"),
    pytest.param("  ", id="blank"),
    pytest.param(True, id="bool"),
]


@pytest.mark.parametrize("lora", BAD_LORAS)
def test_a_lora_that_is_not_a_non_empty_string_is_rejected_at_parse(lora: Any) -> None:
    with pytest.raises(CloudflareInputError, match="lora must be a finetune ID or name") as caught:
        WorkersAIRunOperator(task_id="smoke_test", model=MODEL, inputs={"prompt": "hi"}, lora=lora)

    assert isinstance(caught.value, AirflowFailException)
    assert "'smoke_test'" in str(caught.value)
    assert "lora=create.output" in str(caught.value)


@pytest.mark.parametrize("lora", BAD_LORAS)
def test_a_lora_rendered_to_a_non_string_fails_instead_of_running_the_base_model(emulator: Any, lora: Any) -> None:
    operator = WorkersAIRunOperator(
        task_id="smoke_test", model=MODEL, inputs={"prompt": "hi"}, lora="{{ ti.xcom_pull('create') }}"
    )
    operator.lora = lora  # what the template or XComArg resolved to

    with pytest.raises(CloudflareInputError, match="lora must be a finetune ID or name"):
        operator.execute(context={})

    assert emulator.state()["requests"] == []  # the base model was not run


def test_a_lora_with_surrounding_blanks_is_used_stripped(emulator: Any, tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path / "a")
    finetune_id = CreateFinetuneOperator(task_id="c", model=MODEL, finetune_name="tuned", adapter=str(folder)).execute(
        context={}
    )

    assert run(lora=f"  {finetune_id}\n") == run(lora=finetune_id)


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
