"""WorkersAIBatchTrigger: serializable, runs an engine against the emulator, fires exactly one event."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from typing import TYPE_CHECKING, Any

import pytest
import requests

from airflow_provider_cfai import get_provider_info
from airflow_provider_cfai.triggers.batch import WorkersAIBatchTrigger

if TYPE_CHECKING:
    from pathlib import Path

    from airflow_provider_cfai.testing import RunningEmulator

MODEL = "@cf/meta/llama-3.1-8b-instruct"
QUEUE_MODEL = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
CONN_ID = "cfai_trigger"


@pytest.fixture
def connection(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    conn = json.loads(emulator.connection_json(max_retries=2, retry_budget=10, timeout=10))
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    return CONN_ID


def inputs_file(tmp_path: Path, n: int) -> str:
    path = tmp_path / "inputs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(n)))
    return str(path)


def events_of(trigger: WorkersAIBatchTrigger) -> list[Any]:
    async def collect() -> list[Any]:
        return [event async for event in trigger.run()]

    return asyncio.run(collect())


def test_serialize_round_trips_through_the_class_path() -> None:
    trigger = WorkersAIBatchTrigger(
        cloudflare_conn_id="c",
        engine="queue",
        model=QUEUE_MODEL,
        inputs_path="s3://bucket/in.jsonl",
        output="s3://bucket/out.jsonl",
        request_ids=["a", "b"],
        chunk_sizes=[3, 2],
        account_id="0" * 32,
        concurrency=4,
        poll_interval=2.5,
        deadline=1_900_000_000.0,
    )

    path, kwargs = trigger.serialize()
    module, _, name = path.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)

    assert path == "airflow_provider_cfai.triggers.batch.WorkersAIBatchTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs  # plain JSON data only
    assert rebuilt.serialize() == (path, kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"engine": "fast"}, "engine must be one of queue, direct"), ({"engine": "queue"}, "request_ids")],
    ids=["unknown-engine", "queue-without-ids"],
)
def test_bad_arguments_are_refused_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WorkersAIBatchTrigger(cloudflare_conn_id="c", model=MODEL, inputs_path="i", output="o", **kwargs)


def test_direct_run_fires_one_event_carrying_only_the_manifest(
    emulator: RunningEmulator, connection: str, tmp_path: Path
) -> None:
    output = tmp_path / "out.jsonl"
    trigger = WorkersAIBatchTrigger(connection, "direct", MODEL, inputs_file(tmp_path, 60), str(output))

    (event,) = events_of(trigger)

    payload = event.payload
    assert set(payload) == {"status", "manifest", "message"}
    assert payload["status"] == "success"
    assert (payload["manifest"]["total"], payload["manifest"]["succeeded"]) == (60, 60)
    assert "question 7" not in json.dumps(payload)  # results stay in the output, not the event
    assert len(output.read_text().splitlines()) == 60
    assert payload["message"] == "60 succeeded, 0 failed of 60 (direct engine)"


def test_queue_run_collects_the_submitted_requests(emulator: RunningEmulator, connection: str, tmp_path: Path) -> None:
    emulator.configure(queue_delay=0)
    response = requests.post(
        f"{emulator.base_url}/accounts/{emulator.account_id}/ai/run/{QUEUE_MODEL}?queueRequest=true",
        json={"requests": [{"prompt": "a"}, {"prompt": "b"}]},
        headers={"Authorization": f"Bearer {emulator.token}"},
        timeout=10,
    )
    request_id = response.json()["result"]["request_id"]
    trigger = WorkersAIBatchTrigger(
        connection,
        "queue",
        QUEUE_MODEL,
        "unused",
        str(tmp_path / "out.jsonl"),
        request_ids=[request_id],
        poll_interval=0.05,
    )

    (event,) = events_of(trigger)

    assert event.payload["status"] == "success"
    assert event.payload["manifest"]["request_ids"] == [request_id]
    assert event.payload["manifest"]["succeeded"] == 2


def test_a_deadline_fires_a_timeout_event(emulator: RunningEmulator, connection: str, tmp_path: Path) -> None:
    trigger = WorkersAIBatchTrigger(
        connection, "direct", MODEL, inputs_file(tmp_path, 3), str(tmp_path / "o.jsonl"), deadline=time.time() - 1
    )

    (event,) = events_of(trigger)

    assert event.payload["status"] == "timeout"
    assert event.payload["manifest"]["status"] == "timeout"
    assert event.payload["message"].startswith("deadline reached")


def test_a_batch_that_cannot_go_on_fires_one_error_event_without_secrets(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conn = json.loads(emulator.connection_json())
    conn["password"] = "wrong-token-that-must-not-leak"
    monkeypatch.setenv("AIRFLOW_CONN_CFAI_BAD", json.dumps(conn))
    trigger = WorkersAIBatchTrigger("cfai_bad", "direct", MODEL, inputs_file(tmp_path, 3), str(tmp_path / "o.jsonl"))

    (event,) = events_of(trigger)

    assert event.payload["status"] == "error"
    assert event.payload["manifest"] is None
    assert event.payload["permanent"] is True  # a retry would be refused the same way
    assert "HTTP 401" in event.payload["message"]
    assert "wrong-token-that-must-not-leak" not in event.payload["message"]


def test_an_unreachable_api_fires_an_error_event_a_retry_may_fix(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conn = json.loads(emulator.connection_json(max_retries=0))
    conn["host"] = f"http://127.0.0.1:{port}/client/v4"
    monkeypatch.setenv("AIRFLOW_CONN_CFAI_DOWN", json.dumps(conn))
    trigger = WorkersAIBatchTrigger("cfai_down", "direct", MODEL, inputs_file(tmp_path, 2), str(tmp_path / "o.jsonl"))

    (event,) = events_of(trigger)

    assert event.payload["status"] == "error"
    assert event.payload["permanent"] is False
    assert f"could not connect to http://127.0.0.1:{port}" in event.payload["message"]


def test_a_connection_without_credentials_fires_an_error_event(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CFAI_EMPTY", json.dumps({"conn_type": "cloudflare_ai", "login": "a" * 32}))
    trigger = WorkersAIBatchTrigger("cfai_empty", "direct", MODEL, inputs_file(tmp_path, 1), str(tmp_path / "o.jsonl"))

    (event,) = events_of(trigger)

    assert event.payload["status"] == "error"
    assert event.payload["permanent"] is True
    assert "no credentials" in event.payload["message"]


def test_the_provider_info_registers_the_trigger_module() -> None:
    modules = [module for entry in get_provider_info()["triggers"] for module in entry["python-modules"]]

    assert modules == ["airflow_provider_cfai.triggers.batch"]
    assert importlib.import_module(modules[0]).WorkersAIBatchTrigger is WorkersAIBatchTrigger
