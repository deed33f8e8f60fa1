"""Pacing: one gate per token per process, on the store the connection asks for.

The modules, each importing only those above it::

    _host            this host: process identity, pid checks, the private state directory
    _pacing_rules    the rule and its proof: WindowState, pace, reap, settle, claims (no I/O)
    _pacing_store    the store protocol, and the store in this process's memory
    _pacing_file     the host's store: a file under flock, shared by every process of the host
    _pacing_gate     the gate: waits for slots, leases them, renews its claim, settles answers
    _pacing_redis    the Redis store (every host), and the gate that falls back to the host's file
    _pacing          this factory: which gate a connection gets

Where the state lives (:func:`gate_for_settings` picks it from the connection):

- **A file per token in the temp dir**, shared by every process of the host. The default: Airflow
  runs each task in a fresh process, and what one task learned about the window reaches the next.
- **Redis**, shared by every host: opt in with the connection extra ``redis_url`` or
  ``redis_conn_id``. When Redis cannot be reached the gate logs a warning and paces with the host's
  file and its share of the limit (``rate_limit_sharers``) for a while.
- **Memory**: tests, and hosts without a usable temp dir.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import TYPE_CHECKING

from airflow_provider_cfai.hooks import _host
from airflow_provider_cfai.hooks._pacing_file import host_store
from airflow_provider_cfai.hooks._pacing_gate import DEFAULT_REQUEST_TIMEOUT, LIVE_GATES, Gate, RateLimitGate
from airflow_provider_cfai.hooks._pacing_redis import RedisGate, redis_url_from_connection, require_redis

if TYPE_CHECKING:
    from airflow_provider_cfai.hooks._connection import ConnectionSettings

__all__ = ["Gate", "gate_for", "gate_for_settings"]

_GATES: dict[tuple[str, int, str], Gate] = {}
_GATES_LOCK = threading.Lock()


def gate_for(
    key: str, *, sharers: int = 1, redis_url: str | None = None, request_timeout: float = DEFAULT_REQUEST_TIMEOUT
) -> Gate:
    """The process-wide gate for one token.

    :param key: the credential's digest (never the secret itself); it names the state file.
    :param sharers: separate hosts (states) that may spend the token at once.
    :param redis_url: share one state through Redis; the host's file is the fallback.
    :param request_timeout: the longest a request through this gate takes to reach the server; the
        gate's claim lives that long plus a margin (the longest of every caller's).
    """
    with _GATES_LOCK:
        gate = _GATES.get((key, sharers, redis_url or ""))
        if gate is None:
            host_gate = RateLimitGate(host_store(key), sharers=sharers, request_timeout=request_timeout)
            gate = RedisGate(redis_url, key, fallback=host_gate) if redis_url else host_gate
            _GATES[(key, sharers, redis_url or "")] = gate
        gate.allow_requests_of(request_timeout)
        return gate


def gate_for_settings(settings: ConnectionSettings) -> Gate:
    """The gate for a connection: its token, ``rate_limit_sharers``, its timeout, and Redis if configured.

    May look up the Airflow connection named by ``redis_conn_id``: call it from a worker thread
    (``asyncio.to_thread``) in an event loop.
    """
    redis_url = settings.redis_url
    if redis_url or settings.redis_conn_id:
        require_redis(settings.conn_id)
    if redis_url is None and settings.redis_conn_id:
        redis_url = redis_url_from_connection(settings.redis_conn_id, cloudflare_conn_id=settings.conn_id)
    return gate_for(
        settings.credential_digest,
        sharers=settings.rate_limit_sharers,
        redis_url=redis_url,
        request_timeout=settings.timeout,
    )


def _after_fork_in_child() -> None:
    _host.after_fork()
    for gate in list(LIVE_GATES):
        gate.store.after_fork()
        gate._reset()


def _close_all() -> None:
    for gate in list(LIVE_GATES):
        gate.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)
