"""Fault injection, rate limiting and streaming uploads, driven over real HTTP."""

from __future__ import annotations

import hashlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from airflow_provider_cfai.emulator.ratelimit import RateLimiter
from airflow_provider_cfai.testing import run_emulator

if TYPE_CHECKING:
    from collections.abc import Iterator

LORA_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
CREATE = r"/ai/finetunes$"
CONNECTION_LOST = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)


def create_body(name: str = "ft") -> dict[str, Any]:
    return {"name": name, "model": LORA_MODEL}


# -- respond -----------------------------------------------------------------------------------------


def test_respond_fault_answers_its_status_and_body_without_doing_the_work(api: Any) -> None:
    body = {"success": False, "errors": [{"code": 10013, "message": "busy"}], "messages": [], "result": None}
    api.emulator.add_fault(method="POST", path=CREATE, status=503, body=body)

    response = api.post("/ai/finetunes", json=create_body())

    assert response.status_code == 503
    assert response.json() == body
    assert api.emulator.finetunes() == []


def test_respond_fault_without_a_body_answers_a_cloudflare_error(api: Any) -> None:
    api.emulator.add_fault(path=CREATE, status=500)

    response = api.get("/ai/finetunes")

    assert response.status_code == 500
    assert response.json()["errors"] == [{"code": 10001, "message": "Injected fault: HTTP 500"}]


def test_respond_fault_can_serve_a_cloudflare_html_error_page_with_headers(api: Any) -> None:
    api.emulator.add_fault(path=CREATE, status=502, html=True, headers={"Retry-After": "2"})

    response = api.get("/ai/finetunes")

    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Retry-After"] == "2"
    assert "<title>api.cloudflare.com | 502: Bad gateway</title>" in response.text


def test_respond_fault_can_serve_a_plain_string_body(api: Any) -> None:
    api.emulator.add_fault(path=CREATE, status=504, body="upstream timed out")

    response = api.get("/ai/finetunes")

    assert (response.status_code, response.text) == (504, "upstream timed out")


def test_fault_fires_before_authentication(api: Any) -> None:
    api.emulator.add_fault(path=CREATE, status=418, body={"teapot": True})

    assert api.get("/ai/finetunes", auth=False).status_code == 418


