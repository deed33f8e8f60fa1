"""Finetune asset URIs, their registration with Airflow, and CreateFinetuneOperator's asset events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import Asset, AssetAlias

from airflow_provider_cfai.adapter_factory import write_lora_adapter
from airflow_provider_cfai.assets import FINETUNES_ALIAS, SCHEME, finetune_asset, finetune_uri, sanitize_uri
from airflow_provider_cfai.exceptions import CloudflareInputError
from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator, UploadFinetuneAssetsOperator

ACCOUNT = "0123456789abcdef0123456789abcdef"
MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("support-bot", "/finetunes/support-bot"),
        ("my bot", "/finetunes/my%20bot"),
        ("team/bot", "/finetunes/team%2Fbot"),
        ("ünï", "/finetunes/%C3%BCn%C3%AF"),
    ],
    ids=["plain", "space", "slash", "unicode"],
)
def test_finetune_uri_quotes_the_whole_name_into_one_segment(name: str, path: str) -> None:
    assert finetune_uri(ACCOUNT, name) == f"{SCHEME}://{ACCOUNT}{path}"


def test_finetune_uri_lowercases_the_account_and_rejects_a_wrong_one() -> None:
    assert finetune_uri(ACCOUNT.upper(), "bot") == finetune_uri(ACCOUNT, "bot")
    with pytest.raises(ValueError, match="32-hex-character"):
        finetune_uri("not-an-account", "bot")


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        (f"{SCHEME}://{ACCOUNT.upper()}/finetunes/bot", f"{SCHEME}://{ACCOUNT}/finetunes/bot"),
        (f"{SCHEME.upper()}://{ACCOUNT}/finetunes/bot/", f"{SCHEME}://{ACCOUNT}/finetunes/bot"),
        (f"{SCHEME}://{ACCOUNT}/finetunes/my bot", f"{SCHEME}://{ACCOUNT}/finetunes/my%20bot"),
        (f"{SCHEME}://{ACCOUNT}/finetunes/team%2fbot#x", f"{SCHEME}://{ACCOUNT}/finetunes/team%2Fbot"),
    ],
    ids=["upper-account", "upper-scheme-trailing-slash", "unquoted-space", "lower-hex-escape-fragment"],
)
def test_airflow_normalises_finetune_uris_with_the_registered_handler(written: str, canonical: str) -> None:
    assert Asset(uri=written).uri == canonical


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"{SCHEME}://my-account/finetunes/bot", "32-hex-character account ID"),
        (f"{SCHEME}://{ACCOUNT}/models/bot", "the path must be /finetunes/<name>"),
        (f"{SCHEME}://{ACCOUNT}/finetunes/team/bot", "a '/' in it as %2F"),
        (f"{SCHEME}://{ACCOUNT}/finetunes/%20", "the path must be"),
        (f"{SCHEME}://{ACCOUNT}/finetunes/bot?v=2", "no query string"),
        (f"{SCHEME}://user@{ACCOUNT}/finetunes/bot", "no user, password or port"),
    ],
    ids=["bad-account", "not-finetunes", "unquoted-slash", "blank-name", "query", "user"],
)
def test_a_malformed_finetune_uri_fails_the_dag_with_the_fix(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Asset(uri=uri)


def test_finetune_asset_is_named_by_its_uri_so_dags_and_events_meet() -> None:
    asset = finetune_asset(account_id=ACCOUNT.upper(), finetune_name="my bot")

    assert asset.name == asset.uri == f"{SCHEME}://{ACCOUNT}/finetunes/my%20bot"
    assert Asset(uri=asset.uri) == asset


def test_providers_manager_registers_handler_factory_and_openlineage_converter() -> None:
    from airflow_provider_cfai.lineage import asset_to_openlineage

    try:  # what tasks and DAG parsing consult on 3.2+
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime as Manager
    except ImportError:  # Airflow 3.1
        from airflow.providers_manager import ProvidersManager as Manager

    manager = Manager()

    assert manager.asset_uri_handlers[SCHEME] is sanitize_uri
    assert manager.asset_factories[SCHEME] is finetune_asset
    assert manager.asset_to_openlineage_converters[SCHEME] is asset_to_openlineage


# -- CreateFinetuneOperator ----------------------------------------------------------------------


def create(**kwargs: Any) -> CreateFinetuneOperator:
    kwargs.setdefault("task_id", "create")
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("finetune_name", "bot")
    return CreateFinetuneOperator(**kwargs)


def aliases(op: CreateFinetuneOperator) -> list[str]:
    return [outlet.name for outlet in op.outlets if isinstance(outlet, AssetAlias)]


def test_operator_puts_the_default_alias_in_its_outlets_without_an_outlets_argument() -> None:
    assert aliases(create()) == [FINETUNES_ALIAS]


def test_asset_alias_renames_or_disables_the_alias_and_keeps_other_outlets() -> None:
    other = Asset(uri="s3://bucket/report.json")

    renamed = create(asset_alias="support-finetunes", outlets=[other])
    disabled = create(asset_alias=None, outlets=[other])
    given = create(asset_alias=AssetAlias("a"), outlets=[AssetAlias("a")])

    assert aliases(renamed) == ["support-finetunes"]
    assert other in renamed.outlets
    assert disabled.outlets == [other]
    assert aliases(given) == ["a"]  # not added twice


@pytest.mark.parametrize("alias", ["", "  ", 3, Asset(uri="s3://bucket/x")], ids=["empty", "blank", "int", "asset"])
def test_a_wrong_asset_alias_is_rejected_when_the_dag_is_parsed(alias: Any) -> None:
    with pytest.raises(CloudflareInputError, match="asset_alias must be an AssetAlias, an alias name or None"):
        create(asset_alias=alias)


def run_with_events(op: CreateFinetuneOperator) -> tuple[str, list[Any]]:
    """Execute ``op`` with the outlet-event accessors a task run gets; returns the ID and alias events."""
    from airflow.sdk.execution_time.context import OutletEventAccessors

    events = OutletEventAccessors()
    finetune_id = op.execute(context={"outlet_events": events})  # type: ignore[typeddict-item]
    alias_events = [event for accessor in events._dict.values() for event in accessor.asset_alias_events]
    return finetune_id, alias_events


def test_created_finetune_event_carries_its_uri_id_name_and_model(emulator: Any, tmp_path: Path) -> None:
    adapter = write_lora_adapter(tmp_path / "adapter")

    finetune_id, (event,) = run_with_events(create(finetune_name="my bot", adapter=str(adapter)))

    assert event.source_alias_name == FINETUNES_ALIAS
    assert event.dest_asset_key.uri == finetune_uri(emulator.account_id, "my bot")
    assert event.extra == {
        "finetune_id": finetune_id,
        "finetune_name": "my bot",
        "model": MODEL,
        "account_id": emulator.account_id,
        "created": True,
        "adapter": str(adapter),
    }


def test_reuse_emits_an_event_only_when_it_uploaded_an_adapter(emulator: Any, tmp_path: Path) -> None:
    first_id, _ = run_with_events(create())
    adapter = write_lora_adapter(tmp_path / "adapter")

    _, without_upload = run_with_events(create())
    second_id, (with_upload,) = run_with_events(create(adapter=str(adapter)))

    assert without_upload == []
    assert second_id == first_id
    assert with_upload.extra["created"] is False
    assert with_upload.extra["adapter"] == str(adapter)


def test_a_create_without_adapter_emits_nothing_the_upload_emits_the_event(emulator: Any, tmp_path: Path) -> None:
    adapter = write_lora_adapter(tmp_path / "adapter")
    finetune_id, at_create = run_with_events(create(finetune_name="two-step"))
    upload = UploadFinetuneAssetsOperator(task_id="upload", finetune_id=finetune_id, adapter=str(adapter))

    _, (event,) = run_with_events(upload)  # type: ignore[arg-type]

    assert at_create == []  # no files yet: the finetune could not serve (3039)
    assert aliases(upload) == [FINETUNES_ALIAS]
    assert event.dest_asset_key.uri == finetune_uri(emulator.account_id, "two-step")
    assert event.extra == {
        "finetune_id": finetune_id,
        "finetune_name": "two-step",
        "model": MODEL,
        "account_id": emulator.account_id,
        "created": False,
        "adapter": str(adapter),
    }
    silent = UploadFinetuneAssetsOperator(task_id="u2", finetune_id=finetune_id, adapter=str(adapter), asset_alias=None)
    assert run_with_events(silent)[1] == []  # type: ignore[arg-type]


def test_asset_alias_none_emits_nothing(emulator: Any, tmp_path: Path) -> None:
    adapter = write_lora_adapter(tmp_path / "adapter")
    _, events = run_with_events(create(asset_alias=None, adapter=str(adapter)))

    assert events == []
    assert len(emulator.finetunes()) == 1


def test_execute_without_outlet_events_still_returns_the_id(emulator: Any) -> None:
    finetune_id = create().execute(context={})  # type: ignore[arg-type]

    assert [f["id"] for f in emulator.finetunes()] == [finetune_id]
