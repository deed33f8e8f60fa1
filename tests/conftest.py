"""Shared fixtures: an isolated Airflow home, a migrated SQLite metadata DB, the emulator, hooks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook
    from airflow_provider_cfai.testing import RunningEmulator

from connections import connection_json

pytest_plugins = ("airflow_provider_cfai.pytest_plugin", "redis_server")

ROOT = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="cfai-tests-airflow-"))


def pytest_configure(config: pytest.Config) -> None:
    # Airflow reads its configuration once, at first import: it must point at a private home and
    # SQLite DB before any test module imports it.
    os.environ.update(
        {
            "AIRFLOW_HOME": str(_AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags_examples"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        }
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def airflow_db(airflow_home: Path) -> Path:
    """A migrated SQLite metadata DB, made once per session with Airflow's own CLI."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return airflow_home / "airflow.db"


@pytest.fixture
def emulator(cloudflare_ai_emulator: RunningEmulator) -> RunningEmulator:
    """The session's emulator, reset, with ``cloudflare_ai_default`` pointing at it."""
    return cloudflare_ai_emulator


@pytest.fixture
def make_hook(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Build hooks on a fresh connection with the given extras (fast retries by default)."""
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    hooks: list[CloudflareAIHook] = []

    def factory(conn_id: str = "cfai_test", **extra: Any) -> CloudflareAIHook:
        extra.setdefault("max_retries", 3)
        extra.setdefault("retry_budget", 20)
        extra.setdefault("timeout", 10)
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", connection_json(emulator, **extra))
        hook = CloudflareAIHook(cloudflare_conn_id=conn_id)
        hooks.append(hook)
        return hook

    yield factory
    for hook in hooks:
        if "session" in hook.__dict__:
            hook.session.close()


@pytest.fixture
def hook(make_hook: Any) -> CloudflareAIHook:
    return make_hook()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _fresh_rate_limit_gates(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Each test starts with no remembered rate-limit window: the gates are process-wide, and the
    host-wide state files live in a directory of the test's own (child processes inherit it)."""
    from airflow_provider_cfai.hooks import _host, _pacing

    monkeypatch.setenv(_host.STATE_DIR_ENV, str(tmp_path_factory.mktemp("rate-limit-state")))
    _pacing._GATES.clear()
    yield
    _pacing._GATES.clear()


@pytest.fixture(autouse=True)
def _fresh_model_catalog_cache() -> Iterator[None]:
    """Each test reads the model catalog anew (the hook caches it per process, per account)."""
    from airflow_provider_cfai.hooks import _catalog

    _catalog.CACHE.clear()
    yield
    _catalog.CACHE.clear()


@pytest.fixture
def emulator_with_legacy_key(emulator: RunningEmulator) -> tuple[str, str]:
    """Switch on the email + Global API key scheme; returns ``(email, api_key)``."""
    email, api_key = "ml-team@example.com", "legacy-global-api-key-5f3a"
    emulator.configure(email=email, api_key=api_key)
    return email, api_key


@pytest.fixture
def read_logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Any:
    """Everything logged so far: stdlib records and what structlog (the Task SDK's logger) printed."""
    import logging

    caplog.set_level(logging.DEBUG)
    printed: list[str] = []

    def read() -> str:
        out, err = capfd.readouterr()
        printed.append(out + err)
        return caplog.text + "".join(printed)

    return read
