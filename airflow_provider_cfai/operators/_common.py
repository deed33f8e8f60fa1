"""What the operators share: the connection arguments, the hook, and cheap argument checks."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_cfai.exceptions import CloudflareInputError

if TYPE_CHECKING:
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook


class CloudflareAIBaseOperator(BaseOperator):
    """Base of this provider's operators: the connection to use and a lazily built hook.

    :param account_id: overrides the connection's account ID.
    :param cloudflare_conn_id: the ``cloudflare_ai`` connection to use.
    """

    def __init__(
        self, *, account_id: str | None = None, cloudflare_conn_id: str = "cloudflare_ai_default", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.account_id = account_id
        self.cloudflare_conn_id = cloudflare_conn_id

    @cached_property
    def hook(self) -> CloudflareAIHook:
        # Imported here: DAG files import operator modules at every parse.
        from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

        return CloudflareAIHook(cloudflare_conn_id=self.cloudflare_conn_id)


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


def check_flag(field: str, value: Any) -> bool:
    """A flag that is not a template field: a real bool, so a string such as ``"false"`` never means true."""
    if not isinstance(value, bool):
        raise CloudflareInputError(f"{field} must be True or False (it is not templated), got {value!r}")
    return value


def check_choice(field: str, value: Any, choices: tuple[str, ...], *, templated: bool = True) -> None:
    """Reject a value outside ``choices``; a template passes only in a template field (``templated``)."""
    if templated and is_template(value):
        return
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise CloudflareInputError(f"{field} must be one of {allowed}, got {value!r}")
