"""End to end: the example DAGs under dag.test() on a migrated SQLite DB, against the emulator."""

from __future__ import annotations

from typing import Any

import pytest
from dag_runner import run_dag, xcom

pytestmark = pytest.mark.e2e


def finetunes_by_name(emulator: Any) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in emulator.finetunes()}


def test_finetune_dag_hands_the_emulators_id_downstream(airflow_db: Any, emulator: Any) -> None:
    run = run_dag("example_cloudflare_finetune")

    assert run.state == "success"
    held = finetunes_by_name(emulator)
    created_id = xcom(run.dag_id, run.run_id, "create_finetune")
    assert created_id == held["support-bot-20260105"]["id"]
    assert xcom(run.dag_id, run.run_id, "announce") == created_id
    assert {"support-bot-en", "support-bot-de", "support-bot-fr"} <= set(held)
    mapped = {xcom(run.dag_id, run.run_id, "create_per_locale", i) for i in range(3)}
    assert mapped == {held[f"support-bot-{lang}"]["id"] for lang in ("en", "de", "fr")}


def test_create_task_stores_its_dashboard_extra_link(airflow_db: Any, emulator: Any) -> None:
    from airflow_provider_cfai.links import CloudflareWorkersAILink

    run = run_dag("example_cloudflare_finetune")

    link = xcom(run.dag_id, run.run_id, "create_finetune", key=CloudflareWorkersAILink().xcom_key)
    assert link == f"https://dash.cloudflare.com/{emulator.account_id}/ai/workers-ai"


def test_rerunning_the_finetune_dag_creates_nothing_new(airflow_db: Any, emulator: Any) -> None:
    first = run_dag("example_cloudflare_finetune")
    first_id = xcom(first.dag_id, first.run_id, "create_finetune")
    count = len(emulator.finetunes())

    second = run_dag("example_cloudflare_finetune")

    assert second.state == "success"
    assert len(emulator.finetunes()) == count == 4
    assert xcom(second.dag_id, second.run_id, "create_finetune") == first_id


def test_lora_pipeline_uploads_both_files_and_smoke_tests_the_finetune(airflow_db: Any, emulator: Any) -> None:
    run = run_dag("example_lora_pipeline")

    assert run.state == "success"
    held = finetunes_by_name(emulator)
    finetune = held["weekly-support-20260105"]
    assert xcom(run.dag_id, run.run_id, "register_finetune") == finetune["id"]
    assert set(finetune["assets"]) == {"adapter_config.json", "adapter_model.safetensors"}
    answer = xcom(run.dag_id, run.run_id, "smoke_test")
    assert "weekly-support-20260105" in answer["response"]
    for lang in ("en", "de"):
        assert set(held[f"weekly-support-{lang}-20260105"]["assets"]) == {
            "adapter_config.json",
            "adapter_model.safetensors",
        }
