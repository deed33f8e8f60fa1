"""Train (here: generate) a LoRA adapter, register and upload it, then smoke-test it with inference.

The shape of a real weekly fine-tuning pipeline: one task writes an adapter folder (in production,
usually to object storage: pass an ``ObjectStoragePath`` or an ``s3://`` URL instead of a local
path), ``CreateFinetuneOperator`` validates it before any API call, registers the finetune and
uploads both files, and ``WorkersAIRunOperator`` runs the base model with ``lora=`` the new ID.
"""

from __future__ import annotations

import tempfile

import pendulum
from airflow.sdk import dag, task

from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator
from airflow_provider_cfai.operators.inference import WorkersAIRunOperator

BASE_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


@dag(
    schedule="@weekly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["cloudflare", "example", "lora"],
)
def example_lora_pipeline() -> None:
    # [START howto_lora_pipeline]
    @task
    def train_adapter() -> str:
        """Stands in for a training step: writes a small, valid PEFT LoRA adapter folder."""
        from airflow_provider_cfai.adapter_factory import write_lora_adapter

        folder = tempfile.mkdtemp(prefix="lora-adapter-")
        return str(write_lora_adapter(folder, model_type="mistral", rank=8))

    adapter_dir = train_adapter()

    register = CreateFinetuneOperator(
        task_id="register_finetune",
        model=BASE_MODEL,
        finetune_name="weekly-support-{{ ds_nodash }}",
        adapter=adapter_dir,  # validated first, uploaded after the create
    )

    smoke_test = WorkersAIRunOperator(
        task_id="smoke_test",
        model=BASE_MODEL,
        inputs={"prompt": "Say hello to our customers.", "raw": True},
        lora=register.output,
    )

    @task
    def report(finetune_id: str, answer: dict[str, object]) -> None:
        print(f"Finetune {finetune_id} answered: {answer.get('response')!r}")

    report(register.output, smoke_test.output)
    # [END howto_lora_pipeline]

    # [START howto_lora_pipeline_mapped]
    @task
    def train_locale_adapters(ds_nodash: str | None = None) -> list[dict[str, str]]:
        from airflow_provider_cfai.adapter_factory import write_lora_adapter

        return [
            {
                "finetune_name": f"weekly-support-{lang}-{ds_nodash}",
                "adapter": str(write_lora_adapter(tempfile.mkdtemp(prefix=f"lora-{lang}-"))),
            }
            for lang in ("en", "de")
        ]

    CreateFinetuneOperator.partial(task_id="register_locale_finetunes", model=BASE_MODEL).expand_kwargs(
        train_locale_adapters()
    )
    # [END howto_lora_pipeline_mapped]


example_lora_pipeline()
