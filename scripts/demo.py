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
DAGS = ("example_cloudflare_finetune", "example_lora_pipeline", "example_batch_evaluation")
LOGICAL_DATE = "2026-01-05"
CONSUMER = "example_finetune_asset_consumer"
PROMOTE, ROLLBACK = "example_promote_finetune", "example_rollback_finetune"
TICKET_CLASS = r"unusual_prefix_\w+_example_llm_ticket_triage\.Ticket"  # a DAG file's module name has a prefix


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


def finetune_asset_events(db: Path) -> tuple[list[tuple[str, str]], set[str]]:
    """The finetune asset events the runs emitted, and the DAGs they queued for the scheduler."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        events = conn.execute(
            "SELECT a.uri, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.uri LIKE 'cloudflare-workers-ai://%/finetunes/%' ORDER BY e.id"
        ).fetchall()
        queued = {row[0] for row in conn.execute("SELECT DISTINCT target_dag_id FROM asset_dag_run_queue")}
    return events, queued


def ship_it(db: Path, env: dict[str, str], emulator: object | None) -> list[str]:
    """Promote finetune A, then B, then roll back; the stand-in Worker's answer after each step."""
    traffic: list[str] = []

    def worker(expected: str) -> None:
        if emulator is None:
            return
        namespace = xcom_return_value(db, PROMOTE, "serving_namespace")
        answer = emulator.ask_worker(str(namespace), "support-bot", "Where is my order?")  # type: ignore[attr-defined]
        if expected not in answer["response"]:
            raise SystemExit(f"The stand-in Worker should serve {expected}, but answered {answer['response']!r}")
        traffic.append(f"Worker answers with {answer['response']!r}")
        print(traffic[-1])

    # The approval is a person's in production (Required actions page or REST API); here it is
    # marked successful so the demo runs unattended.
    for day, name in (("2026-01-05", "acme-support-a"), ("2026-01-12", "acme-support-b")):
        conf = json.dumps({"finetune_name": name})
        airflow("dags", "test", PROMOTE, day, "-c", conf, "--mark-success-pattern", "approve_promotion", env=env)
        worker(name)
    airflow("dags", "test", ROLLBACK, "2026-01-20", env=env)
    worker("acme-support-a")
    return traffic


def llm_triage(conn_json: str, db: Path, env: dict[str, str]) -> list[str]:
    """Run the common-ai example (needs the common-ai extra, Python 3.11+) on connection support_bot."""
    import importlib.util

    if importlib.util.find_spec("airflow.providers.common.ai") is None:
        print("Skipping example_llm_ticket_triage: the common-ai extra is not installed (Python 3.11+)")
        return []
    conn = json.loads(conn_json)
    conn["conn_type"] = "pydanticai_cloudflare"
    conn["extra"] = {
        **conn.get("extra", {}),
        "model": "@cf/mistral/mistral-7b-instruct-v0.2-lora",
        "lora": "support-triage",
    }
    env = {
        **env,
        "AIRFLOW_CONN_SUPPORT_BOT": json.dumps(conn),
        # `airflow dags test` reads the Ticket results back from XCom in this process: allow the class.
        "AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP": TICKET_CLASS,
    }
    airflow("dags", "test", "example_llm_ticket_triage", LOGICAL_DATE, env=env)
    routed = xcom_return_value(db, "example_llm_ticket_triage", "route")
    if not isinstance(routed, list) or len(routed) != 2:
        raise SystemExit(f"Unexpected example_llm_ticket_triage result: {routed!r}")
    return [str(line) for line in routed]


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
        # Where example_batch_evaluation writes its JSONL results.
        "CFAI_EVAL_DIR": str(ROOT / ".demo" / "eval"),
    }
    with cloudflare() as (conn_json, emulator):
        env["AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT"] = conn_json
        airflow("db", "migrate", env=env)
        # The asset-scheduled example must be known to the DB and unpaused for the producers'
        # events to queue it (running it needs a scheduler; the queue entry is the scheduler's input).
        airflow("dags", "reserialize", env=env)
        airflow("dags", "unpause", CONSUMER, env=env)
        for dag_id in DAGS:
            airflow("dags", "test", dag_id, LOGICAL_DATE, env=env)
        triage = llm_triage(conn_json, db, env)
        finetune_id = xcom_return_value(db, "example_cloudflare_finetune", "create_finetune")
        pipeline_id = xcom_return_value(db, "example_lora_pipeline", "register_finetune")
        answer = xcom_return_value(db, "example_lora_pipeline", "smoke_test")
        scores = xcom_return_value(db, "example_batch_evaluation", "score")
        manifest = xcom_return_value(db, "example_batch_evaluation", "evaluate_finetune")
        promoted = xcom_return_value(db, "example_batch_evaluation", "promote")
        traffic = ship_it(db, env, emulator)
        rolled_back_from = xcom_return_value(db, ROLLBACK, "rollback")
        events, queued = finetune_asset_events(db)
        if CONSUMER not in queued:
            raise SystemExit(f"No finetune asset event queued {CONSUMER} (queued: {sorted(queued)})")
        if emulator is not None:
            held = {f["id"]: f for f in emulator.finetunes()}  # type: ignore[attr-defined]
            for checked in (finetune_id, pipeline_id, promoted):
                if checked not in held:
                    raise SystemExit(f"XCom holds {checked!r}, which the emulator does not know")
            assets = sorted(held[pipeline_id].get("assets", {}))
            print(f"Emulator holds {len(held)} finetunes; {pipeline_id} has files {', '.join(assets)}")
    if not isinstance(scores, dict) or not isinstance(manifest, dict):
        raise SystemExit(f"Unexpected batch evaluation XComs: score={scores!r}, manifest={manifest!r}")
    print(
        f"Batch evaluation: finetune {scores['finetune']:.2f} vs base {scores['base']:.2f} -> promoted {promoted} "
        f"({manifest['succeeded']}/{manifest['total']} answers, {manifest['engine']} engine, "
        f"{manifest['usage']['total_tokens']} tokens, results in {manifest['output']})"
    )
    for uri, extra in events:
        print(f"Asset event {uri}: {extra}")
    print(f"{CONSUMER} queued for the scheduler by {len(events)} finetune asset events")
    print(f"Promote A, promote B, roll back (XCom of {ROLLBACK}.rollback: {rolled_back_from}):")
    for line in traffic:
        print(f"  {line}")
    for line in triage:
        print(f"@task.llm on the finetune (XCom of example_llm_ticket_triage.route): {line}")
    print(f"Smoke test answer (XCom of smoke_test): {answer}")
    print(f"Finetune ID of the LoRA pipeline (XCom of register_finetune): {pipeline_id}")
    print(f"Finetune ID in XCom (example_cloudflare_finetune.create_finetune): {finetune_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
