"""Operators that point production traffic at a finetune, and back.

Production traffic is a Worker calling ``env.AI.run(model, {messages, lora})``; the ``lora`` it
passes is read at run time from a Workers KV key (the *serving pointer*), e.g.
``await env.LORA.get("support-bot")``. Promoting writes the finetune's ID there, together with
metadata recording what was live before, so a rollback is one task. Workers at other locations see
a change within about 60 seconds (KV is eventually consistent).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.assets import PROMOTIONS_ALIAS
from airflow_provider_cfai.exceptions import (
    CloudflareAuthError,
    CloudflareInputError,
    CloudflarePermanentAPIError,
    PromotionCheckError,
)
from airflow_provider_cfai.operators._common import CloudflareAIBaseOperator, check_text, is_template

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from airflow.sdk import AssetAlias, Context


__all__ = ["PromoteFinetuneOperator", "RollbackFinetuneOperator"]

#: Seconds until every Cloudflare location serves a new KV value (Cloudflare's documented bound).
EDGE_PROPAGATION_SECONDS = 60
DEFAULT_CANARY_INPUTS: dict[str, Any] = {"prompt": "Canary check before a promotion: reply with OK."}
_KV_READ = "Workers KV Storage Read (or Write)"
_KV_WRITE = "Workers KV Storage Write"
_AI = "Workers AI Read (or Write)"


class _PointerOperator(CloudflareAIBaseOperator):
    """What promote and rollback share: the pointer's arguments, its checks, the write and its event.

    :param namespace_id: the Workers KV namespace ID the Worker's binding (e.g. ``LORA``) points at.
        (templated)
    :param key: the KV key the Worker reads, e.g. ``"support-bot"``. (templated)
    :param canary_inputs: the model input of the canary inference run with the finetune before the
        pointer changes, e.g. ``{"messages": [...]}``; default a one-line prompt. (templated)
    :param asset_alias: the ``AssetAlias`` (or its name) the pointer's asset event goes through; it
        joins the task's ``outlets``. Default ``"cloudflare-workers-ai-promotions"``; ``None``: no event.
    :param account_id: overrides the connection's account ID. (templated)
    :param cloudflare_conn_id: the ``cloudflare_ai`` connection to use. (templated)
    """

    def __init__(
        self,
        *,
        namespace_id: str,
        key: str,
        canary_inputs: Mapping[str, Any] | None = None,
        asset_alias: str | AssetAlias | None = PROMOTIONS_ALIAS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.asset_alias = _checked_alias(asset_alias)
        if self.asset_alias is not None and self.asset_alias not in self.outlets:
            # Needed in the outlets when the DAG is parsed, not only at run time.
            self.add_outlets([self.asset_alias])
        check_text("namespace_id", namespace_id)
        check_text("key", key)
        self.namespace_id = namespace_id
        self.key = key
        self.canary_inputs = canary_inputs

    def _account_id(self) -> str:
        return (self.account_id or "").strip() or self.hook.settings.account_id

    def _read_pointer(self) -> tuple[str | None, dict[str, Any] | None]:
        """The pointer's value and metadata, after checking that its namespace exists."""
        hook, namespace_id, key, account = self.hook, self.namespace_id.strip(), self.key.strip(), self.account_id
        try:
            namespaces = hook.list_kv_namespaces(account_id=account)
            if namespace_id not in {str(ns.get("id")) for ns in namespaces}:
                raise PromotionCheckError(
                    f"Workers KV namespace {namespace_id!r} does not exist in account {self._account_id()}: create "
                    "it (`wrangler kv namespace create LORA`, or POST /accounts/{account_id}/storage/kv/namespaces), "
                    "bind it to your Worker, and pass its ID as namespace_id"
                )
            value = hook.read_kv_value(namespace_id, key, account_id=account)
            metadata = hook.read_kv_metadata(namespace_id, key, account_id=account)
        except CloudflareAuthError as error:
            raise _permission_error(error, _KV_READ, f"Reading the pointer {namespace_id}/{key}") from None
        current = value.decode("utf-8").strip() if value is not None else None
        return current or None, metadata if isinstance(metadata, dict) else None

    def _canary(self, model: str, finetune: Mapping[str, Any]) -> None:
        """One inference with the finetune: what the Worker is about to do, tried first."""
        inputs = self.canary_inputs if self.canary_inputs is not None else DEFAULT_CANARY_INPUTS
        label = f"{finetune.get('name')} ({finetune['id']})"
        try:
            self.hook.run_model(model, inputs, lora=str(finetune["id"]), account_id=self.account_id)
        except CloudflareAuthError as error:
            raise _permission_error(error, _AI, "The canary inference") from None
        except CloudflarePermanentAPIError as error:
            if 3039 in error.codes:
                raise PromotionCheckError(
                    f"Finetune {label} is missing its adapter files ({error}): upload adapter_config.json and "
                    "adapter_model.safetensors (UploadFinetuneAssetsOperator), then promote it again; "
                    "the pointer was not changed"
                ) from None
            raise PromotionCheckError(
                f"The canary inference with finetune {label} on {model} failed ({error}), as the Worker's "
                "would; the pointer was not changed"
            ) from None
        except CloudflareInputError as error:
            raise PromotionCheckError(f"canary_inputs: {error}") from None
        self.log.info("Canary inference with finetune %s on %s succeeded", label, model)

    def _write(self, context: Context, value: str, metadata: dict[str, Any], event: dict[str, Any]) -> None:
        namespace_id, key = self.namespace_id.strip(), self.key.strip()
        ti = context.get("ti")
        metadata.update(
            {
                "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "dag_id": getattr(ti, "dag_id", None),
                "run_id": getattr(ti, "run_id", None) or context.get("run_id"),
            }
        )
        try:
            self.hook.write_kv_value(namespace_id, key, value, metadata=metadata, account_id=self.account_id)
        except CloudflareAuthError as error:
            raise _permission_error(error, _KV_WRITE, f"Writing the pointer {namespace_id}/{key}") from None
        except CloudflareInputError as error:
            raise PromotionCheckError(f"{error}; the pointer was not changed") from None
        self.log.info(
            "Workers at other Cloudflare locations see %s/%s = %s within about %d s (KV is eventually consistent)",
            namespace_id,
            key,
            value,
            EDGE_PROPAGATION_SECONDS,
        )
        if self.asset_alias is not None:
            from airflow_provider_cfai.assets import add_promotion_event

            extra = {"account_id": self._account_id(), "namespace_id": namespace_id, "key": key, **event}
            asset = add_promotion_event(context, self.asset_alias, extra)
            if asset is not None:
                self.log.info("Asset event for %s through alias %s", asset.uri, self.asset_alias.name)

    def _find_finetune(self, ref: str) -> dict[str, Any]:
        try:
            finetune = self.hook.find_finetune(ref, account_id=self.account_id)
        except CloudflareAuthError as error:
            raise _permission_error(error, _AI, "Listing the account's finetunes") from None
        if finetune is None:
            raise PromotionCheckError(
                f"Finetune {ref!r} does not exist in account {self._account_id()}: create it and upload its "
                "adapter (CreateFinetuneOperator with adapter=...), then promote its ID or name"
            )
        return finetune


