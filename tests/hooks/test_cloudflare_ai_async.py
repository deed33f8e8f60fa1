"""CloudflareAIAsyncHook: one API call over httpx, driven by the shared retry policy and loop."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from connections import settings_for

from airflow_provider_cfai.exceptions import CloudflareAPIError, CloudflareAuthError, CloudflarePermanentAPIError
from airflow_provider_cfai.hooks._connection import ConnectionSettings
from airflow_provider_cfai.hooks.cloudflare_ai_async import CloudflareAIAsyncHook
from airflow_provider_cfai.policy import AttemptFailed

if TYPE_CHECKING:
    from airflow_provider_cfai.testing import RunningEmulator

MODEL = "@cf/meta/llama-3.1-8b-instruct"
RUN = r"/ai/run/"


class FakeSleep:
    """Records the waits tenacity asks for instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def call(settings: ConnectionSettings, inputs: dict[str, Any], sleep: FakeSleep | None = None) -> Any:
    async def main() -> Any:
        async with CloudflareAIAsyncHook(settings=settings, sleep=sleep) as client:
            return await client.run_model(MODEL, inputs)

    return asyncio.run(main())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_call_returns_the_envelopes_result(emulator: RunningEmulator) -> None:
    result = call(settings_for(emulator), {"prompt": "hello"})

    assert result["response"] == f"[{MODEL}] hello"


def test_a_5xx_is_retried_with_backoff_until_it_passes(emulator: RunningEmulator) -> None:
    rule = emulator.add_fault(method="POST", path=RUN, status=503, times=2)
    sleep = FakeSleep()

    result = call(settings_for(emulator), {"prompt": "hello"}, sleep)

    assert emulator.fired(rule) == 2
    assert result["response"].endswith("hello")
    assert [int(w * 2) / 2 for w in sleep.waits] == [0.5, 1.0]  # backoff plus < 0.5 s jitter


def test_the_policy_gives_up_after_max_retries(emulator: RunningEmulator) -> None:
    rule = emulator.add_fault(method="POST", path=RUN, status=502, times=10)

    with pytest.raises(CloudflareAPIError) as raised:
        call(settings_for(emulator, max_retries=2), {"prompt": "hello"}, FakeSleep())

    assert emulator.fired(rule) == 3
    assert raised.value.status == 502


def test_a_4xx_fails_at_once(emulator: RunningEmulator) -> None:
    with pytest.raises(CloudflarePermanentAPIError) as raised:
        call(settings_for(emulator), {"nothing": "here"}, FakeSleep())

    assert raised.value.status == 400
    assert raised.value.codes == [5006]
    assert emulator.state()["counters"]["POST /accounts/{account_id}/ai/run/{model:path}"] == 1


def test_a_429_waits_exactly_its_retry_after(emulator: RunningEmulator) -> None:
    rule = emulator.add_fault(method="POST", path=RUN, status=429, headers={"Retry-After": "7"})
    sleep = FakeSleep()

    call(settings_for(emulator), {"prompt": "hello"}, sleep)

    assert emulator.fired(rule) == 1
    assert sleep.waits == [7.0]


def test_a_retry_after_beyond_the_budget_stops_the_call_at_once(emulator: RunningEmulator) -> None:
    rule = emulator.add_fault(method="POST", path=RUN, status=429, headers={"Retry-After": "300"}, times=3)
    sleep = FakeSleep()

    with pytest.raises(CloudflareAPIError) as raised:
        call(settings_for(emulator, retry_budget=20.0), {"prompt": "hello"}, sleep)

    assert emulator.fired(rule) == 1
    assert sleep.waits == []
    assert raised.value.status == 429


def test_rejected_credentials_are_an_auth_error(emulator: RunningEmulator) -> None:
    with pytest.raises(CloudflareAuthError):
        call(settings_for(emulator, token="wrong-token-0123456789"), {"prompt": "hello"}, FakeSleep())


