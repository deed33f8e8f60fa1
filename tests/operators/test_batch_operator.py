"""WorkersAIBatchOperator on the emulator, driven the way Airflow drives it (execute → defer → trigger →
execute_complete), with a stand-in task instance: validation, engines, re-attach, resume, timeout,
failure ratio."""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cfai.batch.records import iter_outputs, scan_output
from airflow_provider_cfai.exceptions import (
    AirflowFailException,
    BatchFailureRatioError,
    BatchTimeoutError,
    CloudflareAIError,
    CloudflareInputError,
    PreflightCheckError,
)
from airflow_provider_cfai.operators.batch import WorkersAIBatchOperator

try:  # Airflow 3.2+
    from airflow.sdk.exceptions import TaskDeferred
except ImportError:  # Airflow 3.1
    from airflow.exceptions import TaskDeferred  # type: ignore[no-redef,attr-defined]

QUEUE_MODEL = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
LORA_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
PLAIN_MODEL = "@cf/meta/llama-3.1-8b-instruct"
CONN_ID = "cfai_batch"


class FakeTI:
    """What the operator uses of a task instance: its start and ``xcom_push``."""

    def __init__(self) -> None:
        self.start_date = datetime.now(timezone.utc)
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = json.loads(json.dumps(value))


class FakeStateStore:
    """Airflow 3.3's task state store: JSON values by key, shared by every try of a task."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))


def new_try(store: FakeStateStore | None = None) -> dict[str, Any]:
    """A fresh try's context: a new task instance (XCom is cleared on retry), the same state store."""
    context: dict[str, Any] = {"ti": FakeTI()}
    if store is not None:
        context["task_state_store"] = store
    return context


def run_to_end(operator: WorkersAIBatchOperator, context: dict[str, Any]) -> Any:
    """execute(); if it defers, run its trigger as the triggerer would (kwargs through JSON), then resume."""
    try:
        return operator.execute(context)  # type: ignore[arg-type]
    except TaskDeferred as deferred:
        classpath, kwargs = deferred.trigger.serialize()
        module, _, name = classpath.rpartition(".")
        trigger = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))

        async def first_event() -> Any:
            return await anext(trigger.run())

        event = asyncio.run(first_event())
        method = deferred.method_name
    assert method == "execute_complete"
    return getattr(operator, method)(context, event.payload)


def make_operator(tmp_path: Path, **kwargs: Any) -> WorkersAIBatchOperator:
    kwargs.setdefault("task_id", "batch")
    kwargs.setdefault("model", PLAIN_MODEL)
    kwargs.setdefault("inputs", [{"prompt": f"question {i}", "external_reference": f"q{i}"} for i in range(4)])
    kwargs.setdefault("output", str(tmp_path / "out" / "results.jsonl"))
    kwargs.setdefault("cloudflare_conn_id", CONN_ID)
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("deferrable", True)
    return WorkersAIBatchOperator(**kwargs)


@pytest.fixture
def conn(make_hook: Any) -> Any:
    """``cfai_batch`` aimed at the emulator; no transport retries, so one fault is one failure."""
    return make_hook(CONN_ID, max_retries=0)


@pytest.fixture
def fast_queue(emulator: Any) -> Any:
    emulator.configure(queue_running_after=0.0, queue_delay=0.0)
    return emulator


def run_calls(emulator: Any) -> list[dict[str, Any]]:
    return [r for r in emulator.state()["requests"] if "/ai/run/" in r["path"]]


