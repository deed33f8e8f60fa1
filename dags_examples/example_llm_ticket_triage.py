"""Triage support tickets into a pydantic model with common-ai's ``@task.llm`` on a finetune.

The DAG first registers a LoRA finetune (``CreateFinetuneOperator`` with its adapter), then classifies
tickets with ``@task.llm`` and ``LLMOperator`` through the connection ``support_bot`` of type
``pydanticai_cloudflare``, whose extras name the base model and the finetune::

    airflow connections add support_bot --conn-type pydanticai_cloudflare \\
        --conn-login <account id> --conn-password <api token> \\
        --conn-extra '{"model": "@cf/mistral/mistral-7b-instruct-v0.2-lora", "lora": "support-triage"}'

Each answer is validated against ``Ticket`` (prompted structured output: these models have no native
tool calling) and returned to XCom as a ``Ticket``. Needs ``airflow-provider-cfai[common-ai]``; to read
a ``Ticket`` back from XCom outside the task (``airflow dags test``), allow the class with
``AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP``.
"""

from __future__ import annotations

import tempfile
from typing import Literal

import pendulum
from airflow.providers.common.ai.operators.llm import LLMOperator
from airflow.sdk import dag, task
from pydantic import BaseModel

from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator

BASE_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
FINETUNE = "support-triage"  # the connection's extra "lora" names it
LLM_CONN_ID = "support_bot"
INSTRUCTIONS = "You triage customer support tickets. Pick the category, say whether it is urgent, summarise it."


class Ticket(BaseModel):
    """One triaged ticket (module level, so XCom can deserialize it)."""

    category: Literal["billing", "bug", "account", "other"]
    urgent: bool
    summary: str


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["cloudflare", "example", "common-ai"],
)
def example_llm_ticket_triage() -> None:
    @task
    def train_adapter() -> str:
        """Stands in for a training step: writes a small, valid PEFT LoRA adapter folder."""
        from airflow_provider_cfai.adapter_factory import write_lora_adapter

        return str(write_lora_adapter(tempfile.mkdtemp(prefix="lora-triage-"), model_type="mistral", rank=8))

    register = CreateFinetuneOperator(
        task_id="register_finetune",
        model=BASE_MODEL,
        finetune_name=FINETUNE,
        adapter=train_adapter(),
    )

    # [START howto_llm_ticket_triage]
    @task.llm(llm_conn_id=LLM_CONN_ID, system_prompt=INSTRUCTIONS, output_type=Ticket)
    def triage(ticket: str) -> str:
        return f"Ticket: {ticket}"

    triaged = triage("I was charged twice for my billing plan this month, please refund one.")

    triage_outage = LLMOperator(
        task_id="triage_outage",
        llm_conn_id=LLM_CONN_ID,
        system_prompt=INSTRUCTIONS,
        prompt="Ticket: urgent - the export button shows a bug and crashes the app for our whole team.",
        output_type=Ticket,
    )
    # [END howto_llm_ticket_triage]

    @task
    def route(results: list[BaseModel | dict[str, object]]) -> list[str]:
        # A Ticket on Airflow 3.3 (of the DAG file's module as XCom imports it); a dict on Airflow 3.1.
        tickets = [Ticket.model_validate(r.model_dump() if isinstance(r, BaseModel) else r) for r in results]
        return [f"{t.category}{' (urgent)' if t.urgent else ''}: {t.summary}" for t in tickets]

    register >> [triaged, triage_outage]
    route([triaged, triage_outage.output])


example_llm_ticket_triage()
