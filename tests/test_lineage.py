"""OpenLineage: datasets the operators report, through the OpenLineage provider; and its absence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_cfai.adapter_factory import write_lora_adapter
from airflow_provider_cfai.lineage import location_dataset_name
from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator, UploadFinetuneAssetsOperator
from airflow_provider_cfai.operators.inference import WorkersAIRunOperator

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
SCHEME = "cloudflare-workers-ai"


def extract(task: Any) -> Any:
    """What the OpenLineage listener gets for a task that succeeded (the provider's own extraction)."""
    from airflow.providers.openlineage.extractors.manager import ExtractorManager
    from airflow.utils.state import TaskInstanceState

    return ExtractorManager().extract_metadata(
        dagrun=SimpleNamespace(run_id="manual__test"),
        task=task,
        task_instance_state=TaskInstanceState.SUCCESS,
        task_instance=SimpleNamespace(task=task),
    )


def names(datasets: list[Any]) -> list[tuple[str, str]]:
    return [(d.namespace, d.name) for d in datasets]


def symlinks(dataset: Any) -> list[str]:
    return [identifier.name for identifier in dataset.facets["symlinks"].identifiers]


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    return write_lora_adapter(tmp_path / "adapter")


@pytest.fixture
def finetune_id(emulator: Any, adapter: Path) -> str:
    op = CreateFinetuneOperator(task_id="create", model=MODEL, finetune_name="my bot", adapter=str(adapter))
    return op.execute(context={})  # type: ignore[arg-type, no-any-return]


def test_create_reports_the_adapter_folder_in_and_the_finetune_out(emulator: Any, adapter: Path) -> None:
    op = CreateFinetuneOperator(task_id="create", model=MODEL, finetune_name="my bot", adapter=str(adapter))
    finetune_id = op.execute(context={})  # type: ignore[arg-type]

    lineage = extract(op)

    account = emulator.account_id
    assert names(lineage.inputs) == [("file", str(adapter))]
    assert names(lineage.outputs) == [(f"{SCHEME}://{account}", "finetunes/my%20bot")]
    assert symlinks(lineage.outputs[0]) == [f"finetunes/{finetune_id}"]


def test_create_without_adapter_reports_only_the_finetune(emulator: Any) -> None:
    op = CreateFinetuneOperator(task_id="create", model=MODEL, finetune_name="bare")
    op.execute(context={})  # type: ignore[arg-type]

    lineage = extract(op)

    assert lineage.inputs == []
    assert names(lineage.outputs) == [(f"{SCHEME}://{emulator.account_id}", "finetunes/bare")]


def test_upload_by_id_names_the_finetune_like_create_does(emulator: Any, finetune_id: str, adapter: Path) -> None:
    op = UploadFinetuneAssetsOperator(task_id="upload", finetune_id=finetune_id, adapter=str(adapter))
    op.execute(context={})  # type: ignore[arg-type]
    requests_before = len(emulator.state()["requests"])

    lineage = extract(op)

    assert len(emulator.state()["requests"]) == requests_before  # execute already read the finetune
    assert names(lineage.inputs) == [("file", str(adapter))]
    assert names(lineage.outputs) == [(f"{SCHEME}://{emulator.account_id}", "finetunes/my%20bot")]
    assert symlinks(lineage.outputs[0]) == [f"finetunes/{finetune_id}"]


@pytest.mark.parametrize("by", ["id", "name"])
def test_inference_reports_the_model_and_the_finetune_as_inputs(emulator: Any, finetune_id: str, by: str) -> None:
    op = WorkersAIRunOperator(
        task_id="run", model=MODEL, inputs={"prompt": "hi"}, lora=finetune_id if by == "id" else "my bot"
    )
    op.execute(context={})  # type: ignore[arg-type]

    lineage = extract(op)

    namespace = f"{SCHEME}://{emulator.account_id}"
    assert names(lineage.inputs) == [(namespace, f"models/{MODEL}"), (namespace, "finetunes/my%20bot")]
    assert lineage.outputs == []


def test_inference_without_lora_reports_only_the_model(emulator: Any) -> None:
    op = WorkersAIRunOperator(task_id="run", model=MODEL, inputs={"prompt": "hi"})
    op.execute(context={})  # type: ignore[arg-type]

    assert names(extract(op).inputs) == [(f"{SCHEME}://{emulator.account_id}", f"models/{MODEL}")]


def test_a_failed_name_lookup_leaves_the_finetune_out_after_one_try(emulator: Any, finetune_id: str) -> None:
    op = WorkersAIRunOperator(task_id="run", model=MODEL, inputs={"prompt": "hi"}, lora=finetune_id)
    op.execute(context={})  # type: ignore[arg-type]
    rule = emulator.add_fault(method="GET", path=r"/ai/finetunes$", times=5, status=503)

    lineage = op.get_openlineage_facets_on_complete(None)

    assert lineage is not None
    assert names(lineage.inputs) == [(f"{SCHEME}://{emulator.account_id}", f"models/{MODEL}")]
    assert emulator.fired(rule) == 1  # no retries: lineage must not hold the finished task


def test_finetune_asset_translates_to_the_dataset_the_operators_report(emulator: Any) -> None:
    from airflow.providers.common.compat.openlineage.utils.utils import translate_airflow_asset

    from airflow_provider_cfai.assets import finetune_asset

    op = CreateFinetuneOperator(task_id="create", model=MODEL, finetune_name="team/bot")
    op.execute(context={})  # type: ignore[arg-type]

    dataset = translate_airflow_asset(finetune_asset(account_id=emulator.account_id, finetune_name="team/bot"), None)

    assert dataset is not None
    assert names([dataset]) == names(extract(op).outputs)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("s3://AKIA:secret@bucket/adapters/v1/?X-Amz-Signature=abc", ("s3://bucket", "adapters/v1")),
        ("gs://bucket/adapters/v1", ("gs://bucket", "adapters/v1")),
        ("simplecache::s3://bucket/adapters/v1", ("s3://bucket", "adapters/v1")),
        ("file:///data/adapters/v1", ("file", "/data/adapters/v1")),
    ],
    ids=["s3-with-credentials", "gcs", "chained", "file-url"],
)
def test_object_storage_adapter_folders_are_named_like_openlineage_names_storage(
    source: str, expected: tuple[str, str]
) -> None:
    assert location_dataset_name(source) == expected


