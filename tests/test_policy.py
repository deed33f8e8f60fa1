"""The retry policy as a table: status or failure → retried?, permanent class, outcome unknown, wait.

Pure functions: no HTTP, no sleeping. The fault-matrix tests prove the transports follow them.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_cfai import policy
from airflow_provider_cfai.exceptions import (
    AirflowFailException,
    CloudflareAPIError,
    CloudflareAuthError,
    CloudflareOutcomeUnknownError,
    CloudflarePermanentAPIError,
)


def failure_for(status: int | None, retry_after: str | None = None, *, connected: bool = True) -> Any:
    error = policy.error_class(status)("GET", "/accounts/a/ai/finetunes", status)
    if status is None:
        return policy.after_transport_failure(error, connected=connected)
    return policy.after_status(error, retry_after)


@pytest.mark.parametrize(
    ("status", "retried", "error_class", "outcome_unknown"),
    [
        pytest.param(400, False, CloudflarePermanentAPIError, False, id="400-bad-request"),
        pytest.param(401, False, CloudflareAuthError, False, id="401-auth"),
        pytest.param(403, False, CloudflareAuthError, False, id="403-permission"),
        pytest.param(404, False, CloudflarePermanentAPIError, False, id="404-not-found"),
        pytest.param(405, False, CloudflarePermanentAPIError, False, id="405-no-lora"),
        pytest.param(409, False, CloudflarePermanentAPIError, False, id="409-conflict"),
        pytest.param(413, False, CloudflarePermanentAPIError, False, id="413-too-large"),
        pytest.param(408, True, CloudflareAPIError, True, id="408-timeout"),
        pytest.param(429, True, CloudflareAPIError, False, id="429-refused-at-the-door"),
        pytest.param(500, True, CloudflareAPIError, True, id="500"),
        pytest.param(501, True, CloudflareAPIError, True, id="501"),
        pytest.param(502, True, CloudflareAPIError, True, id="502"),
        pytest.param(503, True, CloudflareAPIError, True, id="503"),
        pytest.param(504, True, CloudflareAPIError, True, id="504"),
        pytest.param(520, True, CloudflareAPIError, True, id="520-edge"),
        pytest.param(530, True, CloudflareAPIError, True, id="530-edge"),
        pytest.param(None, True, CloudflareAPIError, True, id="no-answer-after-connecting"),
    ],
)
def test_status_table(status: int | None, retried: bool, error_class: type, outcome_unknown: bool) -> None:
    failure = failure_for(status)

    assert type(failure.error) is error_class
    assert policy.is_retryable(failure) is retried
    assert isinstance(failure.error, AirflowFailException) is (not retried)
    assert failure.outcome_unknown is outcome_unknown


def test_a_connection_never_made_sent_nothing() -> None:
    failure = failure_for(None, connected=False)

    assert policy.is_retryable(failure)
    assert not failure.outcome_unknown


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("0", 0.0), ("-3", 0.0), ("nan", None), ("inf", None), ("soon", None), (None, None)],
)
def test_retry_after_is_read_only_from_a_429(header: str | None, expected: float | None) -> None:
    assert failure_for(429, header).retry_after == expected
    assert failure_for(503, header).retry_after is None


@pytest.mark.parametrize(
    ("attempt", "expected"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (6, 16.0), (7, 30.0), (50, 30.0)]
)
def test_backoff_doubles_from_half_a_second_up_to_thirty(attempt: int, expected: float) -> None:
    assert policy.backoff(attempt) == expected


RULES = policy.RetryPolicy(max_retries=3, retry_budget=10.0)


@pytest.mark.parametrize(
    ("failure", "attempt", "waited", "jitter", "expected"),
    [
        pytest.param(failure_for(503), 1, 0.0, 0.0, 0.5, id="first-backoff"),
        pytest.param(failure_for(503), 2, 0.5, 1.0, 1.5, id="backoff-plus-full-jitter"),
        pytest.param(failure_for(503), 4, 0.0, 0.0, None, id="attempts-used-up"),
        pytest.param(failure_for(503), 3, 8.5, 0.0, None, id="next-wait-passes-budget"),
        pytest.param(failure_for(503), 3, 7.9, 0.9, 2.1, id="jitter-clipped-to-budget"),
        pytest.param(failure_for(429, "4"), 1, 0.0, 0.5, 4.0, id="retry-after-exact-no-jitter"),
        pytest.param(failure_for(429, "11"), 1, 0.0, 0.0, None, id="retry-after-past-budget"),
        pytest.param(failure_for(429), 1, 0.0, 0.0, 0.5, id="429-without-retry-after-backs-off"),
        pytest.param(failure_for(400), 1, 0.0, 0.0, None, id="permanent-never-waits"),
        pytest.param(ValueError("bug"), 1, 0.0, 0.0, None, id="a-bug-is-not-retried"),
    ],
)
def test_next_wait_table(failure: Any, attempt: int, waited: float, jitter: float, expected: float | None) -> None:
    wait = RULES.next_wait(failure, attempt_number=attempt, waited=waited, jitter=jitter)

    assert wait == (pytest.approx(expected) if expected is not None else None)


def _state(attempt: int, idle_for: float, failure: BaseException | None) -> Any:
    outcome = SimpleNamespace(exception=lambda: failure)
    return SimpleNamespace(attempt_number=attempt, idle_for=idle_for, outcome=outcome)


def test_controller_decides_once_per_attempt_whatever_tenacity_asks_first() -> None:
    draws = iter([0.2, 0.9, 0.9])
    control = policy.RetryController(RULES, jitter=lambda: next(draws))
    state = _state(1, 0.0, failure_for(503))

    assert control.retry(state)
    assert control.wait(state) == pytest.approx(0.6)
    assert not control.stop(state)
    assert control.wait(state) == pytest.approx(0.6)  # same draw, not a second one


def test_controller_stops_when_the_budget_is_spent() -> None:
    control = policy.RetryController(policy.RetryPolicy(max_retries=5, retry_budget=1.0), jitter=lambda: 0.0)

    assert not control.stop(_state(1, 0.0, failure_for(502)))
    assert control.stop(_state(2, 0.5, failure_for(502)))  # 1 s more would make 1.5 s
    assert not control.retry(_state(3, 0.0, failure_for(404)))


def _status_decisions(source: str) -> list[int]:
    """HTTP statuses a module compares against or lists in a literal (docstrings don't count)."""
    import ast

    found: list[int] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Compare, ast.Set, ast.Tuple, ast.List)):
            found += [
                c.value
                for c in ast.walk(node)
                if isinstance(c, ast.Constant) and type(c.value) is int and 400 <= c.value <= 599
            ]
    return found


