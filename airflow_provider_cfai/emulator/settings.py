"""Emulator settings: start-up values from the command line, some of them patchable at run time."""

from __future__ import annotations

import dataclasses
import math
import secrets
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_ASYNC_QUEUE_MODELS",
    "DEFAULT_LORA_MODELS",
    "RUNTIME_KEYS",
    "EmulatorSettings",
]

DEFAULT_LORA_MODELS: tuple[str, ...] = (
    "@cf/mistral/mistral-7b-instruct-v0.2-lora",
    "@cf/google/gemma-7b-it-lora",
    "@cf/google/gemma-2b-it-lora",
    "@cf/meta-llama/llama-2-7b-chat-hf-lora",
    "@cf/meta/llama-3.1-8b-instruct-fast",
    "@cf/meta/llama-3.2-3b-instruct",
    "@cf/google/gemma-3-12b-it",
    "@cf/qwen/qwen2.5-coder-32b-instruct",
)
# Models the Batch API queues (catalog property ``async_queue``).
DEFAULT_ASYNC_QUEUE_MODELS: tuple[str, ...] = (
    "@cf/meta/llama-3.3-70b-instruct-fp8-fast",
    "@cf/openai/gpt-oss-120b",
    "@cf/baai/bge-base-en-v1.5",
    "@cf/baai/bge-large-en-v1.5",
)

_CHOICES: dict[str, tuple[str, ...]] = {
    "list_shape": ("array", "object", "nested"),
    "upload_response": ("minimal", "legacy"),
    "asset_overwrite": ("replace", "reject"),
    "duplicate_names": ("allow", "reject"),
    "token_kind": ("account", "user"),
    "token_status": ("active", "disabled", "expired"),
    "token_kv_access": ("write", "read", "none"),
}
_NON_NEGATIVE_INTS = ("max_finetunes", "public_seed", "rate_limit")
_POSITIVE_INTS = ("max_file_bytes", "request_log_size", "queue_max_bytes")
_OPTIONAL_STRINGS = ("token_expires_on", "token_not_before")

# The token, identity and storage are fixed for the life of the process; the legacy email + key
# pair is patchable so a test can switch that scheme on (and a reset switches it off again).
_STARTUP_ONLY = frozenset({"token", "account_id", "data_dir", "token_id"})
_SECRET_KEYS = frozenset({"token", "email", "api_key"})


def _random_hex(n_bytes: int) -> str:
    return secrets.token_hex(n_bytes)


@dataclasses.dataclass(frozen=True)
class EmulatorSettings:
    """Everything the emulator can be told. Construction validates; invalid values raise ``ValueError``."""

    token: str = dataclasses.field(default_factory=lambda: _random_hex(20), repr=False)
    account_id: str = dataclasses.field(default_factory=lambda: _random_hex(16))
    email: str | None = dataclasses.field(default=None, repr=False)
    api_key: str | None = dataclasses.field(default=None, repr=False)
    data_dir: Path | None = None
    token_id: str = dataclasses.field(default_factory=lambda: _random_hex(16))

    lora_models: tuple[str, ...] = DEFAULT_LORA_MODELS
    async_queue_models: tuple[str, ...] = DEFAULT_ASYNC_QUEUE_MODELS
    # Catalog entries served as given, beside (or instead of) the built-in ones; see emulator.models.
    extra_models: tuple[dict[str, Any], ...] = ()
    max_finetunes: int = 100
    max_file_bytes: int = 300_000_000
    duplicate_names: str = "allow"
    asset_overwrite: str = "replace"
    upload_response: str = "minimal"
    list_shape: str = "array"
    public_seed: int = 45

    rate_limit: int = 1200
    rate_window: float = 300.0
    rate_lockout: float = 300.0

    token_kind: str = "account"
    token_status: str = "active"
    token_expires_on: str | None = None
    token_not_before: str | None = None

    request_log_size: int = 1000

    # Workers KV (emulator/kv.py): what the token may do with KV ("write", "read" or "none": the
    # permissions Workers KV Storage Write / Read), and the seconds between two writes to one key
    # (Cloudflare: 1 write per second per key; 0 switches the limit off).
    token_kv_access: str = "write"
    kv_write_interval: float = 1.0

    # The Batch API (emulator/batch_queue.py): seconds from submit to "running" and to responses,
    # and the payload limit (Cloudflare: 10 MB).
    queue_running_after: float = 0.5
    queue_delay: float = 2.0
    queue_max_bytes: int = 10_000_000

    def __post_init__(self) -> None:
        for key in ("token", "account_id", "token_id"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{key} must be a non-empty string")
        if (self.email is None) != (self.api_key is None):
            raise ValueError("email and api_key must be given together")
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        for key in _NON_NEGATIVE_INTS:
            _check_int(key, getattr(self, key), minimum=0)
        for key in _POSITIVE_INTS:
            _check_int(key, getattr(self, key), minimum=1)
        for key in _OPTIONAL_STRINGS:
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key} must be a string or null")
        for key in ("lora_models", "async_queue_models"):
            models = getattr(self, key)
            if isinstance(models, str) or not all(isinstance(m, str) and m for m in models):
                raise ValueError(f"{key} must be a list of non-empty strings")
            object.__setattr__(self, key, tuple(models))
        extra = self.extra_models
        if isinstance(extra, (str, dict)) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) and e["name"] for e in extra
        ):
            raise ValueError("extra_models must be a list of objects, each with a non-empty string 'name'")
        object.__setattr__(self, "extra_models", tuple(extra))
        object.__setattr__(self, "rate_window", _check_number("rate_window", self.rate_window, positive=True))
        object.__setattr__(self, "rate_lockout", _check_number("rate_lockout", self.rate_lockout))
        for key in ("queue_running_after", "queue_delay", "kv_write_interval"):
            object.__setattr__(self, key, _check_number(key, getattr(self, key)))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))

    def patched(self, patch: dict[str, Any]) -> EmulatorSettings:
        """Return a copy with run-time settings changed; unknown or start-up-only keys raise ValueError."""
        unknown = sorted(set(patch) - RUNTIME_KEYS)
        if unknown:
            raise ValueError(f"not runtime settings: {', '.join(unknown)}; allowed: {', '.join(sorted(RUNTIME_KEYS))}")
        return dataclasses.replace(self, **patch)

    def public_view(self) -> dict[str, Any]:
        """Settings as JSON-able data, without secrets (the email counts as one: it names a login)."""
        view: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            if field.name in _SECRET_KEYS:
                continue
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            view[field.name] = value
        view["email_auth_configured"] = self.email is not None
        return view


RUNTIME_KEYS = frozenset(f.name for f in dataclasses.fields(EmulatorSettings)) - _STARTUP_ONLY


def _check_int(key: str, value: object, *, minimum: int) -> None:
    # bool is an int subclass; `"rate_limit": true` in a JSON patch is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}; got {value!r}")


def _check_number(key: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number; got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{key} must be {'> 0' if positive else '>= 0'}; got {value!r}")
    return float(value)
