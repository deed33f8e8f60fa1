"""The manifest a batch task returns (XCom ``return_value``): counts and where the results are."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from airflow_provider_cfai.batch import _files

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow_provider_cfai.batch.records import OutputTally, TokenUsage

__all__ = ["BatchManifest", "build_manifest"]

_TOP_CODES = 5


class BatchManifest(TypedDict):
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
    :param status: ``"success"`` (every input has a record) or ``"timeout"`` (the deadline came first);
        a success with transient failures left is reported as ``"incomplete"``.
    """
    written = tally.written
    return {
        "engine": engine,
        "model": model,
        "lora": lora,
        "output": _files.describe(output),
        "total": total,
        "succeeded": tally.succeeded,
        "failed": tally.failed,
        "failure_ratio": round(tally.failed / written, 6) if written else 0.0,
        "usage": tally.usage,
        "request_ids": list(request_ids),
        "resumed_from": resumed_from,
        # Items a retry must send again: not finished, whatever the engine says.
        "status": "incomplete" if status == "success" and tally.transient else status,
        "error_codes": dict(tally.codes.most_common(_TOP_CODES)),
        "transient_failures": tally.transient,
    }
