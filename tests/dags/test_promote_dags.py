"""End to end: create → upload → evaluate both → approve → promote, then rollback, under dag.test().

The approval is a person's answer given through Airflow's own REST API: on Airflow 3.3 the
``ApprovalOperator`` parks its task in ``awaiting_input`` and ``dag.test()`` waits (it calls
``time.sleep``) until a response arrives; the test answers at that moment with
``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails`` on the core
API app (in-process, the simple auth manager's all-admins mode), which is what the "Required
actions" page sends. On Airflow 3.1 the operator defers to a trigger that ``dag.test()`` polls
inline, so there the approval task is marked successful instead (``mark_success_pattern``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pendulum
import pytest
from dag_runner import load_dag, xcom

from airflow_provider_cfai.assets import pointer_uri

pytestmark = pytest.mark.e2e

DAG_ID = "example_promote_finetune"
ROLLBACK_DAG_ID = "example_rollback_finetune"
MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
KEY = "support-bot"
APPROVAL = "approve_promotion"


def _airflow_3_3_plus() -> bool:
    from airflow import __version__
    from packaging.version import Version

    return Version(Version(__version__).base_version) >= Version("3.3")


class Reviewer:
    """A person answering approvals over Airflow's REST API while dag.test() waits for them."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.choice = "Approve"
        self.answers: list[tuple[str, str, str, int]] = []

    def answer_pending(self) -> bool:
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            pending = session.execute(
                select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id, TaskInstance.map_index)
                .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
                .where(HITLDetail.responded_at.is_(None))
            ).all()
        for dag_id, run_id, task_id, map_index in pending:
            url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails"
            response = self.client.patch(url, json={"chosen_options": [self.choice], "params_input": {}})
            assert response.status_code == 200, response.text
            self.answers.append((dag_id, run_id, task_id, self.choice))
        return bool(pending)


@pytest.fixture
def reviewer(airflow_db: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Reviewer | None]:
    if not _airflow_3_3_plus():
        yield None
        return
    from fastapi.testclient import TestClient

    monkeypatch.setenv(
        "AIRFLOW__CORE__AUTH_MANAGER",
        "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
    )
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    from airflow.api_fastapi.app import create_app

    with TestClient(create_app(apps="core")) as client:
        person = Reviewer(client)
        real_sleep = time.sleep

        def sleep(seconds: float) -> None:
            # dag.test() sleeps while a task awaits input: that is when the person answers.
            if not person.answer_pending():
                real_sleep(seconds)

        monkeypatch.setattr(time, "sleep", sleep)
        yield person


@pytest.fixture
def eval_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CFAI_EVAL_DIR", str(tmp_path))
    return tmp_path


def run(dag_id: str, day: str, reviewer: Reviewer | None, **conf: Any) -> Any:
    kwargs: dict[str, Any] = {"logical_date": pendulum.parse(day), "run_conf": conf}
    if reviewer is None:
        kwargs["mark_success_pattern"] = APPROVAL  # Airflow 3.1: see the module docstring
    return load_dag(dag_id).test(**kwargs)


def returned(dag_id: str, run_id: str, task_id: str) -> Any:
    """A task's return value; ``None`` when it returned ``None`` (Airflow stores no XCom for that)."""
    try:
        return xcom(dag_id, run_id, task_id)
    except AssertionError:
        return None


def task_states(run: Any) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def pointer_events(uri: str) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent.extra).join(AssetModel, AssetModel.id == AssetEvent.asset_id).where(AssetModel.uri == uri)
        )
        return [dict(extra) for extra in rows]


def serving_namespace(emulator: Any) -> str:
    (namespace,) = emulator.state()["kv"]["namespaces"]
    return str(namespace["id"])


def by_name(emulator: Any, name: str) -> str:
    (finetune,) = [f["id"] for f in emulator.finetunes() if f["name"] == name]
    return str(finetune)


