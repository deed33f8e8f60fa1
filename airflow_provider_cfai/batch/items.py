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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
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
    "failure_record",
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


# -- inputs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputsSummary:
    """What a full pass over the inputs learned: the item count and the file's SHA-256."""

    count: int
    sha256: str


def iter_inputs(path: str, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(index, item)`` from a JSONL file, from item ``start`` on; blank lines are skipped.

    :param path: a local path or an fsspec URL (an ``ObjectStoragePath`` in its string form).
    :raises CloudflareInputError: the file is missing, or a line is not a JSON object (the message
        names the line number).
    """
    where = _files.describe(path)
    index = -1
    for line_no, raw in _lines(path):
        if not raw.strip():
            continue
        index += 1
        if index >= start:
            yield index, _parse_input(raw, line_no, where)


def scan_inputs(path: str) -> InputsSummary:
    """Check every line of a JSONL inputs file; return its item count and the file's digest.

    Run before any API call, so a bad line 9,000 fails the task before the first request.
    """
    where = _files.describe(path)
    digest = hashlib.sha256()
    count = 0
    for line_no, raw in _lines(path):
        digest.update(raw)
        if raw.strip():
            _parse_input(raw, line_no, where)
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


def stage_inputs(items: Sequence[Any], output: str) -> str:
    """Write an inline list of inputs as JSONL next to ``output``; return that file's location.

    The trigger's kwargs then carry a path, never the inputs themselves.
    """
    lines = []
    for index, item in enumerate(items):
        checked = _check_item(item, f"inputs[{index}]")
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
) -> dict[str, Any]:
    """The output line for an item that failed for good (after its per-item retries)."""
    return {
        "index": index,
        "external_reference": external_reference,
        "success": False,
        "error": {"status": status, "codes": list(codes), "message": message},
    }


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
                if record is None or record.get("index") != tally.written:
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

    def add(self, record: Mapping[str, Any]) -> None:
        if not record.get("success"):
            self.failed += 1
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
            self._handle.close()
            if self._spool is not None:
                try:
                    _files.upload(self._spool, self.output)
                finally:
                    os.unlink(self._spool)

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
            log.warning("Cutting %d byte(s) of incomplete output from %s", size - keep, path)
            os.truncate(path, keep)
        return count

    def _copy_remote_prefix(self, spool: IO[bytes]) -> int:
        try:
            with _files.open_read(self.output) as remote:
                return self._scan_prefix(remote, spool)[0]
        except FileNotFoundError:
            return 0

    def _scan_prefix(self, source: IO[bytes], copy_to: IO[bytes] | None) -> tuple[int, int]:
        """Count leading lines that are complete records 0, 1, 2, …; return (count, their bytes)."""
        count = kept = 0
        for raw in source:
            record = _parse_record(raw) if raw.endswith(b"\n") else None
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
    }
