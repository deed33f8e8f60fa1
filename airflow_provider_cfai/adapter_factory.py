"""Write small LoRA adapters in code, for example DAGs, tests and benchmarks.

No model is downloaded and only the standard library is used: the safetensors file is written by
hand (8-byte header length, JSON header, raw little-endian tensors), the way the format defines it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS

if TYPE_CHECKING:
    import os

__all__ = ["write_lora_adapter"]

_BASE_MODELS = {
    "mistral": "mistralai/Mistral-7B-Instruct-v0.2",
    "gemma": "google/gemma-7b-it",
    "llama": "meta-llama/Llama-2-7b-chat-hf",
}
_HIDDEN = 64  # a real model's hidden size is 4096; the shapes only have to agree with the rank
_LAYERS = 2
_TARGET_MODULES = ("q_proj", "v_proj")
_PADDING_TENSOR = "base_model.model.padding"
_CHUNK = 1 << 20


def write_lora_adapter(
    folder: str | os.PathLike[str],
    *,
    model_type: str = "mistral",
    rank: int = 8,
    base_model: str | None = None,
    weights_bytes: int | None = None,
    sparse: bool = False,
) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``folder``.

    The values are not checked against Cloudflare's limits, so tests can write adapters it would
    refuse (``rank=64``, ``model_type="qwen"``). Tensor contents are deterministic.

    :param folder: local folder, created if missing; existing adapter files are overwritten.
    :param model_type: ``model_type`` written in the config.
    :param rank: LoRA rank ``r``; the lora_A / lora_B shapes follow it.
    :param base_model: ``base_model_name_or_path``; a Hugging Face model matching ``model_type`` if None.
    :param weights_bytes: exact size of the safetensors file, reached with one extra ``U8`` tensor.
    :param sparse: leave that extra tensor as a hole in the file, so a 256 MiB adapter takes no disk
        space or time to write (on filesystems with sparse files).
    :return: the folder.
    """
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "alpha_pattern": {},
        "base_model_name_or_path": base_model or _BASE_MODELS.get(model_type),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.05,
        "model_type": model_type,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        "rank_pattern": {},
        "revision": None,
        "target_modules": list(_TARGET_MODULES),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    tensors: list[tuple[str, str, list[int], bytes]] = []
    for layer in range(_LAYERS):
        for module in _TARGET_MODULES:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            seed = len(tensors)
            tensors.append((f"{prefix}.lora_A.weight", "F32", [rank, _HIDDEN], _values("f", rank * _HIDDEN, seed)))
            tensors.append((f"{prefix}.lora_B.weight", "F16", [_HIDDEN, rank], _values("e", rank * _HIDDEN, seed)))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)

    padding = 0
    if weights_bytes is None:
        room = _aligned(len(_encode(header)))
    else:
        # The padding's size is written in the header, so make room for the largest it could be.
        room = _aligned(len(_encode(_with_padding(header, offset, weights_bytes))))
        padding = weights_bytes - 8 - room - offset
        if padding < 0:
            raise ValueError(f"weights_bytes={weights_bytes} is below this adapter's {8 + room + offset} bytes")
        header = _with_padding(header, offset, padding)
    raw = _encode(header).ljust(room, b" ")  # safetensors aligns tensor data to 8 bytes with spaces

    with open(path / ADAPTER_WEIGHTS, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for *_, data in tensors:
            f.write(data)
        if sparse:
            f.truncate(f.tell() + padding)
        else:
            for start in range(0, padding, _CHUNK):
                f.write(bytes(min(_CHUNK, padding - start)))
    return path


def _values(fmt: str, count: int, seed: int) -> bytes:
    # Small, varied, reproducible numbers: a corrupted upload shows up when the bytes are compared.
    numbers = [((i * 7919 + seed * 104729) % 2001 - 1000) / 10_000 for i in range(count)]
    return struct.pack(f"<{count}{fmt}", *numbers)


def _with_padding(header: dict[str, Any], offset: int, size: int) -> dict[str, Any]:
    entry = {"dtype": "U8", "shape": [size], "data_offsets": [offset, offset + size]}
    return {**header, _PADDING_TENSOR: entry}


def _encode(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode("utf-8")


def _aligned(size: int) -> int:
    return -(-size // 8) * 8
