"""WorkersAIBatchTrigger: a batch evaluation's engine, run in the triggerer while its task is deferred.

Its kwargs are plain data (locations, never the inputs or results). This module imports Airflow's
trigger base classes, which are not light: operator modules import it inside ``execute``, never at
the top.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_cfai.batch import ENGINES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from airflow_provider_cfai.batch.manifest import BatchManifest

__all__ = ["ENGINES", "WorkersAIBatchTrigger"]


class WorkersAIBatchTrigger(BaseTrigger):
    """Run a batch's direct engine, or collect its queued Batch API requests, then fire one event.

    The event's payload is ``{"status": "success"|"timeout"|"error", "manifest": BatchManifest | None,
    "message": str}``: ``timeout`` when ``deadline`` came first (what was written stays written, and
    a new run resumes after it), ``error`` when the batch could not go on (the message says why;
    ``manifest`` is then ``None``, and ``"permanent": true`` says a retry would fail the same way).

    :param cloudflare_conn_id: the Airflow connection (type ``cloudflare_ai``).
    :param engine: ``"direct"`` (paced ``/ai/run`` calls) or ``"queue"`` (poll ``request_ids``).
    :param model: the Workers AI model.
    :param inputs_path: the JSONL inputs, a local path or an fsspec URL (read by the direct engine).
    :param output: where the result records go, a local path or an fsspec URL.
    :param lora: a finetune applied to every item (direct engine).
    :param request_ids: the queued submissions' request IDs, in chunk order (queue engine).
    :param chunk_sizes: the item count of each queued chunk, when known (queue engine).
    :param account_id: another account than the connection's login.
    :param concurrency: calls in flight at once (direct engine).
    :param poll_interval: seconds between polls of a pending request (queue engine).
    :param deadline: epoch seconds after which the trigger stops with a ``timeout`` event.
    """

    def __init__(
        self,
        cloudflare_conn_id: str,
        engine: str,
        model: str,
        inputs_path: str,
        output: str,
        lora: str | None = None,
        request_ids: list[str] | None = None,
        account_id: str | None = None,
        concurrency: int = 8,
        poll_interval: float = 5.0,
        deadline: float | None = None,
        chunk_sizes: list[int] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
        if engine == "queue" and not request_ids:
            raise ValueError("the queue engine needs the submissions' request_ids")
        self.cloudflare_conn_id = cloudflare_conn_id
        self.engine = engine
        self.model = model
        self.inputs_path = inputs_path
        self.output = output
        self.lora = lora
        self.request_ids = list(request_ids) if request_ids else None
        self.account_id = account_id
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.chunk_sizes = list(chunk_sizes) if chunk_sizes is not None else None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        kwargs = inspect.signature(type(self).__init__).parameters
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            name: getattr(self, name) for name in kwargs if name != "self"
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_cfai.exceptions import AirflowFailException, CloudflareAIError

        try:
            manifest = await self._run_engine()
        except Exception as error:
            # Anything ends in one event, so the task fails with a message, not a hang; the
            # provider's own errors need no traceback.
            known = isinstance(error, CloudflareAIError)
            self.log.error("Batch on %s stopped: %s", self.model, error, exc_info=not known)
            message = str(error) if known else f"{type(error).__name__}: {error}"
            permanent = known and isinstance(error, AirflowFailException)
            yield _event({"status": "error", "manifest": None, "message": message, "permanent": permanent})
            return
        status = manifest["status"]
        message = (
            f"{manifest['succeeded']} succeeded, {manifest['failed']} failed of {manifest['total']} "
            f"({self.engine} engine)"
        )
        if status == "timeout":
            message = f"deadline reached: {message}; the records written so far are kept"
        yield _event({"status": status, "manifest": manifest, "message": message})

    async def _run_engine(self) -> BatchManifest:
        from airflow_provider_cfai.batch.engines import run_engine
        from airflow_provider_cfai.hooks.cloudflare_ai_async import CloudflareAIAsyncHook

        kwargs = self.serialize()[1]
        conn_id, account_id = kwargs.pop("cloudflare_conn_id"), kwargs.pop("account_id")
        async with CloudflareAIAsyncHook(
            conn_id, account_id=account_id, max_connections=self.concurrency, logger=self.log
        ) as client:
            return await run_engine(client, **kwargs)


def _event(payload: dict[str, Any]) -> TriggerEvent:
    return TriggerEvent(payload)  # type: ignore[no-untyped-call]
