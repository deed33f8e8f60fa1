"""The batch's data: inputs read as a stream, output records, the ordered writer, the manifest.

Inputs are JSONL, one model input (a JSON object) per line, read one line at a time so a file of any
size costs the memory of one line. Outputs are JSONL too, one record per input, in input order::

    {"index": 0, "external_reference": "q-1", "success": true, "result": {"response": "..."}}
    {"index": 1, "external_reference": null, "success": false,
     "error": {"status": 400, "codes": [5006], "message": "..."}}

Because records are appended in input order, the lines already in ``output`` are exactly the items
that are done: a retried task resumes after them instead of sending them again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TypedDict

from airflow_provider_cfai.batch import _files
from airflow_provider_cfai.exceptions import CloudflareInputError

__all__ = [
    "INPUTS_SUFFIX",
    "SIDECAR_SUFFIX",
    "BatchManifest",
    "InputsSummary",
    "OrderedResultWriter",
    "OutputTally",
    "TokenUsage",
    "build_manifest",
    "check_prompt",
    "failure_record",
    "is_transient",
    "iter_inputs",
    "iter_outputs",
    "scan_inputs",
    "scan_output",
    "split_item",
    "stage_inputs",
    "success_record",
]

log = logging.getLogger(__name__)

#: Inline input lists are staged next to the output under this suffix.
INPUTS_SUFFIX = ".inputs.jsonl"
#: The operator's record of a batch in flight (request IDs, inputs digest), next to the output.
SIDECAR_SUFFIX = ".batch.json"

_EXAMPLE = '{"prompt": "..."}'
_TOP_CODES = 5


# -- inputs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputsSummary:
    """What a full pass over the inputs learned: the item count and the file's SHA-256."""

    count: int
    sha256: str


