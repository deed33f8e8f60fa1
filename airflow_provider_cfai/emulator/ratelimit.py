"""Per-credential request budget in Cloudflare's style: a window, a limit, and a lockout once exceeded.

Not thread-safe on its own: the emulator state owns one and calls it under its lock.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["Decision", "RateLimiter"]


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    headers: dict[str, str]
    started_lockout: bool = False


@dataclasses.dataclass
class _Window:
    start: float
    count: int = 0
    locked_until: float | None = None


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# Deadlines are sums of floats: (now + 42) - now can come out as 42.00000000000001, which a bare
# ceil() would advertise as 43 s. A microsecond of slack absorbs that rounding error.
_FLOAT_SLACK = 1e-6


def _ceil_seconds(value: float) -> int:
    # A client told "t=0" while still refused would spin; never advertise less than one second.
    return max(1, math.ceil(value - _FLOAT_SLACK))


class RateLimiter:
    """Counts calls per credential key; ``limit == 0`` disables limiting (and the headers)."""

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def clear(self) -> None:
        self._windows.clear()

    def check(self, key: str, now: float, *, limit: int, window: float, lockout: float) -> Decision:
        if limit <= 0:
            return Decision(allowed=True, headers={})
        policy = f'"default";q={limit};w={_format_seconds(window)}'
        state = self._windows.get(key)
        if state is not None and state.locked_until is not None and now >= state.locked_until:
            state = None
        if state is not None and state.locked_until is None and now >= state.start + window:
            state = None
        if state is None:
            state = _Window(start=now)
            self._windows[key] = state

        if state.locked_until is not None:
            return self._refusal(state.locked_until - now, policy)

        if state.count < limit:
            state.count += 1
            reset = _ceil_seconds(state.start + window - now)
            headers = {
                "Ratelimit": f'"default";r={limit - state.count};t={reset}',
                "Ratelimit-Policy": policy,
            }
            return Decision(allowed=True, headers=headers)

        # Cloudflare refuses everything for a fixed period once the budget is gone; with no lockout
        # configured, the refusal lasts until the window would have reset anyway.
        window_end = state.start + window
        state.locked_until = now + lockout if lockout > 0 else window_end
        decision = self._refusal(state.locked_until - now, policy)
        return dataclasses.replace(decision, started_lockout=True)

    @staticmethod
    def _refusal(wait: float, policy: str) -> Decision:
        seconds = _ceil_seconds(wait)
        headers = {
            "Ratelimit": f'"default";r=0;t={seconds}',
            "Ratelimit-Policy": policy,
            "Retry-After": str(seconds),
        }
        return Decision(allowed=False, headers=headers)