# -- validation before any call ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"inputs": {"prompt": "a"}}, "not one mapping", id="inputs-one-mapping"),
        pytest.param({"inputs": []}, "inputs is an empty list", id="inputs-empty"),
        pytest.param({"inputs": [{"prompt": "a"}, "b"]}, r"inputs\[1\] must be a mapping", id="inputs-item"),
        pytest.param({"inputs": 42}, "inputs must be a local path", id="inputs-type"),
        pytest.param({"output": ""}, "output must be a local path", id="output-empty"),
        pytest.param({"output": None}, "output must be a local path", id="output-none"),
        pytest.param({"max_failure_ratio": 1.5}, "max_failure_ratio must be a number from 0.0 to 1.0", id="ratio-high"),
        pytest.param({"max_failure_ratio": -0.1}, "max_failure_ratio must be a number", id="ratio-negative"),
        pytest.param({"max_failure_ratio": "lots"}, "max_failure_ratio must be a number", id="ratio-text"),
        pytest.param({"engine": "fast"}, "engine must be one of 'auto', 'queue', 'direct'", id="engine"),
        pytest.param({"lora": ""}, "lora must be a non-empty string", id="lora-empty"),
        pytest.param({"lora": 7}, "lora must be a non-empty string", id="lora-type"),
        pytest.param({"lora": "ft", "engine": "queue"}, "engine='queue' cannot apply a lora", id="queue-lora"),
        pytest.param({"concurrency": 0}, "concurrency must be a whole number of at least 1", id="concurrency"),
        pytest.param({"poll_interval": 0}, "poll_interval must be a number greater than 0", id="poll-interval"),
        pytest.param({"model": " "}, "model must be a non-empty string", id="model"),
    ],
)
def test_bad_arguments_fail_at_construction(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CloudflareInputError, match=message) as raised:
        make_operator(tmp_path, **kwargs)
    assert isinstance(raised.value, AirflowFailException)


def test_templates_are_checked_once_rendered_before_any_call(tmp_path: Path, emulator: Any, conn: Any) -> None:
    operator = make_operator(tmp_path, model="{{ params.model }}", output="{{ params.output }}")
    operator.model, operator.output_location = PLAIN_MODEL, " "  # what the templates rendered to

    with pytest.raises(CloudflareInputError, match=r"output must be a local path"):
        operator.execute(new_try())  # type: ignore[arg-type]
    assert emulator.state()["requests"] == []


def test_names_ids_models_inputs_and_paths_are_templated_not_the_numeric_or_boolean_knobs(tmp_path: Path) -> None:
    assert set(WorkersAIBatchOperator.template_fields) == {
        "model",
        "inputs",
        "output_location",
        "lora",
        "account_id",
        "cloudflare_conn_id",
    }
    with pytest.raises(CloudflareInputError, match="max_failure_ratio must be a number"):
        make_operator(tmp_path, max_failure_ratio="{{ params.ratio }}")  # not templated: checked at parse
    for field in WorkersAIBatchOperator.template_fields:
        assert "(templated" in _param_doc(field if field != "output_location" else "output")


def _param_doc(name: str) -> str:
    doc = WorkersAIBatchOperator.__doc__ or ""
    start = doc.index(f":param {name}:")
    end = doc.find(":param ", start + 1)
    return doc[start : end if end > 0 else None]


@pytest.mark.parametrize(("setting", "expected"), [(None, False), ("true", True), ("false", False)])
def test_deferrable_defaults_to_the_deployments_default_deferrable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None, expected: bool
) -> None:
    if setting is None:
        monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", setting)

    assert (
        WorkersAIBatchOperator(task_id="b", model=PLAIN_MODEL, inputs=[{"prompt": "a"}], output="o").deferrable
        is expected
    )
    assert make_operator(tmp_path, deferrable=not expected).deferrable is (not expected)  # per task


