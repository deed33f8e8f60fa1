"""End to end: the batch evaluation example under dag.test(), its triggers run inline, on the emulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dag_runner import load_dag, run_dag, xcom

pytestmark = pytest.mark.e2e

DAG_ID = "example_batch_evaluation"
PROMPTS = Path(__file__).resolve().parents[2] / "dags_examples" / "data" / "eval_prompts.jsonl"


def records(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_evaluation_dag_scores_both_outputs_and_promotes_the_winning_finetune(
    airflow_db: Any, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CFAI_EVAL_DIR", str(tmp_path))
    prompts = [json.loads(line) for line in PROMPTS.read_text().splitlines()]

    run = run_dag(DAG_ID)

    assert run.state == "success"
    (finetune,) = [f for f in emulator.finetunes() if f["name"] == "acme-support-20260105"]
    finetune_manifest = xcom(DAG_ID, run.run_id, "evaluate_finetune")
    base_manifest = xcom(DAG_ID, run.run_id, "evaluate_base_model")
    for manifest, name in ((finetune_manifest, "finetune"), (base_manifest, "base")):
        assert manifest["output"] == str(tmp_path / run.run_id / f"{name}.jsonl")
        assert manifest["engine"] == "direct"  # a LoRA base model: no async_queue in the catalog
        assert (manifest["status"], manifest["total"], manifest["succeeded"], manifest["failed"]) == (
            "success",
            len(prompts),
            len(prompts),
            0,
        )
        assert manifest["usage"]["total_tokens"] > 0
        lines = records(manifest["output"])
        assert [r["index"] for r in lines] == list(range(len(prompts)))
        assert [r["external_reference"] for r in lines] == [p["external_reference"] for p in prompts]
    assert finetune_manifest["lora"] == finetune["id"]
    assert all("acme-support-20260105" in r["result"]["response"] for r in records(finetune_manifest["output"]))
    assert not any("acme" in r["result"]["response"] for r in records(base_manifest["output"]))
    assert xcom(DAG_ID, run.run_id, "score") == {"finetune": 1.0, "base": 0.0}
    assert xcom(DAG_ID, run.run_id, "promote") == finetune["id"]


def test_promotion_runs_only_behind_a_gate_that_opens_when_the_finetune_wins(airflow_db: Any) -> None:
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    dag = load_dag(DAG_ID)
    gate = dag.get_task("finetune_wins")

    assert isinstance(gate, ShortCircuitOperator)  # a False return skips everything downstream
    assert dag.get_task("promote").upstream_task_ids >= {"finetune_wins"}
    assert gate.python_callable({"finetune": 0.75, "base": 0.5}) is True
    assert gate.python_callable({"finetune": 0.5, "base": 0.75}) is False
    assert gate.python_callable({"finetune": 0.5, "base": 0.5}) is False  # a tie keeps the old one


def test_the_readme_batch_example_runs_as_written(
    airflow_db: Any, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's preamble with its batch snippet in place, as a user would save it, under dag.test()."""
    import importlib.util
    import shutil
    import textwrap

    spec = importlib.util.spec_from_file_location("readme_docs", Path(__file__).parents[1] / "test_docs.py")
    assert spec is not None
    assert spec.loader is not None
    docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs)
    (snippet,) = [p.values[0] for p in docs.REGIONS if p.id == "howto_operator_batch_evaluation"]
    preamble = docs._preamble_for(snippet)
    dags = tmp_path / "dags"
    (dags / "data").mkdir(parents=True)
    shutil.copy(PROMPTS, dags / "data" / "eval_prompts.jsonl")
    (dags / "evaluate_weekly_finetune.py").write_text(
        preamble.replace(docs.PLACEHOLDER, textwrap.indent(snippet, "    "))
    )
    monkeypatch.delenv("CFAI_EVAL_DIR", raising=False)
    # dag.test() only runs DAGs it finds in a configured bundle: add the user's folder as one.
    bundle = "airflow.dag_processing.bundles.local.LocalDagBundle"
    bundles = [
        {"name": "readme-dags", "classpath": bundle, "kwargs": {"path": str(dags)}},
        {"name": "dags-folder", "classpath": bundle, "kwargs": {}},
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))

    run = run_dag("evaluate_weekly_finetune", folder=dags)

    assert run.state == "success"
    manifest = xcom("evaluate_weekly_finetune", run.run_id, "evaluate_finetune")
    assert (manifest["succeeded"], manifest["failed"]) == (len(PROMPTS.read_text().splitlines()), 0)
    assert manifest["output"].startswith(str(dags / "eval-results"))  # inside the project, not a fixed folder
    assert xcom("evaluate_weekly_finetune", run.run_id, "score") == {"finetune": 1.0, "base": 0.0}
