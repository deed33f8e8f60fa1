"""Find a LoRA adapter folder and check it against Cloudflare's rules before any API call.

Cloudflare creates a finetune first and receives its files afterwards, and a finetune cannot be
deleted: an adapter it would refuse has to be caught here, before the create call. Only the config
and the safetensors header are read, never the tensors, so a 300 MB adapter costs a few kilobytes.
:func:`prepare_adapter` turns PEFT's raw ``save_pretrained`` output into what Cloudflare accepts.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias, cast

from airflow_provider_cfai._urls import redact_url

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cfai.exceptions import AdapterValidationError

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FILE_NAMES",
    "ADAPTER_WEIGHTS",
    "DEFAULT_LIMITS",
    "AdapterFile",
    "AdapterLimits",
    "AdapterSource",
    "LoraAdapter",
    "guess_family",
    "load_adapter",
    "prepare_adapter",
]

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILE_NAMES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)  # upload order
#: What older PEFT versions (and ``safe_serialization=False``) write instead of safetensors.
PICKLED_WEIGHTS = "adapter_model.bin"
FAMILIES = ("gemma", "llama", "mistral")

#: What :func:`load_adapter` accepts: a local folder, an fsspec URL, an ``ObjectStoragePath`` (or any
#: object with fsspec ``fs`` and ``path`` attributes), or an adapter already loaded.
AdapterSource: TypeAlias = "str | os.PathLike[str] | ObjectStoragePath | LoraAdapter"

# A PEFT config is a few kilobytes; anything near this is the wrong file, not worth reading whole.
_MAX_CONFIG_BYTES = 1_000_000
# Bits per element, as the safetensors reference reader defines them (sub-byte floats included).
_DTYPE_BITS = {
    **dict.fromkeys(("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0"), 8),
    **dict.fromkeys(("I16", "U16", "F16", "BF16"), 16),
    **dict.fromkeys(("I32", "U32", "F32"), 32),
    **dict.fromkeys(("I64", "U64", "F64", "C64"), 64),
    **{"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6},
}


@dataclass(frozen=True)
class AdapterLimits:
    """Cloudflare's limits on a LoRA adapter, as documented in April 2026.

    They have changed before (in 2024: files under 100 MB, ``r`` at most 8); pass your own when
    Cloudflare changes them again before this provider does.

    :param max_file_bytes: largest size of each file, in bytes (decimal: 300 MB = 300,000,000).
    :param max_rank: largest LoRA rank ``r``.
    :param model_types: accepted values of ``model_type`` in ``adapter_config.json``.
    :param max_header_bytes: largest safetensors header; the reference reader refuses bigger ones.
    """

    max_file_bytes: int = 300_000_000
    max_rank: int = 32
    model_types: frozenset[str] = frozenset({"mistral", "gemma", "llama"})
    max_header_bytes: int = 100_000_000


DEFAULT_LIMITS = AdapterLimits()


@dataclass(frozen=True)
class AdapterFile:
    """One adapter file: what messages need to name it, and what an upload needs to stream it.

    :param name: ``adapter_config.json`` or ``adapter_model.safetensors``.
    :param location: where it is, for people; URLs lose their user info and query string.
    :param size: size in bytes when it was checked.
    :param path: its path inside ``fs``.
    :param fs: the fsspec filesystem holding it; kept out of ``repr`` as it may hold credentials.
    """

    name: str
    location: str
    size: int
    path: str = field(repr=False)
    fs: Any = field(repr=False, compare=False)

    def open(self) -> BinaryIO:
        """Open for streaming binary reads; use it as a context manager."""
        return cast("BinaryIO", self.fs.open(self.path, "rb"))


@dataclass(frozen=True)
class LoraAdapter:
    """A checked adapter folder, as returned by :func:`load_adapter`."""

    location: str
    config: AdapterFile
    weights: AdapterFile
    rank: int
    model_type: str
    base_model: str | None = None

    @property
    def files(self) -> tuple[AdapterFile, AdapterFile]:
        """Both files, in the order Cloudflare expects them uploaded."""
        return (self.config, self.weights)


def load_adapter(source: AdapterSource, *, limits: AdapterLimits = DEFAULT_LIMITS) -> LoraAdapter:
    """Find the adapter in ``source`` and check it, raising on the first broken rule.

    :param source: a local folder (``str`` or path-like), an fsspec URL (``s3://bucket/adapter``), an
        ``ObjectStoragePath``, or a :class:`LoraAdapter` (returned as is).
    :param limits: the limits to enforce; Cloudflare's current ones by default.
    :raises AdapterValidationError: naming the file, the field and the limit broken.
    """
    if isinstance(source, LoraAdapter):
        return source
    fs, folder, location = _resolve(source)
    config, weights = _find_files(fs, folder, location, limits)
    return _checked(location, config, weights, limits)


def prepare_adapter(
    source: AdapterSource,
    *,
    model_type: str | None = None,
    in_place: bool = False,
    limits: AdapterLimits = DEFAULT_LIMITS,
) -> LoraAdapter:
    """Make a raw PEFT ``save_pretrained`` folder acceptable to Cloudflare, then check it.

    PEFT writes no ``model_type`` and Cloudflare requires one: it is taken from ``model_type``, or
    else inferred from the config's ``base_model_name_or_path`` (the inference is logged). The folder
    is not modified: the completed config is served from memory and the weights stream from the
    source at upload time, so nothing is copied. A pickled ``adapter_model.bin`` is refused with a
    hint on converting it (this provider does not load pickles, nor depend on torch).

    :param source: as for :func:`load_adapter`: a local folder, an fsspec URL or an ``ObjectStoragePath``.
    :param model_type: ``"mistral"``, ``"gemma"`` or ``"llama"``; replaces a different value in the file.
    :param in_place: write the completed ``adapter_config.json`` back into the folder instead.
    :param limits: the limits to enforce; Cloudflare's current ones by default.
    :return: the checked adapter, ready for upload.
    :raises AdapterValidationError: naming the file, the field and the fix.
    """
    if isinstance(source, LoraAdapter):
        return source
    allowed = "|".join(f'"{name}"' for name in sorted(limits.model_types))
    if model_type is not None and model_type not in limits.model_types:
        raise _invalid(
            ADAPTER_CONFIG,
            "model_type",
            f"{_show(model_type)} is not supported; Cloudflare accepts {allowed}"
            + unsupported_family_hint(model_type, limits.model_types),
        )
    fs, folder, location = _resolve(source)
    config_file, weights = _find_files(fs, folder, location, limits)
    config = _read_config(config_file)
    present = config.get("model_type")
    base_model = config.get("base_model_name_or_path")
    chosen = model_type or (present if isinstance(present, str) and present in limits.model_types else None)
    if chosen is None and present is None:
        chosen = guess_family(base_model if isinstance(base_model, str) else None, limits.model_types)
        if chosen is None:
            raise _invalid(
                ADAPTER_CONFIG,
                "model_type",
                f"missing, and base_model_name_or_path {_show(base_model)} does not name a model family; "
                f"pass model_type={allowed}" + unsupported_family_hint(base_model, limits.model_types),
            )
        log.info(
            "%s has no model_type; using %r, inferred from base_model_name_or_path %r", location, chosen, base_model
        )
    if chosen is None or chosen == present:
        return _checked(location, config_file, weights, limits)  # invalid values fail there, as usual
    if present is not None:
        log.warning("%s says model_type %r; using %r as asked", location, present, chosen)
    completed = (json.dumps({**config, "model_type": chosen}, indent=2) + "\n").encode()
    log.info("Adding model_type %r to %s (%s)", chosen, config_file.location, "in place" if in_place else "in memory")
    if in_place:
        with fs.open(config_file.path, "wb") as fh:
            fh.write(completed)
        config_file, weights = _find_files(fs, folder, location, limits)
    else:
        config_file = AdapterFile(
            ADAPTER_CONFIG,
            f"{config_file.location} (completed in memory)",
            len(completed),
            ADAPTER_CONFIG,
            _InMemory(completed),
        )
    return _checked(location, config_file, weights, limits)


def unsupported_family_hint(text: object, allowed: Iterable[str] = FAMILIES) -> str:
    """What to do when ``text`` (a ``model_type`` or a base model) names Qwen, which Cloudflare's
    ``model_type`` cannot express; ``""`` otherwise."""
    if not isinstance(text, str) or "qwen" not in text.lower() or "qwen" in allowed:
        return ""
    return (
        ". Qwen: Cloudflare's adapter_config.json takes model_type mistral, gemma or llama only and documents "
        "none for Qwen, so a Qwen LoRA cannot be uploaded (the catalog's LoRA-capable "
        "@cf/qwen/qwen2.5-coder-32b-instruct included). Train the adapter from a Mistral, Gemma or Llama base "
        "model (e.g. mistralai/Mistral-7B-Instruct-v0.2 for @cf/mistral/mistral-7b-instruct-v0.2-lora) and "
        "pass that family as model_type"
    )


def guess_family(text: str | None, families: Iterable[str] = FAMILIES) -> str | None:
    """The one model family named in ``text`` (a model name or path), or ``None`` if none or several.

    ``"mistralai/Mistral-7B-Instruct-v0.2"`` gives ``"mistral"``, ``"@cf/google/gemma-3-12b-it"``
    gives ``"gemma"``, ``"./checkpoints/run-7"`` gives ``None``.
    """
    lowered = (text or "").lower()
    found = {family for family in families if family in lowered}
    return found.pop() if len(found) == 1 else None


class _InMemory:
    """Just enough of an fsspec filesystem to stream bytes held in memory to an upload."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def open(self, path: str, mode: str = "rb") -> BinaryIO:
        return io.BytesIO(self.data)


def _find_files(fs: Any, folder: str, location: str, limits: AdapterLimits) -> tuple[AdapterFile, AdapterFile]:
    if not fs.isdir(folder):
        what = "is not a folder" if fs.exists(folder) else "does not exist"
        raise _invalid(location, "location", f"{what}; expected a folder holding {_BOTH}")
    infos: dict[str, dict[str, Any]] = {}
    for name in ADAPTER_FILE_NAMES:
        with contextlib.suppress(FileNotFoundError):
            infos[name] = fs.info(f"{folder.rstrip('/')}/{name}")
    if ADAPTER_WEIGHTS not in infos and fs.exists(f"{folder.rstrip('/')}/{PICKLED_WEIGHTS}"):
        raise _invalid(
            PICKLED_WEIGHTS, "file", f"found in {location}, but Cloudflare accepts only {ADAPTER_WEIGHTS}; {_CONVERT}"
        )
    missing = [name for name in ADAPTER_FILE_NAMES if name not in infos]
    if missing:
        raise _invalid(" and ".join(missing), "file", f"not found in {location}; Cloudflare needs {_BOTH}")
    config, weights = (_file(fs, folder, location, name, infos[name], limits) for name in ADAPTER_FILE_NAMES)
    return config, weights


def _checked(location: str, config: AdapterFile, weights: AdapterFile, limits: AdapterLimits) -> LoraAdapter:
    settings = _read_config(config)
    base_model = settings.get("base_model_name_or_path")
    base_model = base_model if isinstance(base_model, str) and base_model else None
    model_type = _model_type(settings, base_model, limits)
    rank = _rank("r", settings.get("r"), limits)
    rank_pattern = settings.get("rank_pattern")  # PEFT's per-module overrides of r
    for module, module_rank in rank_pattern.items() if isinstance(rank_pattern, dict) else ():
        _rank(f"rank_pattern.{module}", module_rank, limits)
    _check_safetensors(weights, limits)
    return LoraAdapter(location, config, weights, rank, model_type, base_model)


_BOTH = f"both {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} (other files are ignored)"
_CONVERT = (
    "re-save it with model.save_pretrained(folder, safe_serialization=True), or convert it with "
    '`python -c "import torch; from safetensors.torch import save_file; '
    f"save_file(torch.load('{PICKLED_WEIGHTS}'), '{ADAPTER_WEIGHTS}')\"`"
)


def _invalid(file_name: str, field: str, problem: str) -> AdapterValidationError:
    # exceptions.py imports Airflow; a DAG file importing this module should not pay for that.
    from airflow_provider_cfai.exceptions import AdapterValidationError

    return AdapterValidationError(file_name, field, problem)


def _resolve(source: object) -> tuple[Any, str, str]:
    """Return the filesystem, the folder's path in it, and the folder's location for messages."""
    fs = getattr(source, "fs", None)
    if hasattr(source, "path") and callable(getattr(fs, "info", None)) and callable(getattr(fs, "open", None)):
        return fs, str(source.path), redact_url(str(source))  # type: ignore[attr-defined]
    folder = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if not isinstance(folder, str):
        raise _invalid(
            "adapter folder",
            "location",
            "expected a folder path, an fsspec URL, an ObjectStoragePath or a LoraAdapter, "
            f"got {type(source).__name__}",
        )
    if "://" not in folder and "::" not in folder:
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), os.path.abspath(folder), os.path.abspath(folder)
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(folder)
    except (ImportError, ValueError) as exc:  # unknown protocol, or its package is not installed
        raise _invalid(redact_url(folder), "location", f"cannot open this URL: {exc}") from exc
    return fs, str(path), redact_url(folder)