def iter_inputs(path: str, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(index, item)`` from a JSONL file, from item ``start`` on: item ``index`` is line ``index + 1``.

    :param path: a local path or an fsspec URL (an ``ObjectStoragePath`` in its string form).
    :raises CloudflareInputError: the file is missing, or a line is blank or not a JSON object (the
        message names the line number).
    """
    where = _files.describe(path)
    for line_no, raw in _lines(path):
        if line_no > start:
            yield line_no - 1, _parse_input(raw, line_no, where)


def scan_inputs(path: str, *, prompts: bool = False) -> InputsSummary:
    """Check every line of a JSONL inputs file; return its item count and the file's digest.

    Run before any API call, so a bad line 9,000 fails the task before the first request.

    :param prompts: also check that each item is a text-generation input (:func:`check_prompt`).
    """
    where = _files.describe(path)
    digest = hashlib.sha256()
    count = 0
    for line_no, raw in _lines(path):
        digest.update(raw)
        item = _parse_input(raw, line_no, where)
        if prompts:
            check_prompt(item, f"{where} line {line_no}")
        count += 1
    return InputsSummary(count, digest.hexdigest())


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    where = _files.describe(path)
    try:
        with _files.open_read(path) as handle:
            yield from enumerate(handle, start=1)
    except FileNotFoundError:
        raise CloudflareInputError(f"inputs file {where} does not exist") from None
    except IsADirectoryError:
        raise CloudflareInputError(
            f"inputs {where} is a folder; give a JSONL file (one JSON object per line)"
        ) from None


def _parse_input(raw: bytes, line_no: int, where: str) -> dict[str, Any]:
    if not raw.strip():
        # Counted, not skipped, would shift every later result's index off its line: refuse it.
        raise CloudflareInputError(
            f"{where} line {line_no} is blank; every line must be one input (a result's index is its "
            "line number - 1), so remove the blank line"
        )
    try:
        item = json.loads(raw)
    except UnicodeDecodeError:
        raise CloudflareInputError(f"{where} line {line_no}: not UTF-8 text; inputs must be UTF-8 JSONL") from None
    except json.JSONDecodeError as exc:
        raise CloudflareInputError(
            f"{where} line {line_no}: not valid JSON ({exc.msg} at column {exc.colno}); "
            f"each line must be one JSON object such as {_EXAMPLE}"
        ) from None
    return _check_item(item, f"{where} line {line_no}")


def _check_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise CloudflareInputError(f"{where}: expected a JSON object such as {_EXAMPLE}, got {_kind(item)}")
    reference = item.get("external_reference")
    if reference is not None and not isinstance(reference, str):
        raise CloudflareInputError(f"{where}: external_reference must be a string, got {_kind(reference)}")
    return dict(item)


def check_prompt(item: Mapping[str, Any], where: str) -> None:
    """Refuse an item a text-generation model would answer with 5006: it needs a string ``prompt``
    or a non-empty ``messages`` list of ``{"role": str, "content": str}``."""
    prompt, messages = item.get("prompt"), item.get("messages")
    if prompt is None and messages is None:
        keys = ", ".join(sorted(map(str, item))) or "none"
        raise CloudflareInputError(
            f"{where}: a text-generation input needs 'prompt' (a string) or 'messages' (a list of "
            f"{{'role': ..., 'content': ...}}); this one has keys: {keys}"
        )
    if prompt is not None and not isinstance(prompt, str):
        raise CloudflareInputError(f"{where}: 'prompt' must be a string, got {_kind(prompt)}")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise CloudflareInputError(
                f"{where}: 'messages' must be a non-empty list of {{'role': ..., 'content': ...}}, "
                f"got {_kind(messages)}"
            )
        for position, message in enumerate(messages):
            if not (
                isinstance(message, Mapping)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise CloudflareInputError(
                    f"{where}: messages[{position}] must be an object with string 'role' and 'content'"
                )


def _kind(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)


def split_item(item: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Split an input item into the model's input and its ``external_reference`` (if any).

    The direct engine sends the model input alone; the queue engine sends the item whole (the Batch
    API echoes ``external_reference`` back).
    """
    body = dict(item)
    reference = body.pop("external_reference", None)
    return body, reference if isinstance(reference, str) else None


def stage_inputs(items: Sequence[Any], output: str, *, prompts: bool = False) -> str:
    """Write an inline list of inputs as JSONL next to ``output``; return that file's location.

    The trigger's kwargs then carry a path, never the inputs themselves.

    :param prompts: also check that each item is a text-generation input (:func:`check_prompt`).
    """
    lines = []
    for index, item in enumerate(items):
        checked = _check_item(item, f"inputs[{index}]")
        if prompts:
            check_prompt(checked, f"inputs[{index}]")
        try:
            lines.append(json.dumps(checked, ensure_ascii=False, separators=(",", ":")))
        except (TypeError, ValueError) as exc:
            raise CloudflareInputError(f"inputs[{index}]: not JSON-serializable ({exc})") from None
    location = output + INPUTS_SUFFIX
    _files.write_text(location, "".join(line + "\n" for line in lines))
    return location


# -- output records -----------------------------------------------------------------------------------


def success_record(index: int, external_reference: str | None, result: Any) -> dict[str, Any]:
    """The output line for an item the model answered."""
    return {"index": index, "external_reference": external_reference, "success": True, "result": result}


def failure_record(
    index: int,
    external_reference: str | None,
    *,
    status: int | None,
    codes: Sequence[int] = (),
    message: str,
    transient: bool = False,
) -> dict[str, Any]:
    """The output line for an item that failed after its per-item retries.

    :param transient: the failure may pass (a 5xx, a timeout): the record says ``"transient": true``,
        the task fails for a retry, and the retry sends this item again.
    """
    error: dict[str, Any] = {"status": status, "codes": list(codes), "message": message}
    if transient:
        error["transient"] = True
    return {"index": index, "external_reference": external_reference, "success": False, "error": error}


def is_transient(record: Mapping[str, Any]) -> bool:
    """A failure record a retry sends again (see :func:`failure_record`)."""
    error = record.get("error")
    return not record.get("success") and isinstance(error, Mapping) and error.get("transient") is True


def iter_outputs(output: str) -> Iterator[dict[str, Any]]:
    """Stream the records of a finished output file, one dict per line."""
    with _files.open_read(output) as handle:
        for raw in handle:
            if raw.strip():
                yield json.loads(raw)


def scan_output(output: str) -> OutputTally:
    """Tally the complete records 0, 1, 2, … at the start of ``output`` without changing it.

    ``tally.written`` is where a resumed run would start; a missing output counts as empty.
    """
    tally = OutputTally()
    try:
        with _files.open_read(output) as handle:
            for raw in handle:
                record = _parse_record(raw) if raw.endswith(b"\n") else None
                if record is None or record.get("index") != tally.written or is_transient(record):
                    break
                tally.add(record)
    except FileNotFoundError:
        pass
    return tally


class TokenUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass
class OutputTally:
    """Counts over the records written so far (including those a resumed run found in ``output``)."""

    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    #: failed records by Cloudflare error code (``"none"``: no code), for messages and the manifest
    codes: Counter[str] = field(default_factory=Counter)
    #: failed records a retry sends again (:func:`is_transient`)
    transient: int = 0

    def add(self, record: Mapping[str, Any]) -> None:
        if not record.get("success"):
            self.failed += 1
            self.transient += is_transient(record)
            error = record.get("error")
            codes = error.get("codes") if isinstance(error, Mapping) else None
            for code in (codes if isinstance(codes, list) and codes else ["none"])[:1]:
                self.codes[str(code)] += 1
            return
        self.succeeded += 1
        result = record.get("result")
        usage = result.get("usage") if isinstance(result, Mapping) else None
        if isinstance(usage, Mapping):
            self.prompt_tokens += _tokens(usage.get("prompt_tokens"))
            self.completion_tokens += _tokens(usage.get("completion_tokens"))
            self.total_tokens += _tokens(usage.get("total_tokens"))

    @property
    def written(self) -> int:
        return self.succeeded + self.failed

    @property
    def usage(self) -> TokenUsage:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


def _tokens(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# -- the ordered writer -------------------------------------------------------------------------------


class OrderedResultWriter:
    """Append output records in input order, whatever order they complete in.

    Records that arrive early wait in memory until the ones before them are written (the engines
    bound how far ahead they run, so this stays small). Each in-order run of records is appended and
    flushed at once, so ``output`` always holds a complete prefix of the batch.

    **Resume.** On opening, the lines already in ``output`` that are complete records numbered 0, 1,
    2, … are kept and counted (:attr:`start_index`); a torn last line (a crash mid-write) or anything
    after the first line that does not fit is cut off.

    **Remote outputs** (fsspec URLs, ``ObjectStoragePath``): object stores cannot append, so the
    writer spools to a local temporary file (seeded with the remote's complete prefix) and uploads it
    whole on :meth:`close`. A run that ends normally, by timeout, by error or by cancellation closes
    the writer and so uploads what it wrote; a process that is killed outright loses its spool, and
    the next run resumes from what the last closed run uploaded.

    Async code uses :meth:`open`, :meth:`add` and :meth:`close` (file I/O runs in a thread, off the
    event loop); sync code uses :meth:`open_sync`, :meth:`add_sync` and :meth:`close_sync`.

    :param output: a local path or an fsspec URL (an ``ObjectStoragePath`` in its string form).
    """

    def __init__(self, output: str) -> None:
        self.output = output
        self.tally = OutputTally()
        self._local = _files.local_path(output)
        self._lock = threading.Lock()
        self._handle: IO[bytes] | None = None
        self._spool: str | None = None
        self._opened = False
        self._closed = False
        self._start = 0
        self._next = 0
        self._pending: dict[int, dict[str, Any]] = {}
        self._carry: str | None = None

    def __repr__(self) -> str:
        return f"OrderedResultWriter({_files.describe(self.output)!r}, written={self._next})"

    @property
    def start_index(self) -> int:
        """How many records ``output`` already held when opened: the first index still to do."""
        self.open_sync()
        return self._start

    @property
    def next_index(self) -> int:
        """The index of the next record to append (records written so far, resumed ones included)."""
        return self._next

    # -- sync -------------------------------------------------------------------------------------

    def open_sync(self) -> None:
        """Find the complete prefix already in ``output`` and open it for appending (idempotent)."""
        with self._lock:
            if self._opened:
                return
            if self._local is not None:
                os.makedirs(os.path.dirname(self._local), exist_ok=True)
                self._start = self._keep_local_prefix(self._local)
                self._handle = open(self._local, "ab")  # noqa: SIM115 - held until close_sync()
            else:
                fd, self._spool = tempfile.mkstemp(prefix="cfai-batch-", suffix=".jsonl")
                self._handle = os.fdopen(fd, "wb")
                self._start = self._copy_remote_prefix(self._handle)
                self._handle.flush()
            self._next = self._start
            self._opened = True
        if self._start:
            log.info("Resuming %s after %d record(s) already written", _files.describe(self.output), self._start)

    def add_sync(self, index: int, record: dict[str, Any]) -> None:
        """Hand over the record for item ``index``; it is written once all items before it are."""
        self.open_sync()
        with self._lock:
            if self._closed or self._handle is None:
                raise RuntimeError(f"{self!r} is closed")
            if record.get("index") != index:
                raise ValueError(f"record for item {index} carries index {record.get('index')!r}")
            if index < self._next or index in self._pending:
                raise ValueError(f"item {index} was already written")
            self._pending[index] = record
            chunk = []
            while self._next in self._pending:
                ready = self._pending.pop(self._next)
                self.tally.add(ready)
                chunk.append(_line(ready))
                self._next += 1
            if chunk:
                self._handle.write(b"".join(chunk))
                self._handle.flush()

    def close_sync(self) -> None:
        """Flush, close, and upload a remote output. Records still waiting behind a gap are dropped
        (a resumed run does them again)."""
        with self._lock:
            if self._closed or not self._opened:
                self._closed = True
                return
            self._closed = True
            if self._pending:
                log.warning(
                    "%d record(s) after item %d were not written (item %d never completed)",
                    len(self._pending),
                    self._next,
                    self._next,
                )
                self._pending.clear()
            assert self._handle is not None
            try:
                self._put_back_carried()
            finally:
                self._handle.close()
            if self._spool is not None:
                try:
                    _files.upload(self._spool, self.output)
                finally:
                    os.unlink(self._spool)

    def carried(self) -> Iterator[dict[str, Any]]:
        """The records ``output`` held after its first transient failure, in order, from that one on.

        The writer cut ``output`` there on opening (:attr:`start_index` is that record's index): a
        resumed run hands the final ones back to :meth:`add` instead of sending their items again,
        and sends only the transient ones. What is not handed back by :meth:`close` is kept.
        """
        self.open_sync()
        if self._carry is None:
            return
        with open(self._carry, "rb") as handle:
            for raw in handle:
                record = _parse_record(raw) if raw.endswith(b"\n") else None
                if record is None:
                    return
                yield record

    def _put_back_carried(self) -> None:
        """Append the carried records a run did not reach, so stopping early loses none of them."""
        carry, self._carry = self._carry, None
        if carry is None:
            return
        assert self._handle is not None
        try:
            with open(carry, "rb") as handle:
                for raw in handle:
                    record = _parse_record(raw) if raw.endswith(b"\n") else None
                    if record is None or not isinstance(record.get("index"), int) or record["index"] < self._next:
                        continue
                    if record["index"] != self._next:
                        break  # only a run that continues the written prefix may follow it
                    self._handle.write(raw)
                    self._next += 1
            self._handle.flush()
        finally:
            os.unlink(carry)

    def __enter__(self) -> OrderedResultWriter:
        self.open_sync()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_sync()

    # -- async ------------------------------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self.open_sync)

    async def add(self, index: int, record: dict[str, Any]) -> None:
        await asyncio.to_thread(self.add_sync, index, record)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    async def __aenter__(self) -> OrderedResultWriter:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- resume -----------------------------------------------------------------------------------

    def _keep_local_prefix(self, path: str) -> int:
        try:
            with open(path, "rb") as handle:
                count, keep = self._scan_prefix(handle, None)
                size = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            return 0
        if keep < size:
            if self._carry is None:
                log.warning("Cutting %d byte(s) of incomplete output from %s", size - keep, path)
            os.truncate(path, keep)
        return count

    def _copy_remote_prefix(self, spool: IO[bytes]) -> int:
        try:
            with _files.open_read(self.output) as remote:
                return self._scan_prefix(remote, spool)[0]
        except FileNotFoundError:
            return 0

    def _keep_carried(self, first: bytes, rest: IO[bytes]) -> None:
        self._carry = _keep_carried_into(first, rest)
        log.info(
            "%s: item %d failed for a passing reason last time; sending it and the other such items again",
            _files.describe(self.output),
            self.tally.written,
        )

    def _scan_prefix(self, source: IO[bytes], copy_to: IO[bytes] | None) -> tuple[int, int]:
        """Count leading lines that are complete records 0, 1, 2, …; return (count, their bytes)."""
        count = kept = 0
        for raw in source:
            record = _parse_record(raw) if raw.endswith(b"\n") else None
            if record is not None and record.get("index") == count and is_transient(record):
                self._keep_carried(raw, source)
                break
            if record is None or record.get("index") != count:
                if raw.endswith(b"\n") and record is not None:
                    log.warning(
                        "Output line %d holds item %r, not %d; rewriting from there",
                        count + 1,
                        record.get("index"),
                        count,
                    )
                break
            self.tally.add(record)
            if copy_to is not None:
                copy_to.write(raw)
            count += 1
            kept += len(raw)
        return count, kept


def _keep_carried_into(first: bytes, rest: IO[bytes]) -> str:
    fd, carry = tempfile.mkstemp(prefix="cfai-batch-carry-", suffix=".jsonl")
    with os.fdopen(fd, "wb") as handle:
        handle.write(first)
        for raw in rest:
            handle.write(raw)
    return carry


def _line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("success"), bool):
        return None
    return record


# -- the manifest -------------------------------------------------------------------------------------


class BatchManifest(TypedDict):
    """What the operator returns (XCom): counts and where the results are, never the results."""

    engine: str
    model: str
    lora: str | None
    output: str
    total: int
    succeeded: int
    failed: int
    failure_ratio: float
    usage: TokenUsage
    request_ids: list[str]
    resumed_from: int
    status: str
    error_codes: dict[str, int]
    transient_failures: int


def build_manifest(
    *,
    engine: str,
    model: str,
    lora: str | None,
    output: str,
    total: int,
    tally: OutputTally,
    request_ids: Sequence[str] = (),
    resumed_from: int = 0,
    status: str = "success",
) -> BatchManifest:
    """Summarise a batch run.

    :param total: the number of inputs.
    :param status: ``"success"`` (every input has a record) or ``"timeout"`` (the deadline came first).
    ``failure_ratio`` is failed records over written records (0.0 when nothing was written).
    """
    written = tally.written
    return {
        "engine": engine,
        "model": model,
        "lora": lora,
        "output": _files.public_location(output),
        "total": total,
        "succeeded": tally.succeeded,
        "failed": tally.failed,
        "failure_ratio": round(tally.failed / written, 6) if written else 0.0,
        "usage": tally.usage,
        "request_ids": list(request_ids),
        "resumed_from": resumed_from,
        "status": status,
        # The most common first error codes of the failed items: why a batch failed, at a glance.
        "error_codes": dict(tally.codes.most_common(_TOP_CODES)),
        "transient_failures": tally.transient,
    }
