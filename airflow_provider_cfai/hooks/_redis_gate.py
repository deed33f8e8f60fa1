"""One pacing state per token in Redis, shared by every host: the opt-in exact budget.

Configured by the connection extra ``redis_url`` (``redis://[:password@]host:port/db``) or
``redis_conn_id`` (an Airflow connection of type ``redis``); needs ``redis-py``
(``pip install 'airflow-provider-cfai[redis]'``), imported only then.

The state is the same :class:`~airflow_provider_cfai.policy.WindowState` as in the host's file,
updated by the same policy functions inside a WATCH/MULTI transaction (optimistic: retried when
another client changed the key meanwhile), so there is one copy of the rule, in Python. Times are
Redis's own clock (``TIME``), the one clock every host sees.

When Redis cannot be reached, :class:`RedisGate` logs a warning and paces with the host's file and
its share of the limit (``rate_limit_sharers``) for :data:`RETRY_AFTER` seconds, then tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from airflow_provider_cfai._urls import redact_url
from airflow_provider_cfai.hooks._pacing import RateLimitGate, StoreUnavailable
from airflow_provider_cfai.hooks._shared_state import holder_alive
from airflow_provider_cfai.policy import STALE_AFTER, WindowState

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_cfai.hooks._pacing import AnswerInfo, Ticket

__all__ = ["RETRY_AFTER", "RedisGate", "RedisStore", "redis_url_from_connection"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Seconds of pacing on the host's file after Redis failed, before Redis is tried again.
RETRY_AFTER = 30.0
_KEY_PREFIX = "airflow-provider-cfai:ratelimit:"
_TIMEOUT = 2.0
_MAX_CONFLICTS = 100


class RedisStore:
    """One token's state under one Redis key."""

    def __init__(self, url: str, key: str, *, timeout: float = _TIMEOUT) -> None:
        self.url = url
        self.key = _KEY_PREFIX + key
        self.description = f"Redis at {redact_url(url)}"
        self._timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def _redis(self) -> Any:
        with self._lock:
            if self._client is None:
                import redis

                self._client = redis.Redis.from_url(
                    self.url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
                )
            return self._client

    def transact(self, update: Callable[[WindowState, float], T]) -> T:
        import redis

        try:
            client = self._redis()
            with client.pipeline() as pipe:
                for _ in range(_MAX_CONFLICTS):
                    try:
                        pipe.watch(self.key)
                        raw = pipe.get(self.key)
                        seconds, micros = pipe.time()
                        state = _decode(raw)
                        result = update(state, seconds + micros / 1_000_000)
                        pipe.multi()
                        ttl = int(2 * max(state.window, STALE_AFTER) * 1000)
                        pipe.set(self.key, _dumps(state), px=ttl)
                        pipe.execute()
                        return result
                    except redis.WatchError:
                        continue  # another client changed the state meanwhile: decide again on the new one
                raise StoreUnavailable(f"{self.description}: the state changed under {_MAX_CONFLICTS} tries in a row")
        except (redis.RedisError, OSError) as error:
            raise StoreUnavailable(f"{self.description}: {type(error).__name__}: {error}") from None

    def alive(self, holder: str) -> bool | None:
        return holder_alive(holder)

    def after_fork(self) -> None:
        self._client = None  # a forked child must not share the parent's sockets
        self._lock = threading.Lock()


def _decode(raw: bytes | None) -> WindowState:
    import json

    if raw is None:
        return WindowState()
    try:
        return WindowState.from_dict(json.loads(raw))
    except ValueError as error:
        log.warning("Rate-limit state in Redis was unreadable (%s); starting it afresh", error)
        return WindowState()


def _dumps(state: WindowState) -> bytes:
    import json

    return json.dumps(state.to_dict(), separators=(",", ":")).encode()


class RedisGate:
    """A gate on the Redis state, with the host's gate as the fallback while Redis is unreachable.

    Tickets go back to the gate that issued them, so a request granted by Redis is settled there.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        fallback: RateLimitGate,
        primary: RateLimitGate | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary if primary is not None else RateLimitGate(RedisStore(url, key))
        self.fallback = fallback
        self._clock = clock
        self._down_until = float("-inf")

    def __repr__(self) -> str:
        return f"RedisGate({self.primary.store.description}, fallback={self.fallback!r})"

    def _use_primary(self) -> bool:
        return self._clock() >= self._down_until

    def _down(self, error: StoreUnavailable) -> None:
        self._down_until = self._clock() + RETRY_AFTER
        log.warning(
            "Rate-limit state unavailable (%s); pacing with this host's share of the limit "
            "(rate_limit_sharers=%d) for %.0f s before trying Redis again",
            error,
            self.fallback.sharers,
            RETRY_AFTER,
        )

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> Ticket:
        if self._use_primary():
            try:
                return self.primary.acquire(sleep)
            except StoreUnavailable as error:
                self._down(error)
        return self.fallback.acquire(sleep)

    def release(self, ticket: Ticket, answer: AnswerInfo = None) -> None:
        ticket.gate.release(ticket, answer)

    async def acquire_async(self) -> Ticket:
        if self._use_primary():
            try:
                return await self.primary.acquire_async()
            except StoreUnavailable as error:
                self._down(error)
        return await self.fallback.acquire_async()

    async def release_async(self, ticket: Ticket, answer: AnswerInfo = None) -> None:
        await ticket.gate.release_async(ticket, answer)

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()


def redis_url_from_connection(conn_id: str) -> str:
    """A ``redis://`` URL from an Airflow connection of type ``redis`` (host, port, password, extra ``db``, ``ssl``)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.log import mask_secret

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson
    scheme = "rediss" if str(extra.get("ssl", "")).lower() in ("true", "1", "yes") else "redis"
    auth = ""
    if conn.password:
        mask_secret(conn.password)
        auth = f"{quote(conn.login or '', safe='')}:{quote(conn.password, safe='')}@"
    db = str(extra.get("db", 0))
    if not db.isdigit():
        from airflow_provider_cfai.exceptions import CloudflareConfigError

        raise CloudflareConfigError(f"Redis connection {conn_id!r}: extra 'db' must be a database number, got {db!r}.")
    return f"{scheme}://{auth}{conn.host or 'localhost'}:{conn.port or 6379}/{db}"
