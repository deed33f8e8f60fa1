"""Async hook for Workers AI API calls from the triggerer and the batch engines (``httpx``).

The asynchronous twin of :class:`~airflow_provider_cfai.hooks.cloudflare_ai.CloudflareAIHook`, as
Airflow's http provider pairs ``HttpAsyncHook`` with ``HttpHook``: the same connection, the same
policy (:mod:`airflow_provider_cfai.policy`), the same retry loop
(:class:`~airflow_provider_cfai.hooks._retry.RetryLoop`), the same envelope reader
(:func:`~airflow_provider_cfai.hooks._responses.unwrap`) and the same process-wide rate-limit gate
of the token (:mod:`airflow_provider_cfai.hooks._pacing`). What is left here is ``httpx``: the
pooled client, and turning its outcomes into the policy's inputs.

Only the trigger and the batch engines import this module, at run time: it imports ``httpx``.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import httpx
from airflow.sdk import BaseHook

from airflow_provider_cfai.exceptions import CloudflareAPIError
from airflow_provider_cfai.hooks._connection import (
    checked_account_id,
    missing_connection_error,
    origin,
    read_settings,
    user_agent,
)
from airflow_provider_cfai.hooks._pacing import gate_for_settings
from airflow_provider_cfai.hooks._responses import BATCH_POLL, unwrap
from airflow_provider_cfai.hooks._retry import RetryLoop
from airflow_provider_cfai.policy import after_transport_failure

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from types import TracebackType

    from airflow_provider_cfai.hooks._connection import ConnectionSettings
    from airflow_provider_cfai.hooks._pacing import Gate

__all__ = ["CloudflareAIAsyncHook", "RetryLogger"]

_CONNECT_TIMEOUT = 10.0
# Nothing was sent when one of these is raised: the connection never existed (or, for a pool
# timeout, was never handed to this request).
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class RetryLogger(Protocol):
    """Where retries are reported: a stdlib logger, or a trigger's ``log``."""

    def warning(self, msg: str, /, *args: Any) -> Any: ...


