"""`make demo`: run the example DAGs with `airflow dags test` and print the finetune ID from XCom.

Without Cloudflare credentials it starts the local emulator on a free port; with
CLOUDFLARE_API_TOKEN and CLOUDFLARE_ACCOUNT_ID in the environment it talks to Cloudflare itself.
Airflow's home (config, SQLite metadata DB, logs) lives under .demo/ in the checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOME = ROOT / ".demo" / "airflow"
DAGS = ("example_cloudflare_finetune", "example_lora_pipeline")
LOGICAL_DATE = "2026-01-05"


@contextlib.contextmanager
def cloudflare() -> Iterator[tuple[str, object | None]]:
    """Yield the connection JSON and, when local, the running emulator."""
    token, account = os.environ.get("CLOUDFLARE_API_TOKEN"), os.environ.get("CLOUDFLARE_ACCOUNT_ID")
    if token and account:
        print("Using real Cloudflare (CLOUDFLARE_API_TOKEN and CLOUDFLARE_ACCOUNT_ID are set)")
        yield json.dumps({"conn_type": "cloudflare_ai", "login": account, "password": token}), None
        return
    from airflow_provider_cfai.testing import run_emulator

    with run_emulator() as emulator:
        print(f"Started the Cloudflare API emulator at {emulator.base_url}")
        yield emulator.connection_json(), emulator


def airflow(*args: str, env: dict[str, str]) -> None:
    command = [str(Path(sys.executable).with_name("airflow")), *args]
    print("$ airflow " + " ".join(args), flush=True)
    subprocess.run(command, env=env, check=True, cwd=ROOT)


def xcom_return_value(db: Path, dag_id: str, task_id: str) -> object:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = 'return_value' "
            "AND map_index = -1 ORDER BY timestamp DESC LIMIT 1",
            (dag_id, task_id),
        ).fetchone()
    if row is None:
        raise SystemExit(f"No return_value XCom for {dag_id}.{task_id}")
    value = row[0]
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def main() -> int:
    shutil.rmtree(HOME, ignore_errors=True)
    HOME.mkdir(parents=True)
    db = HOME / "airflow.db"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags_examples"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }
    with cloudflare() as (conn_json, emulator):
        env["AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT"] = conn_json
        airflow("db", "migrate", env=env)
        for dag_id in DAGS:
            airflow("dags", "test", dag_id, LOGICAL_DATE, env=env)
        finetune_id = xcom_return_value(db, "example_cloudflare_finetune", "create_finetune")
        pipeline_id = xcom_return_value(db, "example_lora_pipeline", "register_finetune")
        answer = xcom_return_value(db, "example_lora_pipeline", "smoke_test")
        if emulator is not None:
            held = {f["id"]: f for f in emulator.finetunes()}  # type: ignore[attr-defined]
            for checked in (finetune_id, pipeline_id):
                if checked not in held:
                    raise SystemExit(f"XCom holds {checked!r}, which the emulator does not know")
            assets = sorted(held[pipeline_id].get("assets", {}))
            print(f"Emulator holds {len(held)} finetunes; {pipeline_id} has files {', '.join(assets)}")
    print(f"Smoke test answer (XCom of smoke_test): {answer}")
    print(f"Finetune ID of the LoRA pipeline (XCom of register_finetune): {pipeline_id}")
    print(f"Finetune ID in XCom (example_cloudflare_finetune.create_finetune): {finetune_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
