"""The ordered, resumable writer of a batch's output (see :mod:`~airflow_provider_cfai.batch.records`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_cfai.batch import _files
from airflow_provider_cfai.batch.records import OutputTally, is_transient, parse_record, read_prefix, record_line

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = ["OrderedResultWriter"]

log = logging.getLogger(__name__)


class OrderedResultWriter:
    """Append output records in input order, whatever order they complete in.

    Records that arrive early wait in memory until the ones before them are written (the engines
    bound how far ahead they run, so this stays small). Each in-order run of records is appended and
    flushed at once, so ``output`` always holds a complete prefix of the batch.

    **Resume.** On opening, the complete prefix of ``output`` is kept and counted (:attr:`start_index`);
    the rest (a torn last line after a crash mid-write, say) is cut off.

    **Remote outputs** (fsspec URLs, ``ObjectStoragePath``): object stores cannot append, so the
    writer spools to a local temporary file (seeded with the remote's complete prefix) and uploads it
    whole on :meth:`close`. A run that ends normally, by timeout, by error or by cancellation closes
    the writer and so uploads what it wrote; a process that is killed outright loses its spool, and
    the next run resumes from what the last closed run uploaded.

    Async code uses :meth:`add`, which runs the file I/O in a thread, off the event loop.
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

    @property
    def start_index(self) -> int:
        """How many records ``output`` already held when opened: the first index still to do."""
        self.open_sync()
        return self._start

    @property
    def next_index(self) -> int:
        """Records written so far, resumed ones included."""
        return self._next

    def open_sync(self) -> None:
        """Find the complete prefix already in ``output`` and open it for appending (idempotent)."""
        with self._lock:
            if self._opened:
                return
            spool = None
            if self._local is None:
                fd, self._spool = tempfile.mkstemp(prefix="cfai-batch-", suffix=".jsonl")
                spool = os.fdopen(fd, "wb")
            keep = 0
            with contextlib.suppress(FileNotFoundError), _files.open_read(self.output) as source:
                self._start, keep = self._scan_prefix(source, spool)
            if spool is not None:
                spool.flush()
                self._handle = spool
            elif self._local is not None:  # always, without a spool
                size = os.path.getsize(self._local) if os.path.exists(self._local) else 0
                if keep < size:
                    if self._carry is None:
                        log.warning("Cutting %d byte(s) of incomplete output from %s", size - keep, self._local)
                    os.truncate(self._local, keep)
                os.makedirs(os.path.dirname(self._local), exist_ok=True)
                self._handle = open(self._local, "ab")  # noqa: SIM115 - held until close_sync()
            self._next = self._start
            self._opened = True
        if self._start:
            log.info("Resuming %s after %d record(s) already written", _files.describe(self.output), self._start)

    def add_sync(self, index: int, record: dict[str, Any]) -> None:
        """Hand over the record for item ``index``; it is written once all items before it are."""
        self.open_sync()
        with self._lock:
            if self._closed or self._handle is None:
                raise RuntimeError(f"the writer of {_files.describe(self.output)} is closed")
            if record.get("index") != index:
                raise ValueError(f"record for item {index} carries index {record.get('index')!r}")
            if index < self._next or index in self._pending:
                raise ValueError(f"item {index} was already written")
            self._pending[index] = record
            chunk = []
            while self._next in self._pending:
                ready = self._pending.pop(self._next)
                self.tally.add(ready)
                chunk.append(record_line(ready))
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
                    "%d record(s) after item %d were not written (it never completed)", len(self._pending), self._next
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

    def carried(self) -> Generator[dict[str, Any], None, None]:
        """The records ``output`` held after its first transient failure, in order, from that one on.

        The writer cut ``output`` there on opening (:attr:`start_index` is that record's index): a
        resumed run hands the final ones back to :meth:`add` instead of sending their items again,
        and sends only the transient ones.
        """
        self.open_sync()
        if self._carry is None:
            return
        with open(self._carry, "rb") as handle:
            for raw in handle:
                record = parse_record(raw)
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
                    record = parse_record(raw)
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

    async def add(self, index: int, record: dict[str, Any]) -> None:
        await asyncio.to_thread(self.add_sync, index, record)

    async def __aenter__(self) -> OrderedResultWriter:
        await asyncio.to_thread(self.open_sync)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close_sync)

    def _scan_prefix(self, source: IO[bytes], copy_to: IO[bytes] | None) -> tuple[int, int]:
        def keep(raw: bytes, record: dict[str, Any]) -> None:
            self.tally.add(record)
            if copy_to is not None:
                copy_to.write(raw)

        count, kept, stop = read_prefix(source, keep)
        record = parse_record(stop) if stop is not None else None
        if record is not None and record.get("index") == count and is_transient(record):
            fd, self._carry = tempfile.mkstemp(prefix="cfai-batch-carry-", suffix=".jsonl")
            with os.fdopen(fd, "wb") as carry:
                carry.write(stop)  # type: ignore[arg-type]
                carry.writelines(source)
            log.info(
                "%s: item %d failed for a passing reason last time; sending it and the other such items again",
                _files.describe(self.output),
                count,
            )
        elif record is not None:
            log.warning(
                "Output line %d holds item %r, not %d; rewriting from there", count + 1, record.get("index"), count
            )
        return count, kept