class PromoteFinetuneOperator(_PointerOperator):
    """Point production traffic at a finetune: write its ID to the Workers KV key the Worker reads.

    Before anything is written the task checks that the pointer's namespace exists, that the finetune
    exists in the account and was made for the model the pointer serves (the pointer's metadata
    ``model``, or ``model``), and that a canary inference with it succeeds (a finetune whose files
    never uploaded fails here, not in production). Every failed check fails the task without retries
    and leaves the pointer as it was. Promoting the finetune that is already live writes nothing.

    The value (the finetune ID) and its metadata change in one write; the metadata records what
    rollback needs: ``previous`` (the value before), ``model``, ``finetune_name``, ``at``, ``dag_id``
    and ``run_id``. Returns the previous value (``None`` for an empty pointer) as XCom; a promotion
    is an asset event of the pointer (:func:`~airflow_provider_cfai.assets.pointer_uri`) with the
    finetune in ``extra``. Workers everywhere see the change within about 60 s. When the finetune is
    already live, the task returns the metadata's ``previous`` (a retry after a write that landed
    returns what the first attempt would have).

    :param finetune: the finetune's ID or name. (templated)
    :param model: the model the Worker runs; needed when the pointer has no metadata yet (its first
        promotion), and must match the metadata otherwise. (templated)
    :param namespace_id: the Workers KV namespace ID the Worker's binding (e.g. ``LORA``) points at.
        (templated)
    :param key: the KV key the Worker reads, e.g. ``"support-bot"``. (templated)
    :param canary_inputs: the model input of the canary inference run with the finetune before the
        pointer changes, e.g. ``{"messages": [...]}``; default a one-line prompt. (templated)
    :param asset_alias: the ``AssetAlias`` (or its name) the pointer's asset event goes through; it
        joins the task's ``outlets``. Default ``"cloudflare-workers-ai-promotions"``; ``None``: no event.
    :param account_id: overrides the connection's account ID. (templated)
    :param cloudflare_conn_id: the ``cloudflare_ai`` connection to use. (templated)
    """

    template_fields: Sequence[str] = (
        "finetune",
        "namespace_id",
        "key",
        "model",
        "canary_inputs",
        "account_id",
        "cloudflare_conn_id",
    )

    def __init__(self, *, finetune: str, model: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_text("finetune", finetune)
        check_text("model", model, optional=True)
        self.finetune = finetune
        self.model = model

    def execute(self, context: Context) -> str | None:
        for field in ("finetune", "namespace_id", "key"):
            check_text(field, getattr(self, field))
        check_text("model", self.model, optional=True)
        current, metadata = self._read_pointer()
        finetune = self._find_finetune(self.finetune.strip())
        model = _serving_model(self.model, metadata, finetune, self.key.strip())
        finetune_id, name = str(finetune["id"]), str(finetune.get("name", ""))
        if current in (finetune_id, name):
            self.log.info("Finetune %s (%s) is already live on %s; nothing written", name, finetune_id, self.key)
            # A retry after a write that landed, too: what was live before comes from the metadata.
            return metadata["previous"] if metadata and "previous" in metadata else current
        self._canary(model, finetune)
        event = {"finetune_id": finetune_id, "finetune_name": name, "model": model, "previous": current}
        self._write(
            context,
            finetune_id,
            {"action": "promote", "previous": current, "model": model, "finetune_name": name},
            {"action": "promote", **event},
        )
        self.log.info("Promoted finetune %s (%s) on %s; previously %s", name, finetune_id, self.key, current)
        return current


class RollbackFinetuneOperator(_PointerOperator):
    """Point production traffic back at the finetune that was live before the last change.

    Reads ``previous`` from the pointer's metadata (written by :class:`PromoteFinetuneOperator` or by
    an earlier rollback), checks it with a canary inference, and writes it back with metadata of its
    own (``previous`` = the value rolled back from), so a rollback can itself be rolled back. Refuses,
    leaving the pointer as it is, when the pointer has no history (no metadata with ``previous``, or
    nothing was live before the first promotion). Returns the value it replaced as XCom and emits the
    pointer's asset event.

    :param namespace_id: the Workers KV namespace ID the Worker's binding (e.g. ``LORA``) points at.
        (templated)
    :param key: the KV key the Worker reads, e.g. ``"support-bot"``. (templated)
    :param canary_inputs: the model input of the canary inference run with the finetune before the
        pointer changes, e.g. ``{"messages": [...]}``; default a one-line prompt. (templated)
    :param asset_alias: the ``AssetAlias`` (or its name) the pointer's asset event goes through; it
        joins the task's ``outlets``. Default ``"cloudflare-workers-ai-promotions"``; ``None``: no event.
    :param account_id: overrides the connection's account ID. (templated)
    :param cloudflare_conn_id: the ``cloudflare_ai`` connection to use. (templated)
    """

    template_fields: Sequence[str] = ("namespace_id", "key", "canary_inputs", "account_id", "cloudflare_conn_id")

    def execute(self, context: Context) -> str | None:
        check_text("namespace_id", self.namespace_id)
        check_text("key", self.key)
        namespace_id, key = self.namespace_id.strip(), self.key.strip()
        current, metadata = self._read_pointer()
        if metadata is None or "previous" not in metadata:
            raise PromotionCheckError(
                f"Pointer {namespace_id}/{key} has no history to roll back to ("
                + ("it is not set" if current is None else "its metadata records no 'previous' value")
                + "): only a value written by PromoteFinetuneOperator can be rolled back; promote the finetune "
                "you want instead"
            )
        previous, model = metadata["previous"], metadata.get("model")
        if not isinstance(previous, str) or not previous.strip():
            raise PromotionCheckError(
                f"Pointer {namespace_id}/{key} was empty before {current} was promoted, so there is nothing to "
                "roll back to; promote the finetune you want instead"
            )
        if not isinstance(model, str) or not model:
            raise PromotionCheckError(f"Pointer {namespace_id}/{key}'s metadata names no 'model'; promote instead")
        finetune = self._find_finetune(previous)
        self._canary(model, finetune)
        name = str(finetune.get("name", ""))
        event = {"finetune_id": previous, "finetune_name": name, "model": model, "previous": current}
        self._write(
            context,
            previous,
            {"action": "rollback", "previous": current, "model": model, "finetune_name": name},
            {"action": "rollback", **event},
        )
        self.log.info("Rolled %s back from %s to finetune %s (%s)", key, current, name, previous)
        return current


def _serving_model(
    wanted: str | None, metadata: Mapping[str, Any] | None, finetune: Mapping[str, Any], key: str
) -> str:
    """The model the pointer serves; the finetune must have been made for it."""
    served = metadata.get("model") if metadata else None
    wanted = wanted.strip() if wanted else None
    if wanted and isinstance(served, str) and served and wanted != served:
        raise PromotionCheckError(
            f"model={wanted!r}, but the pointer {key!r} serves {served} (its metadata): the Worker runs {served}. "
            f"Promote a finetune of {served}, or serve {wanted} from a new key"
        )
    expected = wanted or (served if isinstance(served, str) and served else None)
    if expected is None:
        raise PromotionCheckError(
            f"The pointer {key!r} has no metadata naming its model yet: pass model=<the model the Worker runs> "
            "to the first promotion"
        )
    if finetune.get("model") != expected:
        raise PromotionCheckError(
            f"Finetune {finetune.get('name')} ({finetune.get('id')}) was made for {finetune.get('model')}, but the "
            f"pointer {key!r} serves {expected}: promote a finetune of {expected}; the pointer was not changed"
        )
    return expected


def _permission_error(error: CloudflareAuthError, permission: str, doing: str) -> Exception:
    """A 403 becomes a message naming the permission the token lacks; a 401 (bad token) stays as it is."""
    from airflow_provider_cfai.policy import missing_permission

    if not missing_permission(error):
        return error
    return PromotionCheckError(
        f"{doing} was refused ({error}): the API token needs the permission '{permission}'; add it to the "
        "token (Cloudflare dashboard > My Profile > API Tokens) and run the task again; the pointer was not changed"
    )


def _checked_alias(alias: Any) -> AssetAlias | None:
    from airflow.sdk import AssetAlias

    if alias is None or isinstance(alias, AssetAlias):
        return alias
    if isinstance(alias, str) and alias.strip() and not is_template(alias):
        return AssetAlias(alias.strip())
    raise CloudflareInputError(
        f"asset_alias must be an AssetAlias, an alias name or None (no asset events), got {alias!r}"
    )