def test_a_dropped_connection_is_retried(emulator: RunningEmulator) -> None:
    rule = emulator.add_fault(method="POST", path=RUN, action="drop")

    result = call(settings_for(emulator), {"prompt": "hello"}, FakeSleep())

    assert emulator.fired(rule) == 1
    assert result["response"].endswith("hello")


def test_a_refused_connection_names_the_server_only_and_sent_nothing(emulator: RunningEmulator) -> None:
    port = closed_port()
    settings = settings_for(emulator, base_url=f"http://127.0.0.1:{port}/client/v4", max_retries=0)

    async def attempt() -> AttemptFailed:
        async with CloudflareAIAsyncHook(settings=settings) as client:
            with pytest.raises(AttemptFailed) as raised:
                await client._send("POST", client.run_path(MODEL), json={"prompt": "x"}, params={"a": "secret"})
            return raised.value

    failed = asyncio.run(attempt())

    assert failed.outcome_unknown is False
    assert failed.error.status is None
    assert f"could not connect to http://127.0.0.1:{port}" in str(failed.error)
    assert "secret" not in str(failed.error)
    assert emulator.token not in str(failed.error)


def test_a_read_timeout_leaves_the_outcome_unknown(emulator: RunningEmulator) -> None:
    rule = emulator.add_fault(method="POST", path=RUN, action="delay_after_commit", delay=2.0)
    settings = settings_for(emulator, timeout=0.5)

    async def attempt() -> AttemptFailed:
        async with CloudflareAIAsyncHook(settings=settings) as client:
            with pytest.raises(AttemptFailed) as raised:
                await client._send("POST", client.run_path(MODEL), json={"prompt": "x"}, params=None)
            return raised.value

    failed = asyncio.run(attempt())

    assert emulator.fired(rule) == 1
    assert failed.outcome_unknown is True
    assert "read timeout" in str(failed.error)


def test_poll_batch_answers_a_pending_requests_status(emulator: RunningEmulator) -> None:
    import requests

    emulator.configure(queue_delay=3600)
    model = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
    submitted = requests.post(
        f"{emulator.base_url}/accounts/{emulator.account_id}/ai/run/{model}?queueRequest=true",
        json={"requests": [{"prompt": "hi"}]},
        headers={"Authorization": f"Bearer {emulator.token}"},
        timeout=10,
    ).json()["result"]

    async def main() -> dict[str, Any]:
        async with CloudflareAIAsyncHook(settings=settings_for(emulator)) as client:
            return await client.poll_batch(model, submitted["request_id"])

    result = asyncio.run(main())

    assert result == {"status": "queued", "request_id": submitted["request_id"], "model": model}


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"html": True}, id="html-page"),
        pytest.param({"body": {"success": True, "errors": [], "result": ["not", "an", "object"]}}, id="not-an-object"),
        pytest.param({"body": {"success": True, "errors": [], "result": {"model": "m"}}}, id="no-status-no-responses"),
    ],
)
def test_a_malformed_poll_answer_gets_the_same_class_from_both_hooks(
    emulator: RunningEmulator, make_hook: Any, answer: dict[str, Any]
) -> None:
    model = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
    poll = {"path": RUN, "method": "POST", "request_body": '"request_id"', "status": 200, "times": 2, **answer}
    settings = settings_for(emulator, max_retries=1)

    async def poll_async() -> Any:
        async with CloudflareAIAsyncHook(settings=settings, sleep=FakeSleep()) as client:
            return await client.poll_batch(model, "rq-1")

    hook = make_hook(max_retries=1)
    hook._sleep = lambda seconds: None
    sync_rule = emulator.add_fault(**poll)
    with pytest.raises(CloudflareAPIError) as from_sync:
        hook.poll_batch(model, "rq-1")
    async_rule = emulator.add_fault(**poll)
    with pytest.raises(CloudflareAPIError) as from_async:
        asyncio.run(poll_async())

    assert type(from_sync.value) is type(from_async.value) is CloudflareAPIError  # retried, Airflow may retry
    assert str(from_sync.value) == str(from_async.value)
    assert (emulator.fired(sync_rule), emulator.fired(async_rule)) == (2, 2)


# -- the connection, as the trigger reads it ----------------------------------------------------------