def _file(fs: Any, folder: str, location: str, name: str, info: dict[str, Any], limits: AdapterLimits) -> AdapterFile:
    size = info.get("size")
    if info.get("type") != "file":
        raise _invalid(name, "file", f"is a {info.get('type')}, not a file, in {location}")
    if not isinstance(size, int):
        raise _invalid(name, "size", f"the storage at {location} does not report the file's size")
    if size == 0:
        raise _invalid(name, "size", "the file is empty (0 bytes)")
    if size > limits.max_file_bytes:
        raise _invalid(
            name,
            "size",
            f"{_bytes(size)} is above Cloudflare's limit of {_bytes(limits.max_file_bytes)} per file",
        )
    where = f"{location.rstrip('/')}/{name}"
    return AdapterFile(name, where, size, f"{folder.rstrip('/')}/{name}", fs)


def _read_config(file: AdapterFile) -> dict[str, Any]:
    with file.open() as fh:
        raw = fh.read(_MAX_CONFIG_BYTES + 1)
    if len(raw) > _MAX_CONFIG_BYTES:
        raise _invalid(ADAPTER_CONFIG, "size", f"above {_bytes(_MAX_CONFIG_BYTES)}; a PEFT config is a few kilobytes")
    config = _parse_json(ADAPTER_CONFIG, "json", raw)
    if not isinstance(config, dict):
        raise _invalid(ADAPTER_CONFIG, "json", f"expected a JSON object, got {_show(config)}")
    return config


