"""The model catalog: tolerant entry reading, paging, the per-process cache, and the hook's methods."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from airflow_provider_cfai.exceptions import CloudflareAPIError, CloudflareAuthError, CloudflareInputError
from airflow_provider_cfai.hooks import _catalog
from airflow_provider_cfai.hooks._catalog import CatalogCache

SEARCH_ROUTE = "GET /accounts/{account_id}/ai/models/search"


def entry(name: str, **props: Any) -> dict[str, Any]:
    return {"name": name, "properties": [{"property_id": k, "value": v} for k, v in props.items()]}


# -- reading entries --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        (True, True),
        (1, True),
        (["peft"], True),
        ({"max_rank": 32}, True),
        ("yes", True),
        ("false", False),
        (False, False),
        (0, False),
        ([], False),
        ({}, False),
        ("", False),
        (None, False),
    ],
)
def test_lora_comes_from_any_truthy_property_value(value: object, expected: bool) -> None:
    assert _catalog.accepts_lora(entry("@cf/x/model", lora=value)) is expected


def test_the_lora_suffix_is_the_fallback_when_the_property_is_absent() -> None:
    assert _catalog.accepts_lora({"name": "@cf/mistral/mistral-7b-instruct-v0.2-lora"}) is True
    assert _catalog.accepts_lora({"name": "@cf/meta/llama-3.1-8b-instruct"}) is False
    # An explicit "no" beats the name.
    assert _catalog.accepts_lora(entry("@cf/x/y-lora", lora="false")) is False


def test_properties_as_a_plain_object_are_read_too() -> None:
    model = {"name": "@cf/x/m", "properties": {"lora": "true", "async_queue": True}}

    assert _catalog.accepts_lora(model)
    assert _catalog.supports_async_queue(model)


@pytest.mark.parametrize(
    "odd",
    [None, "text", 3, [], {"properties": "lora"}, {"name": 5}, {"properties": [None, "x", {"value": 1}]}],
)
def test_odd_entries_never_raise(odd: object) -> None:
    assert _catalog.accepts_lora(odd) is False
    assert _catalog.supports_async_queue(odd) is False
    assert _catalog.family(odd) is None
    assert _catalog.task_name(odd) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("@cf/mistral/mistral-7b-instruct-v0.2-lora", "mistral"),
        ("@cf/google/gemma-7b-it-lora", "gemma"),
        ("@cf/google/gemma-3-12b-it", "gemma"),
        ("@cf/meta-llama/llama-2-7b-chat-hf-lora", "llama"),
        ("@cf/meta/llama-3.1-8b-instruct-fast", "llama"),
        ("@hf/nousresearch/hermes-2-pro-mistral-7b", "mistral"),
        ("@cf/qwen/qwen2.5-coder-32b-instruct", None),
    ],
)
def test_family_comes_from_the_models_name(name: str, expected: str | None) -> None:
    assert _catalog.family(name) == expected
    assert _catalog.family({"name": name}) == expected


def test_family_falls_back_to_a_model_type_property() -> None:
    assert _catalog.family(entry("@cf/acme/house-model-7b", model_type="mistral")) == "mistral"
    assert _catalog.family(entry("@cf/acme/house-model-7b", model_type="qwen")) is None


def test_task_may_be_an_object_or_a_string() -> None:
    assert _catalog.task_name({"task": {"name": "Text Generation"}}) == "Text Generation"
    assert _catalog.task_name({"task": "Text Generation"}) == "Text Generation"


# -- paging ------------------------------------------------------------------------------------------


def pages_of(models: list[dict[str, Any]], size: int, *, ignore_page: bool = False) -> tuple[Any, list[int]]:
    asked: list[int] = []

    def fetch(page: int) -> list[dict[str, Any]]:
        asked.append(page)
        start = 0 if ignore_page else (page - 1) * size
        return models[start : start + size]

    return fetch, asked


@pytest.mark.parametrize(("count", "pages"), [(0, [1]), (3, [1]), (5, [1, 2]), (12, [1, 2, 3])])
def test_pages_are_read_until_a_short_one(count: int, pages: list[int]) -> None:
    models = [{"name": f"@cf/x/m{n}"} for n in range(count)]
    fetch, asked = pages_of(models, 5)

    assert _catalog.read_pages(fetch, 5) == models
    assert asked == pages


def test_a_server_that_ignores_page_is_not_read_for_ever() -> None:
    models = [{"name": f"@cf/x/m{n}"} for n in range(5)]
    fetch, asked = pages_of(models, 5, ignore_page=True)

    assert _catalog.read_pages(fetch, 5) == models
    assert asked == [1, 2]


def test_non_model_items_are_skipped() -> None:
    result = [{"name": "@cf/x/a"}, "junk", {"no": "name"}]

    assert _catalog.read_pages(lambda page: result if page == 1 else [], 50) == [{"name": "@cf/x/a"}]


# -- the cache ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting_loader(value: list[dict[str, Any]]) -> tuple[Any, list[int]]:
    calls: list[int] = []

    def load() -> list[dict[str, Any]]:
        calls.append(1)
        return value

    return load, calls


def test_the_cache_serves_one_load_until_the_ttl_passes() -> None:
    clock = Clock()
    cache = CatalogCache(ttl=300, clock=clock)
    load, calls = counting_loader([{"name": "@cf/x/a"}])

    for _ in range(50):
        assert cache.get("acct", load) == [{"name": "@cf/x/a"}]
    assert len(calls) == 1

    clock.now += 301
    cache.get("acct", load)
    assert len(calls) == 2


def test_each_key_has_its_own_catalog() -> None:
    cache = CatalogCache(clock=Clock())
    load_a, calls_a = counting_loader([{"name": "a"}])
    load_b, calls_b = counting_loader([{"name": "b"}])

    assert cache.get(("url", "/accounts/a"), load_a) == [{"name": "a"}]
    assert cache.get(("url", "/accounts/b"), load_b) == [{"name": "b"}]
    assert (len(calls_a), len(calls_b)) == (1, 1)


def test_a_failure_is_remembered_briefly_then_retried() -> None:
    clock = Clock()
    cache = CatalogCache(failure_ttl=60, clock=clock)
    calls: list[int] = []

    def failing() -> list[dict[str, Any]]:
        calls.append(1)
        raise CloudflareAuthError("GET", "/accounts/x/ai/models/search", 403)

    for _ in range(3):
        with pytest.raises(CloudflareAuthError, match="HTTP 403"):
            cache.get("acct", failing)
    assert len(calls) == 1

    clock.now += 61
    with pytest.raises(CloudflareAPIError):
        cache.get("acct", failing)
    assert len(calls) == 2


def test_threads_asking_together_share_one_load() -> None:
    cache = CatalogCache(clock=Clock())
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_load() -> list[dict[str, Any]]:
        calls.append(1)
        started.set()
        assert release.wait(10)
        return [{"name": "a"}]

    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(cache.get("k", slow_load)))
    first.start()
    assert started.wait(10)
    others = [threading.Thread(target=lambda: results.append(cache.get("k", slow_load))) for _ in range(4)]
    for thread in others:
        thread.start()
    release.set()
    for thread in (first, *others):
        thread.join(10)

    assert len(calls) == 1
    assert results == [[{"name": "a"}]] * 5


# -- the hook against the emulator -------------------------------------------------------------------


def search_calls(emulator: Any) -> int:
    return int(emulator.state()["counters"].get(SEARCH_ROUTE, 0))


def test_list_models_reads_every_page(hook: Any, emulator: Any) -> None:
    everything = hook.list_models(per_page=1000)

    paged = hook.list_models(per_page=4)

    assert [m["name"] for m in paged] == [m["name"] for m in everything]
    assert len(everything) >= 15
    assert search_calls(emulator) == 1 + -(-len(everything) // 4)


def test_list_models_passes_its_filters(hook: Any) -> None:
    assert {m["name"] for m in hook.list_models(task="Text Embeddings")} == {
        "@cf/baai/bge-base-en-v1.5",
        "@cf/baai/bge-large-en-v1.5",
    }
    assert [m["name"] for m in hook.list_models(search="whisper", author="openai")] == ["@cf/openai/whisper"]


def test_list_models_refuses_a_bad_page_size(hook: Any) -> None:
    with pytest.raises(CloudflareInputError, match="per_page"):
        hook.list_models(per_page=0)


def test_get_model_reads_the_catalog_once_for_many_lookups(hook: Any, emulator: Any, make_hook: Any) -> None:
    lora = hook.get_model("@cf/mistral/mistral-7b-instruct-v0.2-lora")
    plain = hook.get_model("@cf/meta/llama-3.1-8b-instruct")
    missing = hook.get_model("@cf/meta/llama-9-imaginary")
    another_hook = make_hook(conn_id="cfai_second")
    for _ in range(20):
        another_hook.get_model("@cf/google/gemma-7b-it-lora")

    assert _catalog.accepts_lora(lora)
    assert not _catalog.accepts_lora(plain)
    assert missing is None
    assert search_calls(emulator) == 1


def test_a_catalog_failure_raises_and_is_not_asked_again_at_once(make_hook: Any, emulator: Any) -> None:
    hook = make_hook(max_retries=0)
    emulator.add_fault(method="GET", path=r"/ai/models/search$", status=403, times=5)

    for _ in range(3):
        with pytest.raises(CloudflareAuthError):
            hook.get_model("@cf/mistral/mistral-7b-instruct-v0.2-lora")

    assert [r["fault"] for r in emulator.state()["requests"]] == ["respond"]
