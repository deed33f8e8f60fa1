"""Batch evaluation: many model inputs in, one JSONL line per input out, a small manifest in XCom.

* :mod:`~airflow_provider_cfai.batch.items` — reading inputs, the output records, the ordered
  (resumable) writer and the manifest;
* the engines call the API through :class:`~airflow_provider_cfai.hooks.cloudflare_ai_async.CloudflareAIAsyncHook`;
* :mod:`~airflow_provider_cfai.batch.engines` — the two engines: ``direct`` (paced ``/ai/run`` calls)
  and ``queue`` (Cloudflare's asynchronous Batch API).

The operator is :class:`airflow_provider_cfai.operators.batch.WorkersAIBatchOperator`; the trigger is
:class:`airflow_provider_cfai.triggers.batch.WorkersAIBatchTrigger`. This package imports nothing
at import time: each module pulls in what it needs (``httpx``, ``fsspec``) when used.
"""

from __future__ import annotations
