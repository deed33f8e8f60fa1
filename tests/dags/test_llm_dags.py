"""End to end: common-ai's @task.llm and LLMOperator on a finetune, through connection type pydanticai_cloudflare."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dag_runner import run_dag, xcom

pytest.importorskip(
    "airflow.providers.common.ai",
    reason="the common-ai extra is not installed (it needs Python 3.11+): pip install '.[common-ai]'",
)

pytestmark = pytest.mark.e2e

DAG_ID = "example_llm_ticket_triage"
BASE_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


def support_bot(emulator: Any, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> None:
    """The README's connection: type pydanticai_cloudflare, model and finetune in the extras."""
    conn = json.loads(emulator.connection_json(max_retries=3, retry_budget=30, timeout=10))
    conn["conn_type"] = "pydanticai_cloudflare"
    conn["extra"] = {**conn["extra"], "model": BASE_MODEL, "lora": "support-triage", **extra}
    monkeypatch.setenv("AIRFLOW_CONN_SUPPORT_BOT", json.dumps(conn))
    # A Ticket read back from XCom outside its task must be an allowed class (see the README).
    monkeypatch.setenv("AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP", r"unusual_prefix_\w+\.Ticket")


def test_task_llm_and_llm_operator_return_validated_tickets_from_the_finetune(
    airflow_db: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    support_bot(emulator, monkeypatch)

    run = run_dag(DAG_ID)

    assert run.state == "success"
    routed = xcom(run.dag_id, run.run_id, "route")
    label = f"[{BASE_MODEL} + support-triage]"
    assert routed[0].startswith(f"billing: {label}")
    assert routed[1].startswith(f"bug (urgent): {label}")
    runs = [r for r in emulator.state()["requests"] if "/ai/run/" in r["path"]]
    assert len(runs) == 2
    assert {r["lora"] for r in runs} == {"support-triage"}
