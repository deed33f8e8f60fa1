"""Operators that register Workers AI finetunes and upload their LoRA adapters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.exceptions import CloudflareAPIError, FinetuneConflictError
from airflow_provider_cfai.links import CloudflareWorkersAILink
from airflow_provider_cfai.operators._common import CloudflareAIBaseOperator, as_bool, check_choice, check_text

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from airflow_provider_cfai.adapters import AdapterSource

IF_EXISTS_CHOICES = ("reuse", "fail")


class CreateFinetuneOperator(CloudflareAIBaseOperator):
    """Register a finetune on Cloudflare Workers AI and, optionally, upload its LoRA adapter.

    Returns the finetune ID, so it lands in XCom as ``return_value``. With ``if_exists="reuse"``
    (the default) a finetune that already has this name and model is reused instead of created,
    so task retries and DAG re-runs converge on one finetune; ``"fail"`` refuses an existing name.
    A finetune with this name but another base model is an error either way. With ``adapter``,
    the folder is validated before any API call and both files are uploaded after the create;
    re-running the task re-uploads them, so a half-finished upload is completed, not orphaned.

    :param model: the LoRA-capable base model, e.g. ``@cf/mistral/mistral-7b-instruct-v0.2-lora``.
    :param finetune_name: the finetune's name (unique per account for this operator's purposes).
    :param description: an optional description.
    :param public: make the finetune public (default ``False``).
    :param adapter: an adapter folder (local path, fsspec URL or ``ObjectStoragePath``) holding
        ``adapter_config.json`` and ``adapter_model.safetensors``.
    :param if_exists: ``"reuse"`` or ``"fail"`` when a finetune with this name exists.
    :param account_id: overrides the connection's account ID.
    :param cloudflare_conn_id: the ``cloudflare_ai`` connection to use.
    """

    template_fields: Sequence[str] = (
        "model",
        "finetune_name",
        "description",
        "public",
        "adapter",
        "if_exists",
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_text("model", model)
        check_text("finetune_name", finetune_name)
        check_choice("if_exists", if_exists, IF_EXISTS_CHOICES)
        self.model = model
        self.finetune_name = finetune_name
        self.description = description
        self.public = public
        self.adapter = adapter
        self.if_exists = if_exists

    def execute(self, context: Context) -> str:
        from airflow_provider_cfai.adapters import load_adapter

        check_text("model", self.model)
        check_text("finetune_name", self.finetune_name)
        check_choice("if_exists", self.if_exists, IF_EXISTS_CHOICES)
        model, name = self.model.strip(), self.finetune_name.strip()
        adapter = load_adapter(self.adapter) if self.adapter is not None else None

        existing = self.hook.find_finetune(name, account_id=self.account_id)
        if existing is not None and existing.get("name") == name:
            if existing.get("model") != model:
                raise FinetuneConflictError(
                    f"Finetune {name!r} already exists with model {existing.get('model')!r}, not {model!r}; "
                    "finetunes cannot be deleted, so choose another finetune_name."
                )
            if self.if_exists == "fail":
                raise FinetuneConflictError(
                    f"Finetune {name!r} already exists ({existing['id']}) and if_exists='fail'; "
                    "use if_exists='reuse' to adopt it."
                )
            finetune, verb = existing, "Reusing"
        else:
            finetune, verb = (
                self.hook.create_finetune(
                    model,
                    name,
                    description=self.description,
                    public=as_bool("public", self.public),
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
        CloudflareWorkersAILink.persist(context, self.account_id or self.hook.settings.account_id)
        return finetune_id


class UploadFinetuneAssetsOperator(CloudflareAIBaseOperator):
    """Upload a LoRA adapter's two files to an existing finetune.

    The folder is validated before anything is sent. Returns the finetune ID (XCom
    ``return_value``) so the next task can use it. Re-running is safe: Cloudflare keeps one file per
    name.

    :param finetune_id: the finetune's ID or name, e.g. ``"{{ ti.xcom_pull('create') }}"``.
    :param adapter: an adapter folder (local path, fsspec URL or ``ObjectStoragePath``).
    :param account_id: overrides the connection's account ID.
    :param cloudflare_conn_id: the ``cloudflare_ai`` connection to use.
    """

    template_fields: Sequence[str] = ("finetune_id", "adapter", "account_id", "cloudflare_conn_id")

    def __init__(
        self,
        *,
        finetune_id: str,
        adapter: AdapterSource,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_text("finetune_id", finetune_id)
        self.finetune_id = finetune_id
        self.adapter = adapter

    def execute(self, context: Context) -> str:
        check_text("finetune_id", self.finetune_id)
        finetune_id = self.finetune_id.strip()
        adapter = self.hook.upload_adapter(finetune_id, self.adapter, account_id=self.account_id)
        self.log.info("Uploaded adapter %s to finetune %s", adapter.location, finetune_id)
        return finetune_id
