"""The operator's record of a batch in flight, kept where a retried task can find it again.

Airflow clears a task's XComs when it retries, so what a retry needs — the queued batches' request
IDs, and proof that the output file belongs to this very batch — is written next to the output
(``<output>.batch.json``, which lives as long as the output) and, on Airflow 3.3+, into the task's
state store (which survives a retry on another machine whose local disk has no sidecar).

A ledger only counts when its *fingerprint* matches the batch being run: an output left by another
batch is never resumed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_provider_cfai.batch import _files

__all__ = ["STATE_KEY", "Ledger", "load_ledger", "save_ledger"]

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".batch.json"
#: The key in Airflow 3.3's task state store.
STATE_KEY = "cfai_batch"
_VERSION = 1


@dataclass
class Ledger:
    """One batch: what identifies it, where its inputs are, and the queued chunks submitted so far.

    :param inputs: the inputs file the trigger reads (inline lists are staged to one).
    :param request_ids: one per submitted chunk, in order (queue engine only).
    :param chunk_sizes: the item count of each submitted chunk.
    """

    fingerprint: dict[str, Any]
    inputs: str
    request_ids: list[str] = field(default_factory=list)
    chunk_sizes: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"version": _VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> Ledger | None:
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            return None
        fingerprint, inputs = data.get("fingerprint"), data.get("inputs")
        ids, starts = data.get("request_ids"), data.get("chunk_sizes")
        if not (isinstance(fingerprint, dict) and isinstance(inputs, str)):
            return None
        if not (isinstance(ids, list) and all(isinstance(i, str) and i for i in ids)):
            return None
        if not (isinstance(starts, list) and len(starts) == len(ids) and all(type(s) is int for s in starts)):
            return None
        return cls(fingerprint, inputs, list(ids), list(starts))


def sidecar_location(output: str) -> str:
    return output + SIDECAR_SUFFIX


def load_ledger(output: str, fingerprint: dict[str, Any], *, state_store: Any = None) -> Ledger | None:
    """The recorded ledger of this batch (matching ``fingerprint``), or ``None``.

    Of the sidecar and the state store, the one that knows more submitted chunks wins.
    """
    found: list[Ledger | None] = []
    text = _files.read_text(sidecar_location(output))
    if text is not None:
        try:
            found.append(_matching(json.loads(text), fingerprint, "sidecar"))
        except ValueError:
            log.warning("Ignoring %s: not valid JSON", _files.describe(sidecar_location(output)))
    if state_store is not None:
        found.append(_matching(state_store.get(STATE_KEY), fingerprint, "task state store"))
    ledgers = [ledger for ledger in found if ledger is not None]
    return max(ledgers, key=lambda ledger: len(ledger.request_ids), default=None)


def _matching(data: Any, fingerprint: dict[str, Any], where: str) -> Ledger | None:
    ledger = Ledger.from_json(data)
    if ledger is None:
        return None
    if ledger.fingerprint != fingerprint:
        log.info("The batch recorded in the %s is another batch (different inputs or settings)", where)
        return None
    return ledger


def save_ledger(ledger: Ledger, output: str, *, state_store: Any = None) -> None:
    data = ledger.to_json()
    _files.write_text(sidecar_location(output), json.dumps(data, indent=1, sort_keys=True) + "\n")
    if state_store is not None:
        state_store.set(STATE_KEY, data)
