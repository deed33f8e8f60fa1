"""LoRA adapter discovery and validation (``adapters``) and the adapter factory used by tests and DAGs."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_cfai.adapter_factory import write_lora_adapter
from airflow_provider_cfai.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_FILE_NAMES,
    ADAPTER_WEIGHTS,
    DEFAULT_LIMITS,
    AdapterFile,
    AdapterLimits,
    LoraAdapter,
    load_adapter,
)
from airflow_provider_cfai.exceptions import AdapterValidationError, CloudflareInputError

MiB = 1 << 20
DELETE = object()
Mutation = Callable[[Path], None]


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_lora_adapter(tmp_path / "adapter")


@pytest.fixture
def memory_url(folder: Path) -> Iterator[str]:
    fs = fsspec.filesystem("memory")
    root = f"/cfai-test-{uuid.uuid4().hex}"
    for name in (*ADAPTER_FILE_NAMES, "README.md"):
        fs.pipe(f"{root}/adapter/{name}", (folder / name).read_bytes() if name != "README.md" else b"hi")
    yield f"memory://{root.lstrip('/')}/adapter"
    fs.rm(root, recursive=True)


def config_with(**changes: object) -> Mutation:
    def apply(folder: Path) -> None:
        path = folder / ADAPTER_CONFIG
        config = json.loads(path.read_text())
        for key, value in changes.items():
            if value is DELETE:
                config.pop(key, None)
            else:
                config[key] = value
        path.write_text(json.dumps(config))

    return apply


def config_bytes(raw: bytes) -> Mutation:
    return lambda folder: (folder / ADAPTER_CONFIG).write_bytes(raw)


def weights_bytes(raw: bytes) -> Mutation:
    return lambda folder: (folder / ADAPTER_WEIGHTS).write_bytes(raw)


def safetensors(header: object, data: bytes = b"", *, length: int | None = None) -> Mutation:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return weights_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


def tensor(dtype: str = "F32", shape: object = (2,), offsets: object = (0, 8)) -> dict[str, Any]:
    return {
        "dtype": dtype,
        "shape": list(shape) if isinstance(shape, tuple) else shape,
        "data_offsets": offsets,
    }


def remove(name: str) -> Mutation:
    return lambda folder: (folder / name).unlink()


def make_dir_instead(name: str) -> Mutation:
    def apply(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()

    return apply


def assert_names(error: AdapterValidationError, file_name: str, field: str, fragments: tuple[str, ...]) -> None:
    assert (error.file_name, error.field) == (file_name, field)
    message = str(error)
    assert message.startswith(f"{file_name}: {field}: ")
    for fragment in fragments:
        assert fragment in message


# --- good adapters from every kind of source -----------------------------------------------------


@pytest.mark.parametrize(
    "as_source",
    [
        pytest.param(str, id="str-path"),
        pytest.param(lambda folder: folder, id="pathlib-path"),
        pytest.param(lambda folder: folder.as_uri(), id="file-url"),
        pytest.param(lambda folder: folder.as_uri() + "/", id="file-url-trailing-slash"),
        pytest.param(
            lambda folder: __import__("airflow.sdk").sdk.ObjectStoragePath(folder.as_uri()),
            id="object-storage-path",
        ),
    ],
)
def test_valid_adapter_loads_from_local_sources(folder: Path, as_source: Callable[[Path], object]) -> None:
    adapter = load_adapter(as_source(folder))  # type: ignore[arg-type]

    assert (adapter.rank, adapter.model_type) == (8, "mistral")
    assert adapter.base_model == "mistralai/Mistral-7B-Instruct-v0.2"
    assert [f.name for f in adapter.files] == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    for adapter_file in adapter.files:
        assert adapter_file.size == (folder / adapter_file.name).stat().st_size
        assert adapter_file.location.endswith(f"/adapter/{adapter_file.name}")
        with adapter_file.open() as fh:
            assert fh.read() == (folder / adapter_file.name).read_bytes()


def test_valid_adapter_loads_from_memory_url(memory_url: str, folder: Path) -> None:
    adapter = load_adapter(memory_url)

    assert adapter.location == memory_url
    assert adapter.weights.location == f"{memory_url}/{ADAPTER_WEIGHTS}"
    with adapter.weights.open() as fh:
        assert fh.read() == (folder / ADAPTER_WEIGHTS).read_bytes()


def test_missing_folder_on_memory_url_names_the_url() -> None:
    with pytest.raises(AdapterValidationError) as info:
        load_adapter("memory://cfai-no-such-bucket/adapter")
    assert_names(info.value, "memory://cfai-no-such-bucket/adapter", "location", ("does not exist",))


def test_other_files_in_the_folder_are_ignored(folder: Path) -> None:
    (folder / "README.md").write_text("notes")
    (folder / "training_args.bin").write_bytes(b"\0" * 100)
    (folder / "checkpoint-10").mkdir()

    assert [f.name for f in load_adapter(folder).files] == list(ADAPTER_FILE_NAMES)


def test_loaded_adapter_is_returned_as_is(folder: Path) -> None:
    adapter = load_adapter(folder)
    assert load_adapter(adapter) is adapter


def test_error_is_a_permanent_input_error(tmp_path: Path) -> None:
    from airflow_provider_cfai.exceptions import AirflowFailException

    with pytest.raises(AdapterValidationError) as info:
        load_adapter(tmp_path / "nope")
    assert isinstance(info.value, CloudflareInputError)
    assert isinstance(info.value, AirflowFailException)


def test_location_never_shows_credentials(folder: Path) -> None:
    class SignedPath:  # an ObjectStoragePath look-alike whose URL carries secrets
        fs = LocalFileSystem()
        path = str(folder)

        def __str__(self) -> str:
            return "s3://AKIAKEY:s3cr3t@bucket/adapter?X-Amz-Signature=sig123"

    adapter = load_adapter(SignedPath())  # type: ignore[arg-type]

    shown = repr(adapter) + " ".join(f.location for f in adapter.files)
    assert adapter.location == "s3://bucket/adapter"
    assert not any(secret in shown for secret in ("AKIAKEY", "s3cr3t", "sig123"))


def test_unknown_url_protocol_is_reported_without_credentials() -> None:
    with pytest.raises(AdapterValidationError) as info:
        load_adapter("nosuchproto://user:s3cr3t@host/adapter")
    assert_names(info.value, "nosuchproto://host/adapter", "location", ("nosuchproto",))
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    ("source", "type_name"),
    [
        pytest.param(42, "int", id="int"),
        pytest.param(None, "NoneType", id="none"),
        pytest.param(b"/tmp/adapter", "bytes", id="bytes-path"),
        pytest.param(["/tmp/adapter"], "list", id="list"),
    ],
)
def test_unsupported_source_type_names_the_type(source: object, type_name: str) -> None:
    with pytest.raises(AdapterValidationError) as info:
        load_adapter(source)  # type: ignore[arg-type]
    assert_names(info.value, "adapter folder", "location", (f"got {type_name}",))


# --- broken adapters: every rule -----------------------------------------------------------------

BOTH = f"both {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
ALLOWED = '"gemma"|"llama"|"mistral"'
F32_2 = b"\0" * 8  # data of one F32 tensor of shape [2]

BROKEN = [
    # presence
    pytest.param(remove(ADAPTER_CONFIG), ADAPTER_CONFIG, "file", ("not found", BOTH), id="config-missing"),
    pytest.param(remove(ADAPTER_WEIGHTS), ADAPTER_WEIGHTS, "file", ("not found", BOTH), id="weights-missing"),
    pytest.param(
        lambda f: (remove(ADAPTER_CONFIG)(f), remove(ADAPTER_WEIGHTS)(f)),
        f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}",
        "file",
        ("not found", BOTH),
        id="both-missing",
    ),
    pytest.param(make_dir_instead(ADAPTER_CONFIG), ADAPTER_CONFIG, "file", ("not a file",), id="config-is-a-dir"),
    # sizes
    pytest.param(config_bytes(b""), ADAPTER_CONFIG, "size", ("empty (0 bytes)",), id="config-empty"),
    pytest.param(weights_bytes(b""), ADAPTER_WEIGHTS, "size", ("empty (0 bytes)",), id="weights-empty"),
    pytest.param(
        config_bytes(b" " * 1_000_001 + b"{}"),
        ADAPTER_CONFIG,
        "size",
        ("1,000,000 bytes",),
        id="config-over-1mb",
    ),
    # adapter_config.json
    pytest.param(config_bytes(b"{not json"), ADAPTER_CONFIG, "json", ("line 1 column 2",), id="config-bad-json"),
    pytest.param(
        config_bytes(b'{\n  "r": 8,\n}'),
        ADAPTER_CONFIG,
        "json",
        ("line 3 column 1",),
        id="config-trailing-comma",
    ),
    pytest.param(config_bytes(b"\xff\xfe{}"), ADAPTER_CONFIG, "json", ("not valid UTF-8",), id="config-not-utf8"),
    pytest.param(config_bytes(b"[1, 2]"), ADAPTER_CONFIG, "json", ("JSON object", "(array)"), id="config-array"),
    pytest.param(
        config_with(model_type=DELETE),
        ADAPTER_CONFIG,
        "model_type",
        ("missing", f'add "model_type": {ALLOWED}', '"mistral" for base model mistralai/'),
        id="model-type-missing",
    ),
    pytest.param(
        config_with(model_type="qwen"),
        ADAPTER_CONFIG,
        "model_type",
        ('"qwen" (string) is not supported', f"accepts {ALLOWED}"),
        id="model-type-qwen",
    ),
    pytest.param(config_with(model_type="Mistral"), ADAPTER_CONFIG, "model_type", (ALLOWED,), id="model-type-case"),
    pytest.param(config_with(model_type=3), ADAPTER_CONFIG, "model_type", ("3 (number)",), id="model-type-int"),
    pytest.param(config_with(r=DELETE), ADAPTER_CONFIG, "r", ("missing", "1 to 32"), id="rank-missing"),
    pytest.param(config_with(r=0), ADAPTER_CONFIG, "r", ("rank 0 is below 1",), id="rank-0"),
    pytest.param(config_with(r=-4), ADAPTER_CONFIG, "r", ("rank -4 is below 1",), id="rank-negative"),
    pytest.param(
        config_with(r=64),
        ADAPTER_CONFIG,
        "r",
        ("rank 64 is above Cloudflare's limit of 32; retrain with r <= 32",),
        id="rank-64",
    ),
    pytest.param(config_with(r="8"), ADAPTER_CONFIG, "r", ('"8" (string)', "1 to 32"), id="rank-string"),
    pytest.param(config_with(r=8.5), ADAPTER_CONFIG, "r", ("8.5 (number)",), id="rank-fraction"),
    pytest.param(config_with(r=8.0), ADAPTER_CONFIG, "r", ("8.0 (number)",), id="rank-float-whole"),
    pytest.param(config_with(r=True), ADAPTER_CONFIG, "r", ("true (boolean)",), id="rank-bool"),
    pytest.param(
        config_with(rank_pattern={"q_proj": 64}),
        ADAPTER_CONFIG,
        "rank_pattern.q_proj",
        ("rank 64 is above Cloudflare's limit of 32",),
        id="rank-pattern-64",
    ),
    # adapter_model.safetensors: the 8-byte length and the header
    pytest.param(
        weights_bytes(b"this is not a safetensors file, just text"),
        ADAPTER_WEIGHTS,
        "header",
        ("above the limit of 100,000,000",),
        id="weights-garbage",
    ),
    pytest.param(
        weights_bytes(b"\x01\x02\x03"), ADAPTER_WEIGHTS, "header", ("3 bytes", "8-byte"), id="weights-3-bytes"
    ),
    pytest.param(safetensors(b"", length=0), ADAPTER_WEIGHTS, "header", ("header length is 0",), id="header-length-0"),
    pytest.param(
        safetensors(b"{}", length=1000),
        ADAPTER_WEIGHTS,
        "header",
        ("1,000 bytes runs past the end of the 10-byte file",),
        id="header-length-past-eof",
    ),
    pytest.param(
        safetensors(b"abcd"),
        ADAPTER_WEIGHTS,
        "header",
        ("not valid JSON", "line 1 column 1"),
        id="header-not-json",
    ),
    pytest.param(safetensors(b"\xff\xfe"), ADAPTER_WEIGHTS, "header", ("not valid UTF-8",), id="header-not-utf8"),
    pytest.param(safetensors([1, 2]), ADAPTER_WEIGHTS, "header", ("JSON object", "(array)"), id="header-array"),
    pytest.param(
        safetensors({"__metadata__": {"format": "pt"}}),
        ADAPTER_WEIGHTS,
        "tensors",
        ("no tensors", "empty"),
        id="no-tensors",
    ),
    pytest.param(
        safetensors({"__metadata__": {"epochs": 3}, "t": tensor()}, F32_2),
        ADAPTER_WEIGHTS,
        "__metadata__",
        ("strings",),
        id="metadata-not-strings",
    ),
    pytest.param(
        safetensors({"__metadata__": ["pt"], "t": tensor()}, F32_2),
        ADAPTER_WEIGHTS,
        "__metadata__",
        ("(array)",),
        id="metadata-not-object",
    ),
    # adapter_model.safetensors: the tensors
    pytest.param(
        safetensors({"t": 5}),
        ADAPTER_WEIGHTS,
        "tensor t",
        ("dtype, shape and data_offsets",),
        id="tensor-not-object",
    ),
    pytest.param(
        safetensors({"t": tensor(dtype="F128")}, F32_2),
        ADAPTER_WEIGHTS,
        "tensor t",
        ('"F128"', "BF16"),
        id="bad-dtype",
    ),
    pytest.param(
        safetensors({"t": tensor(shape=[-2])}, F32_2),
        ADAPTER_WEIGHTS,
        "tensor t",
        ("shape", "[-2]"),
        id="negative-shape",
    ),
    pytest.param(
        safetensors({"t": tensor(shape="2")}, F32_2),
        ADAPTER_WEIGHTS,
        "tensor t",
        ("shape",),
        id="shape-not-list",
    ),
    pytest.param(
        safetensors({"t": tensor(offsets=[8, 0])}, F32_2),
        ADAPTER_WEIGHTS,
        "tensor t",
        ("0 <= begin <= end", "[8, 0]"),
        id="offsets-reversed",
    ),
    pytest.param(
        safetensors({"t": tensor(offsets=[0])}, F32_2),
        ADAPTER_WEIGHTS,
        "tensor t",
        ("[begin, end]",),
        id="offsets-one",
    ),
    pytest.param(
        safetensors({"t": tensor(shape=(8,), offsets=[0, 32])}, b"\0" * 16),
        ADAPTER_WEIGHTS,
        "tensor t",
        ("end at byte 32", "16 data bytes", "truncated"),
        id="offsets-past-eof",
    ),
    pytest.param(
        safetensors({"t": tensor(shape=(3,), offsets=[0, 8])}, F32_2),
        ADAPTER_WEIGHTS,
        "tensor t",
        ("shape [3] of F32", "8 bytes"),
        id="shape-times-dtype-mismatch",
    ),
    pytest.param(
        safetensors({"a": tensor(), "b": tensor(offsets=[16, 24])}, b"\0" * 24),
        ADAPTER_WEIGHTS,
        "tensor b",
        ("starts at byte 16, expected 8",),
        id="gap-between-tensors",
    ),
    pytest.param(
        safetensors({"a": tensor(), "b": tensor(offsets=[4, 12])}, b"\0" * 12),
        ADAPTER_WEIGHTS,
        "tensor b",
        ("starts at byte 4, expected 8",),
        id="overlapping-tensors",
    ),
    pytest.param(
        safetensors({"t": tensor()}, b"\0" * 16),
        ADAPTER_WEIGHTS,
        "tensors",
        ("ends at byte 8 of 16", "trailing bytes"),
        id="trailing-bytes",
    ),
]


@pytest.mark.parametrize(("break_it", "file_name", "field", "fragments"), BROKEN)
def test_broken_adapter_is_refused_naming_file_field_and_limit(
    folder: Path, break_it: Mutation, file_name: str, field: str, fragments: tuple[str, ...]
) -> None:
    break_it(folder)
    with pytest.raises(AdapterValidationError) as info:
        load_adapter(folder)
    assert_names(info.value, file_name, field, fragments)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param({"t": tensor()}, id="one-f32"),
        pytest.param({"__metadata__": {"format": "pt"}, "t": tensor()}, id="with-metadata"),
        pytest.param({"__metadata__": None, "t": tensor()}, id="null-metadata"),
        pytest.param(
            {"b": tensor(offsets=[4, 8], shape=(1,)), "a": tensor(offsets=[0, 4], shape=(1,))}, id="any-order"
        ),
        pytest.param({"t": tensor(dtype="F4", shape=(16,))}, id="sub-byte-dtype"),
        pytest.param({"t": tensor(dtype="BF16", shape=(2, 2))}, id="bf16-2d"),
        pytest.param({"t": tensor(dtype="U8", shape=(0,), offsets=[0, 0]), "u": tensor()}, id="zero-size"),
    ],
)
def test_valid_safetensors_headers_pass(folder: Path, header: dict[str, Any]) -> None:
    safetensors(header, F32_2)(folder)
    assert load_adapter(folder).weights.size == (folder / ADAPTER_WEIGHTS).stat().st_size


def test_missing_folder_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(AdapterValidationError) as info:
        load_adapter(tmp_path / "nope")
    assert_names(info.value, str(tmp_path / "nope"), "location", ("does not exist", BOTH))


def test_file_instead_of_folder_names_the_path(folder: Path) -> None:
    with pytest.raises(AdapterValidationError) as info:
        load_adapter(folder / ADAPTER_CONFIG)
    assert_names(info.value, str(folder / ADAPTER_CONFIG), "location", ("is not a folder",))


# --- limits ----------------------------------------------------------------------------------------


def test_default_limits_are_cloudflares_current_ones() -> None:
    limits = DEFAULT_LIMITS
    assert (limits.max_file_bytes, limits.max_rank, limits.max_header_bytes) == (300_000_000, 32, 100_000_000)
    assert limits.model_types == {"mistral", "gemma", "llama"}


@pytest.mark.parametrize(
    ("kwargs", "limits"),
    [
        pytest.param({"rank": 32}, DEFAULT_LIMITS, id="rank-32-is-the-limit"),
        pytest.param({"rank": 1}, DEFAULT_LIMITS, id="rank-1"),
        pytest.param({"rank": 64}, AdapterLimits(max_rank=64), id="custom-max-rank-64"),
        pytest.param({"model_type": "qwen"}, AdapterLimits(model_types=frozenset({"qwen"})), id="custom-model-type"),
        pytest.param({"model_type": "gemma"}, DEFAULT_LIMITS, id="gemma"),
        pytest.param({"model_type": "llama"}, DEFAULT_LIMITS, id="llama"),
    ],
)
def test_adapter_within_limits_passes(tmp_path: Path, kwargs: dict[str, Any], limits: AdapterLimits) -> None:
    adapter = load_adapter(write_lora_adapter(tmp_path, **kwargs), limits=limits)
    assert (adapter.rank, adapter.model_type) == (kwargs.get("rank", 8), kwargs.get("model_type", "mistral"))


def test_file_of_exactly_300_mb_passes(tmp_path: Path) -> None:
    adapter = load_adapter(write_lora_adapter(tmp_path, weights_bytes=300_000_000, sparse=True))
    assert adapter.weights.size == 300_000_000


def test_file_over_300_mb_fails_with_size_and_limit(tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path, weights_bytes=301_000_000, sparse=True)
    with pytest.raises(AdapterValidationError) as info:
        load_adapter(folder)
    assert_names(
        info.value,
        ADAPTER_WEIGHTS,
        "size",
        ("301,000,000 bytes (301.0 MB) is above Cloudflare's limit of 300,000,000 bytes (300.0 MB)",),
    )


@pytest.mark.parametrize(
    ("limits", "file_name", "field", "fragments"),
    [
        pytest.param(
            AdapterLimits(max_file_bytes=10_000),
            ADAPTER_WEIGHTS,
            "size",
            ("13,312 bytes is above Cloudflare's limit of 10,000 bytes",),
            id="small-max-file-bytes",
        ),
        pytest.param(
            AdapterLimits(max_rank=4),
            ADAPTER_CONFIG,
            "r",
            ("limit of 4; retrain with r <= 4",),
            id="small-max-rank",
        ),
        pytest.param(
            AdapterLimits(model_types=frozenset({"gemma"})),
            ADAPTER_CONFIG,
            "model_type",
            ('accepts "gemma"',),
            id="only-gemma",
        ),
        pytest.param(
            AdapterLimits(max_header_bytes=64),
            ADAPTER_WEIGHTS,
            "header",
            ("above the limit of 64",),
            id="small-max-header",
        ),
    ],
)
def test_custom_limits_are_enforced(
    folder: Path, limits: AdapterLimits, file_name: str, field: str, fragments: tuple[str, ...]
) -> None:
    with pytest.raises(AdapterValidationError) as info:
        load_adapter(folder, limits=limits)
    assert_names(info.value, file_name, field, fragments)


# --- only the header is read -----------------------------------------------------------------------


class _CountingFS:
    """Local files, counting every byte handed to the validator."""

    def __init__(self) -> None:
        self.local = LocalFileSystem()
        self.bytes_read: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    def open(self, path: str, mode: str = "rb") -> Any:
        handle = self.local.open(path, mode)
        counts = self.bytes_read
        counts.setdefault(Path(path).name, 0)

        class Counting:
            def read(self, size: int = -1) -> bytes:
                data = handle.read(size)
                counts[Path(path).name] += len(data)
                return data

            def __enter__(self) -> Counting:
                return self

            def __exit__(self, *exc: object) -> None:
                handle.close()

        return Counting()


def test_big_adapter_validation_reads_only_the_header(tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path, weights_bytes=256 * MiB, sparse=True)
    counting = _CountingFS()

    class Source:
        fs = counting
        path = str(folder)

        def __str__(self) -> str:
            return str(folder)

    adapter = load_adapter(Source())  # type: ignore[arg-type]

    header_length = struct.unpack("<Q", (folder / ADAPTER_WEIGHTS).read_bytes()[:8])[0]
    assert adapter.weights.size == 256 * MiB
    assert counting.bytes_read[ADAPTER_WEIGHTS] == 8 + header_length < 16 * 1024
    assert counting.bytes_read[ADAPTER_CONFIG] == adapter.config.size


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_big_adapter_validation_reads_little_from_the_os(tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path, weights_bytes=256 * MiB, sparse=True)

    def bytes_read_by_process() -> int:
        fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
        return int(fields["rchar"])

    before = bytes_read_by_process()
    load_adapter(folder)
    assert bytes_read_by_process() - before < 1 * MiB


# --- module weight -------------------------------------------------------------------------------


def test_importing_adapters_loads_no_fsspec_requests_or_airflow() -> None:
    code = (
        "import json, sys\n"
        "import airflow_provider_cfai.adapters, airflow_provider_cfai.adapter_factory\n"
        "heavy = {'fsspec', 'requests', 'airflow'}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


# --- adapter_factory -------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["mistral", "gemma", "llama"])
@pytest.mark.parametrize("rank", [1, 8, 32])
def test_factory_output_validates(tmp_path: Path, model_type: str, rank: int) -> None:
    adapter = load_adapter(write_lora_adapter(tmp_path, model_type=model_type, rank=rank))

    assert (adapter.model_type, adapter.rank) == (model_type, rank)
    assert adapter.base_model
    assert adapter.weights.size < 64 * 1024


def test_factory_config_is_a_peft_lora_config(folder: Path) -> None:
    config = json.loads((folder / ADAPTER_CONFIG).read_text())

    assert config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"]) == (8, 16)
    assert config["target_modules"] == ["q_proj", "v_proj"]
    assert config["task_type"] == "CAUSAL_LM"


def test_factory_tensor_shapes_follow_the_rank(tmp_path: Path) -> None:
    raw = (write_lora_adapter(tmp_path, rank=4) / ADAPTER_WEIGHTS).read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])

    shapes = {name.rsplit(".", 2)[-2]: info["shape"] for name, info in header.items() if "lora_" in name}
    assert shapes["lora_A"][0] == 4
    assert shapes["lora_B"][1] == 4
    assert {info["dtype"] for name, info in header.items() if name != "__metadata__"} == {"F32", "F16"}


def test_factory_base_model_override(tmp_path: Path) -> None:
    adapter = load_adapter(write_lora_adapter(tmp_path, base_model="me/my-model"))
    assert adapter.base_model == "me/my-model"


def test_factory_is_deterministic(tmp_path: Path) -> None:
    one, two = write_lora_adapter(tmp_path / "1"), write_lora_adapter(tmp_path / "2")
    for name in ADAPTER_FILE_NAMES:
        assert (one / name).read_bytes() == (two / name).read_bytes()


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_factory_pads_weights_to_the_exact_size(tmp_path: Path, sparse: bool) -> None:
    folder = write_lora_adapter(tmp_path, weights_bytes=3 * MiB + 5, sparse=sparse)

    assert (folder / ADAPTER_WEIGHTS).stat().st_size == 3 * MiB + 5
    assert load_adapter(folder).weights.size == 3 * MiB + 5


def test_factory_sparse_256_mib_adapter_takes_no_disk_space(tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path, weights_bytes=256 * MiB, sparse=True)
    stat = (folder / ADAPTER_WEIGHTS).stat()

    assert stat.st_size == 256 * MiB
    if hasattr(stat, "st_blocks"):
        assert stat.st_blocks * 512 < 1 * MiB
    assert load_adapter(folder).weights.size == 256 * MiB


def test_factory_refuses_a_size_too_small_to_hold_the_tensors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weights_bytes=100 is below"):
        write_lora_adapter(tmp_path, weights_bytes=100)


def test_adapter_file_repr_hides_the_filesystem(folder: Path) -> None:
    adapter = load_adapter(folder)
    assert "fs=" not in repr(adapter.weights)
    assert isinstance(adapter.weights, AdapterFile)
    assert isinstance(adapter, LoraAdapter)


def test_factory_accepts_str_folder(tmp_path: Path) -> None:
    assert write_lora_adapter(os.fspath(tmp_path / "x")) == tmp_path / "x"
