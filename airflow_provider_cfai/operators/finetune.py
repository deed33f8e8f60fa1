"""Operators that register Workers AI finetunes and upload their LoRA adapters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_cfai._numbers import whole_number
from airflow_provider_cfai.assets import FINETUNES_ALIAS
from airflow_provider_cfai.exceptions import CloudflareAPIError, CloudflareInputError, FinetuneConflictError
from airflow_provider_cfai.links import CloudflareWorkersAILink
from airflow_provider_cfai.operators._common import (
    CloudflareAIBaseOperator,
    check_choice,
    check_flag,
    check_text,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import AssetAlias, Context

    from airflow_provider_cfai.adapters import AdapterSource, LoraAdapter
    from airflow_provider_cfai.lineage import Lineage

IF_EXISTS_CHOICES = ("reuse", "fail")
MODEL_TYPES = ("mistral", "gemma", "llama")


class CreateFinetuneOperator(CloudflareAIBaseOperator):
    """Register a finetune on Cloudflare Workers AI and, optionally, upload its LoRA adapter.

    Returns the finetune ID (XCom ``return_value``). Idempotent: with ``if_exists="reuse"`` a
    finetune that already has this name and model is reused, so retries and re-runs converge on one
    finetune, and its adapter is uploaded again, so a half-finished upload is completed. A finetune
    can never be deleted, so the adapter folder is validated before any API call and, unless
    ``preflight=False``, a create is refused (without retries) when the model is not a LoRA-capable
    model of the account's catalog, the adapter is of another family, or the account is full; a
    catalog that cannot be read is only a warning.

    :param model: the LoRA-capable base model, e.g. ``@cf/mistral/mistral-7b-instruct-v0.2-lora``.
        (templated)
    :param finetune_name: the finetune's name (unique per account for this operator's purposes). (templated)
    :param description: an optional description. (templated)
    :param public: make the finetune public (default ``False``).
    :param adapter: an adapter folder (local path, fsspec URL or ``ObjectStoragePath``) holding
        ``adapter_config.json`` and ``adapter_model.safetensors``. (templated)
    :param if_exists: ``"reuse"`` (default) or ``"fail"`` when a finetune with this name exists; one
        with this name but another base model is an error either way.
    :param preflight: run the checks before a create (default ``True``); ``False`` skips them.
    :param max_finetunes: the account's finetune limit for the room check (default 100, Cloudflare's);
        a warning from 90 %.
    :param prepare_adapter: accept raw PEFT output: add the ``model_type`` PEFT does not write,
        inferred from ``base_model_name_or_path`` (see :func:`~airflow_provider_cfai.adapters.prepare_adapter`);
        the folder itself is not changed. Default ``False``.
    :param model_type: ``"mistral"``, ``"gemma"`` or ``"llama"`` for the adapter, instead of inferring
        it; implies ``prepare_adapter=True``. (templated)
    :param asset_alias: the ``AssetAlias`` (or its name) this task adds an asset event to once the
        finetune can serve: when it uploaded ``adapter`` (to a new or a reused finetune). A create
        without ``adapter`` emits nothing; :class:`UploadFinetuneAssetsOperator` emits the event
        after its upload. It joins the task's ``outlets``. Default ``"cloudflare-workers-ai-finetunes"``;
        ``None`` emits no events. See :mod:`airflow_provider_cfai.assets`.
    :param account_id: overrides the connection's account ID. (templated)
    :param cloudflare_conn_id: the ``cloudflare_ai`` connection to use. (templated)
    """

    template_fields: Sequence[str] = (
        "model",
        "finetune_name",
        "description",
        "adapter",
        "model_type",
        "account_id",
        "cloudflare_conn_id",
    )
    operator_extra_links = (CloudflareWorkersAILink(),)

    def __init__(
        self,
        *,
        model: str,
        finetune_name: str,
        description: str | None = None,
        public: bool = False,
        adapter: AdapterSource | None = None,
        if_exists: str = "reuse",
        preflight: bool = True,
        max_finetunes: int = 100,
        prepare_adapter: bool = False,
        model_type: str | None = None,
        asset_alias: str | AssetAlias | None = FINETUNES_ALIAS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Asset events need the alias among the outlets when the DAG is parsed, not only at run time.
        self.asset_alias = asset_alias
        self.add_outlets(self._alias_outlets())
        check_text("model", model)
        check_text("finetune_name", finetune_name)
        check_choice("if_exists", if_exists, IF_EXISTS_CHOICES, templated=False)
        if model_type is not None:
            if isinstance(model_type, str) and "qwen" in model_type.lower():
                from airflow_provider_cfai.adapters import unsupported_family_hint

                raise CloudflareInputError(
                    f"model_type must be one of {', '.join(map(repr, MODEL_TYPES))}, got {model_type!r}"
                    + unsupported_family_hint(model_type)
                )
            check_choice("model_type", model_type, MODEL_TYPES)
        limit = whole_number(max_finetunes, minimum=1)
        if limit is None:
            raise CloudflareInputError(f"max_finetunes must be a whole number >= 1, got {max_finetunes!r}")
        self.model = model
        self.finetune_name = finetune_name
        self.description = description
        self.public = check_flag("public", public)
        self.adapter = adapter
        self.if_exists = if_exists
        self.preflight = check_flag("preflight", preflight)
        self.max_finetunes = limit
        self.prepare_adapter = check_flag("prepare_adapter", prepare_adapter)
        self.model_type = model_type

    def execute(self, context: Context) -> str:
        from airflow_provider_cfai import preflight

        # First, so a task that fails below still shows the link (and Airflow logs no missing XCom).
        CloudflareWorkersAILink.persist(context, self.account_id or self.hook.settings.account_id)
        check_text("model", self.model)
        check_text("finetune_name", self.finetune_name)
        model, name = self.model.strip(), self.finetune_name.strip()
        adapter = self._read_adapter()
        if self.preflight:
            preflight.check_model(self.hook, model, adapter=adapter, account_id=self.account_id, log=self.log)

        finetunes = self.hook.list_finetunes(account_id=self.account_id)
        existing = _reusable(finetunes, name, model, if_exists=self.if_exists)
        if existing is not None:
            finetune, verb = existing, "Reusing"
        else:
            if self.preflight:  # reusing never takes a slot; only a new finetune needs room
                preflight.check_room(len(finetunes), limit=self.max_finetunes, name=name, log=self.log)
            finetune, verb = (
                self.hook.create_finetune(
                    model,
                    name,
                    description=self.description,
                    public=self.public,
                    account_id=self.account_id,
                ),
                "Created",
            )
        finetune_id = str(finetune["id"])
        self.log.info("%s finetune %s (%s) on %s", verb, finetune_id, name, model)

        if adapter is not None:
            try:
                self.hook.upload_adapter(finetune_id, adapter, account_id=self.account_id)
            except CloudflareAPIError as error:
                raise error.with_context(
                    f"Finetune {finetune_id} ({name}) exists but its adapter upload failed; re-run this "
                    "task (if_exists='reuse') to finish it"
                ) from error
            self.log.info("Uploaded adapter %s to finetune %s", adapter.location, finetune_id)
        self._add_finetune_event(context, finetune, created=verb == "Created", adapter=adapter)
        return finetune_id

    def _read_adapter(self) -> LoraAdapter | None:
        """The adapter folder, validated (and given its ``model_type`` if asked) before any API call."""
        from airflow_provider_cfai.adapters import load_adapter, prepare_adapter

        if self.adapter is None:
            return None
        check_text("model_type", self.model_type, optional=True)
        model_type = self.model_type.strip() if self.model_type else None
        if model_type or self.prepare_adapter:
            return prepare_adapter(self.adapter, model_type=model_type)
        return load_adapter(self.adapter)

    def _alias_outlets(self) -> list[AssetAlias]:
        return _alias_outlets(self)

    def _add_finetune_event(
        self, context: Context, finetune: dict[str, Any], *, created: bool, adapter: LoraAdapter | None
    ) -> None:
        """Record the finetune for lineage; add its asset event if this task created or uploaded to it."""
        from airflow_provider_cfai.assets import finetune_event_extra

        extra = finetune_event_extra(
            {"name": self.finetune_name.strip(), "model": self.model.strip(), **finetune},
            account_id=(self.account_id or "").strip() or self.hook.settings.account_id,
            created=created,
            adapter=adapter.location if adapter is not None else None,
        )
        self._finetune_record = extra
        if self.asset_alias is None or adapter is None:
            # Without its files a finetune cannot serve (3039): UploadFinetuneAssetsOperator sends the event.
            return
        _emit(self, context, extra)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Lineage | None:
        """OpenLineage (with its provider installed): the adapter folder in, the finetune out."""
        from airflow_provider_cfai.lineage import create_lineage

        return create_lineage(getattr(self, "_finetune_record", None))


def _reusable(finetunes: list[dict[str, Any]], name: str, model: str, *, if_exists: str) -> dict[str, Any] | None:
    """The finetune a create of ``name`` on ``model`` reuses, or ``None`` to create one.

    Raises :class:`FinetuneConflictError` for a finetune of this name on another model, or for any
    with ``if_exists="fail"``.
    """
    from airflow_provider_cfai.hooks._finetunes import oldest_named

    existing = oldest_named(finetunes, name)
    if existing is None:
        return None
    if existing.get("model") != model:
        raise FinetuneConflictError(
            f"Finetune {name!r} already exists with model {existing.get('model')!r}, not {model!r}; "
            "finetunes cannot be deleted, so choose another finetune_name."
        )
    if if_exists == "fail":
        raise FinetuneConflictError(
            f"Finetune {name!r} already exists ({existing['id']}) and if_exists='fail'; "
            "use if_exists='reuse' to adopt it."
        )
    return existing


class UploadFinetuneAssetsOperator(CloudflareAIBaseOperator):
    """Upload a LoRA adapter's two files to an existing finetune.

    The folder is validated before anything is sent, then ``finetune_id`` (an ID or a name) is
    looked up once: an unknown one fails the task before any upload. Returns the finetune's ID,
    also when given its name (XCom ``return_value``), so the next task can use it. Re-running is
    safe: both files are sent again; whether Cloudflare then replaces a file it holds is
    undocumented, and an HTTP 409 ("already uploaded") counts as done, keeping the file there.

    :param finetune_id: the finetune's ID or name, e.g. ``"{{ ti.xcom_pull('create') }}"``. (templated)
    :param adapter: an adapter folder (local path, fsspec URL or ``ObjectStoragePath``). (templated)
    :param asset_alias: the ``AssetAlias`` (or its name) this task adds the finetune's asset event to
        after the upload, when it can serve (as :class:`CreateFinetuneOperator`'s); ``None``: no event.
    :param account_id: overrides the connection's account ID. (templated)
    :param cloudflare_conn_id: the ``cloudflare_ai`` connection to use. (templated)
    """

    template_fields: Sequence[str] = ("finetune_id", "adapter", "account_id", "cloudflare_conn_id")

    def __init__(
        self,
        *,
        finetune_id: str,
        adapter: AdapterSource,
        asset_alias: str | AssetAlias | None = FINETUNES_ALIAS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.asset_alias = asset_alias
        self.add_outlets(_alias_outlets(self))
        check_text("finetune_id", finetune_id)
        self.finetune_id = finetune_id
        self.adapter = adapter

    def execute(self, context: Context) -> str:
        from airflow_provider_cfai.adapters import load_adapter

        check_text("finetune_id", self.finetune_id)
        wanted = self.finetune_id.strip()
        adapter = load_adapter(self.adapter)
        finetune = self.hook.find_finetune(wanted, account_id=self.account_id)
        if finetune is None:
            account = (self.account_id or "").strip() or self.hook.settings.account_id
            raise CloudflareInputError(
                f"finetune_id {wanted!r} is neither the ID nor the name of a finetune in account {account}; "
                "pass the ID CreateFinetuneOperator returned (or an existing finetune's name)"
            )
        finetune_id = str(finetune["id"])
        self._finetune_record = finetune  # lineage names it without a second look-up
        self.hook.upload_adapter(finetune_id, adapter, account_id=self.account_id)
        self.log.info("Uploaded adapter %s to finetune %s (%s)", adapter.location, finetune_id, wanted)
        if self.asset_alias is not None:
            from airflow_provider_cfai.assets import finetune_event_extra

            account = (self.account_id or "").strip() or self.hook.settings.account_id
            extra = finetune_event_extra(finetune, account_id=account, created=False, adapter=adapter.location)
            _emit(self, context, extra)  # the finetune can serve from now on
        return finetune_id

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Lineage | None:
        """OpenLineage (with its provider installed): the adapter folder in, the finetune out.

        Uses the finetune ``execute`` read; only if that is missing does an ID cost a look-up of its name.
        """
        from airflow_provider_cfai.lineage import upload_lineage

        return upload_lineage(
            conn_id=self.cloudflare_conn_id,
            account_id=self.account_id,
            finetune=self.finetune_id,
            adapter=self.adapter,
            record=getattr(self, "_finetune_record", None),
        )


# -- asset events (shared by both operators) ----------------------------------------------------------


def _alias_outlets(operator: Any) -> list[AssetAlias]:
    """The asset alias to add to ``outlets``: none when disabled or already there."""
    from airflow.sdk import AssetAlias

    alias = operator.asset_alias
    if alias is None:
        return []
    if isinstance(alias, str) and alias.strip():
        alias = operator.asset_alias = AssetAlias(alias.strip())
    if not isinstance(alias, AssetAlias):
        raise CloudflareInputError(
            f"asset_alias must be an AssetAlias, an alias name or None (no asset events), got {alias!r}"
        )
    return [] if alias in operator.outlets else [alias]


def _emit(operator: Any, context: Context, extra: dict[str, Any]) -> None:
    from airflow_provider_cfai.assets import add_finetune_event

    asset = add_finetune_event(context, operator.asset_alias, extra)
    if asset is not None:
        operator.log.info("Asset event for %s through alias %s", asset.uri, getattr(operator.asset_alias, "name", None))
