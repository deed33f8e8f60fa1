"""A queued batch whose first try fails while deferred: the retry must re-attach, not submit again."""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from airflow_provider_cfai.operators.batch import WorkersAIBatchOperator

with DAG("batch_retry_reattach", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):
    WorkersAIBatchOperator(
        task_id="evaluate",
        deferrable=True,
        model="@cf/meta/llama-3.3-70b-instruct-fp8-fast",
        engine="queue",
        inputs=[{"prompt": f"question {i}", "external_reference": f"q{i}"} for i in range(4)],
        output=os.environ.get("CFAI_TEST_BATCH_DIR", "/tmp/cfai-test-batch") + "/{{ run_id }}/out.jsonl",
        poll_interval=0.05,
        retries=1,
        retry_delay=timedelta(0),
        cloudflare_conn_id="cfai_batch",
    )
