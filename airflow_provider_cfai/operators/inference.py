"""Operator that runs a Workers AI model, optionally with a finetune (LoRA)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.exceptions import CloudflareInputError
from airflow_provider_cfai.operators._common import CloudflareAIBaseOperator, check_text, is_template

if TYPE_CHECKING:
    from airflow.sdk import Context


class WorkersAIRunOperator(CloudflareAIBaseOperator):
    """Run a Workers AI model and return its ``result`` (XCom ``return_value``).

    Typical use is a smoke test of a new finetune: ``lora`` takes the ID that
    ``CreateFinetuneOperator`` pushed, and the task fails if Cloudflare cannot serve it (unknown
    finetune, missing adapter files, a base model that does not take LoRAs).

    :param model: the model to run, e.g. ``@cf/mistral/mistral-7b-instruct-v0.2-lora``.
    :param inputs: the model's input as a mapping, e.g. ``{"prompt": "Hello", "raw": True}``.
    :param lora: a finetune ID or name to apply.
    :param account_id: overrides the connection's account ID.
    :param cloudflare_conn_id: the ``cloudflare_ai`` connection to use.
    """

    template_fields: Sequence[str] = ("model", "inputs", "lora", "account_id", "cloudflare_conn_id")

    def __init__(
        self,
        *,
        model: str,
        inputs: Mapping[str, Any],
        lora: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_text("model", model)
        _check_inputs(inputs)
        self.model = model
        self.inputs = inputs
        self.lora = lora

    def execute(self, context: Context) -> dict[str, Any]:
        check_text("model", self.model)
        _check_inputs(self.inputs, rendered=True)
        lora = self.lora.strip() if isinstance(self.lora, str) and self.lora.strip() else None
        result = self.hook.run_model(self.model.strip(), self.inputs, lora=lora, account_id=self.account_id)
        self.log.info("Ran %s%s: %d result key(s)", self.model, f" with finetune {lora}" if lora else "", len(result))
        return result


def _check_inputs(inputs: Any, *, rendered: bool = False) -> None:
    if not rendered and is_template(inputs):
        return  # a template or XComArg: checked again once rendered
    if not isinstance(inputs, Mapping):
        raise CloudflareInputError(f"inputs must be a mapping such as {{'prompt': '...'}}, got {type(inputs).__name__}")
