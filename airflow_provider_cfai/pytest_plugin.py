"""pytest fixtures that run the Cloudflare Workers AI emulator for your tests.

Enable the plugin in your ``conftest.py`` (``pip install airflow-provider-cfai[testing]`` brings
pytest) and use the ``cloudflare_ai_emulator`` fixture: it starts one emulator process per test
session, resets it before each test, and points the ``cloudflare_ai_default`` Airflow connection at
it::

    # conftest.py
    pytest_plugins = ("airflow_provider_cfai.pytest_plugin",)

    # test_my_dag.py
    def test_dag_registers_one_finetune(cloudflare_ai_emulator):
        my_dag.test()
        (finetune,) = cloudflare_ai_emulator.finetunes()
        assert set(finetune["assets"]) == {"adapter_config.json", "adapter_model.safetensors"}

    def test_task_survives_a_lost_create_response(cloudflare_ai_emulator):
        cloudflare_ai_emulator.add_fault(path=r"/ai/finetunes$", method="POST", action="drop_after_commit")
        my_dag.test()
        assert len(cloudflare_ai_emulator.finetunes()) == 1

Without pytest, use :func:`airflow_provider_cfai.testing.run_emulator`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from airflow_provider_cfai.testing import RunningEmulator, point_connection_at, run_emulator

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["cloudflare_ai_emulator", "cloudflare_ai_emulator_server"]


@pytest.fixture(scope="session")
def cloudflare_ai_emulator_server() -> Iterator[RunningEmulator]:
    """One emulator process for the whole test session (use ``cloudflare_ai_emulator`` in tests)."""
    with run_emulator() as emulator:
        yield emulator


@pytest.fixture
def cloudflare_ai_emulator(
    cloudflare_ai_emulator_server: RunningEmulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> RunningEmulator:
    """The session's emulator, reset to its start-up state, with ``cloudflare_ai_default`` aimed at it.

    The host's rate-limit state and model-catalog cache start empty too (a directory of the test's
    own), since the emulator's reset forgets the windows they describe.
    """
    from airflow_provider_cfai.hooks._host import STATE_DIR_ENV

    cloudflare_ai_emulator_server.reset(settings=True)
    point_connection_at(cloudflare_ai_emulator_server, monkeypatch)
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path_factory.mktemp("cfai-host-state")))
    return cloudflare_ai_emulator_server
