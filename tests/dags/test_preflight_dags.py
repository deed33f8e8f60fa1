"""Pre-flight checks in real DAG runs (``dag.test()``), against the emulator: nothing permanent on a mistake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dag_runner import run_dag, xcom
from emulator_requests import calls, fill
from peft_output import write_peft_output

from airflow_provider_cfai.adapter_factory import write_lora_adapter

pytestmark = pytest.mark.e2e

MISTRAL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
FINETUNES_ROUTE = "/accounts/{account_id}/ai/finetunes"
SEARCH_ROUTE = "/accounts/{account_id}/ai/models/search"
LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"
DAG_FILE = """
from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator

with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):
    {task}
"""


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dag_id: str, task: str) -> Any:
    """Write a one-task DAG, make it visible to ``dag.test()`` (a DAG bundle), and run it."""
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / f"{dag_id}.py").write_text(DAG_FILE.format(dag_id=dag_id, task=task))
    bundles = [
        {"name": "cfai-preflight-dags", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(folder)}},
        {"name": "dags-folder", "classpath": LOCAL_BUNDLE, "kwargs": {}},
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    return run_dag(dag_id, folder=folder)


def create_task(**kwargs: Any) -> str:
    kwargs.setdefault("model", MISTRAL)
    kwargs.setdefault("finetune_name", "support-bot")
    return f'CreateFinetuneOperator(task_id="create", retries=0, **{kwargs!r})'


def test_newcomers_mistake_fails_before_any_create_naming_both_families(
    airflow_db: Path, emulator: Any, read_logs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = write_lora_adapter(tmp_path / "gemma-adapter", model_type="gemma")

    dag_run = run(tmp_path, monkeypatch, "cfai_preflight_family", create_task(adapter=str(adapter)))

    assert dag_run.state == "failed"
    assert calls(emulator, "POST", FINETUNES_ROUTE) == []
    assert emulator.finetunes() == []
    logs = read_logs()
    assert "PreflightCheckError" in logs
    assert (
        f"The adapter is a gemma adapter (model_type 'gemma' in adapter_config.json) but {MISTRAL} is a mistral model"
        in logs
    )


def test_a_model_without_lora_fails_before_any_create(
    airflow_db: Path, emulator: Any, read_logs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = "@cf/meta/llama-3.1-8b-instruct"

    dag_run = run(tmp_path, monkeypatch, "cfai_preflight_no_lora", create_task(model=model))

    assert dag_run.state == "failed"
    assert calls(emulator, "POST", FINETUNES_ROUTE) == []
    assert f"Model '{model}' does not accept LoRA adapters" in read_logs()


def test_a_full_account_fails_before_any_create(
    airflow_db: Path, emulator: Any, read_logs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(emulator, 100)
    creates_before = len(calls(emulator, "POST", FINETUNES_ROUTE))

    dag_run = run(tmp_path, monkeypatch, "cfai_preflight_full", create_task())

    assert dag_run.state == "failed"
    assert len(calls(emulator, "POST", FINETUNES_ROUTE)) == creates_before == 100
    assert len(emulator.finetunes()) == 100
    assert "The account already has 100 finetunes, its limit of 100" in read_logs()


def test_ninety_finetunes_give_a_warning_and_a_successful_create(
    airflow_db: Path, emulator: Any, read_logs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(emulator, 90)

    dag_run = run(tmp_path, monkeypatch, "cfai_preflight_ninety", create_task())

    assert dag_run.state == "success"
    created = {f["name"]: f["id"] for f in emulator.finetunes()}["support-bot"]
    assert xcom(dag_run.dag_id, dag_run.run_id, "create") == created
    assert "The account holds 90 of its 100 finetunes (90%)" in read_logs()


@pytest.mark.parametrize("prepare", [True, False], ids=["option-on", "option-off"])
def test_raw_peft_output_registers_in_one_task_only_with_prepare_adapter(
    airflow_db: Path,
    emulator: Any,
    read_logs: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prepare: bool,
) -> None:
    folder = write_peft_output(tmp_path / "peft")
    task = create_task(adapter=str(folder), prepare_adapter=prepare)

    dag_run = run(tmp_path, monkeypatch, f"cfai_preflight_peft_{str(prepare).lower()}", task)

    if prepare:
        assert dag_run.state == "success"
        (held,) = emulator.finetunes()
        assert set(held["assets"]) == {"adapter_config.json", "adapter_model.safetensors"}
        assert "inferred from base_model_name_or_path 'mistralai/Mistral-7B-Instruct-v0.2'" in read_logs()
    else:
        assert dag_run.state == "failed"
        assert emulator.state()["requests"] == []
        logs = read_logs()
        assert "adapter_config.json: model_type: missing" in logs
        assert "prepare_adapter=True" in logs


def test_an_unreachable_catalog_is_a_warning_and_the_create_proceeds(
    airflow_db: Path, emulator: Any, read_logs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT", emulator.connection_json(max_retries=0))
    emulator.add_fault(method="GET", path=r"/ai/models/search$", status=503, times=10)

    dag_run = run(tmp_path, monkeypatch, "cfai_preflight_catalog_down", create_task())

    assert dag_run.state == "success"
    assert [r["fault"] for r in calls(emulator, "GET", SEARCH_ROUTE)] == ["respond"]  # the fault fired
    assert len(emulator.finetunes()) == 1
    assert "Could not read the Workers AI model catalog" in read_logs()


def test_a_mapped_create_of_fifty_reads_the_catalog_once(
    airflow_db: Path, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = (
        f'CreateFinetuneOperator.partial(task_id="create", model={MISTRAL!r}, retries=0)'
        '.expand(finetune_name=[f"bot-{n}" for n in range(50)])'
    )

    dag_run = run(tmp_path, monkeypatch, "cfai_preflight_mapped", task)

    assert dag_run.state == "success"
    assert len(emulator.finetunes()) == 50
    assert len(calls(emulator, "GET", SEARCH_ROUTE)) == 1
