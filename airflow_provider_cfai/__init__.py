"""Apache Airflow provider for Cloudflare Workers AI fine-tunes.

This module is read by Airflow's providers manager at start-up and by every DAG parse that imports
the provider, so it holds plain data only and imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "get_provider_info"]

_HOOK_CLASS = "airflow_provider_cfai.hooks.cloudflare_ai.CloudflareAIHook"


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
                ],
            }
        ],
        "connection-types": [
            {
                "connection-type": "cloudflare_ai",
                "hook-class-name": _HOOK_CLASS,
                "hook-name": "Cloudflare Workers AI",
            }
        ],
    }