def test_approved_promotion_moves_the_worker_a_worse_finetune_stays_out_and_rollback_restores(
    airflow_db: Any, emulator: Any, eval_dir: Path, reviewer: Reviewer | None
) -> None:
    first = run(DAG_ID, "2026-01-05", reviewer, finetune_name="acme-support-a")

    assert first.state == "success", task_states(first)
    namespace = serving_namespace(emulator)
    a = by_name(emulator, "acme-support-a")
    assert returned(DAG_ID, first.run_id, "live_finetune") is None  # an empty pointer: the base model
    assert xcom(DAG_ID, first.run_id, "score") == {"new": 1.0, "live": 0.0}
    assert task_states(first)["promote"] == "success"
    assert returned(DAG_ID, first.run_id, "promote") is None  # nothing was live before
    assert task_states(first)["keep_live"] == "skipped"
    assert emulator.ask_worker(namespace, KEY, "hello")["response"] == f"[{MODEL} + acme-support-a] hello"
    if reviewer is not None:
        assert reviewer.answers == [(DAG_ID, first.run_id, APPROVAL, "Approve")]
        assert xcom(DAG_ID, first.run_id, APPROVAL)["chosen_options"] == ["Approve"]

    second = run(DAG_ID, "2026-01-12", reviewer, finetune_name="acme-support-b")

    assert second.state == "success", task_states(second)
    b = by_name(emulator, "acme-support-b")
    assert xcom(DAG_ID, second.run_id, "live_finetune") == a
    assert xcom(DAG_ID, second.run_id, "evaluate_live")["lora"] == a
    assert xcom(DAG_ID, second.run_id, "promote") == a
    assert emulator.ask_worker(namespace, KEY, "hello")["response"] == f"[{MODEL} + acme-support-b] hello"

    worse = run(DAG_ID, "2026-01-19", reviewer, finetune_name="generic-support-w")

    assert worse.state == "success", task_states(worse)
    assert xcom(DAG_ID, worse.run_id, "score") == {"new": 0.0, "live": 1.0}
    states = task_states(worse)
    assert (states[APPROVAL], states["promote"], states["keep_live"]) == ("skipped", "skipped", "success")
    assert emulator.ask_worker(namespace, KEY, "hello")["lora"] == b
    if reviewer is not None:
        assert len(reviewer.answers) == 2  # nobody was asked about the worse finetune

    back = load_dag(ROLLBACK_DAG_ID).test(logical_date=pendulum.parse("2026-01-20"))

    assert back.state == "success"
    assert xcom(ROLLBACK_DAG_ID, back.run_id, "rollback") == b
    assert emulator.ask_worker(namespace, KEY, "hello")["response"] == f"[{MODEL} + acme-support-a] hello"
    events = pointer_events(pointer_uri(emulator.account_id, namespace, KEY))
    assert [(e["action"], e["finetune_id"], e["previous"]) for e in events] == [
        ("promote", a, None),
        ("promote", b, a),
        ("rollback", a, b),
    ]
    assert {e["finetune_name"] for e in events} == {"acme-support-a", "acme-support-b"}
    assert all(e["model"] == MODEL and e["key"] == KEY for e in events)


def test_a_rejected_promotion_leaves_production_alone(
    airflow_db: Any, emulator: Any, eval_dir: Path, reviewer: Reviewer | None
) -> None:
    if reviewer is None:
        pytest.skip("answering an approval under dag.test() needs Airflow 3.3 (see the module docstring)")
    reviewer.choice = "Reject"

    rejected = run(DAG_ID, "2026-01-05", reviewer, finetune_name="acme-support-a")

    assert rejected.state == "success"
    assert task_states(rejected)["promote"] == "skipped"
    assert reviewer.answers == [(DAG_ID, rejected.run_id, APPROVAL, "Reject")]
    (namespace,) = emulator.state()["kv"]["namespaces"]
    assert namespace["keys"] == {}
    assert emulator.state()["kv"]["writes"] == 0


def test_rollback_without_history_fails_and_says_why(airflow_db: Any, emulator: Any) -> None:
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    CloudflareAIHook().create_kv_namespace("support-bot-serving")

    back = load_dag(ROLLBACK_DAG_ID).test(logical_date=pendulum.parse("2026-01-21"))

    assert back.state == "failed"
    assert task_states(back)["rollback"] == "failed"
    assert emulator.state()["kv"]["writes"] == 0
