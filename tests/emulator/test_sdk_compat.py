"""Cloudflare's official Python SDK, pointed at the emulator, works for every finetune call.

The SDK is generated from Cloudflare's OpenAPI document, so this checks the emulator against a
second, independent reading of the API (paths, query names such as ``orderBy``, multipart layout).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

cloudflare = pytest.importorskip("cloudflare")

LORA_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


@pytest.fixture
def client(emu: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # The SDK adds X-Auth-* headers from these if set; the test must see the token scheme only.
    for name in ("CLOUDFLARE_API_KEY", "CLOUDFLARE_EMAIL", "CLOUDFLARE_API_USER_SERVICE_KEY", "CLOUDFLARE_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    sdk = cloudflare.Cloudflare(api_token=emu.token, base_url=emu.base_url, max_retries=0)
    yield sdk
    sdk.close()


def test_sdk_creates_and_lists_finetunes(client: Any, emu: Any) -> None:
    created = client.ai.finetunes.create(
        account_id=emu.account_id, model=LORA_MODEL, name="sdk-made", description="via SDK"
    )

    listed = client.ai.finetunes.list(account_id=emu.account_id)

    assert created.name == "sdk-made"
    assert created.public is False
    assert created.created_at.tzinfo is not None
    assert [f["id"] for f in emu.finetunes()] == [created.id]
    # The SDK types the result as one object (the spec); the emulator's array arrives as a list.
    assert [item.id for item in listed] == [created.id]
    assert listed[0].description == "via SDK"


def test_sdk_uploads_an_asset(client: Any, emu: Any) -> None:
    created = client.ai.finetunes.create(account_id=emu.account_id, model=LORA_MODEL, name="sdk-upload")
    content = b'{"r": 8, "lora_alpha": 16, "model_type": "mistral"}'

    answer = client.ai.finetunes.assets.create(
        created.id, account_id=emu.account_id, file=("adapter_config.json", content), file_name="adapter_config.json"
    )

    assert answer.success is True
    assets = emu.finetunes()[0]["assets"]
    assert assets == {"adapter_config.json": {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}}


def test_sdk_lists_public_finetunes_with_paging_and_ordering(client: Any, emu: Any) -> None:
    page = client.ai.finetunes.public.list(account_id=emu.account_id, limit=5, offset=40, order_by="name")

    items = list(page)

    assert len(items) == 5
    assert all(item.public and item.name.startswith("cf-public-") for item in items)
    assert [item.name for item in items] == sorted(item.name for item in items)
    (request,) = emu.state()["requests"]
    assert request["status"] == 200


def test_sdk_gets_authentication_error_for_a_wrong_token(emu: Any) -> None:
    wrong = cloudflare.Cloudflare(api_token="not-the-token", base_url=emu.base_url, max_retries=0)

    with pytest.raises(cloudflare.AuthenticationError) as caught:
        wrong.ai.finetunes.list(account_id=emu.account_id)
    wrong.close()

    assert caught.value.status_code == 401
    assert caught.value.body["errors"] == [{"code": 10000, "message": "Authentication error"}]


def test_sdk_gets_bad_request_error_for_a_model_without_lora(client: Any, emu: Any) -> None:
    with pytest.raises(cloudflare.BadRequestError) as caught:
        client.ai.finetunes.create(account_id=emu.account_id, model="@cf/meta/llama-3.1-70b-instruct", name="x")

    assert "does not support LoRA" in caught.value.body["errors"][0]["message"]
    assert emu.finetunes() == []


def test_sdk_gets_not_found_error_for_a_wrong_account(client: Any) -> None:
    with pytest.raises(cloudflare.NotFoundError) as caught:
        client.ai.finetunes.list(account_id="0000000000000000000000000000dead")

    assert caught.value.body["errors"][0]["code"] == 7003
