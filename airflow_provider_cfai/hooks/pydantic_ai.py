"""Workers AI (with a finetune) as a model for Airflow's common-ai provider: connection type ``pydanticai_cloudflare``.

``@task.llm(llm_conn_id=..., output_type=...)``, ``LLMOperator`` and ``AgentOperator`` resolve their
model through ``PydanticAIHook.get_hook``, which finds this subclass by the connection's type. Needs
the ``common-ai`` extra (``pip install 'airflow-provider-cfai[common-ai]'``, Python 3.11+).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.exceptions import CloudflareConfigError

try:
    from airflow.providers.common.ai.hooks.pydantic_ai import PydanticAIHook
except ImportError as error:  # pragma: no cover - exercised in a venv without the extra
    from airflow.exceptions import AirflowOptionalProviderFeatureException

    raise AirflowOptionalProviderFeatureException(
        "Connection type 'pydanticai_cloudflare' needs Airflow's common-ai provider: install it with "
        f"pip install 'airflow-provider-cfai[common-ai]' (Python 3.11+). ({error})"
    ) from error

if TYPE_CHECKING:
    from pydantic_ai.models import Model

    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

__all__ = ["CloudflarePydanticAIHook"]

_CONN_TYPE = "pydanticai_cloudflare"


class CloudflarePydanticAIHook(PydanticAIHook):  # type: ignore[misc]
    """A Workers AI model, optionally with a finetune (LoRA), for common-ai's LLM operators and agents.

    The connection is the provider's own (login = account ID, password = API token, host = API base
    URL; the same transport extras) plus extra ``model``, the default ``@cf/...`` model, and extra
    ``lora``, the default finetune ID or name. ``model_id`` on the hook (``model_id=`` on
    ``@task.llm`` / ``LLMOperator``) overrides ``model``. Requests go to ``/ai/run/{model}`` through
    :class:`~airflow_provider_cfai.hooks.cloudflare_ai.CloudflareAIHook`, with its retries, pacing and
    secret masking. Structured output (``output_type=`` a pydantic model) is prompted, since these
    models have no native tool calling here: see
    :mod:`airflow_provider_cfai.hooks._workers_ai_model`.

    :param llm_conn_id: the Airflow connection (type ``pydanticai_cloudflare``).
    :param model_id: a Workers AI model name overriding the connection's extra ``model``.
    :param lora: a finetune ID or name overriding the connection's extra ``lora``; ``""`` runs the
        base model even when the connection names a finetune.
    """

    conn_type = _CONN_TYPE
    default_conn_name = "pydanticai_cloudflare_default"
    hook_name = "Pydantic AI (Cloudflare Workers AI)"
    model_provider = "cloudflare"

    def __init__(
        self,
        llm_conn_id: str | None = None,
        model_id: str | None = None,
        fallback_conn_ids: list[str] | None = None,
        *,
        lora: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(llm_conn_id=llm_conn_id, model_id=model_id, fallback_conn_ids=fallback_conn_ids, **kwargs)
        self.lora = lora

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel and hide the standard connection fields (Airflow 3.1; 3.2+ reads provider info)."""
        from airflow_provider_cfai import PYDANTIC_AI_CONNECTION_FORM

        behaviour = PYDANTIC_AI_CONNECTION_FORM["ui-field-behaviour"]
        return {
            "hidden_fields": list(behaviour["hidden-fields"]),
            "relabeling": dict(behaviour["relabeling"]),
            "placeholders": dict(behaviour["placeholders"]),
        }

    @cached_property
    def cloudflare_hook(self) -> CloudflareAIHook:
        """The provider's hook on the same connection: it reads and checks the credentials."""
        from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

        hook = CloudflareAIHook(cloudflare_conn_id=self.llm_conn_id)
        hook.conn_type = self.conn_type  # its messages then name this connection's type
        return hook

    def test_connection(self) -> tuple[bool, str]:
        """Resolve the model, then check the token and account read-only (no inference is run)."""
        resolved, message = super().test_connection()
        if not resolved:
            return resolved, message
        return self.cloudflare_hook.test_connection()

    def _resolve_own_model(
        self,
        *,
        forwarded_model_id: str | None = None,
        forwarded_from_conn_id: str | None = None,
        forwarded_model_provider: str | None = None,
    ) -> Model:
        # common-ai's get_conn() builds the primary's model, and each fallback's, through this method;
        # overriding it (rather than get_conn) keeps its fallback chains working across connection types.
        from airflow_provider_cfai.hooks._workers_ai_model import WorkersAIModel

        _, extra = self._get_conn_and_extra()
        name = self._get_configured_model_name()
        if not name:
            # As a fallback without a model of its own, the primary's model name (checked below) applies.
            name = forwarded_model_id
        name = _workers_ai_name(self.llm_conn_id, name)
        lora = self.lora if self.lora is not None else extra.get("lora")
        if lora is not None and not isinstance(lora, str):
            raise CloudflareConfigError(
                f"Connection {self.llm_conn_id!r}: extra 'lora' must be a finetune ID or name, got {lora!r}."
            )
        return WorkersAIModel(self.cloudflare_hook, name, lora=(lora or "").strip() or None)


def _workers_ai_name(conn_id: str, name: str | None) -> str:
    """The model name without pydantic-ai's ``cloudflare:`` prefix, checked to be a Workers AI name."""
    name = (name or "").strip().removeprefix("cloudflare:")
    if not name:
        raise CloudflareConfigError(
            f"Connection {conn_id!r} names no model: set its extra 'model' (e.g. "
            '{"model": "@cf/mistral/mistral-7b-instruct-v0.2-lora"}) or pass model_id.'
        )
    if not name.startswith("@"):
        raise CloudflareConfigError(
            f"Connection {conn_id!r}: model {name!r} is not a Workers AI model name; use one such as "
            "@cf/mistral/mistral-7b-instruct-v0.2-lora (the model the finetune was made for)."
        )
    return name
