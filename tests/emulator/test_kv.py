"""The emulator's Workers KV endpoints and its stand-in for the user's Worker."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from test_contract import component

from airflow_provider_cfai.testing import RunningEmulator

LORA_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


def namespace(api: Any, title: str = "serving") -> str:
    response = api.post("/storage/kv/namespaces", json={"title": title})
    assert response.status_code == 200, response.text
    return str(response.json()["result"]["id"])


def put(api: Any, ns: str, key: str, value: str, metadata: Any = None) -> Any:
    files: dict[str, Any] = {"value": (None, value)}
    if metadata is not None:
        files["metadata"] = (None, json.dumps(metadata))
    return api.request("PUT", f"/storage/kv/namespaces/{ns}/values/{key}", files=files)


def test_namespaces_are_created_and_listed_with_result_info(api: Any) -> None:
    first, second = namespace(api, "a"), namespace(api, "b")

    body = api.get("/storage/kv/namespaces", params={"per_page": 5}).json()

    assert [ns["id"] for ns in body["result"]] == [first, second]
    assert body["result_info"]["total_count"] == 2
    jsonschema.validate(body, component("api-response-common"))


def test_a_taken_namespace_title_is_refused(api: Any) -> None:
    namespace(api, "serving")

    response = api.post("/storage/kv/namespaces", json={"title": "serving"})

    assert response.status_code == 400
    assert api.error_of(response)["code"] == 10014
    jsonschema.validate(response.json(), component("api-response-common-failure"))


def test_a_write_stores_value_and_metadata_together(api: Any) -> None:
    ns = namespace(api)

    written = put(api, ns, "support-bot", "ft-1", {"previous": None, "model": LORA_MODEL})

    assert written.status_code == 200, written.text
    assert written.json()["result"] == {}
    value = api.get(f"/storage/kv/namespaces/{ns}/values/support-bot")
    assert value.content == b"ft-1"
    assert value.headers["content-type"] == "application/octet-stream"  # raw bytes, no envelope
    metadata = api.get(f"/storage/kv/namespaces/{ns}/metadata/support-bot").json()
    assert metadata["result"] == {"previous": None, "model": LORA_MODEL}
    jsonschema.validate(metadata, component("api-response-common"))


@pytest.mark.parametrize("kind", ["values", "metadata"])
def test_missing_key_and_missing_namespace_have_their_own_codes(api: Any, kind: str) -> None:
    ns = namespace(api)

    no_key = api.get(f"/storage/kv/namespaces/{ns}/{kind}/nothing")
    no_namespace = api.get(f"/storage/kv/namespaces/{'0' * 32}/{kind}/nothing")

    assert (no_key.status_code, api.error_of(no_key)["code"]) == (404, 10009)
    assert (no_namespace.status_code, api.error_of(no_namespace)["code"]) == (404, 10013)
    jsonschema.validate(no_key.json(), component("api-response-common-failure"))


def test_a_second_write_to_a_key_within_the_interval_is_answered_429(api: Any, emu: RunningEmulator) -> None:
    emu.configure(kv_write_interval=3600)
    ns = namespace(api)
    assert put(api, ns, "k", "one").status_code == 200

    again = put(api, ns, "k", "two")
    other_key = put(api, ns, "other", "x")

    assert again.status_code == 429
    assert api.error_of(again)["code"] == 10049
    assert int(again.headers["Retry-After"]) >= 1
    assert other_key.status_code == 200  # the limit is per key
    assert api.get(f"/storage/kv/namespaces/{ns}/values/k").content == b"one"


def test_writes_to_a_key_pass_once_the_interval_is_off(api: Any, emu: RunningEmulator) -> None:
    emu.configure(kv_write_interval=0)
    ns = namespace(api)

    assert put(api, ns, "k", "one").status_code == 200
    assert put(api, ns, "k", "two").status_code == 200


def test_metadata_over_1024_bytes_is_refused_and_nothing_changes(api: Any) -> None:
    ns = namespace(api)

    response = put(api, ns, "k", "v", {"pad": "x" * 1100})

    assert response.status_code == 413
    assert api.error_of(response)["code"] == 10062
    assert api.get(f"/storage/kv/namespaces/{ns}/values/k").status_code == 404


@pytest.mark.parametrize(
    ("access", "write_status", "read_status"),
    [("none", 403, 403), ("read", 403, 404), ("write", 200, 200)],
    ids=["no-kv-permission", "read-only", "write"],
)
def test_token_kv_access_decides_what_the_token_may_do(
    api: Any, emu: RunningEmulator, access: str, write_status: int, read_status: int
) -> None:
    ns = namespace(api)
    emu.configure(token_kv_access=access)

    written = put(api, ns, "k", "v")
    read = api.get(f"/storage/kv/namespaces/{ns}/values/k")

    assert (written.status_code, read.status_code) == (write_status, read_status)
    if write_status == 403:
        assert api.error_of(written)["code"] == 10000


def test_the_stand_in_worker_answers_with_the_finetune_the_pointer_names(api: Any, emu: RunningEmulator) -> None:
    ns = namespace(api)
    first, second = api.complete("ft-a"), api.complete("ft-b")
    put(api, ns, "support-bot", first["id"], {"model": LORA_MODEL})
    emu.configure(kv_write_interval=0)

    before = emu.ask_worker(ns, "support-bot", "hello")
    put(api, ns, "support-bot", second["id"], {"model": LORA_MODEL})
    after = emu.ask_worker(ns, "support-bot", "hello")

    assert before["response"] == f"[{LORA_MODEL} + ft-a] hello"
    assert after["response"] == f"[{LORA_MODEL} + ft-b] hello"
    assert after["lora"] == second["id"]


def test_the_stand_in_worker_says_why_it_cannot_answer(api: Any, emu: RunningEmulator) -> None:
    ns = namespace(api)
    incomplete = api.create("no-files")
    put(api, ns, "support-bot", incomplete["id"], {"model": LORA_MODEL})

    with pytest.raises(RuntimeError, match="3039"):
        emu.ask_worker(ns, "support-bot", "hello")
    with pytest.raises(RuntimeError, match="key not found"):
        emu.ask_worker(ns, "missing", "hello")


def test_reset_forgets_namespaces(api: Any, emu: RunningEmulator) -> None:
    namespace(api)

    emu.reset()

    assert api.get("/storage/kv/namespaces").json()["result"] == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": b"plain"}, "multipart/form-data"),
        ({"files": {"metadata": (None, "{}")}}, "no 'value' part"),
        ({"files": {"value": (None, "v"), "metadata": (None, "{not json")}}, "must be JSON"),
    ],
    ids=["not-multipart", "no-value", "metadata-not-json"],
)
def test_malformed_writes_are_refused_with_10022(api: Any, kwargs: dict[str, Any], message: str) -> None:
    ns = namespace(api)

    response = api.request("PUT", f"/storage/kv/namespaces/{ns}/values/k", **kwargs)

    assert response.status_code == 400
    error = api.error_of(response)
    assert error["code"] == 10022
    assert message in error["message"]


@pytest.mark.parametrize("body", [{}, {"title": " "}, {"title": 3}], ids=["missing", "blank", "not-a-string"])
def test_a_namespace_needs_a_title(api: Any, body: dict[str, Any]) -> None:
    response = api.post("/storage/kv/namespaces", json=body)

    assert response.status_code == 400
    assert api.error_of(response)["code"] == 10019


def test_the_stand_in_worker_needs_a_model(api: Any, emu: RunningEmulator) -> None:
    ns = namespace(api)
    put(api, ns, "support-bot", "ft")

    with pytest.raises(RuntimeError, match="no model"):
        emu.ask_worker(ns, "support-bot", "hello")
    with pytest.raises(RuntimeError, match="3037"):  # with a model, it runs it: "ft" is no finetune
        emu.ask_worker(ns, "support-bot", "hello", model=LORA_MODEL)