def test_the_transports_share_one_copy_of_the_status_rules() -> None:
    import pathlib

    package = pathlib.Path(policy.__file__).parent
    deciders = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if not {"emulator"} & set(path.parts) and path.name != "testing.py"
        if _status_decisions(path.read_text())
    )

    assert deciders == ["policy.py"]


@pytest.mark.parametrize(
    ("status", "stops"),
    [(None, True), (401, True), (403, True), (429, True), (400, False), (404, False), (500, False), (503, False)],
)
def test_which_item_failures_stop_a_batch(status: int | None, stops: bool) -> None:
    error = policy.error_class(status)("POST", "/accounts/a/ai/run/m", status)

    assert policy.stops_the_batch(error) is stops


@pytest.mark.parametrize(
    ("failure", "retried"),
    [
        pytest.param(failure_for(503), False, id="5xx-after-sending"),
        pytest.param(failure_for(None), False, id="no-answer-after-connecting"),
        pytest.param(failure_for(None, connected=False), True, id="never-connected"),
        pytest.param(failure_for(429, "2"), True, id="refused-at-the-door"),
    ],
)
def test_a_call_that_cannot_be_looked_up_is_never_resent_blindly(failure: Any, retried: bool) -> None:
    rules = policy.RetryPolicy(max_retries=3, retry_budget=10.0, resend_unknown=False)

    assert (rules.next_wait(failure, attempt_number=1, waited=0.0) is not None) is retried