def _rank(field: str, value: object, limits: AdapterLimits) -> int:
    top = limits.max_rank
    if value is None:
        raise _invalid(ADAPTER_CONFIG, field, f"missing; set it to the LoRA rank (1 to {top})")
    if type(value) is not int:
        raise _invalid(ADAPTER_CONFIG, field, f"must be a whole number from 1 to {top}, got {_show(value)}")
    if value > top:
        raise _invalid(
            ADAPTER_CONFIG,
            field,
            f"rank {value} is above Cloudflare's limit of {top}; retrain with r <= {top}",
        )
    if value < 1:
        raise _invalid(ADAPTER_CONFIG, field, f"rank {value} is below 1; a LoRA rank is 1 to {top}")
    return value


def _model_type(config: dict[str, Any], base_model: str | None, limits: AdapterLimits) -> str:
    value = config.get("model_type")
    allowed = "|".join(f'"{name}"' for name in sorted(limits.model_types))
    if value is None:
        guess = guess_family(base_model, limits.model_types)
        hint = f' ("{guess}" for base model {base_model})' if guess else ""
        raise _invalid(
            ADAPTER_CONFIG,
            "model_type",
            "missing; Cloudflare requires it and PEFT does not write it: "
            f'add "model_type": {allowed}{hint} to {ADAPTER_CONFIG}, or let prepare_adapter() add it '
            "without editing the file (CreateFinetuneOperator(prepare_adapter=True))"
            + unsupported_family_hint(base_model, limits.model_types),
        )
    if not isinstance(value, str) or value not in limits.model_types:
        raise _invalid(
            ADAPTER_CONFIG,
            "model_type",
            f"{_show(value)} is not supported; Cloudflare accepts {allowed}"
            + unsupported_family_hint(value, limits.model_types),
        )
    return value


