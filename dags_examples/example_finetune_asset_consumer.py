"""Start a DAG when a new finetune is ready, and smoke-test it: data-aware scheduling on finetunes.

An asset event is sent through the ``AssetAlias`` ``cloudflare-workers-ai-finetunes`` when a finetune
becomes usable, i.e. once its adapter files are uploaded: by ``CreateFinetuneOperator`` when it
uploaded ``adapter`` itself, else by ``UploadFinetuneAssetsOperator`` (a create without ``adapter``
sends none). This DAG is scheduled on that alias, so the scheduler starts it after
``example_lora_pipeline`` (or any other DAG) has a new finetune ready. The events that started the
run carry each finetune's ID, name and model in ``extra``; the smoke test runs once per finetune.
Unpause it, then run a producer DAG; a manual run has no triggering events and skips the test.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import AssetAlias, dag, task

from airflow_provider_cfai.assets import FINETUNES_ALIAS
from airflow_provider_cfai.operators.inference import WorkersAIRunOperator

BASE_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


# [START howto_schedule_on_finetune_asset]
new_finetunes = AssetAlias(FINETUNES_ALIAS)  # "cloudflare-workers-ai-finetunes"


@dag(
    schedule=new_finetunes,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["cloudflare", "example", "assets"],
)
def example_finetune_asset_consumer() -> None:
    @task
    def finetunes_to_test(triggering_asset_events: Any = None) -> list[dict[str, str]]:
        """The new finetunes of BASE_MODEL that have their adapter files (none in a manual run)."""
        loras: dict[str, dict[str, str]] = {}
        for event in triggering_asset_events[new_finetunes]:
            finetune = event.extra  # finetune_id, finetune_name, model, account_id, created, adapter
            print(f"New finetune {finetune['finetune_name']} ({finetune['finetune_id']}) on {finetune['model']}")
            if finetune.get("adapter") and finetune["model"] == BASE_MODEL:
                loras[finetune["finetune_id"]] = {"lora": finetune["finetune_id"]}
        return list(loras.values())

    WorkersAIRunOperator.partial(
        task_id="smoke_test",
        model=BASE_MODEL,
        inputs={"prompt": "Say hello to our customers.", "raw": True},
    ).expand_kwargs(finetunes_to_test())


example_finetune_asset_consumer()
# [END howto_schedule_on_finetune_asset]
