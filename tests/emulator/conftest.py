"""Fixtures for the emulator's own tests: one emulator process per session, reset before each test.

The process keeps its data in a known directory (so tests can look at temp and asset files) and
accepts the legacy email + key scheme.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import requests

from airflow_provider_cfai.testing import RunningEmulator, run_emulator

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

LORA_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
OTHER_LORA_MODEL = "@cf/google/gemma-7b-it-lora"
PLAIN_MODEL = "@cf/meta/llama-3.1-70b-instruct"
EMAIL = "emulator-tests@example.com"
API_KEY = "legacy-global-api-key-0123456789abcdef"


class Api:
    """``requests`` against the emulator's account, Bearer-authenticated unless told otherwise."""

    def __init__(self, emulator: RunningEmulator) -> None:
        self.emulator = emulator
        self.session = requests.Session()
        self.session.trust_env = False  # a proxy in the environment must not see loopback calls
        self.auth = {"Authorization": f"Bearer {emulator.token}"}

    def url(self, path: str) -> str:
        """``path`` is relative to the account unless it starts with ``/user`` or ``/accounts``."""
        if path.startswith(("/user", "/accounts")):
            return self.emulator.base_url + path
        return f"{self.emulator.base_url}/accounts/{self.emulator.account_id}{path}"

    def request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> requests.Response:
        headers = {**(self.auth if auth else {}), **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.url(path), headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def create(self, name: str = "ft", model: str = LORA_MODEL, **fields: Any) -> dict[str, Any]:
        response = self.post("/ai/finetunes", json={"name": name, "model": model, **fields})
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["result"]
        return result

    def upload(
        self, finetune: str, file_name: str, content: bytes = b"{}", *, field_first: bool = True
    ) -> requests.Response:
        # requests sends `data` fields before `files`; putting file_name among `files` (no filename)
        # lets a test choose the order of the two parts.
        name_part = ("file_name", (None, file_name))
        file_part = ("file", ("blob", content, "application/octet-stream"))
        parts = [name_part, file_part] if field_first else [file_part, name_part]
        return self.post(f"/ai/finetunes/{finetune}/finetune-assets", files=parts)

    @staticmethod
    def error_of(response: requests.Response) -> dict[str, Any]:
        """The single Cloudflare error item of a failure envelope (checks the envelope on the way)."""
        body = response.json()
        assert body["success"] is False
        assert body["result"] is None
        assert body["messages"] == []
        (item,) = body["errors"]
        error: dict[str, Any] = item
        return error

    def complete(self, name: str = "ft", model: str = LORA_MODEL) -> dict[str, Any]:
        """A finetune with both adapter files uploaded."""
        finetune = self.create(name, model)
        for file_name in ("adapter_config.json", "adapter_model.safetensors"):
            assert self.upload(finetune["id"], file_name).status_code == 200
        return finetune


@pytest.fixture(scope="session")
def emulator_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulator-data")


@pytest.fixture(scope="session")
def emulator_server(emulator_data_dir: Path) -> Iterator[RunningEmulator]:
    with run_emulator(data_dir=emulator_data_dir, email=EMAIL, api_key=API_KEY) as emulator:
        yield emulator


@pytest.fixture
def emu(emulator_server: RunningEmulator) -> RunningEmulator:
    emulator_server.reset(settings=True)
    return emulator_server


@pytest.fixture
def api(emu: RunningEmulator) -> Iterator[Api]:
    client = Api(emu)
    yield client
    client.session.close()