def _check_safetensors(file: AdapterFile, limits: AdapterLimits) -> None:
    name, size = ADAPTER_WEIGHTS, file.size
    if size < 8:
        raise _invalid(name, "header", f"the file is {size} bytes; a safetensors file starts with an 8-byte length")
    with file.open() as fh:
        (length,) = struct.unpack("<Q", _read_exactly(fh, 8))
        problem = None
        if length == 0:
            problem = "header length is 0"
        elif length > limits.max_header_bytes:
            problem = f"header length {length:,} bytes is above the limit of {limits.max_header_bytes:,} bytes"
        elif 8 + length > size:
            problem = f"header length {length:,} bytes runs past the end of the {size:,}-byte file"
        if problem:
            raise _invalid(name, "header", f"{problem}; is this a safetensors file?")
        raw = _read_exactly(fh, length)
    if len(raw) < length:
        raise _invalid(name, "header", f"the file ended inside its {length:,}-byte header")
    header = _parse_json(name, "header", raw)
    if not isinstance(header, dict):
        raise _invalid(name, "header", f"expected a JSON object, got {_show(header)}")
    metadata = header.pop("__metadata__", None)  # null is allowed: the reference reader treats it as absent
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise _invalid(name, "__metadata__", f"must map names to strings, got {_show(metadata)}")
    if not header:
        raise _invalid(name, "tensors", "the header lists no tensors; the adapter is empty")
    data_size = size - 8 - length
    spans = sorted((*_tensor_span(tensor, info, data_size), tensor) for tensor, info in header.items())
    end = 0
    for begin, stop, tensor in spans:
        if begin != end:  # the reference reader wants tensors back to back, no gaps, no overlap
            raise _invalid(name, f"tensor {tensor}", f"data starts at byte {begin:,}, expected {end:,}")
        end = stop
    if end != data_size:
        raise _invalid(
            name, "tensors", f"tensor data ends at byte {end:,} of {data_size:,}; the file has trailing bytes"
        )


