"""CloudflarePydanticAIHook (connection type pydanticai_cloudflare) and its Workers AI model, against the emulator."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from typing import Any, Literal

import pytest
from pydantic import BaseModel

pytest.importorskip(
    "airflow.providers.common.ai",
    reason="the common-ai extra is not installed (it needs Python 3.11+): pip install '.[common-ai]'",
)

from airflow.providers.common.ai.hooks.pydantic_ai import PydanticAIHook

from airflow_provider_cfai.exceptions import (
    CloudflareAuthError,
    CloudflareConfigError,
    CloudflareInputError,
    CloudflarePermanentAPIError,
)
from airflow_provider_cfai.hooks.pydantic_ai import CloudflarePydanticAIHook

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
OTHER_MODEL = "@cf/google/gemma-7b-it-lora"
CONN_ID = "support_bot"


class Ticket(BaseModel):
    category: Literal["billing", "bug", "account", "other"]
    urgent: bool
    summary: str


def set_connection(
    emulator: Any, monkeypatch: pytest.MonkeyPatch, *, password: str | None = None, **extra: Any
) -> None:
    conn = json.loads(emulator.connection_json(**{"max_retries": 3, "retry_budget": 30, "timeout": 10, **extra}))
    conn["conn_type"] = "pydanticai_cloudflare"
    if password is not None:
        conn["password"] = password
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))


@pytest.fixture
def finetune(make_hook: Any) -> dict[str, Any]:
    """A complete finetune of MODEL in the emulator's account."""
    from airflow_provider_cfai.adapter_factory import write_lora_adapter

    hook = make_hook()
    created: dict[str, Any] = hook.create_finetune(MODEL, "support-triage")
    hook.upload_adapter(created["id"], write_lora_adapter(tempfile.mkdtemp(), model_type="mistral"))
    return created


def lora_runs(emulator: Any) -> list[dict[str, Any]]:
    return [r for r in emulator.state()["requests"] if "/ai/run/" in r["path"]]


def classify(hook: CloudflarePydanticAIHook, prompt: str = "I was charged twice on my billing plan") -> Ticket:
    agent = hook.create_agent(output_type=Ticket, instructions="Triage the support ticket.")
    output: Ticket = agent.run_sync(prompt).output
    return output


def test_get_hook_finds_the_subclass_and_the_model_carries_the_finetune(
    emulator: Any, monkeypatch: pytest.MonkeyPatch, finetune: dict[str, Any]
) -> None:
    set_connection(emulator, monkeypatch, model=MODEL, lora="support-triage")

    hook = PydanticAIHook.get_hook(CONN_ID)
    ticket = classify(hook)

    assert isinstance(hook, CloudflarePydanticAIHook)
    assert ticket.category == "billing"
    assert ticket.urgent is False
    assert ticket.summary.startswith(f"[{MODEL} + support-triage]")
    (run,) = lora_runs(emulator)
    assert run["path"].endswith(f"/ai/run/{MODEL}")
    assert run["lora"] == "support-triage"