def test_object_storage_path_is_named_without_its_connection_id_or_touching_storage() -> None:
    from airflow.sdk import ObjectStoragePath

    local = ObjectStoragePath("file:///data/adapters/v1", conn_id="fs_default")
    s3 = ObjectStoragePath("s3://aws_default@bucket/adapters/v1")  # no S3 filesystem installed here

    assert "fs_default@" in str(local)
    assert location_dataset_name(local) == ("file", "/data/adapters/v1")
    assert location_dataset_name(s3) == ("s3://bucket", "adapters/v1")


@pytest.mark.parametrize(
    "source", [object(), ["s3://bucket/a.jsonl"], {"prompt": "hi"}], ids=["object", "list", "dict"]
)
def test_a_value_that_names_no_location_gives_no_dataset(source: Any) -> None:
    assert location_dataset_name(source) is None


def test_batch_lineage_adds_its_input_and_output_files(emulator: Any, tmp_path: Path) -> None:
    from airflow_provider_cfai.lineage import inference_lineage

    lineage = inference_lineage(
        conn_id="cloudflare_ai_default",
        account_id=None,
        model=MODEL,
        lora="my bot",
        inputs=str(tmp_path / "prompts.jsonl"),
        output="s3://evals/run-42/results.jsonl",
    )

    namespace = f"{SCHEME}://{emulator.account_id}"
    assert lineage is not None
    assert names(lineage.inputs) == [
        (namespace, f"models/{MODEL}"),
        (namespace, "finetunes/my%20bot"),
        ("file", str(tmp_path / "prompts.jsonl")),
    ]
    assert names(lineage.outputs) == [("s3://evals", "run-42/results.jsonl")]


def test_relative_local_folder_is_reported_by_its_absolute_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)

    assert location_dataset_name("adapters/v1") == ("file", str(tmp_path / "adapters/v1"))


# -- without the OpenLineage provider --------------------------------------------------------------


@pytest.fixture
def no_openlineage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every ``import openlineage...`` / ``airflow.providers.openlineage...`` fail, as if uninstalled."""
    for name in [*sys.modules, "openlineage", "airflow.providers.openlineage"]:
        if name.split(".")[0] == "openlineage" or name.startswith("airflow.providers.openlineage"):
            monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError):
        import airflow.providers.openlineage.extractors  # noqa: F401


def test_without_the_provider_the_operators_work_and_report_nothing(
    no_openlineage: None, emulator: Any, adapter: Path
) -> None:
    create = CreateFinetuneOperator(task_id="create", model=MODEL, finetune_name="bot", adapter=str(adapter))
    finetune_id = create.execute(context={})  # type: ignore[arg-type]
    upload = UploadFinetuneAssetsOperator(task_id="upload", finetune_id=finetune_id, adapter=str(adapter))
    run = WorkersAIRunOperator(task_id="run", model=MODEL, inputs={"prompt": "hi"}, lora=finetune_id)
    upload.execute(context={})  # type: ignore[arg-type]
    answer = run.execute(context={})  # type: ignore[arg-type]
    lookup = emulator.add_fault(method="GET", path=r"/ai/finetunes$", times=5, status=503)

    reported = [op.get_openlineage_facets_on_complete(None) for op in (create, upload, run)]

    assert "bot" in answer["response"]
    assert reported == [None, None, None]
    assert emulator.fired(lookup) == 0  # no look-up is spent on lineage nobody receives


PROBE = """
import json, sys
import airflow.sdk
before = set(sys.modules)
import airflow_provider_cfai.operators.finetune, airflow_provider_cfai.operators.inference
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_operator_modules_import_neither_openlineage_nor_the_lineage_module() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True).stdout
    imported = json.loads(out.strip().splitlines()[-1])

    assert "airflow_provider_cfai.operators.finetune" in imported  # the probe really imported them
    assert [m for m in imported if "openlineage" in m or m == "airflow_provider_cfai.lineage"] == []
