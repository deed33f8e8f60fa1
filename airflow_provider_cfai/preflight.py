"""Checks before an irreversible create: the base model, the adapter's family, the account's room.

A finetune can never be deleted and an account holds at most 100 (today). These checks catch,
before ``POST /ai/finetunes``, what would spend a permanent slot on a finetune that can never serve,
or a create that would fail. Each failure is a :class:`PreflightCheckError` (permanent: no Airflow
retries) naming the fix. The catalog is advice, not a gate: when it cannot be read (no permission,
an outage) a warning is logged and the job goes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_cfai.exceptions import CloudflareAPIError, PreflightCheckError
from airflow_provider_cfai.hooks import _catalog

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow_provider_cfai.adapters import LoraAdapter
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

__all__ = ["DEFAULT_MAX_FINETUNES", "check_model", "check_room"]

#: Cloudflare's limit on finetunes per account (April 2026; it was 30 before).
DEFAULT_MAX_FINETUNES = 100


class TaskLog(Protocol):
    def warning(self, msg: Any, /, *args: Any) -> Any: ...


def check_model(
    hook: CloudflareAIHook,
    model: str,
    *,
    adapter: LoraAdapter | None = None,
    account_id: str | None = None,
    log: TaskLog,
) -> None:
    """Fail unless ``model`` is in the catalog and takes LoRAs, and ``adapter`` is of its family.

    The family is checked from the model's name even when the catalog cannot be read.
    """
    entry: dict[str, Any] | None = None
    try:
        entry = hook.get_model(model, account_id=account_id)
        if entry is None:
            # The cached catalog may be minutes old: ask about this one model before refusing it.
            entry = _catalog.find(hook.list_models(search=model, account_id=account_id), model)
    except CloudflareAPIError as error:
        log.warning("Could not read the Workers AI model catalog, so %s is not checked: %s", model, error)
    else:
        if entry is None or not _catalog.accepts_lora(entry):
            problem = (
                "is not in this account's Workers AI catalog" if entry is None else "does not accept LoRA adapters"
            )
            raise PreflightCheckError(
                f"Model {model!r} {problem}, so a finetune on it could never serve (and finetunes cannot "
                f"be deleted). Set model to a LoRA-capable base model: {_names(_lora_models(hook, account_id))}."
            )
    if adapter is not None:
        _check_family(hook, model, entry, adapter.model_type, account_id, log)


def check_room(count: int, *, limit: int, name: str, log: TaskLog) -> None:
    """Fail when the account already holds ``limit`` finetunes; warn from 90 % on."""
    if count >= limit:
        raise PreflightCheckError(
            f"The account already has {count} finetunes, its limit of {limit} (max_finetunes), and "
            f"finetunes cannot be deleted: creating {name!r} would fail. Reuse an existing finetune "
            "(its finetune_name with if_exists='reuse'), or ask Cloudflare for a higher limit and "
            "raise max_finetunes."
        )
    if count * 10 >= limit * 9:
        log.warning(
            "The account holds %d of its %d finetunes (%d%%) and finetunes cannot be deleted; "
            "creating %r leaves room for %d more.",
            count,
            limit,
            count * 100 // limit,
            name,
            limit - count - 1,
        )


def _check_family(
    hook: CloudflareAIHook,
    model: str,
    entry: dict[str, Any] | None,
    model_type: str,
    account_id: str | None,
    log: TaskLog,
) -> None:
    base = _catalog.family(entry) if entry is not None else None
    base = base or _catalog.family(model)
    if base is None:
        log.warning(
            "Cannot tell the family (mistral, gemma or llama) of %s, so the adapter's model_type %r is not "
            "checked against it",
            model,
            model_type,
        )
        return
    if base == model_type:
        return
    fitting = [m for m in _lora_models(hook, account_id) if _catalog.family(m) == model_type]
    raise PreflightCheckError(
        f"The adapter is a {model_type} adapter (model_type {model_type!r} in adapter_config.json) but "
        f"{model} is a {base} model, which cannot serve it. Set model to a {model_type} base model"
        f"{f' ({_names(fitting)})' if fitting else ''}, or use an adapter trained from a {base} model."
    )


def _lora_models(hook: CloudflareAIHook, account_id: str | None) -> list[dict[str, Any]]:
    # Only for messages: a catalog that fails now leaves the list out, never hides the failure.
    try:
        return [m for m in hook.list_cached_models(account_id=account_id) if _catalog.accepts_lora(m)]
    except CloudflareAPIError:
        return []


def _names(models: Iterable[dict[str, Any]]) -> str:
    names = sorted(name for name in map(_catalog.model_name, models) if name)
    return ", ".join(names) if names else "(the catalog could not be read)"
