"""get_provider_info() against the schema shipped with the installed Airflow, and the real CLI."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import airflow_provider_cfai
from airflow_provider_cfai import get_provider_info
from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook


def _import_path(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _connection_type(info: dict[str, Any], conn_type: str) -> dict[str, Any]:
    (conn,) = [c for c in info["connection-types"] if c["connection-type"] == conn_type]
    return conn


def test_provider_info_validates_against_airflows_own_schema() -> None:
    import airflow
    import jsonschema

    schema_path = Path(airflow.__file__).with_name("provider_info.schema.json")
    schema = json.loads(schema_path.read_text())

    jsonschema.validate(get_provider_info(), schema)


def test_package_name_matches_the_distribution() -> None:
    from importlib.metadata import distribution

    info = get_provider_info()

    assert info["package-name"] == "airflow-provider-cfai"
    assert distribution(info["package-name"]).version == airflow_provider_cfai.__version__
    assert info["versions"] == [airflow_provider_cfai.__version__]


def test_every_declared_class_and_module_imports() -> None:
    info = get_provider_info()

    conn = _connection_type(info, "cloudflare_ai")
    assert _import_path(conn["hook-class-name"]) is CloudflareAIHook
    assert conn["connection-type"] == CloudflareAIHook.conn_type
    for link in info["extra-links"]:
        assert _import_path(link)
    for group in ("hooks", "operators"):
        for entry in info[group]:
            for module in entry["python-modules"]:
                importlib.import_module(module)


def test_conn_fields_are_exactly_the_extras_the_hook_reads(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    conn = _connection_type(get_provider_info(), "cloudflare_ai")
    declared = set(conn["conn-fields"])
    read: set[str] = set()

    class Recording(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            read.add(key)
            return super().get(key, default)

    import airflow_provider_cfai.hooks._connection as module

    original = module._extras
    monkeypatch.setattr(module, "_extras", lambda raw, conn_type: Recording(original(raw, conn_type)))
    CloudflareAIHook().settings  # noqa: B018 - reading the settings is the point

    assert declared == read - {"proxies", "verify"}  # transport extras are JSON-only, not form fields


def test_ui_field_behaviour_hides_unused_fields_and_relabels() -> None:
    behaviour = CloudflareAIHook.get_ui_field_behaviour()

    assert set(behaviour["hidden_fields"]) == {"schema", "port"}
    assert behaviour["relabeling"] == {"login": "Account ID", "password": "API Token", "host": "API base URL"}
    assert behaviour["placeholders"]["host"] == "https://api.cloudflare.com/client/v4"


def test_api_key_is_a_password_field() -> None:
    conn = _connection_type(get_provider_info(), "cloudflare_ai")

    assert conn["conn-fields"]["api_key"]["schema"]["format"] == "password"
    assert conn["conn-fields"]["email"]["schema"].get("format") != "password"


def _airflow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    airflow = Path(sys.executable).with_name("airflow")
    return subprocess.run([str(airflow), *args], env=env, capture_output=True, text=True, timeout=300)


def test_airflow_cli_lists_the_provider_and_its_hook(airflow_db: Path) -> None:
    env = os.environ.copy()

    providers = _airflow("providers", "list", "--output", "json", env=env)
    hooks = _airflow("providers", "hooks", "--output", "json", env=env)

    assert providers.returncode == 0, providers.stderr
    assert "airflow-provider-cfai" in providers.stdout
    assert hooks.returncode == 0, hooks.stderr
    assert "cloudflare_ai" in hooks.stdout
    assert "DeprecationWarning" not in providers.stderr + hooks.stderr


def test_airflow_connections_test_succeeds_against_the_emulator(airflow_db: Path, emulator: Any) -> None:
    env = {
        **os.environ,
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT": emulator.connection_json(),
    }

    result = _airflow("connections", "test", "cloudflare_ai_default", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Connection success!" in result.stdout
    assert emulator.token not in result.stdout + result.stderr


def test_airflow_connections_test_reports_a_wrong_token(airflow_db: Path, emulator: Any) -> None:
    conn = json.loads(emulator.connection_json())
    conn["password"] = "definitely-wrong-token"
    env = {
        **os.environ,
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT": json.dumps(conn),
    }

    result = _airflow("connections", "test", "cloudflare_ai_default", env=env)

    assert "Connection failed!" in result.stdout
    assert "verifying the API token" in result.stdout
    assert "definitely-wrong-token" not in result.stdout + result.stderr
