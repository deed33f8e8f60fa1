"""CloudflareAIHook against the emulator over real HTTP: auth schemes, calls, shapes, errors."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from airflow_provider_cfai.exceptions import (
    CloudflareAPIError,
    CloudflareAuthError,
    CloudflareConfigError,
    CloudflareInputError,
    CloudflarePermanentAPIError,
)
from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"


def test_create_returns_result_and_emulator_holds_it(hook: CloudflareAIHook, emulator: Any) -> None:
    created = hook.create_finetune(MODEL, "bot-a", description="first")

    assert uuid.UUID(created["id"])
    assert (created["name"], created["model"], created["public"]) == ("bot-a", MODEL, False)
    assert [f["id"] for f in emulator.finetunes()] == [created["id"]]


def test_list_and_find_by_name_and_by_id(hook: CloudflareAIHook) -> None:
    first = hook.create_finetune(MODEL, "bot-a")
    second = hook.create_finetune(MODEL, "bot-b")

    assert [f["id"] for f in hook.list_finetunes()] == [first["id"], second["id"]]
    assert hook.find_finetune("bot-b") == second
    assert hook.find_finetune(first["id"]) == first
    assert hook.find_finetune("nope") is None


@pytest.mark.parametrize("shape", ["array", "object", "nested"])
def test_list_accepts_every_documented_result_shape(hook: CloudflareAIHook, emulator: Any, shape: str) -> None:
    created = hook.create_finetune(MODEL, "bot-a")
    emulator.configure(list_shape=shape)

    assert hook.list_finetunes() == [created]


def test_sends_bearer_token_and_user_agent(hook: CloudflareAIHook) -> None:
    headers = hook.session.headers

    assert headers["Authorization"].startswith("Bearer ")
    assert "X-Auth-Key" not in headers
    assert headers["User-Agent"].startswith("airflow-provider-cfai/")
    assert "apache-airflow/" in headers["User-Agent"]


def test_legacy_email_and_key_scheme_when_no_token(emulator_with_legacy_key: Any, make_hook: Any) -> None:
    email, key = emulator_with_legacy_key
    hook = make_hook(conn_id="cfai_legacy", password="", email=email, api_key=key)

    created = hook.create_finetune(MODEL, "legacy")

    assert hook.session.headers["X-Auth-Email"] == email
    assert "Authorization" not in hook.session.headers
    assert hook.find_finetune("legacy") == created


def test_token_wins_when_both_schemes_are_configured(emulator_with_legacy_key: Any, make_hook: Any) -> None:
    email, key = emulator_with_legacy_key
    hook = make_hook(conn_id="cfai_both", email=email, api_key=key)

    assert "X-Auth-Key" not in hook.session.headers
    assert hook.list_finetunes() == []


def test_wrong_token_is_an_auth_error_naming_code_and_path(make_hook: Any) -> None:
    hook = make_hook(password="not-the-token")

    with pytest.raises(CloudflareAuthError) as caught:
        hook.list_finetunes()

    message = str(caught.value)
    assert caught.value.status == 401
    assert "[10000]" in message
    assert message.startswith("GET /accounts/")
    assert "/ai/finetunes" in message
    assert "not-the-token" not in message


def test_wrong_account_is_permanent_7003(make_hook: Any) -> None:
    hook = make_hook(login="0" * 32)

    with pytest.raises(CloudflarePermanentAPIError) as caught:
        hook.list_finetunes()

    assert caught.value.status == 404
    assert caught.value.codes == [7003]
    message = str(caught.value)
    assert message.startswith("GET /accounts/")  # what failed first, then what to fix
    assert "[7003]" in message
    assert "check the login (the account ID) of Airflow connection 'cfai_test', not the token" in message


@pytest.mark.parametrize(
    ("fields", "fix"),
    [
        pytest.param(
            {"password": "wrong-token-0123456789"},
            "refused the API token of Airflow connection 'cfai_test'; check that its password is an active token",
            id="api-token",
        ),
        pytest.param(
            {"password": "", "email": "ml-team@example.com", "api_key": "wrong-key-0123456789"},
            "refused the email and Global API key of Airflow connection 'cfai_test'; check its extras",
            id="global-api-key",
        ),
    ],
)
def test_rejected_credentials_name_the_connection_and_the_fix(
    make_hook: Any, emulator_with_legacy_key: Any, fields: dict[str, Any], fix: str
) -> None:
    with pytest.raises(CloudflareAuthError) as caught:
        make_hook(**fields).list_finetunes()

    message = str(caught.value)
    assert "HTTP 401: [10000]" in message
    assert fix in message
    assert "wrong-" not in message


def test_other_refusals_get_no_credentials_hint(hook: CloudflareAIHook) -> None:
    with pytest.raises(CloudflarePermanentAPIError) as caught:
        hook.run_model(MODEL, {"nothing": "here"})

    assert "Airflow connection" not in str(caught.value)


def test_account_id_argument_overrides_connection(hook: CloudflareAIHook) -> None:
    with pytest.raises(CloudflarePermanentAPIError) as caught:
        hook.create_finetune(MODEL, "x", account_id="f" * 32)

    assert "/accounts/" + "f" * 32 in caught.value.path


def test_unsupported_model_is_a_permanent_400(hook: CloudflareAIHook, emulator: Any) -> None:
    with pytest.raises(CloudflarePermanentAPIError) as caught:
        hook.create_finetune("@cf/meta/not-a-lora-model", "bot")

    assert caught.value.status == 400
    assert "HTTP 400" in str(caught.value)
    assert emulator.finetunes() == []


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        pytest.param({"login": ""}, "no account ID", id="no-account"),
        pytest.param({"login": "abc"}, "not 32 hexadecimal", id="short-account"),
        pytest.param({"password": ""}, "no credentials", id="no-credentials"),
        pytest.param({"host": "ftp://example.com"}, "not a valid API base URL", id="bad-scheme"),
        pytest.param({"host": "http://"}, "not a valid API base URL", id="no-hostname"),
        pytest.param({"host": "http://user:pw@example.com/client/v4"}, "must not carry credentials", id="userinfo"),
        pytest.param({"timeout": "soon"}, "'timeout' must be a positive number", id="bad-timeout"),
        pytest.param({"max_retries": -1}, "'max_retries' must be a non-negative whole number", id="negative-retries"),
    ],
)
def test_unusable_connection_fails_before_any_request(
    make_hook: Any, emulator: Any, conn: dict[str, Any], expected: str
) -> None:
    hook = make_hook(**conn)
    before = len(emulator.state()["requests"])

    with pytest.raises(CloudflareConfigError, match=expected):
        hook.list_finetunes()

    assert len(emulator.state()["requests"]) == before


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        pytest.param(lambda h: h.create_finetune("", "x"), "model must be a non-empty string", id="empty-model"),
        pytest.param(lambda h: h.create_finetune(MODEL, "  "), "name must be a non-empty string", id="blank-name"),
        pytest.param(lambda h: h.find_finetune(""), "name_or_id", id="empty-find"),
        pytest.param(lambda h: h.run_model(MODEL, "hi"), "inputs must be a mapping", id="inputs-str"),
        pytest.param(
            lambda h: h.upload_finetune_asset("id", "../etc/passwd", __file__),
            "file_name must be one of",
            id="traversal",
        ),
        pytest.param(lambda h: h.list_public_finetunes(limit=0), "limit must be >= 1", id="limit-0"),
    ],
)
def test_bad_arguments_fail_before_any_request(hook: CloudflareAIHook, emulator: Any, call: Any, expected: str) -> None:
    with pytest.raises(CloudflareInputError, match=expected):
        call(hook)

    assert emulator.state()["requests"] == []


def test_connection_secrets_stay_out_of_repr(hook: CloudflareAIHook, emulator: Any) -> None:
    assert emulator.token not in repr(hook.settings)
    assert repr(hook) == "CloudflareAIHook(cloudflare_conn_id='cfai_test')"


def test_test_connection_reports_success_without_secret(hook: CloudflareAIHook, emulator: Any) -> None:
    ok, message = hook.test_connection()

    assert ok, message
    assert "API token active" in message
    assert emulator.token not in message


def test_test_connection_never_raises_on_bad_token(make_hook: Any) -> None:
    hook = make_hook(password="wrong-token-123")

    ok, message = hook.test_connection()

    assert not ok
    assert "verifying the API token" in message
    assert "wrong-token-123" not in message


def test_test_connection_reports_config_problems(make_hook: Any) -> None:
    ok, message = make_hook(login="").test_connection()

    assert not ok
    assert "no account ID" in message


def test_exception_survives_pickling_with_all_fields() -> None:
    import pickle

    error = CloudflarePermanentAPIError("POST", "/accounts/a/ai/finetunes", 400, [{"code": 1, "message": "bad"}])

    clone = pickle.loads(pickle.dumps(error))

    assert type(clone) is CloudflarePermanentAPIError
    assert str(clone) == str(error) == "POST /accounts/a/ai/finetunes failed with HTTP 400: [1] bad"


def test_error_json_is_not_required_on_success(hook: CloudflareAIHook, emulator: Any) -> None:
    rule = emulator.add_fault(
        method="GET", path=r".*/ai/finetunes/?$", times=1, status=200, body={"result": [], "success": True}
    )

    assert hook.list_finetunes() == []
    assert emulator.fired(rule) == 1


def test_api_error_message_lists_every_error(hook: CloudflareAIHook, emulator: Any) -> None:
    body = {
        "success": False,
        "errors": [{"code": 1001, "message": "first"}, {"code": 1002, "message": "second", "extra": 1}],
        "messages": [],
        "result": None,
    }
    rule = emulator.add_fault(method="GET", path=r".*/ai/finetunes/?$", times=1, status=400, body=body)

    with pytest.raises(CloudflareAPIError) as caught:
        hook.list_finetunes()

    assert emulator.fired(rule) == 1
    assert str(caught.value).endswith("failed with HTTP 400: [1001] first; [1002] second")
    assert caught.value.errors == body["errors"]  # every item, unknown keys included


def test_context_and_hints_add_up_instead_of_replacing_each_other() -> None:
    error = CloudflarePermanentAPIError("GET", "/accounts/a/ai/finetunes", 404, [{"code": 7003, "message": "route"}])

    layered = error.with_hint("check the login").with_context("item 3").with_context("batch b")

    assert (
        str(layered)
        == "batch b: item 3: GET /accounts/a/ai/finetunes failed with HTTP 404: [7003] route (check the login)"
    )
    assert type(layered) is CloudflarePermanentAPIError


# -- guards that had no test of their own: each test fails with its guard removed --------------------


def test_find_finetune_returns_the_oldest_of_repeated_names(hook: CloudflareAIHook, emulator: Any) -> None:
    first = hook.create_finetune(MODEL, "twin")
    hook.create_finetune(MODEL, "twin")

    assert hook.find_finetune("twin") == first
    assert len(emulator.finetunes()) == 2


def test_a_user_token_is_verified_on_the_user_endpoint(hook: CloudflareAIHook, emulator: Any) -> None:
    emulator.configure(token_kind="user")

    assert hook.verify_token()["status"] == "active"
    paths = [r["path"] for r in emulator.state()["requests"]]
    assert paths[-1] == "/user/tokens/verify"
    assert paths[-2].endswith("/tokens/verify")
    assert paths[-2].startswith("/accounts/")


def test_when_both_verify_endpoints_refuse_the_account_endpoints_error_is_raised(make_hook: Any, emulator: Any) -> None:
    rule = emulator.add_fault(path=r"/user/tokens/verify$", status=400, times=1)

    with pytest.raises(CloudflareAuthError) as caught:
        make_hook(password="wrong-token-0123456789").verify_token()

    assert caught.value.path.startswith("/accounts/")
    assert emulator.fired(rule) == 1


def test_verify_token_needs_a_token_and_sends_nothing(
    make_hook: Any, emulator: Any, emulator_with_legacy_key: Any
) -> None:
    email, key = emulator_with_legacy_key
    hook = make_hook(password="", email=email, api_key=key)

    with pytest.raises(CloudflareConfigError, match="needs an API token"):
        hook.verify_token()

    ok, message = hook.test_connection()
    assert ok, message
    assert "email + Global API key" in message
    assert not any(r["path"].endswith("/tokens/verify") for r in emulator.state()["requests"])


def test_test_connection_fails_for_a_disabled_token(hook: CloudflareAIHook, emulator: Any) -> None:
    emulator.configure(token_status="disabled")

    ok, message = hook.test_connection()

    assert not ok
    assert "'disabled', not 'active'" in message


def test_an_error_page_is_summarised_in_bounded_words(make_hook: Any, emulator: Any) -> None:
    hook = make_hook(max_retries=0)
    rule = emulator.add_fault(path=r"/ai/finetunes$", status=502, body="<p>" + "overloaded " * 2000 + "</p>", html=True)

    with pytest.raises(CloudflareAPIError) as caught:
        hook.list_finetunes()

    assert emulator.fired(rule) == 1
    assert "non-JSON text/html body: overloaded overloaded" in str(caught.value)
    assert len(str(caught.value)) < 400


def test_unexpected_json_is_quoted_in_bounded_words(make_hook: Any, emulator: Any) -> None:
    hook = make_hook(max_retries=0)
    rule = emulator.add_fault(path=r"/ai/finetunes$", status=502, body=list(range(5000)))

    with pytest.raises(CloudflareAPIError) as caught:
        hook.list_finetunes()

    assert emulator.fired(rule) == 1
    assert "unexpected JSON body: [0, 1, 2" in str(caught.value)
    assert len(str(caught.value)) < 400


def test_an_errors_field_that_is_not_a_list_is_tolerated(hook: CloudflareAIHook, emulator: Any) -> None:
    body = {"success": False, "errors": "quota exceeded", "messages": [], "result": None}
    rule = emulator.add_fault(path=r"/ai/finetunes$", status=400, body=body)

    with pytest.raises(CloudflarePermanentAPIError, match="HTTP 400: no error details") as caught:
        hook.list_finetunes()

    assert caught.value.errors == []
    assert emulator.fired(rule) == 1


def test_a_create_answered_as_a_one_object_list_returns_the_object(hook: CloudflareAIHook, emulator: Any) -> None:
    finetune = {"id": "ft-1", "name": "bot", "model": MODEL}
    emulator.add_fault(path=r"/ai/finetunes$", method="POST", status=200, body={"success": True, "result": [finetune]})

    assert hook.create_finetune(MODEL, "bot") == finetune


@pytest.mark.parametrize(
    ("error", "sent"),
    [
        pytest.param(lambda r, u: r.exceptions.ConnectTimeout(), False, id="connect-timeout"),
        pytest.param(
            lambda r, u: r.exceptions.ConnectionError(
                u.exceptions.MaxRetryError(None, "/", u.exceptions.NewConnectionError(None, "refused"))
            ),  # type: ignore[arg-type]
            False,
            id="refused",
        ),
        pytest.param(lambda r, u: r.exceptions.ConnectionError(u.exceptions.ProtocolError("reset")), True, id="reset"),
        pytest.param(lambda r, u: r.exceptions.ReadTimeout(), True, id="read-timeout"),
        pytest.param(lambda r, u: r.exceptions.ChunkedEncodingError(), True, id="broken-body"),
    ],
)
def test_only_a_connection_never_made_counts_as_nothing_sent(error: Any, sent: bool) -> None:
    import requests
    import urllib3

    from airflow_provider_cfai.hooks._transport import may_have_been_sent

    assert may_have_been_sent(error(requests, urllib3)) is sent


def test_transport_errors_name_the_server_by_class_names_only() -> None:
    import requests

    from airflow_provider_cfai.hooks._transport import describe_transport_error

    proxy_error = requests.exceptions.ProxyError("Cannot connect to proxy http://u:pa55word@proxy:3128")

    described = describe_transport_error(proxy_error, 10.0, "http://[::1]:8787/client/v4")

    assert described == "connection error talking to http://[::1]:8787 (ProxyError)"
