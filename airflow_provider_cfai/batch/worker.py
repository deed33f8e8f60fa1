"""What ``WorkersAIBatchOperator`` does in the worker, step by step, as plain functions.

Open the batch (stage and check the inputs, pick the engine, find or start its ledger), submit the
queue engine's chunks, run an engine in the worker when not deferring, and turn a manifest into the
task's outcome. Kept out of the operator module, which every DAG parse imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.batch import _files, items
from airflow_provider_cfai.batch.ledger import Ledger, load_ledger, save_ledger
from airflow_provider_cfai.exceptions import (
    BatchFailureRatioError,
    BatchTimeoutError,
    CloudflareAPIError,
    CloudflareInputError,
)

__all__ = ["Batch", "finished_manifest", "open_batch", "outcome", "pick_engine", "run_engine", "submit_chunks"]

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from datetime import timedelta
    from typing import TypeAlias

    Logger: TypeAlias = logging.Logger | logging.LoggerAdapter[logging.Logger] | Any


@dataclass
class Batch:
    """One batch as the worker sees it: what runs, where, and how much is already done."""

    model: str
    lora: str | None
    output: str
    engine: str
    total: int
    ledger: Ledger
    done: items.OutputTally
    state_store: Any = None

    @property
    def complete(self) -> bool:
        return self.done.written >= self.total


def open_batch(
    *,
    model: str,
    lora: str | None,
    inputs: Any,
    output: str,
    engine: str,
    hook: Any,
    account_id: str | None,
    state_store: Any,
    log: Logger,
) -> Batch:
    """Stage and check the inputs (before any API call), pick the engine, and find this batch's ledger.

    An ``output`` without a matching ledger holds another batch's results and is removed.
    """
    location = items.stage_inputs(inputs, output) if isinstance(inputs, list) else inputs
    summary = items.scan_inputs(location)
    if summary.count == 0:
        raise CloudflareInputError(f"inputs {_files.describe(location)} holds no items; give at least one model input")
    engine = pick_engine(engine, model, lora, hook=hook, account_id=account_id, log=log)
    fingerprint = {
        "inputs_sha256": summary.sha256,
        "total": summary.count,
        "model": model,
        "lora": lora,
        "engine": engine,
        "output": output,
    }
    ledger = load_ledger(output, fingerprint, state_store=state_store)
    if ledger is None:
        if _files.exists(output):
            log.warning("%s holds results of another batch (other inputs or settings); replacing them", _shown(output))
            _files.remove(output)
        ledger = Ledger(fingerprint, location)
        save_ledger(ledger, output, state_store=state_store)
    done = items.scan_output(output)
    if done.written and done.written < summary.count:
        log.info("Resuming after %d of %d result(s) already in %s", done.written, summary.count, _shown(output))
    return Batch(model, lora, output, engine, summary.count, ledger, done, state_store)


def pick_engine(choice: str, model: str, lora: str | None, *, hook: Any, account_id: str | None, log: Logger) -> str:
    """``queue`` for a model the catalog marks ``async_queue`` (and no lora), else ``direct``."""
    if choice != "auto":
        return choice
    if lora is not None:
        return "direct"  # the Batch API does not document LoRAs
    from airflow_provider_cfai.hooks._catalog import supports_async_queue

    try:
        entry = hook.get_model(model, account_id=account_id)
    except CloudflareAPIError as error:
        # Both engines give the same results; the catalog only picks the cheaper one.
        log.warning("Could not read the model catalog (%s); using the direct engine", error)
        return "direct"
    queue = entry is not None and supports_async_queue(entry)
    marker = "async_queue" if queue else "no async_queue"
    log.info("engine='auto': %s for %s (catalog: %s)", "queue" if queue else "direct", model, marker)
    return "queue" if queue else "direct"


def submit_chunks(batch: Batch, hook: Any, *, account_id: str | None, log: Logger) -> None:
    """Submit the chunks not submitted yet; record each request ID before the next call."""
    from airflow_provider_cfai.batch.engines import plan_chunks

    ledger = batch.ledger
    chunks = plan_chunks(item for _, item in items.iter_inputs(ledger.inputs))
    if ledger.request_ids:
        log.info(
            "Re-attaching to %d queued batch request(s): %s", len(ledger.request_ids), ", ".join(ledger.request_ids)
        )
    for chunk in chunks[len(ledger.request_ids) :]:
        request_id = str(hook.submit_batch(batch.model, chunk, account_id=account_id)["request_id"])
        ledger.request_ids.append(request_id)
        ledger.chunk_sizes.append(len(chunk))
        save_ledger(ledger, batch.output, state_store=batch.state_store)
        log.info("Queued %d input(s) as batch request %s", len(chunk), request_id)


def finished_manifest(batch: Batch) -> items.BatchManifest:
    """The manifest of a batch whose output is already complete (a re-run: no API call)."""
    return items.build_manifest(
        engine=batch.engine,
        model=batch.model,
        lora=batch.lora,
        output=batch.output,
        total=batch.total,
        tally=batch.done,
        request_ids=batch.ledger.request_ids,
        resumed_from=batch.done.written,
    )


def run_engine(
    batch: Batch,
    settings: Any,
    *,
    account_id: str | None,
    concurrency: int,
    poll_interval: float,
    deadline: float | None,
) -> items.BatchManifest:
    """Run the batch's engine here, in the worker (``deferrable=False``), as the trigger would."""
    import asyncio

    from airflow_provider_cfai.batch.engines import collect_queue, run_direct
    from airflow_provider_cfai.hooks.cloudflare_ai_async import CloudflareAIAsyncHook

    async def run() -> items.BatchManifest:
        async with CloudflareAIAsyncHook(
            settings=settings, account_id=account_id, max_connections=concurrency
        ) as client:
            if batch.engine == "queue":
                return await collect_queue(
                    client,
                    model=batch.model,
                    request_ids=batch.ledger.request_ids,
                    chunk_sizes=batch.ledger.chunk_sizes,
                    output=batch.output,
                    poll_interval=poll_interval,
                    deadline=deadline,
                )
            return await run_direct(
                client,
                model=batch.model,
                lora=batch.lora,
                inputs_path=batch.ledger.inputs,
                output=batch.output,
                concurrency=concurrency,
                deadline=deadline,
            )

    return asyncio.run(run())


