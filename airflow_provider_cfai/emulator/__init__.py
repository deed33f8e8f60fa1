"""A local Cloudflare Workers AI API for demos and tests: ``python -m airflow_provider_cfai.emulator``.

It serves the finetune endpoints (the account's and Cloudflare's public ones), both token-verify
endpoints, the model catalog (``/ai/models/search``) and ``/ai/run/{model}`` with its Batch API
(``?queueRequest=true``) under ``/client/v4``, with Cloudflare's envelopes, auth errors, limits and
rate limiting, plus a control API under ``/__emulator/`` for tests (state, reset, settings, fault
injection). It shares no code with the
hook on purpose: a bug in a shared envelope parser would hide on both sides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_cfai.emulator.app import create_app
    from airflow_provider_cfai.emulator.settings import EmulatorSettings

__all__ = ["EmulatorSettings", "create_app"]


def __getattr__(name: str) -> Any:
    # Lazy, so `cfai-emulator --help` and the submodules don't pay for importing FastAPI.
    if name == "create_app":
        from airflow_provider_cfai.emulator.app import create_app

        return create_app
    if name == "EmulatorSettings":
        from airflow_provider_cfai.emulator.settings import EmulatorSettings

        return EmulatorSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