def test_on_kill_stops_a_batch_running_in_the_worker_keeping_what_it_wrote(
    tmp_path: Path, emulator: Any, conn: Any
) -> None:
    import threading

    # Item 2's answer never comes in time; the kill must not wait for it.
    rule = emulator.add_fault(path=r"/ai/run/", request_body="question 2", action="delay_after_commit", delay=60)
    inputs = [{"prompt": f"question {i}"} for i in range(4)]
    operator = make_operator(tmp_path, inputs=inputs, deferrable=False, concurrency=1)
    started = threading.Event()
    outcome: list[BaseException | object] = []
    set_cancel = operator._set_cancel

    def remember(cancel: Any) -> None:
        set_cancel(cancel)
        started.set()

    operator._set_cancel = remember  # type: ignore[method-assign]

    def run() -> None:
        try:
            outcome.append(operator.execute(new_try()))  # type: ignore[arg-type]
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(30)
    while emulator.fired(rule) == 0:  # item 2 is in flight: items 0 and 1 are written
        worker.join(0.05)
    operator.on_kill()
    worker.join(30)

    assert not worker.is_alive()
    assert isinstance(outcome[0], asyncio.CancelledError)
    assert [r["index"] for r in iter_outputs(str(tmp_path / "out" / "results.jsonl"))] == [0, 1]


def test_a_bad_line_in_an_inputs_file_fails_before_any_call(tmp_path: Path, emulator: Any, conn: Any) -> None:
    inputs = tmp_path / "prompts.jsonl"
    inputs.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"\n')
    operator = make_operator(tmp_path, inputs=str(inputs))

    with pytest.raises(CloudflareInputError, match=r"prompts\.jsonl line 3: not valid JSON"):
        operator.execute(new_try())  # type: ignore[arg-type]
    assert emulator.state()["requests"] == []


