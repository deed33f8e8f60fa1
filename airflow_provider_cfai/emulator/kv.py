"""Workers KV, as far as a serving pointer needs it, and a stand-in for the user's Worker.

API routes (under ``/client/v4``): namespace create and list, a key's value (multipart write with
metadata, raw read) and its metadata (envelope read). Values live in memory only, beside the
finetunes but not in the data directory. The control route ``POST /__emulator/worker`` plays the
user's Worker: it reads the pointer key and runs the model with the finetune it names, as
``env.AI.run(model, {messages, lora: await env.LORA.get(key)})`` would.

Error codes (Cloudflare's where known, otherwise the emulator's own choice):

=====  ======  ==========================================================================
code   status  meaning
=====  ======  ==========================================================================
10009  404     value or metadata read: no such key (Cloudflare: "get: 'key not found'")
10013  404     no such namespace (emulator's choice)
10014  400     namespace create: the title is taken (Cloudflare's code for a duplicate title)
10019  400     namespace create: ``title`` missing or blank (emulator's choice)
10022  400     write: not multipart, no ``value`` part, or ``metadata`` not JSON (emulator's choice)
10062  413     write: metadata over 1024 bytes (emulator's choice; the limit is Cloudflare's)
10049  429     write: more than one write per ``kv_write_interval`` seconds to a key, with
               ``Retry-After`` (emulator's choice of code; the limit is Cloudflare's)
10000  403     the token lacks the KV permission (setting ``token_kv_access``): Cloudflare's
               "Authentication error"
=====  ======  ==========================================================================
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from airflow_provider_cfai.emulator.envelope import ApiError, json_response, success_body
from airflow_provider_cfai.emulator.middleware import API_PREFIX

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_cfai.emulator.state import EmulatorState

__all__ = ["KVStore", "build_kv_control_router", "build_kv_router"]

METADATA_MAX_BYTES = 1024
VALUE_MAX_BYTES = 25 * 1024 * 1024


@dataclasses.dataclass
class _Entry:
    value: bytes
    metadata: Any
    written_at: float


@dataclasses.dataclass
class _Namespace:
    id: str
    title: str
    keys: dict[str, _Entry] = dataclasses.field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "supports_url_encoding": True}


class KVStore:
    """Every namespace and key, behind one lock; ``clock`` times the per-key write limit."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._namespaces: dict[str, _Namespace] = {}
        self._writes = 0

    def clear(self) -> None:
        with self._lock:
            self._namespaces.clear()
            self._writes = 0

    def create_namespace(self, title: str) -> dict[str, Any]:
        with self._lock:
            if any(ns.title == title for ns in self._namespaces.values()):
                raise ApiError(400, 10014, "a namespace with this account ID and title already exists")
            namespace = _Namespace(id=uuid.uuid4().hex, title=title)
            self._namespaces[namespace.id] = namespace
            return namespace.describe()

    def list_namespaces(self, *, page: int, per_page: int) -> tuple[list[dict[str, Any]], int]:
        with self._lock:
            every = [ns.describe() for ns in self._namespaces.values()]
        start = (page - 1) * per_page
        return every[start : start + per_page], len(every)

    def write(self, namespace_id: str, key: str, value: bytes, metadata: Any, *, interval: float) -> None:
        with self._lock:
            namespace = self._namespace(namespace_id)
            now = self._clock()
            previous = namespace.keys.get(key)
            if previous is not None and now - previous.written_at < interval:
                wait = max(1, math.ceil(previous.written_at + interval - now))
                raise ApiError(
                    429,
                    10049,
                    "put: too many writes to the same key; at most one write per second per key",
                    headers={"Retry-After": str(wait)},
                )
            namespace.keys[key] = _Entry(value=value, metadata=metadata, written_at=now)
            self._writes += 1

    def read(self, namespace_id: str, key: str) -> tuple[bytes, Any]:
        with self._lock:
            entry = self._namespace(namespace_id).keys.get(key)
            if entry is None:
                raise ApiError(404, 10009, "get: 'key not found'")
            return entry.value, entry.metadata

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "writes": self._writes,
                "namespaces": [
                    {
                        **ns.describe(),
                        "keys": {
                            k: {"value": e.value.decode("utf-8", "replace"), "metadata": e.metadata}
                            for k, e in ns.keys.items()
                        },
                    }
                    for ns in self._namespaces.values()
                ],
            }

    def _namespace(self, namespace_id: str) -> _Namespace:
        namespace = self._namespaces.get(namespace_id)
        if namespace is None:
            raise ApiError(404, 10013, f"namespace {namespace_id} not found")
        return namespace


