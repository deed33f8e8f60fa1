"""``/ai/run/{model}``: input checks, LoRA resolution, and a deterministic stand-in for a model.

The answer is ``"[<model> + <lora name>] <prompt>"`` (or ``"[<model>] <prompt>"``) so tests can
assert exactly which model and finetune a request reached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.emulator import models, structured
from airflow_provider_cfai.emulator.envelope import ApiError

if TYPE_CHECKING:
    from airflow_provider_cfai.emulator.state import EmulatorState

__all__ = ["run_model"]


def run_model(state: EmulatorState, model: str, body: dict[str, Any]) -> dict[str, Any]:
    if model not in models.catalog_for(state.settings).names:
        raise ApiError(400, 5007, f"No such model {model} or task")
    prompt = _prompt_of(body)
    label = model
    lora = body.get("lora")
    if lora is not None:
        if not isinstance(lora, str) or not lora:
            raise ApiError(400, 5006, "'lora' must be a finetune id or name")
        if model not in state.settings.lora_models:
            raise ApiError(405, 5005, f"Model {model} does not support LoRA")
        target = state.lora_target(lora)
        if target is None:
            # 400, not 404: the URL's resource (the model) exists; the bad reference is in the body.
            raise ApiError(400, 3037, f"Finetune {lora} not found")
        if not target.complete:
            raise ApiError(400, 3039, "Finetune is missing required files")
        if target.model != model:
            raise ApiError(400, 3038, f"Finetune {target.name} was created for model {target.model}, not {model}")
        label = f"{model} + {target.name}"
    response = f"[{label}] {prompt}"
    if isinstance(body.get("messages"), list):
        # A conversation that asks for JSON of a schema (prompted structured output) gets such JSON.
        response = structured.json_answer(body["messages"], label, prompt) or response
    prompt_tokens, completion_tokens = len(prompt.split()), len(response.split())
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return {"response": response, "usage": usage}


def _prompt_of(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ApiError(400, 5006, "'prompt' must be a string")
        return prompt
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, 5006, "Either 'prompt' or 'messages' is required")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, 5006, "'messages' must be a non-empty list")
    for message in messages:
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise ApiError(400, 5006, "each message needs string 'role' and 'content'")
    users = [m["content"] for m in messages if m["role"] == "user"]
    return str(users[-1] if users else messages[-1]["content"])
