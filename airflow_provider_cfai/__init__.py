"""Apache Airflow provider for Cloudflare Workers AI: LoRA finetunes, inference and batch evaluation.

This module is read by Airflow's providers manager at start-up and by every DAG parse that imports
the provider, so it holds plain data only and imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "get_provider_info"]

_HOOK_CLASS = "airflow_provider_cfai.hooks.cloudflare_ai.CloudflareAIHook"
_PYDANTIC_AI_HOOK_CLASS = "airflow_provider_cfai.hooks.pydantic_ai.CloudflarePydanticAIHook"

#: The connection form, declared as data (read by Airflow 3.2+ without importing the hook). The
#: hook's ``get_ui_field_behaviour`` / ``get_connection_form_widgets`` serve Airflow 3.1 from this.
CONNECTION_FORM: dict[str, Any] = {
    "ui-field-behaviour": {
        "hidden-fields": ["schema", "port"],
        "relabeling": {"login": "Account ID", "password": "API Token", "host": "API base URL"},
        "placeholders": {
            "login": "32-character Cloudflare account ID",
            "password": "API token with the Workers AI Write permission",
            "host": "https://api.cloudflare.com/client/v4",
            "extra": '{"timeout": 60, "max_retries": 5, "retry_budget": 180}',
        },
    },
    "conn-fields": {
        "email": {
            "label": "Email (legacy scheme)",
            "description": "With a Global API key instead of an API token; ignored when a token is set.",
            "schema": {"type": ["string", "null"]},
        },
        "api_key": {
            "label": "Global API key (legacy scheme)",
            "description": "Prefer an API token; this key grants access to the whole Cloudflare account.",
            "schema": {"type": ["string", "null"], "format": "password"},
        },
        "timeout": {
            "label": "Timeout (seconds)",
            "description": "Per-request timeout; default 60.",
            "schema": {"type": ["number", "null"], "minimum": 1},
        },
        "max_retries": {
            "label": "Max retries",
            "description": "Retries of a failed call (429, 5xx, dropped connections); default 5.",
            "schema": {"type": ["integer", "null"], "minimum": 0},
        },
        "retry_budget": {
            "label": "Retry budget (seconds)",
            "description": "Total time one call may spend waiting between retries; default 180.",
            "schema": {"type": ["number", "null"], "minimum": 0},
        },
        "rate_limit_sharers": {
            "label": "Rate-limit sharers",
            "description": "Hosts (each with its own temp dir) that use this token at once; each paces "
            "itself to 1/N of Cloudflare's limit. Default 1; not needed with Redis.",
            "schema": {"type": ["integer", "null"], "minimum": 1},
        },
        "redis_url": {
            "label": "Redis URL (shared rate limit)",
            "description": "redis://[:password@]host:6379/0 — one exact rate-limit budget for every host "
            "(needs the provider's redis extra).",
            "schema": {"type": ["string", "null"], "format": "password"},
        },
        "redis_conn_id": {
            "label": "Redis connection ID (shared rate limit)",
            "description": "The same from an Airflow redis connection; set this or the Redis URL, not both.",
            "schema": {"type": ["string", "null"]},
        },
    },
}


#: The ``pydanticai_cloudflare`` connection (common-ai's ``@task.llm`` / agents on a finetune): the same
#: credentials and host as ``cloudflare_ai``, plus the model and finetune. Its hook needs the
#: ``common-ai`` extra; the form says so, since Airflow shows the type without importing the hook.
PYDANTIC_AI_CONNECTION_FORM: dict[str, Any] = {
    "ui-field-behaviour": {
        "hidden-fields": ["schema", "port"],
        "relabeling": {"login": "Account ID", "password": "API Token", "host": "API base URL"},
        "placeholders": {
            "login": "32-character Cloudflare account ID",
            "password": "API token with the Workers AI Read (or Write) permission",
            "host": "https://api.cloudflare.com/client/v4",
            "extra": '{"model": "@cf/mistral/mistral-7b-instruct-v0.2-lora", "lora": "my-finetune"}  — needs '
            "pip install 'airflow-provider-cfai[common-ai]'",
        },
    },
    "conn-fields": {
        "model": {
            "label": "Model",
            "description": "Default Workers AI model, e.g. @cf/mistral/mistral-7b-instruct-v0.2-lora (the "
            "finetune's base model); model_id= on a task overrides it. Needs the provider's common-ai extra: "
            "pip install 'airflow-provider-cfai[common-ai]'.",
            "schema": {"type": ["string", "null"]},
        },
        "lora": {
            "label": "Finetune (LoRA)",
            "description": "Default finetune ID or name applied to every request; empty for the base model.",
            "schema": {"type": ["string", "null"]},
        },
    },
}


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow's providers manager (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "airflow-provider-cfai",
        "name": "Cloudflare Workers AI",
        "description": "Register, upload and run LoRA fine-tunes on Cloudflare Workers AI.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Cloudflare Workers AI",
                "external-doc-url": "https://developers.cloudflare.com/workers-ai/features/fine-tunes/",
                "tags": ["software"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Cloudflare Workers AI",
                "python-modules": ["airflow_provider_cfai.hooks.cloudflare_ai"],
            }
        ],
        "operators": [
            {
                "integration-name": "Cloudflare Workers AI",
                "python-modules": [
                    "airflow_provider_cfai.operators.finetune",
                    "airflow_provider_cfai.operators.inference",
                    "airflow_provider_cfai.operators.batch",
                    "airflow_provider_cfai.operators.promote",
                ],
            }
        ],
        "triggers": [
            {
                "integration-name": "Cloudflare Workers AI",
                "python-modules": ["airflow_provider_cfai.triggers.batch"],
            }
        ],
        "extra-links": ["airflow_provider_cfai.links.CloudflareWorkersAILink"],
        "asset-uris": [
            {
                "schemes": ["cloudflare-workers-ai"],
                "handler": "airflow_provider_cfai.assets.sanitize_uri",
                "factory": "airflow_provider_cfai.assets.finetune_asset",
                "to_openlineage_converter": "airflow_provider_cfai.lineage.asset_to_openlineage",
            }
        ],
        "connection-types": [
            {
                "connection-type": "cloudflare_ai",
                "hook-class-name": _HOOK_CLASS,
                "hook-name": "Cloudflare Workers AI",
                **CONNECTION_FORM,
            },
            {
                "connection-type": "pydanticai_cloudflare",
                "hook-class-name": _PYDANTIC_AI_HOOK_CLASS,
                "hook-name": "Pydantic AI (Cloudflare Workers AI)",
                **PYDANTIC_AI_CONNECTION_FORM,
            },
        ],
    }
