"""The emulator's real responses validated against Cloudflare's OpenAPI subset (tests/data/).

The document's ``x-known-deviations`` lists where real clients disagree with the spec; where the
emulator follows the clients, the test says so and validates against the deviation instead:

* ``list-result-shape``: the list result is an array of the spec's finetune object (default), and
  exactly the spec's single object with ``list_shape="object"``.
* ``asset-upload-response``: the minimal ``{"success": true}`` answer against the 2026 spec, the
  legacy answer against the 2024 schema kept under ``x-historical-2024-08-06``.
* ``error-envelope``: finetune error bodies are Cloudflare's common failure envelope
  (``api-response-common-failure``); the operations' own 400 schemas type ``result`` as an object
  while Cloudflare sends ``null``, so there ``result`` is allowed to be null.

One deviation is the emulator's own (not in the document): the rate-limit error code 971 is below
the ``minimum: 1000`` the common ``messages`` schema declares; Cloudflare documents and sends 971.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

SPEC_PATH = Path(__file__).resolve().parent.parent / "data" / "finetunes-openapi.json"
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
LORA_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"

FINETUNES = "/accounts/{account_id}/ai/finetunes"
PUBLIC = "/accounts/{account_id}/ai/finetunes/public"
ASSETS = "/accounts/{account_id}/ai/finetunes/{finetune_id}/finetune-assets"
ACCOUNT_VERIFY = "/accounts/{account_id}/tokens/verify"
USER_VERIFY = "/user/tokens/verify"

FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    # jsonschema only checks date-time when an optional package is installed; check it always.
    if not isinstance(value, str) or "T" not in value:
        return False
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None


def _resolve(node: Any, document: dict[str, Any]) -> Any:
    """Inline local ``$ref``s and turn OpenAPI 3.0 ``nullable`` into JSON Schema."""
    if isinstance(node, list):
        return [_resolve(item, document) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return _resolve(target, document)
    out = {key: _resolve(value, document) for key, value in node.items()}
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def response_schema(path: str, method: str, status: str, *, document: dict[str, Any] | None = None) -> Any:
    operation = (document or SPEC)["paths"][path][method]
    responses = operation["responses"]
    response = responses.get(status) or responses[f"{status[0]}XX"]
    return _resolve(response["content"]["application/json"]["schema"], SPEC)


def component(name: str) -> Any:
    return _resolve(SPEC["components"]["schemas"][name], SPEC)


def validate(body: Any, schema: Any) -> None:
    jsonschema.Draft202012Validator(schema, format_checker=FORMATS).validate(body)


def with_nullable_result(schema: Any) -> Any:
    """Deviation ``error-envelope``: Cloudflare's failures carry ``"result": null``."""
    relaxed = copy.deepcopy(schema)
    result = relaxed.get("properties", {}).get("result")
    if result is not None and "type" in result:
        result["type"] = [result["type"], "null"]
    return relaxed


def validate_failure(body: Any, path: str, method: str, status: str) -> None:
    validate(body, component("api-response-common-failure"))
    responses = SPEC["paths"][path][method]["responses"]
    if status in responses or f"{status[0]}XX" in responses:
        validate(body, with_nullable_result(response_schema(path, method, status)))


# -- the validator itself must be able to fail ----------------------------------------------------


GOOD_FINETUNE = {
    "id": "bc451aef-f723-4b26-a6b2-901afd2e7a8a",
    "created_at": "2019-12-27T18:11:19.117Z",
    "modified_at": "2019-12-27T18:11:19.117Z",
    "public": False,
    "name": "x",
    "model": LORA_MODEL,
}


@pytest.mark.parametrize(
    "change",
    [{"id": "not-a-uuid"}, {"created_at": "yesterday"}, {"modified_at": "2019-12-27"}, {"public": "no"}],
    ids=["bad-uuid", "bad-date-time", "date-only", "string-public"],
)
def test_the_checks_reject_a_wrong_field(change: dict[str, Any]) -> None:
    schema = response_schema(FINETUNES, "post", "200")
    validate({"success": True, "result": GOOD_FINETUNE}, schema)

    with pytest.raises(jsonschema.ValidationError):
        validate({"success": True, "result": GOOD_FINETUNE | change}, schema)


def test_the_failure_envelope_rejects_a_success_body() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate(
            {"success": True, "errors": [], "messages": [], "result": {}}, component("api-response-common-failure")
        )


# -- finetunes ------------------------------------------------------------------------------------


def test_create_success_matches_the_spec(api: Any) -> None:
    response = api.post("/ai/finetunes", json={"name": "c", "model": LORA_MODEL, "description": "d"})

    validate(response.json(), response_schema(FINETUNES, "post", "200"))


def test_create_without_description_matches_the_spec(api: Any) -> None:
    response = api.post("/ai/finetunes", json={"name": "c", "model": LORA_MODEL})

    validate(response.json(), response_schema(FINETUNES, "post", "200"))


@pytest.mark.parametrize(
    "body",
    [{"model": LORA_MODEL}, {"name": "x", "model": "@cf/meta/llama-3.1-70b-instruct"}],
    ids=["missing-name", "model-without-lora"],
)
def test_create_failures_match_the_spec(api: Any, body: dict[str, Any]) -> None:
    response = api.post("/ai/finetunes", json=body)

    assert response.status_code == 400
    validate_failure(response.json(), FINETUNES, "post", "400")


