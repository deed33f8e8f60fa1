"""Register a Workers AI finetune and hand its ID to a downstream task through XCom.

Run it against the local emulator with ``make demo``, or on its own with
``airflow dags test example_cloudflare_finetune`` once the ``cloudflare_ai_default`` connection
points at Cloudflare or at ``cfai-emulator``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator

BASE_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["cloudflare", "example"],
)
def example_cloudflare_finetune() -> None:
    # [START howto_operator_create_finetune]
    create = CreateFinetuneOperator(
        task_id="create_finetune",
        model=BASE_MODEL,
        finetune_name="support-bot-{{ ds_nodash }}",
        description="Support assistant LoRA, registered by Airflow",
        if_exists="reuse",  # re-runs and retries converge on one finetune
    )

    @task
    def announce(finetune_id: str) -> str:
        print(f"Finetune ready for inference: lora={finetune_id}")
        return finetune_id

    announce(create.output)
    # [END howto_operator_create_finetune]

    # [START howto_operator_create_finetune_mapped]
    CreateFinetuneOperator.partial(task_id="create_per_locale", model=BASE_MODEL).expand(
        finetune_name=["support-bot-en", "support-bot-de", "support-bot-fr"]
    )
    # [END howto_operator_create_finetune_mapped]


example_cloudflare_finetune()