@pytest.mark.parametrize(
    ("code", "stops"), [(5007, True), (3037, True), (3038, True), (3039, True), (5005, True), (5006, False)]
)
def test_an_error_about_the_batchs_model_or_finetune_stops_it(code: int, stops: bool) -> None:
    error = policy.error_class(400)("POST", "/accounts/a/ai/run/m", 400, [{"code": code, "message": "x"}])

    assert policy.stops_the_batch(error) is stops


# -- one outcome rule: what arrived → applied / not applied / unknown, on every path ----------------


class Arrived:
    """An HTTP answer as both hooks see it (the ``HTTPResponse`` protocol of ``hooks._responses``)."""

    def __init__(self, status: int, body: str, content_type: str = "application/json") -> None:
        self.status_code = status
        self.text = body
        self.headers = {"Content-Type": content_type}

    def json(self) -> Any:
        import json

        return json.loads(self.text)


ENVELOPE_OK = '{"success": true, "errors": [], "messages": [], "result": {"id": "ft-1", "request_id": "rq-1"}}'
ENVELOPE_NO_ID = '{"success": true, "errors": [], "messages": [], "result": {"status": "queued"}}'
ENVELOPE_FAILED = '{"success": false, "errors": [{"code": 1001, "message": "no"}], "messages": [], "result": null}'
HTML = "<html><head><title>Bad gateway</title></head><body>proxy</body></html>"
TRUNCATED = '{"success": true, "result": {"id": "ft-'
UNKNOWN, NOT_APPLIED, APPLIED = policy.Outcome.UNKNOWN, policy.Outcome.NOT_APPLIED, policy.Outcome.APPLIED
NO_ANSWER_SENT = "no answer, connection made"
NO_ANSWER_NOT_SENT = "no answer, connection refused"


def attempt(arrived: Arrived | str) -> Any:
    """What one attempt of a create (which needs ``id``) turns into: its result or ``AttemptFailed``."""
    from airflow_provider_cfai.hooks._responses import unwrap

    if isinstance(arrived, str):
        error = CloudflareAPIError("POST", "/accounts/a/ai/finetunes", None, detail=arrived)
        return policy.after_transport_failure(error, connected=arrived == NO_ANSWER_SENT)
    try:
        return unwrap(arrived, "POST", "/accounts/a/ai/finetunes", needs=("id",))
    except policy.AttemptFailed as failed:
        return failed


