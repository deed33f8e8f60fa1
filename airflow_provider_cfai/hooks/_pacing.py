"""The gates that hold one credential's rate-limit state and make requests wait their turn.

The rule itself (when a request may go, what an answer teaches) is
:func:`airflow_provider_cfai.policy.pace` / :func:`~airflow_provider_cfai.policy.record_answer`;
a gate only keeps the state and does the waiting.

One gate is shared by all hooks of a process that use the same base URL and credential, so threads
(and mapped tasks on one worker) do not overrun each other.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from airflow_provider_cfai.policy import WindowState, pace, parse_ratelimit, parse_retry_after, record_answer

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RateLimitGate", "gate_for", "parse_ratelimit", "parse_retry_after"]


class RateLimitGate:
    """Keeps one credential's requests inside its rate-limit window, for the threads of one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._state = WindowState()

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> int:
        """Wait until a request may be sent without running past the window; count it as sent.

        :return: the window it was sent in, to hand back to :meth:`release`.
        """
        with self._cond:
            while True:
                decision = pace(self._state, self._clock())
                if decision.send:
                    return self._state.window
                if decision.for_answer:
                    self._cond.wait(timeout=decision.wait)
                    continue
                # Sleep outside the lock so other threads can record answers meanwhile.
                self._cond.release()
                try:
                    sleep(decision.wait)
                finally:
                    self._cond.acquire()

    def release(self, window: int, ratelimit: tuple[int, float] | None) -> None:
        """Record the ``Ratelimit`` header (or its absence) of a request taken with :meth:`acquire`."""
        with self._cond:
            record_answer(self._state, window, ratelimit, self._clock())
            self._cond.notify_all()


_GATES: dict[str, RateLimitGate] = {}
_GATES_LOCK = threading.Lock()


def gate_for(key: str) -> RateLimitGate:
    """The process-wide gate for one credential (``key`` is a digest, never the secret itself)."""
    with _GATES_LOCK:
        gate = _GATES.get(key)
        if gate is None:
            gate = _GATES[key] = RateLimitGate()
        return gate
