"""Finetunes as Airflow Assets: one stable URI per finetune, and the alias that carries their events.

``CreateFinetuneOperator`` adds an asset event for the finetune it registered (or reused and
uploaded an adapter to) through the ``AssetAlias`` named :data:`FINETUNES_ALIAS` (renamable per
task), so a DAG scheduled on that alias starts when a new finetune is ready. The URI names the
finetune, not its ID, so re-runs that reuse a finetune land on the same asset::

    cloudflare-workers-ai://<account id>/finetunes/<URL-quoted name>

A promotion (``PromoteFinetuneOperator``, ``RollbackFinetuneOperator``) is an event of the serving
pointer, a Workers KV key, emitted through :data:`PROMOTIONS_ALIAS`; the finetune is in ``extra``::

    cloudflare-workers-ai://<account id>/kv/<namespace id>/<URL-quoted key>

The provider registers the scheme under ``asset-uris``: Airflow calls :func:`sanitize_uri` on every
such URI (in DAG files too), so this module imports nothing beyond what DAG files already load.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from airflow.sdk import Asset, AssetAlias

if TYPE_CHECKING:
    from collections.abc import Mapping
    from urllib.parse import SplitResult

__all__ = [
    "FINETUNES_ALIAS",
    "PROMOTIONS_ALIAS",
    "SCHEME",
    "add_finetune_event",
    "add_promotion_event",
    "finetune_asset",
    "finetune_event_extra",
    "finetune_uri",
    "pointer_asset",
    "pointer_uri",
    "sanitize_uri",
]

#: The URI scheme of finetune assets (registered in ``get_provider_info()["asset-uris"]``).
SCHEME = "cloudflare-workers-ai"

#: The default ``AssetAlias`` name ``CreateFinetuneOperator`` emits finetune events through.
FINETUNES_ALIAS = "cloudflare-workers-ai-finetunes"

#: The default ``AssetAlias`` name the promote and rollback operators emit pointer events through.
PROMOTIONS_ALIAS = "cloudflare-workers-ai-promotions"

_ACCOUNT_ID = re.compile(r"[0-9a-fA-F]{32}")
_FINETUNES = "finetunes"
_POINTERS = "kv"


def finetune_uri(account_id: str, finetune_name: str) -> str:
    """The finetune's asset URI, already in the form Airflow's sanitizer returns.

    :param account_id: the Cloudflare account ID (32 hex characters).
    :param finetune_name: the finetune's name; quoted whole, so ``/`` and spaces are safe.
    """
    account = _account(account_id)
    if not isinstance(finetune_name, str) or not finetune_name.strip():
        raise ValueError(f"finetune_name must be a non-empty string, got {finetune_name!r}")
    return f"{SCHEME}://{account}/{_FINETUNES}/{quote(finetune_name.strip(), safe='')}"


def finetune_asset(*, account_id: str, finetune_name: str, extra: dict[str, Any] | None = None) -> Asset:
    """The finetune's ``Asset`` (name = URI), e.g. to schedule on one finetune by name.

    Also the ``factory`` Airflow's hook-lineage collector calls for this scheme.
    """
    return Asset(uri=finetune_uri(account_id, finetune_name), extra=extra)


def sanitize_uri(parts: SplitResult) -> SplitResult:
    """Normalise a ``cloudflare-workers-ai://`` URI, or raise ``ValueError`` saying what is wrong.

    Airflow's ``asset-uris`` handler: it receives the split URI after Airflow's generic clean-up
    (lower-case scheme, no trailing slash, no fragment) and returns the canonical form: lower-case
    account ID and the finetune name quoted exactly as :func:`finetune_uri` quotes it.
    """
    expected = f"expected {SCHEME}://<account id>/{_FINETUNES}/<name>"
    if parts.username or parts.password or parts.port is not None:
        raise ValueError(f"{SCHEME} URIs take no user, password or port; {expected}")
    if parts.query:
        raise ValueError(f"{SCHEME} URIs take no query string; {expected}")
    if not _ACCOUNT_ID.fullmatch(parts.hostname or ""):
        raise ValueError(f"the host must be the 32-hex-character account ID, got {parts.netloc!r}; {expected}")
    segments = parts.path.split("/")
    if len(segments) == 4 and segments[1] == _POINTERS:
        return _sanitize_pointer(parts, segments)
    if len(segments) != 3 or segments[1] != _FINETUNES or not unquote(segments[2]).strip():
        raise ValueError(
            f"the path must be /{_FINETUNES}/<name> with the name URL-quoted (a '/' in it as %2F), "
            f"got {parts.path!r}; build it with airflow_provider_cfai.assets.finetune_uri()"
        )
    name = quote(unquote(segments[2]), safe="")
    return parts._replace(netloc=parts.netloc.lower(), path=f"/{_FINETUNES}/{name}")


def finetune_event_extra(
    finetune: Mapping[str, Any], *, account_id: str, created: bool, adapter: str | None
) -> dict[str, Any]:
    """The asset event's ``extra``: what a downstream DAG needs without calling Cloudflare.

    :param finetune: the finetune as Cloudflare returns it (``id``, ``name``, ``model``).
    :param created: whether this task created it (``False``: it reused an existing one).
    :param adapter: where the uploaded adapter came from (credentials already removed), or ``None``
        when nothing was uploaded.
    """
    return {
        "finetune_id": str(finetune["id"]),
        "finetune_name": str(finetune["name"]),
        "model": str(finetune["model"]),
        "account_id": _account(account_id),
        "created": created,
        "adapter": adapter,
    }


def add_finetune_event(context: Mapping[str, Any], alias: str | AssetAlias, extra: dict[str, Any]) -> Asset | None:
    """Add an asset event for the finetune described by ``extra`` through ``alias``.

    The alias must be among the task's ``outlets`` (Airflow drops alias events of other aliases).
    Returns the asset, or ``None`` outside a task run (a context without ``outlet_events``).
    """
    outlet_events = context.get("outlet_events")
    if outlet_events is None:
        return None
    asset = finetune_asset(account_id=extra["account_id"], finetune_name=extra["finetune_name"])
    alias = alias if isinstance(alias, AssetAlias) else AssetAlias(alias)
    outlet_events[alias].add(asset, extra=extra)
    return asset


def _account(account_id: str) -> str:
    if not isinstance(account_id, str) or not _ACCOUNT_ID.fullmatch(account_id.strip()):
        raise ValueError(f"account_id must be the 32-hex-character Cloudflare account ID, got {account_id!r}")
    return account_id.strip().lower()


# -- serving pointers (promotions) -------------------------------------------------------------------


def pointer_uri(account_id: str, namespace_id: str, key: str) -> str:
    """The serving pointer's asset URI: a Workers KV key that a Worker reads its finetune from."""
    account = _account(account_id)
    for field, value in (("namespace_id", namespace_id), ("key", key)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    return f"{SCHEME}://{account}/{_POINTERS}/{quote(namespace_id.strip(), safe='')}/{quote(key.strip(), safe='')}"


def pointer_asset(*, account_id: str, namespace_id: str, key: str, extra: dict[str, Any] | None = None) -> Asset:
    """The serving pointer's ``Asset``, e.g. to schedule a monitoring DAG on "production changed"."""
    return Asset(uri=pointer_uri(account_id, namespace_id, key), extra=extra)


def add_promotion_event(context: Mapping[str, Any], alias: str | AssetAlias, extra: dict[str, Any]) -> Asset | None:
    """Add an asset event for the pointer described by ``extra`` (``account_id``, ``namespace_id``,
    ``key``) through ``alias``, which must be among the task's ``outlets``. ``None`` outside a task run."""
    outlet_events = context.get("outlet_events")
    if outlet_events is None:
        return None
    asset = pointer_asset(account_id=extra["account_id"], namespace_id=extra["namespace_id"], key=extra["key"])
    alias = alias if isinstance(alias, AssetAlias) else AssetAlias(alias)
    outlet_events[alias].add(asset, extra=extra)
    return asset


def _sanitize_pointer(parts: SplitResult, segments: list[str]) -> SplitResult:
    namespace_id, key = unquote(segments[2]).strip(), unquote(segments[3]).strip()
    if not namespace_id or not key:
        raise ValueError(
            f"the path must be /{_POINTERS}/<namespace id>/<key> with the key URL-quoted, got {parts.path!r}; "
            "build it with airflow_provider_cfai.assets.pointer_uri()"
        )
    path = f"/{_POINTERS}/{quote(namespace_id, safe='')}/{quote(key, safe='')}"
    return parts._replace(netloc=parts.netloc.lower(), path=path)
