"""Where a token's pacing state lives: the store protocol, and the store in this process's memory.

The other stores are :class:`~._pacing_file.FileStore` (every process of a host) and
:class:`~._pacing_redis.RedisStore` (every host).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Protocol, TypeVar

from airflow_provider_cfai.hooks._pacing_rules import WindowState

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MemoryStore", "StateStore", "StoreUnavailable"]

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The place holding the state (Redis) cannot be reached; the message names it, never a secret."""


class StateStore(Protocol):
    """Holds one token's :class:`WindowState` and applies updates to it atomically."""

    description: str

    def transact(self, update: Callable[[WindowState, float], T]) -> T:
        """Run ``update(state, now)`` under the store's lock and keep what it changed.

        ``now`` is the store's clock; ``update`` may run more than once (optimistic stores retry),
        so it must change nothing but ``state``.
        """
        ...

    def alive(self, holder: str) -> bool | None:
        """Whether a holder's process still runs; ``None`` when that cannot be checked from here."""
        ...

    def after_fork(self) -> None:
        """Drop what a forked child must not share with its parent (file descriptors, sockets)."""
        ...


class MemoryStore:
    """The state in this process's memory: for tests, simulations, and hosts with no usable temp dir."""

    description = "this process's memory"

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, alive: Callable[[str], bool | None] | None = None
    ) -> None:
        self.state = WindowState()
        self._clock = clock
        self._alive = alive
        self._lock = threading.Lock()

    def transact(self, update: Callable[[WindowState, float], T]) -> T:
        with self._lock:
            return update(self.state, self._clock())

    def alive(self, holder: str) -> bool | None:
        return None if self._alive is None else self._alive(holder)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
