"""Fault rules: "the next N calls matching METHOD and PATH misbehave like this".

A rule may also name ``request_body``, a regular expression the request's body must match: the Batch
API submits and polls with POSTs to one URL, told apart only by their bodies.

Actions: ``respond`` (answer ``status``/``body``/``html`` without doing the work), ``drop`` (close the
connection without doing the work), ``drop_after_commit`` (do the work, then close the connection),
``delay_after_commit`` (do the work, answer after ``delay`` s) and ``garble_after_commit`` (do the
work, then answer ``status``, default 200, with a body that is not Cloudflare's envelope: the HTML
page with ``html``, ``body`` as given, or by default the real answer's JSON cut in half, as an edge
or proxy that mangles a success would).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from typing import Any

__all__ = ["ACTIONS", "FaultRule", "parse_fault"]

ACTIONS = ("respond", "drop", "drop_after_commit", "delay_after_commit", "garble_after_commit")
_KEYS = frozenset({"method", "path", "times", "action", "status", "body", "html", "headers", "delay", "request_body"})
_ids = itertools.count(1)

_HTML_PAGE = """<!DOCTYPE html>
<html lang="en-US">
<head>
<title>api.cloudflare.com | {status}: {reason}</title>
<meta charset="UTF-8" />
</head>
<body>
<div id="cf-wrapper">
<div id="cf-error-details" class="cf-error-details-wrapper">
<h1><span class="cf-error-type">Error</span> <span class="code-label">Error code {status}</span></h1>
<h2 class="cf-subheadline">{reason}</h2>
<p>Cloudflare Ray ID: <strong class="font-semibold">{ray}</strong> &bull; emulated by cfai-emulator</p>
</div>
</div>
</body>
</html>
"""
_REASONS = {
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway time-out",
    520: "Web server is returning an unknown error",
    521: "Web server is down",
    522: "Connection timed out",
    524: "A timeout occurred",
}


@dataclasses.dataclass
class FaultRule:
    id: int
    method: str
    path: str
    pattern: re.Pattern[str]
    times: int
    action: str
    status: int
    body: Any
    html: bool
    headers: dict[str, str]
    delay: float
    # Requests this rule has taken, so a test can prove its fault really happened.
    fired: int = 0
    request_body: str | None = None
    body_pattern: re.Pattern[str] | None = None

    def matches(self, method: str, path: str, body: bytes | None = None) -> bool:
        if not self._call_matches(method, path):
            return False
        if self.body_pattern is None:
            return True
        return body is not None and self.body_pattern.search(body.decode("utf-8", "replace")) is not None

    def wants_body(self, method: str, path: str) -> bool:
        """Whether deciding this rule for such a call needs the request body read first."""
        return self.body_pattern is not None and self._call_matches(method, path)

    def _call_matches(self, method: str, path: str) -> bool:
        return self.times > 0 and self.method in ("*", method) and self.pattern.search(path) is not None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "times": self.times,
            "action": self.action,
            "status": self.status,
            "body": self.body,
            "html": self.html,
            "headers": self.headers,
            "delay": self.delay,
            "fired": self.fired,
            "request_body": self.request_body,
        }

    def garble(self, real_body: bytes) -> tuple[bytes, str]:
        """Body and content type of a ``garble_after_commit`` answer, given the real one's body."""
        if self.html or self.body is not None:
            return self.render()
        return real_body[: len(real_body) // 2], "application/json"

    def render(self) -> tuple[bytes, str]:
        """Body and content type of a ``respond`` answer."""
        if isinstance(self.body, str):
            return (
                self.body.encode(),
                "text/html; charset=UTF-8" if self.html else "text/plain; charset=utf-8",
            )
        if self.body is not None:
            return json.dumps(self.body).encode(), "application/json"
        if self.html:
            reason = _REASONS.get(self.status, "Error")
            page = _HTML_PAGE.format(status=self.status, reason=reason, ray=f"{self.id:016x}")
            return page.encode(), "text/html; charset=UTF-8"
        if self.status < 400:
            envelope: dict[str, Any] = {"result": None, "success": True, "errors": [], "messages": []}
        else:
            error = {"code": 10001, "message": f"Injected fault: HTTP {self.status}"}
            envelope = {"success": False, "errors": [error], "messages": [], "result": None}
        return json.dumps(envelope).encode(), "application/json"


def parse_fault(spec: object) -> FaultRule:
    """Validate a rule from the control API; raises ValueError naming the offending key."""
    if not isinstance(spec, dict):
        raise ValueError("a fault rule must be a JSON object")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise ValueError(f"unknown fault keys: {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
    method = spec.get("method", "*")
    if not isinstance(method, str) or not method:
        raise ValueError("method must be an HTTP method or '*'")
    path = spec.get("path", "")
    if not isinstance(path, str):
        raise ValueError("path must be a regular expression string")
    try:
        pattern = re.compile(path)
    except re.error as exc:
        raise ValueError(f"path is not a valid regular expression: {exc}") from None
    times = spec.get("times", 1)
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise ValueError("times must be an integer >= 1")
    action = spec.get("action", "respond")
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
    status = spec.get("status", 200 if action == "garble_after_commit" else 503)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError("status must be an integer HTTP status (100-599)")
    html = spec.get("html", False)
    if not isinstance(html, bool):
        raise ValueError("html must be true or false")
    headers = spec.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError("headers must be an object of string values")
    delay = spec.get("delay", 0)
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) or delay < 0:
        raise ValueError("delay must be a number of seconds >= 0")
    request_body = spec.get("request_body")
    if request_body is not None and not isinstance(request_body, str):
        raise ValueError("request_body must be a regular expression string or null")
    try:
        body_pattern = re.compile(request_body) if request_body is not None else None
    except re.error as exc:
        raise ValueError(f"request_body is not a valid regular expression: {exc}") from None
    return FaultRule(
        id=next(_ids),
        method=method.upper(),
        path=path,
        pattern=pattern,
        times=times,
        action=action,
        status=status,
        body=spec.get("body"),
        html=html,
        headers=dict(headers),
        delay=float(delay),
        request_body=request_body,
        body_pattern=body_pattern,
    )
