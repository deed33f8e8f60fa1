"""Batch evaluation: many model inputs in, one JSONL line per input out, a small manifest in XCom.

* :mod:`~airflow_provider_cfai.batch.inputs` — reading, checking and staging the inputs;
* :mod:`~airflow_provider_cfai.batch.records` — the output records and the scan of an existing output;
* :mod:`~airflow_provider_cfai.batch.writer` — the ordered, resumable writer;
* :mod:`~airflow_provider_cfai.batch.manifest` — the manifest (XCom ``return_value``);
* :mod:`~airflow_provider_cfai.batch.ledger` — the record of a batch in flight, for retries;
* :mod:`~airflow_provider_cfai.batch.engines` — the two engines, ``direct`` (paced ``/ai/run``
  calls) and ``queue`` (Cloudflare's asynchronous Batch API), behind one ``run_engine``;
* the engines call the API through :class:`~airflow_provider_cfai.hooks.cloudflare_ai_async.CloudflareAIAsyncHook`;
* :mod:`~airflow_provider_cfai.batch.worker` — what the operator does in the worker.

The operator is :class:`airflow_provider_cfai.operators.batch.WorkersAIBatchOperator`; the trigger is
:class:`airflow_provider_cfai.triggers.batch.WorkersAIBatchTrigger`; both send their calls through the
async client. This package imports nothing at import time: each module pulls in what it needs
(``httpx``, ``fsspec``) when used.
"""

from __future__ import annotations

#: The engines that run a batch (``engine="auto"`` picks one of them).
ENGINES = ("queue", "direct")
