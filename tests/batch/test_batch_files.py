"""Batch inputs, output records, the ordered (resumable) writer and the manifest: no HTTP, no Airflow DB."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cfai.batch.inputs import iter_inputs, scan_inputs, split_item, stage_inputs
from airflow_provider_cfai.batch.manifest import build_manifest
from airflow_provider_cfai.batch.records import failure_record, iter_outputs, success_record
from airflow_provider_cfai.batch.writer import OrderedResultWriter
from airflow_provider_cfai.exceptions import AirflowFailException, CloudflareInputError


def write_lines(path: Path, *lines: str) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def ok(index: int, tokens: int = 0) -> dict[str, Any]:
    usage = {"prompt_tokens": tokens, "completion_tokens": 2 * tokens, "total_tokens": 3 * tokens}
    return success_record(index, f"ref-{index}", {"response": f"answer {index}", "usage": usage})


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A private folder on fsspec's in-memory filesystem: stands in for object storage."""
    fsspec = pytest.importorskip("fsspec")
    root = f"memory://cfai-tests/{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root.removeprefix("memory://")):
        fs.rm(root.removeprefix("memory://"), recursive=True)


# -- inputs -------------------------------------------------------------------------------------------


def test_inputs_stream_from_the_start_index(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", '{"prompt": "a"}', '{"prompt": "b"}', '{"prompt": "c"}')

    assert list(iter_inputs(path)) == [(0, {"prompt": "a"}), (1, {"prompt": "b"}), (2, {"prompt": "c"})]
    assert list(iter_inputs(path, start=2)) == [(2, {"prompt": "c"})]
    assert scan_inputs(path).count == 3


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_line_is_refused_naming_it_so_every_index_is_its_line_number_minus_one(
    tmp_path: Path, blank: str
) -> None:
    path = write_lines(tmp_path / "in.jsonl", '{"prompt": "a"}', blank, '{"prompt": "b"}')

    with pytest.raises(CloudflareInputError, match=r"in\.jsonl line 2 is blank; .*remove the blank line"):
        scan_inputs(path)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        pytest.param({"text": "hi"}, r"a text-generation input needs 'prompt' .*keys: text", id="text"),
        pytest.param({"prompt": 42}, r"'prompt' must be a string, got a number", id="prompt-number"),
        pytest.param({"messages": "x"}, r"'messages' must be a non-empty list", id="messages-string"),
        pytest.param({"messages": []}, r"'messages' must be a non-empty list", id="messages-empty"),
        pytest.param({"messages": [{"role": "user"}]}, r"messages\[0\] must be an object", id="message-shape"),
    ],
)
def test_text_generation_inputs_are_checked_naming_the_line(tmp_path: Path, item: dict[str, Any], message: str) -> None:
    path = write_lines(tmp_path / "in.jsonl", '{"prompt": "ok"}', json.dumps(item))

    assert scan_inputs(path).count == 2  # shape not asked for: any object passes
    with pytest.raises(CloudflareInputError, match=rf"in\.jsonl line 2: {message}"):
        scan_inputs(path, prompts=True)
    with pytest.raises(CloudflareInputError, match=rf"inputs\[1\]: {message}"):
        stage_inputs([{"prompt": "ok"}, item], str(tmp_path / "out.jsonl"), prompts=True)


def test_inputs_are_read_lazily_one_line_at_a_time(tmp_path: Path) -> None:
    # A bad line after the first two: taking two items must not reach it.
    path = write_lines(tmp_path / "in.jsonl", '{"prompt": "a"}', '{"prompt": "b"}', "not json")

    items = iter_inputs(path)
    assert [next(items), next(items)] == [(0, {"prompt": "a"}), (1, {"prompt": "b"})]
    with pytest.raises(CloudflareInputError, match="line 3"):
        next(items)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        pytest.param('{"prompt": "a"', r"line 2: not valid JSON", id="truncated-json"),
        pytest.param('["prompt", "a"]', r"line 2: expected a JSON object such as .*, got a list", id="list"),
        pytest.param('"just a prompt"', r"line 2: expected a JSON object .*, got a string", id="string"),
        pytest.param(
            '{"prompt": "a", "external_reference": 7}', r"line 2: external_reference must be a string", id="ref"
        ),
    ],
)
def test_a_bad_inputs_line_fails_the_scan_naming_its_line(tmp_path: Path, bad_line: str, message: str) -> None:
    path = write_lines(tmp_path / "in.jsonl", '{"prompt": "ok"}', bad_line, '{"prompt": "ok"}')

    with pytest.raises(CloudflareInputError, match=message) as raised:
        scan_inputs(path)
    assert isinstance(raised.value, AirflowFailException)  # permanent: no Airflow retries
    assert str(tmp_path) in str(raised.value)


