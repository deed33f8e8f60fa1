"""Airflow connections aimed at the test emulator, with fields or extras overridden."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_cfai.hooks._connection import ConnectionSettings
    from airflow_provider_cfai.testing import RunningEmulator

_TOP_LEVEL = ("login", "password", "host")


def connection_json(emulator: RunningEmulator, **fields: Any) -> str:
    """The emulator's connection; ``login``/``password``/``host`` override fields, the rest are extras."""
    extra = {k: v for k, v in fields.items() if k not in _TOP_LEVEL}
    conn = json.loads(emulator.connection_json(**extra))
    conn.update({k: v for k, v in fields.items() if k in _TOP_LEVEL})
    return json.dumps(conn)


def settings_for(emulator: RunningEmulator, **overrides: Any) -> ConnectionSettings:
    """Checked connection settings for the emulator, built directly (as the trigger gets them)."""
    from airflow_provider_cfai.hooks._connection import ConnectionSettings

    fields: dict[str, Any] = {
        "account_id": emulator.account_id,
        "base_url": emulator.base_url,
        "timeout": 10.0,
        "max_retries": 3,
        "retry_budget": 60.0,
        "token": emulator.token,
    }
    fields.update(overrides)
    return ConnectionSettings(**fields)
