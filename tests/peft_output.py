"""A folder shaped exactly like PEFT's ``save_pretrained`` output, written without torch or peft.

``adapter_config.json`` carries the keys PEFT writes for a LoRA (and, like PEFT, no ``model_type``);
``adapter_model.safetensors`` holds tensors named as PEFT names them
(``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from airflow_provider_cfai.adapter_factory import write_lora_adapter

PEFT_CONFIG_KEYS = (
    "alpha_pattern",
    "auto_mapping",
    "base_model_name_or_path",
    "bias",
    "fan_in_fan_out",
    "inference_mode",
    "init_lora_weights",
    "layers_pattern",
    "layers_to_transform",
    "loftq_config",
    "lora_alpha",
    "lora_dropout",
    "megatron_config",
    "megatron_core",
    "modules_to_save",
    "peft_type",
    "r",
    "rank_pattern",
    "revision",
    "target_modules",
    "task_type",
    "use_dora",
    "use_rslora",
)


def peft_config(base_model: str, rank: int = 8) -> dict[str, Any]:
    return {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.05,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        "rank_pattern": {},
        "revision": None,
        "target_modules": ["q_proj", "v_proj"],
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }


def write_peft_output(folder: Path, base_model: str = "mistralai/Mistral-7B-Instruct-v0.2", rank: int = 8) -> Path:
    """Write the folder; the weights come from the provider's factory, the config as PEFT writes it."""
    write_lora_adapter(folder, rank=rank, base_model=base_model)
    config = peft_config(base_model, rank)
    # PEFT's own formatting: indent=2, sorted keys.
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    assert tuple(sorted(config)) == PEFT_CONFIG_KEYS
    return folder


def tensor_names(weights: Path) -> list[str]:
    with weights.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    return sorted(name for name in header if name != "__metadata__")
