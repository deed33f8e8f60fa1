"""Ship a finetune: evaluate it against the one in production, ask a person, then promote it.

Production traffic is a Worker that reads the finetune to use from a Workers KV key (the *serving
pointer*) at every request::

    const lora = await env.LORA.get("support-bot");
    const answer = await env.AI.run(MODEL, { messages, lora });

This DAG registers the week's finetune with its adapter, runs the same evaluation prompts through
it and through the finetune that is live now (``WorkersAIBatchOperator``, the base model while the
pointer is empty), and scores both. If the new one scores at least as well, an ``ApprovalOperator``
waits for a person (Airflow's "Required actions" page, or the REST API), and
``PromoteFinetuneOperator`` then writes the new finetune's ID to the pointer, after a canary
inference, recording what was live before. Otherwise the live finetune stays. To undo a promotion,
trigger ``example_rollback_finetune``.

Trigger it with ``{"finetune_name": "..."}`` as the run's conf to choose the finetune's name
(default ``acme-support-<date>``). Needs Airflow 3.1+ (``ApprovalOperator``); ``make demo`` runs it
against the local emulator and approves with ``--mark-success-pattern approve_promotion``.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task

from airflow_provider_cfai.operators.batch import WorkersAIBatchOperator
from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator
from airflow_provider_cfai.operators.promote import PromoteFinetuneOperator

BASE_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
EVAL_PROMPTS = str(Path(__file__).parent / "data" / "eval_prompts.jsonl")
EVAL_DIR = os.environ.get("CFAI_EVAL_DIR") or os.path.join(tempfile.gettempdir(), "cfai-eval")
#: The Workers KV namespace (bound to the Worker as ``LORA``) and the key the Worker reads.
NAMESPACE_TITLE = "support-bot-serving"
POINTER_KEY = "support-bot"
#: The finetune is trained to answer as the brand's support desk; the score looks for that voice.
BRAND = "acme"


@task
def serving_namespace() -> str:
    """The ID of the KV namespace holding the pointer (made once here; in production, pass your own ID)."""
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    hook = CloudflareAIHook()
    for namespace in hook.list_kv_namespaces():
        if namespace.get("title") == NAMESPACE_TITLE:
            return str(namespace["id"])
    return str(hook.create_kv_namespace(NAMESPACE_TITLE)["id"])


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"finetune_name": Param("", type="string", description="name of the new finetune (default: by date)")},
    tags=["cloudflare", "example", "lora", "promotion"],
)
def example_promote_finetune() -> None:
    @task
    def train_adapter() -> str:
        """Stands in for the week's training step: writes a small, valid PEFT LoRA adapter folder."""
        from airflow_provider_cfai.adapter_factory import write_lora_adapter

        return str(write_lora_adapter(tempfile.mkdtemp(prefix="lora-adapter-"), model_type="mistral", rank=8))

    namespace_id = serving_namespace()
    register = CreateFinetuneOperator(
        task_id="register_finetune",
        model=BASE_MODEL,
        finetune_name=f"{{{{ params.finetune_name or '{BRAND}-support-' ~ ds_nodash }}}}",
        adapter=train_adapter(),
    )

    @task
    def live_finetune(namespace_id: str) -> str | None:
        """The finetune the Worker serves now (``None`` while the pointer is empty: the base model)."""
        from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

        value = CloudflareAIHook().read_kv_value(namespace_id, POINTER_KEY)
        return value.decode() if value else None

    live = live_finetune(namespace_id)

    # [START howto_promote_finetune]
    evaluate_new = WorkersAIBatchOperator(
        task_id="evaluate_new",
        model=BASE_MODEL,
        lora=register.output,
        inputs=EVAL_PROMPTS,
        output=EVAL_DIR + "/{{ run_id }}/new.jsonl",
        execution_timeout=timedelta(hours=1),
    )
    evaluate_live = WorkersAIBatchOperator(
        task_id="evaluate_live",
        model=BASE_MODEL,
        lora=live,  # the same prompts through what production serves today
        inputs=EVAL_PROMPTS,
        output=EVAL_DIR + "/{{ run_id }}/live.jsonl",
        execution_timeout=timedelta(hours=1),
    )

    @task(multiple_outputs=False)
    def score(new: dict[str, Any], live: dict[str, Any]) -> dict[str, float]:
        from airflow_provider_cfai.batch.records import iter_outputs

        def brand_voice(output: str) -> float:
            # A stand-in metric: the share of answers in the brand's voice. Swap in your own.
            records = list(iter_outputs(output))
            hits = sum(1 for r in records if r["success"] and BRAND in str(r["result"].get("response", "")).lower())
            return hits / len(records) if records else 0.0

        return {"new": brand_voice(new["output"]), "live": brand_voice(live["output"])}

    @task.branch
    def compare(scores: dict[str, float]) -> str:
        print(f"new finetune {scores['new']:.2f} vs live {scores['live']:.2f}")
        return "approve_promotion" if scores["new"] >= scores["live"] else "keep_live"

    approve_promotion = ApprovalOperator(
        task_id="approve_promotion",
        subject="Promote {{ ti.xcom_pull('register_finetune') }} to production?",
        body="Evaluation scores: {{ ti.xcom_pull('score') }}. Approve to point the Worker at the new finetune.",
        response_timeout=timedelta(days=2),
    )
    promote = PromoteFinetuneOperator(
        task_id="promote",
        finetune=register.output,
        namespace_id=namespace_id,
        key=POINTER_KEY,
        model=BASE_MODEL,
    )
    compare(score(evaluate_new.output, evaluate_live.output)) >> [approve_promotion, EmptyOperator(task_id="keep_live")]
    approve_promotion >> promote
    # [END howto_promote_finetune]


example_promote_finetune()
