"""Turn Cloudflare's answers into results or :class:`CloudflareAPIError`.

Cloudflare's edge can answer with its JSON envelope, an HTML error page, or nothing a client can
parse; a 200 can still say ``"success": false``. Every shape ends here as a result or one error
type, never as a bare ``KeyError``/``JSONDecodeError``. Which error type a status gets is the
policy's call (:func:`airflow_provider_cfai.policy.error_class`). Both transports use this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

from airflow_provider_cfai.exceptions import CloudflarePermanentAPIError
from airflow_provider_cfai.policy import error_class

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


def unwrap(response: HTTPResponse, method: str, path: str) -> Any:
    """Return the envelope's ``result`` (``None`` for bodies that have none) or raise."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, Mapping):
        detail = _summarise_text(response) if body is None else f"unexpected JSON body: {json.dumps(body)[:200]}"
        # An unreadable success is the edge misbehaving, not an answer: classed like "no response".
        raise error_class(status if status >= 300 else None)(method, path, status, detail=detail)
    errors = _error_items(body)
    if status >= 300:
        raise error_class(status)(method, path, status, errors, detail=None if errors else "no error details")
    if body.get("success") is False:
        # A 200 that says it failed will say so again: nothing transient about it.
        raise CloudflarePermanentAPIError(method, path, status, errors, detail=None if errors else "success is false")
    return body.get("result")
