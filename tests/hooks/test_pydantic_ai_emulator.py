"""The emulator's stand-in answer for prompted structured output (emulator/structured.py)."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from airflow_provider_cfai.emulator.structured import json_answer

LABEL = "@cf/m + ft"


class Address(BaseModel):
    city: str


class Order(BaseModel):
    kind: Literal["refund", "exchange"]
    quantity: int = Field(ge=2)
    price: float
    tags: list[str]
    address: Address
    note: str | None
    version: Literal["v1"]


def ask(schema: dict[str, Any], prompt: str) -> list[dict[str, str]]:
    system = f"Always respond with a JSON object that's compatible with this schema:\n\n{json.dumps(schema)}\n"
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


def test_a_schema_in_the_conversation_gets_a_valid_deterministic_instance() -> None:
    prompt = "please exchange it, urgent"
    messages = ask(Order.model_json_schema(), prompt)

    first = json_answer(messages, LABEL, prompt)
    order = Order.model_validate_json(first or "")

    assert first == json_answer(messages, LABEL, prompt)
    assert order.kind == "exchange"  # the enum value the prompt names
    assert order.quantity == 2  # the minimum
    assert order.address.city == f"[{LABEL}] {prompt}"  # resolved through $defs
    assert order.note == f"[{LABEL}] {prompt}"  # the non-null branch of anyOf
    assert (order.tags, order.version, order.price) == ([], "v1", 0.0)


def test_booleans_say_whether_the_prompt_is_urgent() -> None:
    schema = {"type": "object", "properties": {"urgent": {"type": "boolean"}}}

    assert json_answer(ask(schema, "URGENT: down"), LABEL, "URGENT: down") == '{"urgent": true}'
    assert json_answer(ask(schema, "whenever"), LABEL, "whenever") == '{"urgent": false}'


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hello {not json}"}],
        [{"role": "user", "content": 'my order {"type": "refund"} again'}],  # JSON, but no schema asked for
        [{"role": "system", "content": 'the schema is {"nope": 1}'}, {"role": "user", "content": "hi"}],
    ],
)
def test_no_schema_means_no_json_answer(messages: list[dict[str, str]]) -> None:
    assert json_answer(messages, LABEL, "hi") is None


def test_a_self_referencing_schema_stops_at_a_bounded_depth() -> None:
    schema = {
        "$ref": "#/$defs/Node",
        "$defs": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}},
    }

    answer = json.loads(json_answer(ask(schema, "x"), LABEL, "x") or "null")

    depth = 0
    while isinstance(answer, dict):
        answer, depth = answer["child"], depth + 1
    assert 1 < depth <= 8
