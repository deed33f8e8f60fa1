"""Argument checks shared by the operators: cheap, no I/O, safe at DAG parse time."""

from __future__ import annotations

from typing import Any

from airflow_provider_cfai.exceptions import CloudflareInputError


def is_template(value: Any) -> bool:
    """True for a value Airflow will still resolve: a Jinja string or an XComArg."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    return hasattr(value, "resolve")


def as_bool(field: str, value: Any) -> bool:
    """A rendered flag: a bool, or the strings a template renders booleans to."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", "", "none"):
        return False
    raise CloudflareInputError(f"{field} must be true or false, got {value!r}")


def check_text(field: str, value: Any, *, optional: bool = False) -> None:
    """Reject empty or blank strings (and non-strings) that are not templates."""
    if value is None and optional:
        return
    if is_template(value):
        return
    if not isinstance(value, str) or not value.strip():
        raise CloudflareInputError(f"{field} must be a non-empty string, got {value!r}")


def check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if is_template(value):
        return
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise CloudflareInputError(f"{field} must be one of {allowed}, got {value!r}")
