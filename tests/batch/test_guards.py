"""The batch code's guards, each with the failure it prevents: remove one and a test here fails.

Which ledger wins, where a resumed scan stops, what counts as the deadline, how far ahead the direct
engine runs, and what a repeated Batch API response does.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cfai.batch import engines
from airflow_provider_cfai.batch.ledger import STATE_KEY, sidecar_location
from airflow_provider_cfai.batch.records import iter_outputs
from airflow_provider_cfai.operators.batch import WorkersAIBatchOperator

QUEUE_MODEL = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
PLAIN_MODEL = "@cf/meta/llama-3.1-8b-instruct"
CONN_ID = "cfai_guards"


class StateStore:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))


class TI:
    start_date = None

    def xcom_push(self, key: str, value: Any) -> None:
        pass


def operator(tmp_path: Path, **kwargs: Any) -> WorkersAIBatchOperator:
    kwargs.setdefault("inputs", [{"prompt": f"question {i}", "external_reference": f"q{i}"} for i in range(4)])
    return WorkersAIBatchOperator(
        task_id="batch",
        output=str(tmp_path / "out.jsonl"),
        cloudflare_conn_id=CONN_ID,
        deferrable=False,
        poll_interval=0.01,
        **kwargs,
    )


@pytest.fixture
def conn(make_hook: Any, emulator: Any) -> Any:
    emulator.configure(queue_running_after=0.0, queue_delay=0.0)
    return make_hook(CONN_ID, max_retries=0)


# -- 1: of two ledgers, the one that knows more submitted chunks wins ---------------------------------------


@pytest.mark.parametrize("older", ["sidecar", "task state store"])
def test_the_newer_ledger_wins_so_no_chunk_is_submitted_twice(
    tmp_path: Path, emulator: Any, conn: Any, monkeypatch: pytest.MonkeyPatch, older: str
) -> None:
    from airflow_provider_cfai.exceptions import CloudflareAIError

    monkeypatch.setattr(engines, "plan_chunks", functools.partial(engines.plan_chunks, max_bytes=130))
    store = StateStore()
    # The first try submits both chunks, then dies before collecting them.
    with monkeypatch.context() as patched:
        patched.setattr("airflow_provider_cfai.batch.worker.run_engine", _die)
        with pytest.raises(CloudflareAIError, match="worker lost"):
            operator(tmp_path, model=QUEUE_MODEL).execute({"ti": TI(), "task_state_store": store})  # type: ignore[arg-type]
    assert len(emulator.state()["batches"]) == 2
    # One copy of the ledger is older: it was saved after the first submission only.
    newer = store.values[STATE_KEY]
    stale = {**newer, "request_ids": newer["request_ids"][:1], "chunk_sizes": newer["chunk_sizes"][:1]}
    if older == "sidecar":
        Path(sidecar_location(str(tmp_path / "out.jsonl"))).write_text(json.dumps(stale))
    else:
        store.values[STATE_KEY] = stale

    manifest = operator(tmp_path, model=QUEUE_MODEL).execute({"ti": TI(), "task_state_store": store})  # type: ignore[arg-type]

    assert len(emulator.state()["batches"]) == 2  # the second chunk was not submitted again
    assert manifest["request_ids"] == newer["request_ids"]
    assert manifest["succeeded"] == 4


def _die(*args: Any, **kwargs: Any) -> Any:
    from airflow_provider_cfai.exceptions import CloudflareAIError

    raise CloudflareAIError("worker lost")


# -- 3: a resumed scan stops at the first line that is not the next record -----------------------------------


def test_an_output_with_a_missing_item_is_not_taken_for_a_complete_one(
    tmp_path: Path, emulator: Any, conn: Any
) -> None:
    operator(tmp_path, model=PLAIN_MODEL).execute({"ti": TI()})  # type: ignore[arg-type]
    output = tmp_path / "out.jsonl"
    lines = output.read_text().splitlines()
    output.write_text("\n".join([lines[0], lines[1], lines[3], lines[3]]) + "\n")  # item 2 lost, 4 lines
    calls_before = len([r for r in emulator.state()["requests"] if "/ai/run/" in r["path"]])

    manifest = operator(tmp_path, model=PLAIN_MODEL).execute({"ti": TI()})  # type: ignore[arg-type]

    calls = len([r for r in emulator.state()["requests"] if "/ai/run/" in r["path"]]) - calls_before
    assert calls == 2  # items 2 and 3 again, from the first line out of order
    assert [r["index"] for r in iter_outputs(str(output))] == [0, 1, 2, 3]
    assert manifest["resumed_from"] == 2


# -- 5: a TimeoutError from inside the work is not the batch's deadline ------------------------------------


class TimingOutClient:
    async def run_model(self, model: str, inputs: Any) -> Any:
        raise TimeoutError("a file system timed out")


def test_a_timeout_inside_the_work_is_raised_not_reported_as_the_deadline(tmp_path: Path) -> None:
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"prompt": "a"}\n')

    async def run() -> Any:
        return await engines.run_direct(
            TimingOutClient(),  # type: ignore[arg-type]
            model=PLAIN_MODEL,
            inputs_path=str(inputs),
            output=str(tmp_path / "out.jsonl"),
            deadline=time.time() + 3600,
        )

    with pytest.raises(TimeoutError, match="a file system timed out"):
        asyncio.run(run())


# -- 9: the writer's buffer of early results is bounded -----------------------------------------------------


class SlowFirstClient:
    """Item 0 answers last: it waits until ten others answered, or gives up after many turns."""

    def __init__(self) -> None:
        self.others = 0
        self.others_while_first_waited = 0

    async def run_model(self, model: str, inputs: Any) -> Any:
        if inputs["prompt"] != "item 0":
            self.others += 1
            return {"response": inputs["prompt"]}
        for _ in range(2000):  # turns of the event loop, not a clock: the others get every chance
            if self.others >= 10:
                break
            await asyncio.sleep(0)
        self.others_while_first_waited = self.others
        return {"response": "item 0"}


def test_the_direct_engine_runs_at_most_ahead_items_past_an_unfinished_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "AHEAD", 4)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"prompt": f"item {i}"}) + "\n" for i in range(20)))
    client = SlowFirstClient()

    async def run() -> Any:
        return await engines.run_direct(
            client,  # type: ignore[arg-type]
            model=PLAIN_MODEL,
            inputs_path=str(inputs),
            output=str(tmp_path / "out.jsonl"),
            concurrency=8,
        )

    manifest = asyncio.run(run())

    assert client.others_while_first_waited == 3  # items 1-3: the writer held at most AHEAD - 1 back
    assert manifest["succeeded"] == 20


# -- 11: a repeated Batch API response does not overwrite the first ----------------------------------------


def test_a_repeated_or_out_of_range_batch_response_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    responses = [
        {"id": 0, "success": True, "result": {"response": "first"}},
        {"id": 1, "success": True, "result": {"response": "one"}},
        {"id": 0, "success": True, "result": {"response": "second"}},
        {"id": 7, "success": True, "result": {"response": "not in this chunk"}},
    ]

    with caplog.at_level(logging.WARNING):
        records, count = engines._chunk_records(responses, 10, 2, "req-1")

    assert count == 2
    assert [(r["index"], r["result"]["response"]) for r in records] == [(10, "first"), (11, "one")]
    assert caplog.text.count("ignoring an unexpected or repeated response") == 2