def test_list_array_matches_the_spec_per_item(api: Any) -> None:
    """Deviation ``list-result-shape``: an array whose items are the spec's ``result`` object."""
    api.create("a", description="d")
    api.create("b")
    spec = response_schema(FINETUNES, "get", "200")
    as_array = copy.deepcopy(spec)
    as_array["properties"]["result"] = {"type": "array", "items": spec["properties"]["result"], "minItems": 2}

    body = api.get("/ai/finetunes").json()

    validate(body, as_array)
    with pytest.raises(jsonschema.ValidationError):
        validate(body, spec)  # proves the deviation is real, not a vacuous pass


def test_list_object_shape_matches_the_spec_exactly(api: Any) -> None:
    api.create("a")
    api.emulator.configure(list_shape="object")

    validate(api.get("/ai/finetunes").json(), response_schema(FINETUNES, "get", "200"))


def test_list_failure_matches_the_spec(api: Any) -> None:
    response = api.get("/ai/finetunes", auth=False, headers={"Authorization": "Basic x"})

    assert response.status_code == 400
    validate_failure(response.json(), FINETUNES, "get", "400")


def test_public_list_matches_the_spec(api: Any) -> None:
    api.create("shared", public=True)

    body = api.get("/ai/finetunes/public", params={"limit": 50}).json()

    assert len(body["result"]) == 46
    validate(body, response_schema(PUBLIC, "get", "200"))


def test_public_list_failure_matches_the_spec(api: Any) -> None:
    response = api.get("/ai/finetunes/public", params={"limit": 0})

    assert response.status_code == 400
    validate_failure(response.json(), PUBLIC, "get", "400")


def test_minimal_upload_answer_matches_the_2026_spec(api: Any) -> None:
    response = api.upload(api.create()["id"], "adapter_config.json")

    validate(response.json(), response_schema(ASSETS, "post", "200"))


def test_legacy_upload_answer_matches_the_2024_schema(api: Any) -> None:
    """Deviation ``asset-upload-response``: the older answer, per the historical document."""
    api.emulator.configure(upload_response="legacy")
    response = api.upload(api.create()["id"], "adapter_config.json")
    historical = response_schema(ASSETS, "post", "200", document=SPEC["x-historical-2024-08-06"])

    validate(response.json(), historical)
    validate(response.json(), response_schema(ASSETS, "post", "200"))


@pytest.mark.parametrize(
    ("file_name", "expected_status"), [("weights.bin", 400), (None, 404)], ids=["bad-name", "unknown-finetune"]
)
def test_upload_failures_match_the_spec(api: Any, file_name: str | None, expected_status: int) -> None:
    target = api.create()["id"] if file_name else "ghost"
    response = api.upload(target, file_name or "adapter_config.json")

    assert response.status_code == expected_status
    validate_failure(response.json(), ASSETS, "post", str(expected_status))


# -- token verify ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "path", "spec_path"),
    [("account", "/tokens/verify", ACCOUNT_VERIFY), ("user", "/user/tokens/verify", USER_VERIFY)],
)
@pytest.mark.parametrize("status", ["active", "expired"])
def test_verify_success_matches_the_spec(api: Any, kind: str, path: str, spec_path: str, status: str) -> None:
    api.emulator.configure(token_kind=kind, token_status=status)

    response = api.get(path)

    assert response.status_code == 200
    validate(response.json(), response_schema(spec_path, "get", "200"))


@pytest.mark.parametrize(
    ("kind", "path", "spec_path"),
    [("user", "/tokens/verify", ACCOUNT_VERIFY), ("account", "/user/tokens/verify", USER_VERIFY)],
)
def test_verify_failure_matches_the_spec(api: Any, kind: str, path: str, spec_path: str) -> None:
    api.emulator.configure(token_kind=kind)

    response = api.get(path)

    assert response.status_code == 401
    validate(response.json(), response_schema(spec_path, "get", "401"))


# -- errors every route can give -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/ai/finetunes", {}, 400),
        ("/ai/finetunes", {"Authorization": "Bearer wrong"}, 401),
        ("/accounts/0000000000000000000000000000dead/ai/finetunes", None, 404),
    ],
    ids=["no-credentials", "wrong-token", "wrong-account"],
)
def test_auth_and_routing_failures_match_the_common_failure_envelope(
    api: Any, path: str, headers: dict[str, str] | None, status: int
) -> None:
    response = api.get(path, auth=headers is None, headers=headers or {})

    assert response.status_code == status
    validate(response.json(), component("api-response-common-failure"))


def test_rate_limit_failure_matches_the_envelope_except_for_code_971(api: Any) -> None:
    api.emulator.configure(rate_limit=1, rate_window=60, rate_lockout=60)
    api.get("/ai/finetunes")

    body = api.get("/ai/finetunes").json()

    schema = component("api-response-common-failure")
    with pytest.raises(jsonschema.ValidationError, match="971 is less than the minimum of 1000"):
        validate(body, schema)
    relaxed = copy.deepcopy(schema)
    relaxed["properties"]["errors"]["allOf"][0]["items"]["properties"]["code"].pop("minimum")
    validate(body, relaxed)
