"""The batch's inputs: JSONL, one model input (a JSON object) per line, read as a stream.

A file of any size costs the memory of one line. Every line is checked before the first model call
(:func:`scan_inputs`); item ``index`` is always line ``index + 1`` (a blank line is an error).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_cfai.batch import _files
from airflow_provider_cfai.exceptions import CloudflareInputError

__all__ = ["INPUTS_SUFFIX", "InputsSummary", "check_prompt", "iter_inputs", "scan_inputs", "split_item", "stage_inputs"]

#: Inline input lists are staged next to the output under this suffix.
INPUTS_SUFFIX = ".inputs.jsonl"

_EXAMPLE = '{"prompt": "..."}'


@dataclass(frozen=True)
class InputsSummary:
    count: int
    sha256: str


def iter_inputs(path: str, start: int = 0) -> Generator[tuple[int, dict[str, Any]], None, None]:
    """Stream ``(index, item)`` from a JSONL file, from item ``start`` on.

    :raises CloudflareInputError: the file is missing, or a line is blank or not a JSON object (the
        message names the line number).
    """
    where = _files.describe(path)
    for line_no, raw in _lines(path, where):
        if line_no > start:
            yield line_no - 1, _parse_input(raw, line_no, where)


def scan_inputs(path: str, *, prompts: bool = False) -> InputsSummary:
    """Check every line of a JSONL inputs file; return its item count and the file's digest.

    :param prompts: also check that each item is a text-generation input (:func:`check_prompt`).
    """
    where = _files.describe(path)
    digest = hashlib.sha256()
    count = 0
    for line_no, raw in _lines(path, where):
        digest.update(raw)
        item = _parse_input(raw, line_no, where)
        if prompts:
            check_prompt(item, f"{where} line {line_no}")
        count += 1
    return InputsSummary(count, digest.hexdigest())


def _lines(path: str, where: str) -> Iterator[tuple[int, bytes]]:
    try:
        with _files.open_read(path) as handle:
            yield from enumerate(handle, start=1)
    except FileNotFoundError:
        raise CloudflareInputError(f"inputs file {where} does not exist") from None
    except IsADirectoryError:
        raise CloudflareInputError(
            f"inputs {where} is a folder; give a JSONL file (one JSON object per line)"
        ) from None


def _parse_input(raw: bytes, line_no: int, where: str) -> dict[str, Any]:
    if not raw.strip():
        # Counted, not skipped, would shift every later result's index off its line: refuse it.
        raise CloudflareInputError(
            f"{where} line {line_no} is blank; every line must be one input (a result's index is its "
            "line number - 1), so remove the blank line"
        )
    try:
        item = json.loads(raw)
    except UnicodeDecodeError:
        raise CloudflareInputError(f"{where} line {line_no}: not UTF-8 text; inputs must be UTF-8 JSONL") from None
    except json.JSONDecodeError as exc:
        raise CloudflareInputError(
            f"{where} line {line_no}: not valid JSON ({exc.msg} at column {exc.colno}); "
            f"each line must be one JSON object such as {_EXAMPLE}"
        ) from None
    return _check_item(item, f"{where} line {line_no}")


def _check_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise CloudflareInputError(f"{where}: expected a JSON object such as {_EXAMPLE}, got {_kind(item)}")
    reference = item.get("external_reference")
    if reference is not None and not isinstance(reference, str):
        raise CloudflareInputError(f"{where}: external_reference must be a string, got {_kind(reference)}")
    return dict(item)


def check_prompt(item: Mapping[str, Any], where: str) -> None:
    """Refuse an item a text-generation model would answer with 5006: it needs a string ``prompt``
    or a non-empty ``messages`` list of ``{"role": str, "content": str}``."""
    prompt, messages = item.get("prompt"), item.get("messages")
    if prompt is None and messages is None:
        keys = ", ".join(sorted(map(str, item))) or "none"
        raise CloudflareInputError(
            f"{where}: a text-generation input needs 'prompt' (a string) or 'messages' (a list of "
            f"{{'role': ..., 'content': ...}}); this one has keys: {keys}"
        )
    if prompt is not None and not isinstance(prompt, str):
        raise CloudflareInputError(f"{where}: 'prompt' must be a string, got {_kind(prompt)}")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise CloudflareInputError(
                f"{where}: 'messages' must be a non-empty list of {{'role': ..., 'content': ...}}, "
                f"got {_kind(messages)}"
            )
        for position, message in enumerate(messages):
            if not (
                isinstance(message, Mapping)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise CloudflareInputError(
                    f"{where}: messages[{position}] must be an object with string 'role' and 'content'"
                )


def _kind(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)


def split_item(item: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Split an input item into the model's input and its ``external_reference`` (if any).

    The direct engine sends the model input alone; the queue engine sends the item whole (the Batch
    API echoes ``external_reference`` back).
    """
    body = dict(item)
    reference = body.pop("external_reference", None)
    return body, reference if isinstance(reference, str) else None


def stage_inputs(items: Sequence[Any], output: str, *, prompts: bool = False) -> str:
    """Write an inline list of inputs as JSONL next to ``output``; return that file's location.

    The trigger's kwargs then carry a path, never the inputs themselves.
    """
    lines = []
    for index, item in enumerate(items):
        checked = _check_item(item, f"inputs[{index}]")
        if prompts:
            check_prompt(checked, f"inputs[{index}]")
        try:
            lines.append(json.dumps(checked, ensure_ascii=False, separators=(",", ":")))
        except (TypeError, ValueError) as exc:
            raise CloudflareInputError(f"inputs[{index}]: not JSON-serializable ({exc})") from None
    location = output + INPUTS_SUFFIX
    _files.write_text(location, "".join(line + "\n" for line in lines))
    return location
