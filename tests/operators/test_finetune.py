"""CreateFinetuneOperator / UploadFinetuneAssetsOperator: validation, reuse vs fail, XCom value."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cfai.adapter_factory import write_lora_adapter
from airflow_provider_cfai.exceptions import (
    AirflowFailException,
    CloudflareInputError,
    FinetuneConflictError,
)
from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator, UploadFinetuneAssetsOperator

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
OTHER_MODEL = "@cf/google/gemma-7b-it-lora"


def create(**kwargs: Any) -> CreateFinetuneOperator:
    kwargs.setdefault("task_id", "create")
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("finetune_name", "bot")
    return CreateFinetuneOperator(**kwargs)


def test_execute_returns_the_new_finetune_id_as_plain_str(emulator: Any) -> None:
    finetune_id = create().execute(context={})

    assert type(finetune_id) is str
    assert uuid.UUID(finetune_id)
    assert [f["id"] for f in emulator.finetunes()] == [finetune_id]


def test_reuse_returns_the_existing_id_without_creating(emulator: Any) -> None:
    first = create().execute(context={})
    second = create(if_exists="reuse").execute(context={})

    assert second == first
    assert len(emulator.finetunes()) == 1


def test_fail_refuses_an_existing_name(emulator: Any) -> None:
    first = create().execute(context={})

    with pytest.raises(FinetuneConflictError, match="already exists") as caught:
        create(if_exists="fail").execute(context={})

    assert first in str(caught.value)
    assert isinstance(caught.value, AirflowFailException)
    assert len(emulator.finetunes()) == 1


@pytest.mark.parametrize("if_exists", ["reuse", "fail"])
def test_same_name_with_another_model_is_an_error(emulator: Any, if_exists: str) -> None:
    create().execute(context={})

    with pytest.raises(FinetuneConflictError, match="with model"):
        create(model=OTHER_MODEL, if_exists=if_exists).execute(context={})

    assert len(emulator.finetunes()) == 1


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"model": ""}, "model must be a non-empty string", id="empty-model"),
        pytest.param({"model": "   "}, "model must be a non-empty string", id="blank-model"),
        pytest.param({"finetune_name": ""}, "finetune_name must be a non-empty string", id="empty-name"),
        pytest.param({"finetune_name": " \t"}, "finetune_name must be a non-empty string", id="blank-name"),
        pytest.param({"finetune_name": None}, "finetune_name must be a non-empty string", id="none-name"),
        pytest.param({"if_exists": "replace"}, "if_exists must be one of 'reuse', 'fail'", id="bad-if-exists"),
    ],
)
def test_invalid_arguments_are_rejected_at_dag_parse(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(CloudflareInputError, match=expected):
        create(**kwargs)


def test_templated_arguments_are_checked_again_after_rendering(emulator: Any) -> None:
    operator = create(finetune_name="{{ params.name }}")
    operator.finetune_name = "  "  # what a template rendering to blanks leaves behind

    with pytest.raises(CloudflareInputError, match="finetune_name"):
        operator.execute(context={})

    assert emulator.state()["requests"] == []


def test_names_ids_models_and_paths_are_template_fields_and_knobs_are_not() -> None:
    assert set(CreateFinetuneOperator.template_fields) == {
        "model",
        "finetune_name",
        "description",
        "adapter",
        "model_type",
        "account_id",
        "cloudflare_conn_id",
    }
    assert set(UploadFinetuneAssetsOperator.template_fields) == {
        "finetune_id",
        "adapter",
        "account_id",
        "cloudflare_conn_id",
    }


def test_constructor_does_no_connection_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT", raising=False)

    operator = create(cloudflare_conn_id="does_not_exist")

    assert "hook" not in operator.__dict__


def test_adapter_is_validated_and_uploaded_after_create(emulator: Any, tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path / "adapter")

    finetune_id = create(adapter=str(folder)).execute(context={})

    (held,) = emulator.finetunes()
    assert held["id"] == finetune_id
    assert set(held["assets"]) == {"adapter_config.json", "adapter_model.safetensors"}
    expected_size = (folder / "adapter_model.safetensors").stat().st_size
    assert held["assets"]["adapter_model.safetensors"]["size"] == expected_size


def test_invalid_adapter_fails_before_any_api_call(emulator: Any, tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path / "adapter", rank=64)

    with pytest.raises(CloudflareInputError, match="r"):
        create(adapter=str(folder)).execute(context={})

    assert emulator.state()["requests"] == []


def test_failed_upload_names_the_finetune_and_a_rerun_completes_it(emulator: Any, tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path / "adapter")
    rule = emulator.add_fault(
        method="POST",
        path=r".*/finetune-assets/?$",
        times=1,
        status=400,
        body={
            "success": False,
            "errors": [{"code": 1, "message": "upload refused"}],
            "messages": [],
            "result": None,
        },
    )

    with pytest.raises(AirflowFailException) as caught:
        create(adapter=str(folder)).execute(context={})
    assert emulator.fired(rule) == 1
    (held,) = emulator.finetunes()
    assert held["id"] in str(caught.value)
    assert "bot" in str(caught.value)
    assert "upload refused" in str(caught.value)

    assert create(adapter=str(folder)).execute(context={}) == held["id"]
    (held,) = emulator.finetunes()
    assert set(held["assets"]) == {"adapter_config.json", "adapter_model.safetensors"}


def test_upload_operator_uploads_to_existing_finetune(emulator: Any, tmp_path: Path) -> None:
    finetune_id = create().execute(context={})
    folder = write_lora_adapter(tmp_path / "adapter")

    result = UploadFinetuneAssetsOperator(task_id="upload", finetune_id=finetune_id, adapter=str(folder)).execute(
        context={}
    )

    assert result == finetune_id
    assert set(emulator.finetunes()[0]["assets"]) == {"adapter_config.json", "adapter_model.safetensors"}


def calls(emulator: Any) -> list[tuple[str, str]]:
    """(method, path) of every API call the emulator saw, paths without the account prefix."""
    return [(r["method"], r["path"].split("/ai/", 1)[-1].rstrip("/")) for r in emulator.state()["requests"]]


def test_upload_operator_given_a_name_uploads_to_and_returns_the_id(emulator: Any, tmp_path: Path) -> None:
    finetune_id = create(finetune_name="support-bot").execute(context={})
    folder = write_lora_adapter(tmp_path / "adapter")
    before = len(emulator.state()["requests"])

    result = UploadFinetuneAssetsOperator(task_id="upload", finetune_id="support-bot", adapter=str(folder)).execute(
        context={}
    )

    assert result == finetune_id
    (held,) = emulator.finetunes()
    assert set(held["assets"]) == {"adapter_config.json", "adapter_model.safetensors"}
    made = calls(emulator)[before:]
    assert made.count(("GET", "finetunes")) == 1  # one lookup resolves the name
    assert made.count(("POST", f"finetunes/{finetune_id}/finetune-assets")) == 2  # uploads go to the ID


def test_upload_operator_with_an_unknown_finetune_fails_before_any_upload(emulator: Any, tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path / "adapter")

    with pytest.raises(CloudflareInputError) as caught:
        UploadFinetuneAssetsOperator(task_id="upload", finetune_id="ghost-bot", adapter=str(folder)).execute(context={})

    assert isinstance(caught.value, AirflowFailException)
    assert "'ghost-bot'" in str(caught.value)
    assert emulator.account_id in str(caught.value)
    assert calls(emulator) == [("GET", "finetunes")]


def test_upload_operator_validates_the_adapter_before_looking_up_the_finetune(emulator: Any, tmp_path: Path) -> None:
    create().execute(context={})
    folder = write_lora_adapter(tmp_path / "adapter", rank=64)
    before = len(emulator.state()["requests"])

    with pytest.raises(CloudflareInputError, match="r"):
        UploadFinetuneAssetsOperator(task_id="upload", finetune_id="bot", adapter=str(folder)).execute(context={})

    assert len(emulator.state()["requests"]) == before
