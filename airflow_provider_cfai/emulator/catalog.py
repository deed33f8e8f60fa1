"""Cloudflare's own public finetunes, generated deterministically so ids and order are stable."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from typing import Any

__all__ = ["FINETUNE_COLUMNS", "public_seed", "sort_key", "timestamp"]

FINETUNE_COLUMNS = ("id", "name", "model", "description", "public", "created_at", "modified_at")
_SEED_NAMESPACE = uuid.UUID("6d1f3c5e-8a43-4d4b-9a3e-2f0c7f1d8b21")
_SEED_EPOCH = dt.datetime(2024, 4, 2, tzinfo=dt.timezone.utc)


def timestamp(moment: dt.datetime | None = None) -> str:
    """Cloudflare's format: millisecond precision and a literal Z, e.g. 2019-12-27T18:11:19.117Z."""
    moment = moment or dt.datetime.now(dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@functools.lru_cache(maxsize=8)
def public_seed(count: int, models: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    seeds = []
    for n in range(1, count + 1):
        model = models[(n - 1) % len(models)] if models else "@cf/mistral/mistral-7b-instruct-v0.2-lora"
        short = model.rsplit("/", 1)[-1]
        moment = timestamp(_SEED_EPOCH + dt.timedelta(hours=n))
        seeds.append(
            {
                "id": str(uuid.uuid5(_SEED_NAMESPACE, f"public/{n}")),
                "name": f"cf-public-{short}-{n}",
                "model": model,
                "description": f"Public LoRA adapter {n} for {model} (emulated)",
                "public": True,
                "created_at": moment,
                "modified_at": moment,
            }
        )
    return tuple(seeds)


def sort_key(column: str) -> Any:
    def key(record: dict[str, Any]) -> tuple[bool, Any]:
        value = record.get(column)
        # Absent descriptions sort first rather than breaking the comparison.
        return (value is not None, value if value is not None else "")

    return key
