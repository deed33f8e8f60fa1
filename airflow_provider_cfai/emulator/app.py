"""Assembles the FastAPI application from settings: state, the Batch API queue, routes, middleware, error rendering."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.routing import Match

from airflow_provider_cfai.emulator.batch_queue import BatchQueue
from airflow_provider_cfai.emulator.control import ControlError, build_control_router
from airflow_provider_cfai.emulator.envelope import ApiError, error_body, json_response
from airflow_provider_cfai.emulator.kv import KVStore, build_kv_control_router, build_kv_router
from airflow_provider_cfai.emulator.middleware import API_PREFIX, EmulatorMiddleware
from airflow_provider_cfai.emulator.routes import build_api_router
from airflow_provider_cfai.emulator.settings import EmulatorSettings
from airflow_provider_cfai.emulator.state import EmulatorState
from airflow_provider_cfai.emulator.store import Store

if TYPE_CHECKING:
    from starlette.responses import Response
    from starlette.types import Scope

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: EmulatorSettings | None = None) -> FastAPI:
    """Build the emulator app. Without ``settings.data_dir`` data lives in a temp dir removed with the app.

    The state is reachable as ``app.state.emulator`` (an :class:`EmulatorState`).
    """
    settings = settings or EmulatorSettings()
    if settings.data_dir is not None:
        store = Store(settings.data_dir, persistent=True)
        scratch = None
    else:
        scratch = tempfile.TemporaryDirectory(prefix="cfai-emulator-")
        store = Store(Path(scratch.name), persistent=False)
    state = EmulatorState(settings, store)
    batches = BatchQueue(state.clock)
    state.attach("batches", batches)
    kv = KVStore(state.clock)
    state.attach("kv", kv)

    app = FastAPI(title="cfai-emulator", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.emulator = state
    # Kept on the app so the directory lives as long as the app does; the CLI cleans it up at exit.
    app.state.scratch_dir = scratch
    app.include_router(build_api_router(state, batches))
    app.include_router(build_control_router(state))
    app.include_router(build_kv_router(state, kv))
    app.include_router(build_kv_control_router(state, kv))

    def resolve_route(scope: Scope) -> str | None:
        for route in app.router.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return str(getattr(route, "path", None))
        return None

    app.add_middleware(EmulatorMiddleware, state=state, resolve_route=resolve_route)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(ControlError)
    async def control_error(request: Request, exc: ControlError) -> Response:
        return json_response({"ok": False, "error": str(exc)}, status=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if not request.url.path.startswith(API_PREFIX):
            return json_response({"ok": False, "error": exc.detail}, status=exc.status_code)
        if exc.status_code == 405:
            item = {"code": 7001, "message": "Method not allowed for this route"}
        else:
            item = {"code": 7000, "message": "No route for that URI"}
        return json_response(error_body([item]), status=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("Unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        item = {"code": 10001, "message": "Internal error in the emulator (see its log)"}
        return json_response(error_body([item]), status=500)

    return app
