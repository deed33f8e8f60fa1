"""Operator that runs a Workers AI model, optionally with a finetune (LoRA)."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.exceptions import CloudflareInputError
from airflow_provider_cfai.operators._common import CloudflareAIBaseOperator, check_text, is_template

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_cfai.lineage import Lineage


class WorkersAIRunOperator(CloudflareAIBaseOperator):
    """Run a Workers AI model and return its ``result`` (XCom ``return_value``).

    Typical use is a smoke test of a new finetune: ``lora`` takes the ID that
    ``CreateFinetuneOperator`` pushed, and the task fails if Cloudflare cannot serve it (unknown
    finetune, missing adapter files, a base model that does not take LoRAs).

    :param model: the model to run, e.g. ``@cf/mistral/mistral-7b-instruct-v0.2-lora``. (templated)
    :param inputs: the model's input as a mapping, e.g. ``{"prompt": "Hello", "raw": True}``. (templated)
    :param lora: a finetune ID or name to apply (a non-empty string), or ``None`` for the base
        model; any other value is an error rather than a silent run of the base model. (templated)
    :param account_id: overrides the connection's account ID. (templated)
    :param cloudflare_conn_id: the ``cloudflare_ai`` connection to use. (templated)
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
        _check_inputs(self.task_id, inputs)
        _check_lora(self.task_id, lora)
        self.model = model
        self.inputs = inputs
        self.lora = lora

    def execute(self, context: Context) -> dict[str, Any]:
        check_text("model", self.model)
        _check_inputs(self.task_id, self.inputs, rendered=True)
        _check_lora(self.task_id, self.lora, rendered=True)
        lora = self.lora.strip() if self.lora is not None else None
        result = self.hook.run_model(self.model.strip(), self.inputs, lora=lora, account_id=self.account_id)
        self.log.info("Ran %s%s: %d result key(s)", self.model, f" with finetune {lora}" if lora else "", len(result))
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Lineage | None:
        """OpenLineage (with its provider installed): the model and the finetune applied, as inputs.

        A finetune given by ID costs one look-up of its name (short timeout, no retries).
        """
        from airflow_provider_cfai.lineage import inference_lineage

        return inference_lineage(
            conn_id=self.cloudflare_conn_id, account_id=self.account_id, model=self.model, lora=self.lora
        )


def _check_inputs(task_id: str, inputs: Any, *, rendered: bool = False) -> None:
    if not rendered and is_template(inputs):
        return  # a template or XComArg: checked again once rendered
    if not isinstance(inputs, Mapping):
        raise CloudflareInputError(
            f"Task {task_id!r}: inputs must be a mapping such as {{'prompt': '...'}} or "
            f"{{'messages': [...]}}, got {type(inputs).__name__} {reprlib.repr(inputs)}"
        )


def _check_lora(task_id: str, lora: Any, *, rendered: bool = False) -> None:
    if lora is None or (not rendered and is_template(lora)):
        return  # no finetune, or a template or XComArg: checked again once rendered
    if not isinstance(lora, str) or not lora.strip():
        # Anything else used to run the base model, so a smoke test passed without the finetune.
        raise CloudflareInputError(
            f"Task {task_id!r}: lora must be a finetune ID or name (a non-empty string) or None, got "
            f"{type(lora).__name__} {reprlib.repr(lora)}; pass the ID CreateFinetuneOperator returned, "
            "e.g. lora=create.output, or leave lora out to run the base model"
        )