class CloudflareAIAsyncHook(BaseHook):
    """Send Workers AI API calls from async code, one pooled ``httpx.AsyncClient`` per hook.

    Use it as an async context manager: the connection is read on entry (``aget_connection``, off
    the event loop's blocking paths) and the pool is closed on exit::

        async with CloudflareAIAsyncHook("cloudflare_ai_default") as hook:
            result = await hook.run_model("@cf/meta/llama-3.1-8b-instruct", {"prompt": "Hi"})

    :param cloudflare_conn_id: the Airflow connection to use.
    :param settings: already checked connection settings, instead of reading ``cloudflare_conn_id``
        (a worker that holds the sync hook's :attr:`~CloudflareAIHook.settings`).
    :param account_id: another account than the connection's login.
    :param max_connections: the pool size; at least the number of calls made at once.
    :param sleep: how retries wait (tests pass a fake clock's sleep).
    :param logger: where retries are logged (a trigger passes its own ``log``).
    """

    conn_name_attr = "cloudflare_conn_id"
    default_conn_name = "cloudflare_ai_default"
    conn_type = "cloudflare_ai"
    hook_name = "Cloudflare Workers AI (async)"

    def __init__(
        self,
        cloudflare_conn_id: str = default_conn_name,
        *,
        settings: ConnectionSettings | None = None,
        account_id: str | None = None,
        max_connections: int = 16,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        logger: RetryLogger | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cloudflare_conn_id = cloudflare_conn_id
        self._settings = settings
        self._account_override = checked_account_id(account_id.strip()) if account_id else None
        self._max_connections = max_connections
        self._sleep = sleep
        if logger is not None:
            self._log = logger  # type: ignore[assignment]
        self._gate: Gate | None = None
        self._http: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cloudflare_conn_id={self.cloudflare_conn_id!r})"

    async def __aenter__(self) -> CloudflareAIAsyncHook:
        await self.aget_settings()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    # -- connection -------------------------------------------------------------------------------

    async def aget_settings(self) -> ConnectionSettings:
        """The checked connection settings, read from Airflow on first use (``aget_connection``)."""
        if self._settings is None:
            try:
                conn = await self.aget_connection(self.cloudflare_conn_id)
            except Exception as error:
                missing = missing_connection_error(self.cloudflare_conn_id, self.conn_type, error)
                if missing is None:
                    raise
                raise missing from None
            self._settings = read_settings(conn, self.cloudflare_conn_id, self.conn_type, {})
        return self._settings

    @property
    def settings(self) -> ConnectionSettings:
        """The settings once read (inside ``async with``, or given to the constructor)."""
        if self._settings is None:
            raise RuntimeError(f"{self!r}: use it inside `async with`, or await aget_settings() first")
        return self._settings

    @property
    def account_id(self) -> str:
        return self._account_override or self.settings.account_id

    @property
    def origin(self) -> str:
        """How messages name the server: ``scheme://host:port``, never a path, query or credential."""
        return origin(self.settings.base_url)

    @property
    def http(self) -> httpx.AsyncClient:
        """The pooled ``httpx.AsyncClient``, made on first use, carrying auth and the User-Agent."""
        if self._http is None:
            settings = self.settings
            verify: bool | ssl.SSLContext = settings.verify if isinstance(settings.verify, bool) else True
            if isinstance(settings.verify, str):
                verify = ssl.create_default_context(cafile=settings.verify)
            limits = httpx.Limits(
                max_connections=self._max_connections, max_keepalive_connections=self._max_connections
            )
            mounts = {_proxy_pattern(key): httpx.AsyncHTTPTransport(proxy=url) for key, url in settings.proxies.items()}
            headers = {"User-Agent": user_agent(f"httpx/{httpx.__version__}"), "Accept": "application/json"}
            self._http = httpx.AsyncClient(
                headers={**headers, **settings.auth_headers},
                timeout=httpx.Timeout(settings.timeout, connect=min(_CONNECT_TIMEOUT, settings.timeout)),
                limits=limits,
                verify=verify,
                mounts=mounts or None,
            )
        return self._http

    # -- API calls --------------------------------------------------------------------------------

    def run_path(self, model: str) -> str:
        """``/accounts/{id}/ai/run/{model}``: the path of runs, queue submits and queue polls."""
        return f"/accounts/{self.account_id}/ai/run/{quote(model, safe='/@')}"

    async def run_model(self, model: str, inputs: Mapping[str, Any]) -> Any:
        """Run a model once (``POST /ai/run/{model}``); returns Cloudflare's ``result``."""
        return await self.request("POST", self.run_path(model), json=dict(inputs))

    async def poll_batch(self, model: str, request_id: str) -> dict[str, Any]:
        """Ask the Batch API about a queued request: ``{"status": ...}`` or ``{"responses": ...}``.

        A poll changes nothing on the server, so the policy may repeat it freely.
        """
        body = {"request_id": request_id}
        result: dict[str, Any] = await self.request(
            "POST", self.run_path(model), json=body, params={"queueRequest": "true"}, needs=BATCH_POLL
        )
        return result

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        needs: tuple[str, ...] | None = None,
    ) -> Any:
        """Send one API call under the retry policy and return the envelope's ``result``.

        :param needs: what a success must carry (:func:`~airflow_provider_cfai.hooks._responses.unwrap`).
        :raises CloudflareAPIError: (or a subclass) once the policy gives up.
        """
        settings = await self.aget_settings()
        loop = RetryLoop(settings, self.cloudflare_conn_id, log=self.log)

        async def send() -> Any:
            return await self._send(method, path, json=json, params=params, needs=needs)

        return await loop.arun(send, sleep=self._sleep)

    # -- one attempt ------------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any,
        params: Mapping[str, str] | None,
        needs: tuple[str, ...] | None = None,
    ) -> Any:
        gate = await self._rate_gate()
        ticket = await gate.acquire_async()
        headers: Mapping[str, str] | None = None
        try:
            response = await self.http.request(method, self.settings.base_url + path, json=json, params=params)
            headers = response.headers
        except httpx.HTTPError as exc:
            error = CloudflareAPIError(method, path, None, detail=self._describe(exc))
            raise after_transport_failure(error, connected=not isinstance(exc, _NOT_SENT)) from exc
        finally:
            # The gate reads Ratelimit (and Ratelimit-Policy) itself; None: no answer arrived.
            await gate.release_async(ticket, headers)
        return unwrap(response, method, path, needs=needs)

    async def _rate_gate(self) -> Gate:
        """The process-wide gate of this connection's token (the sync hook's too), found on first use."""
        if self._gate is None:
            # It may read another Airflow connection (``redis_conn_id``): not on the event loop.
            self._gate = await asyncio.to_thread(gate_for_settings, self.settings)
        return self._gate

    def _describe(self, exc: httpx.HTTPError) -> str:
        # Class names only: httpx's texts can quote a proxy URL, which may carry credentials.
        if isinstance(exc, httpx.ConnectTimeout):
            return f"could not connect to {self.origin} (connect timeout)"
        if isinstance(exc, httpx.ConnectError):
            return f"could not connect to {self.origin} ({type(exc).__name__})"
        if isinstance(exc, httpx.PoolTimeout):
            return f"no free connection to {self.origin} (pool timeout)"
        if isinstance(exc, httpx.ReadTimeout):
            return f"no response from {self.origin} within {self.settings.timeout:.0f} s (read timeout)"
        return f"the connection to {self.origin} failed ({type(exc).__name__})"


def _proxy_pattern(key: str) -> str:
    """``requests``' proxy keys (``https``, ``all``, ``http://host``) as ``httpx`` mount patterns."""
    return key if "://" in key else f"{key}://"
