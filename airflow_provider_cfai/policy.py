"""What the provider retries, what it gives up on, and how it paces: the rules, in one place.

Plain functions and data, no I/O. The synchronous hook (``requests``) and the asynchronous hook
(``httpx``) report what arrived (a status, whether the body was Cloudflare's envelope carrying what
the call needs, or that nothing arrived and whether anything was sent) and this module says what it
means: the exception class, whether the call may have been applied, whether and when to try again.
Read top to bottom, this file answers "is HTTP 501 retried, and why?":

1. **Which answers fail permanently.** A 4xx other than 408 and 429 describes the request itself;
   sending it again gets the same answer, so it fails at once (``CloudflarePermanentAPIError``, which
   also tells Airflow not to retry the task). 401/403 are ``CloudflareAuthError``. A 200 whose
   envelope says ``"success": false`` is permanent too.
2. **Which failures are retried.** 408, 429, every 5xx (501 included: Cloudflare's edge answers 5xx
   for its own overload and origin trouble, which passes), transport failures (refused or reset
   connections, timeouts), and a 2xx that cannot be read (not the envelope: a proxy's HTML page, a
   truncated body) or lacks what the call needs (a create without ``id``). These raise
   ``CloudflareAPIError``, which Airflow may retry as well once the hook has given up.
3. **When an outcome is unknown** (:func:`outcome`). A request that may have reached Cloudflare may
   have been applied: no answer after connecting (a read timeout, a reset), a 5xx or 408, and any
   answer whose body cannot be read, 2xx included (an edge can garble the answer to a create that
   was done). A create in that state is looked up (name and model) before it is sent again, so a
   retry never makes a duplicate. A 429 is refused before any work whatever page comes with it, and
   a connection that was never established sent nothing: both are retried as usual. A call that
   cannot be looked up (a Batch API submit) is not re-sent at all after an unknown outcome: it fails
   with ``CloudflareOutcomeUnknownError``, which Airflow does not retry, saying what to check.
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
import enum
import random
import re
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.exceptions import (
    AirflowFailException,
    CloudflareAPIError,
    CloudflareAuthError,
    CloudflareOutcomeUnknownError,
    CloudflarePermanentAPIError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "BACKOFF_CAP",
    "BACKOFF_FIRST",
    "DEFAULT_PERIOD",
    "JITTER",
    "LEASE_MAX",
    "RETRYABLE_CLIENT_STATUSES",
    "STALE_AFTER",
    "Answer",
    "AttemptFailed",
    "Outcome",
    "PacingDecision",
    "RetryController",
    "RetryPolicy",
    "WindowState",
    "after_status",
    "after_transport_failure",
    "asset_already_uploaded",
    "backoff",
    "error_class",
    "give_up",
    "is_retryable",
    "log_retry",
    "outcome",
    "pace",
    "parse_ratelimit",
    "parse_ratelimit_policy",
    "parse_retry_after",
    "reap",
    "record_answer",
    "settle",
    "stops_the_batch",
]

# -- 1 and 2: permanent or retried ------------------------------------------------------------------

#: The 4xx statuses worth another attempt (a timeout, a rate limit); every 5xx is retried as well.
RETRYABLE_CLIENT_STATUSES = frozenset({408, 429})


def error_class(status: int | None, *, readable: bool = True) -> type[CloudflareAPIError]:
    """The exception class for an answer.

    :param status: the HTTP status, ``None`` when no answer arrived.
    :param readable: ``False`` when the body is not Cloudflare's envelope, or is a success that lacks
        what the call needs: a 2xx like that is the edge misbehaving, classed like no answer.
    """
    if status in (401, 403):
        return CloudflareAuthError
    if status is None or status in RETRYABLE_CLIENT_STATUSES or status >= 500:
        return CloudflareAPIError
    if status < 300 and not readable:
        return CloudflareAPIError
    return CloudflarePermanentAPIError


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt could change the outcome of this failure."""
    if isinstance(error, AttemptFailed):
        error = error.error
    return isinstance(error, CloudflareAPIError) and not isinstance(error, AirflowFailException)


