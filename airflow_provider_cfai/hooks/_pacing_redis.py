"""One pacing state per token in Redis, shared by every host: the opt-in exact budget.

Configured by the connection extra ``redis_url`` (``redis://[:password@]host:port/db``) or
``redis_conn_id`` (an Airflow connection of type ``redis``); needs ``redis-py``
(``pip install 'airflow-provider-cfai[redis]'``), imported only then.

The state is the same :class:`~._pacing_rules.WindowState` as in the host's file, updated by the
same rules inside a WATCH/MULTI transaction (optimistic: retried when another client changed the key
meanwhile), so there is one copy of the rule, in Python. Times are Redis's own clock (``TIME``), the
one clock every host sees. A holder on another host is never checked by its pid: its claim lapses
unless renewed, so a pod killed mid-request frees its slots on its own.

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
from airflow_provider_cfai.exceptions import CloudflareConfigError
from airflow_provider_cfai.hooks._host import holder_alive
from airflow_provider_cfai.hooks._pacing_gate import RateLimitGate
from airflow_provider_cfai.hooks._pacing_rules import WindowState
from airflow_provider_cfai.hooks._pacing_store import StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_cfai.hooks._pacing_gate import AnswerInfo, Ticket

__all__ = ["RETRY_AFTER", "RedisGate", "RedisStore", "redis_url_from_connection", "require_redis"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Seconds of pacing on the host's file after Redis failed, before Redis is tried again.
RETRY_AFTER = 30.0
_KEY_PREFIX = "airflow-provider-cfai:ratelimit:"
_TIMEOUT = 2.0
_MAX_CONFLICTS = 100


class RedisStore:
    """One token's state under one Redis key.

    :param clock: read instead of Redis's ``TIME`` (tests on a fake clock); ``None``: Redis's own.
    """

    def __init__(
        self, url: str, key: str, *, timeout: float = _TIMEOUT, clock: Callable[[], float] | None = None
    ) -> None:
        self.url = url
        self._clock = clock
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
                        now = seconds + micros / 1_000_000 if self._clock is None else self._clock()
                        result = update(state, now)
                        pipe.multi()
                        pipe.set(self.key, _dumps(state), px=_keep_for(state, now))
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


def _keep_for(state: WindowState, now: float) -> int:
    """Milliseconds the key outlives its last update: past every claim's lapse and every spent
    slot's window, twice over; then nothing in it matters and Redis forgets it."""
    last_spent = state.spent[-1][0] if state.spent else now
    horizon = max((state.last_lapse() or now) - now, last_spent - now, 0.0) + state.window
    return max(1000, int(2 * horizon * 1000))


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
        if primary is None:
            primary = RateLimitGate(RedisStore(url, key), request_timeout=fallback.request_timeout)
        self.primary = primary
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

    def allow_requests_of(self, request_timeout: float) -> None:
        self.primary.allow_requests_of(request_timeout)
        self.fallback.allow_requests_of(request_timeout)

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()


def require_redis(conn_id: str | None) -> None:
    """Fail with a configuration error, not ``ModuleNotFoundError``, when redis-py is missing."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise CloudflareConfigError(
            f"Connection {conn_id!r} shares its rate limit through Redis (extra 'redis_url' or "
            "'redis_conn_id'), but redis-py is not installed: pip install 'airflow-provider-cfai[redis]', "
            "or remove the extra to pace with this host's state file."
        ) from None


def redis_url_from_connection(conn_id: str, *, cloudflare_conn_id: str | None = None) -> str:
    """A ``redis://`` URL from an Airflow connection of type ``redis`` (host, port, password, extra ``db``, ``ssl``).

    :param cloudflare_conn_id: the Cloudflare connection whose extra ``redis_conn_id`` names it (for messages).
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.log import mask_secret

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as error:
        if not any(cls.__name__ == "AirflowNotFoundException" for cls in type(error).__mro__):
            raise
        raise CloudflareConfigError(
            f"Connection {cloudflare_conn_id!r} sets extra 'redis_conn_id' to {conn_id!r}, but Airflow has no "
            f"connection {conn_id!r}. Create it (e.g. `airflow connections add {conn_id} --conn-type redis "
            f"--conn-host <host> --conn-port 6379`), fix the extra, or use the extra 'redis_url' instead."
        ) from None
    extra = conn.extra_dejson
    scheme = "rediss" if str(extra.get("ssl", "")).lower() in ("true", "1", "yes") else "redis"
    auth = ""
    if conn.password:
        mask_secret(conn.password)
        auth = f"{quote(conn.login or '', safe='')}:{quote(conn.password, safe='')}@"
    db = str(extra.get("db", 0))
    if not db.isdigit():
        raise CloudflareConfigError(f"Redis connection {conn_id!r}: extra 'db' must be a database number, got {db!r}.")
    return f"{scheme}://{auth}{conn.host or 'localhost'}:{conn.port or 6379}/{db}"
