"""The hook's retry policy: what is worth another attempt, and how long to wait first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_cfai.exceptions import CloudflareAPIError, CloudflarePermanentAPIError

if TYPE_CHECKING:
    from tenacity import RetryCallState


class AttemptFailed(Exception):
    """One attempt failed; carries what the retry policy needs to decide and wait."""

    def __init__(self, error: CloudflareAPIError, *, retry_after: float | None, outcome_unknown: bool):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, AttemptFailed) and not isinstance(error.error, CloudflarePermanentAPIError)


def wait_before_retry(state: RetryCallState) -> float:
    from tenacity import wait_exponential, wait_random

    failure = state.outcome.exception() if state.outcome else None
    if isinstance(failure, AttemptFailed) and failure.retry_after is not None:
        return failure.retry_after
    return float((wait_exponential(multiplier=0.5, max=30) + wait_random(0, 0.5))(state))
