"""End to end: finetunes reach Airflow's metadata DB as asset events, and start DAGs scheduled on them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dag_runner import run_dag, xcom
from scheduler_steps import (
    asset_triggered_runs,
    clear_queue,
    create_dag_runs,
    forget_asset_events,
    queued_asset_uris,
    run_existing_dag_run,
    serialize_dag,
    set_paused,
)
from sqlalchemy import select

from airflow_provider_cfai.assets import FINETUNES_ALIAS, SCHEME, finetune_uri

pytestmark = pytest.mark.e2e

CONSUMER = "example_finetune_asset_consumer"
MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
PIPELINE_FINETUNES = ("weekly-support-20260105", "weekly-support-en-20260105", "weekly-support-de-20260105")


def asset_events(dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """The asset events a DAG run's tasks emitted, read back from the metadata DB."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).where(AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run_id)
        )
        return [
            {
                "uri": event.asset.uri,
                "extra": event.extra,
                "aliases": {alias.name for alias in event.source_aliases},
                "task": (event.source_task_id, event.source_map_index),
            }
            for event in events
        ]


def task_states(dag_id: str, run_id: str) -> dict[str, set[str]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id
            )
        )
        states: dict[str, set[str]] = {}
        for task_id, state in rows:
            states.setdefault(task_id, set()).add(str(state))
        return states


def by_name(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {event["extra"]["finetune_name"]: event for event in events}


def test_lora_pipeline_emits_an_asset_event_per_finetune_with_its_id_name_and_model(
    airflow_db: Any, emulator: Any
) -> None:
    run = run_dag("example_lora_pipeline")

    assert run.state == "success"
    held = {f["name"]: f for f in emulator.finetunes()}
    events = by_name(asset_events(run.dag_id, run.run_id))
    assert set(events) == set(PIPELINE_FINETUNES)
    for name, event in events.items():
        assert event["uri"] == finetune_uri(emulator.account_id, name)
        assert event["aliases"] == {FINETUNES_ALIAS}
        assert event["extra"]["finetune_id"] == held[name]["id"]
        assert event["extra"]["model"] == MODEL
        assert event["extra"]["created"] is True
        assert event["extra"]["adapter"].startswith("/")  # the local folder the files came from
    main = events["weekly-support-20260105"]
    assert main["task"] == ("register_finetune", -1)
    assert xcom(run.dag_id, run.run_id, "register_finetune") == main["extra"]["finetune_id"]
    mapped = {events[name]["task"] for name in PIPELINE_FINETUNES[1:]}
    assert mapped == {("register_locale_finetunes", 0), ("register_locale_finetunes", 1)}


def test_creates_without_adapter_emit_no_events_before_or_after_a_rerun(airflow_db: Any, emulator: Any) -> None:
    first = run_dag("example_cloudflare_finetune")
    second = run_dag("example_cloudflare_finetune")

    assert (first.state, second.state) == ("success", "success")
    assert len(emulator.finetunes()) == 4
    assert asset_events(first.dag_id, first.run_id) == []  # no files yet: nothing a consumer could run
    assert asset_events(second.dag_id, second.run_id) == []


@pytest.fixture
def consumer_unpaused(airflow_db: Any) -> Iterator[str]:
    """The consumer example in the DB as the DAG processor leaves it, unpaused; paused again after."""
    serialize_dag(CONSUMER)
    clear_queue(CONSUMER)
    forget_asset_events(f"{SCHEME}://")
    set_paused(CONSUMER, False)
    yield CONSUMER
    set_paused(CONSUMER, True)
    clear_queue(CONSUMER)


def test_new_finetunes_queue_and_trigger_the_dag_scheduled_on_the_alias(consumer_unpaused: str, emulator: Any) -> None:
    before = {r["run_id"] for r in asset_triggered_runs(consumer_unpaused)}

    producer = run_dag("example_lora_pipeline")
    queued = queued_asset_uris(consumer_unpaused)
    create_dag_runs()

    assert producer.state == "success"
    assert queued == {finetune_uri(emulator.account_id, name) for name in PIPELINE_FINETUNES}
    (run,) = [r for r in asset_triggered_runs(consumer_unpaused) if r["run_id"] not in before]
    assert run["state"] == "queued"
    consumed = {extra["finetune_name"]: (uri, extra, source) for uri, extra, source in run["events"]}
    assert set(consumed) == set(PIPELINE_FINETUNES)
    assert {source for _, _, source in consumed.values()} == {producer.run_id}
    uri, extra, _ = consumed["weekly-support-20260105"]
    assert uri == finetune_uri(emulator.account_id, "weekly-support-20260105")
    assert extra["finetune_id"] == xcom(producer.dag_id, producer.run_id, "register_finetune")
    assert queued_asset_uris(consumer_unpaused) == set()  # the scheduler consumed the queue


def test_triggered_consumer_smoke_tests_each_new_finetune_that_has_its_files(
    consumer_unpaused: str, emulator: Any
) -> None:
    before = {r["run_id"] for r in asset_triggered_runs(consumer_unpaused)}
    run_dag("example_cloudflare_finetune")  # four finetunes without adapters: no events
    run_dag("example_lora_pipeline")
    create_dag_runs()
    (run_id,) = [r["run_id"] for r in asset_triggered_runs(consumer_unpaused) if r["run_id"] not in before]
    assert len(next(r for r in asset_triggered_runs(consumer_unpaused) if r["run_id"] == run_id)["events"]) == 3

    state = run_existing_dag_run(consumer_unpaused, run_id)

    assert state == "success"
    held = {f["id"]: f["name"] for f in emulator.finetunes()}
    to_test = xcom(consumer_unpaused, run_id, "finetunes_to_test")
    assert sorted(held[item["lora"]] for item in to_test) == sorted(PIPELINE_FINETUNES)
    for index, item in enumerate(to_test):
        answer = xcom(consumer_unpaused, run_id, "smoke_test", map_index=index)
        assert held[item["lora"]] in answer["response"]  # the emulator answers in the finetune's name


def test_manual_consumer_run_without_events_skips_the_smoke_test(airflow_db: Any, emulator: Any) -> None:
    run = run_dag(CONSUMER)

    assert run.state == "success"
    assert xcom(CONSUMER, run.run_id, "finetunes_to_test") == []
    assert task_states(CONSUMER, run.run_id)["smoke_test"] == {"skipped"}
