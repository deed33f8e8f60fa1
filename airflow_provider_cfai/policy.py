"""What the provider retries, what it gives up on, and how it paces: the rules, in one place.

Plain functions and data, no I/O. The synchronous hook (``requests``) and the asynchronous trigger
(``httpx``) both drive these rules; neither decides anything about retries on its own. Read top to
bottom, this file answers "is HTTP 501 retried, and why?":

1. **Which answers fail permanently.** A 4xx other than 408 and 429 describes the request itself;
   sending it again gets the same answer, so it fails at once (``CloudflarePermanentAPIError``, which
   also tells Airflow not to retry the task). 401/403 are ``CloudflareAuthError``. A 200 whose
   envelope says ``"success": false`` is permanent too.
2. **Which failures are retried.** 408, 429, every 5xx (501 included: Cloudflare's edge answers 5xx
   for its own overload and origin trouble, which passes), and transport failures (refused or reset
   connections, timeouts). These raise ``CloudflareAPIError``, which Airflow may retry as well once
   the hook has given up.
3. **When an outcome is unknown.** A request that may have reached Cloudflare (a timeout after
   connecting, a reset, a 5xx or 408) may have been applied. A create in that state is looked up
   before it is sent again, so a retry never makes a duplicate. A 429 is refused before any work, and
   a connection that was never established sent nothing.
4. **How long to wait.** A 429's ``Retry-After`` (seconds or an HTTP date) exactly; otherwise
   exponential backoff (0.5 s, 1 s, 2 s, … capped at 30 s) plus up to 0.5 s of jitter, so workers that
   failed together do not retry together.
5. **When to stop.** After ``max_retries`` retries, or when the next wait would take the time spent
   *waiting between attempts* past ``retry_budget``. An attempt's own duration never consumes the
   budget. A ``Retry-After`` longer than what is left (Cloudflare's five-minute lockout) stops the
   call at once, so Airflow's own retry can come back later instead of a worker sleeping.
6. **Pacing.** Every answer's ``Ratelimit: "default";r=<remaining>;t=<seconds>`` header says what
   the token has left in its window. A 429 past that limit locks the token out for five minutes for
   every client, so requests wait for the window to reset rather than overrun it (section "Pacing").
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.exceptions import (
    CloudflareAPIError,
    CloudflareAuthError,
    CloudflarePermanentAPIError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "BACKOFF_CAP",
    "BACKOFF_FIRST",
    "JITTER",
    "RETRYABLE_CLIENT_STATUSES",
    "AttemptFailed",
    "PacingDecision",
    "RetryController",
    "RetryPolicy",
    "WindowState",
    "after_status",
    "after_transport_failure",
    "asset_already_uploaded",
    "backoff",
    "error_class",
    "is_retryable",
    "pace",
    "parse_ratelimit",
    "parse_retry_after",
    "record_answer",
]

# -- 1 and 2: permanent or retried ------------------------------------------------------------------

#: The 4xx statuses worth another attempt (a timeout, a rate limit); every 5xx is retried as well.
RETRYABLE_CLIENT_STATUSES = frozenset({408, 429})


def error_class(status: int | None) -> type[CloudflareAPIError]:
    """The exception class for an HTTP status (``None``: no response arrived)."""
    if status in (401, 403):
        return CloudflareAuthError
    if status is None or status in RETRYABLE_CLIENT_STATUSES or status >= 500:
        return CloudflareAPIError
    return CloudflarePermanentAPIError


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt could change the outcome of this failure."""
    if isinstance(error, AttemptFailed):
        error = error.error
    return isinstance(error, CloudflareAPIError) and not isinstance(error, CloudflarePermanentAPIError)


def asset_already_uploaded(error: CloudflareAPIError) -> bool:
    """An asset upload refused with HTTP 409: an earlier run already uploaded this file.

    Assets cannot be replaced, and a re-run must be able to finish a half-done upload, so the hook
    keeps the file that is there instead of failing.
    """
    return error.status == 409


# -- 3: what one failed attempt means --------------------------------------------------------------


