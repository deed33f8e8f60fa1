"""Roll production back: point the Worker at the finetune that was live before the last promotion.

Trigger it by hand when a promotion (``example_promote_finetune``) goes wrong. It reads the
previous finetune from the pointer's metadata, runs a canary inference with it, and writes it back,
recording the rollback in turn, so running it twice restores the promoted finetune again.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from airflow_provider_cfai.operators.promote import RollbackFinetuneOperator

NAMESPACE_TITLE = "support-bot-serving"
POINTER_KEY = "support-bot"


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["cloudflare", "example", "lora", "promotion"],
)
def example_rollback_finetune() -> None:
    @task
    def serving_namespace() -> str:
        """The pointer's KV namespace ID, looked up by title (in production, pass your own ID)."""
        from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

        for namespace in CloudflareAIHook().list_kv_namespaces():
            if namespace.get("title") == NAMESPACE_TITLE:
                return str(namespace["id"])
        raise LookupError(f"No Workers KV namespace titled {NAMESPACE_TITLE!r}: nothing was ever promoted")

    RollbackFinetuneOperator(task_id="rollback", namespace_id=serving_namespace(), key=POINTER_KEY)


example_rollback_finetune()
