"""The opt-in Redis limiter: one state for every host, the fallback when Redis is away, the extras."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from typing import Any

import pytest

from airflow_provider_cfai.exceptions import CloudflareConfigError
from airflow_provider_cfai.hooks._pacing import gate_for, gate_for_settings
from airflow_provider_cfai.hooks._pacing_gate import RateLimitGate, Ticket
from airflow_provider_cfai.hooks._pacing_redis import RedisGate, RedisStore

POLICY = {"Ratelimit": '"default";r=3;t=60', "Ratelimit-Policy": '"default";q=4;w=60'}


def other_host(gate: RateLimitGate, name: str) -> RateLimitGate:
    gate.holder = gate.holder.replace(socket.gethostname(), name, 1)  # as if it ran elsewhere
    return gate


def test_hosts_sharing_redis_spend_one_budget(redis_url: str) -> None:
    first = other_host(RateLimitGate(RedisStore(redis_url, "digest")), "host-a")
    second = other_host(RateLimitGate(RedisStore(redis_url, "digest")), "host-b")
    first.release(first.acquire(), POLICY)

    sent = {"a": 1, "b": 0}
    while sent["a"] < 3 and isinstance(first.try_acquire(), Ticket):
        sent["a"] += 1
    while isinstance(second.try_acquire(), Ticket):
        sent["b"] += 1

    assert sent == {"a": 3, "b": 1}  # a limit of 4, whoever asks: no share is set aside per host


def test_the_redis_state_is_the_policy_state_under_the_token_digest(redis_url: str) -> None:
    import redis

    gate = RateLimitGate(RedisStore(redis_url, "digest"))
    gate.release(gate.acquire(), POLICY)

    raw = redis.Redis.from_url(redis_url).get("airflow-provider-cfai:ratelimit:digest")
    assert raw is not None
    state = json.loads(raw)
    assert (state["limit"], state["period"], state["spent"][0][1]) == (4, 60.0, 1)
    assert redis.Redis.from_url(redis_url).pttl("airflow-provider-cfai:ratelimit:digest") > 0


def test_unreachable_redis_falls_back_to_the_host_state_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    url = f"redis://:s3cret-pass@127.0.0.1:{port}/0"
    gate = gate_for("digest", sharers=2, redis_url=url)
    assert isinstance(gate, RedisGate)

    with caplog.at_level(logging.WARNING):
        ticket = gate.acquire()
        gate.release(ticket, POLICY)
        again = gate.acquire()

    assert ticket.gate is gate.fallback
    assert again.gate is gate.fallback  # Redis is not retried on every call
    assert gate.fallback.sharers == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"Redis at redis://127.0.0.1:{port}/0" in warnings[0].getMessage()
    assert "s3cret-pass" not in caplog.text


def test_a_hook_paces_through_redis_when_configured(make_hook: Any, emulator: Any, redis_url: str) -> None:
    import redis

    hook = make_hook(redis_url=redis_url)
    hook.list_finetunes()
    hook.list_finetunes()

    keys = redis.Redis.from_url(redis_url).keys("airflow-provider-cfai:ratelimit:*")
    assert [k.decode() for k in keys] == [f"airflow-provider-cfai:ratelimit:{hook.settings.credential_digest}"]
    assert isinstance(hook._gate, RedisGate)


def test_redis_conn_id_names_an_airflow_redis_connection(
    make_hook: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    conn = {"conn_type": "redis", "host": "127.0.0.1", "port": int(port), "password": "pw", "extra": {"db": 3}}
    monkeypatch.setenv("AIRFLOW_CONN_RATE_REDIS", json.dumps(conn))
    hook = make_hook(redis_conn_id="rate_redis")

    gate = gate_for_settings(hook.settings)

    assert isinstance(gate, RedisGate)
    assert isinstance(gate.primary.store, RedisStore)
    assert gate.primary.store.url == f"redis://:pw@127.0.0.1:{port}/3"


@pytest.mark.parametrize(
    ("extras", "message"),
    [
        pytest.param({"rate_limit_sharers": 0}, "'rate_limit_sharers' must be a whole number of at least 1", id="zero"),
        pytest.param({"rate_limit_sharers": -2}, "'rate_limit_sharers' must be a whole number", id="negative"),
        pytest.param({"rate_limit_sharers": "nan"}, "'rate_limit_sharers' must be a whole number", id="nan"),
        pytest.param({"rate_limit_sharers": "inf"}, "'rate_limit_sharers' must be a whole number", id="inf"),
        pytest.param({"rate_limit_sharers": 2.5}, "'rate_limit_sharers' must be a whole number", id="fraction"),
        pytest.param({"rate_limit_sharers": True}, "'rate_limit_sharers' must be a whole number", id="bool"),
        pytest.param({"redis_url": "http://x"}, "'redis_url' must look like redis://", id="not-redis"),
        pytest.param({"redis_url": "redis://h", "redis_conn_id": "r"}, "one of the extras 'redis_url'", id="both"),
    ],
)
def test_bad_pacing_extras_are_config_errors(make_hook: Any, extras: dict[str, Any], message: str) -> None:
    hook = make_hook(**extras)

    with pytest.raises(CloudflareConfigError, match=message):
        hook.settings  # noqa: B018


def test_pacing_extras_reach_the_settings(make_hook: Any) -> None:
    settings = make_hook(rate_limit_sharers="3", redis_url="redis://:pw@h:1/0").settings

    assert (settings.rate_limit_sharers, settings.redis_url, settings.redis_conn_id) == (3, "redis://:pw@h:1/0", None)
    assert "pw" not in repr(settings)


def test_redis_is_imported_only_when_configured() -> None:
    code = (
        "import sys\n"
        "from airflow_provider_cfai.hooks import cloudflare_ai, _pacing\n"
        "gate = _pacing.gate_for('0' * 64)\n"
        "gate.release(gate.acquire(), None)\n"
        "print('redis' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("extra", [{"redis_url": "redis://127.0.0.1:1/0"}, {"redis_conn_id": "rate_redis"}])
def test_redis_without_redis_py_is_a_config_error_naming_the_extra_to_install(
    make_hook: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch, extra: dict[str, str]
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # what `import redis` does where redis-py is missing
    hook = make_hook(conn_id="cfai_needs_redis", **extra)

    with pytest.raises(CloudflareConfigError) as raised:
        hook.list_finetunes()

    assert "'cfai_needs_redis'" in str(raised.value)
    assert "pip install 'airflow-provider-cfai[redis]'" in str(raised.value)
    assert emulator.state()["requests"] == []  # failed before any API call


def test_a_redis_conn_id_that_does_not_exist_names_the_cloudflare_connection_and_the_fix(make_hook: Any) -> None:
    hook = make_hook(conn_id="cfai_with_redis", redis_conn_id="no_such_redis")

    with pytest.raises(CloudflareConfigError) as raised:
        hook.list_finetunes()

    message = str(raised.value)
    assert "Connection 'cfai_with_redis' sets extra 'redis_conn_id' to 'no_such_redis'" in message
    assert "airflow connections add no_such_redis --conn-type redis" in message


def test_the_redis_key_outlives_every_claim_in_it(redis_url: str) -> None:
    import redis

    gate = RateLimitGate(RedisStore(redis_url, "digest"), request_timeout=100)
    gate.release(gate.acquire(), POLICY)  # a window of 60 s
    gate.acquire()  # a claim of 100 s + the margin, longer than the window

    ttl = redis.Redis.from_url(redis_url).pttl("airflow-provider-cfai:ratelimit:digest")
    assert ttl >= 100_000 + 60_000  # past the claim's lapse, and the window its slot then counts for


def test_a_redis_transaction_that_lost_a_race_decides_again_on_the_new_state(redis_url: str) -> None:
    import redis

    store = RedisStore(redis_url, "digest")
    other = redis.Redis.from_url(redis_url)
    seen: list[int | None] = []

    def update(state: Any, now: float) -> int | None:
        seen.append(state.limit)
        if len(seen) == 1:  # another host writes the state between this one's read and its write
            other.set("airflow-provider-cfai:ratelimit:digest", json.dumps({"limit": 7}))
        return state.limit

    assert store.transact(update) == 7
    assert seen == [None, 7]
    other.close()
