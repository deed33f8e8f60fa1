"""PromoteFinetuneOperator / RollbackFinetuneOperator against the emulator's Workers KV, over HTTP."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_cfai.adapter_factory import write_lora_adapter
from airflow_provider_cfai.assets import PROMOTIONS_ALIAS, pointer_uri
from airflow_provider_cfai.exceptions import (
    AirflowFailException,
    CloudflareAPIError,
    CloudflareInputError,
    PromotionCheckError,
)
from airflow_provider_cfai.operators.promote import PromoteFinetuneOperator, RollbackFinetuneOperator

MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
OTHER_MODEL = "@cf/google/gemma-7b-it-lora"
KEY = "support-bot"
CONTEXT: dict[str, Any] = {"ti": SimpleNamespace(dag_id="ship_it", run_id="manual__1")}


@pytest.fixture
def kv_hook(make_hook: Any, emulator: Any) -> Any:
    """A hook with fast retries whose waits are recorded, not slept."""
    emulator.configure(kv_write_interval=0)
    hook = make_hook(max_retries=3, retry_budget=30)
    hook.sleeps = []
    hook._sleep = hook.sleeps.append
    return hook


@pytest.fixture
def namespace(kv_hook: Any) -> str:
    return str(kv_hook.create_kv_namespace("serving")["id"])


@pytest.fixture
def finetune(kv_hook: Any, tmp_path: Path) -> Any:
    """``finetune(name, model=MODEL, files=True)``: a finetune, its adapter uploaded unless ``files=False``."""
    count = iter(range(100))

    def make(name: str, model: str = MODEL, *, files: bool = True) -> dict[str, Any]:
        record: dict[str, Any] = kv_hook.create_finetune(model, name)
        if files:
            family = "gemma" if "gemma" in model else "mistral"
            adapter = write_lora_adapter(tmp_path / f"adapter-{next(count)}", model_type=family)
            kv_hook.upload_adapter(record["id"], str(adapter))
        return record

    return make


def promote(hook: Any, namespace: str, finetune: str, **kwargs: Any) -> Any:
    context = kwargs.pop("context", CONTEXT)
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("asset_alias", None)
    operator = PromoteFinetuneOperator(task_id="promote", finetune=finetune, namespace_id=namespace, key=KEY, **kwargs)
    operator.hook = hook
    return operator.execute(context=context)


def rollback(hook: Any, namespace: str, **kwargs: Any) -> Any:
    kwargs.setdefault("asset_alias", None)
    operator = RollbackFinetuneOperator(task_id="rollback", namespace_id=namespace, key=KEY, **kwargs)
    operator.hook = hook
    return operator.execute(context=CONTEXT)


def pointer(hook: Any, namespace: str) -> tuple[bytes | None, Any]:
    return hook.read_kv_value(namespace, KEY), hook.read_kv_metadata(namespace, KEY)


def put_requests(emulator: Any) -> list[dict[str, Any]]:
    return [r for r in emulator.state()["requests"] if r["method"] == "PUT"]


def kv_writes(emulator: Any) -> int:
    return int(emulator.state()["kv"]["writes"])


# -- promote ---------------------------------------------------------------------------------------


def test_first_promotion_writes_the_id_with_metadata_and_returns_none(
    kv_hook: Any, namespace: str, finetune: Any, emulator: Any
) -> None:
    a = finetune("support-a")

    previous = promote(kv_hook, namespace, "support-a")  # by name

    assert previous is None
    value, metadata = pointer(kv_hook, namespace)
    assert value == a["id"].encode()
    assert metadata["previous"] is None
    assert metadata["model"] == MODEL
    assert metadata["finetune_name"] == "support-a"
    assert (metadata["action"], metadata["dag_id"], metadata["run_id"]) == ("promote", "ship_it", "manual__1")
    assert metadata["at"].endswith("+00:00")
    assert "support-a" in emulator.ask_worker(namespace, KEY, "hi")["response"]


def test_a_promotion_records_what_was_live_and_moves_the_worker(
    kv_hook: Any, namespace: str, finetune: Any, emulator: Any
) -> None:
    a, b = finetune("support-a"), finetune("support-b")
    promote(kv_hook, namespace, a["id"])

    previous = promote(kv_hook, namespace, b["id"], model=None)  # the model comes from the metadata

    assert previous == a["id"]
    value, metadata = pointer(kv_hook, namespace)
    assert (value, metadata["previous"]) == (b["id"].encode(), a["id"])
    assert emulator.ask_worker(namespace, KEY, "hi")["response"] == f"[{MODEL} + support-b] hi"


def test_promoting_the_live_finetune_writes_nothing(kv_hook: Any, namespace: str, finetune: Any, emulator: Any) -> None:
    a, b = finetune("support-a"), finetune("support-b")
    promote(kv_hook, namespace, a["id"])
    promote(kv_hook, namespace, b["id"])
    writes = kv_writes(emulator)

    again = promote(kv_hook, namespace, "support-b")

    assert kv_writes(emulator) == writes
    assert again == a["id"]  # what was live before it, as the first promotion returned


def test_the_canary_runs_the_given_inputs_with_the_finetune(kv_hook: Any, namespace: str, finetune: Any) -> None:
    finetune("support-a")

    promote(kv_hook, namespace, "support-a", canary_inputs={"messages": [{"role": "user", "content": "ping"}]})

    # A canary input the model refuses fails the check.
    finetune("support-b")
    with pytest.raises(PromotionCheckError, match=r"canary inference .* failed"):
        promote(kv_hook, namespace, "support-b", canary_inputs={"nothing": 1})


@pytest.mark.parametrize(
    ("case", "messages"),
    [
        ("no-files", ["missing its adapter files", "UploadFinetuneAssetsOperator", "3039"]),
        ("other-model", [f"was made for {OTHER_MODEL}", f"promote a finetune of {MODEL}"]),
        ("unknown-finetune", ["does not exist in account", "CreateFinetuneOperator"]),
        ("missing-namespace", ["Workers KV namespace", "does not exist", "wrangler kv namespace create"]),
        ("no-kv-permission", ["Workers KV Storage Read", "API Tokens"]),
        ("read-only-kv-token", ["Workers KV Storage Write", "API Tokens"]),
        ("model-disagrees", ["serves " + MODEL, "from a new key"]),
    ],
)
def test_a_failed_check_leaves_the_pointer_untouched_and_names_the_fix(
    kv_hook: Any, namespace: str, finetune: Any, emulator: Any, case: str, messages: list[str]
) -> None:
    live = finetune("support-live")
    promote(kv_hook, namespace, live["id"])
    before, writes = pointer(kv_hook, namespace), kv_writes(emulator)
    target, kwargs = "support-new", {}
    if case == "no-files":
        finetune(target, files=False)
    elif case == "other-model":
        finetune(target, OTHER_MODEL)
    elif case == "unknown-finetune":
        target = "never-created"
    else:
        finetune(target)
    ns = "f" * 32 if case == "missing-namespace" else namespace
    if case == "no-kv-permission":
        emulator.configure(token_kv_access="none")
    if case == "read-only-kv-token":
        emulator.configure(token_kv_access="read")
    if case == "model-disagrees":
        kwargs["model"] = "@cf/meta/llama-3.1-8b-instruct-fast"

    with pytest.raises(PromotionCheckError) as caught:
        promote(kv_hook, ns, target, **kwargs)

    assert isinstance(caught.value, AirflowFailException)  # no Airflow retries
    for message in messages:
        assert message in str(caught.value)
    emulator.configure(token_kv_access="write")
    assert pointer(kv_hook, namespace) == before
    assert kv_writes(emulator) == writes


def test_the_first_promotion_needs_the_model(kv_hook: Any, namespace: str, finetune: Any, emulator: Any) -> None:
    finetune("support-a")

    with pytest.raises(PromotionCheckError, match="pass model="):
        promote(kv_hook, namespace, "support-a", model=None)

    assert kv_writes(emulator) == 0


def test_a_bad_token_is_not_mistaken_for_a_missing_permission(
    make_hook: Any, namespace: str, finetune: Any, emulator: Any
) -> None:
    finetune("support-a")
    hook = make_hook(password="not-the-token")

    with pytest.raises(CloudflareAPIError, match="HTTP 401") as caught:
        promote(hook, namespace, "support-a")

    # Passed through as the bad credentials it is (with the connection hint), not as a missing KV permission.
    assert not isinstance(caught.value, PromotionCheckError)
    assert "Workers KV" not in str(caught.value)


def test_template_fields_cover_every_user_facing_argument() -> None:
    assert set(PromoteFinetuneOperator.template_fields) == {
        "finetune",
        "namespace_id",
        "key",
        "model",
        "canary_inputs",
        "account_id",
        "cloudflare_conn_id",
    }
    assert set(RollbackFinetuneOperator.template_fields) == {
        "namespace_id",
        "key",
        "canary_inputs",
        "account_id",
        "cloudflare_conn_id",
    }


@pytest.mark.parametrize("field", ["finetune", "namespace_id", "key"])
def test_blank_arguments_are_refused_when_the_dag_is_parsed(field: str) -> None:
    kwargs = {"finetune": "a", "namespace_id": "n", "key": "k", field: " "}
    with pytest.raises(CloudflareInputError, match=field):
        PromoteFinetuneOperator(task_id="p", **kwargs)


# -- rollback --------------------------------------------------------------------------------------


def test_rollback_restores_the_previous_finetune_and_can_itself_be_rolled_back(
    kv_hook: Any, namespace: str, finetune: Any, emulator: Any
) -> None:
    a, b = finetune("support-a"), finetune("support-b")
    promote(kv_hook, namespace, a["id"])
    promote(kv_hook, namespace, b["id"])

    replaced = rollback(kv_hook, namespace)

    value, metadata = pointer(kv_hook, namespace)
    assert replaced == b["id"]
    assert (value, metadata["previous"], metadata["action"]) == (a["id"].encode(), b["id"], "rollback")
    assert metadata["model"] == MODEL
    assert "support-a" in emulator.ask_worker(namespace, KEY, "hi")["response"]

    assert rollback(kv_hook, namespace) == a["id"]
    assert pointer(kv_hook, namespace)[0] == b["id"].encode()


def test_rollback_without_history_is_refused(kv_hook: Any, namespace: str, finetune: Any, emulator: Any) -> None:
    a = finetune("support-a")
    with pytest.raises(PromotionCheckError, match=r"no history to roll back to .it is not set"):
        rollback(kv_hook, namespace)

    kv_hook.write_kv_value(namespace, KEY, a["id"])  # set by hand: no metadata
    with pytest.raises(PromotionCheckError, match="records no 'previous' value"):
        rollback(kv_hook, namespace)

    emulator.reset()
    emulator.configure(kv_write_interval=0)
    ns = kv_hook.create_kv_namespace("serving")["id"]
    a = finetune("support-a")
    promote(kv_hook, ns, a["id"])
    writes = kv_writes(emulator)
    with pytest.raises(PromotionCheckError, match="was empty before"):
        rollback(kv_hook, ns)
    assert kv_writes(emulator) == writes


# -- asset events ------------------------------------------------------------------------------------


def test_a_promotion_is_an_asset_event_of_the_pointer_with_the_finetune_in_extra(
    kv_hook: Any, namespace: str, finetune: Any, emulator: Any
) -> None:
    from airflow.sdk import AssetAlias
    from airflow.sdk.execution_time.context import OutletEventAccessors

    a = finetune("support-a")
    operator = PromoteFinetuneOperator(
        task_id="promote", finetune=a["id"], namespace_id=namespace, key=KEY, model=MODEL
    )
    operator.hook = kv_hook
    events = OutletEventAccessors()

    assert AssetAlias(PROMOTIONS_ALIAS) in operator.outlets
    operator.execute(context={"outlet_events": events, **CONTEXT})  # type: ignore[typeddict-item]

    (event,) = [e for accessor in events._dict.values() for e in accessor.asset_alias_events]
    assert event.source_alias_name == PROMOTIONS_ALIAS
    assert event.dest_asset_key.uri == pointer_uri(emulator.account_id, namespace, KEY)
    assert event.extra == {
        "account_id": emulator.account_id,
        "namespace_id": namespace,
        "key": KEY,
        "action": "promote",
        "finetune_id": a["id"],
        "finetune_name": "support-a",
        "model": MODEL,
        "previous": None,
    }


# -- faults on the write: value and metadata never disagree, the previous value is never lost --------


@pytest.fixture
def live_a_then_b(kv_hook: Any, namespace: str, finetune: Any) -> tuple[str, str]:
    a, b = finetune("support-a"), finetune("support-b")
    promote(kv_hook, namespace, a["id"])
    return a["id"], b["id"]


PUT_VALUE = r"/storage/kv/namespaces/[^/]+/values/"


def assert_consistent(hook: Any, namespace: str, value: str, previous: str) -> None:
    stored, metadata = pointer(hook, namespace)
    assert stored == value.encode()
    assert metadata["previous"] == previous
    assert metadata["finetune_name"] == ("support-b" if value != previous else metadata["finetune_name"])


def test_a_5xx_on_the_write_is_retried(
    kv_hook: Any, namespace: str, live_a_then_b: tuple[str, str], emulator: Any
) -> None:
    a, b = live_a_then_b
    rule = emulator.add_fault(method="PUT", path=PUT_VALUE, status=503, times=2)

    assert promote(kv_hook, namespace, b) == a

    assert emulator.fired(rule) == 2
    assert_consistent(kv_hook, namespace, b, a)


def test_a_429_on_the_write_waits_retry_after(
    kv_hook: Any, namespace: str, live_a_then_b: tuple[str, str], emulator: Any
) -> None:
    a, b = live_a_then_b
    rule = emulator.add_fault(method="PUT", path=PUT_VALUE, status=429, headers={"Retry-After": "2"})

    promote(kv_hook, namespace, b)

    assert emulator.fired(rule) == 1
    assert 2.0 in kv_hook.sleeps
    assert_consistent(kv_hook, namespace, b, a)


def test_the_per_key_write_limit_is_waited_out(
    kv_hook: Any, namespace: str, live_a_then_b: tuple[str, str], emulator: Any
) -> None:
    a, b = live_a_then_b
    emulator.configure(kv_write_interval=3600)  # the promotion of A just wrote the key
    kv_hook.write_kv_value(namespace, "other", "x")  # another key is not limited

    with pytest.raises(CloudflareAPIError, match="HTTP 429"):
        promote(kv_hook, namespace, b)  # Retry-After (an hour) is past the retry budget: give up, untouched

    value, metadata = pointer(kv_hook, namespace)
    assert (value, metadata["previous"]) == (a.encode(), None)


def test_a_lost_answer_after_the_write_landed_is_not_sent_again(
    kv_hook: Any, namespace: str, live_a_then_b: tuple[str, str], emulator: Any
) -> None:
    a, b = live_a_then_b
    writes, puts = kv_writes(emulator), len(put_requests(emulator))
    rule = emulator.add_fault(method="PUT", path=PUT_VALUE, action="drop_after_commit")

    assert promote(kv_hook, namespace, b) == a

    assert emulator.fired(rule) == 1
    assert kv_writes(emulator) == writes + 1  # read back, not written twice
    assert len(put_requests(emulator)) == puts + 1
    assert_consistent(kv_hook, namespace, b, a)


def test_a_lost_request_that_never_landed_is_sent_again_whole(
    kv_hook: Any, namespace: str, live_a_then_b: tuple[str, str], emulator: Any
) -> None:
    a, b = live_a_then_b
    writes = kv_writes(emulator)
    rule = emulator.add_fault(method="PUT", path=PUT_VALUE, action="drop")

    assert promote(kv_hook, namespace, b) == a

    assert emulator.fired(rule) == 1
    assert kv_writes(emulator) == writes + 1
    assert_consistent(kv_hook, namespace, b, a)


def test_a_write_that_never_succeeds_leaves_the_pointer_as_it_was(
    kv_hook: Any, namespace: str, live_a_then_b: tuple[str, str], emulator: Any
) -> None:
    a, b = live_a_then_b
    rule = emulator.add_fault(method="PUT", path=PUT_VALUE, status=503, times=10)

    with pytest.raises(CloudflareAPIError, match="HTTP 503"):
        promote(kv_hook, namespace, b)

    assert emulator.fired(rule) == 4  # the first attempt and three retries
    value, metadata = pointer(kv_hook, namespace)
    assert (value, metadata["previous"], metadata["finetune_name"]) == (a.encode(), None, "support-a")


def test_a_task_retry_after_a_landed_write_returns_what_the_first_attempt_would_have(
    make_hook: Any, namespace: str, live_a_then_b: tuple[str, str], emulator: Any
) -> None:
    a, b = live_a_then_b
    no_retries = make_hook("cfai_no_retries", max_retries=0)
    rule = emulator.add_fault(method="PUT", path=PUT_VALUE, action="drop_after_commit")
    with pytest.raises(CloudflareAPIError, match="connection"):
        promote(no_retries, namespace, b)  # the write landed, the task failed
    writes = kv_writes(emulator)

    assert promote(no_retries, namespace, b) == a  # Airflow's retry of the task

    assert emulator.fired(rule) == 1
    assert kv_writes(emulator) == writes
    assert_consistent(no_retries, namespace, b, a)


# -- the hook's KV calls ---------------------------------------------------------------------------


def test_reading_a_missing_key_is_none_but_a_missing_namespace_is_an_error(kv_hook: Any, namespace: str) -> None:
    assert kv_hook.read_kv_value(namespace, "nothing") is None
    assert kv_hook.read_kv_metadata(namespace, "nothing") is None
    with pytest.raises(CloudflareAPIError, match="HTTP 404"):
        kv_hook.read_kv_value("0" * 32, "nothing")
    with pytest.raises(CloudflareAPIError, match="HTTP 404"):
        kv_hook.read_kv_metadata("0" * 32, "nothing")


def test_metadata_over_1024_bytes_is_refused_before_any_call(kv_hook: Any, namespace: str, emulator: Any) -> None:
    calls = len(emulator.state()["requests"])

    with pytest.raises(CloudflareInputError, match="at most 1024"):
        kv_hook.write_kv_value(namespace, KEY, "v", metadata={"pad": "x" * 1100})

    assert len(emulator.state()["requests"]) == calls


def test_a_lost_namespace_create_is_found_by_title(kv_hook: Any, emulator: Any) -> None:
    rule = emulator.add_fault(method="POST", path=r"/storage/kv/namespaces$", action="drop_after_commit")

    created = kv_hook.create_kv_namespace("serving")

    assert emulator.fired(rule) == 1
    assert [ns["id"] for ns in kv_hook.list_kv_namespaces()] == [created["id"]]


def test_a_namespace_create_answered_without_an_id_is_found_by_title(kv_hook: Any, emulator: Any) -> None:
    # A well-formed envelope that lacks the id: the create may be done, so it is looked up, not trusted.
    empty = '{"success": true, "errors": [], "messages": [], "result": {}}'
    rule = emulator.add_fault(method="POST", path=r"/storage/kv/namespaces$", action="garble_after_commit", body=empty)

    created = kv_hook.create_kv_namespace("serving")

    assert emulator.fired(rule) == 1
    assert [ns["id"] for ns in kv_hook.list_kv_namespaces()] == [created["id"]]


def test_namespaces_are_listed_across_pages(kv_hook: Any) -> None:
    made = [kv_hook.create_kv_namespace(f"ns-{i}")["id"] for i in range(7)]

    assert [ns["id"] for ns in kv_hook.list_kv_namespaces(per_page=5)] == made


@pytest.mark.parametrize(
    "body",
    [
        {
            "success": False,
            "errors": [{"code": 10099, "message": "get: 'key not found'"}],
            "messages": [],
            "result": None,
        },
        {"success": False, "errors": [{"code": 10009, "message": "not here"}], "messages": [], "result": None},
    ],
    ids=["by-message", "by-code"],
)
def test_a_404_naming_a_missing_key_is_an_empty_pointer(
    kv_hook: Any, namespace: str, emulator: Any, body: dict[str, Any]
) -> None:
    rule = emulator.add_fault(method="GET", path=r"/values/", status=404, body=body)

    assert kv_hook.read_kv_value(namespace, KEY) is None
    assert emulator.fired(rule) == 1


def test_any_other_404_on_a_read_is_an_error(kv_hook: Any, namespace: str, emulator: Any) -> None:
    body = {"success": False, "errors": [{"code": 7003, "message": "Could not route"}], "messages": [], "result": None}
    rule = emulator.add_fault(method="GET", path=r"/metadata/", status=404, body=body)

    with pytest.raises(CloudflareAPIError, match="7003"):
        kv_hook.read_kv_metadata(namespace, KEY)
    assert emulator.fired(rule) == 1


def test_a_lost_first_write_to_a_new_key_is_sent_again(kv_hook: Any, namespace: str, emulator: Any) -> None:
    rule = emulator.add_fault(method="PUT", path=PUT_VALUE, action="drop")

    kv_hook.write_kv_value(namespace, "fresh", "v", metadata={"previous": None})

    assert emulator.fired(rule) == 1
    assert pointer_of(kv_hook, namespace, "fresh") == (b"v", {"previous": None})


def pointer_of(hook: Any, namespace: str, key: str) -> tuple[bytes | None, Any]:
    return hook.read_kv_value(namespace, key), hook.read_kv_metadata(namespace, key)


@pytest.mark.parametrize("key", [".", "..", "k" * 513], ids=["dot", "dotdot", "too-long"])
def test_keys_cloudflare_refuses_are_refused_before_any_call(kv_hook: Any, emulator: Any, key: str) -> None:
    with pytest.raises(CloudflareInputError, match="at most 512 bytes"):
        kv_hook.read_kv_value("n", key)
    assert emulator.state()["requests"] == []


def put_by_hand(emulator: Any, namespace: str, value: str, metadata: str | None) -> None:
    import requests

    files: dict[str, Any] = {"value": (None, value)}
    if metadata is not None:
        files["metadata"] = (None, metadata)
    url = f"{emulator.base_url}/accounts/{emulator.account_id}/storage/kv/namespaces/{namespace}/values/{KEY}"
    response = requests.put(url, files=files, headers={"Authorization": f"Bearer {emulator.token}"}, timeout=10)
    assert response.status_code == 200, response.text


def test_a_hand_set_pointer_with_odd_metadata_is_promoted_over_and_not_rolled_back(
    kv_hook: Any, namespace: str, finetune: Any, emulator: Any
) -> None:
    put_by_hand(emulator, namespace, "hand-set", '"a string, not an object"')
    with pytest.raises(PromotionCheckError, match="records no 'previous' value"):
        rollback(kv_hook, namespace)

    finetune("support-a")
    assert promote(kv_hook, namespace, "support-a") == "hand-set"


def test_an_empty_pointer_value_counts_as_nothing_live(
    kv_hook: Any, namespace: str, finetune: Any, emulator: Any
) -> None:
    put_by_hand(emulator, namespace, "  ", None)
    finetune("support-a")

    assert promote(kv_hook, namespace, "support-a") is None
    assert pointer(kv_hook, namespace)[1]["previous"] is None


def test_a_previous_value_too_long_for_the_metadata_fails_before_the_write(
    kv_hook: Any, namespace: str, finetune: Any, emulator: Any
) -> None:
    put_by_hand(emulator, namespace, "x" * 1100, None)
    finetune("support-a")
    writes = kv_writes(emulator)

    with pytest.raises(PromotionCheckError, match=r"at most 1024.*the pointer was not changed"):
        promote(kv_hook, namespace, "support-a")
    assert kv_writes(emulator) == writes


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ('{"previous": "ghost"}', "names no 'model'"),
        ('{"previous": "ghost", "model": "@cf/mistral/mistral-7b-instruct-v0.2-lora"}', "'ghost' does not exist"),
        ("INCOMPLETE", "missing its adapter files"),
    ],
    ids=["no-model", "unknown-previous", "previous-without-files"],
)
def test_rollback_checks_the_previous_finetune_before_writing(
    kv_hook: Any, namespace: str, finetune: Any, emulator: Any, metadata: str, message: str
) -> None:
    if metadata == "INCOMPLETE":
        incomplete = finetune("half-uploaded", files=False)
        metadata = f'{{"previous": "{incomplete["id"]}", "model": "{MODEL}"}}'
    put_by_hand(emulator, namespace, "live-one", metadata)
    writes = kv_writes(emulator)

    with pytest.raises(PromotionCheckError, match=message):
        rollback(kv_hook, namespace)
    assert kv_writes(emulator) == writes


@pytest.mark.parametrize(
    ("method", "path", "doing"),
    [("POST", r"/ai/run/", "The canary inference"), ("GET", r"/ai/finetunes$", "Listing the account's finetunes")],
    ids=["canary", "finetune-lookup"],
)
def test_a_403_from_workers_ai_names_its_permission(
    kv_hook: Any, namespace: str, finetune: Any, emulator: Any, method: str, path: str, doing: str
) -> None:
    finetune("support-a")
    body = {"success": False, "errors": [{"code": 10000, "message": "Authentication error"}], "messages": []}
    rule = emulator.add_fault(method=method, path=path, status=403, body=body)

    with pytest.raises(PromotionCheckError, match=f"{doing} was refused .*'Workers AI Read \\(or Write\\)'"):
        promote(kv_hook, namespace, "support-a")

    assert emulator.fired(rule) == 1
    assert kv_writes(emulator) == 0


def test_canary_inputs_that_are_not_a_mapping_fail_as_a_check(kv_hook: Any, namespace: str, finetune: Any) -> None:
    finetune("support-a")

    with pytest.raises(PromotionCheckError, match="canary_inputs: inputs must be a mapping"):
        promote(kv_hook, namespace, "support-a", canary_inputs="hello")


def test_asset_alias_none_adds_no_outlet_and_a_wrong_one_is_refused() -> None:
    from airflow.sdk import AssetAlias

    kwargs = {"finetune": "a", "namespace_id": "n", "key": "k"}
    assert PromoteFinetuneOperator(task_id="p", asset_alias=None, **kwargs).outlets == []
    given = PromoteFinetuneOperator(task_id="q", outlets=[AssetAlias(PROMOTIONS_ALIAS)], **kwargs)
    assert given.outlets == [AssetAlias(PROMOTIONS_ALIAS)]  # not added twice
    with pytest.raises(CloudflareInputError, match="asset_alias must be"):
        RollbackFinetuneOperator(task_id="r", namespace_id="n", key="k", asset_alias=3)


def test_pointer_uris_are_normalised_and_malformed_ones_refused() -> None:
    from airflow.sdk import Asset

    account = "0123456789abcdef0123456789abcdef"
    written = f"cloudflare-workers-ai://{account.upper()}/kv/ns1/support bot"

    assert Asset(uri=written).uri == pointer_uri(account, "ns1", "support bot")
    assert pointer_uri(account, "ns1", "a/b").endswith("/kv/ns1/a%2Fb")
    with pytest.raises(ValueError, match="/kv/<namespace id>/<key>"):
        Asset(uri=f"cloudflare-workers-ai://{account}/kv/ns1/%20")
    with pytest.raises(ValueError, match="key must be a non-empty string"):
        pointer_uri(account, "ns1", " ")


def test_a_lost_write_of_the_same_value_with_new_metadata_is_sent_again(
    kv_hook: Any, namespace: str, emulator: Any
) -> None:
    kv_hook.write_kv_value(namespace, KEY, "v", metadata={"previous": "old"})
    rule = emulator.add_fault(method="PUT", path=PUT_VALUE, action="drop")

    kv_hook.write_kv_value(namespace, KEY, "v", metadata={"previous": "newer"})

    assert emulator.fired(rule) == 1
    assert pointer(kv_hook, namespace) == (b"v", {"previous": "newer"})


def test_asset_alias_none_emits_no_event(kv_hook: Any, namespace: str, finetune: Any) -> None:
    from airflow.sdk.execution_time.context import OutletEventAccessors

    finetune("support-a")
    events = OutletEventAccessors()

    promote(kv_hook, namespace, "support-a", context={"outlet_events": events, **CONTEXT})

    assert not [e for accessor in events._dict.values() for e in accessor.asset_alias_events]