def _tensor_span(tensor: str, info: object, data_size: int) -> tuple[int, int]:
    def bad(problem: str) -> AdapterValidationError:
        return _invalid(ADAPTER_WEIGHTS, f"tensor {tensor}", problem)

    if not isinstance(info, dict):
        raise bad(f"expected an object with dtype, shape and data_offsets, got {_show(info)}")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPE_BITS:
        raise bad(f"dtype {_show(dtype)} is not a safetensors dtype ({', '.join(_DTYPE_BITS)})")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"shape must be a list of non-negative integers, got {_show(shape)}")
    pair = isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
    begin, end = cast("list[int]", offsets) if pair else (-1, -1)
    if not 0 <= begin <= end:
        raise bad(f"data_offsets must be [begin, end] with 0 <= begin <= end, got {_show(offsets)}")
    if end > data_size:
        raise bad(f"data_offsets end at byte {end:,}, past the {data_size:,} data bytes; the file is truncated")
    if math.prod(shape) * _DTYPE_BITS[dtype] != (end - begin) * 8:
        raise bad(f"shape {shape} of {dtype} does not fit the {end - begin:,} bytes of data_offsets {offsets}")
    return begin, end


def _read_exactly(fh: BinaryIO, count: int) -> bytes:
    chunks, left = [], count
    while left:
        chunk = fh.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _parse_json(file_name: str, field: str, raw: bytes) -> object:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _invalid(file_name, field, f"not valid UTF-8 (byte {exc.start:,})") from exc
    except json.JSONDecodeError as exc:
        raise _invalid(file_name, field, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise _invalid(file_name, field, "JSON nested too deeply") from exc


def _show(value: object) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    text = json.dumps(value, default=str)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({kinds.get(type(value), 'number')})"


def _bytes(count: int) -> str:
    return f"{count:,} bytes ({count / 1e6:,.1f} MB)" if count >= 1_000_000 else f"{count:,} bytes"