def _allow(state: EmulatorState, *, write: bool) -> None:
    access = state.settings.token_kv_access
    if access == "none" or (write and access != "write"):
        raise ApiError(403, 10000, "Authentication error")


def build_kv_router(state: EmulatorState, kv: KVStore) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX + "/accounts/{account_id}/storage/kv/namespaces")

    @router.post("")
    async def create_namespace(request: Request, account_id: str) -> Response:
        _allow(state, write=True)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            body = None
        title = body.get("title") if isinstance(body, dict) else None
        if not isinstance(title, str) or not title.strip():
            raise ApiError(400, 10019, "'title' is required and must be a non-empty string")
        return json_response(success_body(kv.create_namespace(title)))

    @router.get("")
    async def list_namespaces(request: Request, account_id: str) -> Response:
        _allow(state, write=False)
        from airflow_provider_cfai.emulator.envelope import query_int

        page = query_int(request.query_params, "page", default=1, low=1, high=2**31, code=10019)
        per_page = query_int(request.query_params, "per_page", default=20, low=5, high=1000, code=10019)
        items, total = kv.list_namespaces(page=page, per_page=per_page)
        info = {"page": page, "per_page": per_page, "count": len(items), "total_count": total}
        body = {"result": items, "result_info": info, "success": True, "errors": [], "messages": []}
        return json_response(body)

    @router.put("/{namespace_id}/values/{key:path}")
    async def write_value(request: Request, account_id: str, namespace_id: str, key: str) -> Response:
        _allow(state, write=True)
        value, metadata = await _read_write_body(request)
        kv.write(namespace_id, key, value, metadata, interval=state.settings.kv_write_interval)
        return json_response(success_body({}))

    @router.get("/{namespace_id}/values/{key:path}")
    async def read_value(account_id: str, namespace_id: str, key: str) -> Response:
        _allow(state, write=False)
        value, _ = kv.read(namespace_id, key)
        return Response(value, media_type="application/octet-stream")

    @router.get("/{namespace_id}/metadata/{key:path}")
    async def read_metadata(account_id: str, namespace_id: str, key: str) -> Response:
        _allow(state, write=False)
        _, metadata = kv.read(namespace_id, key)
        return json_response(success_body(metadata))

    return router


async def _read_write_body(request: Request) -> tuple[bytes, Any]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, 10022, "a write with metadata must be multipart/form-data with a 'value' part")
    try:
        form = await request.form(max_part_size=VALUE_MAX_BYTES)
    except Exception:
        raise ApiError(400, 10022, "malformed multipart/form-data body") from None
    raw_value = form.get("value")
    if raw_value is None:
        raise ApiError(400, 10022, "the multipart body has no 'value' part")
    value = await raw_value.read() if hasattr(raw_value, "read") else str(raw_value).encode()
    raw_metadata = form.get("metadata")
    metadata = None
    if raw_metadata is not None:
        text = (await raw_metadata.read()).decode() if hasattr(raw_metadata, "read") else str(raw_metadata)
        if len(text.encode()) > METADATA_MAX_BYTES:
            raise ApiError(413, 10062, f"metadata is larger than {METADATA_MAX_BYTES} bytes")
        try:
            metadata = json.loads(text)
        except ValueError:
            raise ApiError(400, 10022, "'metadata' must be JSON") from None
    return value, metadata


def build_kv_control_router(state: EmulatorState, kv: KVStore) -> APIRouter:
    """``POST /__emulator/worker``: the user's Worker, answering a prompt with the finetune the pointer names."""
    from airflow_provider_cfai.emulator.control import CONTROL_PREFIX, ControlError
    from airflow_provider_cfai.emulator.inference import run_model

    router = APIRouter(prefix=CONTROL_PREFIX)

    @router.post("/worker")
    async def worker(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict) or not all(
            isinstance(body.get(field), str) and body[field] for field in ("namespace_id", "key", "prompt")
        ):
            raise ControlError('body must be {"namespace_id": ..., "key": ..., "prompt": ..., "model"?: ...}')
        try:
            value, metadata = kv.read(body["namespace_id"], body["key"])
        except ApiError as error:
            raise ControlError(f"the Worker cannot read its pointer: {error.message}") from None
        model = body.get("model") or (metadata or {}).get("model")
        if not isinstance(model, str) or not model:
            raise ControlError("no model: pass 'model', or write the pointer with metadata naming one")
        lora = value.decode()
        try:
            result = run_model(state, model, {"prompt": body["prompt"], "lora": lora})
        except ApiError as error:
            raise ControlError(f"the Worker's env.AI.run failed: [{error.code}] {error.message}") from None
        return json_response({"ok": True, "model": model, "lora": lora, "response": result["response"]})

    return router
