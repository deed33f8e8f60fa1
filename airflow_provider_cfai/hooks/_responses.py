"""Turn Cloudflare's answers into results or :class:`CloudflareAPIError`.

Cloudflare's edge can answer with its JSON envelope, an HTML error page, or nothing a client can
parse; a 200 can still say ``"success": false``. Every shape ends here as a result or one error
type, never as a bare ``KeyError``/``JSONDecodeError``. This module only reads what arrived; what
it means (the error type, whether the call may have been applied) is the policy's call
(:func:`airflow_provider_cfai.policy.error_class`, :func:`~airflow_provider_cfai.policy.outcome`).
Both hooks use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

from airflow_provider_cfai.policy import AttemptFailed, after_status, error_class

#: What a Batch API submit's and poll's ``result`` must carry (``needs`` of :func:`unwrap`).
BATCH_SUBMIT = ("request_id",)
BATCH_POLL = ("status", "responses")

_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


class HTTPResponse(Protocol):
    """What both transports' responses offer (``requests.Response``, ``httpx.Response``)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def text(self) -> str: ...

    @property
    def content(self) -> bytes: ...

    def json(self) -> Any: ...


def _summarise_text(response: HTTPResponse) -> str:
    content_type = response.headers.get("Content-Type", "unknown content type").split(";")[0]
    text = response.text or ""
    title = _TITLE.search(text)
    summary = title.group(1) if title else _TAGS.sub(" ", text)
    summary = _SPACE.sub(" ", summary).strip()[:200]
    if not summary:
        return f"empty {content_type} body"
    return f"non-JSON {content_type} body: {summary}"


def _error_items(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    items = body.get("errors")
    if not isinstance(items, list):
        return []
    return [dict(item) if isinstance(item, Mapping) else {"message": str(item)} for item in items]


def unwrap(
    response: HTTPResponse, method: str, path: str, *, needs: tuple[str, ...] | None = None, raw: bool = False
) -> Any:
    """Return the envelope's ``result`` or raise :class:`~airflow_provider_cfai.policy.AttemptFailed`.

    :param raw: a success is the body's bytes, not an envelope (a Workers KV value); an error answer
        is still read as an envelope.

    :param needs: what a success must carry for the call to know what it did: ``None`` for any
        ``result``; otherwise ``result`` must be an object (a one-object list is unwrapped) holding a
        non-empty value for at least one of these keys (``()``: any object). A success without it
        is read like a garbled one: the work may be done, its answer is unusable.
    """
    status = response.status_code
    if raw and 200 <= status < 300:
        return response.content
    retry_after = response.headers.get("Retry-After")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, Mapping):
        detail = _summarise_text(response) if body is None else f"unexpected JSON body: {json.dumps(body)[:200]}"
        raise _failed(method, path, status, retry_after, readable=False, detail=detail)
    errors = _error_items(body)
    if status >= 300:
        raise _failed(method, path, status, retry_after, errors=errors, detail=None if errors else "no error details")
    if body.get("success") is False:
        # A 200 that says it failed will say so again: nothing transient about it.
        raise _failed(method, path, status, retry_after, errors=errors, detail=None if errors else "success is false")
    result = body.get("result")
    if needs is None:
        return result
    found = _object_with(result, needs)
    if found is None:
        wanted = f"an object with {' or '.join(repr(n) for n in needs)}" if needs else "an object"
        detail = f"expected {wanted} in 'result', got {_shape(result)}"
        raise _failed(method, path, status, retry_after, readable=False, detail=detail)
    return found


def _failed(
    method: str,
    path: str,
    status: int,
    retry_after: str | None,
    *,
    readable: bool = True,
    errors: list[dict[str, Any]] | None = None,
    detail: str | None = None,
) -> AttemptFailed:
    error = error_class(status, readable=readable)(method, path, status, errors or (), detail=detail)
    return after_status(error, retry_after, readable=readable)


def _object_with(result: Any, keys: tuple[str, ...]) -> dict[str, Any] | None:
    if isinstance(result, list) and len(result) == 1:
        result = result[0]
    if not isinstance(result, dict):
        return None
    if keys and all(result.get(key) in (None, "") for key in keys):
        return None
    return result


def _shape(result: Any) -> str:
    if isinstance(result, dict):
        return f"an object with keys {sorted(result)[:10]}"
    return type(result).__name__
