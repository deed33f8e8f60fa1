"""The Cloudflare API routes. Auth, rate limits and faults happen before these run (see middleware).

Error codes the emulator chose where Cloudflare documents none (Cloudflare's own codes are noted):

====  ======  ===============================================================================
code  status  meaning
====  ======  ===============================================================================
1001  400     body is not a JSON object
1002  400     create: ``name``/``model`` missing, blank or not a string; bad ``description``/``public``
1003  400     create: model does not support LoRA
1004  400     create: account already has ``max_finetunes`` finetunes
1005  400     create: duplicate name (only with ``duplicate_names="reject"``)
1006  400     public list: bad ``limit``/``offset``/``orderBy``
1007  400     upload: bad ``file_name``, missing part, malformed multipart body
1008  409     upload: asset already exists (only with ``asset_overwrite="reject"``)
1009  413     upload: file larger than ``max_file_bytes``
1010  400     models search: bad ``page``/``per_page``
1000  401     token verify: wrong kind of token, or email + key (Cloudflare: "Invalid API Token")
3037  404     upload: unknown finetune in the path (Cloudflare: "Finetune ... not found")
3037  400     run: unknown ``lora`` (400, not 404: the URL's resource, the model, exists; the bad
              reference is inside the body)
3038  400     run: the finetune was made for another base model
3039  400     run: finetune lacks one of its two files (Cloudflare)
5005  405     run with ``lora``: model does not support LoRA (Cloudflare)
5006  400     run: neither ``prompt`` nor ``messages``, or they are malformed (Cloudflare's code
              for invalid input)
5007  400     run: the model is not in the catalog (Cloudflare: "No such model")
1011  400     queue (``?queueRequest=true``): the model has no ``async_queue``
1012  400     queue: no non-empty ``requests`` list to submit, or a bad ``request_id``
1013  413     queue: payload larger than ``queue_max_bytes`` (Cloudflare: 10 MB)
1014  404     queue poll: unknown ``request_id`` (or one queued for another model)
====  ======  ===============================================================================
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from airflow_provider_cfai.emulator import catalog, models
from airflow_provider_cfai.emulator.envelope import ApiError, json_response, query_int, success_body
from airflow_provider_cfai.emulator.inference import run_model
from airflow_provider_cfai.emulator.middleware import API_PREFIX
from airflow_provider_cfai.emulator.uploads import ClientGone, receive_asset

if TYPE_CHECKING:
    from airflow_provider_cfai.emulator.batch_queue import BatchQueue
    from airflow_provider_cfai.emulator.state import EmulatorState

__all__ = ["build_api_router"]

_MINIMAL_UPLOAD_BODY = b'{"success":true}'


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, 1001, "Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, 1001, "Request body must be a JSON object")
    return body


def _required_text(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, 1002, f"Finetune creation failed: '{field}' is required and must be a non-empty string")
    return value


def build_api_router(state: EmulatorState, batches: BatchQueue) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX)

    @router.post("/accounts/{account_id}/ai/finetunes")
    async def create_finetune(request: Request, account_id: str) -> Response:
        body = await _json_object(request)
        model = _required_text(body, "model")
        name = _required_text(body, "name")
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            raise ApiError(400, 1002, "Finetune creation failed: 'description' must be a string")
        public = body.get("public", False)
        if not isinstance(public, bool):
            raise ApiError(400, 1002, "Finetune creation failed: 'public' must be true or false")
        record = state.create_finetune(name=name, model=model, description=description, public=public)
        return json_response(success_body(record))

    @router.get("/accounts/{account_id}/ai/finetunes")
    async def list_finetunes(account_id: str) -> Response:
        return json_response(state.list_body())

    @router.get("/accounts/{account_id}/ai/finetunes/public")
    async def list_public_finetunes(request: Request, account_id: str) -> Response:
        limit = query_int(request.query_params, "limit", default=20, low=1, high=1000, code=1006)
        offset = query_int(request.query_params, "offset", default=0, low=0, high=2**31, code=1006)
        order_by = request.query_params.get("orderBy")
        if order_by is not None and order_by not in catalog.FINETUNE_COLUMNS:
            allowed = ", ".join(catalog.FINETUNE_COLUMNS)
            raise ApiError(400, 1006, f"'orderBy' must be one of {allowed}; got {order_by!r}")
        records = state.public_finetunes(limit=limit, offset=offset, order_by=order_by)
        return json_response(success_body(records))

    @router.post("/accounts/{account_id}/ai/finetunes/{finetune_id}/finetune-assets")
    async def upload_asset(request: Request, account_id: str, finetune_id: str) -> Response:
        try:
            legacy = await receive_asset(request, state, finetune_id)
        except ClientGone:
            # Nobody is left to answer; 499 (nginx's "client closed request") marks it in the log.
            return Response(status_code=499)
        if state.settings.upload_response == "legacy":
            return json_response(success_body(legacy))
        return json_response(_MINIMAL_UPLOAD_BODY)

    @router.get("/accounts/{account_id}/tokens/verify")
    async def verify_account_token(request: Request, account_id: str) -> Response:
        return _verify(request, "account")

    @router.get("/user/tokens/verify")
    async def verify_user_token(request: Request) -> Response:
        return _verify(request, "user")

    def _verify(request: Request, endpoint_kind: str) -> Response:
        settings = state.settings
        if request.state.credential_kind != "token" or settings.token_kind != endpoint_kind:
            raise ApiError(401, 1000, "Invalid API Token")
        result: dict[str, Any] = {"id": settings.token_id, "status": settings.token_status}
        expires_on = settings.token_expires_on
        if expires_on is None and settings.token_status == "expired":
            expires_on = "2020-01-01T00:00:00Z"
        if expires_on is not None:
            result["expires_on"] = expires_on
        if settings.token_not_before is not None:
            result["not_before"] = settings.token_not_before
        return json_response(success_body(result))

    @router.get("/accounts/{account_id}/ai/models/search")
    async def search_models(request: Request, account_id: str) -> Response:
        return json_response(models.search_body(models.catalog_for(state.settings), request.query_params))

    @router.post("/accounts/{account_id}/ai/run/{model:path}")
    async def run(request: Request, account_id: str, model: str) -> Response:
        queued = batches.answer(state, model, request.query_params, await request.body())
        if queued is not None:
            return json_response(success_body(queued))
        body = await _json_object(request)
        if isinstance(body.get("lora"), str):
            request.state.lora = body["lora"]  # the request log shows which finetune a run asked for
        return json_response(success_body(run_model(state, model, body)))

    return router
