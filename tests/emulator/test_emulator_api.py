"""The emulator's Cloudflare API over real HTTP: finetunes, assets, inference, auth, verify, settings."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import requests

from airflow_provider_cfai.testing import run_emulator

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

LORA_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
OTHER_LORA_MODEL = "@cf/google/gemma-7b-it-lora"
PLAIN_MODEL = "@cf/meta/llama-3.1-70b-instruct"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
FILES = ("adapter_config.json", "adapter_model.safetensors")


# -- create ------------------------------------------------------------------------------------------


def test_create_answers_the_finetune_in_a_success_envelope(api: Any) -> None:
    response = api.post("/ai/finetunes", json={"name": "my-adapter", "model": LORA_MODEL})

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["errors"] == []
    assert body["messages"] == []
    result = body["result"]
    assert uuid.UUID(result["id"]).version == 4
    assert TIMESTAMP.fullmatch(result["created_at"])
    assert result["modified_at"] == result["created_at"]
    assert (result["name"], result["model"], result["public"]) == ("my-adapter", LORA_MODEL, False)


def test_create_keeps_description_and_public_flag(api: Any) -> None:
    result = api.create("described", description="rank 8 adapter", public=True)

    assert result["description"] == "rank 8 adapter"
    assert result["public"] is True
    assert api.emulator.finetunes()[0]["description"] == "rank 8 adapter"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"model": LORA_MODEL}, "name", id="missing-name"),
        pytest.param({"model": LORA_MODEL, "name": "   "}, "name", id="blank-name"),
        pytest.param({"model": LORA_MODEL, "name": 7}, "name", id="numeric-name"),
        pytest.param({"name": "x"}, "model", id="missing-model"),
        pytest.param({"name": "x", "model": ""}, "model", id="empty-model"),
        pytest.param({"name": "x", "model": LORA_MODEL, "public": "yes"}, "public", id="string-public"),
        pytest.param({"name": "x", "model": LORA_MODEL, "description": 3}, "description", id="numeric-description"),
    ],
)
def test_create_with_bad_field_is_a_400_naming_the_field(api: Any, body: dict[str, Any], field: str) -> None:
    response = api.post("/ai/finetunes", json=body)

    assert response.status_code == 400
    error = api.error_of(response)
    assert error["code"] == 1002
    assert f"'{field}'" in error["message"]
    assert api.emulator.finetunes() == []


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"], ids=["broken", "array", "not-utf8"])
def test_create_with_a_body_that_is_not_a_json_object_is_a_400(api: Any, raw: bytes) -> None:
    response = api.post("/ai/finetunes", data=raw, headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert api.error_of(response)["code"] == 1001


def test_create_on_a_model_without_lora_support_is_refused(api: Any) -> None:
    response = api.post("/ai/finetunes", json={"name": "x", "model": PLAIN_MODEL})

    assert response.status_code == 400
    message = api.error_of(response)["message"]
    assert message == f"Finetune creation failed: model {PLAIN_MODEL} does not support LoRA"


def test_create_past_the_account_limit_is_refused(api: Any) -> None:
    api.emulator.configure(max_finetunes=2)
    api.create("one")
    api.create("two")

    response = api.post("/ai/finetunes", json={"name": "three", "model": LORA_MODEL})

    assert response.status_code == 400
    assert "limit is 2" in api.error_of(response)["message"]
    assert [f["name"] for f in api.emulator.finetunes()] == ["one", "two"]


def test_duplicate_names_are_allowed_by_default_so_tests_can_count_them(api: Any) -> None:
    first = api.create("same")
    second = api.create("same")

    assert first["id"] != second["id"]
    assert [f["name"] for f in api.emulator.finetunes()] == ["same", "same"]


def test_duplicate_names_are_refused_when_configured(api: Any) -> None:
    api.emulator.configure(duplicate_names="reject")
    api.create("same")

    response = api.post("/ai/finetunes", json={"name": "same", "model": LORA_MODEL})

    assert response.status_code == 400
    assert "already exists" in api.error_of(response)["message"]
    assert len(api.emulator.finetunes()) == 1


# -- list --------------------------------------------------------------------------------------------


def test_list_is_a_flat_array_oldest_first(api: Any) -> None:
    created = [api.create(f"ft-{i}") for i in range(3)]

    body = api.get("/ai/finetunes").json()

    assert body["success"] is True
    assert body["result"] == created


@pytest.mark.parametrize(
    ("shape", "expected"),
    [("array", lambda fts: fts), ("object", lambda fts: fts[0]), ("nested", lambda fts: [fts])],
    ids=["array", "object", "nested"],
)
def test_list_shape_setting_changes_the_result_shape(api: Any, shape: str, expected: Any) -> None:
    created = [api.create("a"), api.create("b")]
    api.emulator.configure(list_shape=shape)

    assert api.get("/ai/finetunes").json()["result"] == expected(created)


def test_list_object_shape_with_no_finetunes_is_null(api: Any) -> None:
    api.emulator.configure(list_shape="object")

    assert api.get("/ai/finetunes").json()["result"] is None


def test_list_sees_a_finetune_created_after_a_previous_list(api: Any) -> None:
    # The list body is cached between writes; a create must invalidate it.
    api.create("first")
    assert len(api.get("/ai/finetunes").json()["result"]) == 1
    api.create("second")

    assert [f["name"] for f in api.get("/ai/finetunes").json()["result"]] == ["first", "second"]


# -- public finetunes --------------------------------------------------------------------------------


def test_public_list_pages_through_the_seeded_finetunes(api: Any) -> None:
    pages = []
    for offset in range(0, 60, 20):
        body = api.get("/ai/finetunes/public", params={"limit": 20, "offset": offset}).json()
        assert "result_info" not in body
        pages.append(body["result"])

    assert [len(page) for page in pages] == [20, 20, 5]
    items = [item for page in pages for item in page]
    assert len({item["id"] for item in items}) == 45
    assert all(item["name"].startswith("cf-public-") and item["public"] is True for item in items)
    assert {item["model"] for item in items} <= set(api.emulator.state()["settings"]["lora_models"])


def test_public_list_defaults_to_twenty(api: Any) -> None:
    assert len(api.get("/ai/finetunes/public").json()["result"]) == 20


def test_public_list_includes_the_accounts_public_finetunes_only(api: Any) -> None:
    api.emulator.configure(public_seed=0)
    shared = api.create("shared", public=True)
    api.create("private")

    assert api.get("/ai/finetunes/public").json()["result"] == [shared]


def test_public_list_orders_by_the_given_column(api: Any) -> None:
    names = [
        item["name"]
        for item in api.get("/ai/finetunes/public", params={"orderBy": "name", "limit": 45}).json()["result"]
    ]

    assert names == sorted(names)
    assert names != [item["name"] for item in api.get("/ai/finetunes/public", params={"limit": 45}).json()["result"]]


def test_public_list_accepts_whole_floats_as_the_sdk_sends_them(api: Any) -> None:
    response = api.get("/ai/finetunes/public", params={"limit": "5.0", "offset": "40.0"})

    assert response.status_code == 200
    assert len(response.json()["result"]) == 5


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 1001}, {"limit": "ten"}, {"limit": 2.5}, {"offset": -1}, {"orderBy": "rank"}],
    ids=["limit-0", "limit-1001", "limit-word", "limit-fraction", "negative-offset", "unknown-column"],
)
def test_public_list_rejects_bad_paging_parameters(api: Any, params: dict[str, Any]) -> None:
    response = api.get("/ai/finetunes/public", params=params)

    assert response.status_code == 400
    error = api.error_of(response)
    assert error["code"] == 1006
    assert next(iter(params)) in error["message"]


# -- assets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field_first", [True, False], ids=["file_name-first", "file-first"])
def test_upload_accepts_the_parts_in_either_order_and_records_size_and_sha256(
    api: Any, emulator_data_dir: Path, field_first: bool
) -> None:
    finetune = api.create()
    content = b'{"r": 8, "lora_alpha": 16}'

    response = api.upload(finetune["id"], "adapter_config.json", content, field_first=field_first)

    assert response.status_code == 200
    assert response.json() == {"success": True}
    (stored,) = api.emulator.finetunes()
    assert stored["assets"] == {
        "adapter_config.json": {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    }
    on_disk = emulator_data_dir / "assets" / finetune["id"] / "adapter_config.json"
    assert on_disk.read_bytes() == content


def test_upload_answers_exactly_success_true_by_default(api: Any) -> None:
    response = api.upload(api.create()["id"], "adapter_config.json")

    assert response.content == b'{"success":true}'


def test_upload_legacy_response_carries_the_asset_record(api: Any) -> None:
    api.emulator.configure(upload_response="legacy")
    finetune = api.create()

    body = api.upload(finetune["id"], "adapter_model.safetensors", b"\0" * 64).json()

    assert body["success"] is True
    result = body["result"]
    assert set(result) == {"id", "finetune_id", "file_name", "bucket_name", "created_at", "modified_at"}
    assert (result["finetune_id"], result["file_name"]) == (finetune["id"], "adapter_model.safetensors")


def test_upload_path_accepts_the_finetune_name(api: Any) -> None:
    finetune = api.create("by-name")

    assert api.upload("by-name", "adapter_config.json").status_code == 200
    assert set(api.emulator.finetunes()[0]["assets"]) == {"adapter_config.json"}
    assert api.emulator.finetunes()[0]["id"] == finetune["id"]


@pytest.mark.parametrize(
    "file_name",
    ["model.bin", "../adapter_config.json", "adapter_config.json/..", "ADAPTER_CONFIG.JSON", "", "../../x"],
)
@pytest.mark.parametrize("field_first", [True, False], ids=["file_name-first", "file-first"])
def test_upload_with_a_wrong_file_name_is_refused_and_nothing_is_written(
    api: Any, emulator_data_dir: Path, file_name: str, field_first: bool
) -> None:
    finetune = api.create()

    response = api.upload(finetune["id"], file_name, b"data", field_first=field_first)

    assert response.status_code == 400
    error = api.error_of(response)
    assert error["code"] == 1007
    assert "adapter_config.json or adapter_model.safetensors" in error["message"]
    assert api.emulator.finetunes()[0]["assets"] == {}
    assert not (emulator_data_dir / "assets" / finetune["id"]).exists()
    assert list((emulator_data_dir / "tmp").iterdir()) == []
    assert not (emulator_data_dir / "x").exists()


def test_upload_to_an_unknown_finetune_is_a_404(api: Any) -> None:
    response = api.upload("no-such-finetune", "adapter_config.json")

    assert response.status_code == 404
    error = api.error_of(response)
    assert error["code"] == 3037
    assert error["message"] == "Finetune no-such-finetune not found"


@pytest.mark.parametrize(
    ("parts", "missing"),
    [
        ([("file_name", (None, "adapter_config.json"))], "file"),
        ([("file", ("blob", b"{}", "application/json"))], "file_name"),
    ],
    ids=["no-file", "no-file_name"],
)
def test_upload_without_a_required_part_is_refused(api: Any, parts: list[Any], missing: str) -> None:
    finetune = api.create()

    response = api.post(f"/ai/finetunes/{finetune['id']}/finetune-assets", files=parts)

    assert response.status_code == 400
    assert api.error_of(response)["message"] == f"Missing multipart part(s): {missing}"
    assert api.emulator.finetunes()[0]["assets"] == {}


def test_upload_that_is_not_multipart_is_refused(api: Any) -> None:
    finetune = api.create()

    response = api.post(f"/ai/finetunes/{finetune['id']}/finetune-assets", json={"file_name": "x"})

    assert response.status_code == 400
    assert "multipart/form-data" in api.error_of(response)["message"]


def test_upload_with_a_truncated_body_is_refused(api: Any) -> None:
    finetune = api.create()
    body = b'--b\r\nContent-Disposition: form-data; name="file_name"\r\n\r\nadapter_config.json\r\n--b\r\n'

    response = api.post(
        f"/ai/finetunes/{finetune['id']}/finetune-assets",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )

    assert response.status_code == 400
    assert api.error_of(response)["code"] == 1007


def test_upload_past_size_limit_is_refused_while_streaming(api: Any, emulator_data_dir: Path) -> None:
    limit = 1024 * 1024
    api.emulator.configure(max_file_bytes=limit)
    finetune = api.create()
    chunk = b"\0" * (256 * 1024)
    head = (
        b'--b\r\nContent-Disposition: form-data; name="file_name"\r\n\r\nadapter_model.safetensors\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
    )

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(64):  # 16 MiB, sixteen times the limit
            yield chunk
        yield b"\r\n--b--\r\n"

    response = api.post(
        f"/ai/finetunes/{finetune['id']}/finetune-assets",
        data=body(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )

    assert response.status_code == 413
    error = api.error_of(response)
    assert error["code"] == 1009
    assert str(limit) in error["message"]
    state = api.emulator.state()
    assert state["finetunes"][0]["assets"] == {}
    (refused,) = state["refused_uploads"]
    # Writing stopped at the limit: nothing past it reached the disk, and the partial file is gone.
    assert refused["bytes_written"] <= limit
    assert list((emulator_data_dir / "tmp").iterdir()) == []
    assert not (emulator_data_dir / "assets" / finetune["id"]).exists()


def test_upload_of_exactly_the_limit_is_accepted(api: Any) -> None:
    api.emulator.configure(max_file_bytes=1000)

    response = api.upload(api.create()["id"], "adapter_model.safetensors", b"x" * 1000)

    assert response.status_code == 200


def test_second_upload_of_a_file_replaces_it_by_default(api: Any) -> None:
    finetune = api.create()
    api.upload(finetune["id"], "adapter_config.json", b"old")

    assert api.upload(finetune["id"], "adapter_config.json", b"newer").status_code == 200
    assert api.emulator.finetunes()[0]["assets"]["adapter_config.json"]["size"] == 5


def test_second_upload_of_a_file_is_a_409_when_assets_are_immutable(api: Any) -> None:
    api.emulator.configure(asset_overwrite="reject")
    finetune = api.create()
    api.upload(finetune["id"], "adapter_config.json", b"old")

    response = api.upload(finetune["id"], "adapter_config.json", b"newer")

    assert response.status_code == 409
    assert "already exists" in api.error_of(response)["message"]
    assert api.emulator.finetunes()[0]["assets"]["adapter_config.json"]["size"] == 3


# -- inference ---------------------------------------------------------------------------------------


def test_run_without_lora_is_deterministic_and_names_the_model(api: Any) -> None:
    first = api.post(f"/ai/run/{PLAIN_MODEL}", json={"prompt": "Hello there"})
    second = api.post(f"/ai/run/{PLAIN_MODEL}", json={"prompt": "Hello there"})

    assert first.status_code == 200
    assert first.json() == second.json()
    assert first.json()["result"]["response"] == f"[{PLAIN_MODEL}] Hello there"


@pytest.mark.parametrize("by", ["id", "name"])
def test_run_with_a_complete_lora_names_model_and_finetune(api: Any, by: str) -> None:
    finetune = api.complete("support-bot")

    response = api.post(f"/ai/run/{LORA_MODEL}", json={"prompt": "Hi", "lora": finetune[by], "raw": True})

    assert response.status_code == 200
    assert response.json()["result"]["response"] == f"[{LORA_MODEL} + support-bot] Hi"


def test_run_with_messages_answers_the_last_user_message(api: Any) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]

    response = api.post(f"/ai/run/{PLAIN_MODEL}", json={"messages": messages})

    assert response.json()["result"]["response"] == f"[{PLAIN_MODEL}] second"


def test_run_with_a_public_lora_works_without_uploads(api: Any) -> None:
    seed = api.get("/ai/finetunes/public", params={"limit": 1}).json()["result"][0]

    response = api.post(f"/ai/run/{seed['model']}", json={"prompt": "Hi", "lora": seed["name"]})

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param({"prompt": "x", "lora": "ghost"}, 400, 3037, id="unknown-lora"),
        pytest.param({"temperature": 0.2}, 400, 5006, id="no-prompt-or-messages"),
        pytest.param({"prompt": 3}, 400, 5006, id="numeric-prompt"),
        pytest.param({"messages": [{"role": "user"}]}, 400, 5006, id="message-without-content"),
    ],
)
def test_run_with_bad_input_is_refused(api: Any, body: dict[str, Any], status: int, code: int) -> None:
    response = api.post(f"/ai/run/{LORA_MODEL}", json=body)

    assert response.status_code == status
    assert api.error_of(response)["code"] == code


def test_run_with_an_unknown_lora_names_it(api: Any) -> None:
    response = api.post(f"/ai/run/{LORA_MODEL}", json={"prompt": "x", "lora": "ghost"})

    assert api.error_of(response)["message"] == "Finetune ghost not found"


@pytest.mark.parametrize("uploaded", [(), ("adapter_config.json",), ("adapter_model.safetensors",)])
def test_run_with_a_finetune_missing_files_is_3039(api: Any, uploaded: tuple[str, ...]) -> None:
    finetune = api.create()
    for file_name in uploaded:
        api.upload(finetune["id"], file_name)

    response = api.post(f"/ai/run/{LORA_MODEL}", json={"prompt": "x", "lora": finetune["id"]})

    assert response.status_code == 400
    assert api.error_of(response) == {"code": 3039, "message": "Finetune is missing required files"}


def test_run_with_lora_on_a_model_without_lora_support_is_405(api: Any) -> None:
    finetune = api.complete()

    response = api.post(f"/ai/run/{PLAIN_MODEL}", json={"prompt": "x", "lora": finetune["id"]})

    assert response.status_code == 405
    assert api.error_of(response)["code"] == 5005


def test_run_with_lora_made_for_another_base_model_is_refused(api: Any) -> None:
    finetune = api.complete(model=LORA_MODEL)

    response = api.post(f"/ai/run/{OTHER_LORA_MODEL}", json={"prompt": "x", "lora": finetune["id"]})

    assert response.status_code == 400
    error = api.error_of(response)
    assert error["code"] == 3038
    assert LORA_MODEL in error["message"]
    assert OTHER_LORA_MODEL in error["message"]


# -- auth --------------------------------------------------------------------------------------------


def test_no_credentials_is_9106(api: Any) -> None:
    response = api.get("/ai/finetunes", auth=False)

    assert response.status_code == 400
    assert api.error_of(response) == {
        "code": 9106,
        "message": "Missing X-Auth-Key, X-Auth-Email or Authorization headers",
    }


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer two words", "token-without-scheme"])
def test_malformed_authorization_header_is_6003_with_an_error_chain(api: Any, value: str) -> None:
    response = api.get("/ai/finetunes", auth=False, headers={"Authorization": value})

    assert response.status_code == 400
    assert api.error_of(response) == {
        "code": 6003,
        "message": "Invalid request headers",
        "error_chain": [{"code": 6111, "message": "Invalid format for Authorization header"}],
    }


def test_wrong_token_is_401_10000_and_is_not_echoed(api: Any) -> None:
    wrong = "wrong-token-that-must-not-be-echoed"

    response = api.get("/ai/finetunes", auth=False, headers={"Authorization": f"Bearer {wrong}"})

    assert response.status_code == 401
    assert api.error_of(response) == {"code": 10000, "message": "Authentication error"}
    assert wrong not in response.text
    assert wrong not in json.dumps(api.emulator.state())


def test_email_and_global_key_are_accepted(api: Any) -> None:
    headers = {"X-Auth-Email": api.emulator.email, "X-Auth-Key": api.emulator.api_key}

    response = api.post("/ai/finetunes", auth=False, headers=headers, json={"name": "legacy", "model": LORA_MODEL})

    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Auth-Email": "someone-else@example.com", "X-Auth-Key": "legacy-global-api-key-0123456789abcdef"},
        {"X-Auth-Email": "emulator-tests@example.com", "X-Auth-Key": "wrong-key"},
    ],
    ids=["wrong-email", "wrong-key"],
)
def test_wrong_email_or_key_is_401_10000(api: Any, headers: dict[str, str]) -> None:
    response = api.get("/ai/finetunes", auth=False, headers=headers)

    assert response.status_code == 401
    assert api.error_of(response)["code"] == 10000
    assert headers["X-Auth-Key"] not in response.text


def test_email_without_key_counts_as_missing_credentials(api: Any) -> None:
    response = api.get("/ai/finetunes", auth=False, headers={"X-Auth-Email": api.emulator.email})

    assert api.error_of(response)["code"] == 9106


def test_email_and_key_can_be_switched_on_at_run_time(api: Any) -> None:
    headers = {"X-Auth-Email": "late@example.com", "X-Auth-Key": "late-key"}
    assert api.get("/ai/finetunes", auth=False, headers=headers).status_code == 401

    api.emulator.configure(email="late@example.com", api_key="late-key")

    assert api.get("/ai/finetunes", auth=False, headers=headers).status_code == 200
    assert "late-key" not in json.dumps(api.emulator.state())


def test_wrong_account_is_7003_naming_the_path(api: Any) -> None:
    response = api.get("/accounts/0000000000000000000000000000dead/ai/finetunes")

    assert response.status_code == 404
    assert api.error_of(response) == {
        "code": 7003,
        "message": "Could not route to /client/v4/accounts/0000000000000000000000000000dead/ai/finetunes, "
        "perhaps your object identifier is invalid?",
    }


def test_unknown_route_is_a_cloudflare_404(api: Any) -> None:
    response = api.get("/ai/finetunes/some-id")

    assert response.status_code == 404
    assert api.error_of(response)["code"] == 7000


def test_inactive_token_is_refused_outside_the_verify_endpoints(api: Any) -> None:
    api.emulator.configure(token_status="disabled")

    assert api.get("/ai/finetunes").status_code == 401
    assert api.get("/tokens/verify").json()["result"]["status"] == "disabled"


# -- token verify ------------------------------------------------------------------------------------


def test_account_token_verifies_only_on_the_account_endpoint(api: Any) -> None:
    account = api.get("/tokens/verify")
    user = api.get("/user/tokens/verify")

    assert account.status_code == 200
    result = account.json()["result"]
    assert result["status"] == "active"
    assert re.fullmatch(r"[0-9a-f]{32}", result["id"])
    assert user.status_code == 401
    assert api.error_of(user) == {"code": 1000, "message": "Invalid API Token"}


def test_user_token_verifies_only_on_the_user_endpoint(api: Any) -> None:
    api.emulator.configure(token_kind="user")

    assert api.get("/user/tokens/verify").status_code == 200
    assert api.error_of(api.get("/tokens/verify"))["code"] == 1000


def test_expired_token_reports_status_and_expiry(api: Any) -> None:
    api.emulator.configure(token_status="expired", token_not_before="2019-01-01T00:00:00Z")

    result = api.get("/tokens/verify").json()["result"]

    assert result["status"] == "expired"
    assert "expires_on" in result
    assert result["not_before"] == "2019-01-01T00:00:00Z"


@pytest.mark.parametrize("path", ["/tokens/verify", "/user/tokens/verify"])
def test_verify_endpoints_refuse_email_and_key(api: Any, path: str) -> None:
    headers = {"X-Auth-Email": api.emulator.email, "X-Auth-Key": api.emulator.api_key}

    response = api.get(path, auth=False, headers=headers)

    assert response.status_code == 401
    assert api.error_of(response)["code"] == 1000


# -- trailing slashes, rate-limit headers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/ai/finetunes/", {}),
        ("POST", "/ai/finetunes/", {"json": {"name": "slash", "model": LORA_MODEL}}),
        ("GET", "/ai/finetunes/public/", {}),
        ("GET", "/tokens/verify/", {}),
        ("GET", "/user/tokens/verify/", {}),
        ("POST", f"/ai/run/{PLAIN_MODEL}/", {"json": {"prompt": "x"}}),
    ],
)
def test_trailing_slashes_are_accepted(api: Any, method: str, path: str, kwargs: dict[str, Any]) -> None:
    if path.startswith("/user"):
        api.emulator.configure(token_kind="user")

    response = api.request(method, path, allow_redirects=False, **kwargs)

    assert response.status_code == 200
    assert response.json()["success"] is True


def test_upload_with_a_trailing_slash_is_accepted(api: Any) -> None:
    finetune = api.create()
    parts = [("file_name", (None, "adapter_config.json")), ("file", ("f", b"{}"))]

    response = api.post(f"/ai/finetunes/{finetune['id']}/finetune-assets/", files=parts, allow_redirects=False)

    assert response.status_code == 200


def test_every_api_response_carries_ratelimit_headers_counting_down(api: Any) -> None:
    api.emulator.configure(rate_limit=50, rate_window=120)

    first = api.get("/ai/finetunes")
    second = api.post("/ai/finetunes", json={})  # an error still counts and still carries the headers

    assert first.headers["Ratelimit-Policy"] == '"default";q=50;w=120'
    assert re.fullmatch(r'"default";r=49;t=(119|120)', first.headers["Ratelimit"])
    assert second.status_code == 400
    assert second.headers["Ratelimit"].startswith('"default";r=48;')


def test_control_api_is_neither_authenticated_nor_rate_limited(api: Any) -> None:
    api.emulator.configure(rate_limit=1)
    control = f"{api.emulator.root_url}/__emulator/health"

    responses = [requests.get(control, timeout=10) for _ in range(3)]

    assert [r.json() for r in responses] == [{"ok": True}] * 3
    assert all("Ratelimit" not in r.headers for r in responses)


# -- control API -------------------------------------------------------------------------------------


def test_state_counts_requests_per_route_and_logs_no_header_values(api: Any) -> None:
    api.create()
    api.get("/ai/finetunes")
    api.get("/ai/finetunes/")

    state = api.emulator.state()

    assert state["counters"] == {
        "POST /accounts/{account_id}/ai/finetunes": 1,
        "GET /accounts/{account_id}/ai/finetunes": 2,
    }
    assert [(r["method"], r["status"]) for r in state["requests"]] == [("POST", 200), ("GET", 200), ("GET", 200)]
    assert set(state["requests"][0]) == {"method", "path", "route", "status", "fault", "time"}
    assert api.emulator.token not in json.dumps(state)
    assert api.emulator.api_key not in json.dumps(state)
    assert "token" not in state["settings"]


def test_settings_patch_answers_the_new_settings(api: Any) -> None:
    settings = api.emulator.configure(list_shape="nested", lora_models=["@cf/x/y-lora"])

    assert settings["list_shape"] == "nested"
    assert settings["lora_models"] == ["@cf/x/y-lora"]
    assert api.post("/ai/finetunes", json={"name": "n", "model": LORA_MODEL}).status_code == 400


@pytest.mark.parametrize(
    "patch",
    [{"no_such_setting": 1}, {"token": "new"}, {"account_id": "x"}, {"list_shape": "tree"}, {"rate_limit": True}],
    ids=["unknown", "token-is-start-up-only", "account-is-start-up-only", "bad-choice", "bool-as-int"],
)
def test_settings_patch_refuses_unknown_or_invalid_values(api: Any, patch: dict[str, Any]) -> None:
    response = requests.post(f"{api.emulator.root_url}/__emulator/settings", json=patch, timeout=10)

    assert response.status_code == 400
    assert response.json()["ok"] is False
    assert api.emulator.state()["settings"]["list_shape"] == "array"


def test_reset_clears_data_but_keeps_settings_unless_asked(api: Any) -> None:
    api.emulator.configure(list_shape="nested")
    api.complete()
    api.emulator.add_fault(path="/never")

    api.emulator.reset()
    state = api.emulator.state()
    assert (state["finetunes"], state["faults"], state["requests"], state["counters"]) == ([], [], [], {})
    assert state["settings"]["list_shape"] == "nested"

    api.emulator.reset(settings=True)
    assert api.emulator.state()["settings"]["list_shape"] == "array"


# -- process: persistence, CLI, signals ---------------------------------------------------------------


def test_data_dir_keeps_finetunes_and_assets_across_a_restart(tmp_path: Path) -> None:
    token, account = "persist-token", "0123456789abcdef0123456789abcdef"
    with run_emulator(token=token, account_id=account, data_dir=tmp_path) as first:
        auth = {"Authorization": f"Bearer {token}"}
        base = f"{first.base_url}/accounts/{account}"
        created = requests.post(
            f"{base}/ai/finetunes", json={"name": "kept", "model": LORA_MODEL}, headers=auth, timeout=10
        ).json()["result"]
        parts = [("file_name", (None, "adapter_config.json")), ("file", ("f", b'{"r": 4}'))]
        assert requests.post(f"{base}/ai/finetunes/kept/finetune-assets", files=parts, headers=auth, timeout=10).ok

    with run_emulator(token=token, account_id=account, data_dir=tmp_path) as second:
        listed = requests.get(f"{second.base_url}/accounts/{account}/ai/finetunes", headers=auth, timeout=10)
        assert listed.json()["result"] == [created]
        assets = second.finetunes()[0]["assets"]
        assert assets["adapter_config.json"]["sha256"] == hashlib.sha256(b'{"r": 4}').hexdigest()
    assert (tmp_path / "assets" / created["id"] / "adapter_config.json").read_bytes() == b'{"r": 4}'


def test_email_and_key_fail_when_the_emulator_has_none_configured() -> None:
    with run_emulator() as emulator:
        response = requests.get(
            f"{emulator.base_url}/accounts/{emulator.account_id}/ai/finetunes",
            headers={"X-Auth-Email": "a@example.com", "X-Auth-Key": "anything"},
            timeout=10,
        )

    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == 10000


@pytest.fixture
def cli_process() -> Iterator[subprocess.Popen[str]]:
    command = [sys.executable, "-m", "airflow_provider_cfai.emulator", "--port", "0", "--token", "cli-token"]
    command += ["--account-id", "feedfacefeedfacefeedfacefeedface"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(10)
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()
    process.stderr.close()


def test_cli_prints_the_url_and_an_airflow_connection_then_stops_cleanly_on_sigterm(
    cli_process: subprocess.Popen[str],
) -> None:
    assert cli_process.stdout is not None
    listening = cli_process.stdout.readline()
    export = cli_process.stdout.readline()

    match = re.fullmatch(r"cfai-emulator listening on (http://127\.0\.0\.1:(\d+)/client/v4)\n", listening)
    assert match is not None
    assert int(match.group(2)) > 0
    prefix = "export AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT='"
    assert export.startswith(prefix)
    assert export.endswith("'\n")
    assert json.loads(export[len(prefix) : -2]) == {
        "conn_type": "cloudflare_ai",
        "login": "feedfacefeedfacefeedfacefeedface",
        "password": "cli-token",
        "host": match.group(1),
    }
    # The first request right after the line is printed must be served, not refused.
    health = requests.get(match.group(1).removesuffix("/client/v4") + "/__emulator/health", timeout=10)
    assert health.json() == {"ok": True}

    cli_process.send_signal(signal.SIGTERM)
    assert cli_process.wait(10) == 0


# -- airflow_provider_cfai.testing --------------------------------------------------------------------


def test_connection_uri_round_trips_through_airflow(emu: Any) -> None:
    from airflow.sdk import Connection

    conn = Connection.from_uri(emu.connection_uri(timeout=5), conn_id="cfai")

    assert (conn.conn_type, conn.host) == ("cloudflare_ai", emu.base_url)
    assert (conn.login, conn.password) == (emu.account_id, emu.token)
    assert conn.extra_dejson == {"timeout": 5}


def test_connection_json_carries_extras(emu: Any) -> None:
    conn = json.loads(emu.connection_json(max_retries=2))

    assert conn == {
        "conn_type": "cloudflare_ai",
        "login": emu.account_id,
        "password": emu.token,
        "host": emu.base_url,
        "extra": {"max_retries": 2},
    }


def test_plugin_fixture_resets_the_emulator_and_points_the_default_connection_at_it(
    cloudflare_ai_emulator: Any,
) -> None:
    import os

    conn = json.loads(os.environ["AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT"])

    assert conn["host"] == cloudflare_ai_emulator.base_url
    assert conn["password"] == cloudflare_ai_emulator.token
    assert cloudflare_ai_emulator.state()["requests"] == []


def test_a_failed_start_raises_with_the_emulators_own_message() -> None:
    from airflow_provider_cfai.testing import EmulatorStartupError

    with pytest.raises(EmulatorStartupError, match="rate_window must be > 0"), run_emulator(rate_window=0):
        pass