def test_model_id_overrides_the_connections_model(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(emulator, monkeypatch, model=MODEL)

    hook = PydanticAIHook.get_hook(CONN_ID, hook_params={"model_id": "@cf/meta/llama-3.1-8b-instruct"})
    ticket = classify(hook, "urgent: the app shows a bug")

    assert hook.get_conn().model_name == "@cf/meta/llama-3.1-8b-instruct"
    assert ticket.summary.startswith("[@cf/meta/llama-3.1-8b-instruct]")
    assert (ticket.category, ticket.urgent) == ("bug", True)
    (run,) = lora_runs(emulator)
    assert run["path"].endswith("/ai/run/@cf/meta/llama-3.1-8b-instruct")
    assert "lora" not in run


def test_an_answer_that_fails_validation_is_asked_again(
    emulator: Any, monkeypatch: pytest.MonkeyPatch, finetune: dict[str, Any]
) -> None:
    set_connection(emulator, monkeypatch, model=MODEL, lora="support-triage")
    rule = emulator.add_fault(
        method="POST",
        path=r"/ai/run/",
        status=200,
        body={"success": True, "errors": [], "messages": [], "result": {"response": "Sure! It is billing."}},
    )

    ticket = classify(CloudflarePydanticAIHook(llm_conn_id=CONN_ID))

    assert emulator.fired(rule) == 1
    assert ticket.category == "billing"
    assert len(lora_runs(emulator)) == 2
    finetune_lists = [r for r in emulator.state()["requests"] if r["path"].endswith("/ai/finetunes")]
    assert len(finetune_lists) == 2  # the fixture's create, and one look-up for both requests


def test_a_429_is_paced_and_retried(emulator: Any, monkeypatch: pytest.MonkeyPatch, finetune: dict[str, Any]) -> None:
    set_connection(emulator, monkeypatch, model=MODEL, lora="support-triage")
    rule = emulator.add_fault(
        method="POST",
        path=r"/ai/run/",
        status=429,
        headers={"Retry-After": "1"},
        body={"success": False, "errors": [{"code": 3040, "message": "Capacity temporarily exceeded"}]},
    )
    hook = CloudflarePydanticAIHook(llm_conn_id=CONN_ID)
    waits: list[float] = []
    hook.cloudflare_hook._sleep = waits.append

    ticket = classify(hook)

    assert emulator.fired(rule) == 1
    assert waits == [1.0]  # Retry-After, as the provider's retry policy reads it
    assert ticket.category == "billing"
    assert len(lora_runs(emulator)) == 2


def test_a_wrong_token_is_a_clear_error_without_the_token(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(emulator, monkeypatch, password="wrong-token-0123456789abcdef", model=MODEL)

    with pytest.raises(CloudflareAuthError, match="HTTP 401") as caught:
        classify(CloudflarePydanticAIHook(llm_conn_id=CONN_ID))

    assert "wrong-token-0123456789abcdef" not in str(caught.value)


def test_a_finetune_of_another_model_is_refused_before_inference(
    emulator: Any, monkeypatch: pytest.MonkeyPatch, finetune: dict[str, Any]
) -> None:
    set_connection(emulator, monkeypatch, model=OTHER_MODEL, lora="support-triage")

    with pytest.raises(CloudflareInputError, match=f"was made for {MODEL}, but the model is {OTHER_MODEL}"):
        classify(CloudflarePydanticAIHook(llm_conn_id=CONN_ID))

    assert lora_runs(emulator) == []


def test_a_missing_finetune_is_named(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(emulator, monkeypatch, model=MODEL, lora="no-such-finetune")

    with pytest.raises(CloudflareInputError, match=r"'no-such-finetune' .* does not exist"):
        classify(CloudflarePydanticAIHook(llm_conn_id=CONN_ID))

    assert lora_runs(emulator) == []


def test_a_model_that_cannot_return_structured_output_is_refused(
    emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(emulator, monkeypatch, model="@cf/baai/bge-base-en-v1.5")

    with pytest.raises(CloudflareInputError, match="'Text Embeddings' model, which cannot return text"):
        classify(CloudflarePydanticAIHook(llm_conn_id=CONN_ID))

    assert lora_runs(emulator) == []


def test_an_answer_without_text_is_a_clear_error(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(emulator, monkeypatch, model=MODEL)
    emulator.add_fault(
        method="POST",
        path=r"/ai/run/",
        status=200,
        body={"success": True, "errors": [], "messages": [], "result": {"data": [[0.1, 0.2]]}},
    )

    with pytest.raises(CloudflareInputError, match=r"answered without a text 'response' \(keys: \['data'\]\)"):
        classify(CloudflarePydanticAIHook(llm_conn_id=CONN_ID))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "names no model: set its extra 'model'"),
        ({"model": "openai:gpt-5"}, "'openai:gpt-5' is not a Workers AI model name"),
        ({"model": MODEL, "lora": 7}, "extra 'lora' must be a finetune ID or name"),
    ],
)
def test_bad_connection_extras_are_named(
    emulator: Any, monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], message: str
) -> None:
    set_connection(emulator, monkeypatch, **extra)

    with pytest.raises(CloudflareConfigError, match=message):
        CloudflarePydanticAIHook(llm_conn_id=CONN_ID).get_conn()


def test_an_empty_lora_argument_runs_the_base_model(
    emulator: Any, monkeypatch: pytest.MonkeyPatch, finetune: dict[str, Any]
) -> None:
    set_connection(emulator, monkeypatch, model="cloudflare:" + MODEL, lora="support-triage")

    model = CloudflarePydanticAIHook(llm_conn_id=CONN_ID, lora="").get_conn()

    assert (model.model_name, model.lora) == (MODEL, None)


def test_the_token_is_masked_and_reaches_no_log(
    emulator: Any, monkeypatch: pytest.MonkeyPatch, finetune: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    import airflow.sdk.log

    masked: list[Any] = []
    original = airflow.sdk.log.mask_secret
    monkeypatch.setattr(
        airflow.sdk.log, "mask_secret", lambda secret, name=None: (masked.append(secret), original(secret, name))
    )
    caplog.set_level(logging.DEBUG)
    set_connection(emulator, monkeypatch, model=MODEL, lora="support-triage")

    classify(CloudflarePydanticAIHook(llm_conn_id=CONN_ID))

    assert emulator.token in masked
    assert caplog.records  # the run did log (pydantic-ai, the hook), so the check below looks at something
    assert emulator.token not in caplog.text


def test_test_connection_verifies_the_token(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(emulator, monkeypatch, model=MODEL)
    assert CloudflarePydanticAIHook(llm_conn_id=CONN_ID).test_connection()[0] is True

    set_connection(emulator, monkeypatch)
    assert CloudflarePydanticAIHook(llm_conn_id=CONN_ID).test_connection() == (
        False,
        f"Connection {CONN_ID!r} names no model: set its extra 'model' (e.g. "
        '{"model": "@cf/mistral/mistral-7b-instruct-v0.2-lora"}) or pass model_id.',
    )

    set_connection(emulator, monkeypatch, password="wrong-token-0123456789abcdef", model=MODEL)
    ok, message = CloudflarePydanticAIHook(llm_conn_id=CONN_ID).test_connection()

    assert ok is False
    assert "verifying the API token" in message
    assert "wrong-token" not in message


def test_without_the_extra_the_hook_module_says_how_to_install_it() -> None:
    probe = """
import sys
import airflow.sdk
sys.modules["airflow.providers.common.ai.hooks.pydantic_ai"] = None  # as if the extra were not installed
from airflow_provider_cfai import get_provider_info
get_provider_info()
try:
    import airflow_provider_cfai.hooks.pydantic_ai
except Exception as error:
    print(type(error).__name__, error)
"""
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout

    assert out.startswith("AirflowOptionalProviderFeatureException")
    assert "pip install 'airflow-provider-cfai[common-ai]'" in out


def test_an_agent_with_tools_is_refused_with_the_reason(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(emulator, monkeypatch, model=MODEL)

    def lookup_order(order_id: str) -> str:
        return order_id

    agent = CloudflarePydanticAIHook(llm_conn_id=CONN_ID).create_agent(instructions="Help.", tools=[lookup_order])

    with pytest.raises(CloudflareInputError, match="no native tool calling"):
        agent.run_sync("Where is order 42?")
    assert lora_runs(emulator) == []


def test_provider_info_declares_the_connection_type_with_its_form() -> None:
    from airflow_provider_cfai import get_provider_info

    (conn,) = [c for c in get_provider_info()["connection-types"] if c["connection-type"] == "pydanticai_cloudflare"]
    module, _, name = conn["hook-class-name"].rpartition(".")

    assert getattr(__import__(module, fromlist=[name]), name) is CloudflarePydanticAIHook
    assert CloudflarePydanticAIHook.conn_type == "pydanticai_cloudflare"
    assert set(conn["conn-fields"]) == {"model", "lora"}
    assert "airflow-provider-cfai[common-ai]" in conn["conn-fields"]["model"]["description"]
    behaviour = CloudflarePydanticAIHook.get_ui_field_behaviour()
    assert behaviour["relabeling"] == {"login": "Account ID", "password": "API Token", "host": "API base URL"}
    assert set(behaviour["hidden_fields"]) == {"schema", "port"}


def test_airflow_connections_test_dispatches_to_the_hook(airflow_db: Any, emulator: Any) -> None:
    import os
    from pathlib import Path

    conn = json.loads(emulator.connection_json(model=MODEL))
    conn["conn_type"] = "pydanticai_cloudflare"
    env = {**os.environ, "AIRFLOW__CORE__TEST_CONNECTION": "Enabled", "AIRFLOW_CONN_SUPPORT_BOT": json.dumps(conn)}
    airflow = Path(sys.executable).with_name("airflow")

    result = subprocess.run(
        [str(airflow), "connections", "test", CONN_ID], env=env, capture_output=True, text=True, timeout=300
    )

    assert "Connection success!" in result.stdout, result.stdout + result.stderr
    assert any(r["path"].endswith("/tokens/verify") for r in emulator.state()["requests"])  # our hook answered
    assert emulator.token not in result.stdout + result.stderr


def test_a_connection_still_failing_after_retries_falls_back_to_the_next(
    emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(emulator, monkeypatch, model=MODEL, max_retries=0, fallback_conn_ids=["support_bot_backup"])
    backup = json.loads(emulator.connection_json())  # no model: the primary's applies
    backup["conn_type"] = "pydanticai_cloudflare"
    monkeypatch.setenv("AIRFLOW_CONN_SUPPORT_BOT_BACKUP", json.dumps(backup))
    rule = emulator.add_fault(method="POST", path=r"/ai/run/", status=503, times=1)

    ticket = classify(PydanticAIHook.get_hook(CONN_ID))

    assert emulator.fired(rule) == 1
    assert ticket.summary.startswith(f"[{MODEL}]")
    assert len(lora_runs(emulator)) == 2


def test_a_refused_request_does_not_fall_back(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(emulator, monkeypatch, model=MODEL, fallback_conn_ids=["support_bot_backup"])
    backup = json.loads(emulator.connection_json(model=MODEL))
    backup["conn_type"] = "pydanticai_cloudflare"
    monkeypatch.setenv("AIRFLOW_CONN_SUPPORT_BOT_BACKUP", json.dumps(backup))
    rule = emulator.add_fault(
        method="POST",
        path=r"/ai/run/",
        status=400,
        body={"success": False, "errors": [{"code": 5006, "message": "Bad input"}]},
    )

    with pytest.raises(CloudflarePermanentAPIError, match="Bad input"):
        classify(PydanticAIHook.get_hook(CONN_ID))

    assert emulator.fired(rule) == 1
    assert len(lora_runs(emulator)) == 1
