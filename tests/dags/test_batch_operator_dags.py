"""End to end under dag.test(): a retried batch task re-attaches to its queued batch; a deadline is a timeout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pendulum
import pytest
from dag_runner import load_dag, xcom

pytestmark = pytest.mark.e2e

BATCH_DAGS = Path(__file__).resolve().parent / "batch_dags"


@pytest.fixture
def batch_env(airflow_db: Any, make_hook: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_hook("cfai_batch", max_retries=0)  # no transport retries: one fault is one failed try
    monkeypatch.setenv("CFAI_TEST_BATCH_DIR", str(tmp_path))
    # dag.test() only runs DAGs it finds in a configured bundle: add batch_dags/ as one.
    bundle = "airflow.dag_processing.bundles.local.LocalDagBundle"
    bundles = [
        {"name": "cfai-batch-test-dags", "classpath": bundle, "kwargs": {"path": str(BATCH_DAGS)}},
        {"name": "dags-folder", "classpath": bundle, "kwargs": {}},
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    return tmp_path


def run(dag_id: str) -> Any:
    return load_dag(dag_id, BATCH_DAGS).test(logical_date=pendulum.parse("2026-01-05"))


def task_instance(dag_run: Any, task_id: str) -> Any:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(
            select(TaskInstance).where(TaskInstance.run_id == dag_run.run_id, TaskInstance.task_id == task_id)
        )


def has_task_state_store() -> bool:
    import importlib.util

    return importlib.util.find_spec("airflow.models.task_state_store") is not None


def state_store_value(dag_run: Any, task_id: str, key: str) -> Any:
    """A value in the task state store (Airflow 3.3+), or None."""
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalar(
            select(TaskStateStoreModel.value).where(
                TaskStateStoreModel.run_id == dag_run.run_id,
                TaskStateStoreModel.task_id == task_id,
                TaskStateStoreModel.key == key,
            )
        )
    return None if value is None else json.loads(value)


def test_a_retried_task_reattaches_to_its_queued_batch(batch_env: Path, emulator: Any) -> None:
    emulator.configure(queue_running_after=0.0, queue_delay=0.0)
    # The first try's first poll fails (the submit, an other body, is untouched): that try fails.
    rule = emulator.add_fault(path=r"/ai/run/", method="POST", request_body='"request_id"', status=503)

    dag_run = run("batch_retry_reattach")

    assert dag_run.state == "success"
    assert emulator.fired(rule) == 1
    assert task_instance(dag_run, "evaluate").try_number == 2  # it really was retried
    (batch,) = emulator.state()["batches"]  # one submit in the emulator's log
    manifest = xcom("batch_retry_reattach", dag_run.run_id, "evaluate")
    assert manifest["request_ids"] == [batch["request_id"]]
    assert (manifest["engine"], manifest["succeeded"], manifest["total"]) == ("queue", 4, 4)
    lines = Path(manifest["output"]).read_text().splitlines()
    assert [json.loads(line)["external_reference"] for line in lines] == ["q0", "q1", "q2", "q3"]
    if has_task_state_store():  # Airflow 3.3+: the ids are in the task state store too
        assert state_store_value(dag_run, "evaluate", "cfai_batch")["request_ids"] == [batch["request_id"]]


def test_a_batch_past_its_execution_timeout_fails_as_a_timeout_keeping_its_results(
    batch_env: Path, emulator: Any
) -> None:
    # Item 1 is answered only after the deadline: items after it never start (concurrency=1).
    rule = emulator.add_fault(
        path=r"/ai/run/", method="POST", request_body="question 1", action="delay_after_commit", delay=20.0
    )

    dag_run = run("batch_timeout")

    assert dag_run.state == "failed"
    assert emulator.fired(rule) == 1
    assert task_instance(dag_run, "evaluate").state == "failed"
    manifest = xcom("batch_timeout", dag_run.run_id, "evaluate", key="batch_manifest")
    assert (manifest["status"], manifest["succeeded"], manifest["failed"], manifest["total"]) == ("timeout", 1, 0, 4)
    assert len(Path(manifest["output"]).read_text().splitlines()) == 1  # what was written stays written
