"""A deterministic answer for chat requests that ask for JSON matching a schema.

Clients such as pydantic-ai's prompted output put a JSON schema into the conversation ("Always
respond with a JSON object that's compatible with this schema: {...}"). A real model then answers
with an object of that shape; this stand-in builds one from the schema alone, so structured output
can be parsed and validated offline. Choices are deterministic: an enum value the user's last
message names (else the first), strings carry ``[<model> + <lora>] <prompt>`` so a test can see which
model and finetune answered, booleans say whether the prompt contains "urgent".
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["json_answer"]

_MAX_DEPTH = 8
_SCHEMA_KEYS = frozenset({"type", "properties", "$ref", "anyOf", "oneOf", "allOf", "enum", "const"})


def json_answer(messages: list[dict[str, Any]], label: str, prompt: str) -> str | None:
    """The JSON text answering ``messages``, or ``None`` when no message carries a JSON schema."""
    schema = _schema_in(messages)
    if schema is None:
        return None
    value = _instance(schema, schema, label=label, prompt=prompt, depth=0)
    return json.dumps(value)


def _schema_in(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str) or "schema" not in content.lower():
            continue
        start = content.find("{")
        while start != -1:
            try:
                candidate, _ = decoder.raw_decode(content, start)
            except ValueError:
                candidate = None
            if isinstance(candidate, dict) and not _SCHEMA_KEYS.isdisjoint(candidate):
                return candidate
            start = content.find("{", start + 1)
    return None


def _instance(node: Any, root: dict[str, Any], *, label: str, prompt: str, depth: int) -> Any:
    if not isinstance(node, dict) or depth > _MAX_DEPTH:
        return None
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key, {}) if isinstance(target, dict) else {}
        return _instance(target, root, label=label, prompt=prompt, depth=depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        options = node.get(key)
        if isinstance(options, list) and options:
            chosen = next((o for o in options if isinstance(o, dict) and o.get("type") != "null"), options[0])
            return _instance(chosen, root, label=label, prompt=prompt, depth=depth + 1)
    if "const" in node:
        return node["const"]
    enum = node.get("enum")
    if isinstance(enum, list) and enum:
        lowered = prompt.lower()
        return next((v for v in enum if isinstance(v, str) and v.lower() in lowered), enum[0])
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in node:
        properties = node.get("properties") or {}
        return {
            name: _instance(sub, root, label=label, prompt=prompt, depth=depth + 1) for name, sub in properties.items()
        }
    if kind == "array":
        return []
    if kind == "boolean":
        return "urgent" in prompt.lower()
    if kind in ("integer", "number"):
        minimum = node.get("minimum", node.get("exclusiveMinimum", 0))
        value = minimum if isinstance(minimum, (int, float)) else 0
        return int(value) if kind == "integer" else float(value)
    if kind == "string":
        return f"[{label}] {prompt}"
    return None
