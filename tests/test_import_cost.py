"""DAG files import the operator modules at every parse: they must not pull in heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = [
    "requests",
    "requests_toolbelt",
    "fastapi",
    "uvicorn",
    "httpx",
    "starlette",
    "tenacity",
    "fsspec",
    "pydantic_ai",
]

PROBE = """
import json, sys
import airflow.sdk
before = set(sys.modules)
import airflow_provider_cfai
airflow_provider_cfai.get_provider_info()  # declares pydanticai_cloudflare without importing its hook
import airflow_provider_cfai.operators.finetune
import airflow_provider_cfai.operators.inference
import airflow_provider_cfai.operators.batch
import airflow_provider_cfai.operators.promote
import airflow_provider_cfai.hooks.cloudflare_ai
new = {name.split(".")[0] for name in set(sys.modules) - before}
print(json.dumps(sorted(new)))
"""


def test_operator_and_hook_modules_import_no_heavy_library() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True).stdout
    imported = set(json.loads(out.strip().splitlines()[-1]))

    assert "airflow_provider_cfai" in imported  # the probe really imported something
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))


PARSE_PROBE = """
import json, sys
import airflow.sdk
from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator, UploadFinetuneAssetsOperator
from airflow_provider_cfai.operators.inference import WorkersAIRunOperator
CreateFinetuneOperator(task_id="c", model="m", finetune_name="n", adapter="/tmp/a", max_finetunes=5)
UploadFinetuneAssetsOperator(task_id="u", finetune_id="f", adapter="/tmp/a")
WorkersAIRunOperator(task_id="r", model="m", inputs={"prompt": "hi"}, lora="f")
print(json.dumps(sorted(m for m in sys.modules if m.startswith("airflow_provider_cfai"))))
"""


def test_building_the_operators_loads_none_of_the_run_time_modules() -> None:
    """What a DAG parse pays for: no hook, adapter reader, pre-flight check or lineage module."""
    out = subprocess.run([sys.executable, "-c", PARSE_PROBE], check=True, capture_output=True, text=True).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))

    assert "airflow_provider_cfai.operators.finetune" in loaded  # the probe really built them
    run_time = {"hooks", "adapters", "preflight", "lineage", "batch", "triggers"}
    assert {m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in run_time} == set()


def test_provider_info_and_operator_modules_never_import_pydantic_ai() -> None:
    """Airflow reads get_provider_info() while importing itself, so this looks at the whole process."""
    probe = (
        "import sys, airflow_provider_cfai; airflow_provider_cfai.get_provider_info(); import airflow.sdk; "
        "import airflow_provider_cfai.operators.finetune, airflow_provider_cfai.operators.inference, "
        "airflow_provider_cfai.operators.batch, airflow_provider_cfai.operators.promote, "
        "airflow_provider_cfai.hooks.cloudflare_ai; "
        "print('pydantic_ai' in sys.modules, 'airflow_provider_cfai.operators.batch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout

    assert out.strip().splitlines()[-1] == "False True"
