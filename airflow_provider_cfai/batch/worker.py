"""What ``WorkersAIBatchOperator`` does in the worker, as plain functions.

Kept out of the operator module, which every DAG parse imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.batch import _files
from airflow_provider_cfai.batch.inputs import check_prompt, iter_inputs, scan_inputs, stage_inputs
from airflow_provider_cfai.batch.ledger import Ledger, load_ledger, save_ledger
from airflow_provider_cfai.batch.manifest import BatchManifest, build_manifest
from airflow_provider_cfai.batch.records import OutputTally, scan_output
from airflow_provider_cfai.exceptions import (
    BatchFailureRatioError,
    BatchTimeoutError,
    CloudflareAIError,
    CloudflareInputError,
)
from airflow_provider_cfai.hooks import _catalog

__all__ = ["Batch", "finished_manifest", "open_batch", "outcome", "pick_engine", "run_engine", "submit_chunks"]

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from datetime import timedelta
    from typing import TypeAlias

    Logger: TypeAlias = logging.Logger | logging.LoggerAdapter[logging.Logger] | Any


@dataclass
class Batch:
    model: str
    lora: str | None
    output: str
    engine: str
    total: int
    ledger: Ledger
    done: OutputTally
    state_store: Any = None


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
    from airflow_provider_cfai.preflight import check_batch

    _files.check_writable(output, "output")
    location = stage_inputs(inputs, output) if isinstance(inputs, list) else inputs
    summary = scan_inputs(location)
    if summary.count == 0:
        raise CloudflareInputError(f"inputs {_files.describe(location)} holds no items; give at least one model input")
    entry = check_batch(hook, model, lora=lora, account_id=account_id, log=log)
    # Text generation (and a LoRA, which is only for text generation) takes a prompt or messages;
    # other tasks (embeddings take "text") are left to Cloudflare.
    if (_catalog.task_name(entry) == "Text Generation") if entry is not None else lora is not None:
        if isinstance(inputs, list):
            for index, item in enumerate(inputs):
                check_prompt(item, f"inputs[{index}]")
        else:
            scan_inputs(location, prompts=True)
    engine = pick_engine(engine, model, lora, entry=entry, log=log)
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
            log.warning(
                "%s holds results of another batch (other inputs or settings); replacing them", _files.describe(output)
            )
            _files.remove(output)
        ledger = Ledger(fingerprint, location)
        save_ledger(ledger, output, state_store=state_store)
    done = scan_output(output)
    if done.written and done.written < summary.count:
        log.info(
            "Resuming after %d of %d result(s) already in %s", done.written, summary.count, _files.describe(output)
        )
    return Batch(model, lora, output, engine, summary.count, ledger, done, state_store)


def pick_engine(choice: str, model: str, lora: str | None, *, entry: dict[str, Any] | None, log: Logger) -> str:
    if choice != "auto":
        return choice
    if lora is not None:
        return "direct"  # the Batch API does not document LoRAs
    if entry is None:
        # Both engines give the same results; the catalog only picks the cheaper one.
        log.warning("The model catalog could not be read; using the direct engine")
        return "direct"
    queue = _catalog.supports_async_queue(entry)
    marker = "async_queue" if queue else "no async_queue"
    log.info("engine='auto': %s for %s (catalog: %s)", "queue" if queue else "direct", model, marker)
    return "queue" if queue else "direct"


def submit_chunks(batch: Batch, hook: Any, *, account_id: str | None, log: Logger) -> None:
    """Submit the chunks not submitted yet; record each request ID before the next call."""
    from airflow_provider_cfai.batch.engines import plan_chunks

    ledger = batch.ledger
    chunks = plan_chunks(item for _, item in iter_inputs(ledger.inputs))
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


def finished_manifest(batch: Batch) -> BatchManifest:
    return build_manifest(
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
    settings: Any,
    *,
    account_id: str | None,
    on_start: Callable[[Callable[[], object]], None],
    **engine_kwargs: Any,
) -> BatchManifest:
    """Run :func:`~airflow_provider_cfai.batch.engines.run_engine` here, in the worker
    (``deferrable=False``), with the trigger's ``engine_kwargs``.

    :param on_start: called with a function that cancels the run from another thread (``on_kill``):
        the engine stops and closes its output, keeping what it wrote.
    """
    import asyncio
    import functools

    from airflow_provider_cfai.batch import engines
    from airflow_provider_cfai.hooks.cloudflare_ai_async import CloudflareAIAsyncHook

    async def run() -> BatchManifest:
        async with CloudflareAIAsyncHook(
            settings=settings, account_id=account_id, max_connections=engine_kwargs["concurrency"]
        ) as client:
            work = asyncio.ensure_future(engines.run_engine(client, **engine_kwargs))
            on_start(functools.partial(asyncio.get_running_loop().call_soon_threadsafe, work.cancel))
            return await work

    return asyncio.run(run())


def outcome(
    manifest: BatchManifest, *, max_failure_ratio: float, execution_timeout: timedelta | None, log: Logger
) -> BatchManifest:
    where = _files.describe(str(manifest["output"]))
    done = manifest["succeeded"] + manifest["failed"]
    if manifest["status"] == "timeout":
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
    codes = ", ".join(f"{code} ({count}x)" for code, count in (manifest.get("error_codes") or {}).items()) or "none"
    transient = manifest.get("transient_failures", 0)
    if transient:
        raise CloudflareAIError(
            f"{transient} of {manifest['total']} item(s) failed for a reason that may pass (a 5xx or a timeout "
            f"after the retries; codes: {codes}); a retry of this task sends exactly those items "
            f"again, keeping the other results in {where}."
        )
    if ratio > max_failure_ratio:
        raise BatchFailureRatioError(
            f"{manifest['failed']} of {done} item(s) failed (ratio {ratio:.3f}), above "
            f"max_failure_ratio={max_failure_ratio}; most common Cloudflare error codes: {codes}. "
            f"Every result, failed ones with their error, is in {where}."
        )
    return manifest
