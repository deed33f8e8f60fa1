"""Operator that runs a Workers AI model over many inputs without holding a worker slot."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai._numbers import whole_number
from airflow_provider_cfai.batch import ENGINES as BATCH_ENGINES
from airflow_provider_cfai.exceptions import AirflowFailException, CloudflareAIError, CloudflareInputError
from airflow_provider_cfai.operators._common import (
    CloudflareAIBaseOperator,
    as_bool,
    check_choice,
    check_text,
    is_template,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import Context

    from airflow_provider_cfai.batch.manifest import BatchManifest

__all__ = ["WorkersAIBatchOperator"]

ENGINES = ("auto", *BATCH_ENGINES)
#: XCom keys besides ``return_value``: the queued batches (pushed before deferring), and the manifest
#: of a batch that failed the task (timeout, too many failures).
REQUEST_IDS_KEY = "batch_request_ids"
MANIFEST_KEY = "batch_manifest"
# The triggerer's own timeout is only a backstop: the trigger stops at the deadline and reports it.
_GRACE = 60.0


class WorkersAIBatchOperator(CloudflareAIBaseOperator):
    """Run a Workers AI model over many inputs; write one result line per input; return a manifest.

    Results go to ``output`` as JSONL, one line per input in input order (``index``,
    ``external_reference``, ``success``, ``result`` or ``error``). XCom ``return_value`` gets a small
    :class:`~airflow_provider_cfai.batch.manifest.BatchManifest` (counts, usage, ``status``), never the results.

    Two engines: ``queue`` submits the inputs to Cloudflare's asynchronous Batch API (models with the
    catalog's ``async_queue`` property, no ``lora``) and polls for the answers; ``direct`` makes paced,
    bounded-concurrency ``/ai/run`` calls (every LoRA base model). ``engine="auto"`` picks from the
    catalog. With ``deferrable=True`` the worker only validates (and submits, for ``queue``) and then
    frees its slot: the triggerer polls or makes the calls.

    Retries re-attach, never redo: queued request IDs are recorded before deferring (in
    ``<output>.batch.json``, in XCom ``batch_request_ids`` and, on Airflow 3.3+, in the task state
    store), and the direct engine resumes after the records already in ``output``. A batch that ran
    before with the same inputs and settings and is complete is returned without sending any item;
    delete ``output`` to run it again. ``execution_timeout`` is the batch's deadline: reaching it
    raises :class:`~airflow_provider_cfai.exceptions.BatchTimeoutError` (retried, resuming), keeping
    what was written. When more than ``max_failure_ratio`` of the items failed, the task fails with
    :class:`~airflow_provider_cfai.exceptions.BatchFailureRatioError` once the output is complete.

    With ``deferrable=True`` and a local ``output``, the triggerer writes the file: it must see the
    same disk as the workers (use object storage or a shared volume on multi-machine deployments).

    :param model: the model, e.g. ``@cf/mistral/mistral-7b-instruct-v0.2-lora``. (templated)
    :param inputs: a list of model inputs (``{"prompt": ...}`` or ``{"messages": [...]}``, each
        optionally with ``"external_reference"``), or a JSONL file with one input per line: a local
        path, an fsspec URL or an ``ObjectStoragePath``. A list is staged to ``<output>.inputs.jsonl``.
        (templated; from ``dag_run.conf``, set ``render_template_as_native_obj=True`` on the DAG)
    :param output: where to write the results (JSONL): a local path, an fsspec URL or an
        ``ObjectStoragePath`` (kept as ``output_location``: ``output`` is the operator's XComArg).
        (templated)
    :param lora: a finetune ID or name applied to every input (direct engine). (templated)
    :param deferrable: free the worker slot while the batch runs (the triggerer does the work);
        ``False`` runs the same engine in the worker. Default: Airflow's
        ``[operators] default_deferrable`` (``False`` unless the deployment sets it).
    :param engine: ``"auto"``, ``"queue"`` or ``"direct"``.
    :param max_failure_ratio: the share of failed items (0 to 1) the task tolerates; default 0.
    :param concurrency: direct engine: calls in flight at once.
    :param poll_interval: queue engine: seconds between polls.
    :param account_id: overrides the connection's account ID. (templated)
    :param cloudflare_conn_id: the ``cloudflare_ai`` connection to use. (templated)
    """

    template_fields: Sequence[str] = ("model", "inputs", "output_location", "lora", "account_id", "cloudflare_conn_id")
    template_fields_renderers = {"inputs": "json"}
    ui_color = "#f6821f"

    def __init__(
        self,
        *,
        model: str,
        inputs: Any,
        output: Any,
        lora: str | None = None,
        deferrable: bool | None = None,
        engine: str = "auto",
        max_failure_ratio: float = 0.0,
        concurrency: int = 8,
        poll_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.inputs = inputs
        self.output_location = output
        self.lora = lora
        self.deferrable = _default_deferrable() if deferrable is None else as_bool("deferrable", deferrable)
        check_choice("engine", engine, ENGINES)
        self.engine = engine
        self.max_failure_ratio = _number("max_failure_ratio", max_failure_ratio, high=1.0)
        self.concurrency = whole_number(concurrency, minimum=1)
        if self.concurrency is None:
            raise CloudflareInputError(f"concurrency must be a whole number of at least 1, got {concurrency!r}")
        self.poll_interval = _number("poll_interval", poll_interval, high=None, open_low=True)
        self._cancel: Callable[[], object] | None = None
        self._check(rendered=False)

    def execute(self, context: Context) -> BatchManifest:
        from airflow_provider_cfai.batch import worker

        self._check(rendered=True)
        output = _location("output", self.output_location)
        batch = worker.open_batch(
            model=self.model.strip(),
            lora=_text(self.lora),
            inputs=list(self.inputs) if _is_list(self.inputs) else _location("inputs", self.inputs),
            output=output,
            engine=str(self.engine),
            hook=self.hook,
            account_id=self.account_id,
            state_store=context.get("task_state_store"),  # Airflow 3.3+
            log=self.log,
        )
        if batch.done.written >= batch.total:
            self.log.info("%s already holds all %d result(s) of this batch; nothing to run", output, batch.total)
            return self._finish(context, worker.finished_manifest(batch))
        if batch.engine == "queue":
            worker.submit_chunks(batch, self.hook, account_id=self.account_id, log=self.log)
            context["ti"].xcom_push(key=REQUEST_IDS_KEY, value=list(batch.ledger.request_ids))

        deadline = self._deadline(context)
        # What the engine needs, in the trigger's terms: the worker runs the same engine with it.
        engine_kwargs: dict[str, Any] = {
            "engine": batch.engine,
            "model": batch.model,
            "inputs_path": batch.ledger.inputs,
            "output": output,
            "lora": batch.lora,
            "request_ids": list(batch.ledger.request_ids) or None,
            "chunk_sizes": list(batch.ledger.chunk_sizes) or None,
            "concurrency": self.concurrency,
            "poll_interval": self.poll_interval,
            "deadline": deadline,
        }
        if self.deferrable:
            from airflow_provider_cfai.triggers.batch import WorkersAIBatchTrigger

            trigger = WorkersAIBatchTrigger(
                cloudflare_conn_id=self.cloudflare_conn_id, account_id=self.account_id, **engine_kwargs
            )
            timeout = None if deadline is None else timedelta(seconds=max(0.0, deadline - time.time()) + _GRACE)
            self.log.info("Deferring: %s engine, %d input(s), results to %s", batch.engine, batch.total, output)
            self.defer(trigger=trigger, method_name="execute_complete", timeout=timeout)
        if deadline is not None:
            # Airflow's own execution_timeout alarm fires at the deadline: stop a little before it,
            # so the timeout is reported as one, with the output closed.
            engine_kwargs["deadline"] -= min(30.0, 0.1 * self.execution_timeout.total_seconds())  # type: ignore[union-attr]
        manifest = worker.run_engine(
            self.hook.settings, account_id=self.account_id, on_start=self._set_cancel, **engine_kwargs
        )
        return self._finish(context, manifest)

    def _set_cancel(self, cancel: Callable[[], object]) -> None:
        self._cancel = cancel

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> BatchManifest:
        if not isinstance(event, Mapping):
            raise CloudflareAIError(f"The batch trigger sent no usable event ({event!r}); a retry re-attaches")
        status, manifest = event.get("status"), event.get("manifest")
        if status == "error" or not isinstance(manifest, Mapping):
            message = f"The batch failed: {event.get('message') or 'no reason given'}"
            if event.get("permanent"):
                raise AirflowFailException(message)  # a retry would fail the same way
            raise CloudflareAIError(f"{message}; a retry resumes after the results already written")
        return self._finish(context, manifest)  # type: ignore[arg-type]

    def on_kill(self) -> None:
        """Stop a batch running in this worker (``deferrable=False``): the engine stops at once and
        closes ``output``, keeping every result written (a retry resumes after them). Queued Batch
        API requests cannot be cancelled (Cloudflare has no such call); a retry re-attaches to them.
        A deferred batch runs in the triggerer, which Airflow stops itself."""
        cancel = self._cancel
        if cancel is not None:
            self.log.info("Task killed: stopping the batch; the results written so far are kept")
            cancel()

    def _check(self, *, rendered: bool) -> None:
        """Validate what can be validated now; templates are checked again once rendered."""
        check_text("model", self.model)
        check_text("lora", self.lora, optional=True)
        _check_inputs(self.inputs, rendered=rendered)
        if rendered or not is_template(self.output_location):
            _location("output", self.output_location)
        if self.engine == "queue" and _text(self.lora) is not None and not is_template(self.lora):
            raise CloudflareInputError(
                "engine='queue' cannot apply a lora: Cloudflare does not document LoRAs in Batch API "
                "requests. Use engine='direct' (or 'auto', which picks it for a lora)."
            )

    def _deadline(self, context: Context) -> float | None:
        if self.execution_timeout is None:
            return None
        started = getattr(context.get("ti"), "start_date", None)
        start = started.timestamp() if started is not None else time.time()
        return start + self.execution_timeout.total_seconds()

    def _finish(self, context: Context, manifest: BatchManifest) -> BatchManifest:
        from airflow_provider_cfai.batch import worker

        try:
            return worker.outcome(
                manifest,
                max_failure_ratio=self.max_failure_ratio,
                execution_timeout=self.execution_timeout,
                log=self.log,
            )
        except CloudflareAIError:
            context["ti"].xcom_push(key=MANIFEST_KEY, value=manifest)  # why it failed, for a look or a retry
            raise


def _default_deferrable() -> bool:
    try:
        from airflow.sdk import conf
    except ImportError:  # Airflow 3.1
        from airflow.configuration import conf  # type: ignore[assignment]
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _check_inputs(inputs: Any, *, rendered: bool) -> None:
    if not rendered and is_template(inputs):
        return
    if _is_list(inputs):
        if not inputs:
            raise CloudflareInputError("inputs is an empty list; give at least one model input")
        for index, item in enumerate(inputs):
            if not rendered and is_template(item):
                continue
            if not isinstance(item, Mapping):
                raise CloudflareInputError(
                    f"inputs[{index}] must be a mapping such as {{'prompt': '...'}}, got {type(item).__name__}"
                )
        return
    if rendered and isinstance(inputs, str) and inputs.strip()[:1] in ("[", "{"):
        raise CloudflareInputError(
            f"inputs rendered to a string that looks like JSON ({inputs.strip()[:40]!r}...), not a list: Jinja "
            "renders templates to strings. Set render_template_as_native_obj=True on the DAG so "
            "'{{ dag_run.conf[...] }}' renders to a list, or pass a JSONL file's location."
        )
    if isinstance(inputs, Mapping):
        raise CloudflareInputError(
            "inputs must be a list of model inputs or a JSONL file, not one mapping; "
            "for a single input use WorkersAIRunOperator, or wrap it in a list"
        )
    _location("inputs", inputs)


def _location(field: str, value: Any) -> str:
    if hasattr(value, "fs") and hasattr(value, "path") and not isinstance(value, str):
        return str(value)  # an ObjectStoragePath: its string keeps the connection (conn_id@...)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise CloudflareInputError(
            f"{field} must be a local path, an fsspec URL or an ObjectStoragePath, got {value!r}"
        )
    return value.strip()


def _number(field: str, value: Any, *, high: float | None, open_low: bool = False) -> float:
    """A number in [0, high] (or (0, high] with ``open_low``), from a value or a rendered string."""
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    too_low = number <= 0 if open_low else number < 0
    if number != number or too_low or (high is not None and number > high):
        bounds = f"from 0.0 to {high}" if high is not None else "greater than 0"
        raise CloudflareInputError(f"{field} must be a number {bounds}, got {value!r}")
    return number


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None
