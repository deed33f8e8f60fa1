"""Reading the Airflow connection: base URL forms, missing connections, extras, error messages."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cfai.exceptions import AirflowFailException, CloudflareAPIError, CloudflareConfigError
from airflow_provider_cfai.hooks._connection import _base_url
from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize(
    ("host", "port", "schema", "expected"),
    [
        pytest.param(None, None, None, "https://api.cloudflare.com/client/v4", id="default"),
        pytest.param("api.cloudflare.com", None, None, "https://api.cloudflare.com/client/v4", id="bare-host"),
        pytest.param("api.cloudflare.com", None, "client/v4", "https://api.cloudflare.com/client/v4", id="bare+schema"),
        pytest.param("http://127.0.0.1", 18787, "client/v4", "http://127.0.0.1:18787/client/v4", id="uri-form"),
        pytest.param("127.0.0.1", 18787, "client/v4", "https://127.0.0.1:18787/client/v4", id="bare+port"),
        pytest.param(
            "http://127.0.0.1:8787/client/v4", None, None, "http://127.0.0.1:8787/client/v4", id="full-url-in-host"
        ),
        pytest.param(
            "http://127.0.0.1:8787/client/v4", 8787, "client/v4", "http://127.0.0.1:8787/client/v4", id="agreeing"
        ),
        pytest.param("http://[::1]", 8787, None, "http://[::1]:8787/client/v4", id="ipv6"),
    ],
)
def test_base_url_uses_host_port_and_schema_alike(
    host: str | None, port: int | None, schema: str | None, expected: str
) -> None:
    assert _base_url("c", host, port, schema) == expected


@pytest.mark.parametrize(
    ("host", "port", "schema", "expected"),
    [
        pytest.param("http://127.0.0.1:8787", 9999, None, "names port 8787 but the port field says 9999", id="ports"),
        pytest.param("http://h/client/v4", None, "other/v9", "names path /client/v4 but the schema", id="paths"),
        pytest.param("", 8787, None, "host is empty", id="port-without-host"),
        pytest.param("http//127.0.0.1:1/x", None, None, "not a valid API base URL", id="typo-scheme"),
        pytest.param("https://h/client/v4?x=1", None, None, "not a valid API base URL", id="query"),
    ],
)
def test_base_url_refuses_contradictions(host: str, port: int | None, schema: str | None, expected: str) -> None:
    with pytest.raises(CloudflareConfigError, match=re.escape(expected)):
        _base_url("c", host, port, schema)


def _readme_examples() -> list[tuple[str, str]]:
    """Every ``export AIRFLOW_CONN_...='...'`` example the README marks with ``<!-- conn-example:KIND -->``."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- conn-example:(\w+) -->\s*```console\s*\n(.*?)```", text, re.DOTALL)
    examples = []
    for kind, block in blocks:
        export = re.search(r"export AIRFLOW_CONN_\w+='([^']+)'", block)
        assert export, f"a {kind} example is not an `export AIRFLOW_CONN_...='...'` line"
        examples.append((kind, export.group(1)))
    return examples


README_EXAMPLES = _readme_examples()


def test_readme_shows_uri_and_json_for_cloudflare_and_the_emulator() -> None:
    kinds = sorted((kind, "127.0.0.1:8787" in value) for kind, value in README_EXAMPLES)

    assert kinds == [("json", False), ("json", True), ("uri", False), ("uri", True)]