def test_fault_times_count_down_then_calls_succeed_again(api: Any) -> None:
    api.emulator.add_fault(path=CREATE, times=2, status=503)

    statuses = [api.get("/ai/finetunes").status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    assert api.emulator.faults() == []


def test_remaining_times_are_listed(api: Any) -> None:
    api.emulator.add_fault(path=CREATE, times=3, status=503)
    api.get("/ai/finetunes")

    (rule,) = api.emulator.faults()

    assert (rule["times"], rule["fired"]) == (2, 1)
    assert (rule["path"], rule["status"], rule["action"]) == (CREATE, 503, "respond")


def test_fault_only_fires_for_its_method(api: Any) -> None:
    api.emulator.add_fault(method="POST", path=CREATE, status=503)

    assert api.get("/ai/finetunes").status_code == 200
    assert api.post("/ai/finetunes", json=create_body()).status_code == 503


def test_fault_path_is_matched_after_the_api_prefix_and_ignores_trailing_slashes(api: Any) -> None:
    api.emulator.add_fault(path=r"^/accounts/[^/]+/ai/finetunes$", times=2, status=503)

    assert api.get("/ai/finetunes/").status_code == 503
    assert api.get("/ai/finetunes/public").status_code == 200
    assert api.get("/ai/finetunes").status_code == 503


def test_faults_are_cleared_by_delete_and_by_reset(api: Any) -> None:
    api.emulator.add_fault(path=CREATE, times=2)
    assert api.get("/ai/finetunes").status_code == 503  # the rule is live until cleared
    api.emulator.clear_faults()
    assert api.emulator.faults() == []
    assert api.get("/ai/finetunes").status_code == 200

    api.emulator.add_fault(path=CREATE, times=2)
    assert api.get("/ai/finetunes").status_code == 503
    api.emulator.reset()
    assert api.get("/ai/finetunes").status_code == 200


@pytest.mark.parametrize(
    "rule",
    [
        {"path": CREATE, "bogus": 1},
        {"path": CREATE, "action": "explode"},
        {"path": "("},
        {"path": CREATE, "times": 0},
        {"path": CREATE, "status": 99},
        {"path": CREATE, "delay": -1},
        {"path": CREATE, "headers": {"Retry-After": 2}},
    ],
    ids=["unknown-key", "unknown-action", "bad-regex", "zero-times", "bad-status", "negative-delay", "int-header"],
)
def test_invalid_fault_rules_are_refused(api: Any, rule: dict[str, Any]) -> None:
    response = requests.post(f"{api.emulator.root_url}/__emulator/faults", json=rule, timeout=10)

    assert response.status_code == 400
    assert response.json()["ok"] is False
    assert api.emulator.faults() == []


def test_fault_answers_are_recorded_in_the_request_log(api: Any) -> None:
    api.emulator.add_fault(path=CREATE, status=503)
    api.get("/ai/finetunes")

    (entry,) = api.emulator.state()["requests"]

    assert (entry["status"], entry["fault"], entry["route"]) == (503, "respond", "/accounts/{account_id}/ai/finetunes")


# -- which rules fired ----------------------------------------------------------------------------------


def test_fired_counts_the_requests_a_rule_took_and_outlives_the_spent_rule(api: Any) -> None:
    rule = api.emulator.add_fault(path=CREATE, times=2, status=503)
    assert (rule["fired"], api.emulator.fired(rule)) == (0, 0)

    statuses = [api.get("/ai/finetunes").status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    assert api.emulator.faults() == []  # spent, so no longer pending
    assert api.emulator.fired(rule) == 2
    assert api.emulator.fired(rule["id"]) == 2


def test_a_rule_that_never_matches_reports_zero_fired(api: Any) -> None:
    taken = api.emulator.add_fault(method="GET", path=CREATE, status=503)
    missed = api.emulator.add_fault(method="GET", path=r"/no-such-route$", status=503)

    assert api.get("/ai/finetunes").status_code == 503

    assert (api.emulator.fired(taken), api.emulator.fired(missed)) == (1, 0)


def test_every_rule_since_the_reset_is_listed_with_its_fired_count(api: Any) -> None:
    spent = api.emulator.add_fault(method="GET", path=CREATE, status=503)
    api.get("/ai/finetunes")
    cleared = api.emulator.add_fault(method="POST", path=CREATE, action="drop", times=3)
    api.emulator.clear_faults()

    listed = requests.get(f"{api.emulator.root_url}/__emulator/faults?all=true", timeout=10).json()
    in_state = api.emulator.state()["fired_faults"]

    assert [(r["id"], r["times"], r["fired"]) for r in listed] == [(spent["id"], 0, 1), (cleared["id"], 3, 0)]
    assert in_state == [
        {"id": spent["id"], "path": CREATE, "method": "GET", "action": "respond", "fired": 1},
        {"id": cleared["id"], "path": CREATE, "method": "POST", "action": "drop", "fired": 0},
    ]
    assert api.emulator.faults() == []


def test_reset_forgets_fired_counts(api: Any) -> None:
    rule = api.emulator.add_fault(path=CREATE, status=503)
    api.get("/ai/finetunes")
    assert api.emulator.fired(rule) == 1

    api.emulator.reset()

    assert api.emulator.state()["fired_faults"] == []
    with pytest.raises(LookupError, match=rf"fault rule {rule['id']} .*last reset"):
        api.emulator.fired(rule)


def test_concurrent_requests_fire_a_rule_exactly_its_times(api: Any) -> None:
    rule = api.emulator.add_fault(path=CREATE, times=5, status=503)

    def status() -> int:
        # One connection per call, so the requests really overlap in the server.
        return requests.get(api.url("/ai/finetunes"), headers=api.auth, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: status(), range(12)))

    assert sorted(statuses) == [200] * 7 + [503] * 5
    assert api.emulator.fired(rule) == 5


def test_faults_all_flag_must_be_true_or_false(api: Any) -> None:
    response = requests.get(f"{api.emulator.root_url}/__emulator/faults?all=yes", timeout=10)

    assert response.status_code == 400
    assert response.json() == {"ok": False, "error": "all must be true or false"}


# -- connection drops ---------------------------------------------------------------------------------


def test_drop_closes_the_connection_without_doing_the_work(api: Any) -> None:
    api.emulator.add_fault(method="POST", path=CREATE, action="drop")

    with pytest.raises(CONNECTION_LOST):
        api.post("/ai/finetunes", json=create_body())

    assert api.emulator.finetunes() == []
    assert api.get("/ai/finetunes").status_code == 200  # the server itself is fine


def test_drop_after_commit_creates_exactly_one_finetune_and_the_client_sees_a_lost_connection(api: Any) -> None:
    api.emulator.add_fault(method="POST", path=CREATE, action="drop_after_commit")

    with pytest.raises(CONNECTION_LOST):
        api.post("/ai/finetunes", json=create_body("committed"))

    assert [f["name"] for f in api.emulator.finetunes()] == ["committed"]
    (entry,) = api.emulator.state()["requests"]
    assert (entry["status"], entry["fault"]) == (200, "drop_after_commit")


def test_drop_after_commit_on_an_upload_keeps_the_asset(api: Any) -> None:
    finetune = api.create()
    api.emulator.add_fault(path="/finetune-assets$", action="drop_after_commit")

    with pytest.raises(CONNECTION_LOST):
        api.upload(finetune["id"], "adapter_config.json", b'{"r": 8}')

    assert api.emulator.finetunes()[0]["assets"]["adapter_config.json"]["size"] == 8


def test_drop_on_a_large_upload_stores_nothing(api: Any, emulator_data_dir: Path) -> None:
    finetune = api.create()
    api.emulator.add_fault(path="/finetune-assets$", action="drop")

    with pytest.raises(CONNECTION_LOST):
        api.upload(finetune["id"], "adapter_model.safetensors", b"\0" * (8 * 1024 * 1024))

    assert api.emulator.finetunes()[0]["assets"] == {}
    assert list((emulator_data_dir / "tmp").iterdir()) == []


# -- delays ------------------------------------------------------------------------------------------


def test_delay_after_commit_commits_at_once_and_answers_late(api: Any) -> None:
    api.emulator.add_fault(method="POST", path=CREATE, action="delay_after_commit", delay=30)

    # A client that gives up long before the answer: the work must already be done when it does.
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.post("/ai/finetunes", json=create_body("slow"), timeout=1)

    assert [f["name"] for f in api.emulator.finetunes()] == ["slow"]


def test_delay_after_commit_delivers_the_normal_answer_while_other_calls_are_served(api: Any) -> None:
    api.emulator.add_fault(method="POST", path=CREATE, action="delay_after_commit", delay=1.0)

    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        slow = pool.submit(api.post, "/ai/finetunes", json=create_body("late"))
        # A fresh connection, so the check does not queue behind the slow request on one socket.
        other = requests.get(f"{api.emulator.root_url}/__emulator/health", timeout=10)
        other_elapsed = time.monotonic() - started
        response = slow.result(timeout=30)
        slow_elapsed = time.monotonic() - started

    assert other.json() == {"ok": True}
    assert other_elapsed < 1.0
    assert response.status_code == 200
    assert response.json()["result"]["name"] == "late"
    assert slow_elapsed >= 1.0


def test_garble_after_commit_creates_and_answers_200_with_the_real_json_cut_in_half(api: Any) -> None:
    rule = api.emulator.add_fault(method="POST", path=CREATE, action="garble_after_commit")

    response = api.post("/ai/finetunes", json=create_body("garbled"))

    (held,) = api.emulator.finetunes()
    assert held["name"] == "garbled"
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.content.startswith(b'{"')
    assert int(response.headers["Content-Length"]) == len(response.content)
    with pytest.raises(requests.exceptions.JSONDecodeError):
        response.json()
    assert "ratelimit" in {k.lower() for k in response.headers}  # the real answer's headers are kept
    assert api.emulator.fired(rule) == 1
    assert api.emulator.state()["requests"][-1]["fault"] == "garble_after_commit"


def test_garble_after_commit_can_answer_an_html_page_for_a_batch_submit(api: Any) -> None:
    model = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
    rule = api.emulator.add_fault(
        method="POST", path=r"/ai/run/", request_body='"requests"', action="garble_after_commit", html=True
    )

    response = api.post(f"/ai/run/{model}?queueRequest=true", json={"requests": [{"prompt": "a"}]})

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<title>" in response.text
    assert len(api.emulator.state()["batches"]) == 1  # queued for real
    assert api.emulator.fired(rule) == 1


# -- rate limiting -----------------------------------------------------------------------------------


def test_past_the_limit_every_call_gets_429_with_retry_after_until_the_lockout_ends(api: Any) -> None:
    api.emulator.configure(rate_limit=3, rate_window=60, rate_lockout=42)

    statuses = [api.get("/ai/finetunes").status_code for _ in range(3)]
    refused = [api.get("/ai/finetunes") for _ in range(2)]

    assert statuses == [200, 200, 200]
    for response in refused:
        assert response.status_code == 429
        assert api.error_of(response) == {
            "code": 971,
            "message": "Please wait and consider throttling your request speed",
        }
        assert 41 <= int(response.headers["Retry-After"]) <= 42
        assert response.headers["Ratelimit"].startswith('"default";r=0;')
    state = api.emulator.state()
    assert (state["rate_limited_responses"], state["lockouts"]) == (2, 1)


def test_rate_limits_are_per_credential(api: Any) -> None:
    api.emulator.configure(rate_limit=2, rate_window=60, rate_lockout=60)
    wrong = {"Authorization": "Bearer not-the-token"}
    for _ in range(3):
        api.get("/ai/finetunes", auth=False, headers=wrong)

    assert api.get("/ai/finetunes", auth=False, headers=wrong).status_code == 429
    assert api.get("/ai/finetunes").status_code == 200


def test_rate_limit_zero_disables_limiting_and_its_headers(api: Any) -> None:
    api.emulator.configure(rate_limit=0)

    responses = [api.get("/ai/finetunes") for _ in range(5)]

    assert {r.status_code for r in responses} == {200}
    assert "Ratelimit" not in responses[-1].headers


def test_reset_ends_a_lockout(api: Any) -> None:
    api.emulator.configure(rate_limit=1, rate_window=60, rate_lockout=60)
    api.get("/ai/finetunes")
    assert api.get("/ai/finetunes").status_code == 429

    api.emulator.reset(settings=True)

    assert api.get("/ai/finetunes").status_code == 200


class TestRateLimiterClock:
    """The window arithmetic, with an explicit clock instead of waiting."""

    @staticmethod
    def check(limiter: RateLimiter, now: float, **overrides: float) -> Any:
        params: dict[str, Any] = {"limit": 2, "window": 10.0, "lockout": 30.0} | overrides
        return limiter.check("k", now, **params)

    def test_window_resets_after_its_length(self) -> None:
        limiter = RateLimiter()
        assert [self.check(limiter, t).allowed for t in (0.0, 1.0)] == [True, True]

        fresh = self.check(limiter, 10.0)

        assert fresh.allowed
        assert fresh.headers["Ratelimit"] == '"default";r=1;t=10'

    def test_lockout_outlasts_the_window_and_then_ends(self) -> None:
        limiter = RateLimiter()
        self.check(limiter, 0.0)
        self.check(limiter, 0.0)

        first_refusal = self.check(limiter, 1.0)
        still_locked = self.check(limiter, 20.0)
        free_again = self.check(limiter, 31.0)

        assert first_refusal.started_lockout
        assert first_refusal.headers["Retry-After"] == "30"
        assert not still_locked.allowed
        assert not still_locked.started_lockout
        assert still_locked.headers["Retry-After"] == "11"
        assert free_again.allowed

    def test_without_a_lockout_the_refusal_lasts_until_the_window_ends(self) -> None:
        limiter = RateLimiter()
        self.check(limiter, 0.0, lockout=0.0)
        self.check(limiter, 0.0, lockout=0.0)

        refused = self.check(limiter, 4.0, lockout=0.0)

        assert refused.headers["Retry-After"] == "6"
        assert self.check(limiter, 10.0, lockout=0.0).allowed

    def test_float_error_in_the_lockout_does_not_add_a_second_to_retry_after(self) -> None:
        # (32.15 + 42) - 32.15 == 42.00000000000001 in binary floating point: ceil() alone says 43.
        now = 32.15
        assert (now + 42.0) - now > 42.0
        limiter = RateLimiter()
        self.check(limiter, now, lockout=42.0)
        self.check(limiter, now, lockout=42.0)

        refused = self.check(limiter, now, lockout=42.0)

        assert refused.headers["Retry-After"] == "42"
        assert refused.headers["Ratelimit"] == '"default";r=0;t=42'

    def test_fractional_seconds_round_up_and_never_to_zero(self) -> None:
        limiter = RateLimiter()

        decision = self.check(limiter, 0.0, window=0.25)

        assert decision.headers["Ratelimit"] == '"default";r=1;t=1'
        assert decision.headers["Ratelimit-Policy"] == '"default";q=2;w=0.25'


# -- streaming ---------------------------------------------------------------------------------------


def _peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory (Linux ``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("VmHWM not found")


@pytest.fixture
def sparse_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "adapter_model.safetensors"
    with path.open("wb") as f:
        f.truncate(200 * 1024 * 1024)
    yield path
    path.unlink()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_a_200_mib_upload_streams_to_disk_without_growing_the_server(sparse_file: Path) -> None:
    from requests_toolbelt import MultipartEncoder

    with run_emulator() as emulator:
        auth = {"Authorization": f"Bearer {emulator.token}"}
        base = f"{emulator.base_url}/accounts/{emulator.account_id}"
        finetune = requests.post(
            f"{base}/ai/finetunes", json={"name": "big", "model": LORA_MODEL}, headers=auth, timeout=10
        ).json()["result"]
        assert emulator.pid is not None
        before = _peak_rss(emulator.pid)

        with sparse_file.open("rb") as f:
            encoder = MultipartEncoder(
                fields={"file_name": "adapter_model.safetensors", "file": ("f", f, "application/octet-stream")}
            )
            response = requests.post(
                f"{base}/ai/finetunes/{finetune['id']}/finetune-assets",
                data=encoder,
                headers={**auth, "Content-Type": encoder.content_type},
                timeout=120,
            )
        grown = _peak_rss(emulator.pid) - before
        stored = emulator.finetunes()[0]["assets"]["adapter_model.safetensors"]

    expected = hashlib.sha256()
    with sparse_file.open("rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            expected.update(block)
    assert response.status_code == 200, response.text
    assert stored == {"size": 200 * 1024 * 1024, "sha256": expected.hexdigest()}
    print(f"server peak RSS grew by {grown / 2**20:.1f} MiB during a 200 MiB upload")
    assert grown < 40 * 1024 * 1024, f"server peak RSS grew by {grown / 2**20:.1f} MiB"
