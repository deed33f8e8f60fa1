"""``airflow_provider_cfai.testing`` works without pytest; the pytest plugin provides the fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_cfai.testing import RunningEmulator, point_connection_at

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter where importing pytest fails the way it does when it is not installed.
WITHOUT_PYTEST = """
import importlib.abc, json, sys

class NoPytest(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pytest", "_pytest"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoPytest())
try:
    import pytest
except ModuleNotFoundError:
    blocked = True
else:
    blocked = False

from airflow_provider_cfai.testing import point_connection_at, run_emulator

class Env(dict):
    def setenv(self, name, value):
        self[name] = value

with run_emulator() as emulator:
    state = emulator.state()
    env = Env()
    point_connection_at(emulator, env)
print(json.dumps({
    "blocked": blocked,
    "finetunes": state["finetunes"],
    "conn_host": json.loads(env["AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT"])["host"],
    "base_url": emulator.base_url,
    "pytest_modules": sorted(m for m in sys.modules if m.partition(".")[0] in ("pytest", "_pytest")),
}))
"""


def test_run_emulator_serves_requests_in_a_python_without_pytest(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYTEST], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )

    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["blocked"] is True  # the probe really had no pytest
    assert report["pytest_modules"] == []
    assert report["finetunes"] == []  # one real request to the emulator answered
    assert report["conn_host"] == report["base_url"]


def test_point_connection_at_takes_any_object_with_setenv() -> None:
    class Env(dict[str, str]):
        def setenv(self, name: str, value: str) -> None:
            self[name] = value

    emulator = RunningEmulator("http://127.0.0.1:9/client/v4", account_id="acc", token="tok")
    env = Env()

    point_connection_at(emulator, env, conn_id="my_cf")

    assert json.loads(env["AIRFLOW_CONN_MY_CF"])["host"] == "http://127.0.0.1:9/client/v4"


INNER_TEST = """
import json, os

def test_fixture_points_the_default_connection_at_a_fresh_emulator(cloudflare_ai_emulator):
    conn = json.loads(os.environ["AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT"])
    assert conn["host"] == cloudflare_ai_emulator.base_url
    assert cloudflare_ai_emulator.state()["finetunes"] == []
"""


def test_conftest_plugin_provides_the_emulator_fixture(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # keeps this project's pytest config out
    (tmp_path / "conftest.py").write_text('pytest_plugins = ("airflow_provider_cfai.pytest_plugin",)\n')
    (tmp_path / "test_user.py").write_text(INNER_TEST)

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=180,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 passed" in done.stdout


def test_sdist_includes_only_files_that_exist() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

    include = pyproject["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]

    assert include  # the list is really there
    assert [name for name in include if not (ROOT / name).exists()] == []


def test_license_file_is_the_apache_2_license_the_metadata_declares() -> None:
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["license"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")

    assert declared == "Apache-2.0"
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "9. Accepting Warranty or Additional Liability." in text
    assert "END OF TERMS AND CONDITIONS" in text