def test_a_missing_inputs_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(CloudflareInputError, match=r"inputs file .*nope\.jsonl does not exist"):
        scan_inputs(str(tmp_path / "nope.jsonl"))


def test_the_scan_digest_changes_with_the_content(tmp_path: Path) -> None:
    first = scan_inputs(write_lines(tmp_path / "a.jsonl", '{"prompt": "a"}'))
    same = scan_inputs(write_lines(tmp_path / "b.jsonl", '{"prompt": "a"}'))
    other = scan_inputs(write_lines(tmp_path / "c.jsonl", '{"prompt": "b"}'))

    assert first == same
    assert first.sha256 != other.sha256


def test_inline_inputs_are_staged_as_jsonl_next_to_the_output(tmp_path: Path) -> None:
    output = str(tmp_path / "results" / "out.jsonl")

    staged = stage_inputs([{"prompt": "a", "external_reference": "q1"}, {"messages": []}], output)

    assert staged == output + ".inputs.jsonl"
    assert list(iter_inputs(staged)) == [(0, {"prompt": "a", "external_reference": "q1"}), (1, {"messages": []})]


def test_staging_refuses_a_non_object_item_naming_its_index(tmp_path: Path) -> None:
    with pytest.raises(CloudflareInputError, match=r"inputs\[1\]: expected a JSON object"):
        stage_inputs([{"prompt": "a"}, "b"], str(tmp_path / "out.jsonl"))


def test_split_item_keeps_external_reference_out_of_the_model_input() -> None:
    assert split_item({"prompt": "a", "external_reference": "q1"}) == ({"prompt": "a"}, "q1")
    assert split_item({"prompt": "a"}) == ({"prompt": "a"}, None)


# -- the writer -----------------------------------------------------------------------------------------


