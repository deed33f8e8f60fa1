"""Errors raised by the provider.

Two families matter to Airflow. A *permanent* error (bad input, an API answer that will not change
on retry) also derives from ``AirflowFailException``, so the task fails at once instead of burning
its retries. Everything else is an ordinary exception that Airflow retries as configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

try:  # Airflow 3.2+
    from airflow.sdk.exceptions import AirflowFailException, AirflowTaskTimeout
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowFailException, AirflowTaskTimeout  # type: ignore[no-redef]

__all__ = [
    "AdapterValidationError",
    "AirflowFailException",
    "BatchFailureRatioError",
    "BatchTimeoutError",
    "CloudflareAIError",
    "CloudflareAPIError",
    "CloudflareAuthError",
    "CloudflareConfigError",
    "CloudflareInputError",
    "CloudflareOutcomeUnknownError",
    "CloudflarePermanentAPIError",
    "FinetuneConflictError",
    "PreflightCheckError",
    "PromotionCheckError",
    "format_errors",
]


class CloudflareAIError(Exception):
    """Base class of every error this provider raises."""


class CloudflareConfigError(CloudflareAIError, AirflowFailException):
    """The Airflow connection is unusable (no account ID, no credentials, a malformed host)."""


class CloudflareInputError(CloudflareAIError, ValueError, AirflowFailException):
    """An argument is invalid; raised before any API call."""


class AdapterValidationError(CloudflareInputError):
    """A LoRA adapter folder breaks one of Cloudflare's rules.

    :param file_name: the adapter file at fault (``adapter_config.json`` …), or the folder.
    :param field: the field or property that is wrong (``r``, ``model_type``, ``size`` …).
    :param problem: what is wrong and what the limit is.
    """

    def __init__(self, file_name: str, field: str, problem: str) -> None:
        self.file_name = file_name
        self.field = field
        self.problem = problem
        super().__init__(f"{file_name}: {field}: {problem}")


class FinetuneConflictError(CloudflareInputError):
    """A finetune with the requested name already exists (``if_exists="fail"``) or has another model."""


class PreflightCheckError(CloudflareInputError):
    """A check before a create failed: the finetune, which cannot be deleted, could never serve or fit.

    Raised before ``POST /ai/finetunes`` for a base model that is unknown or takes no LoRA, an adapter
    of another model family, or an account at its finetune limit.
    """


def format_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """Cloudflare's error items as ``[code] message; [code] message`` (the message alone without a code)."""
    parts = []
    for item in errors:
        code = item.get("code")
        message = str(item.get("message", "")).strip()
        parts.append(f"[{code}] {message}" if code is not None else message)
    return "; ".join(p for p in parts if p)


class CloudflareAPIError(CloudflareAIError):
    """Cloudflare (or the network on the way) did not do what was asked.

    :param method: HTTP method of the failed call.
    :param path: request path below the API base URL (no query string, no secrets).
    :param status: HTTP status, or ``None`` when no response arrived.
    :param errors: Cloudflare's ``errors`` items (``{"code": …, "message": …}``); unknown keys are kept.
    :param detail: what happened when there is no Cloudflare error body (HTML page, timeout …).
    """

    def __init__(
        self,
        method: str,
        path: str,
        status: int | None,
        errors: Sequence[Mapping[str, Any]] = (),
        *,
        detail: str | None = None,
        context: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.errors: list[dict[str, Any]] = [dict(e) for e in errors]
        self.detail = detail
        self.context = context
        super().__init__(str(self))

    @property
    def codes(self) -> list[int]:
        """The numeric Cloudflare error codes, in the order Cloudflare sent them."""
        return [e["code"] for e in self.errors if isinstance(e.get("code"), int)]

    def with_context(self, context: str) -> CloudflareAPIError:
        """Return the same error (same class, same retry behaviour) prefixed with ``context``."""
        if self.context:
            context = f"{context}: {self.context}"
        return type(self)(self.method, self.path, self.status, self.errors, detail=self.detail, context=context)

    def with_hint(self, hint: str) -> CloudflareAPIError:
        """Return the same error (same class) with ``hint``, what to fix, after what Cloudflare said."""
        detail = f"{self.detail}; {hint}" if self.detail else hint
        return type(self)(self.method, self.path, self.status, self.errors, detail=detail, context=self.context)

    def __str__(self) -> str:
        outcome = f"failed with HTTP {self.status}" if self.status is not None else "failed"
        text = f"{self.method} {self.path} {outcome}"
        reasons = format_errors(self.errors)
        if reasons:
            text += f": {reasons}"
        if self.detail:
            text += f" ({self.detail})" if reasons else f": {self.detail}"
        return f"{self.context}: {text}" if self.context else text

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions cross process boundaries (Celery, the Task SDK supervisor): keep every field.
        return (
            _rebuild_api_error,
            (type(self), self.method, self.path, self.status, self.errors, self.detail, self.context),
        )


def _rebuild_api_error(
    cls: type[CloudflareAPIError],
    method: str,
    path: str,
    status: int | None,
    errors: list[dict[str, Any]],
    detail: str | None,
    context: str | None,
) -> CloudflareAPIError:
    return cls(method, path, status, errors, detail=detail, context=context)


class CloudflarePermanentAPIError(CloudflareAPIError, AirflowFailException):
    """Cloudflare refused the request for a reason a retry will not change (4xx other than 408/429)."""


class CloudflareAuthError(CloudflarePermanentAPIError):
    """Cloudflare rejected the credentials (HTTP 401/403)."""


class CloudflareOutcomeUnknownError(CloudflareAPIError, AirflowFailException):
    """A call that must not be sent twice may have been applied, and Cloudflare cannot say whether.

    Raised for a Batch API submit whose answer was lost or unreadable (Cloudflare has no call that
    lists queued batches). Airflow does not retry it: a retry would send the call again without
    anyone deciding to. The message says what to check before re-running the task.
    """


class BatchTimeoutError(CloudflareAIError, AirflowTaskTimeout):
    """A batch reached its deadline (the task's ``execution_timeout``) before every input had a result.

    Not a failed batch: the results so far stay in the output, and a retry resumes after them (or
    re-attaches to the queued batch) instead of starting over.
    """


class BatchFailureRatioError(CloudflareAIError, AirflowFailException):
    """More items of a batch failed than ``max_failure_ratio`` allows; raised after the output is written."""


class PromotionCheckError(CloudflareAIError, AirflowFailException):
    """A check before a promotion or rollback failed; the serving pointer was not changed.

    Raised for a finetune that is missing, made for another model or fails its canary inference, a
    KV namespace that does not exist, a token without the permission a step needs, or a rollback
    with no history. The message names the fix; Airflow does not retry.
    """