def test_the_hook_reads_its_airflow_connection_on_entry(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connections import connection_json

    monkeypatch.setenv("AIRFLOW_CONN_CFAI_ASYNC", connection_json(emulator, max_retries=0))

    async def main() -> Any:
        async with CloudflareAIAsyncHook("cfai_async") as hook:
            assert hook.settings.max_retries == 0
            return await hook.run_model(MODEL, {"prompt": "hello"})

    assert asyncio.run(main())["response"].endswith("hello")
    assert repr(CloudflareAIAsyncHook("cfai_async")) == "CloudflareAIAsyncHook(cloudflare_conn_id='cfai_async')"


def test_a_missing_connection_fails_permanently_naming_it(emulator: RunningEmulator) -> None:
    from airflow_provider_cfai.exceptions import CloudflareConfigError

    async def main() -> None:
        async with CloudflareAIAsyncHook("cfai_no_such_connection"):
            pass

    with pytest.raises(CloudflareConfigError, match="'cfai_no_such_connection' does not exist"):
        asyncio.run(main())


def test_settings_are_not_read_by_surprise_outside_async_with() -> None:
    with pytest.raises(RuntimeError, match="inside `async with`"):
        CloudflareAIAsyncHook("cfai_async").run_path(MODEL)


def test_a_wrong_account_names_the_connection_and_the_fix(emulator: RunningEmulator) -> None:
    settings = settings_for(emulator, account_id="0" * 32)

    async def main() -> None:
        async with CloudflareAIAsyncHook("cfai_batch", settings=settings, sleep=FakeSleep()) as hook:
            await hook.run_model(MODEL, {"prompt": "x"})

    with pytest.raises(CloudflarePermanentAPIError) as caught:
        asyncio.run(main())

    assert "[7003]" in str(caught.value)
    assert "check the login (the account ID) of Airflow connection 'cfai_batch'" in str(caught.value)


def test_proxies_and_a_ca_bundle_reach_the_httpx_client(emulator: RunningEmulator, tmp_path: Any) -> None:
    import certifi

    one_ca = tmp_path / "ca.pem"
    bundle = Path(certifi.where()).read_text()
    one_ca.write_text(bundle[: bundle.index("-----END CERTIFICATE-----") + 26])
    proxies = {"https": "http://proxy.internal:3128", "all://example.org": "http://p:1"}
    settings = settings_for(emulator, proxies=proxies, verify=str(one_ca))

    async def main() -> Any:
        async with CloudflareAIAsyncHook(settings=settings) as hook:
            return hook.http

    http = asyncio.run(main())

    assert {str(pattern.pattern) for pattern in http._mounts} == {"https://", "all://example.org"}
    assert http._transport._pool._ssl_context.cert_store_stats()["x509_ca"] == 1  # only the given CA


def test_verify_false_switches_certificate_checks_off(emulator: RunningEmulator) -> None:
    import ssl

    async def main() -> Any:
        async with CloudflareAIAsyncHook(settings=settings_for(emulator, verify=False)) as hook:
            return hook.http

    assert asyncio.run(main())._transport._pool._ssl_context.verify_mode == ssl.CERT_NONE


def test_an_account_id_argument_replaces_the_connections(emulator: RunningEmulator) -> None:
    other = "f" * 32

    async def main() -> str:
        async with CloudflareAIAsyncHook(settings=settings_for(emulator), account_id=other.upper()) as hook:
            return hook.run_path(MODEL)

    assert asyncio.run(main()) == f"/accounts/{other}/ai/run/{MODEL}"


def test_transport_errors_are_described_by_class_name_only(emulator: RunningEmulator) -> None:
    import httpx

    hook = CloudflareAIAsyncHook(settings=settings_for(emulator))
    quoted = "proxy http://user:pa55word@proxy.internal:3128 refused"

    for error in (httpx.ConnectError(quoted), httpx.ReadError(quoted), httpx.ProxyError(quoted)):
        described = hook._describe(error)
        assert "pa55word" not in described
        assert type(error).__name__ in described
