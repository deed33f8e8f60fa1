"""The asynchronous transport: one Workers AI API call over ``httpx.AsyncClient``, by the shared policy.

The trigger (and a non-deferred batch run) sends its calls through :class:`AsyncCloudflareClient`.
What is retried, how long to wait and when to stop is :mod:`airflow_provider_cfai.policy`, driven
by ``tenacity.AsyncRetrying`` exactly as the synchronous hook drives it with ``Retrying``; envelopes
are read by the hook's own :func:`~airflow_provider_cfai.hooks._responses.unwrap`; every request
waits its turn at the process-wide rate-limit gate of its credential
(:mod:`airflow_provider_cfai.hooks._pacing`), the same gate the hook uses. This module decides
nothing on its own: it only turns ``httpx`` outcomes into the policy's inputs.

Only the trigger and the engines import this module, at run time: it imports ``httpx``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

import httpx

from airflow_provider_cfai.exceptions import CloudflareAPIError
from airflow_provider_cfai.hooks._connection import checked_account_id, user_agent
from airflow_provider_cfai.hooks._pacing import gate_for_settings
from airflow_provider_cfai.hooks._responses import BATCH_POLL, unwrap
from airflow_provider_cfai.policy import (
    AttemptFailed,
    RetryController,
    RetryPolicy,
    after_transport_failure,
    give_up,
    log_retry,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from types import TracebackType

    from tenacity import RetryCallState

    from airflow_provider_cfai.hooks._connection import ConnectionSettings
    from airflow_provider_cfai.hooks._pacing import Gate

__all__ = ["AsyncCloudflareClient", "RetryLogger"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 10.0
# Nothing was sent when one of these is raised: the connection never existed (or, for a pool
# timeout, was never handed to this request).
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class RetryLogger(Protocol):
    """Where retries are reported: a stdlib logger, or a trigger's ``log``."""

    def warning(self, msg: str, /, *args: Any) -> Any: ...


class AsyncCloudflareClient:
    """Send Workers AI API calls from async code, one pooled ``httpx.AsyncClient`` per client.

    Use it as an async context manager (the connection pool is closed on exit)::

        async with AsyncCloudflareClient(settings) as client:
            result = await client.run_model("@cf/meta/llama-3.1-8b-instruct", {"prompt": "Hi"})

    :param settings: the checked connection (:func:`~airflow_provider_cfai.hooks._connection.read_settings`).
    :param account_id: another account than the connection's login.
    :param max_connections: the pool size; at least the number of calls made at once.
    :param sleep: how retries wait (tests pass a fake clock's sleep).
    :param logger: where retries are logged (a trigger passes its own ``log``).
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        account_id: str | None = None,
        max_connections: int = 16,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        logger: RetryLogger | None = None,
    ) -> None:
        self.settings = settings
        self.account_id = checked_account_id(account_id.strip()) if account_id else settings.account_id
        self._max_connections = max_connections
        self._sleep = sleep
        self.log: RetryLogger = logger or log
        self._gate: Gate | None = None
        self._http: httpx.AsyncClient | None = None
        parts = urlsplit(settings.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        #: how messages name the server: ``scheme://host:port``, never a path, query or credential.
        self.origin = f"{parts.scheme}://{parts.hostname}:{port}"

    async def __aenter__(self) -> AsyncCloudflareClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

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
        path = self.run_path(model)
        body = {"request_id": request_id}
        result: dict[str, Any] = await self.request(
            "POST", path, json=body, params={"queueRequest": "true"}, needs=BATCH_POLL
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
        from tenacity import AsyncRetrying

        rules = RetryPolicy(self.settings.max_retries, self.settings.retry_budget)
        control = RetryController(rules)
        extra: dict[str, Any] = {"sleep": self._sleep} if self._sleep is not None else {}
        retrying = AsyncRetrying(
            retry=control.retry,
            stop=control.stop,
            wait=control.wait,
            before_sleep=self._log_retry,
            reraise=True,
            **extra,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._send(method, path, json=json, params=params, needs=needs)
        except AttemptFailed as failed:
            raise give_up(failed, rules) from failed.__cause__
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

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
        """The process-wide gate of this connection's token (the hook's too), found on first use."""
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

    def _log_retry(self, state: RetryCallState) -> None:
        log_retry(self.log, state, attempts=self.settings.max_retries + 1)


def _proxy_pattern(key: str) -> str:
    """``requests``' proxy keys (``https``, ``all``, ``http://host``) as ``httpx`` mount patterns."""
    return key if "://" in key else f"{key}://"
