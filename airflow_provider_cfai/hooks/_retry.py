"""The retry loop both hooks run around their single attempts: one shape, two faces.

An attempt (the hook's ``_send``) either returns the envelope's ``result`` or raises
:class:`~airflow_provider_cfai.policy.AttemptFailed`. The loop asks the policy whether and when to
try again (``tenacity`` driven by :class:`~airflow_provider_cfai.policy.RetryController`), looks a
call up instead of re-sending it after an unknown outcome when it can (``recover``), and turns the
last failure into the error the call raises (:func:`~airflow_provider_cfai.policy.give_up`, plus
what to fix in the connection). :meth:`RetryLoop.run` is the synchronous face (``Retrying``),
:meth:`RetryLoop.arun` the asynchronous one (``AsyncRetrying``); nothing else differs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import AsyncRetrying, Retrying

from airflow_provider_cfai.hooks._connection import credentials_hint
from airflow_provider_cfai.policy import AttemptFailed, RetryController, RetryPolicy, give_up, log_retry

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tenacity import RetryCallState

    from airflow_provider_cfai.exceptions import CloudflareAPIError
    from airflow_provider_cfai.hooks._connection import ConnectionSettings

__all__ = ["RetryLoop"]

T = TypeVar("T")


class RetryLoop:
    """One API call's attempts under the retry policy.

    :param settings: the connection (``max_retries``, ``retry_budget``; the hint names its account).
    :param conn_id: the Airflow connection, named in what-to-fix hints.
    :param log: where retries are logged.
    :param resend_unknown: ``False`` for a call that must not be repeated and cannot be looked up.
    :param unknown_context: prefixes the error when the call gives up after an unknown outcome.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        conn_id: str,
        *,
        log: Any,
        resend_unknown: bool = True,
        unknown_context: str | None = None,
    ) -> None:
        self.settings = settings
        self.conn_id = conn_id
        self.log = log
        self.rules = RetryPolicy(settings.max_retries, settings.retry_budget, resend_unknown=resend_unknown)
        self.unknown_context = unknown_context
        #: whether an attempt so far may have been applied: the next one is looked up first.
        self.outcome_unknown = False

    def _tenacity(self, sleep: Any) -> dict[str, Any]:
        control = RetryController(self.rules)
        options: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
        return {
            "retry": control.retry,
            "stop": control.stop,
            "wait": control.wait,
            "before_sleep": self._log_retry,
            "reraise": True,
            **options,
        }

    def _log_retry(self, state: RetryCallState) -> None:
        log_retry(self.log, state, attempts=self.settings.max_retries + 1)

    def _note(self, failed: AttemptFailed) -> None:
        self.outcome_unknown = self.outcome_unknown or failed.outcome_unknown

    def _final(self, failed: AttemptFailed) -> CloudflareAPIError:
        error = give_up(failed, self.rules, unknown_context=self.unknown_context)
        hint = credentials_hint(self.settings, self.conn_id, error)
        return error.with_hint(hint) if hint else error

    def run(
        self,
        send: Callable[[], T],
        *,
        recover: Callable[[], T | None] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> T:
        """Attempt ``send`` until it returns or the policy gives up.

        :param recover: for a call that may not be repeated blindly: after an attempt whose outcome
            is unknown, called first, as part of the next attempt and its budget; a non-``None``
            result is the call's. It must make single attempts, never retry on its own.
        """
        try:
            for attempt in Retrying(**self._tenacity(sleep)):
                with attempt:
                    try:
                        if self.outcome_unknown and recover is not None:
                            recovered = recover()
                            if recovered is not None:
                                return recovered
                        return send()
                    except AttemptFailed as failed:
                        self._note(failed)
                        raise
        except AttemptFailed as failed:
            raise self._final(failed) from failed.__cause__
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    async def arun(
        self,
        send: Callable[[], Awaitable[T]],
        *,
        recover: Callable[[], Awaitable[T | None]] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> T:
        """:meth:`run` for coroutines."""
        try:
            async for attempt in AsyncRetrying(**self._tenacity(sleep)):
                with attempt:
                    try:
                        if self.outcome_unknown and recover is not None:
                            recovered = await recover()
                            if recovered is not None:
                                return recovered
                        return await send()
                    except AttemptFailed as failed:
                        self._note(failed)
                        raise
        except AttemptFailed as failed:
            raise self._final(failed) from failed.__cause__
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover
