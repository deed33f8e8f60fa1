"""The Workers AI model catalog the emulator serves on ``/ai/models/search`` and checks on ``/ai/run``.

It is built from the settings, so it cannot disagree with what the create call accepts:

* a fixed base of real model names (text generation, speech recognition, embeddings);
* the ``lora`` property on every name in ``lora_models`` (names missing from the base get an entry
  of their own), and ``async_queue`` on every name in ``async_queue_models``;
* a base entry whose name ends in ``-lora`` but is left out of ``lora_models`` is dropped: its name
  alone would promise a LoRA support the create call then refuses;
* ``extra_models`` entries are added, or replace the entry of the same name, exactly as given, so a
  test can serve any shape; a name listed in ``lora_models`` still gets ``lora`` if it lacks one.

Search filters: ``search`` (in the name or description), ``task`` (task name), ``author`` (the
name's second part), ``source``; ``hide_experimental`` is accepted and ignored. Pages: ``page`` and
``per_page`` (default 20, at most 1000; Cloudflare documents neither), with ``result_info``.

Property values mix types on purpose, as Cloudflare's do (``"32768"`` beside ``8192``, lists of
objects, ``"true"`` beside ``true``): clients must not assume strings.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.emulator.envelope import query_int

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow_provider_cfai.emulator.settings import EmulatorSettings

__all__ = ["Catalog", "catalog_for", "search_body"]

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 1000
_NAMESPACE = uuid.UUID("0b3f6a2e-51c4-4e8e-9d0a-7c1e2f4a9b60")
_CREATED = "2024-04-01T00:00:00.000Z"
_TEXT = "Text Generation"
_TASKS = {
    _TEXT: "Family of generative text models, such as large language models (LLM).",
    "Automatic Speech Recognition": "Automatic speech recognition (ASR) models convert speech to text.",
    "Text Embeddings": "Feature extraction models transform raw data into numerical features.",
}
# name, task, description, context window (a string or a number, as Cloudflare mixes them)
_BASE: tuple[tuple[str, str, str, str | int | None], ...] = (
    ("@cf/mistral/mistral-7b-instruct-v0.2-lora", _TEXT, "Mistral-7B-Instruct-v0.2, LoRA-ready.", "15000"),
    ("@cf/google/gemma-7b-it-lora", _TEXT, "Gemma 7B instruction-tuned, LoRA-ready.", 3500),
    ("@cf/google/gemma-2b-it-lora", _TEXT, "Gemma 2B instruction-tuned, LoRA-ready.", "8192"),
    ("@cf/meta-llama/llama-2-7b-chat-hf-lora", _TEXT, "Llama 2 7B chat, LoRA-ready.", 8192),
    ("@cf/meta/llama-3.1-8b-instruct-fast", _TEXT, "[Fast version] Meta Llama 3.1 8B instruct.", "128000"),
    ("@cf/meta/llama-3.2-3b-instruct", _TEXT, "Meta Llama 3.2 3B instruct.", 128000),
    ("@cf/google/gemma-3-12b-it", _TEXT, "Gemma 3 12B instruction-tuned, multimodal.", "80000"),
    ("@cf/qwen/qwen2.5-coder-32b-instruct", _TEXT, "Qwen2.5-Coder 32B instruct.", 32768),
    ("@cf/meta/llama-3.1-8b-instruct", _TEXT, "Meta Llama 3.1 8B instruct.", "7968"),
    ("@cf/meta/llama-3.1-70b-instruct", _TEXT, "Meta Llama 3.1 70B instruct.", 24000),
    ("@cf/meta/llama-3.3-70b-instruct-fp8-fast", _TEXT, "Llama 3.3 70B quantized to fp8.", "24000"),
    ("@cf/openai/gpt-oss-120b", _TEXT, "OpenAI's open-weight model for reasoning.", 128000),
    ("@cf/openai/whisper", "Automatic Speech Recognition", "Whisper speech recognition.", None),
    ("@cf/baai/bge-base-en-v1.5", "Text Embeddings", "BAAI general embedding, base, 768 dims.", None),
    ("@cf/baai/bge-large-en-v1.5", "Text Embeddings", "BAAI general embedding, large, 1024 dims.", None),
)


@dataclasses.dataclass(frozen=True)
class Catalog:
    entries: tuple[dict[str, Any], ...]
    names: frozenset[str]


# Settings objects are immutable and swapped whole: one catalog per settings object is enough.
_memo: tuple[EmulatorSettings, Catalog] | None = None


def catalog_for(settings: EmulatorSettings) -> Catalog:
    global _memo
    memo = _memo
    if memo is not None and memo[0] is settings:
        return memo[1]
    catalog = _build(settings)
    _memo = (settings, catalog)
    return catalog


def search_body(catalog: Catalog, query: Mapping[str, str]) -> dict[str, Any]:
    """One page of the models matching ``query``, in Cloudflare's envelope with ``result_info``."""
    page = query_int(query, "page", default=1, low=1, high=2**31, code=1010)
    per_page = query_int(query, "per_page", default=DEFAULT_PER_PAGE, low=1, high=MAX_PER_PAGE, code=1010)
    found = [entry for entry in catalog.entries if _matches(entry, query)]
    items = found[(page - 1) * per_page : page * per_page]
    info = {"page": page, "per_page": per_page, "count": len(items), "total_count": len(found)}
    return {"result": items, "result_info": info, "success": True, "errors": [], "messages": []}