def test_importing_the_operator_module_loads_no_engine_trigger_or_hook() -> None:
    # airflow.sdk itself loads httpx and fsspec; what a DAG parse must not pay for is ours.
    probe = (
        "import json, sys, airflow.sdk; import airflow_provider_cfai.operators.batch; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('airflow_provider_cfai', 'requests')))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out.splitlines()[-1]))

    assert "airflow_provider_cfai.operators.batch" in loaded
    heavy = {
        "airflow_provider_cfai.hooks.cloudflare_ai_async",
        "airflow_provider_cfai.batch.engines",
        "airflow_provider_cfai.batch.inputs",
        "airflow_provider_cfai.batch.writer",
        "airflow_provider_cfai.triggers.batch",
        "airflow_provider_cfai.hooks.cloudflare_ai",
        "requests",
    }
    assert not heavy & loaded, sorted(heavy & loaded)


# -- engines ----------------------------------------------------------------------------------------------


def test_direct_engine_writes_every_result_in_order_and_returns_a_small_manifest(
    tmp_path: Path, emulator: Any, conn: Any
) -> None:
    operator = make_operator(tmp_path)
    context = new_try()

    manifest = run_to_end(operator, context)

    output = str(tmp_path / "out" / "results.jsonl")
    assert manifest == {
        "engine": "direct",
        "model": PLAIN_MODEL,
        "lora": None,
        "output": output,
        "total": 4,
        "succeeded": 4,
        "failed": 0,
        "failure_ratio": 0.0,
        "usage": manifest["usage"],
        "request_ids": [],
        "resumed_from": 0,
        "status": "success",
        "error_codes": {},
        "transient_failures": 0,
    }
    assert manifest["usage"]["total_tokens"] > 0
    records = list(iter_outputs(output))
    assert [(r["index"], r["external_reference"]) for r in records] == [(i, f"q{i}") for i in range(4)]
    assert records[2]["result"]["response"] == f"[{PLAIN_MODEL}] question 2"
    assert len(run_calls(emulator)) == 4


def test_auto_engine_queues_a_model_the_catalog_marks_async_queue(tmp_path: Path, fast_queue: Any, conn: Any) -> None:
    manifest = run_to_end(make_operator(tmp_path, model=QUEUE_MODEL), new_try())

    assert manifest["engine"] == "queue"
    (batch,) = fast_queue.state()["batches"]
    assert manifest["request_ids"] == [batch["request_id"]]
    assert (manifest["succeeded"], manifest["total"]) == (4, 4)


def test_auto_engine_calls_directly_with_a_lora_even_on_a_queue_model() -> None:
    import logging

    from airflow_provider_cfai.batch.worker import pick_engine

    queue_entry = {"name": QUEUE_MODEL, "properties": [{"property_id": "async_queue", "value": True}]}
    log = logging.getLogger("test")

    assert pick_engine("auto", QUEUE_MODEL, None, entry=queue_entry, log=log) == "queue"
    assert pick_engine("auto", QUEUE_MODEL, "ft", entry=queue_entry, log=log) == "direct"


def test_auto_engine_falls_back_to_direct_when_the_catalog_cannot_be_read(
    tmp_path: Path, fast_queue: Any, conn: Any, read_logs: Any
) -> None:
    rule = fast_queue.add_fault(
        path=r"/ai/models/search",
        status=403,
        body={"success": False, "errors": [{"code": 10000, "message": "Authentication error"}]},
    )

    manifest = run_to_end(make_operator(tmp_path, model=QUEUE_MODEL), new_try())

    assert fast_queue.fired(rule) >= 1
    assert manifest["engine"] == "direct"
    assert "Could not read the Workers AI model catalog" in read_logs()


def test_non_deferrable_runs_the_same_engine_in_the_worker(tmp_path: Path, fast_queue: Any, conn: Any) -> None:
    operator = make_operator(tmp_path, model=QUEUE_MODEL, deferrable=False)

    manifest = operator.execute(new_try())  # type: ignore[arg-type]

    assert (manifest["engine"], manifest["succeeded"]) == ("queue", 4)
    assert [r["index"] for r in iter_outputs(manifest["output"])] == [0, 1, 2, 3]


def test_a_remote_output_and_staged_inputs_live_on_object_storage(tmp_path: Path, emulator: Any, conn: Any) -> None:
    fsspec = pytest.importorskip("fsspec")
    output = f"memory://cfai-operator-tests/{tmp_path.name}/results.jsonl"

    manifest = run_to_end(make_operator(tmp_path, output=output), new_try())

    fs = fsspec.filesystem("memory")
    assert manifest["output"] == output
    assert [r["index"] for r in iter_outputs(output)] == [0, 1, 2, 3]
    assert fs.exists(f"/cfai-operator-tests/{tmp_path.name}/results.jsonl.inputs.jsonl")
    assert fs.exists(f"/cfai-operator-tests/{tmp_path.name}/results.jsonl.batch.json")


def test_object_storage_paths_name_the_inputs_and_the_output(tmp_path: Path, emulator: Any, conn: Any) -> None:
    from airflow.sdk import ObjectStoragePath

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    output = ObjectStoragePath(f"file://{tmp_path}/eval/out.jsonl")

    manifest = run_to_end(
        make_operator(tmp_path, inputs=ObjectStoragePath(f"file://{prompts}"), output=output), new_try()
    )

    assert manifest["output"] == f"file://{tmp_path}/eval/out.jsonl"
    assert [r["result"]["response"] for r in iter_outputs(manifest["output"])] == [
        f"[{PLAIN_MODEL}] a",
        f"[{PLAIN_MODEL}] b",
    ]


# -- retries re-attach, never redo --------------------------------------------------------------------------


def test_a_retry_reattaches_to_the_queued_batch_instead_of_submitting_again(
    tmp_path: Path, fast_queue: Any, conn: Any
) -> None:
    first = new_try()
    with pytest.raises(TaskDeferred) as deferred:
        make_operator(tmp_path, model=QUEUE_MODEL, engine="queue").execute(first)  # type: ignore[arg-type]
    (batch,) = fast_queue.state()["batches"]
    assert first["ti"].xcoms["batch_request_ids"] == [batch["request_id"]]
    sidecar = json.loads((tmp_path / "out" / "results.jsonl.batch.json").read_text())
    assert sidecar["request_ids"] == [batch["request_id"]]  # recorded before deferring

    # The try dies while deferred (worker lost, triggerer restarted...): Airflow retries the task.
    manifest = run_to_end(make_operator(tmp_path, model=QUEUE_MODEL, engine="queue"), new_try())

    assert len(fast_queue.state()["batches"]) == 1  # one submit in the emulator's log
    assert manifest["request_ids"] == [batch["request_id"]] == deferred.value.trigger.request_ids
    assert manifest["succeeded"] == 4


def test_the_task_state_store_reattaches_when_the_sidecar_is_gone(tmp_path: Path, fast_queue: Any, conn: Any) -> None:
    store = FakeStateStore()
    with pytest.raises(TaskDeferred):
        make_operator(tmp_path, model=QUEUE_MODEL).execute(new_try(store))  # type: ignore[arg-type]
    (tmp_path / "out" / "results.jsonl.batch.json").unlink()  # the retry runs on another machine

    manifest = run_to_end(make_operator(tmp_path, model=QUEUE_MODEL), new_try(store))

    assert len(fast_queue.state()["batches"]) == 1
    assert manifest["request_ids"] == store.values["cfai_batch"]["request_ids"]


def test_a_retry_after_a_crash_mid_submission_submits_only_the_missing_chunks(
    tmp_path: Path, fast_queue: Any, conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_cfai.batch import engines
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    # Two items per chunk: four inputs make two submissions.
    monkeypatch.setattr(engines, "plan_chunks", functools.partial(engines.plan_chunks, max_bytes=130))
    real_submit = CloudflareAIHook.submit_batch
    calls: list[int] = []

    def submit_then_die(self: Any, model: str, requests: Any, **kwargs: Any) -> Any:
        calls.append(len(requests))
        if len(calls) == 2:
            raise SystemExit("worker killed between the two submissions")
        return real_submit(self, model, requests, **kwargs)

    monkeypatch.setattr(CloudflareAIHook, "submit_batch", submit_then_die)
    with pytest.raises(SystemExit):
        make_operator(tmp_path, model=QUEUE_MODEL).execute(new_try())  # type: ignore[arg-type]
    monkeypatch.setattr(CloudflareAIHook, "submit_batch", real_submit)

    manifest = run_to_end(make_operator(tmp_path, model=QUEUE_MODEL), new_try())

    assert calls == [2, 2]
    batches = fast_queue.state()["batches"]
    assert [b["items"] for b in batches] == [2, 2]  # the first chunk was not submitted again
    assert manifest["request_ids"] == [b["request_id"] for b in batches]
    assert [r["external_reference"] for r in iter_outputs(manifest["output"])] == ["q0", "q1", "q2", "q3"]


def test_a_resumed_direct_run_sends_no_item_twice(tmp_path: Path, emulator: Any, conn: Any) -> None:
    # The fourth call loses its connection before the emulator does the work; the batch stops there.
    rule = emulator.add_fault(path=r"/ai/run/", method="POST", request_body="question 3", action="drop")
    inputs = [{"prompt": f"question {i}"} for i in range(6)]
    stopped_at_3 = r"The batch failed: The batch stopped at item 3, .* the connection .* failed"
    with pytest.raises(CloudflareAIError, match=stopped_at_3) as stopped:
        run_to_end(make_operator(tmp_path, inputs=inputs, concurrency=1), new_try())
    assert not isinstance(stopped.value, AirflowFailException)  # a network failure: Airflow retries
    assert emulator.fired(rule) == 1
    assert len(list(iter_outputs(str(tmp_path / "out" / "results.jsonl")))) == 3

    manifest = run_to_end(make_operator(tmp_path, inputs=inputs, concurrency=1), new_try())

    served = [r for r in run_calls(emulator) if r["fault"] is None]
    assert len(served) == 6  # each item reached the model exactly once
    assert (manifest["resumed_from"], manifest["succeeded"], manifest["total"]) == (3, 6, 6)
    assert [r["result"]["response"] for r in iter_outputs(manifest["output"])] == [
        f"[{PLAIN_MODEL}] question {i}" for i in range(6)
    ]


def test_a_finished_batch_is_returned_again_without_any_call(tmp_path: Path, fast_queue: Any, conn: Any) -> None:
    first = run_to_end(make_operator(tmp_path, model=QUEUE_MODEL, engine="queue"), new_try())
    calls = len(fast_queue.state()["requests"])

    again = make_operator(tmp_path, model=QUEUE_MODEL, engine="queue").execute(new_try())  # type: ignore[arg-type]

    assert len(fast_queue.state()["requests"]) == calls  # not even a poll
    assert {**again, "resumed_from": 0} == first


def test_an_output_left_by_another_batch_is_replaced_not_resumed(tmp_path: Path, emulator: Any, conn: Any) -> None:
    run_to_end(make_operator(tmp_path, inputs=[{"prompt": "old"}] * 4), new_try())

    manifest = run_to_end(make_operator(tmp_path), new_try())

    assert manifest["resumed_from"] == 0
    assert [r["result"]["response"] for r in iter_outputs(manifest["output"])] == [
        f"[{PLAIN_MODEL}] question {i}" for i in range(4)
    ]


# -- timeout and failure ratio ------------------------------------------------------------------------------


def test_execution_timeout_is_the_batch_deadline_and_is_reported_as_a_timeout(
    tmp_path: Path, emulator: Any, conn: Any
) -> None:
    emulator.configure(queue_running_after=0.0, queue_delay=60.0)
    operator = make_operator(tmp_path, model=QUEUE_MODEL, execution_timeout=timedelta(seconds=1))
    context = new_try()

    with pytest.raises(BatchTimeoutError, match=r"reached execution_timeout \(0:00:01\) with 0 of 4 result") as raised:
        run_to_end(operator, context)

    assert not isinstance(raised.value, AirflowFailException)  # retried: a retry re-attaches
    manifest = context["ti"].xcoms["batch_manifest"]
    assert (manifest["status"], manifest["succeeded"], manifest["total"]) == ("timeout", 0, 4)


def test_the_trigger_gets_the_deadline_and_the_triggerer_a_later_backstop(
    tmp_path: Path, emulator: Any, conn: Any
) -> None:
    operator = make_operator(tmp_path, execution_timeout=timedelta(minutes=10))
    context = new_try()

    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)  # type: ignore[arg-type]

    expected = context["ti"].start_date.timestamp() + 600
    assert deferred.value.trigger.deadline == pytest.approx(expected)
    assert deferred.value.timeout is not None
    assert deferred.value.timeout > timedelta(minutes=10)


@pytest.mark.parametrize(
    ("max_failure_ratio", "fails"),
    [pytest.param(0.25, False, id="at-the-limit"), pytest.param(0.2, True, id="above-the-limit")],
)
def test_item_failures_fail_the_task_only_above_max_failure_ratio_after_writing_everything(
    tmp_path: Path, emulator: Any, conn: Any, max_failure_ratio: float, fails: bool
) -> None:
    inputs = [{"prompt": "a"}, {"prompt": "too long"}, {"prompt": "c"}, {"prompt": "d"}]
    too_long = {"success": False, "errors": [{"code": 5006, "message": "prompt too long"}]}
    rule = emulator.add_fault(path=r"/ai/run/", request_body="too long", status=400, body=too_long)
    operator = make_operator(tmp_path, inputs=inputs, max_failure_ratio=max_failure_ratio)
    context = new_try()

    if fails:
        message = r"1 of 4 item\(s\) failed \(ratio 0.250\).*most common Cloudflare error codes: 5006 \(1x\)"
        with pytest.raises(BatchFailureRatioError, match=message) as raised:
            run_to_end(operator, context)
        assert isinstance(raised.value, AirflowFailException)  # a retry would not change it
        manifest = context["ti"].xcoms["batch_manifest"]
    else:
        manifest = run_to_end(operator, context)

    assert (manifest["succeeded"], manifest["failed"], manifest["failure_ratio"]) == (3, 1, 0.25)
    records = list(iter_outputs(str(tmp_path / "out" / "results.jsonl")))
    assert len(records) == 4  # the output is complete either way
    assert emulator.fired(rule) == 1
    assert records[1]["success"] is False
    assert records[1]["error"]["status"] == 400


def test_a_trigger_error_event_fails_the_task_for_a_retry(tmp_path: Path) -> None:
    operator = make_operator(tmp_path)

    with pytest.raises(CloudflareAIError, match="The batch failed: poll failed with HTTP 503") as raised:
        operator.execute_complete(
            new_try(), {"status": "error", "manifest": None, "message": "poll failed with HTTP 503"}
        )  # type: ignore[arg-type]
    assert not isinstance(raised.value, AirflowFailException)


def test_a_permanent_trigger_error_fails_the_task_without_retries(tmp_path: Path) -> None:
    operator = make_operator(tmp_path)
    event = {"status": "error", "manifest": None, "message": "poll failed with HTTP 404", "permanent": True}

    with pytest.raises(AirflowFailException, match="The batch failed: poll failed with HTTP 404"):
        operator.execute_complete(new_try(), event)  # type: ignore[arg-type]


# -- fail fast, fail once ---------------------------------------------------------------------------------


def test_a_model_typo_fails_before_the_first_item_with_a_did_you_mean(tmp_path: Path, emulator: Any, conn: Any) -> None:
    operator = make_operator(tmp_path, model="@cf/meta/llama-3.1-8b-instrct")

    with pytest.raises(PreflightCheckError, match=r"did you mean '@cf/meta/llama-3\.1-8b-instruct'") as raised:
        operator.execute(new_try())  # type: ignore[arg-type]
    assert "5007" in str(raised.value)
    assert run_calls(emulator) == []


def test_an_unknown_lora_fails_before_the_first_item(tmp_path: Path, emulator: Any, conn: Any) -> None:
    operator = make_operator(tmp_path, model=LORA_MODEL, lora="no-such-finetune")

    with pytest.raises(PreflightCheckError, match=r"lora 'no-such-finetune' is neither the ID nor the name .* 3037"):
        operator.execute(new_try())  # type: ignore[arg-type]
    assert run_calls(emulator) == []


def test_a_lora_of_another_model_fails_before_the_first_item(tmp_path: Path, emulator: Any, conn: Any) -> None:
    conn.create_finetune("@cf/google/gemma-7b-it-lora", "gemma-ft")
    operator = make_operator(tmp_path, model=LORA_MODEL, lora="gemma-ft")

    with pytest.raises(PreflightCheckError, match=r"is a finetune of '@cf/google/gemma-7b-it-lora', not of"):
        operator.execute(new_try())  # type: ignore[arg-type]
    assert run_calls(emulator) == []


@pytest.mark.parametrize("deferrable", [True, False])
def test_a_finetune_without_files_stops_the_batch_at_its_first_item_naming_the_code(
    tmp_path: Path, emulator: Any, conn: Any, deferrable: bool
) -> None:
    conn.create_finetune(LORA_MODEL, "no-files-yet")  # registered, adapter never uploaded
    inputs = [{"prompt": f"question {i}"} for i in range(10)]
    operator = make_operator(
        tmp_path, model=LORA_MODEL, lora="no-files-yet", inputs=inputs, concurrency=1, deferrable=deferrable
    )

    stopped = r"item 0, an error every item would meet: .*\[3039\] Finetune is missing"
    with pytest.raises(AirflowFailException, match=stopped):
        run_to_end(operator, new_try())
    assert len(run_calls(emulator)) == 1  # one call, not one per item


def test_a_passing_outage_is_not_final_and_the_retry_sends_exactly_the_failed_items(
    tmp_path: Path, emulator: Any, conn: Any
) -> None:
    inputs = [{"prompt": f"question {i}"} for i in range(6)]
    rules = [emulator.add_fault(path=r"/ai/run/", request_body=f"question {i}", status=503) for i in (1, 4)]
    context = new_try()

    with pytest.raises(CloudflareAIError, match=r"2 of 6 item\(s\) failed for a reason that may pass") as raised:
        run_to_end(make_operator(tmp_path, inputs=inputs), context)
    assert not isinstance(raised.value, AirflowFailException)  # Airflow retries it
    assert [emulator.fired(rule) for rule in rules] == [1, 1]
    output = str(tmp_path / "out" / "results.jsonl")
    first = list(iter_outputs(output))
    assert [r["success"] for r in first] == [True, False, True, True, False, True]
    assert first[1]["error"]["transient"] is True
    assert context["ti"].xcoms["batch_manifest"]["transient_failures"] == 2
    assert context["ti"].xcoms["batch_manifest"]["status"] == "incomplete"
    assert scan_output(output).written == 1  # not finished: a re-run cannot return it as complete

    calls_before = len(run_calls(emulator))
    manifest = run_to_end(make_operator(tmp_path, inputs=inputs), new_try())

    assert len(run_calls(emulator)) - calls_before == 2  # exactly the two failed items, nothing else
    assert (manifest["succeeded"], manifest["failed"], manifest["transient_failures"]) == (6, 0, 0)
    answers = [r["result"]["response"] for r in iter_outputs(output)]
    assert answers == [f"[{PLAIN_MODEL}] question {i}" for i in range(6)]
    assert scan_output(output).written == 6


@pytest.mark.parametrize("where", ["proc", "parent-is-a-file"])
def test_an_unusable_output_path_fails_for_good_naming_it(tmp_path: Path, emulator: Any, conn: Any, where: str) -> None:
    if where == "proc":
        output = "/proc/cfai-batch/results.jsonl"
    else:
        (tmp_path / "a-file").write_text("x")
        output = str(tmp_path / "a-file" / "results.jsonl")

    with pytest.raises(CloudflareInputError, match=rf"output {re.escape(output)} cannot be written") as raised:
        make_operator(tmp_path, output=output).execute(new_try())  # type: ignore[arg-type]
    assert isinstance(raised.value, AirflowFailException)
    assert ".cfai-" not in str(raised.value)  # no temp file the user never chose
    if where != "proc":
        assert "one of its parent folders is a file" in str(raised.value)
    assert emulator.state()["requests"] == []


def test_inputs_templated_to_a_json_string_get_a_native_rendering_hint(tmp_path: Path) -> None:
    operator = make_operator(tmp_path, inputs="{{ dag_run.conf['prompts'] }}")
    operator.inputs = "[{'prompt': 'a'}]"  # what Jinja leaves without render_template_as_native_obj

    with pytest.raises(CloudflareInputError, match="render_template_as_native_obj=True"):
        operator.execute(new_try())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "item", [{"text": "hello"}, {"prompt": 42}, {"messages": "x"}], ids=["text", "prompt-number", "messages-string"]
)
def test_inputs_a_text_model_would_refuse_fail_before_any_model_call(
    tmp_path: Path, emulator: Any, conn: Any, item: dict[str, Any]
) -> None:
    inputs = tmp_path / "prompts.jsonl"
    inputs.write_text('{"prompt": "a"}\n' + json.dumps(item) + "\n")

    with pytest.raises(CloudflareInputError, match=r"prompts\.jsonl line 2: "):
        make_operator(tmp_path, inputs=str(inputs)).execute(new_try())  # type: ignore[arg-type]
    with pytest.raises(CloudflareInputError, match=r"inputs\[1\]: "):
        make_operator(tmp_path, inputs=[{"prompt": "a"}, item]).execute(new_try())  # type: ignore[arg-type]
    assert run_calls(emulator) == []


def test_inputs_of_a_model_that_is_not_text_generation_are_passed_as_given(
    tmp_path: Path, emulator: Any, conn: Any
) -> None:
    # Embedding models take {"text": ...}: the prompt check applies to text generation only.
    operator = make_operator(
        tmp_path, model="@cf/baai/bge-base-en-v1.5", inputs=[{"text": "hello"}], engine="direct", max_failure_ratio=1.0
    )

    manifest = run_to_end(operator, new_try())

    assert manifest["total"] == 1
    assert len(run_calls(emulator)) == 1  # sent, not refused before the call
