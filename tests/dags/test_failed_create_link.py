"""A create that fails inside a real DAG run still stores its dashboard link and logs no XCom error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dag_runner import run_dag, xcom

pytestmark = pytest.mark.e2e

DAG_ID = "cfai_test_failing_create"
DAG_FILE = f"""
from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator

with DAG({DAG_ID!r}, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):
    CreateFinetuneOperator(
        task_id="create",
        model="@cf/mistral/mistral-7b-instruct-v0.2-lora",
        finetune_name="refused-bot",
        retries=0,
    )
"""


LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"


def add_dag_bundle(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dag.test()`` only runs DAGs it finds in a configured bundle: add ``folder`` as one."""
    bundles = [
        {"name": "cfai-test-dags", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(folder)}},
        {"name": "dags-folder", "classpath": LOCAL_BUNDLE, "kwargs": {}},
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))


def test_failed_create_still_shows_the_dashboard_link_and_logs_no_missing_xcom(
    airflow_db: Path, emulator: Any, read_logs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_cfai.links import CloudflareWorkersAILink

    (tmp_path / f"{DAG_ID}.py").write_text(DAG_FILE)
    add_dag_bundle(tmp_path, monkeypatch)
    rule = emulator.add_fault(
        method="POST",
        path=r"/ai/finetunes$",
        status=400,
        body={"success": False, "errors": [{"code": 1000, "message": "model not supported"}], "result": None},
    )

    run = run_dag(DAG_ID, folder=tmp_path)

    assert run.state == "failed"
    assert emulator.fired(rule) == 1
    assert emulator.finetunes() == []
    link = xcom(run.dag_id, run.run_id, "create", key=CloudflareWorkersAILink().xcom_key)
    assert link == f"https://dash.cloudflare.com/{emulator.account_id}/ai/workers-ai"
    logs = read_logs()
    assert "model not supported" in logs  # the task's failure is in what was captured
    assert "XCom not found" not in logs