def _build(settings: EmulatorSettings) -> Catalog:
    lora, async_queue = set(settings.lora_models), set(settings.async_queue_models)
    entries: dict[str, dict[str, Any]] = {}
    for name, task, description, context in _BASE:
        if name.endswith("-lora") and name not in lora:
            continue
        entries[name] = _entry(name, task, description, context)
    for name in settings.lora_models:
        entries.setdefault(name, _entry(name, _TEXT, f"{name} (emulated LoRA base).", 4096))
    for name in settings.async_queue_models:
        entries.setdefault(name, _entry(name, _TEXT, f"{name} (emulated batch model).", 4096))
    for extra in settings.extra_models:
        entries[extra["name"]] = dict(extra)
    for n, name in enumerate(sorted(lora)):
        # Two spellings of "yes", as the catalog's value types vary.
        _mark(entries[name], "lora", "true" if n % 2 == 0 else True)
    for n, name in enumerate(sorted(async_queue)):
        _mark(entries[name], "async_queue", True if n % 2 == 0 else "true")
    ordered = tuple(entries[name] for name in sorted(entries))
    return Catalog(ordered, frozenset(entries))


def _entry(name: str, task: str, description: str, context: str | int | None) -> dict[str, Any]:
    properties: list[dict[str, Any]] = [{"property_id": "beta", "value": "false"}]
    if context is not None:
        properties.append({"property_id": "context_window", "value": context})
    if task == _TEXT:
        price = [
            {"unit": "per M input tokens", "price": 0.11, "currency": "USD"},
            {"unit": "per M output tokens", "price": 0.19, "currency": "USD"},
        ]
        properties.append({"property_id": "price", "value": price})
    properties.append({"property_id": "info", "value": f"https://developers.cloudflare.com/workers-ai/models/{name}"})
    return {
        "id": str(uuid.uuid5(_NAMESPACE, name)),
        "source": 1,
        "name": name,
        "description": description,
        "task": {"id": str(uuid.uuid5(_NAMESPACE, task)), "name": task, "description": _TASKS.get(task, task)},
        "created_at": _CREATED,
        "tags": [],
        "properties": properties,
    }


def _mark(entry: dict[str, Any], property_id: str, value: object) -> None:
    properties = entry.get("properties")
    if isinstance(properties, dict):  # an extra model may use the {id: value} shape
        entry["properties"] = {property_id: value, **properties}
    elif not isinstance(properties, list):
        entry["properties"] = [{"property_id": property_id, "value": value}]
    elif not any(isinstance(p, dict) and p.get("property_id") == property_id for p in properties):
        entry["properties"] = [*properties, {"property_id": property_id, "value": value}]


def _matches(entry: dict[str, Any], query: Mapping[str, str]) -> bool:
    name = str(entry.get("name", ""))
    search = query.get("search", "").strip().lower()
    if search and search not in name.lower() and search not in str(entry.get("description", "")).lower():
        return False
    task = query.get("task", "").strip().lower()
    task_field = entry.get("task")
    task_name = task_field.get("name") if isinstance(task_field, dict) else task_field
    if task and task != str(task_name or "").lower():
        return False
    author = query.get("author", "").strip().lower()
    if author and author != (name.split("/")[1].lower() if name.count("/") >= 2 else ""):
        return False
    source = query.get("source", "").strip()
    return not source or source == str(entry.get("source"))
