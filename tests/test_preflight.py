"""Pre-flight checks of CreateFinetuneOperator, against the emulator: nothing permanent before they pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from emulator_requests import calls, fill
from peft_output import write_peft_output

from airflow_provider_cfai.adapter_factory import write_lora_adapter
from airflow_provider_cfai.exceptions import AdapterValidationError, CloudflareInputError, PreflightCheckError
from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator

MISTRAL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
GEMMA = "@cf/google/gemma-7b-it-lora"
NO_LORA = "@cf/meta/llama-3.1-8b-instruct"
QWEN = "@cf/qwen/qwen2.5-coder-32b-instruct"
FINETUNES_ROUTE = "/accounts/{account_id}/ai/finetunes"
SEARCH_ROUTE = "/accounts/{account_id}/ai/models/search"


def create(**kwargs: Any) -> str:
    kwargs.setdefault("task_id", "create")
    kwargs.setdefault("model", MISTRAL)
    kwargs.setdefault("finetune_name", "bot")
    return str(CreateFinetuneOperator(**kwargs).execute(context={}))


def operator_creates(emulator: Any, before: int) -> int:
    return len(calls(emulator, "POST", FINETUNES_ROUTE)) - before


# -- the model -------------------------------------------------------------------------------------


def test_a_gemma_adapter_on_a_mistral_model_fails_before_the_create(emulator: Any, tmp_path: Path) -> None:
    adapter = write_lora_adapter(tmp_path / "adapter", model_type="gemma")

    with pytest.raises(PreflightCheckError) as caught:
        create(adapter=str(adapter))

    message = str(caught.value)
    assert "gemma adapter" in message
    assert f"{MISTRAL} is a mistral model" in message
    assert GEMMA in message  # the fix: a base model of the adapter's family
    assert calls(emulator, "POST", FINETUNES_ROUTE) == []
    assert emulator.finetunes() == []


def test_an_adapter_of_the_models_family_is_created_and_uploaded(emulator: Any, tmp_path: Path) -> None:
    adapter = write_lora_adapter(tmp_path / "adapter", model_type="gemma")

    finetune_id = create(model=GEMMA, adapter=str(adapter))

    (held,) = emulator.finetunes()
    assert held["id"] == finetune_id
    assert len(held["assets"]) == 2


def test_a_model_without_lora_fails_before_the_create_listing_lora_models(emulator: Any) -> None:
    with pytest.raises(PreflightCheckError) as caught:
        create(model=NO_LORA)

    message = str(caught.value)
    assert f"Model {NO_LORA!r} does not accept LoRA adapters" in message
    assert MISTRAL in message
    assert GEMMA in message
    assert NO_LORA + "," not in message
    assert calls(emulator, "POST", FINETUNES_ROUTE) == []


def test_an_unknown_model_fails_before_the_create_after_one_fresh_search(emulator: Any) -> None:
    with pytest.raises(PreflightCheckError, match="is not in this account's Workers AI catalog"):
        create(model="@cf/mistral/mistral-8b-imaginary-lora")

    assert len(calls(emulator, "GET", SEARCH_ROUTE)) == 2  # the cached catalog, then a search for it
    assert calls(emulator, "POST", FINETUNES_ROUTE) == []


def test_a_model_added_after_the_catalog_was_cached_is_found(emulator: Any) -> None:
    create(finetune_name="first")  # caches the catalog
    emulator.configure(lora_models=[MISTRAL, "@cf/acme/brand-new-lora"])

    create(model="@cf/acme/brand-new-lora", finetune_name="second")

    assert {f["model"] for f in emulator.finetunes()} == {MISTRAL, "@cf/acme/brand-new-lora"}


def test_a_model_of_unknown_family_is_a_warning_not_a_block(emulator: Any, tmp_path: Path, read_logs: Any) -> None:
    adapter = write_lora_adapter(tmp_path / "adapter", model_type="llama")

    create(model=QWEN, adapter=str(adapter))

    assert len(emulator.finetunes()) == 1
    assert f"Cannot tell the family (mistral, gemma or llama) of {QWEN}" in read_logs()


# -- the account's room ----------------------------------------------------------------------------


def test_a_full_account_fails_before_the_create(emulator: Any) -> None:
    fill(emulator, 100)
    before = len(calls(emulator, "POST", FINETUNES_ROUTE))

    with pytest.raises(PreflightCheckError) as caught:
        create(finetune_name="one-too-many")

    message = str(caught.value)
    assert "already has 100 finetunes, its limit of 100" in message
    assert "'one-too-many'" in message
    assert "if_exists='reuse'" in message
    assert operator_creates(emulator, before) == 0


def test_a_full_account_still_reuses_an_existing_finetune(emulator: Any) -> None:
    fill(emulator, 100)
    existing = next(f for f in emulator.finetunes() if f["name"] == "old-7")

    assert create(finetune_name="old-7") == existing["id"]


def test_ninety_percent_full_warns_and_creates(emulator: Any, read_logs: Any) -> None:
    fill(emulator, 90)

    create(finetune_name="number-91")

    assert len(emulator.finetunes()) == 91
    assert "The account holds 90 of its 100 finetunes (90%)" in read_logs()


def test_below_ninety_percent_there_is_no_warning(emulator: Any, read_logs: Any) -> None:
    fill(emulator, 89)

    create(finetune_name="number-90")

    assert "finetunes (" not in read_logs()


def test_the_limit_is_configurable(emulator: Any) -> None:
    fill(emulator, 5)

    with pytest.raises(PreflightCheckError, match="limit of 5"):
        create(finetune_name="sixth", max_finetunes=5)


def test_the_finetunes_are_listed_once_per_create(emulator: Any) -> None:
    create()

    assert len(calls(emulator, "GET", FINETUNES_ROUTE)) == 1


# -- a catalog that cannot be read -----------------------------------------------------------------


def test_a_catalog_without_permission_is_a_warning_and_the_create_proceeds(emulator: Any, read_logs: Any) -> None:
    emulator.add_fault(
        method="GET",
        path=r"/ai/models/search$",
        status=403,
        body={"success": False, "errors": [{"code": 10000, "message": "Authentication error"}], "result": None},
        times=5,
    )

    create()

    assert [r["fault"] for r in calls(emulator, "GET", SEARCH_ROUTE)] == ["respond"]
    assert len(emulator.finetunes()) == 1
    assert "Could not read the Workers AI model catalog" in read_logs()


def test_a_catalog_outage_after_the_hooks_retries_is_a_warning(
    emulator: Any, read_logs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT", emulator.connection_json(max_retries=1, retry_budget=5))
    emulator.add_fault(method="GET", path=r"/ai/models/search$", status=503, times=2)

    create()

    assert [r["fault"] for r in calls(emulator, "GET", SEARCH_ROUTE)] == ["respond", "respond"]
    assert len(emulator.finetunes()) == 1
    assert "HTTP 503" in read_logs()


def test_the_family_is_checked_from_the_name_when_the_catalog_is_unreadable(emulator: Any, tmp_path: Path) -> None:
    rule = emulator.add_fault(method="GET", path=r"/ai/models/search$", status=403, times=5)
    adapter = write_lora_adapter(tmp_path / "adapter", model_type="gemma")

    with pytest.raises(PreflightCheckError, match="is a mistral model"):
        create(adapter=str(adapter))

    assert emulator.fired(rule) == 1  # the catalog was really unreadable
    assert emulator.finetunes() == []


def test_preflight_false_skips_every_check(emulator: Any, tmp_path: Path) -> None:
    adapter = write_lora_adapter(tmp_path / "adapter", model_type="gemma")

    create(adapter=str(adapter), preflight=False)

    assert calls(emulator, "GET", SEARCH_ROUTE) == []
    assert len(emulator.finetunes()) == 1


# -- raw PEFT output -------------------------------------------------------------------------------


def test_a_raw_peft_folder_registers_with_prepare_adapter(emulator: Any, tmp_path: Path) -> None:
    folder = write_peft_output(tmp_path / "peft")

    create(adapter=str(folder), prepare_adapter=True)

    (held,) = emulator.finetunes()
    assert len(held["assets"]) == 2
    assert "model_type" not in (folder / "adapter_config.json").read_text()


def test_a_raw_peft_folder_without_prepare_adapter_fails_with_a_hint(emulator: Any, tmp_path: Path) -> None:
    folder = write_peft_output(tmp_path / "peft")

    with pytest.raises(AdapterValidationError, match=r"model_type: missing.*prepare_adapter=True"):
        create(adapter=str(folder))

    assert emulator.state()["requests"] == []


def test_model_type_prepares_an_adapter_whose_base_model_names_no_family(emulator: Any, tmp_path: Path) -> None:
    folder = write_peft_output(tmp_path / "peft", base_model="/scratch/checkpoints/run-7")

    create(adapter=str(folder), model_type="mistral")

    assert len(emulator.finetunes()) == 1


def test_a_prepared_adapter_of_another_family_is_still_caught(emulator: Any, tmp_path: Path) -> None:
    folder = write_peft_output(tmp_path / "peft", base_model="google/gemma-7b-it")

    with pytest.raises(PreflightCheckError, match="gemma adapter"):
        create(adapter=str(folder), prepare_adapter=True)

    assert emulator.finetunes() == []


# -- arguments -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, -1, "many", True, 2.5, "{{ params.limit }}"],
    ids=["zero", "negative", "word", "bool", "float", "template"],
)
def test_a_bad_max_finetunes_is_rejected_at_dag_parse(value: object) -> None:
    with pytest.raises(CloudflareInputError, match="max_finetunes must be a whole number >= 1"):
        CreateFinetuneOperator(task_id="c", model=MISTRAL, finetune_name="n", max_finetunes=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "knob",
    [
        pytest.param({"max_finetunes": "{{ params.limit }}"}, id="max_finetunes"),
        pytest.param({"preflight": "{{ params.p }}"}, id="preflight"),
        pytest.param({"preflight": "false"}, id="preflight-string"),
        pytest.param({"public": "{{ params.public }}"}, id="public"),
        pytest.param({"prepare_adapter": 1}, id="prepare_adapter-int"),
        pytest.param({"if_exists": "{{ params.if_exists }}"}, id="if_exists"),
    ],
)
def test_knobs_are_not_templated_and_a_template_in_one_is_rejected_at_dag_parse(knob: dict[str, Any]) -> None:
    (field,) = knob
    assert field not in CreateFinetuneOperator.template_fields

    with pytest.raises(CloudflareInputError, match=field):
        CreateFinetuneOperator(task_id="c", model=MISTRAL, finetune_name="n", **knob)


def test_an_unknown_model_type_is_rejected_at_dag_parse() -> None:
    with pytest.raises(CloudflareInputError, match="model_type must be one of 'mistral', 'gemma', 'llama'"):
        CreateFinetuneOperator(task_id="c", model=MISTRAL, finetune_name="n", model_type="qwen")
