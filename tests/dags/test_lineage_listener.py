"""End to end: `airflow dags test` with OpenLineage switched on writes our datasets into its events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


def completed_tasks(events_file: Path) -> dict[str, list[dict[str, Any]]]:
    """COMPLETE events of tasks (job ``dag.task``), by task ID: one per mapped instance."""
    tasks: dict[str, list[dict[str, Any]]] = {}
    for line in events_file.read_text().splitlines():
        event = json.loads(line)
        task_id = event["job"]["name"].partition(".")[2]
        if event["eventType"] == "COMPLETE" and task_id:
            tasks.setdefault(task_id, []).append(event)
    return tasks


def datasets(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in items]


def test_openlineage_listener_reports_adapter_finetune_and_model_of_the_lora_pipeline(
    airflow_db: Path, emulator: Any, tmp_path: Path
) -> None:
    events_file = tmp_path / "openlineage.jsonl"
    env = {
        **os.environ,
        "AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT": emulator.connection_json(),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "cfai-tests",
    }
    airflow = Path(sys.executable).with_name("airflow")

    result = subprocess.run(
        [str(airflow), "dags", "test", "example_lora_pipeline", "2026-01-05"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    namespace = f"cloudflare-workers-ai://{emulator.account_id}"
    finetune = (namespace, "finetunes/weekly-support-20260105")
    tasks = completed_tasks(events_file)
    (register,) = tasks["register_finetune"]
    assert [ns for ns, _ in datasets(register["inputs"])] == ["file"]
    assert Path(datasets(register["inputs"])[0][1]).name.startswith("lora-adapter-")
    assert datasets(register["outputs"]) == [finetune]
    finetune_id = {f["name"]: f["id"] for f in emulator.finetunes()}["weekly-support-20260105"]
    identifiers = register["outputs"][0]["facets"]["symlinks"]["identifiers"]
    assert [i["name"] for i in identifiers] == [f"finetunes/{finetune_id}"]
    (smoke,) = tasks["smoke_test"]
    assert datasets(smoke["inputs"]) == [(namespace, f"models/{MODEL}"), finetune]
    mapped_outputs = sorted(datasets(e["outputs"])[0][1] for e in tasks["register_locale_finetunes"])
    assert mapped_outputs == ["finetunes/weekly-support-de-20260105", "finetunes/weekly-support-en-20260105"]
