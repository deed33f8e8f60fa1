"""The direct and queue engines against the emulator: order, usage, resume, pacing, timeouts, failures."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from connections import settings_for

from airflow_provider_cfai.batch.engines import collect_queue, plan_chunks, run_direct
from airflow_provider_cfai.emulator.catalog import public_seed
from airflow_provider_cfai.emulator.settings import DEFAULT_LORA_MODELS
from airflow_provider_cfai.exceptions import (
    CloudflareAPIError,
    CloudflareAuthError,
    CloudflareInputError,
    CloudflarePermanentAPIError,
)
from airflow_provider_cfai.hooks._connection import ConnectionSettings
from airflow_provider_cfai.hooks.cloudflare_ai_async import CloudflareAIAsyncHook

if TYPE_CHECKING:
    from airflow_provider_cfai.batch.manifest import BatchManifest
    from airflow_provider_cfai.testing import RunningEmulator

MODEL = "@cf/meta/llama-3.1-8b-instruct"
QUEUE_MODEL = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
RUN_COUNTER = "POST /accounts/{account_id}/ai/run/{model:path}"


def prompts(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"prompt": f"question {i}", "external_reference": f"q-{i}"} for i in range(start, start + n)]


def write_inputs(path: Path, items: list[Any]) -> str:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return str(path)


def read_output(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def run_calls(emulator: RunningEmulator) -> int:
    return int(emulator.state()["counters"].get(RUN_COUNTER, 0))


def direct(settings: ConnectionSettings, **kwargs: Any) -> BatchManifest:
    async def main() -> BatchManifest:
        async with CloudflareAIAsyncHook(settings=settings) as client:
            return await run_direct(client, **kwargs)

    return asyncio.run(main())


def collect(settings: ConnectionSettings, **kwargs: Any) -> BatchManifest:
    async def main() -> BatchManifest:
        async with CloudflareAIAsyncHook(settings=settings) as client:
            return await collect_queue(client, **kwargs)

    return asyncio.run(main())


def submit(emulator: RunningEmulator, chunk: list[dict[str, Any]], model: str = QUEUE_MODEL) -> requests.Response:
    return requests.post(
        f"{emulator.base_url}/accounts/{emulator.account_id}/ai/run/{model}?queueRequest=true",
        json={"requests": chunk},
        headers={"Authorization": f"Bearer {emulator.token}"},
        timeout=60,
    )


def submit_all(emulator: RunningEmulator, chunks: list[list[dict[str, Any]]]) -> list[str]:
    ids = []
    for chunk in chunks:
        response = submit(emulator, chunk)
        assert response.status_code == 200, response.text[:300]
        ids.append(response.json()["result"]["request_id"])
    return ids


# -- direct ------------------------------------------------------------------------------------------


def test_direct_engine_writes_every_result_in_input_order_with_usage_totals(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    inputs = write_inputs(tmp_path / "in.jsonl", prompts(40))
    output = tmp_path / "out.jsonl"

    manifest = direct(settings_for(emulator), model=MODEL, inputs_path=inputs, output=str(output), concurrency=8)

    records = read_output(output)
    assert [r["index"] for r in records] == list(range(40))
    assert [r["external_reference"] for r in records] == [f"q-{i}" for i in range(40)]
    assert records[17]["result"]["response"] == f"[{MODEL}] question 17"
    assert all("external_reference" not in r["result"] for r in records)
    expected_tokens = sum(r["result"]["usage"]["total_tokens"] for r in records)
    assert manifest["usage"]["total_tokens"] == expected_tokens > 0
    assert (manifest["engine"], manifest["total"], manifest["succeeded"], manifest["failed"]) == ("direct", 40, 40, 0)
    assert manifest["status"] == "success"
    assert run_calls(emulator) == 40


def test_direct_engine_applies_the_lora_to_every_item(emulator: RunningEmulator, tmp_path: Path) -> None:
    base = DEFAULT_LORA_MODELS[0]
    finetune = public_seed(45, DEFAULT_LORA_MODELS)[0]["name"]
    inputs = write_inputs(tmp_path / "in.jsonl", prompts(3))

    manifest = direct(
        settings_for(emulator), model=base, lora=finetune, inputs_path=inputs, output=str(tmp_path / "out.jsonl")
    )

    records = read_output(tmp_path / "out.jsonl")
    assert manifest["lora"] == finetune
    assert [r["result"]["response"] for r in records] == [f"[{base} + {finetune}] question {i}" for i in range(3)]


def test_a_resumed_direct_run_sends_no_item_twice(emulator: RunningEmulator, tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    first = write_inputs(tmp_path / "first.jsonl", prompts(10))
    direct(settings_for(emulator), model=MODEL, inputs_path=first, output=str(output))
    written_before = output.read_bytes()
    emulator.reset()
    everything = write_inputs(tmp_path / "all.jsonl", prompts(25))

    manifest = direct(settings_for(emulator), model=MODEL, inputs_path=everything, output=str(output))

    records = read_output(output)
    assert run_calls(emulator) == 15
    assert output.read_bytes().startswith(written_before)
    assert [r["index"] for r in records] == list(range(25))
    assert (manifest["resumed_from"], manifest["total"], manifest["succeeded"]) == (10, 25, 25)


def test_direct_engine_paces_under_the_rate_limit_without_a_single_429(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    emulator.configure(rate_limit=10, rate_window=1.0, rate_lockout=60.0)
    inputs = write_inputs(tmp_path / "in.jsonl", prompts(35))

    manifest = direct(settings_for(emulator), model=MODEL, inputs_path=inputs, output=str(tmp_path / "o.jsonl"))

    state = emulator.state()
    assert manifest["succeeded"] == 35
    assert state["rate_limited_responses"] == 0
    assert state["lockouts"] == 0


def test_a_429_mid_run_is_waited_out_per_its_retry_after_without_a_lockout(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    emulator.configure(rate_limit=100, rate_window=1.0, rate_lockout=60.0)
    # The body tells item 12 apart from the others, so the 429 lands in the middle of the run.
    rule = emulator.add_fault(
        method="POST", path=r"/ai/run/", request_body=r'"question 12"', status=429, headers={"Retry-After": "1"}
    )
    inputs = write_inputs(tmp_path / "in.jsonl", prompts(30))
    started = time.monotonic()

    manifest = direct(settings_for(emulator), model=MODEL, inputs_path=inputs, output=str(tmp_path / "o.jsonl"))

    elapsed = time.monotonic() - started
    state = emulator.state()
    assert emulator.fired(rule) == 1
    assert elapsed >= 1.0  # item 12 waited its Retry-After
    assert manifest["succeeded"] == 30
    assert read_output(tmp_path / "o.jsonl")[12]["success"] is True
    assert state["lockouts"] == 0
    assert run_calls(emulator) == 31


def test_items_cloudflare_refuses_become_failure_records_and_the_batch_goes_on(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    items = [*prompts(2), {"external_reference": "no-prompt"}, *prompts(2, start=3)]
    inputs = write_inputs(tmp_path / "in.jsonl", items)

    manifest = direct(settings_for(emulator), model=MODEL, inputs_path=inputs, output=str(tmp_path / "o.jsonl"))

    records = read_output(tmp_path / "o.jsonl")
    assert [r["success"] for r in records] == [True, True, False, True, True]
    assert records[2]["external_reference"] == "no-prompt"
    assert records[2]["error"]["status"] == 400
    assert records[2]["error"]["codes"] == [5006]
    assert "prompt" in records[2]["error"]["message"]
    assert (manifest["succeeded"], manifest["failed"], manifest["failure_ratio"]) == (4, 1, 0.2)


def test_a_5xx_that_outlives_its_retries_fails_only_its_item(emulator: RunningEmulator, tmp_path: Path) -> None:
    rule = emulator.add_fault(method="POST", path=r"/ai/run/", request_body=r'"question 1"', status=500, times=10)
    inputs = write_inputs(tmp_path / "in.jsonl", prompts(3))

    settings = settings_for(emulator, max_retries=1, retry_budget=5.0)
    manifest = direct(settings, model=MODEL, inputs_path=inputs, output=str(tmp_path / "o.jsonl"))

    records = read_output(tmp_path / "o.jsonl")
    assert emulator.fired(rule) == 2
    assert [r["success"] for r in records] == [True, False, True]
    assert records[1]["error"]["status"] == 500
    assert manifest["failed"] == 1


def test_rejected_credentials_stop_the_batch_instead_of_failing_every_item(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    inputs = write_inputs(tmp_path / "in.jsonl", prompts(50))

    with pytest.raises(CloudflareAuthError):
        direct(
            settings_for(emulator, token="not-the-token-0123456789"),
            model=MODEL,
            inputs_path=inputs,
            output=str(tmp_path / "o.jsonl"),
            concurrency=4,
        )

    assert run_calls(emulator) <= 4 + 4  # the calls in flight, not one per item
    assert read_output(tmp_path / "o.jsonl") == []


def test_an_unreachable_api_stops_the_batch_naming_the_server(emulator: RunningEmulator, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = settings_for(emulator, base_url=f"http://127.0.0.1:{port}/client/v4", max_retries=0)
    inputs = write_inputs(tmp_path / "in.jsonl", prompts(5))

    with pytest.raises(CloudflareAPIError) as raised:
        direct(settings, model=MODEL, inputs_path=inputs, output=str(tmp_path / "o.jsonl"))

    assert raised.value.status is None
    assert f"http://127.0.0.1:{port}" in str(raised.value)
    assert emulator.token not in str(raised.value)


def test_a_deadline_already_past_returns_a_timeout_without_any_call(emulator: RunningEmulator, tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in.jsonl", prompts(5))

    manifest = direct(
        settings_for(emulator),
        model=MODEL,
        inputs_path=inputs,
        output=str(tmp_path / "o.jsonl"),
        deadline=time.time() - 1,
    )

    assert manifest["status"] == "timeout"
    assert (manifest["total"], manifest["succeeded"]) == (5, 0)
    assert run_calls(emulator) == 0


def test_a_short_deadline_stops_a_paced_run_and_keeps_a_complete_prefix(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    emulator.configure(rate_limit=5, rate_window=1.0, rate_lockout=60.0)
    inputs = write_inputs(tmp_path / "in.jsonl", prompts(40))
    # 40 calls at 5 per second need 7 s or more: a 3 s deadline stops the run part way, with
    # room for a slow first call on a loaded machine.
    manifest = direct(
        settings_for(emulator),
        model=MODEL,
        inputs_path=inputs,
        output=str(tmp_path / "o.jsonl"),
        concurrency=4,
        deadline=time.time() + 3.0,
    )

    records = read_output(tmp_path / "o.jsonl")
    assert manifest["status"] == "timeout"
    assert manifest["total"] == 40
    assert 0 < len(records) < 40
    assert [r["index"] for r in records] == list(range(len(records)))
    assert manifest["succeeded"] == len(records)
    assert emulator.state()["lockouts"] == 0


def test_concurrency_below_one_is_refused_before_any_call(emulator: RunningEmulator, tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in.jsonl", prompts(1))

    with pytest.raises(CloudflareInputError, match="concurrency"):
        direct(settings_for(emulator), model=MODEL, inputs_path=inputs, output=str(tmp_path / "o"), concurrency=0)

    assert run_calls(emulator) == 0


# -- queue: chunks -----------------------------------------------------------------------------------


def test_chunks_stay_under_the_limit_and_each_is_as_full_as_it_can_be() -> None:
    items = [{"prompt": "x" * (i * 37 % 500)} for i in range(300)]

    chunks = plan_chunks(items, max_bytes=5_000)

    assert [item for chunk in chunks for item in chunk] == items
    for chunk, following in itertools.pairwise(chunks):
        assert len(json.dumps({"requests": chunk})) <= 5_000
        assert len(json.dumps({"requests": [*chunk, following[0]]})) > 5_000
    assert len(json.dumps({"requests": chunks[-1]})) <= 5_000


def test_chunk_sizes_count_non_ascii_text_as_sent() -> None:
    items = [{"prompt": "é" * 1000} for _ in range(10)]  # 6 bytes each as \\u00e9

    chunks = plan_chunks(items, max_bytes=20_000)

    assert all(len(json.dumps({"requests": chunk}).encode()) <= 20_000 for chunk in chunks)
    assert len(chunks) == 4


def test_an_item_larger_than_a_submission_is_refused_by_position() -> None:
    with pytest.raises(CloudflareInputError, match=r"inputs\[1\].*engine='direct'"):
        plan_chunks([{"prompt": "a"}, {"prompt": "x" * 200}], max_bytes=100)


def test_chunking_at_10_mb_lets_every_submission_through_the_emulators_limit(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    emulator.configure(queue_delay=0)
    items = [{"prompt": f"{i} " + "y" * 1_100_000, "external_reference": f"big-{i}"} for i in range(20)]

    chunks = plan_chunks(items)
    whole = submit(emulator, items)
    request_ids = submit_all(emulator, chunks)
    manifest = collect(
        settings_for(emulator),
        model=QUEUE_MODEL,
        request_ids=request_ids,
        output=str(tmp_path / "o.jsonl"),
        poll_interval=0.05,
    )

    assert whole.status_code == 413  # one submission of everything is over Cloudflare's limit
    assert [len(chunk) for chunk in chunks] == [9, 9, 2]
    assert manifest["total"] == manifest["succeeded"] == 20
    records = read_output(tmp_path / "o.jsonl")
    assert [r["external_reference"] for r in records] == [f"big-{i}" for i in range(20)]
    assert records[19]["result"]["response"].startswith(f"[{QUEUE_MODEL}] 19 yyy")


# -- queue: collecting --------------------------------------------------------------------------------


def test_queue_engine_polls_until_responses_and_writes_chunks_in_order(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    emulator.configure(queue_running_after=0.1, queue_delay=0.4)
    items = prompts(12)
    chunks = plan_chunks(items, max_bytes=300)
    request_ids = submit_all(emulator, chunks)

    manifest = collect(
        settings_for(emulator),
        model=QUEUE_MODEL,
        request_ids=request_ids,
        output=str(tmp_path / "o.jsonl"),
        poll_interval=0.1,
    )

    records = read_output(tmp_path / "o.jsonl")
    batches = emulator.state()["batches"]
    assert len(chunks) > 2
    assert [r["index"] for r in records] == list(range(12))
    assert [r["external_reference"] for r in records] == [f"q-{i}" for i in range(12)]
    assert records[11]["result"]["response"] == f"[{QUEUE_MODEL}] question 11"
    assert batches[0]["polls"] >= 2  # it saw the batch pending first
    assert manifest["request_ids"] == request_ids
    assert manifest["usage"]["total_tokens"] == sum(r["result"]["usage"]["total_tokens"] for r in records)
    assert (manifest["engine"], manifest["total"], manifest["succeeded"], manifest["status"]) == (
        "queue",
        12,
        12,
        "success",
    )


def test_queue_engine_waits_its_poll_interval_between_polls_of_a_pending_batch(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    emulator.configure(queue_running_after=0, queue_delay=0.3)
    request_ids = submit_all(emulator, [prompts(2)])
    asked: list[float] = []

    async def short_sleep(seconds: float) -> None:
        asked.append(seconds)
        await asyncio.sleep(0.05)

    collect(
        settings_for(emulator),
        model=QUEUE_MODEL,
        request_ids=request_ids,
        output=str(tmp_path / "o.jsonl"),
        poll_interval=7.5,
        sleep=short_sleep,
    )

    (batch,) = emulator.state()["batches"]
    assert len(asked) >= 2
    assert set(asked) == {7.5}
    assert batch["polls"] == len(asked) + 1


def test_queue_usage_is_cloudflares_per_chunk_total_as_documented(emulator: RunningEmulator, tmp_path: Path) -> None:
    # The poll answer of Cloudflare's Batch API docs: items carry no usage, the chunk does.
    documented = {
        "result": {
            "responses": [{"id": 0, "result": {"response": "yes"}, "success": True, "external_reference": None}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12},
        },
        "success": True,
        "errors": [],
        "messages": [],
    }
    rule = emulator.add_fault(
        method="POST", path=r"/ai/run/", request_body=r'"request_id"', status=200, body=documented
    )

    manifest = collect(
        settings_for(emulator),
        model=QUEUE_MODEL,
        request_ids=["r-1"],
        output=str(tmp_path / "o.jsonl"),
        poll_interval=1,
    )

    assert emulator.fired(rule) == 1
    assert manifest["usage"] == {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12}
    assert read_output(tmp_path / "o.jsonl")[0]["result"] == {"response": "yes"}


def test_queue_items_that_failed_become_failure_records(emulator: RunningEmulator, tmp_path: Path) -> None:
    emulator.configure(queue_delay=0)
    request_ids = submit_all(emulator, [[{"prompt": "ok"}, {"external_reference": "bad"}]])

    manifest = collect(
        settings_for(emulator),
        model=QUEUE_MODEL,
        request_ids=request_ids,
        output=str(tmp_path / "o.jsonl"),
        poll_interval=0.05,
    )

    ok, bad = read_output(tmp_path / "o.jsonl")
    assert ok["success"] is True
    assert bad["success"] is False
    assert bad["external_reference"] == "bad"
    assert bad["error"]["codes"] == [5006]
    assert (manifest["failed"], manifest["failure_ratio"]) == (1, 0.5)


def test_a_resumed_queue_collection_writes_only_the_missing_records(emulator: RunningEmulator, tmp_path: Path) -> None:
    emulator.configure(queue_delay=0)
    request_ids = submit_all(emulator, plan_chunks(prompts(9), max_bytes=200))
    full, partial = tmp_path / "full.jsonl", tmp_path / "partial.jsonl"
    settings = settings_for(emulator)
    collect(settings, model=QUEUE_MODEL, request_ids=request_ids, output=str(full), poll_interval=0.05)
    partial.write_text("".join(full.read_text().splitlines(keepends=True)[:4]))

    manifest = collect(settings, model=QUEUE_MODEL, request_ids=request_ids, output=str(partial), poll_interval=0.05)

    assert partial.read_bytes() == full.read_bytes()
    assert (manifest["resumed_from"], manifest["total"], manifest["succeeded"]) == (4, 9, 9)


def test_a_chunk_missing_responses_gets_failure_records_for_them(emulator: RunningEmulator, tmp_path: Path) -> None:
    emulator.configure(queue_delay=0)
    request_ids = submit_all(emulator, [prompts(2)])

    manifest = collect(
        settings_for(emulator),
        model=QUEUE_MODEL,
        request_ids=request_ids,
        output=str(tmp_path / "o.jsonl"),
        poll_interval=0.05,
        chunk_sizes=[3],
    )

    records = read_output(tmp_path / "o.jsonl")
    assert [r["success"] for r in records] == [True, True, False]
    assert "no response" in records[2]["error"]["message"]
    assert manifest["total"] == 3


def test_a_failed_poll_is_retried(emulator: RunningEmulator, tmp_path: Path) -> None:
    emulator.configure(queue_delay=0)
    request_ids = submit_all(emulator, [prompts(2)])
    rule = emulator.add_fault(method="POST", path=r"/ai/run/", request_body=r'"request_id"', status=503)

    manifest = collect(
        settings_for(emulator),
        model=QUEUE_MODEL,
        request_ids=request_ids,
        output=str(tmp_path / "o.jsonl"),
        poll_interval=0.05,
    )

    assert emulator.fired(rule) == 1
    assert manifest["succeeded"] == 2


def test_an_unknown_request_id_fails_the_collection(emulator: RunningEmulator, tmp_path: Path) -> None:
    with pytest.raises(CloudflarePermanentAPIError) as raised:
        collect(
            settings_for(emulator),
            model=QUEUE_MODEL,
            request_ids=["00000000-0000-0000-0000-000000000000"],
            output=str(tmp_path / "o.jsonl"),
            poll_interval=0.05,
        )

    assert raised.value.status == 404


def test_a_queue_deadline_returns_a_timeout_with_nothing_written(emulator: RunningEmulator, tmp_path: Path) -> None:
    emulator.configure(queue_delay=3600)
    request_ids = submit_all(emulator, [prompts(3), prompts(2, start=3)])

    manifest = collect(
        settings_for(emulator),
        model=QUEUE_MODEL,
        request_ids=request_ids,
        output=str(tmp_path / "o.jsonl"),
        poll_interval=0.05,
        deadline=time.time() + 0.3,
        chunk_sizes=[3, 2],
    )

    assert manifest["status"] == "timeout"
    assert (manifest["total"], manifest["succeeded"]) == (5, 0)
    assert read_output(tmp_path / "o.jsonl") == []