def asset_already_uploaded(error: CloudflareAPIError) -> bool:
    """An asset upload refused with HTTP 409: an earlier run already uploaded this file.

    Assets cannot be replaced, and a re-run must be able to finish a half-done upload, so the hook
    keeps the file that is there instead of failing.
    """
    return error.status == 409


def stops_the_batch(error: CloudflareAPIError) -> bool:
    """After its own retries, does this item's failure stop a whole batch evaluation?

    Rejected credentials (401/403), a rate limit that outlived the retry budget (a lockout) and no
    answer at all would fail every other item too, so the batch stops and keeps what it wrote (a
    retry resumes it). Any other failure is the item's own and becomes a failure record.
    """
    return error.status is None or error.status in (401, 403, 429)


# -- 3: what one attempt means -----------------------------------------------------------------------


class Outcome(enum.Enum):
    """What one attempt says about the call it carried."""

    APPLIED = "applied"
    NOT_APPLIED = "not applied"
    UNKNOWN = "unknown"


def outcome(status: int | None, *, sent: bool = True, readable: bool = True, success: bool = True) -> Outcome:
    """Whether the call was applied, from what arrived; the one place that decides it.

    :param status: the HTTP status, ``None`` when no answer arrived.
    :param sent: ``False`` when nothing can have reached the server (the connection was never made).
    :param readable: ``False`` when the body is not Cloudflare's envelope, or is a success that lacks
        what the call needs (a create without ``id``, a submit without ``request_id``).
    :param success: the envelope's ``success`` flag.
    """
    if status is None:
        return Outcome.UNKNOWN if sent else Outcome.NOT_APPLIED
    if status == 429:
        # Refused at the door, before any work, whatever page the edge sends with it.
        return Outcome.NOT_APPLIED
    if status == 408 or status >= 500 or not readable:
        # The work may be done and its answer lost or garbled on the way back.
        return Outcome.UNKNOWN
    if status >= 300 or not success:
        return Outcome.NOT_APPLIED
    return Outcome.APPLIED


