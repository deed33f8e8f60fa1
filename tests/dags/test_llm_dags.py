"""End to end: common-ai's @task.llm and LLMOperator on a finetune, through connection type pydanticai_cloudflare."""

from __future__ import annotations

import json
import logging
from pathlib import Path
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


def test_the_token_reaches_no_log_db_or_xcom_when_a_run_succeeds_and_one_fails(
    airflow_db: Any,
    airflow_home: Any,
    emulator: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    support_bot(emulator, monkeypatch)
    assert run_dag(DAG_ID).state == "success"
    rule = emulator.add_fault(
        method="POST",
        path=r"/ai/run/",
        times=10,
        status=401,
        body={"success": False, "errors": [{"code": 10000, "message": "Authentication error"}]},
    )

    assert run_dag(DAG_ID, logical_date="2026-01-12").state == "failed"

    assert emulator.fired(rule) == 2  # each LLM task's one run call; a 401 is neither retried nor a fallback
    out, err = capfd.readouterr()
    assert "Authentication error" in out + err + caplog.text  # the failure really was logged
    for text in (out, err, caplog.text):
        assert emulator.token not in text
    hits = [str(p) for p in Path(airflow_home).rglob("*") if p.is_file() and emulator.token.encode() in p.read_bytes()]
    assert hits == []
