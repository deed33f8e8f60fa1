"""The emulator's asynchronous Batch API (``?queueRequest=true``): submit, poll, limits, faults."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_cfai.emulator.batch_queue import BatchQueue
from airflow_provider_cfai.emulator.envelope import ApiError
from airflow_provider_cfai.emulator.faults import parse_fault

QUEUE_MODEL = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
LORA_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
RUN = f"/ai/run/{QUEUE_MODEL}"
QUEUED = f"{RUN}?queueRequest=true"


def submit(api: Any, requests: list[Any], path: str = QUEUED) -> str:
    response = api.post(path, json={"requests": requests})
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["status"] == "queued"
    assert result["model"] == QUEUE_MODEL
    return str(result["request_id"])


def poll(api: Any, request_id: str, path: str = QUEUED) -> dict[str, Any]:
    response = api.post(path, json={"request_id": request_id})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["result"]
    return result


# -- submit and poll ---------------------------------------------------------------------------------


def test_poll_answers_queued_until_the_delay_has_passed(api: Any) -> None:
    api.emulator.configure(queue_running_after=3600, queue_delay=3600)
    request_id = submit(api, [{"prompt": "hello"}])

    result = poll(api, request_id)

    assert result == {"status": "queued", "request_id": request_id, "model": QUEUE_MODEL}


def test_poll_answers_running_after_queue_running_after(api: Any) -> None:
    api.emulator.configure(queue_running_after=0, queue_delay=3600)
    request_id = submit(api, [{"prompt": "hello"}])

    assert poll(api, request_id)["status"] == "running"


def test_poll_after_the_delay_answers_every_response_in_order_with_usage(api: Any) -> None:
    api.emulator.configure(queue_delay=0)
    items = [{"prompt": f"question {i}", "external_reference": f"ref-{i}"} for i in range(3)]
    request_id = submit(api, items)

    result = poll(api, request_id)

    assert "status" not in result
    assert [r["id"] for r in result["responses"]] == [0, 1, 2]
    assert [r["external_reference"] for r in result["responses"]] == ["ref-0", "ref-1", "ref-2"]
    assert all(r["success"] is True for r in result["responses"])
    assert result["responses"][1]["result"]["response"] == f"[{QUEUE_MODEL}] question 1"
    per_item = [r["result"]["usage"]["total_tokens"] for r in result["responses"]]
    assert result["usage"]["total_tokens"] == sum(per_item) > 0


def test_poll_without_queue_request_in_the_url_is_accepted(api: Any) -> None:
    api.emulator.configure(queue_delay=0)
    request_id = submit(api, [{"prompt": "hello"}])

    result = poll(api, request_id, path=RUN)

    assert result["responses"][0]["success"] is True


def test_polls_stay_answerable_after_completion(api: Any) -> None:
    api.emulator.configure(queue_delay=0)
    request_id = submit(api, [{"prompt": "hello"}])

    assert poll(api, request_id) == poll(api, request_id)


def test_an_item_the_model_would_refuse_fails_alone(api: Any) -> None:
    api.emulator.configure(queue_delay=0)
    request_id = submit(api, [{"prompt": "ok"}, {"external_reference": "no-prompt"}, "not an object"])

    responses = poll(api, request_id)["responses"]

    assert [r["success"] for r in responses] == [True, False, False]
    assert responses[1]["external_reference"] == "no-prompt"
    assert responses[1]["errors"][0]["code"] == 5006
    assert responses[1]["result"] is None


def test_state_lists_batches_without_their_responses_and_reset_forgets_them(api: Any) -> None:
    api.emulator.configure(queue_delay=0)
    request_id = submit(api, [{"prompt": "a"}, {"prompt": "b"}])
    poll(api, request_id)

    (batch,) = api.emulator.state()["batches"]
    api.emulator.reset()

    assert batch["request_id"] == request_id
    assert batch["items"] == 2
    assert batch["polls"] == 1
    assert batch["done"] is True
    assert "responses" not in batch
    assert api.emulator.state()["batches"] == []


# -- refusals ----------------------------------------------------------------------------------------


def test_payload_over_the_default_10_mb_is_refused_with_413(api: Any) -> None:
    big = "x" * 5_000_000
    response = api.post(QUEUED, json={"requests": [{"prompt": big}, {"prompt": big}]})

    assert response.status_code == 413
    assert api.error_of(response)["code"] == 1013
    assert "10000000" in api.error_of(response)["message"]
    assert api.emulator.state()["batches"] == []


def test_payload_at_the_limit_is_queued_and_one_byte_more_is_not(api: Any) -> None:
    api.emulator.configure(queue_max_bytes=1000)

    def body(size: int) -> bytes:
        frame = b'{"requests": [{"prompt": ""}]}'
        return frame[:-4] + b"x" * (size - len(frame)) + frame[-4:]

    at_limit = api.post(QUEUED, data=body(1000), headers={"Content-Type": "application/json"})
    over = api.post(QUEUED, data=body(1001), headers={"Content-Type": "application/json"})

    assert at_limit.status_code == 200, at_limit.text
    assert over.status_code == 413, over.text


def test_queue_request_on_a_model_without_async_queue_is_refused(api: Any) -> None:
    response = api.post(f"/ai/run/{LORA_MODEL}?queueRequest=true", json={"requests": [{"prompt": "hi"}]})

    assert response.status_code == 400
    assert api.error_of(response)["code"] == 1011


@pytest.mark.parametrize("body", [{}, {"requests": []}, {"requests": "x"}], ids=["none", "empty", "not-a-list"])
def test_submit_without_a_non_empty_requests_list_is_refused(api: Any, body: dict[str, Any]) -> None:
    response = api.post(QUEUED, json=body)

    assert response.status_code == 400
    assert api.error_of(response)["code"] == 1012


def test_poll_of_an_unknown_request_id_is_404(api: Any) -> None:
    response = api.post(QUEUED, json={"request_id": "00000000-0000-0000-0000-000000000000"})

    assert response.status_code == 404
    assert api.error_of(response)["code"] == 1014


def test_poll_on_another_models_url_is_404(api: Any) -> None:
    request_id = submit(api, [{"prompt": "hi"}])

    response = api.post("/ai/run/@cf/openai/gpt-oss-120b?queueRequest=true", json={"request_id": request_id})

    assert response.status_code == 404


def test_ordinary_runs_are_unchanged(api: Any) -> None:
    response = api.post(RUN, json={"prompt": "plain"})

    assert response.status_code == 200
    assert response.json()["result"]["response"] == f"[{QUEUE_MODEL}] plain"


@pytest.mark.parametrize("key", ["queue_delay", "queue_running_after", "queue_max_bytes"])
def test_queue_settings_refuse_negative_values(api: Any, key: str) -> None:
    with pytest.raises(RuntimeError, match=key):
        api.emulator.configure(**{key: -1})


# -- faults that tell submits and polls apart -------------------------------------------------------


def test_a_fault_with_request_body_hits_polls_and_spares_submits(api: Any) -> None:
    api.emulator.configure(queue_delay=0)
    rule = api.emulator.add_fault(method="POST", path=r"/ai/run/", request_body=r'"request_id"', status=503)

    request_id = submit(api, [{"prompt": "hi"}])
    failed = api.post(QUEUED, json={"request_id": request_id})
    retried = poll(api, request_id)

    assert api.emulator.fired(rule) == 1
    assert failed.status_code == 503
    assert retried["responses"][0]["success"] is True


def test_a_submit_fault_can_drop_the_connection_after_reading_the_body(api: Any) -> None:
    import requests

    rule = api.emulator.add_fault(method="POST", path=r"/ai/run/", request_body=r'"requests"', action="drop")

    with pytest.raises(requests.exceptions.ConnectionError):
        api.post(QUEUED, json={"requests": [{"prompt": "hi"}]})

    assert api.emulator.fired(rule) == 1
    assert api.emulator.state()["batches"] == []


def test_a_fault_after_commit_queues_the_batch_but_loses_the_answer(api: Any) -> None:
    import requests

    rule = api.emulator.add_fault(path=r"/ai/run/", request_body=r'"requests"', action="drop_after_commit")

    with pytest.raises(requests.exceptions.ConnectionError):
        api.post(QUEUED, json={"requests": [{"prompt": "hi"}]})

    assert api.emulator.fired(rule) == 1
    assert len(api.emulator.state()["batches"]) == 1


def test_request_body_must_be_a_valid_regex() -> None:
    with pytest.raises(ValueError, match="request_body"):
        parse_fault({"path": "/ai/run", "request_body": "("})


# -- the queue itself, on a fake clock ---------------------------------------------------------------


def test_batch_moves_from_queued_to_running_to_done_on_its_clock() -> None:
    now = [100.0]
    queue = BatchQueue(lambda: now[0])
    response = {"id": 0, "success": True, "result": {"usage": {"prompt_tokens": 2, "total_tokens": 5}}}
    request_id = queue.submit("m", [response], size=10, running_after=1.0, delay=3.0)["request_id"]

    seen = []
    for t in (100.0, 100.9, 101.0, 102.9, 103.0):
        now[0] = t
        result = queue.poll("m", request_id)
        seen.append(result.get("status", "done"))

    assert seen == ["queued", "queued", "running", "running", "done"]
    assert queue.poll("m", request_id)["usage"] == {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 5}


def test_unknown_request_id_raises_a_404_api_error() -> None:
    with pytest.raises(ApiError) as raised:
        BatchQueue(lambda: 0.0).poll("m", "nope")

    assert raised.value.status == 404
