"""The raw ASGI layer in front of every API route: faults, rate limiting, auth, bookkeeping.

It sits outside FastAPI's routing so it sees every request under ``/client/v4`` (including unknown
routes) exactly once, can stamp ``Ratelimit`` headers on any answer, and can do things a route
cannot, such as closing the TCP connection without a response.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from airflow_provider_cfai.emulator.auth import authenticate, present
from airflow_provider_cfai.emulator.envelope import ApiError
from airflow_provider_cfai.emulator.multipart import discard

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from airflow_provider_cfai.emulator.faults import FaultRule
    from airflow_provider_cfai.emulator.state import EmulatorState

__all__ = ["API_PREFIX", "ConnectionDropped", "EmulatorMiddleware"]

API_PREFIX = "/client/v4"
LINGER_SECONDS = 30.0
_ACCOUNT_PATH = re.compile(r"/accounts/([^/]+)(?:/.*)?")


class ConnectionDropped(Exception):
    """Raised instead of closing the socket when the server gives the app no socket (in-process clients)."""


class EmulatorMiddleware:
    def __init__(self, app: ASGIApp, state: EmulatorState, resolve_route: Callable[[Scope], str | None]) -> None:
        self.app = app
        self.state = state
        self.resolve_route = resolve_route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            # Cloudflare's own docs use trailing slashes; answering with a redirect would make
            # clients re-send uploads, so the slash is simply ignored.
            path = path.rstrip("/") or "/"
            scope = {**scope, "path": path, "raw_path": scope.get("raw_path", b"").rstrip(b"/") or b"/"}
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            await self._api(scope, receive, send, path[len(API_PREFIX) :] or "/")
        else:
            await self.app(scope, receive, send)

    async def _api(self, scope: Scope, receive: Receive, send: Send, sub_path: str) -> None:
        method: str = scope["method"]
        template = self.resolve_route(scope)
        route = template[len(API_PREFIX) :] if template else None
        status: list[int | None] = [None]
        # Dropping the connection reaches the socket through uvicorn's own ``receive``.
        socket_receive = receive
        body = None
        if self.state.fault_needs_body(method, sub_path):
            body, receive = await _buffer_body(receive)
        fault = self.state.take_fault(method, sub_path, body)

        def record(fault_name: str | None = None) -> None:
            lora = scope.get("state", {}).get("lora")
            self.state.record_request(
                method=method, path=sub_path, route=route, status=status[0], fault=fault_name, lora=lora
            )

        if fault is not None and fault.action in ("respond", "drop"):
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.action == "respond":
                status[0] = fault.status
                await self._respond_fault(fault, scope, receive, send)
            record(fault.action)
            if fault.action == "drop":
                await close_connection(socket_receive)
            return

        app: ASGIApp = self.app
        try:
            headers = self._gate(scope, sub_path)
        except ApiError as error:
            await _linger(scope, receive)
            app, headers = error.response(), {}
        if fault is None:
            await app(scope, receive, _adding_headers(send, headers, status))
            record()
            return

        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        # The work happens for real (a create commits) but its answer is withheld.
        await app(scope, receive, _adding_headers(hold, headers | fault.headers, status))
        if fault.action == "garble_after_commit":
            status[0] = fault.status
        record(fault.action)
        if fault.action == "drop_after_commit":
            await close_connection(socket_receive)
            return
        await asyncio.sleep(fault.delay)
        if fault.action == "garble_after_commit":
            held = _garbled(fault, held)
        for message in held:
            await send(message)

    def _gate(self, scope: Scope, sub_path: str) -> dict[str, str]:
        """Rate limit, then authenticate, then check the account; return headers for the answer."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client")
        presented = present(headers, client[0] if client else "unknown")
        decision = self.state.admit(presented.rate_key)
        if not decision.allowed:
            raise ApiError(429, 971, "Please wait and consider throttling your request speed", headers=decision.headers)
        settings = self.state.settings
        try:
            authenticate(presented, settings, verify_route=sub_path.endswith("/tokens/verify"))
            match = _ACCOUNT_PATH.fullmatch(sub_path)
            if match is not None and match.group(1) != settings.account_id:
                raise ApiError(
                    404,
                    7003,
                    f"Could not route to {API_PREFIX}{sub_path}, perhaps your object identifier is invalid?",
                )
        except ApiError as error:
            error.headers = decision.headers | error.headers
            raise
        scope.setdefault("state", {})["credential_kind"] = presented.kind
        return decision.headers

    @staticmethod
    async def _respond_fault(fault: FaultRule, scope: Scope, receive: Receive, send: Send) -> None:
        await _linger(scope, receive)
        body, media_type = fault.render()
        await Response(body, status_code=fault.status, media_type=media_type, headers=fault.headers)(
            scope, receive, send
        )


def _garbled(fault: FaultRule, held: list[Message]) -> list[Message]:
    """The withheld answer as ``fault.status`` with a non-envelope body; its other headers are kept."""
    start = next(m for m in held if m["type"] == "http.response.start")
    real = b"".join(m.get("body", b"") for m in held if m["type"] == "http.response.body")
    body, media_type = fault.garble(real)
    replaced = {b"content-length", b"content-type"}
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in replaced]
    headers += [(b"content-length", str(len(body)).encode()), (b"content-type", media_type.encode("latin-1"))]
    return [
        {"type": "http.response.start", "status": fault.status, "headers": headers},
        {"type": "http.response.body", "body": body, "more_body": False},
    ]


def _adding_headers(send: Send, headers: dict[str, str], status: list[int | None]) -> Send:
    encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
            if encoded:
                names = {name for name, _ in encoded}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": [*kept, *encoded]}
        await send(message)

    return wrapped


async def _linger(scope: Scope, receive: Receive) -> None:
    """Consume an unread request body before answering early (see ``multipart.discard``)."""
    headers = dict(scope["headers"])
    if headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers:
        return
    await discard(_body_chunks(receive), timeout=LINGER_SECONDS)


async def _body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _buffer_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read the whole request body (for a fault rule that matches on it) and a ``receive`` that replays it."""
    chunks = [chunk async for chunk in _body_chunks(receive)]
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return body, replay


async def close_connection(receive: Receive) -> None:
    """Close the client's TCP connection without sending a byte.

    ASGI offers no way to do this, so it reaches the transport through uvicorn's ``receive``, which
    is a bound method of the request cycle. Aborting (rather than answering) is what a client sees
    when a proxy or server dies mid-request.
    """
    cycle: Any = getattr(receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise ConnectionDropped("connection dropped by an emulator fault rule")
    transport.abort()
    # Let the server notice the disconnect before the app returns, or it reports a missing response.
    for _ in range(100):
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0)
