"""The hook's retry policy, driven through the emulator's fault API over real HTTP.

Each case relies only on behaviour Cloudflare documents (status codes, Retry-After, the envelope);
the emulator merely produces those answers on demand.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from airflow_provider_cfai.exceptions import (
    AirflowFailException,
    CloudflareAPIError,
    CloudflareAuthError,
    CloudflarePermanentAPIError,
)

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
LIST = r"^/accounts/[0-9a-f]+/ai/finetunes/?$"
CREATE = LIST


def calls(emulator: Any, method: str, suffix: str = "/ai/finetunes") -> int:
    return sum(
        1 for r in emulator.state()["requests"] if r["method"] == method and r["path"].rstrip("/").endswith(suffix)
    )


def cloudflare_error(code: int, message: str) -> dict[str, Any]:
    return {"success": False, "errors": [{"code": code, "message": message}], "messages": [], "result": None}


def test_429_waits_for_retry_after_then_succeeds(hook: Any, emulator: Any, read_logs: Any) -> None:
    rule = emulator.add_fault(
        method="GET",
        path=LIST,
        times=1,
        status=429,
        headers={"Retry-After": "2"},
        body=cloudflare_error(971, "Please wait"),
    )

    started = time.monotonic()
    assert hook.list_finetunes() == []
    elapsed = time.monotonic() - started

    assert elapsed >= 2.0
    assert emulator.fired(rule) == 1
    assert calls(emulator, "GET") == 2
    logs = read_logs()
    assert "HTTP 429" in logs
    assert "retrying in 2.0 s" in logs
    assert emulator.token not in logs


def test_retry_after_as_http_date_is_honoured(hook: Any, emulator: Any) -> None:
    from email.utils import formatdate

    rule = emulator.add_fault(
        method="GET", path=LIST, times=1, status=429, headers={"Retry-After": formatdate(time.time() + 2, usegmt=True)}
    )

    started = time.monotonic()
    hook.list_finetunes()

    assert time.monotonic() - started >= 1.0  # HTTP dates have one-second resolution
    assert emulator.fired(rule) == 1
    assert calls(emulator, "GET") == 2


def test_retry_after_beyond_the_budget_gives_up_at_once(make_hook: Any, emulator: Any) -> None:
    hook = make_hook(retry_budget=5)
    rule = emulator.add_fault(method="GET", path=LIST, times=1, status=429, headers={"Retry-After": "300"})

    started = time.monotonic()
    with pytest.raises(CloudflareAPIError) as caught:
        hook.list_finetunes()

    assert time.monotonic() - started < 3
    assert caught.value.status == 429
    assert "retry after 300 s" in str(caught.value)
    assert emulator.fired(rule) == 1
    assert not isinstance(caught.value, AirflowFailException)  # Airflow's own retry may try later


def test_503_then_success(hook: Any, emulator: Any) -> None:
    rule = emulator.add_fault(method="GET", path=LIST, times=1, status=503, body=cloudflare_error(10013, "busy"))

    assert hook.list_finetunes() == []
    assert emulator.fired(rule) == 1
    assert calls(emulator, "GET") == 2


def test_html_502_page_becomes_an_api_error_not_a_decode_error(make_hook: Any, emulator: Any) -> None:
    hook = make_hook(max_retries=1)
    rule = emulator.add_fault(method="GET", path=LIST, times=5, status=502, html=True)

    with pytest.raises(CloudflareAPIError) as caught:
        hook.list_finetunes()

    message = str(caught.value)
    assert caught.value.status == 502
    assert "HTTP 502" in message
    assert "non-JSON text/html body" in message
    assert emulator.fired(rule) == 2
    assert calls(emulator, "GET") == 2


def test_persistent_500_gives_up_within_budget_and_names_500(make_hook: Any, emulator: Any) -> None:
    hook = make_hook(max_retries=3, retry_budget=4)
    rule = emulator.add_fault(method="GET", path=LIST, times=50, status=500, body=cloudflare_error(10000, "internal"))

    started = time.monotonic()
    with pytest.raises(CloudflareAPIError) as caught:
        hook.list_finetunes()
    elapsed = time.monotonic() - started

    assert elapsed < 4 + 2
    assert caught.value.status == 500
    assert "HTTP 500" in str(caught.value)
    assert 2 <= calls(emulator, "GET") <= 4
    assert emulator.fired(rule) == calls(emulator, "GET")  # every attempt met the 500
    assert not isinstance(caught.value, AirflowFailException)


def test_400_with_cloudflare_errors_is_sent_once(hook: Any, emulator: Any) -> None:
    rule = emulator.add_fault(
        method="POST", path=CREATE, times=1, status=400, body=cloudflare_error(1001, "Finetune creation failed")
    )

    with pytest.raises(CloudflarePermanentAPIError) as caught:
        hook.create_finetune(MODEL, "bot")

    assert "[1001] Finetune creation failed" in str(caught.value)
    assert isinstance(caught.value, AirflowFailException)
    assert emulator.fired(rule) == 1
    assert calls(emulator, "POST") == 1
    assert emulator.finetunes() == []


def test_401_is_an_auth_error_sent_once(hook: Any, emulator: Any) -> None:
    rule = emulator.add_fault(
        method="GET", path=LIST, times=1, status=401, body=cloudflare_error(10000, "Authentication error")
    )

    with pytest.raises(CloudflareAuthError, match=r"\[10000\] Authentication error"):
        hook.list_finetunes()

    assert emulator.fired(rule) == 1
    assert calls(emulator, "GET") == 1


def test_success_false_at_200_is_a_failure(hook: Any, emulator: Any) -> None:
    rule = emulator.add_fault(method="GET", path=LIST, times=1, status=200, body=cloudflare_error(7000, "No route"))

    with pytest.raises(CloudflarePermanentAPIError, match=r"HTTP 200: \[7000\] No route"):
        hook.list_finetunes()

    assert emulator.fired(rule) == 1
    assert calls(emulator, "GET") == 1


def test_error_chain_and_unknown_keys_are_tolerated(hook: Any, emulator: Any) -> None:
    body = cloudflare_error(6003, "Invalid request headers")
    body["errors"][0]["error_chain"] = [{"code": 6111, "message": "Invalid format for Authorization header"}]
    body["unexpected"] = {"x": 1}
    rule = emulator.add_fault(method="GET", path=LIST, times=1, status=400, body=body)

    with pytest.raises(CloudflarePermanentAPIError) as caught:
        hook.list_finetunes()

    assert emulator.fired(rule) == 1
    assert caught.value.codes == [6003]
    assert caught.value.errors[0]["error_chain"][0]["code"] == 6111


@pytest.mark.parametrize("action", ["drop_after_commit", "respond"])
def test_create_with_unknown_outcome_is_not_duplicated(hook: Any, emulator: Any, action: str) -> None:
    # drop_after_commit: the create is committed, then the connection drops.
    # respond 502 after commit is not expressible; a 502 before the work shows the other branch:
    # the lookup finds nothing and the hook creates exactly once.
    rule = emulator.add_fault(method="POST", path=CREATE, times=1, action=action, status=502, html=True)

    created = hook.create_finetune(MODEL, "bot")

    (held,) = emulator.finetunes()
    assert created["id"] == held["id"]
    assert emulator.fired(rule) == 1
    assert calls(emulator, "POST") == (1 if action == "drop_after_commit" else 2)


@pytest.mark.parametrize(
    "garble",
    [
        pytest.param({}, id="truncated-json"),
        pytest.param({"html": True}, id="html-page"),
        pytest.param({"body": ["not", "an", "envelope"]}, id="json-not-an-envelope"),
        pytest.param({"body": {"success": True, "errors": [], "result": {"name": "bot"}}}, id="envelope-without-id"),
    ],
)
def test_create_answered_with_a_garbled_200_after_it_was_applied_returns_the_one_finetune(
    hook: Any, emulator: Any, garble: dict[str, Any]
) -> None:
    hook._sleep = lambda seconds: None
    rule = emulator.add_fault(method="POST", path=CREATE, action="garble_after_commit", **garble)

    created = hook.create_finetune(MODEL, "bot")

    (held,) = emulator.finetunes()
    assert created["id"] == held["id"]
    assert emulator.fired(rule) == 1
    assert calls(emulator, "POST") == 1  # looked up, never re-sent


def test_a_create_whose_answers_stay_garbled_fails_naming_the_finetune_to_look_for(
    make_hook: Any, emulator: Any
) -> None:
    hook = make_hook(max_retries=2)
    hook._sleep = lambda seconds: None
    garbled = emulator.add_fault(method="POST", path=CREATE, action="garble_after_commit", html=True)
    listing = emulator.add_fault(method="GET", path=LIST, times=5, status=503)

    with pytest.raises(CloudflareAPIError) as caught:
        hook.create_finetune(MODEL, "bot")

    assert emulator.fired(garbled) == 1
    assert emulator.fired(listing) == 2  # each retry looked the name up instead of creating again
    assert calls(emulator, "POST") == 1
    assert len(emulator.finetunes()) == 1
    assert "Finetune 'bot' of " + MODEL + " may have been created" in str(caught.value)
    assert "find_finetune" in str(caught.value)


@pytest.mark.parametrize(
    ("other_model", "other_name"),
    [("@cf/google/gemma-7b-it-lora", "bot"), (MODEL, "bot-2")],
    ids=["same-name-other-model", "same-model-other-name"],
)
@pytest.mark.parametrize("action", ["drop_after_commit", "garble_after_commit"])
def test_the_look_up_after_an_unknown_create_matches_name_and_model(
    hook: Any, emulator: Any, action: str, other_model: str, other_name: str
) -> None:
    other = hook.create_finetune(other_model, other_name)  # older, and not the one being created
    hook._sleep = lambda seconds: None
    rule = emulator.add_fault(method="POST", path=CREATE, action=action)

    created = hook.create_finetune(MODEL, "bot")

    assert emulator.fired(rule) == 1
    assert (created["name"], created["model"]) == ("bot", MODEL)
    assert created["id"] != other["id"]
    assert len(emulator.finetunes()) == 2


def test_an_unknown_create_stays_unknown_until_it_is_found(hook: Any, emulator: Any) -> None:
    # The look-up itself is refused once (a 429 is a *known* failure): the next attempt must still
    # look up, not re-send the create that may have been applied.
    hook._sleep = lambda seconds: None
    garbled = emulator.add_fault(method="POST", path=CREATE, action="garble_after_commit")
    refused = emulator.add_fault(method="GET", path=LIST, status=429, headers={"Retry-After": "0"})

    created = hook.create_finetune(MODEL, "bot")

    assert (emulator.fired(garbled), emulator.fired(refused)) == (1, 1)
    (held,) = emulator.finetunes()
    assert created["id"] == held["id"]
    assert calls(emulator, "POST") == 1


def test_slow_create_after_commit_is_not_duplicated(make_hook: Any, emulator: Any) -> None:
    hook = make_hook(timeout=1)
    rule = emulator.add_fault(method="POST", path=CREATE, times=1, action="delay_after_commit", delay=3)

    created = hook.create_finetune(MODEL, "bot")

    (held,) = emulator.finetunes()
    assert created["id"] == held["id"]
    assert emulator.fired(rule) == 1
    assert calls(emulator, "POST") == 1


def test_dropped_connection_before_commit_creates_exactly_once(hook: Any, emulator: Any) -> None:
    rule = emulator.add_fault(method="POST", path=CREATE, times=1, action="drop")

    created = hook.create_finetune(MODEL, "bot")

    (held,) = emulator.finetunes()
    assert created["id"] == held["id"]
    assert emulator.fired(rule) == 1
    assert calls(emulator, "POST") == 2  # the dropped one, then the one the lookup found missing


def test_get_is_retried_after_a_dropped_connection(hook: Any, emulator: Any) -> None:
    rule = emulator.add_fault(method="GET", path=LIST, times=2, action="drop")

    assert hook.list_finetunes() == []
    assert emulator.fired(rule) == 2
    assert calls(emulator, "GET") == 3


def test_unreachable_server_is_a_transient_error(make_hook: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hook = make_hook(max_retries=1, host=f"http://127.0.0.1:{port}/client/v4")

    with pytest.raises(CloudflareAPIError, match="connection error") as caught:
        hook.list_finetunes()

    assert caught.value.status is None
    assert not isinstance(caught.value, AirflowFailException)


def test_pacing_spends_the_window_without_a_429(make_hook: Any, emulator: Any) -> None:
    emulator.configure(rate_limit=10, rate_window=1.0, rate_lockout=30)
    hook = make_hook()

    for _ in range(25):
        hook.list_finetunes()

    state = emulator.state()
    assert state["rate_limited_responses"] == 0
    assert state["lockouts"] == 0
    assert calls(emulator, "GET") == 25