@pytest.mark.parametrize(
    ("arrived", "outcome", "error_class", "submit_final"),
    [
        pytest.param(Arrived(200, ENVELOPE_OK), APPLIED, None, None, id="200-envelope-with-id"),
        pytest.param(
            Arrived(200, HTML, "text/html"), UNKNOWN, CloudflareAPIError, CloudflareOutcomeUnknownError, id="200-html"
        ),
        pytest.param(
            Arrived(200, TRUNCATED), UNKNOWN, CloudflareAPIError, CloudflareOutcomeUnknownError, id="200-truncated-json"
        ),
        pytest.param(
            Arrived(200, "[1, 2]"),
            UNKNOWN,
            CloudflareAPIError,
            CloudflareOutcomeUnknownError,
            id="200-json-not-envelope",
        ),
        pytest.param(Arrived(200, ""), UNKNOWN, CloudflareAPIError, CloudflareOutcomeUnknownError, id="200-empty"),
        pytest.param(
            Arrived(200, ENVELOPE_NO_ID),
            UNKNOWN,
            CloudflareAPIError,
            CloudflareOutcomeUnknownError,
            id="200-without-the-field",
        ),
        pytest.param(Arrived(204, ""), UNKNOWN, CloudflareAPIError, CloudflareOutcomeUnknownError, id="204-no-body"),
        pytest.param(
            Arrived(200, ENVELOPE_FAILED),
            NOT_APPLIED,
            CloudflarePermanentAPIError,
            CloudflarePermanentAPIError,
            id="200-success-false",
        ),
        pytest.param(
            Arrived(400, ENVELOPE_FAILED),
            NOT_APPLIED,
            CloudflarePermanentAPIError,
            CloudflarePermanentAPIError,
            id="400-envelope",
        ),
        pytest.param(
            Arrived(400, HTML, "text/html"),
            UNKNOWN,
            CloudflarePermanentAPIError,
            CloudflarePermanentAPIError,
            id="400-html",
        ),
        pytest.param(Arrived(401, ENVELOPE_FAILED), NOT_APPLIED, CloudflareAuthError, CloudflareAuthError, id="401"),
        pytest.param(Arrived(403, HTML, "text/html"), UNKNOWN, CloudflareAuthError, CloudflareAuthError, id="403-html"),
        pytest.param(
            Arrived(408, ENVELOPE_FAILED), UNKNOWN, CloudflareAPIError, CloudflareOutcomeUnknownError, id="408"
        ),
        pytest.param(Arrived(429, ENVELOPE_FAILED), NOT_APPLIED, CloudflareAPIError, "retried", id="429-envelope"),
        pytest.param(
            Arrived(429, HTML, "text/html"), NOT_APPLIED, CloudflareAPIError, "retried", id="429-html-edge-page"
        ),
        pytest.param(
            Arrived(500, ENVELOPE_FAILED), UNKNOWN, CloudflareAPIError, CloudflareOutcomeUnknownError, id="500-envelope"
        ),
        pytest.param(
            Arrived(502, HTML, "text/html"), UNKNOWN, CloudflareAPIError, CloudflareOutcomeUnknownError, id="502-html"
        ),
        pytest.param(
            NO_ANSWER_SENT, UNKNOWN, CloudflareAPIError, CloudflareOutcomeUnknownError, id="no-answer-after-sending"
        ),
        pytest.param(NO_ANSWER_NOT_SENT, NOT_APPLIED, CloudflareAPIError, "retried", id="connection-refused"),
    ],
)
def test_one_outcome_rule(arrived: Arrived | str, outcome: Any, error_class: type | None, submit_final: Any) -> None:
    result = attempt(arrived)

    if error_class is None:
        assert result == {"id": "ft-1", "request_id": "rq-1"}
        assert policy.outcome(200) is outcome
        return
    assert isinstance(result, policy.AttemptFailed)
    assert type(result.error) is error_class
    assert result.outcome_unknown is (outcome is UNKNOWN)
    # A create may retry anything retryable: after an unknown outcome it looks the name up first.
    create = policy.RetryPolicy(max_retries=3, retry_budget=10.0)
    assert (create.next_wait(result, attempt_number=1, waited=0.0) is not None) is policy.is_retryable(result)
    # A submit (cannot be looked up) is retried only when nothing was applied, else fails for good.
    submit = policy.RetryPolicy(max_retries=3, retry_budget=10.0, resend_unknown=False)
    retried = submit.next_wait(result, attempt_number=1, waited=0.0) is not None
    assert retried is (submit_final == "retried")
    if not retried:
        final = policy.give_up(result, submit, unknown_context="look")
        assert type(final) is submit_final
        assert isinstance(final, AirflowFailException)  # Airflow must not re-send it either


def test_the_outcome_function_is_the_rule_the_transports_follow() -> None:
    assert policy.outcome(None, sent=False) is NOT_APPLIED
    assert policy.outcome(None) is UNKNOWN
    assert policy.outcome(200) is APPLIED
    assert policy.outcome(200, readable=False) is UNKNOWN
    assert policy.outcome(200, success=False) is NOT_APPLIED
    assert policy.outcome(429, readable=False) is NOT_APPLIED
    assert policy.outcome(503) is UNKNOWN
    assert policy.outcome(404) is NOT_APPLIED


def test_giving_up_after_a_known_failure_keeps_the_error() -> None:
    failed = failure_for(503)
    failed.outcome_unknown = False
    submit = policy.RetryPolicy(max_retries=0, retry_budget=0.0, resend_unknown=False)

    assert policy.give_up(failed, submit, unknown_context="look") is failed.error


def test_giving_up_after_an_unknown_create_keeps_it_retryable_and_says_what_to_look_for() -> None:
    create = policy.RetryPolicy(max_retries=0, retry_budget=0.0)

    final = policy.give_up(failure_for(503), create, unknown_context="Finetune 'x' may have been created")

    assert type(final) is CloudflareAPIError
    assert str(final).startswith("Finetune 'x' may have been created: ")
