"""A pydantic-ai ``Model`` that runs a Workers AI model, optionally with a finetune (LoRA).

Every request goes through :meth:`CloudflareAIHook.run_model` (``POST /accounts/{id}/ai/run/{model}``,
the endpoint Cloudflare documents for ``lora``), so retries, pacing of the token's rate budget and
secret masking are the provider's, as for every other call. The models behind ``/ai/run`` with a
finetune have no native tool calling, so the profile asks pydantic-ai for prompted structured output:
the JSON schema goes into the instructions and the answer is validated against it.

Imported only by :mod:`airflow_provider_cfai.hooks.pydantic_ai` (the ``common-ai`` extra).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from pydantic_ai.exceptions import ModelAPIError
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    UserPromptPart,
)
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.usage import RequestUsage

from airflow_provider_cfai.exceptions import CloudflareAPIError, CloudflareInputError, CloudflarePermanentAPIError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydantic_ai.settings import ModelSettings

    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

__all__ = ["TEXT_GENERATION", "WorkersAIModel"]

TEXT_GENERATION = "Text Generation"

#: No native tools through ``/ai/run`` with a LoRA; structured output is asked for in the prompt.
PROFILE: dict[str, Any] = {
    "supports_tools": False,
    "supports_json_schema_output": False,
    "supports_json_object_output": False,
    "default_structured_output_mode": "prompted",
}

# pydantic-ai ModelSettings keys that /ai/run text-generation models read under the same name.
_SETTINGS = ("max_tokens", "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")


class WorkersAIModel(Model):
    """Workers AI text generation as a pydantic-ai model.

    :param hook: the provider's hook; its connection holds the account, token and base URL.
    :param model_name: a Workers AI model such as ``@cf/mistral/mistral-7b-instruct-v0.2-lora``.
    :param lora: a finetune ID or name to apply, or ``None`` for the base model.
    """

    def __init__(
        self,
        hook: CloudflareAIHook,
        model_name: str,
        *,
        lora: str | None = None,
        settings: ModelSettings | None = None,
    ) -> None:
        super().__init__(settings=settings, profile=PROFILE)  # type: ignore[arg-type]
        self._hook = hook
        self._model_name = model_name
        self.lora = lora
        self._checked = False

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def system(self) -> str:
        return "cloudflare"

    @property
    def base_url(self) -> str | None:
        return None

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        import anyio.to_thread

        model_settings, model_request_parameters = self.prepare_request(model_settings, model_request_parameters)
        if model_request_parameters.function_tools:
            raise CloudflareInputError(
                f"{self._model_name} is served through /ai/run (the endpoint that takes a finetune), which has "
                "no native tool calling in this connection: use an agent without tools, or a pydanticai "
                "connection with a tool-calling model for agents with tools."
            )
        inputs: dict[str, Any] = {"messages": self._chat(messages, model_request_parameters)}
        for key in _SETTINGS:
            value = (model_settings or {}).get(key)
            if value is not None:
                inputs[key] = value
        # The hook is synchronous (requests + tenacity): a worker thread keeps the event loop free.
        try:
            result = await anyio.to_thread.run_sync(functools.partial(self._run, inputs))
        except CloudflarePermanentAPIError:
            raise  # a wrong token or input fails the same on any connection: no fallback, no task retry
        except CloudflareAPIError as error:
            # Still failing after the provider's retries (5xx, timeouts, 429 past the budget): as a
            # ModelAPIError, common-ai's fallback_conn_ids move on to the next connection.
            raise ModelAPIError(self._model_name, str(error)) from error
        return self._response(result)

    def _run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if not self._checked:
            self._preflight()
            self._checked = True
        return self._hook.run_model(self._model_name, inputs, lora=self.lora)

    def _preflight(self) -> None:
        """Refuse, before the first inference, what Cloudflare would answer less clearly or not at all."""
        from airflow_provider_cfai.hooks import _catalog

        entry = self._hook.get_model(self._model_name)
        task = _catalog.task_name(entry) if entry is not None else None
        if task is not None and task != TEXT_GENERATION:
            raise CloudflareInputError(
                f"{self._model_name} is a {task!r} model, which cannot return text or structured output; "
                f"set the connection's extra 'model' (or model_id) to a {TEXT_GENERATION!r} model such as "
                "@cf/mistral/mistral-7b-instruct-v0.2-lora."
            )
        if self.lora is None:
            return
        finetune = self._hook.find_finetune(self.lora)
        if finetune is None:
            raise CloudflareInputError(
                f"Finetune {self.lora!r} (the connection's extra 'lora') does not exist in this account; "
                "create it first (CreateFinetuneOperator) or fix the name or ID."
            )
        base = finetune.get("model")
        if isinstance(base, str) and base and base != self._model_name:
            raise CloudflareInputError(
                f"Finetune {self.lora!r} was made for {base}, but the model is {self._model_name}: a LoRA only "
                f"runs on its own base model. Set the model (extra 'model' or model_id) to {base}, or use a "
                f"finetune of {self._model_name}."
            )

    def _chat(self, messages: Sequence[ModelMessage], parameters: ModelRequestParameters) -> list[dict[str, str]]:
        chat: list[dict[str, str]] = []
        for message in messages:
            if isinstance(message, ModelRequest):
                for part in message.parts:
                    if isinstance(part, SystemPromptPart):
                        chat.append({"role": "system", "content": part.content})
                    elif isinstance(part, UserPromptPart):
                        chat.append({"role": "user", "content": _text(part.content)})
                    elif getattr(part, "part_kind", None) in ("retry-prompt", "retry-feedback"):
                        # An answer that failed validation: the model is told why and asked again
                        # (pydantic-ai 2.78 renamed the part; both have model_response()).
                        chat.append({"role": "user", "content": str(part.model_response())})  # type: ignore[union-attr]
            elif isinstance(message, ModelResponse):
                text = "".join(part.content for part in message.parts if isinstance(part, TextPart))
                if text:
                    chat.append({"role": "assistant", "content": text})
        # Instructions (and pydantic-ai's prompted-output schema) go first, after any system prompts.
        instructions = self._get_instruction_parts(messages, parameters) or []
        leading = next((i for i, item in enumerate(chat) if item["role"] != "system"), len(chat))
        chat[leading:leading] = [{"role": "system", "content": part.content} for part in instructions if part.content]
        return chat

    def _response(self, result: dict[str, Any]) -> ModelResponse:
        text = result.get("response")
        if isinstance(text, (dict, list)):
            import json

            text = json.dumps(text)  # some models answer JSON mode with the object itself
        if not isinstance(text, str):
            raise CloudflareInputError(
                f"{self._model_name} answered without a text 'response' (keys: {sorted(result)}); "
                f"@task.llm needs a {TEXT_GENERATION!r} model."
            )
        usage: dict[str, Any] = result["usage"] if isinstance(result.get("usage"), dict) else {}
        return ModelResponse(
            parts=[TextPart(content=text)],
            usage=RequestUsage(
                input_tokens=int(usage.get("prompt_tokens") or 0),
                output_tokens=int(usage.get("completion_tokens") or 0),
            ),
            model_name=self._model_name,
            provider_name="cloudflare",
        )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    texts = [item for item in content if isinstance(item, str)]
    if len(texts) != len(list(content)):
        raise CloudflareInputError(
            "Workers AI text models take text only; the prompt holds images, audio or files, which this "
            "connection cannot send."
        )
    return "\n".join(texts)