class AttemptFailed(Exception):
    """One attempt failed; carries what the rules below need to decide and wait."""

    def __init__(self, error: CloudflareAPIError, *, retry_after: float | None, outcome_unknown: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown


def after_status(error: CloudflareAPIError, retry_after_header: str | None) -> AttemptFailed:
    """An attempt that got an error answer (the envelope already turned into ``error``)."""
    status = error.status
    retry_after = parse_retry_after(retry_after_header) if status == 429 else None
    if retry_after is not None:
        error = type(error)(
            error.method,
            error.path,
            status,
            error.errors,
            detail=f"Cloudflare asked to retry after {retry_after:.0f} s",
        )
    # A 429 is refused at the door; a 5xx or 408 may come after the work was done.
    unknown = status is not None and (status == 408 or status >= 500)
    return AttemptFailed(error, retry_after=retry_after, outcome_unknown=unknown)


def after_transport_failure(error: CloudflareAPIError, *, connected: bool) -> AttemptFailed:
    """An attempt that got no answer; ``connected`` is False only when nothing can have been sent."""
    return AttemptFailed(error, retry_after=None, outcome_unknown=connected)


# -- 4 and 5: how long to wait, when to stop -------------------------------------------------------

BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0
JITTER = 0.5


def backoff(attempt_number: int) -> float:
    """The wait after the ``attempt_number``-th failed attempt, before jitter."""
    return float(min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** max(0, attempt_number - 1)))


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """The stop and wait rules for one call.

    :param max_retries: attempts after the first.
    :param retry_budget: seconds one call may spend waiting between attempts, in all.
    """

    max_retries: int
    retry_budget: float

    def next_wait(
        self, failure: BaseException, *, attempt_number: int, waited: float, jitter: float = 0.0
    ) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up.

        :param attempt_number: attempts made so far (1 after the first).
        :param waited: seconds already spent waiting between this call's attempts.
        :param jitter: a random number in ``[0, 1)``, scaled to :data:`JITTER` seconds.
        """
        if not is_retryable(failure) or attempt_number > self.max_retries:
            return None
        left = self.retry_budget - waited
        retry_after = failure.retry_after if isinstance(failure, AttemptFailed) else None
        if retry_after is not None:
            return retry_after if retry_after <= left else None
        base = backoff(attempt_number)
        if base > left:
            return None
        return min(base + JITTER * jitter, left)


class RetryController:
    """Drives tenacity (``Retrying`` or ``AsyncRetrying``) by one :class:`RetryPolicy`.

    Tenacity asks *whether to retry*, *whether to stop* and *how long to wait* in separate
    callbacks, in an order that changed between its releases; the decision is made once per attempt
    here and each callback reads it. Use one controller per call::

        control = RetryController(policy)
        Retrying(retry=control.retry, stop=control.stop, wait=control.wait, reraise=True, ...)
    """

    def __init__(self, policy: RetryPolicy, *, jitter: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._jitter = jitter
        self._decided: tuple[int, float | None] = (0, None)

    def _decide(self, state: Any) -> float | None:
        if self._decided[0] != state.attempt_number:
            failure = state.outcome.exception() if state.outcome is not None else None
            wait = None
            if failure is not None:
                wait = self.policy.next_wait(
                    failure, attempt_number=state.attempt_number, waited=state.idle_for, jitter=self._jitter()
                )
            self._decided = (state.attempt_number, wait)
        return self._decided[1]

    def retry(self, state: Any) -> bool:
        failure = state.outcome.exception() if state.outcome is not None else None
        return failure is not None and is_retryable(failure)

    def stop(self, state: Any) -> bool:
        return self._decide(state) is None

    def wait(self, state: Any) -> float:
        return self._decide(state) or 0.0


# -- header parsing: what the server said -------------------------------------------------------

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
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, moment.timestamp() - now())


# -- 6: Pacing ---------------------------------------------------------------------------------------
# The pacing decision from the Ratelimit state (see airflow_provider_cfai/hooks/_pacing.py for the
# gates that keep that state per process, per host, or in Redis).
#
# The lowest ``r`` seen in the current window is what the server had left when it answered; every
# request still unanswered may already be counted there or not. Sending only while
# ``lowest r - unanswered > 0`` therefore never overruns the window, and it spends the whole quota:
# as answers arrive, ``r`` and the unanswered count fall together. Answers to requests sent in an
# earlier window say nothing about this one and are not used.


@dataclasses.dataclass
class WindowState:
    """What one credential's gate knows about its rate-limit window."""

    window: int = 0  #: local window number, advanced when the reset time has passed
    lowest: int | None = None  #: lowest ``r`` seen this window; ``None``: nothing known, send
    reset_at: float | None = None  #: when the window resets, on the gate's clock
    unanswered: int = 0  #: requests sent and not yet answered

    def roll(self, now: float) -> None:
        """Start a new window once the reset time has passed."""
        if self.reset_at is not None and now >= self.reset_at:
            self.window += 1
            self.lowest, self.reset_at = None, None


@dataclasses.dataclass(frozen=True)
class PacingDecision:
    """``send``: go now (counted as unanswered). Otherwise wait at most ``wait`` seconds and ask
    again; ``for_answer``: an answer in flight may change the picture sooner."""

    send: bool
    wait: float = 0.0
    for_answer: bool = False


def pace(state: WindowState, now: float) -> PacingDecision:
    """May a request be sent now? If so, it is counted in ``state`` as unanswered."""
    state.roll(now)
    if state.lowest is None or state.lowest - state.unanswered > 0:
        state.unanswered += 1
        return PacingDecision(send=True)
    pause = max(0.0, (state.reset_at or now) - now)
    return PacingDecision(send=False, wait=pause, for_answer=state.unanswered > 0)


def record_answer(state: WindowState, window: int, ratelimit: tuple[int, float] | None, now: float) -> None:
    """Account for the answer (or failure) of a request :func:`pace` let through in ``window``."""
    state.unanswered = max(0, state.unanswered - 1)
    state.roll(now)
    if ratelimit is None or window != state.window:
        return
    remaining, seconds = ratelimit
    reset_at = now + seconds
    if state.lowest is None or state.reset_at is None:
        state.lowest, state.reset_at = remaining, reset_at
        return
    state.lowest = min(state.lowest, remaining)
    # t is rounded up to whole seconds, so every header over-estimates the reset; the earliest
    # estimate seen in this window is the tightest safe bound.
    state.reset_at = min(state.reset_at, reset_at)
