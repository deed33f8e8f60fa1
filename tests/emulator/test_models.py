"""The emulator's model catalog (``/ai/models/search``) and ``/ai/run`` on models it does not know."""

from __future__ import annotations

from typing import Any

import pytest

LORA_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
SEARCH = "/ai/models/search"
ASYNC_QUEUE_MODELS = {
    "@cf/meta/llama-3.3-70b-instruct-fp8-fast",
    "@cf/openai/gpt-oss-120b",
    "@cf/baai/bge-base-en-v1.5",
    "@cf/baai/bge-large-en-v1.5",
}


def everything(api: Any, **params: Any) -> list[dict[str, Any]]:
    response = api.get(SEARCH, params={"per_page": 1000, **params})
    assert response.status_code == 200, response.text
    models: list[dict[str, Any]] = response.json()["result"]
    return models


def by_name(api: Any) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in everything(api)}


def properties(entry: dict[str, Any]) -> dict[str, Any]:
    return {p["property_id"]: p["value"] for p in entry["properties"]}


def test_pages_cover_the_catalog_once_with_result_info(api: Any) -> None:
    total = len(everything(api))
    seen: list[str] = []
    page = 1
    while True:
        body = api.get(SEARCH, params={"page": page, "per_page": 4}).json()
        assert body["success"] is True
        info = body["result_info"]
        assert (info["page"], info["per_page"], info["count"], info["total_count"]) == (
            page,
            4,
            len(body["result"]),
            total,
        )
        if not body["result"]:
            break
        seen += [m["name"] for m in body["result"]]
        page += 1

    assert len(seen) == len(set(seen)) == total >= 15
    assert page == -(-total // 4) + 1


def test_without_paging_parameters_the_first_twenty_are_served(api: Any) -> None:
    api.emulator.configure(extra_models=[{"name": f"@cf/test/extra-{n}"} for n in range(10)])

    info = api.get(SEARCH).json()["result_info"]

    assert (info["page"], info["per_page"], info["count"]) == (1, 20, 20)
    assert info["total_count"] > 20


@pytest.mark.parametrize("params", [{"per_page": 0}, {"page": 0}, {"per_page": "ten"}, {"page": 1.5}])
def test_bad_paging_parameters_are_refused(api: Any, params: dict[str, Any]) -> None:
    response = api.get(SEARCH, params=params)

    assert response.status_code == 400
    assert api.error_of(response)["code"] == 1010


def test_lora_bases_carry_the_lora_property_in_more_than_one_spelling(api: Any) -> None:
    models = by_name(api)
    lora = set(api.emulator.state()["settings"]["lora_models"])

    marked = {name: properties(m)["lora"] for name, m in models.items() if "lora" in properties(m)}

    assert set(marked) == lora
    assert set(map(repr, marked.values())) == {"'true'", "True"}
    for name in ("@cf/meta/llama-3.1-8b-instruct", "@cf/openai/whisper"):
        assert "lora" not in properties(models[name])


def test_batch_models_carry_async_queue(api: Any) -> None:
    models = by_name(api)

    queued = {name for name, m in models.items() if "async_queue" in properties(m)}

    assert queued == ASYNC_QUEUE_MODELS


def test_property_values_mix_strings_numbers_and_lists(api: Any) -> None:
    values = [v for m in everything(api) for v in properties(m).values()]

    kinds = {type(v).__name__ for v in values}

    assert {"str", "int", "list", "bool"} <= kinds
    windows = {type(properties(m).get("context_window")).__name__ for m in everything(api)}
    assert {"str", "int"} <= windows


def test_entries_have_the_fields_clients_read(api: Any) -> None:
    entry = by_name(api)[LORA_MODEL]

    assert entry["task"]["name"] == "Text Generation"
    assert isinstance(entry["description"], str)
    assert all(set(p) == {"property_id", "value"} for p in entry["properties"])


def test_changing_lora_models_changes_the_catalog_and_drops_unlisted_lora_names(api: Any) -> None:
    api.emulator.configure(lora_models=["@cf/x/y-lora", "@cf/google/gemma-3-12b-it"])

    models = by_name(api)

    assert "lora" in properties(models["@cf/x/y-lora"])
    assert "lora" in properties(models["@cf/google/gemma-3-12b-it"])
    assert LORA_MODEL not in models  # its name alone would promise LoRA support
    assert "lora" not in properties(models["@cf/meta/llama-3.1-8b-instruct-fast"])
    assert api.post("/ai/finetunes", json={"name": "x", "model": "@cf/x/y-lora"}).status_code == 200


def test_extra_models_are_served_as_given(api: Any) -> None:
    odd = {"name": "@cf/test/odd", "properties": {"lora": ["peft"], "context_window": {"max": 4096}}}
    api.emulator.configure(extra_models=[odd])

    assert by_name(api)["@cf/test/odd"] == odd


def test_extra_models_must_be_named_objects(api: Any) -> None:
    with pytest.raises(RuntimeError, match="extra_models"):
        api.emulator.configure(extra_models=[{"description": "no name"}])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"search": "GEMMA"},
            {"@cf/google/gemma-7b-it-lora", "@cf/google/gemma-2b-it-lora", "@cf/google/gemma-3-12b-it"},
        ),
        ({"task": "text embeddings"}, {"@cf/baai/bge-base-en-v1.5", "@cf/baai/bge-large-en-v1.5"}),
        ({"author": "openai"}, {"@cf/openai/gpt-oss-120b", "@cf/openai/whisper"}),
    ],
    ids=["search", "task", "author"],
)
def test_filters_narrow_the_catalog(api: Any, params: dict[str, str], expected: set[str]) -> None:
    assert {m["name"] for m in everything(api, **params)} == expected


def test_run_on_an_unknown_model_is_refused_with_5007(api: Any) -> None:
    response = api.post("/ai/run/@cf/meta/llama-9-imaginary", json={"prompt": "Hi"})

    assert response.status_code == 400
    error = api.error_of(response)
    assert error["code"] == 5007
    assert "No such model" in error["message"]


def test_run_on_a_catalog_model_without_lora_still_answers(api: Any) -> None:
    response = api.post("/ai/run/@cf/meta/llama-3.1-8b-instruct", json={"prompt": "Hi"})

    assert response.status_code == 200
    assert response.json()["result"]["response"] == "[@cf/meta/llama-3.1-8b-instruct] Hi"


def test_an_extra_model_can_be_run(api: Any) -> None:
    api.emulator.configure(extra_models=[{"name": "@cf/test/new-model"}])

    assert api.post("/ai/run/@cf/test/new-model", json={"prompt": "Hi"}).status_code == 200
