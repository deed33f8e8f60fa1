"""Evaluate the week's finetune against its base model on a prompt set; promote it only if it wins.

The shape of an ML pipeline's evaluation gate: register the new finetune, run the same evaluation
prompts (``data/eval_prompts.jsonl``) through the base model with and without the finetune using
``WorkersAIBatchOperator`` — deferrable, so no worker slot is held while the answers come in —
score both outputs, and let the promotion task run only when the finetune scores higher.

Results are JSONL files under ``$CFAI_EVAL_DIR`` (default: ``eval-results`` next to this file), one
folder per DAG run; in production, point ``output`` at object storage (an ``ObjectStoragePath`` or an
``s3://`` URL) so workers and the triggerer share it. Run it against the local emulator with
``make demo``, or with ``airflow dags test example_batch_evaluation``.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import dag, task

from airflow_provider_cfai.operators.batch import WorkersAIBatchOperator
from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator

BASE_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
DAG_FOLDER = Path(__file__).parent
EVAL_PROMPTS = str(DAG_FOLDER / "data" / "eval_prompts.jsonl")
EVAL_DIR = os.environ.get("CFAI_EVAL_DIR") or str(DAG_FOLDER / "eval-results")
#: The finetune is trained to answer as the brand's support desk; the score looks for that voice.
BRAND = "acme"


@dag(
    schedule="@weekly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["cloudflare", "example", "lora", "evaluation"],
)
def example_batch_evaluation() -> None:
    @task
    def train_adapter() -> str:
        """Stands in for the week's training step: writes a small, valid PEFT LoRA adapter folder."""
        from airflow_provider_cfai.adapter_factory import write_lora_adapter

        return str(write_lora_adapter(tempfile.mkdtemp(prefix="lora-adapter-"), model_type="mistral", rank=8))

    register = CreateFinetuneOperator(
        task_id="register_finetune",
        model=BASE_MODEL,
        finetune_name=f"{BRAND}-support-{{{{ ds_nodash }}}}",
        adapter=train_adapter(),
    )

    # [START howto_operator_batch_evaluation]
    evaluate_finetune = WorkersAIBatchOperator(
        task_id="evaluate_finetune",
        model=BASE_MODEL,
        lora=register.output,  # the finetune ID CreateFinetuneOperator pushed
        inputs=EVAL_PROMPTS,  # JSONL: a local path, an fsspec URL or an ObjectStoragePath
        output=EVAL_DIR + "/{{ run_id }}/finetune.jsonl",
        deferrable=True,  # the triggerer waits for the answers, not a worker slot
        max_failure_ratio=0.1,  # fail the task (after writing every result) if >10% of items fail
        execution_timeout=timedelta(hours=1),  # the batch's deadline, deferral included
    )
    evaluate_base = WorkersAIBatchOperator(
        task_id="evaluate_base_model",
        model=BASE_MODEL,
        inputs=EVAL_PROMPTS,
        output=EVAL_DIR + "/{{ run_id }}/base.jsonl",
        deferrable=True,
        max_failure_ratio=0.1,
        execution_timeout=timedelta(hours=1),
    )

    @task(multiple_outputs=False)  # one dict of scores, not one XCom per key
    def score(finetune: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
        """Read both outputs from where the manifests say they are; score them the same way."""
        from airflow_provider_cfai.batch.records import iter_outputs

        def brand_voice(output: str) -> float:
            # A stand-in metric: the share of answers given in the brand's voice (failed items score
            # 0). Swap in your own: exact match against references, a judge model, ...
            records = list(iter_outputs(output))
            hits = sum(1 for r in records if r["success"] and BRAND in str(r["result"].get("response", "")).lower())
            return hits / len(records) if records else 0.0

        return {"finetune": brand_voice(finetune["output"]), "base": brand_voice(base["output"])}

    @task.short_circuit
    def finetune_wins(scores: dict[str, float]) -> bool:
        print(f"finetune {scores['finetune']:.2f} vs base model {scores['base']:.2f}")
        return scores["finetune"] > scores["base"]

    @task
    def promote(finetune_id: str, scores: dict[str, float]) -> str:
        """Runs only when the finetune won: in production, point the serving config at it."""
        print(f"Promoting finetune {finetune_id} (score {scores['finetune']:.2f})")
        return finetune_id

    scores = score(evaluate_finetune.output, evaluate_base.output)
    finetune_wins(scores) >> promote(register.output, scores)
    # [END howto_operator_batch_evaluation]


example_batch_evaluation()