class AttemptFailed(Exception):
    """One attempt failed; carries what the rules below need to decide and wait."""

    def __init__(self, error: CloudflareAPIError, *, retry_after: float | None, outcome_unknown: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown


def after_status(error: CloudflareAPIError, retry_after_header: str | None, *, readable: bool = True) -> AttemptFailed:
    """An attempt that got an answer other than a usable success (``error`` says what arrived).

    :param readable: as for :func:`outcome`; the transports make ``error`` with
        :func:`error_class` given the same value.
    """
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
    unknown = outcome(status, readable=readable, success=False) is Outcome.UNKNOWN
    return AttemptFailed(error, retry_after=retry_after, outcome_unknown=unknown)


def after_transport_failure(error: CloudflareAPIError, *, connected: bool) -> AttemptFailed:
    """An attempt that got no answer; ``connected`` is False only when nothing can have been sent."""
    unknown = outcome(None, sent=connected) is Outcome.UNKNOWN
    return AttemptFailed(error, retry_after=None, outcome_unknown=unknown)


def give_up(failed: AttemptFailed, rules: RetryPolicy, *, unknown_context: str | None = None) -> CloudflareAPIError:
    """The error a call raises once its retries are over.

    After an unknown outcome that was retryable, ``unknown_context`` (what may exist now, what to check) prefixes the
    message. A call that must not be re-sent (``rules.resend_unknown`` false) then raises
    :class:`~airflow_provider_cfai.exceptions.CloudflareOutcomeUnknownError`, which Airflow does not
    retry: a retry of the task would send it again without anyone deciding to.
    """
    error = failed.error
    if not failed.outcome_unknown or not is_retryable(error):
        # A refusal (401, 403, another 4xx) says what is wrong better than "unknown" would.
        return error
    if not rules.resend_unknown:
        error = CloudflareOutcomeUnknownError(error.method, error.path, error.status, error.errors, detail=error.detail)
    return error.with_context(unknown_context) if unknown_context else error


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
    :param resend_unknown: ``False`` for a call that must not be sent twice and cannot be looked up
        (a Batch API submit): after an attempt whose outcome is unknown it gives up instead of
        re-sending, so a duplicate is never made silently. A refused call (429) or one that never
        connected is still retried. A create passes ``True``: the hook looks it up first.
    """

    max_retries: int
    retry_budget: float
    resend_unknown: bool = True

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
        if not self.resend_unknown and isinstance(failure, AttemptFailed) and failure.outcome_unknown:
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


def log_retry(log: Any, state: Any, *, attempts: int) -> None:
    """Say, at WARNING, why a call is retried and after how long: the same words for both
    transports (method, path, status or failure; never headers, bodies or secrets)."""
    failure = state.outcome.exception() if state.outcome is not None else None
    error = failure.error if isinstance(failure, AttemptFailed) else failure
    if isinstance(error, CloudflareAPIError):
        reason = f"HTTP {error.status}" if error.status else (error.detail or "no response")
    else:
        reason = type(error).__name__
    log.warning(
        "%s %s failed (%s); retrying in %.1f s (attempt %d of %d)",
        getattr(error, "method", "?"),
        getattr(error, "path", "?"),
        reason,
        state.upcoming_sleep,
        state.attempt_number + 1,
        attempts,
    )


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
# How many requests may go out now, for one token, wherever its users run. The gates in
# airflow_provider_cfai/hooks/_pacing.py keep one WindowState per token (in a process, in a file
# shared by every process of a host, or in Redis shared by every host) and apply these functions to
# it under that state's lock; they decide nothing themselves.
#
# The rule. A gate takes *slots* from the state before sending, in *leases* of k slots (one per
# waiting request when the limit is near; up to LEASE_MAX while at least half the quota is free). A
# slot is *held* from the moment it is granted until its holder settles it; a settled slot that was
# used is *spent* until ``period`` seconds after its request's answer (or failure) was seen. Unused
# slots go back unspent. A lease of k slots is granted only if
#
#     held + spent + k  <=  quota = limit // sharers                                        (G)
#
# where ``limit`` is the server's requests per window (``Ratelimit-Policy: q``; without that
# header, the highest ``r`` + 1 seen, which can only be lower), ``period`` the window's length
# (``Ratelimit-Policy: w``; without it Cloudflare's documented 300 s), and ``sharers`` the number of
# separate states that may spend the token at once (connection extra ``rate_limit_sharers``: hosts
# with their own temp dir; 1 with Redis, where every host shares one state).
#
# Why no window is ever overrun. Premises: (P1) a request the server counts gets an answer with a
# ``Ratelimit`` header, as Cloudflare documents; an answer without one comes from a server that
# enforces no limit. (P2) A request is counted, if at all, after its slot was granted and before its
# sender sees the answer or gives up on it (a process that died has given up). (P3) The clocks of
# the state and of the server run at the same rate; their offset does not matter, and a gate moves
# the times it measured onto the state's clock by an offset that can only make them later. (P4)
# ``period`` is at least the server's window and ``limit`` at most its limit (both hold by
# construction above), and the limit is at least ``sharers`` (an error when the server's own limit
# says otherwise; an estimate below it is raised to one slot per sharer).
#
# Claim: one state's slots are counted at most ``quota`` times in any interval I = [a, a + W) of
# the server's clock, W being the window. Suppose more were, and let g be the latest time a lease
# was granted among those slots (grants are serialised by the state's lock: flock, or WATCH/MULTI in
# Redis). Each slot y granted before g was counted at some c >= a (in I), so its answer came at
# e >= c >= a (P2); and the slot granted at g was counted after g inside I, so g < a + W. Hence
# e > g - W >= g - period (P4): at g, y was still held, or spent and not yet forgotten, and (G)
# counted it (merging kept answer times to bound the state's size only ever moves them later). So
# (G) saw held + spent + k >= (slots counted in I) > quota at g, and would have refused that lease.
# Then ``sharers`` states together are counted at most sharers * (limit // sharers) <= limit times
# in any W-long interval, whatever the placement of the server's windows. Every case follows:
#
# - Answers that cross a window boundary. A slot stays counted until ``period`` after its answer,
#   so it counts against every window its request could have landed in, early or late.
# - The rounding of ``t``. The guarantee never reads ``t`` (the time to the reset, rounded up to
#   whole seconds). Only the brake below does, and a brake can only delay requests.
# - Blind requests. Until the first answer says what the limit is, a state grants one slot at a time
#   and only when none is held: a host's first request goes out alone, its answer fixes ``limit``,
#   and from then on that request is a held or spent slot like any other. Blind requests that fail
#   without an answer stay spent; the claim needs fewer than ``quota`` of them in a row, which the
#   retry limits give by a wide margin (Cloudflare: quota = 1200 // sharers).
# - Crashed processes. A holder whose process has died is *reaped*: its held slots, used or not,
#   become spent as of the moment the death is seen, which is after its requests ended (P2). A holder
#   on another host (Redis) that has not touched the state for STALE_AFTER seconds is reaped the
#   same way; a gate never uses a leased slot older than half that, and no request lasts that long
#   (the transport timeouts are far shorter).
# - The brake. Every answer to a request granted in the current epoch lowers ``reset_at`` to the
#   earliest ``now + t`` seen (``t`` rounds up, so this is never before the real reset), and an
#   answer with ``r = 0`` closes the state until then. It protects against what the claim cannot
#   see (another program using the token, ``rate_limit_sharers`` set too low) and can only delay.
#
# Cost: a state spends its quota at the server's pace. When every state is busy, each gets one
# share of the window; an idle state's share is not lent to others (that would need the stale views
# the claim avoids). With Redis there is one state, one share of size ``limit``.

#: Window length assumed until the server's ``Ratelimit-Policy`` gives one (Cloudflare: 5 minutes).
DEFAULT_PERIOD = 300.0
#: Most slots one lease takes beyond demand, and only while at least half the quota is free.
LEASE_MAX = 64
#: Seconds after which a holder that cannot be checked (another host) counts as gone.
STALE_AFTER = 3600.0
_SPENT_ENTRIES = 128  # at most this many answer times are kept; closer ones merge beyond that

_QUOTA = re.compile(r"(?:^|;)\s*q\s*=\s*(\d+)")
_WINDOW = re.compile(r"(?:^|;)\s*w\s*=\s*(\d+(?:\.\d+)?)")


def parse_ratelimit_policy(value: str | None) -> tuple[int, float] | None:
    """Parse ``"default";q=<requests>;w=<seconds>`` into ``(limit, period)``; ``None`` if unusable."""
    if not value:
        return None
    first = value.split(",", 1)[0]
    quota, window = _QUOTA.search(first), _WINDOW.search(first)
    if quota is None or window is None:
        return None
    limit, period = int(quota.group(1)), float(window.group(1))
    return (limit, period) if limit >= 1 and period > 0 else None


@dataclasses.dataclass
class WindowState:
    """One token's pacing state: what the server said, and the slots every holder took.

    Plain data (``to_dict`` / ``from_dict`` give JSON), so a file or Redis can hold it. Times are on
    the clock of whatever holds the state.
    """

    limit: int | None = None  #: requests per window; ``None`` until an answer says
    exact: bool = False  #: ``limit`` is the server's own (Ratelimit-Policy), not a lower estimate
    period: float | None = None  #: the window in seconds; ``None``: :data:`DEFAULT_PERIOD`
    unmetered: bool = False  #: the server answered without a Ratelimit header: it enforces no limit
    held: dict[str, list[float]] = dataclasses.field(default_factory=dict)  #: holder -> [slots, last seen]
    spent: list[list[float]] = dataclasses.field(default_factory=list)  #: [answer time, slots], by time
    epoch: int = 0  #: advanced at every reset of the brake; answers from older epochs do not touch it
    reset_at: float | None = None  #: earliest reset announced in this epoch
    closed: bool = False  #: an answer in this epoch said r=0: nothing goes out before ``reset_at``

    def to_dict(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "exact": self.exact,
            "period": self.period,
            "unmetered": self.unmetered,
            "held": {holder: list(entry) for holder, entry in self.held.items()},
            "spent": [list(entry) for entry in self.spent],
            "epoch": self.epoch,
            "reset_at": self.reset_at,
            "closed": self.closed,
        }

    @classmethod
    def from_dict(cls, data: Any) -> WindowState:
        """Rebuild a state from :meth:`to_dict`; :class:`ValueError` if it is not one."""
        if not isinstance(data, dict):
            raise ValueError("a window state is a JSON object")
        try:
            state = cls(
                limit=None if data.get("limit") is None else int(data["limit"]),
                exact=bool(data.get("exact", False)),
                period=None if data.get("period") is None else float(data["period"]),
                unmetered=bool(data.get("unmetered", False)),
                held={str(k): [int(v[0]), float(v[1])] for k, v in dict(data.get("held", {})).items()},
                spent=[[float(until), int(n)] for until, n in data.get("spent", [])],
                epoch=int(data.get("epoch", 0)),
                reset_at=None if data.get("reset_at") is None else float(data["reset_at"]),
                closed=bool(data.get("closed", False)),
            )
        except (TypeError, ValueError, IndexError) as error:
            raise ValueError(f"not a window state: {error}") from None
        return state

    @property
    def window(self) -> float:
        return self.period or DEFAULT_PERIOD

    def slots_held(self) -> int:
        return int(sum(entry[0] for entry in self.held.values()))

    def slots_spent(self, now: float) -> int:
        """Used slots whose answers came less than a window ago."""
        since = now - self.window
        return int(sum(n for until, n in self.spent if until > since))


@dataclasses.dataclass(frozen=True)
class Answer:
    """What one answer (or failure) told a gate.

    :param epoch: the state's epoch when the request's slot was granted.
    :param ratelimit: the ``Ratelimit`` header as ``(r, t)``; ``None`` if absent.
    :param policy: the ``Ratelimit-Policy`` header as ``(limit, period)``; ``None`` if absent.
    :param responded: ``False`` when no response arrived at all (the request may still have counted).
    :param answered_at: when the answer was seen, on the state's clock (never earlier than it was).
    """

    epoch: int
    ratelimit: tuple[int, float] | None = None
    policy: tuple[int, float] | None = None
    responded: bool = True
    answered_at: float = 0.0


@dataclasses.dataclass(frozen=True)
class PacingDecision:
    """``slots`` granted (``send``); otherwise wait at most ``wait`` seconds and ask again.

    ``for_answer``: slots are held, and their answers may change the picture sooner.
    """

    slots: int = 0
    wait: float = 0.0
    for_answer: bool = False
    epoch: int = 0

    @property
    def send(self) -> bool:
        return self.slots > 0


def _forget(state: WindowState, now: float) -> None:
    since = now - state.window
    if state.spent and state.spent[0][0] <= since:
        state.spent = [entry for entry in state.spent if entry[0] > since]
    if state.reset_at is not None and now >= state.reset_at:
        state.epoch += 1
        state.reset_at, state.closed = None, False


def _spend(state: WindowState, spent: list[tuple[float, int]]) -> None:
    """Record used slots as ``(time their answers came by, how many)``."""
    if not spent:
        return
    state.spent.extend([until, n] for until, n in spent if n > 0)
    state.spent.sort()
    merged: list[list[float]] = []
    for entry in state.spent:
        if merged and merged[-1][0] == entry[0]:
            merged[-1][1] += entry[1]
        else:
            merged.append(entry)
    if len(merged) > _SPENT_ENTRIES:
        # Bound the state's size: entries closer than ``width`` merge into the latest of them, so
        # a slot may count a little longer than it must, never shorter.
        width = (merged[-1][0] - merged[0][0]) / (_SPENT_ENTRIES // 2)
        compact: list[list[float]] = []
        start = merged[0][0]
        for until, n in merged:
            if compact and until - start <= width:
                compact[-1][0], compact[-1][1] = until, compact[-1][1] + n
            else:
                compact.append([until, n])
                start = until
        merged = compact
    state.spent = merged


def reap(state: WindowState, now: float, alive: Callable[[str], bool | None]) -> int:
    """Settle the slots of holders that are gone: dead (``alive`` says ``False``) or, when their
    liveness cannot be checked (``None``), silent for :data:`STALE_AFTER` seconds. Returns how many.
    """
    reaped = 0
    for holder, (slots, seen) in list(state.held.items()):
        verdict = alive(holder)
        if verdict is False or (verdict is None and now - seen > STALE_AFTER):
            del state.held[holder]
            _spend(state, [(now, int(slots))])
            reaped += 1
    return reaped


def record_answer(state: WindowState, answer: Answer) -> None:
    """Learn the limit, the window and the brake from one answer."""
    if answer.ratelimit is None:
        if answer.responded and state.limit is None:
            state.unmetered = True  # (P1): a server that counts says so on every answer
        return
    remaining, seconds = answer.ratelimit
    state.unmetered = False
    if answer.policy is not None:
        (state.limit, state.period), state.exact = answer.policy, True
    elif not state.exact:
        state.limit = max(state.limit or 0, remaining + 1)  # r = limit - counted, so r + 1 <= limit
    if answer.epoch != state.epoch:
        return  # granted before the brake's last reset: it may describe an earlier window
    reset_at = answer.answered_at + seconds
    state.reset_at = reset_at if state.reset_at is None else min(state.reset_at, reset_at)
    if remaining <= 0:
        state.closed = True


def settle(state: WindowState, *, holder: str, answered: list[float], unused: int) -> None:
    """Give back slots: used ones with the time each answer (or failure) came, and ``unused`` ones."""
    entry = state.held.get(holder)
    if entry is not None:
        entry[0] = max(0, int(entry[0]) - len(answered) - unused)
        if not entry[0]:
            del state.held[holder]
    _spend(state, [(until, 1) for until in answered])  # also if the holder was reaped: counting twice is safe


def pace(state: WindowState, now: float, *, holder: str, want: int = 1, sharers: int = 1) -> PacingDecision:
    """Grant ``holder`` up to ``want`` slots (more, as a lease, when the limit is far), or say how long to wait."""
    _forget(state, now)
    if state.closed and state.reset_at is not None:
        return PacingDecision(wait=max(0.0, state.reset_at - now), epoch=state.epoch)
    held = state.slots_held()
    if state.limit is None:
        if state.unmetered:
            grant = max(want, LEASE_MAX)
        elif held:
            return PacingDecision(wait=state.window, for_answer=True, epoch=state.epoch)
        else:
            grant = 1  # blind: alone, until an answer says what the limit is
    else:
        quota = state.limit // sharers
        if quota < 1 and not state.exact:
            quota = 1  # an estimate from a busy window; the true limit is at least ``sharers``
        elif quota < 1:
            from airflow_provider_cfai.exceptions import CloudflareConfigError

            raise CloudflareConfigError(
                f"Connection extra 'rate_limit_sharers' is {sharers}, more than the token's limit of "
                f"{state.limit} requests per {state.window:g} s, so no sharer could send anything; "
                "lower it, or share one budget through Redis (extra 'redis_url' or 'redis_conn_id')."
            )
        free = quota - held - state.slots_spent(now)
        if free <= 0:
            if not state.spent:
                return PacingDecision(wait=state.window, for_answer=True, epoch=state.epoch)
            # Settling a held slot frees nothing before it is a window old: sleep to the first expiry.
            first = state.spent[0][0] + state.window
            return PacingDecision(wait=max(0.0, first - now), epoch=state.epoch)
        lease = min(LEASE_MAX, quota // LEASE_MAX) if 2 * free >= quota else 0
        grant = min(free, max(want, lease))
    entry = state.held.setdefault(holder, [0, now])
    entry[0], entry[1] = int(entry[0]) + grant, now
    return PacingDecision(slots=grant, epoch=state.epoch)
