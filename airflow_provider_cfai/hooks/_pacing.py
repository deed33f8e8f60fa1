"""Client-side pacing on Cloudflare's ``Ratelimit`` header.

Cloudflare allows 1200 requests per 5 minutes per token and, past that, refuses *every* call of the
token for five minutes. A 429 is therefore far more expensive than a short wait, so the hook spends
its remaining quota deliberately: every request reserves one unit, and when none are left it waits
for the window to reset instead of running into the lockout.

One gate is shared by all hooks of a process that use the same base URL and credential, so threads
(and mapped tasks on one worker) do not overrun each other. Across workers, an Airflow pool caps
concurrency (see the README).
"""

from __future__ import annotations

import re
import threading
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

_REMAINING = re.compile(r"(?:^|;)\s*r\s*=\s*(\d+)")
_RESET = re.compile(r"(?:^|;)\s*t\s*=\s*(\d+(?:\.\d+)?)")


def parse_ratelimit(value: str | None) -> tuple[int, float] | None:
    """Parse ``"default";r=<remaining>;t=<seconds to reset>`` into ``(remaining, seconds)``."""
    if not value:
        return None
    remaining, reset = _REMAINING.search(value), _RESET.search(value)
    if remaining is None or reset is None:
        return None
    return int(remaining.group(1)), float(reset.group(1))


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Parse ``Retry-After`` given as delta-seconds or an HTTP date; ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, moment.timestamp() - now())


class RateLimitGate:
    """Keeps one credential's requests inside its rate-limit window.

    The lowest ``r`` seen in the current window is what the server had left when it answered;
    every request still unanswered may already be counted there or not. Sending only while
    ``lowest r - unanswered > 0`` therefore never overruns the window, and it spends the whole
    quota: as answers arrive, ``r`` and the unanswered count fall together. Answers to requests
    sent in an earlier window say nothing about this one and are not used.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._window = 0  # local window number, advanced when the reset time has passed
        self._lowest: int | None = None  # None: nothing known about this window, let requests through
        self._reset_at: float | None = None
        self._unanswered = 0

    def _roll(self, now: float) -> None:
        if self._reset_at is not None and now >= self._reset_at:
            self._window += 1
            self._lowest, self._reset_at = None, None

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> int:
        """Wait until a request may be sent without running past the window; count it as sent.

        :return: the window it was sent in, to hand back to :meth:`release`.
        """
        with self._cond:
            while True:
                now = self._clock()
                self._roll(now)
                if self._lowest is None or self._lowest - self._unanswered > 0:
                    self._unanswered += 1
                    return self._window
                pause = max(0.0, (self._reset_at or now) - now)
                if self._unanswered:
                    # An answer in flight may tighten the reset time: wait for it or the reset.
                    self._cond.wait(timeout=pause)
                    continue
                # Sleep outside the lock so other threads can record answers meanwhile.
                self._cond.release()
                try:
                    sleep(pause)
                finally:
                    self._cond.acquire()

    def release(self, window: int, ratelimit: tuple[int, float] | None) -> None:
        """Record the ``Ratelimit`` header (or its absence) of a request taken with :meth:`acquire`."""
        with self._cond:
            self._unanswered = max(0, self._unanswered - 1)
            now = self._clock()
            self._roll(now)
            if ratelimit is not None and window == self._window:
                remaining, seconds = ratelimit
                reset_at = now + seconds
                if self._lowest is None or self._reset_at is None:
                    self._lowest, self._reset_at = remaining, reset_at
                else:
                    self._lowest = min(self._lowest, remaining)
                    # t is rounded up to whole seconds, so every header over-estimates the reset;
                    # the earliest estimate seen in this window is the tightest safe bound.
                    self._reset_at = min(self._reset_at, reset_at)
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
