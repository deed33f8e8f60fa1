"""The asynchronous Batch API: ``POST /ai/run/{model}?queueRequest=true`` submits, the same URL polls.

A submit (``{"requests": [...]}``) answers ``{"status": "queued", "request_id", "model"}``; a poll
(``{"request_id": ...}``, with or without ``?queueRequest=true``, as Cloudflare's older pages drop it)
answers ``queued`` until ``queue_running_after`` seconds have passed, then ``running`` until
``queue_delay`` seconds, then ``{"responses": [...], "usage": {...}}`` for as long as the emulator
runs (Cloudflare documents no retention). Each item is answered as ``/ai/run`` would answer it alone;
one that ``/ai/run`` would refuse fails on its own (``"success": false``) without failing the batch.

Only models listed in ``async_queue_models`` (the catalog's ``async_queue`` property) queue.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.emulator.envelope import ApiError
from airflow_provider_cfai.emulator.inference import run_model

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from airflow_provider_cfai.emulator.state import EmulatorState

__all__ = ["BatchQueue"]

_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclasses.dataclass
class _Batch:
    request_id: str
    model: str
    items: int
    size: int
    submitted_at: float
    running_at: float
    ready_at: float
    responses: list[dict[str, Any]]
    usage: dict[str, int]
    polls: int = 0


class BatchQueue:
    """Queued batches by request id, behind one lock; times come from the emulator's clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}

    def submit(
        self,
        model: str,
        responses: list[dict[str, Any]],
        *,
        size: int,
        running_after: float,
        delay: float,
    ) -> dict[str, Any]:
        usage = dict.fromkeys(_USAGE_KEYS, 0)
        for response in responses:
            item_usage = (response.get("result") or {}).get("usage") or {}
            for key in _USAGE_KEYS:
                usage[key] += int(item_usage.get(key, 0))
        now = self._clock()
        batch = _Batch(
            request_id=str(uuid.uuid4()),
            model=model,
            items=len(responses),
            size=size,
            submitted_at=now,
            running_at=now + min(running_after, delay),
            ready_at=now + delay,
            responses=responses,
            usage=usage,
        )
        with self._lock:
            self._batches[batch.request_id] = batch
        return {"status": "queued", "request_id": batch.request_id, "model": model}

    def poll(self, model: str, request_id: str) -> dict[str, Any]:
        with self._lock:
            batch = self._batches.get(request_id)
            if batch is None or batch.model != model:
                raise ApiError(404, 1014, f"Batch request {request_id} not found for model {model}")
            batch.polls += 1
            now = self._clock()
            if now < batch.ready_at:
                status = "queued" if now < batch.running_at else "running"
                return {"status": status, "request_id": request_id, "model": model}
            # The stored lists are never mutated after submit; the caller serialises them.
            return {"responses": batch.responses, "usage": dict(batch.usage)}

    def describe(self) -> list[dict[str, Any]]:
        """One line per batch, for the control API's ``/state`` (never the responses)."""
        with self._lock:
            now = self._clock()
            return [
                {
                    "request_id": b.request_id,
                    "model": b.model,
                    "items": b.items,
                    "bytes": b.size,
                    "polls": b.polls,
                    "done": now >= b.ready_at,
                }
                for b in self._batches.values()
            ]

    def clear(self) -> None:
        with self._lock:
            self._batches.clear()

    def answer(self, state: EmulatorState, model: str, query: Mapping[str, str], raw: bytes) -> dict[str, Any] | None:
        """The ``result`` of a queue submit or poll, or ``None`` when the call is an ordinary run."""
        queue_request = query.get("queueRequest", "").lower() == "true"
        if not queue_request and b'"request_id"' not in raw:
            return None
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, 1001, "Request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, 1001, "Request body must be a JSON object")
        if "request_id" in body and "requests" not in body:
            request_id = body["request_id"]
            if not isinstance(request_id, str) or not request_id:
                raise ApiError(400, 1012, "'request_id' must be the string a queued request returned")
            return self.poll(model, request_id)
        if not queue_request:
            return None
        settings = state.settings
        if model not in settings.async_queue_models:
            raise ApiError(400, 1011, f"Model {model} does not support queueRequest (the Batch API)")
        if len(raw) > settings.queue_max_bytes:
            raise ApiError(
                413,
                1013,
                f"Batch payload is {len(raw)} bytes; the limit is {settings.queue_max_bytes} bytes. "
                "Split the requests into smaller batches.",
            )
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise ApiError(400, 1012, "A queued request needs 'requests': a non-empty list of model inputs")
        responses = [_run_item(state, model, index, item) for index, item in enumerate(requests)]
        return self.submit(
            model,
            responses,
            size=len(raw),
            running_after=settings.queue_running_after,
            delay=settings.queue_delay,
        )


def _run_item(state: EmulatorState, model: str, index: int, item: object) -> dict[str, Any]:
    reference = item.get("external_reference") if isinstance(item, dict) else None
    response: dict[str, Any] = {"id": index, "external_reference": reference}
    try:
        if not isinstance(item, dict):
            raise ApiError(400, 5006, "each request must be a JSON object")
        inputs = {key: value for key, value in item.items() if key != "external_reference"}
        response.update(result=run_model(state, model, inputs), success=True)
    except ApiError as error:
        # Cloudflare documents no shape for a failed item; this one mirrors the envelope's errors.
        response.update(result=None, success=False, errors=[{"code": error.code, "message": error.message}])
    return response