def test_records_are_written_in_input_order_whatever_order_they_complete_in(tmp_path: Path) -> None:
    output = str(tmp_path / "out.jsonl")

    async def run() -> None:
        async with OrderedResultWriter(output) as writer:
            for index in (2, 0, 3, 1):
                await writer.add(index, ok(index))
            assert writer.next_index == 4

    asyncio.run(run())

    records = list(iter_outputs(output))
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert records[2] == {
        "index": 2,
        "external_reference": "ref-2",
        "success": True,
        "result": {"response": "answer 2", "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}},
    }


def test_an_early_record_waits_until_the_records_before_it_are_written(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    with OrderedResultWriter(str(output)) as writer:
        writer.add_sync(1, ok(1))
        assert output.read_text() == ""  # item 0 is not done: nothing may be written yet
        writer.add_sync(0, ok(0))
        assert output.read_text().count("\n") == 2


def test_a_record_is_written_once(tmp_path: Path) -> None:
    with OrderedResultWriter(str(tmp_path / "out.jsonl")) as writer:
        writer.add_sync(0, ok(0))
        with pytest.raises(ValueError, match="already written"):
            writer.add_sync(0, ok(0))
        with pytest.raises(ValueError, match="carries index"):
            writer.add_sync(1, ok(2))


def test_resume_keeps_the_complete_prefix_and_cuts_a_torn_last_line(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    with OrderedResultWriter(str(output)) as writer:
        for index in range(3):
            writer.add_sync(index, ok(index, tokens=1))
    with output.open("ab") as handle:
        handle.write(b'{"index": 3, "external_reference": null, "succ')  # the crash mid-write

    writer = OrderedResultWriter(str(output))
    assert writer.start_index == 3
    assert (writer.tally.succeeded, writer.tally.total_tokens) == (3, 9)  # resumed records count
    with writer:
        writer.add_sync(3, failure_record(3, None, status=400, codes=[5006], message="bad input"))

    records = list(iter_outputs(str(output)))
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert records[3]["error"] == {"status": 400, "codes": [5006], "message": "bad input"}


def test_resume_stops_at_a_line_that_is_not_the_next_record(tmp_path: Path) -> None:
    output = write_lines(
        tmp_path / "out.jsonl",
        json.dumps(ok(0)),
        json.dumps(ok(1)),
        json.dumps(ok(5)),  # from some other batch: everything from here is redone
        json.dumps(ok(3)),
    )

    writer = OrderedResultWriter(output)

    assert writer.start_index == 2
    writer.close_sync()
    assert [r["index"] for r in iter_outputs(output)] == [0, 1]


def test_a_remote_output_is_spooled_and_uploaded_on_close(memory_root: str) -> None:
    import fsspec

    output = f"{memory_root}/eval/out.jsonl"
    fs = fsspec.filesystem("memory")
    writer = OrderedResultWriter(output)
    writer.open_sync()
    writer.add_sync(0, ok(0))
    assert not fs.exists(output.removeprefix("memory://"))  # object stores cannot append: nothing yet
    writer.close_sync()

    assert [r["index"] for r in iter_outputs(output)] == [0]


def test_a_remote_output_resumes_from_what_the_last_run_uploaded(memory_root: str) -> None:
    output = f"{memory_root}/out.jsonl"
    with OrderedResultWriter(output) as first:
        first.add_sync(0, ok(0))
        first.add_sync(1, ok(1))

    with OrderedResultWriter(output) as second:
        assert second.start_index == 2
        second.add_sync(2, ok(2))

    assert [r["index"] for r in iter_outputs(output)] == [0, 1, 2]


def test_inputs_can_be_staged_and_read_on_object_storage(memory_root: str) -> None:
    staged = stage_inputs([{"prompt": "a"}], f"{memory_root}/out.jsonl")

    assert staged.startswith("memory://")
    assert list(iter_inputs(staged)) == [(0, {"prompt": "a"})]


# -- the manifest ---------------------------------------------------------------------------------------


def test_manifest_counts_failures_and_tokens_and_hides_url_secrets(tmp_path: Path) -> None:
    with OrderedResultWriter(str(tmp_path / "out.jsonl")) as writer:
        writer.add_sync(0, ok(0, tokens=2))
        writer.add_sync(1, failure_record(1, None, status=400, codes=[5006], message="boom"))
        writer.add_sync(2, ok(2, tokens=3))
        writer.add_sync(3, ok(3, tokens=0))

    manifest = build_manifest(
        engine="direct",
        model="@cf/meta/llama-3.1-8b-instruct",
        lora=None,
        output="s3://user:secret@bucket/eval/out.jsonl?X-Amz-Signature=abc",
        total=4,
        tally=writer.tally,
        resumed_from=1,
    )

    assert manifest == {
        "engine": "direct",
        "model": "@cf/meta/llama-3.1-8b-instruct",
        "lora": None,
        "output": "s3://bucket/eval/out.jsonl",
        "total": 4,
        "succeeded": 3,
        "failed": 1,
        "failure_ratio": 0.25,
        "usage": {"prompt_tokens": 5, "completion_tokens": 10, "total_tokens": 15},
        "request_ids": [],
        "resumed_from": 1,
        "status": "success",
        "error_codes": {"5006": 1},
        "transient_failures": 0,
    }
    assert len(json.dumps(manifest)) < 1024  # small: never the results


def test_a_run_that_stops_early_keeps_the_final_records_after_a_transient_one(tmp_path: Path) -> None:
    output = str(tmp_path / "out.jsonl")
    with OrderedResultWriter(output) as writer:
        writer.add_sync(0, ok(0))
        writer.add_sync(1, failure_record(1, None, status=503, message="busy", transient=True))
        writer.add_sync(2, ok(2))

    with OrderedResultWriter(output) as again:
        assert again.start_index == 1  # item 1 is to be sent again
        assert [r["index"] for r in again.carried()] == [1, 2]
        # the run stops before item 1 has an answer (a deadline, say)

    records = list(iter_outputs(output))
    assert [r["index"] for r in records] == [0, 1, 2]  # item 2's answer was not lost
    assert records[1]["error"]["transient"] is True
