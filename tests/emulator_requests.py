"""What tests read from, and put into, the emulator's account without going through the hook."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from airflow_provider_cfai.testing import RunningEmulator

FILL_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


def calls(emulator: RunningEmulator, method: str, route: str) -> list[dict[str, Any]]:
    """The requests of the emulator's log with this method and route template."""
    requests_log: list[dict[str, Any]] = emulator.state()["requests"]
    return [r for r in requests_log if r["method"] == method and r["route"] == route]


def fill(emulator: RunningEmulator, count: int, *, model: str = FILL_MODEL) -> None:
    """Give the account ``count`` finetunes (``old-0``, ``old-1``, ...), straight through the API."""
    with requests.Session() as session:
        session.trust_env = False
        url = f"{emulator.base_url}/accounts/{emulator.account_id}/ai/finetunes"
        headers = {"Authorization": f"Bearer {emulator.token}"}
        for n in range(count):
            response = session.post(url, json={"name": f"old-{n}", "model": model}, headers=headers)
            assert response.status_code == 200, response.text
