"""Triggers: the provider's work that runs in Airflow's triggerer while a task is deferred.

* :class:`~airflow_provider_cfai.triggers.batch.WorkersAIBatchTrigger` — a batch evaluation's calls
  (direct engine) or its polling (queue engine), with no worker slot held.
"""

from __future__ import annotations
