"""The batch's output records, one JSONL line per input, in input order::

    {"index": 0, "external_reference": "q-1", "success": true, "result": {"response": "..."}}
    {"index": 1, "external_reference": null, "success": false,
     "error": {"status": 400, "codes": [5006], "message": "..."}}

Because records are appended in input order, the lines already in ``output`` are exactly the items
that are done: a retried task resumes after them (:func:`read_prefix`) instead of sending them again.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TypedDict

from airflow_provider_cfai.batch import _files

__all__ = [
    "OutputTally",
    "TokenUsage",
    "failure_record",
    "is_transient",
    "iter_outputs",
    "parse_record",
    "read_prefix",
    "record_line",
    "scan_output",
    "success_record",
]


def success_record(index: int, external_reference: str | None, result: Any) -> dict[str, Any]:
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
    """Tally the complete records 0, 1, 2, … at the start of ``output`` without changing it."""
    tally = OutputTally()
    try:
        with _files.open_read(output) as handle:
            read_prefix(handle, lambda raw, record: tally.add(record))
    except FileNotFoundError:
        pass
    return tally


def read_prefix(source: IO[bytes], keep: Callable[[bytes, dict[str, Any]], None]) -> tuple[int, int, bytes | None]:
    """Read the complete records 0, 1, 2, … at the start of ``source``, handing each to ``keep``.

    Stops at the first line that is torn, not a record, out of order (so an output with an item
    missing is never taken for a complete one) or a transient failure (a retry sends its item
    again). Returns the records' count, their bytes, and the line it stopped at (``None``: the end).
    """
    count = kept = 0
    for raw in source:
        record = parse_record(raw)
        if record is None or record.get("index") != count or is_transient(record):
            return count, kept, raw
        keep(raw, record)
        count += 1
        kept += len(raw)
    return count, kept, None


def record_line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def parse_record(raw: bytes) -> dict[str, Any] | None:
    """The record on a complete line, or ``None`` if the line is torn or not a record."""
    if not raw.endswith(b"\n"):
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("success"), bool):
        return None
    return record


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
        self.add_usage(result.get("usage") if isinstance(result, Mapping) else None)

    def add_usage(self, usage: Any) -> bool:
        """Add a model's ``usage`` object; ``False`` when it is not one (nothing added)."""
        if not isinstance(usage, Mapping):
            return False
        self.prompt_tokens += _tokens(usage.get("prompt_tokens"))
        self.completion_tokens += _tokens(usage.get("completion_tokens"))
        self.total_tokens += _tokens(usage.get("total_tokens"))
        return True

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
