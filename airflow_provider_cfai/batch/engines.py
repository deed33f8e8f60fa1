"""The two batch engines: ``direct`` (paced ``/ai/run`` calls) and ``queue`` (the Batch API).

Both write one record per input to ``output`` through :class:`~airflow_provider_cfai.batch.writer.OrderedResultWriter`,
in input order, as results arrive, and both resume: what ``output`` already holds is never asked for
again. Both take a ``deadline`` (epoch seconds): past it they stop, keep what was written, and return
a manifest with ``"status": "timeout"``.

**Direct.** ``concurrency`` calls at once, each waiting its turn at the credential's rate-limit gate
(so a run spends the window without overrunning it into Cloudflare's five-minute lockout) and each
retried on its own by the shared policy (``Retry-After`` included). An item Cloudflare refuses
becomes a failure record (marked ``transient`` for a 5xx or timeout that outlived its retries: a
retry sends it again) and the batch goes on, unless no call can succeed: then it stops, keeping what
it wrote (:func:`~airflow_provider_cfai.policy.stops_the_batch`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.batch.inputs import iter_inputs, split_item
from airflow_provider_cfai.batch.manifest import BatchManifest, build_manifest
from airflow_provider_cfai.batch.records import OutputTally, failure_record, is_transient, success_record
from airflow_provider_cfai.batch.writer import OrderedResultWriter
from airflow_provider_cfai.exceptions import (
    CloudflareAPIError,
    CloudflareInputError,
    CloudflarePermanentAPIError,
    format_errors,
)
from airflow_provider_cfai.policy import is_retryable, stops_the_batch

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence

    from airflow_provider_cfai.hooks.cloudflare_ai_async import CloudflareAIAsyncHook

__all__ = ["DEFAULT_MAX_BYTES", "collect_queue", "plan_chunks", "run_direct", "run_engine"]

log = logging.getLogger(__name__)

#: Cloudflare's limit on one Batch API submission ("under 10 MB"), counted in bytes of JSON.
DEFAULT_MAX_BYTES = 10_000_000
#: How far past the oldest unfinished item the direct engine may run: bounds the records the
#: writer holds back while one slow item is retried.
AHEAD = 512
_READ_BATCH = 64
_PENDING = ("queued", "running")
_Job = tuple[int, dict[str, Any], dict[str, Any] | None]


async def run_engine(
    client: CloudflareAIAsyncHook,
    *,
    engine: str,
    inputs_path: str,
    request_ids: Sequence[str] | None = None,
    chunk_sizes: Sequence[int] | None = None,
    concurrency: int = 8,
    poll_interval: float = 5.0,
    **common: Any,
) -> BatchManifest:
    """Run one engine; ``common`` is what both take (``model``, ``lora``, ``output``, ``deadline``)."""
    if engine == "queue":
        ids = request_ids or ()
        return await collect_queue(
            client, request_ids=ids, chunk_sizes=chunk_sizes, poll_interval=poll_interval, **common
        )
    return await run_direct(client, inputs_path=inputs_path, concurrency=concurrency, **common)


def plan_chunks(items: Iterable[Mapping[str, Any]], max_bytes: int = DEFAULT_MAX_BYTES) -> list[list[dict[str, Any]]]:
    """Split items into Batch API submissions of at most ``max_bytes`` bytes each, in order.

    A submission is ``{"requests": [item, ...]}``; sizes are counted as ``json.dumps`` writes it (ASCII
    escapes, ``", "`` separators), which is never smaller than what either transport sends.

    :raises CloudflareInputError: an item alone is over the limit (it names the item).
    """
    overhead = len(json.dumps({"requests": []}))
    chunks: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = overhead
    for position, item in enumerate(items):
        item_size = len(json.dumps(item))  # parsed from JSON lines: always serializable
        if overhead + item_size > max_bytes:
            raise CloudflareInputError(
                f"inputs[{position}] is {item_size:,} bytes as JSON; one Batch API submission takes at most "
                f"{max_bytes:,} bytes. Shorten it, or use engine='direct'."
            )
        separator = 2 if current else 0
        if size + separator + item_size > max_bytes:
            chunks.append(current)
            current, size, separator = [], overhead, 0
        current.append(dict(item))
        size += separator + item_size
    if current:
        chunks.append(current)
    return chunks


async def run_direct(
    client: CloudflareAIAsyncHook,
    *,
    model: str,
    lora: str | None = None,
    inputs_path: str,
    output: str,
    concurrency: int = 8,
    deadline: float | None = None,
) -> BatchManifest:
    """Run every input through ``POST /ai/run/{model}``, ``concurrency`` at a time, paced.

    :raises CloudflareAPIError: the batch could not go on (see the module docstring).
    """
    if concurrency < 1:
        raise CloudflareInputError(f"concurrency must be at least 1, got {concurrency!r}")
    jobs: asyncio.Queue[tuple[int, dict[str, Any]] | None] = asyncio.Queue(maxsize=concurrency)
    written = asyncio.Condition()
    read = 0  # items read from the inputs so far (all of them, once done)

    async def feed(writer: OrderedResultWriter) -> None:
        nonlocal read
        items = _with_carried(iter_inputs(inputs_path, read), writer.carried())
        try:
            while batch := await asyncio.to_thread(lambda: list(itertools.islice(items, _READ_BATCH))):
                for index, item, kept in batch:
                    async with written:
                        await written.wait_for(functools.partial(_room_for, index, writer))
                    if kept is not None:
                        await writer.add(index, kept)  # final last time: not sent again
                    else:
                        await jobs.put((index, item))
                    read = index + 1
        finally:
            await asyncio.to_thread(items.close)  # closes the file now, not when collected
        for _ in range(concurrency):
            await jobs.put(None)

    async def work(writer: OrderedResultWriter) -> None:
        while (job := await jobs.get()) is not None:
            await writer.add(job[0], await _call_one(client, model, lora, *job))
            async with written:
                written.notify_all()

    async def calls(writer: OrderedResultWriter) -> None:
        await _all_or_none([feed(writer), *(work(writer) for _ in range(concurrency))])

    async with OrderedResultWriter(output) as writer:
        read = start = writer.start_index
        finished = await _until(deadline, calls(writer))
    if not finished:
        read += await asyncio.to_thread(lambda: sum(1 for _ in iter_inputs(inputs_path, read)))
    log.info("Direct engine: %d of %d record(s) in %s", writer.next_index, read, output)
    return build_manifest(
        engine="direct",
        model=model,
        lora=lora,
        output=output,
        total=read,
        tally=writer.tally,
        resumed_from=start,
        status="success" if finished else "timeout",
    )


async def _call_one(
    client: CloudflareAIAsyncHook, model: str, lora: str | None, index: int, item: dict[str, Any]
) -> dict[str, Any]:
    body, reference = split_item(item)
    if lora:
        body["lora"] = lora
    try:
        result = await client.run_model(model, body)
    except CloudflareAPIError as error:
        if stops_the_batch(error):
            raise error.with_context(f"The batch stopped at item {index}, an error every item would meet") from error
        status = f"HTTP {error.status}" if error.status is not None else "no response"
        message = f"{status}: {format_errors(error.errors) or error.detail or 'no details'}"
        transient = is_retryable(error)
        return failure_record(
            index, reference, status=error.status, codes=error.codes, message=message, transient=transient
        )
    return success_record(index, reference, result)


async def collect_queue(
    client: CloudflareAIAsyncHook,
    *,
    model: str,
    request_ids: Sequence[str],
    output: str,
    poll_interval: float = 5.0,
    deadline: float | None = None,
    chunk_sizes: Sequence[int] | None = None,
    lora: str | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> BatchManifest:
    """Poll queued Batch API requests until their responses arrive; write them as records, in order.

    Chunks are collected in submission order; the responses of chunk ``k`` are items
    ``offset_k + id``. Every chunk is polled (a poll is cheap and repeatable) so the token usage
    Cloudflare reports per chunk adds up even on resume; records already in ``output`` are not
    written again.

    :param request_ids: the submissions' request IDs, in the order of their chunks.
    :param chunk_sizes: the item count of each chunk, when known: an item Cloudflare left without a
        response then gets a failure record, and a timed-out manifest its true ``total``.
    :param lora: recorded in the manifest only.
    :raises CloudflareAPIError: a poll failed for good (an unknown or expired request ID, ...).
    """
    if chunk_sizes is not None and len(chunk_sizes) != len(request_ids):
        raise CloudflareInputError(
            f"chunk_sizes has {len(chunk_sizes)} entries for {len(request_ids)} request IDs; give one size per chunk"
        )
    offset = 0
    usage = OutputTally()  # Cloudflare reports usage per chunk, not (documented) per item
    usage_complete = True

    async def collect(writer: OrderedResultWriter, start: int) -> None:
        nonlocal offset, usage_complete
        for chunk, request_id in enumerate(request_ids):
            last = None
            while not isinstance((done := await client.poll_batch(model, request_id)).get("responses"), list):
                status = done.get("status")
                if status not in _PENDING:
                    detail = f"batch {request_id} answered status {status!r} without responses"
                    raise CloudflarePermanentAPIError("POST", client.run_path(model), 200, detail=detail)
                if status != last:
                    log.info("Batch %s is %s", request_id, status)
                    last = status
                await sleep(poll_interval)
            size = chunk_sizes[chunk] if chunk_sizes is not None else None
            records, count = _chunk_records(done["responses"], offset, size, request_id)
            usage_complete &= usage.add_usage(done.get("usage"))
            await asyncio.to_thread(_add_all, writer, [record for record in records if record["index"] >= start])
            offset += count
            log.info("Batch %s: %d response(s) collected", request_id, count)

    async with OrderedResultWriter(output) as writer:
        start = writer.start_index
        finished = await _until(deadline, collect(writer, start))
    total = offset if finished else sum(chunk_sizes) if chunk_sizes is not None else writer.next_index
    manifest = build_manifest(
        engine="queue",
        model=model,
        lora=lora,
        output=output,
        total=total,
        tally=writer.tally,
        request_ids=request_ids,
        resumed_from=start,
        status="success" if finished else "timeout",
    )
    if finished and usage_complete:
        manifest["usage"] = usage.usage
    return manifest


def _chunk_records(
    responses: list[Any], offset: int, size: int | None, request_id: str
) -> tuple[list[dict[str, Any]], int]:
    by_id: dict[int, dict[str, Any]] = {}
    for response in responses:
        item_id = response.get("id") if isinstance(response, Mapping) else None
        if not isinstance(item_id, int) or isinstance(item_id, bool) or item_id < 0:
            log.warning("Batch %s: ignoring a response without a valid id", request_id)
            continue
        if (size is not None and item_id >= size) or item_id in by_id:
            log.warning("Batch %s: ignoring an unexpected or repeated response for id %d", request_id, item_id)
            continue
        by_id[item_id] = dict(response)
    count = size if size is not None else max(by_id, default=-1) + 1
    records = []
    for item_id in range(count):
        index = offset + item_id
        response = by_id.get(item_id)
        if response is None:
            message = f"the Batch API returned no response for item {item_id} of request {request_id}"
            records.append(failure_record(index, None, status=None, message=message))
            continue
        reference = response.get("external_reference")
        reference = reference if isinstance(reference, str) else None
        if response.get("success") is True:
            records.append(success_record(index, reference, response.get("result")))
        else:
            codes, message = _item_error(response)
            records.append(failure_record(index, reference, status=None, codes=codes, message=message))
    return records, count


def _item_error(response: Mapping[str, Any]) -> tuple[list[int], str]:
    """Codes and message of a failed Batch API item, whatever shape Cloudflare gives it (undocumented)."""
    raw = response.get("errors", response.get("error"))
    items = raw if isinstance(raw, list) else [raw] if raw is not None else []
    codes = [item["code"] for item in items if isinstance(item, Mapping) and type(item.get("code")) is int]
    messages = [format_errors([item]) if isinstance(item, Mapping) else str(item) for item in items]
    message = "; ".join(m for m in messages if m) or "the Batch API reported this item as failed"
    return codes, message


async def _until(deadline: float | None, work: Coroutine[Any, Any, None]) -> bool:
    """Run ``work``; ``False`` if the deadline (epoch seconds) came first and cut it short."""
    if deadline is None:
        await work
        return True
    remaining = deadline - time.time()
    if remaining <= 0:
        work.close()
        return False
    try:
        await asyncio.wait_for(work, remaining)
    except asyncio.TimeoutError:
        if time.time() < deadline:
            raise  # a timeout from inside the work (a file system, say), not the deadline
        return False
    return True


async def _all_or_none(work: list[Coroutine[Any, Any, None]]) -> None:
    """Run coroutines together; when one fails (or this is cancelled), cancel the others and wait."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in work]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _room_for(index: int, writer: OrderedResultWriter) -> bool:
    return index - writer.next_index < AHEAD


def _with_carried(
    items: Generator[tuple[int, dict[str, Any]], None, None], carried: Generator[dict[str, Any], None, None]
) -> Generator[_Job, None, None]:
    """Each input with its final record from the last run, if it has one (else ``None``: send it)."""
    kept = next(carried, None)
    try:
        for index, item in items:
            while kept is not None and kept.get("index", -1) < index:
                kept = next(carried, None)
            final = kept is not None and kept.get("index") == index and not is_transient(kept)
            yield index, item, kept if final else None
    finally:
        items.close()
        carried.close()


def _add_all(writer: OrderedResultWriter, records: list[dict[str, Any]]) -> None:
    for record in records:
        writer.add_sync(record["index"], record)
