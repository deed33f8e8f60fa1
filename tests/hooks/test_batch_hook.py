"""CloudflareAIHook.submit_batch / poll_batch against the emulator's asynchronous Batch API."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_cfai.exceptions import (
    AirflowFailException,
    CloudflareInputError,
    CloudflareOutcomeUnknownError,
    CloudflarePermanentAPIError,
)

QUEUE_MODEL = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"


def test_submit_queues_the_requests_and_poll_returns_their_responses(emulator: Any, make_hook: Any) -> None:
    emulator.configure(queue_running_after=0.0, queue_delay=0.0)
    hook = make_hook()

    queued = hook.submit_batch(QUEUE_MODEL, [{"prompt": "a", "external_reference": "q1"}, {"prompt": "b"}])
    done = hook.poll_batch(QUEUE_MODEL, queued["request_id"])

    assert queued["status"] == "queued"
    (batch,) = emulator.state()["batches"]
    assert (batch["request_id"], batch["items"]) == (queued["request_id"], 2)
    responses = sorted(done["responses"], key=lambda r: r["id"])
    assert [(r["id"], r["external_reference"], r["success"]) for r in responses] == [(0, "q1", True), (1, None, True)]
    assert responses[1]["result"]["response"] == f"[{QUEUE_MODEL}] b"
    assert done["usage"]["total_tokens"] > 0


def test_poll_reports_a_batch_still_queued(emulator: Any, make_hook: Any) -> None:
    emulator.configure(queue_running_after=30.0, queue_delay=60.0)
    hook = make_hook()
    queued = hook.submit_batch(QUEUE_MODEL, [{"prompt": "a"}])

    assert hook.poll_batch(QUEUE_MODEL, queued["request_id"])["status"] == "queued"


def test_submit_and_poll_send_the_documented_requests(emulator: Any, make_hook: Any) -> None:
    emulator.configure(queue_running_after=0.0, queue_delay=0.0)
    hook = make_hook()
    queued = hook.submit_batch(QUEUE_MODEL, [{"prompt": "a"}])
    # Each fault answers only a body of the documented shape: a poll {"request_id"}, a submit {"requests"}.
    poll_rule = emulator.add_fault(path=r"/ai/run/", method="POST", request_body=r'^\{"request_id":', status=418)
    submit_rule = emulator.add_fault(path=r"/ai/run/", method="POST", request_body=r'^\{"requests": \[', status=418)

    with pytest.raises(CloudflarePermanentAPIError, match="HTTP 418"):
        hook.poll_batch(QUEUE_MODEL, queued["request_id"])
    with pytest.raises(CloudflarePermanentAPIError, match="HTTP 418"):
        hook.submit_batch(QUEUE_MODEL, [{"prompt": "b"}])

    assert (emulator.fired(poll_rule), emulator.fired(submit_rule)) == (1, 1)
    runs = [r for r in emulator.state()["requests"] if "/ai/run/" in r["path"]]
    assert all(r["path"].endswith(QUEUE_MODEL) for r in runs)


def test_submit_to_a_model_without_batch_support_is_a_permanent_error(emulator: Any, make_hook: Any) -> None:
    with pytest.raises(CloudflarePermanentAPIError, match="HTTP 400"):
        make_hook().submit_batch("@cf/mistral/mistral-7b-instruct-v0.2-lora", [{"prompt": "a"}])


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        pytest.param([], "at least one model input", id="empty"),
        pytest.param([{"prompt": "a"}, "b"], r"requests\[1\] must be a mapping", id="not-a-mapping"),
    ],
)
def test_submit_refuses_bad_requests_before_any_call(
    emulator: Any, make_hook: Any, requests: list[Any], message: str
) -> None:
    with pytest.raises(CloudflareInputError, match=message):
        make_hook().submit_batch(QUEUE_MODEL, requests)

    assert emulator.state()["requests"] == []


def submits(emulator: Any) -> int:
    return sum(1 for r in emulator.state()["requests"] if r["path"].endswith(QUEUE_MODEL))


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"action": "drop_after_commit"}, id="connection-lost-after-queueing"),
        pytest.param({"action": "respond", "status": 503}, id="5xx"),
        pytest.param({"action": "garble_after_commit"}, id="garbled-200-truncated-json"),
        pytest.param({"action": "garble_after_commit", "html": True}, id="garbled-200-html-page"),
        pytest.param(
            {"action": "garble_after_commit", "body": {"success": True, "result": {"status": "queued"}}},
            id="200-without-request-id",
        ),
    ],
)
def test_a_submit_with_an_unknown_outcome_is_never_sent_twice(
    emulator: Any, make_hook: Any, fault: dict[str, Any]
) -> None:
    # Cloudflare cannot list queued batches: re-sending could queue the inputs twice, unseen. Nor may
    # Airflow's own retry re-send it: the error says what to check and is not retried.
    hook = make_hook()
    hook._sleep = lambda seconds: None
    rule = emulator.add_fault(path=r"/ai/run/", method="POST", request_body='"requests"', **fault)
    queued_for_real = fault["action"] != "respond"

    with pytest.raises(CloudflareOutcomeUnknownError) as caught:
        hook.submit_batch(QUEUE_MODEL, [{"prompt": "a"}])

    assert isinstance(caught.value, AirflowFailException)
    message = str(caught.value)
    assert f"Batch API submit of 1 input(s) to {QUEUE_MODEL} may have been queued" in message
    assert "Check the account's Workers AI usage" in message
    assert emulator.fired(rule) == 1
    assert submits(emulator) == 1
    assert len(emulator.state()["batches"]) == (1 if queued_for_real else 0)


def test_a_refused_submit_is_retried(emulator: Any, make_hook: Any) -> None:
    hook = make_hook()
    waits: list[float] = []
    hook._sleep = waits.append
    rule = emulator.add_fault(
        path=r"/ai/run/", method="POST", request_body='"requests"', status=429, headers={"Retry-After": "3"}
    )

    queued = hook.submit_batch(QUEUE_MODEL, [{"prompt": "a"}])

    assert emulator.fired(rule) == 1
    assert waits == [3.0]
    assert [b["request_id"] for b in emulator.state()["batches"]] == [queued["request_id"]]


def test_a_submit_refused_at_connect_sent_nothing_and_is_retried(emulator: Any, make_hook: Any) -> None:
    import dataclasses
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hook = make_hook(host=f"http://127.0.0.1:{port}/client/v4")
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        # The server comes up while the hook waits: the retry reaches it.
        waits.append(seconds)
        hook.__dict__["settings"] = dataclasses.replace(hook.settings, base_url=emulator.base_url)

    hook._sleep = sleep

    queued = hook.submit_batch(QUEUE_MODEL, [{"prompt": "a"}])

    assert len(waits) == 1
    assert [b["request_id"] for b in emulator.state()["batches"]] == [queued["request_id"]]