def outcome(
    manifest: items.BatchManifest,
    *,
    max_failure_ratio: float,
    execution_timeout: timedelta | None,
    on_failure: Callable[[items.BatchManifest], None],
    log: Logger,
) -> items.BatchManifest:
    """Return the manifest, or raise for a timeout or too many failed items (after ``on_failure``)."""
    where = _shown(str(manifest["output"]))
    done = manifest["succeeded"] + manifest["failed"]
    if manifest["status"] == "timeout":
        on_failure(manifest)
        raise BatchTimeoutError(
            f"The batch reached execution_timeout ({execution_timeout}) with {done} of {manifest['total']} "
            f"result(s) written to {where}; a retry resumes from there."
        )
    ratio = manifest["failure_ratio"]
    log.info(
        "Batch done (%s engine): %d succeeded, %d failed (ratio %.3f), %d total token(s); results in %s",
        manifest["engine"],
        manifest["succeeded"],
        manifest["failed"],
        ratio,
        manifest["usage"]["total_tokens"],
        where,
    )
    if ratio > max_failure_ratio:
        on_failure(manifest)
        raise BatchFailureRatioError(
            f"{manifest['failed']} of {done} item(s) failed (ratio {ratio:.3f}), above "
            f"max_failure_ratio={max_failure_ratio}; every result, failed ones with their error, is in {where}."
        )
    return manifest


def _shown(location: str) -> str:
    return _files.describe(location)
