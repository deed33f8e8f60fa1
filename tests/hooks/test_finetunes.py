"""The oldest finetune of a name: what the hook's look-ups and a create's reuse both pick."""

from __future__ import annotations

from airflow_provider_cfai.hooks._finetunes import oldest_named

FINETUNES = [
    {"id": "b", "name": "qa", "model": "m1", "created_at": "2026-02-01T00:00:00Z"},
    {"id": "a", "name": "qa", "model": "m2", "created_at": "2026-01-01T00:00:00Z"},
    {"id": "c", "name": "other", "model": "m1", "created_at": "2025-01-01T00:00:00Z"},
]


def test_oldest_of_the_name_wins_whatever_the_list_order() -> None:
    assert oldest_named(FINETUNES, "qa") == FINETUNES[1]
    assert oldest_named(list(reversed(FINETUNES)), "qa") == FINETUNES[1]


def test_model_narrows_the_choice() -> None:
    assert oldest_named(FINETUNES, "qa", model="m1") == FINETUNES[0]
    assert oldest_named(FINETUNES, "qa", model="m3") is None


def test_unknown_name_is_none() -> None:
    assert oldest_named(FINETUNES, "nope") is None
