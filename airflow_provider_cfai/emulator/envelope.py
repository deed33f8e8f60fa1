"""Cloudflare's JSON envelopes, written by hand with ``json.dumps`` (no response models on hot paths)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["ApiError", "error_body", "json_response", "query_int", "success_body", "success_body_raw"]

JSON_TYPE = "application/json"


class ApiError(Exception):
    """A failure answered as a Cloudflare error envelope; routes raise it, one handler renders it."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        error_chain: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.error_chain = error_chain
        self.headers = headers or {}

    def body(self) -> bytes:
        item: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.error_chain:
            item["error_chain"] = self.error_chain
        return error_body([item])

    def response(self) -> Response:
        return Response(self.body(), status_code=self.status, media_type=JSON_TYPE, headers=self.headers)


def success_body(result: Any) -> bytes:
    return json.dumps({"result": result, "success": True, "errors": [], "messages": []}).encode()


def success_body_raw(result_json: bytes) -> bytes:
    """Wrap an already-serialised ``result`` so cached listings are not re-encoded on every call."""
    return b'{"result":' + result_json + b',"success":true,"errors":[],"messages":[]}'


def error_body(errors: list[dict[str, Any]]) -> bytes:
    return json.dumps({"success": False, "errors": errors, "messages": [], "result": None}).encode()


def json_response(body: bytes | Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(raw, status_code=status, media_type=JSON_TYPE, headers=headers)


def query_int(query: Mapping[str, str], name: str, *, default: int, low: int, high: int, code: int) -> int:
    """A whole-number query parameter in ``[low, high]``; anything else is a 400 with ``code``."""
    raw = query.get(name)
    if raw is None:
        return default
    try:
        number = float(raw)
    except ValueError:
        number = float("nan")
    # The official SDK sends floats ("20.0"); anything not a whole number in range is refused.
    if not number.is_integer() or not low <= number <= high:
        raise ApiError(400, code, f"'{name}' must be an integer between {low} and {high}; got {raw!r}")
    return int(number)
