"""``python -m airflow_provider_cfai.emulator`` runs the emulator (same as the ``cfai-emulator`` script)."""

from __future__ import annotations

from airflow_provider_cfai.emulator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
