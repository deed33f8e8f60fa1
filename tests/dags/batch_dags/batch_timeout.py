"""A direct batch that cannot finish within its execution_timeout."""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from airflow_provider_cfai.operators.batch import WorkersAIBatchOperator

with DAG("batch_timeout", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):
    WorkersAIBatchOperator(
        task_id="evaluate",
        deferrable=True,
        model="@cf/meta/llama-3.1-8b-instruct",
        engine="direct",
        inputs=[{"prompt": f"question {i}"} for i in range(4)],
        output=os.environ.get("CFAI_TEST_BATCH_DIR", "/tmp/cfai-test-batch") + "/{{ run_id }}/out.jsonl",
        concurrency=1,
        execution_timeout=timedelta(seconds=8),
        cloudflare_conn_id="cfai_batch",
    )
