"""The control API under ``/__emulator/``: inspect state, reset it, change settings, inject faults.

Plain JSON (no Cloudflare envelope), never authenticated or rate limited: it is for the tests that
drive the emulator, not for the client under test.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.responses import Response  # noqa: TC002 (FastAPI reads route annotations at runtime)

from airflow_provider_cfai.emulator.envelope import json_response

if TYPE_CHECKING:
    from airflow_provider_cfai.emulator.state import EmulatorState

__all__ = ["CONTROL_PREFIX", "ControlError", "build_control_router"]

CONTROL_PREFIX = "/__emulator"


class ControlError(Exception):
    """A bad control request; answered as ``400 {"ok": false, "error": ...}``."""


async def _json_body(request: Request, *, default: Any) -> Any:
    raw = await request.body()
    if not raw.strip():
        return default
    try:
        return json.loads(raw)
    except ValueError:
        raise ControlError("body is not valid JSON") from None


def build_control_router(state: EmulatorState) -> APIRouter:
    router = APIRouter(prefix=CONTROL_PREFIX)

    @router.get("/health")
    async def health() -> Response:
        return json_response({"ok": True})

    @router.get("/state")
    async def get_state() -> Response:
        return json_response(state.snapshot())

    @router.post("/reset")
    async def reset(request: Request) -> Response:
        body = await _json_body(request, default={})
        if not isinstance(body, dict) or set(body) - {"settings"} or not isinstance(body.get("settings", False), bool):
            raise ControlError('body must be {} or {"settings": true|false}')
        state.reset(settings=bool(body.get("settings", False)))
        return json_response({"ok": True})

    @router.get("/settings")
    async def get_settings() -> Response:
        return json_response(state.settings.public_view())

    @router.post("/settings")
    async def patch_settings(request: Request) -> Response:
        body = await _json_body(request, default=None)
        if not isinstance(body, dict):
            raise ControlError("body must be a JSON object of settings")
        try:
            return json_response(state.patch_settings(body))
        except (ValueError, TypeError) as exc:
            raise ControlError(str(exc)) from None

    @router.get("/faults")
    async def list_faults(request: Request) -> Response:
        # ?all=true adds spent and cleared rules, so a test can read how often each one fired.
        flag = request.query_params.get("all", "false")
        if flag not in ("true", "false"):
            raise ControlError("all must be true or false")
        return json_response(state.faults(include_spent=flag == "true"))

    @router.post("/faults")
    async def add_fault(request: Request) -> Response:
        body = await _json_body(request, default=None)
        try:
            return json_response(state.add_fault(body))
        except ValueError as exc:
            raise ControlError(str(exc)) from None

    @router.delete("/faults")
    async def clear_faults() -> Response:
        state.clear_faults()
        return json_response({"ok": True})

    return router
