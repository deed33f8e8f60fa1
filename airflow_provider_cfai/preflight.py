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

__all__ = ["DEFAULT_MAX_FINETUNES", "check_batch", "check_model", "check_room"]

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
    catalog_read, entry = _catalog_entry(hook, model, account_id, log)
    if catalog_read and (entry is None or not _catalog.accepts_lora(entry)):
        problem = "is not in this account's Workers AI catalog" if entry is None else "does not accept LoRA adapters"
        lora_models = _lora_models(hook, account_id)
        raise PreflightCheckError(
            f"Model {model!r} {problem}{_did_you_mean(model, lora_models) if entry is None else ''}, so a "
            "finetune on it could never serve (and finetunes cannot be deleted). Set model to a LoRA-capable "
            f"base model: {_names(lora_models)}."
        )
    if adapter is not None:
        _check_family(hook, model, entry, adapter.model_type, account_id, log)


def check_batch(
    hook: CloudflareAIHook,
    model: str,
    *,
    lora: str | None = None,
    account_id: str | None = None,
    log: TaskLog,
) -> dict[str, Any] | None:
    """Before a batch's first item: fail unless ``model`` is in the catalog and ``lora`` is a finetune
    of it in the account, so a typo fails once instead of once per item. Returns the model's catalog
    entry, or ``None`` when the catalog could not be read (a warning, not a failure).
    """
    catalog_read, entry = _catalog_entry(hook, model, account_id, log)
    if catalog_read and entry is None:
        models = _cached_models(hook, account_id)
        raise PreflightCheckError(
            f"Model {model!r} is not in this account's Workers AI catalog{_did_you_mean(model, models)}, so "
            "every item would fail (Cloudflare 5007 'No such model'). Check model's spelling."
        )
    if lora is not None:
        _check_batch_lora(hook, model, lora, account_id, log)
    return entry


def _catalog_entry(
    hook: CloudflareAIHook, model: str, account_id: str | None, log: TaskLog
) -> tuple[bool, dict[str, Any] | None]:
    """Whether the catalog could be read, and ``model``'s entry in it (``None``: not there)."""
    try:
        entry = hook.get_model(model, account_id=account_id)
        if entry is None:
            # The cached catalog may be minutes old: ask about this one model before refusing it.
            entry = _catalog.find(hook.list_models(search=model, account_id=account_id), model)
    except CloudflareAPIError as error:
        log.warning("Could not read the Workers AI model catalog, so %s is not checked: %s", model, error)
        return False, None
    return True, entry


def _check_batch_lora(hook: CloudflareAIHook, model: str, lora: str, account_id: str | None, log: TaskLog) -> None:
    try:
        finetune = hook.find_finetune(lora, account_id=account_id)
    except CloudflareAPIError as error:
        log.warning("Could not list the account's finetunes, so lora %r is not checked: %s", lora, error)
        return
    if finetune is None:
        raise PreflightCheckError(
            f"lora {lora!r} is neither the ID nor the name of a finetune in this account, so every item would "
            "fail (Cloudflare 3037 'Finetune not found'). Pass the ID CreateFinetuneOperator returned "
            "(e.g. lora=create.output) or an existing finetune's name."
        )
    if finetune.get("model") != model:
        raise PreflightCheckError(
            f"lora {lora!r} is a finetune of {finetune.get('model')!r}, not of {model!r}: set model to "
            f"{finetune.get('model')!r}, or pass a finetune of {model!r}."
        )


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


def _cached_models(hook: CloudflareAIHook, account_id: str | None) -> list[dict[str, Any]]:
    try:
        return hook.list_cached_models(account_id=account_id)
    except CloudflareAPIError:
        return []


def _did_you_mean(model: str, models: Iterable[dict[str, Any]]) -> str:
    """``" (did you mean '…'?)"`` for the closest catalog names, or ``""``."""
    import difflib

    names = [name for name in map(_catalog.model_name, models) if name]
    close = difflib.get_close_matches(model, names, n=2, cutoff=0.8)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def _names(models: Iterable[dict[str, Any]]) -> str:
    names = sorted(name for name in map(_catalog.model_name, models) if name)
    return ", ".join(names) if names else "(the catalog could not be read)"
