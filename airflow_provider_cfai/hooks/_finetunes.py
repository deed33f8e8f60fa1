"""Which finetune a name means when an account holds it more than once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["oldest_named"]


def oldest_named(finetunes: Iterable[dict[str, Any]], name: str, *, model: str | None = None) -> dict[str, Any] | None:
    """The earliest-created finetune called ``name`` (and on ``model``, if given), or ``None``.

    Cloudflare may let a name be registered twice; the hook's look-ups, a create's reuse and its
    recovery after a lost response all pick the oldest, so they agree on one finetune.
    """
    matches = (f for f in finetunes if f.get("name") == name and (model is None or f.get("model") == model))
    return min(matches, key=lambda f: str(f.get("created_at", "")), default=None)