@pytest.mark.parametrize(
    ("kind", "value"), README_EXAMPLES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(README_EXAMPLES)]
)
def test_readme_connection_examples_parse_and_reach_their_server(
    kind: str, value: str, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostport = emulator.base_url.split("//", 1)[1].split("/", 1)[0]
    local = "127.0.0.1:8787" in value
    filled = (
        value.replace("<account id>", emulator.account_id)
        .replace("<api token>", emulator.token)
        .replace("<url-encoded token>", emulator.token)
        .replace("<token>", emulator.token)
        .replace("127.0.0.1:8787", hostport)
    )
    assert "<" not in filled, f"unfilled placeholder in the README's {kind} example: {value}"
    monkeypatch.setenv("AIRFLOW_CONN_README_EXAMPLE", filled)
    before = len(emulator.state()["requests"])

    hook = CloudflareAIHook(cloudflare_conn_id="readme_example")

    assert (hook.settings.account_id, hook.settings.token) == (emulator.account_id, emulator.token)
    if not local:
        assert hook.settings.base_url == "https://api.cloudflare.com/client/v4"
        return
    assert hook.settings.base_url == emulator.base_url
    assert hook.list_finetunes() == []
    assert len(emulator.state()["requests"]) == before + 1


def test_uri_with_scheme_in_host_keeps_port_and_path(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    hostport = emulator.base_url.split("//", 1)[1].split("/", 1)[0]
    uri = f"cloudflare-ai://http://{emulator.account_id}:{emulator.token}@{hostport}/client/v4"
    monkeypatch.setenv("AIRFLOW_CONN_URI_FORM", uri)

    hook = CloudflareAIHook(cloudflare_conn_id="uri_form")

    assert hook.list_finetunes() == []
    assert hook.settings.base_url == emulator.base_url


def test_connection_error_names_where_it_tried(make_hook: Any, emulator: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hook = make_hook(max_retries=0, host=f"http://127.0.0.1:{port}/client/v4")

    with pytest.raises(CloudflareAPIError) as caught:
        hook.list_finetunes()

    message = str(caught.value)
    assert f"http://127.0.0.1:{port}" in message
    assert emulator.token not in message
    assert "client/v4" not in message.split("failed", 1)[1]  # the origin only, not the full URL


def test_missing_connection_fails_permanently_naming_it(emulator: Any) -> None:
    hook = CloudflareAIHook(cloudflare_conn_id="cloudflare_ai_typo")

    with pytest.raises(CloudflareConfigError) as caught:
        hook.list_finetunes()

    assert isinstance(caught.value, AirflowFailException)
    assert "'cloudflare_ai_typo' does not exist" in str(caught.value)
    assert "airflow connections add cloudflare_ai_typo" in str(caught.value)
    assert "AIRFLOW_CONN_CLOUDFLARE_AI_TYPO" in str(caught.value)


@pytest.mark.parametrize(
    ("extra", "value", "wording"),
    [
        pytest.param("max_retries", "nan", "a non-negative whole number", id="retries-nan"),
        pytest.param("max_retries", "inf", "a non-negative whole number", id="retries-inf"),
        pytest.param("max_retries", 2.5, "a non-negative whole number", id="retries-fraction"),
        pytest.param("max_retries", True, "a non-negative whole number", id="retries-bool"),
        pytest.param("retry_budget", "nan", "a non-negative number", id="budget-nan"),
        pytest.param("retry_budget", "-inf", "a non-negative number", id="budget-minus-inf"),
        pytest.param("timeout", "nan", "a positive number", id="timeout-nan"),
        pytest.param("timeout", "inf", "a positive number", id="timeout-inf"),
        pytest.param("timeout", 0, "a positive number", id="timeout-zero"),
    ],
)
def test_non_finite_extras_are_config_errors(
    make_hook: Any, emulator: Any, extra: str, value: Any, wording: str
) -> None:
    hook = make_hook(**{extra: value})
    before = len(emulator.state()["requests"])

    with pytest.raises(CloudflareConfigError, match=f"extra '{extra}' must be {wording}"):
        hook.list_finetunes()

    assert len(emulator.state()["requests"]) == before


def test_zero_retries_and_zero_budget_are_allowed(make_hook: Any) -> None:
    hook = make_hook(max_retries=0, retry_budget=0)

    assert hook.list_finetunes() == []
    assert (hook.settings.max_retries, hook.settings.retry_budget) == (0, 0.0)


@pytest.mark.parametrize("lora", [12345, {"id": "x"}, "", "   ", ["a"]], ids=repr)
def test_run_model_refuses_a_lora_that_is_not_a_name(hook: CloudflareAIHook, emulator: Any, lora: Any) -> None:
    before = len(emulator.state()["requests"])

    with pytest.raises(AirflowFailException, match="lora must be a finetune ID or name"):
        hook.run_model("@cf/mistral/mistral-7b-instruct-v0.2-lora", {"prompt": "hi"}, lora=lora)

    assert len(emulator.state()["requests"]) == before


def test_run_model_refuses_a_bad_lora_inside_inputs(hook: CloudflareAIHook, emulator: Any) -> None:
    with pytest.raises(AirflowFailException, match="lora must be a finetune ID or name"):
        hook.run_model("@cf/mistral/mistral-7b-instruct-v0.2-lora", {"prompt": "hi", "lora": 7})


def test_test_connection_blames_the_account_id_for_7003(make_hook: Any, emulator: Any) -> None:
    ok, message = make_hook(login="f" * 32).test_connection()

    assert not ok
    assert message.startswith("Failed while verifying the API token: ")
    assert "check the login (the account ID) of Airflow connection 'cfai_test', not the token" in message
    assert "[7003]" in message
    assert emulator.token not in message


def test_repr_names_the_connection_not_the_secret(hook: CloudflareAIHook, emulator: Any) -> None:
    hook.list_finetunes()  # settings (and the token) are loaded

    assert repr(hook) == "CloudflareAIHook(cloudflare_conn_id='cfai_test')"
    assert emulator.token not in repr(hook) + json.dumps(hook.__dict__, default=repr)


# -- secrets reach Airflow's masker the moment they are read -------------------------------------------


@pytest.fixture
def masked(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What the connection reader gave Airflow's ``mask_secret`` (the real one still runs)."""
    import airflow.sdk.log

    given: list[Any] = []
    real = airflow.sdk.log.mask_secret

    def record(secret: Any, name: str | None = None) -> None:
        given.append(secret)
        real(secret, name)

    monkeypatch.setattr(airflow.sdk.log, "mask_secret", record)
    return given


def _read(password: str | None, **extra: Any) -> Any:
    from airflow.sdk import Connection

    from airflow_provider_cfai.hooks._connection import read_settings

    conn = Connection(
        conn_id="cfai_mask", conn_type="cloudflare_ai", login="0" * 32, password=password, extra=json.dumps(extra)
    )
    return read_settings(conn, "cfai_mask", "cloudflare_ai", {})


@pytest.mark.parametrize(
    ("password", "extra", "secrets"),
    [
        pytest.param("api-token-0123456789abcdef", {}, ["api-token-0123456789abcdef"], id="api-token"),
        pytest.param(
            None,
            {"email": "ops@example.com", "api_key": "global-key-0123456789"},
            ["global-key-0123456789", "ops@example.com"],
            id="global-api-key-and-email",
        ),
        pytest.param(
            "api-token-0123456789abcdef",
            {"proxies": {"https": "http://proxy-user:proxy-pa55word@proxy.internal:3128"}},
            ["http://proxy-user:proxy-pa55word@proxy.internal:3128", "proxy-pa55word"],
            id="proxy-credentials",
        ),
        pytest.param(
            "api-token-0123456789abcdef",
            {"redis_url": "redis://:redis-pa55word@redis.internal:6379/0"},
            ["redis-pa55word"],
            id="redis-password",
        ),
    ],
)
def test_secrets_are_given_to_airflows_masker_when_read(
    masked: list[Any], password: str | None, extra: dict[str, Any], secrets: list[str]
) -> None:
    _read(password, **extra)

    for secret in secrets:
        assert secret in masked


def test_airflows_masker_then_redacts_the_proxy_password_in_a_message(masked: list[Any]) -> None:
    from airflow.sdk import log as sdk_log

    masker = getattr(sdk_log, "_secrets_masker", None)
    if masker is None:  # pragma: no cover - Airflow 3.1 keeps the masker elsewhere; the table above still checks
        pytest.skip("this Airflow has no airflow.sdk.log._secrets_masker")
    import uuid

    password = f"pw{uuid.uuid4().hex}"  # the masker is process-wide: a secret no other test masked
    _read("api-token-0123456789abcdef", proxies={"https": f"http://u:{password}@proxy.internal:3128"})

    assert masker().redact(f"proxy refused: {password}.") == "proxy refused: ***."
    assert password in masked
