"""After full runs of the example DAGs, one of them failing, the credentials appear nowhere."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from dag_runner import run_dag

from airflow_provider_cfai.exceptions import CloudflareAuthError

pytestmark = pytest.mark.e2e


def files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle in path.read_bytes():
            hits.append(str(path))
    return hits


def test_token_never_reaches_logs_db_xcom_or_output(
    airflow_db: Path,
    airflow_home: Path,
    emulator: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    token = emulator.token
    assert len(token) >= 16

    assert run_dag("example_cloudflare_finetune").state == "success"
    assert run_dag("example_lora_pipeline").state == "success"
    rule = emulator.add_fault(
        method="POST",
        path=r"/ai/run/",
        times=10,
        status=401,
        body={"success": False, "errors": [{"code": 10000, "message": "Authentication error"}]},
    )
    assert run_dag("example_lora_pipeline", logical_date="2026-01-12").state == "failed"
    assert emulator.fired(rule) == 1  # the smoke test's one run call; a 401 is not retried

    out, err = capfd.readouterr()
    assert "Authentication error" in out + err + caplog.text  # the failure really was logged
    assert token not in out
    assert token not in err
    assert token not in caplog.text
    assert files_containing(airflow_home, token.encode()) == []


def test_legacy_key_and_email_stay_out_of_debug_logs_and_errors(
    make_hook: Any, emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    email, key = "ops-team@example.com", "legacy-global-key-0123456789"
    emulator.configure(email=email, api_key=key)
    caplog.set_level(logging.DEBUG)
    hook = make_hook(conn_id="cfai_legacy_leak", password="", email=email, api_key="wrong-" + key, max_retries=1)

    with pytest.raises(CloudflareAuthError) as caught:
        hook.list_finetunes()

    for secret in (key, "wrong-" + key):
        assert secret not in caplog.text
        assert secret not in str(caught.value)
        assert secret not in repr(hook.settings)
