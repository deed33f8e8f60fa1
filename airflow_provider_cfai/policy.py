"""What the provider retries and what it gives up on: the rules, in one place.

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

How fast requests may go (the ``Ratelimit`` header, the five-minute lockout) is another subject:
:mod:`airflow_provider_cfai.hooks._pacing_rules`.
"""

from __future__ import annotations

import dataclasses
import enum
import random
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
    "BATCH_ERROR_CODES",
    "JITTER",
    "RETRYABLE_CLIENT_STATUSES",
    "AttemptFailed",
    "Outcome",
    "RetryController",
    "RetryPolicy",
    "after_status",
    "after_transport_failure",
    "asset_already_uploaded",
    "backoff",
    "error_class",
    "give_up",
    "is_retryable",
    "kv_key_missing",
    "log_retry",
    "missing_permission",
    "outcome",
    "parse_retry_after",
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


#: Cloudflare's code for a Workers KV read of a key that does not exist ("get: 'key not found'").
KV_KEY_NOT_FOUND = 10009


def kv_key_missing(error: CloudflareAPIError) -> bool:
    """A Workers KV read answered 404 because the key does not exist: an empty pointer, not a failure.

    Any other 404 (no such namespace, no such account) is a configuration error, never an empty pointer.
    """
    text = " ".join(str(item.get("message", "")) for item in error.errors).lower()
    return error.status == 404 and (KV_KEY_NOT_FOUND in error.codes or "key not found" in text)


def missing_permission(error: CloudflareAPIError) -> bool:
    """HTTP 403: valid credentials without the permission the call needs (401: the credentials are bad)."""
    return error.status == 403


#: Cloudflare codes that are about the batch's model or finetune, not the item: no such model (5007),
#: model takes no LoRA (5005), no such finetune (3037), a finetune of another model (3038), a finetune
#: without its files (3039).
BATCH_ERROR_CODES = frozenset({5005, 5007, 3037, 3038, 3039})


def stops_the_batch(error: CloudflareAPIError) -> bool:
    """After its own retries, does this item's failure stop a whole batch evaluation?

    Rejected credentials (401/403), a rate limit that outlived the retry budget (a lockout), no
    answer at all, and an error about the batch's model or finetune (:data:`BATCH_ERROR_CODES`)
    would fail every other item too, so the batch stops and keeps what it wrote. Any other failure
    is the item's own and becomes a failure record.
    """
    return error.status is None or error.status in (401, 403, 429) or bool(BATCH_ERROR_CODES & set(error.codes))


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
