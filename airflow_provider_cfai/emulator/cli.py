"""Command line: ``cfai-emulator`` / ``python -m airflow_provider_cfai.emulator``.

Binds the socket itself before printing the URL, so ``--port 0`` prints the real port and a client
that connects as soon as it reads the line waits in the listen backlog instead of being refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.emulator.settings import RUNTIME_KEYS, EmulatorSettings

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

__all__ = ["build_parser", "main", "settings_from_args"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cfai-emulator", description="Local emulator of the Cloudflare Workers AI finetune API."
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    add("--port", type=int, default=8787, help="port to bind; 0 picks a free one (default 8787)")
    add(
        "--token",
        default=os.environ.get("CFAI_EMULATOR_TOKEN"),
        help="API token clients must send as Bearer (default: $CFAI_EMULATOR_TOKEN, else random)",
    )
    add("--account-id", help="account id served under /accounts/ (default: random 32 hex)")
    add("--data-dir", type=Path, help="keep finetunes and assets here across restarts (default: temp dir)")
    add("--email", help="accept X-Auth-Email with --api-key (legacy auth; off unless given)")
    add(
        "--api-key",
        default=os.environ.get("CFAI_EMULATOR_API_KEY"),
        help="Global API key for X-Auth-Key, with --email (default: $CFAI_EMULATOR_API_KEY)",
    )
    add("--rate-limit", type=int, help="requests per window per credential; 0 disables (default 1200)")
    add("--rate-window", type=float, help="rate-limit window in seconds (default 300)")
    add("--rate-lockout", type=float, help="seconds refused with 429 after passing the limit (default 300)")
    add("--max-file-bytes", type=int, help="largest accepted asset file (default 300000000)")
    add("--max-finetunes", type=int, help="finetunes allowed per account (default 100)")
    add(
        "--duplicate-names",
        choices=("allow", "reject"),
        help="what a second finetune name gets (default allow)",
    )
    add("--asset-overwrite", choices=("replace", "reject"), help="what a second upload of a file gets")
    add("--upload-response", choices=("minimal", "legacy"), help="shape of a successful upload answer")
    add("--list-shape", choices=("array", "object", "nested"), help="shape of the finetune list result")
    add("--lora-models", help="comma-separated LoRA-capable model names (replaces the default list)")
    add("--public-seed", type=int, help="number of seeded public finetunes (default 45)")
    add("--token-kind", choices=("account", "user"), help="which verify endpoint accepts the token")
    add("--token-status", choices=("active", "disabled", "expired"), help="status the verify endpoints report")
    add(
        "--settings-json",
        help="JSON object of further runtime settings (same keys as POST /__emulator/settings)",
    )
    add("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug", "trace"))
    add("--access-log", action="store_true", help="print one uvicorn access-log line per request")
    return parser


_DIRECT = (
    "rate_limit",
    "rate_window",
    "rate_lockout",
    "max_file_bytes",
    "max_finetunes",
    "duplicate_names",
    "asset_overwrite",
    "upload_response",
    "list_shape",
    "public_seed",
    "token_kind",
    "token_status",
)


def settings_from_args(args: argparse.Namespace) -> EmulatorSettings:
    """Build :class:`EmulatorSettings`; raises ValueError with a message fit for the user."""
    values: dict[str, Any] = {}
    if args.settings_json:
        try:
            extra = json.loads(args.settings_json)
        except ValueError as exc:
            raise ValueError(f"--settings-json is not valid JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise ValueError("--settings-json must be a JSON object")
        unknown = sorted(set(extra) - RUNTIME_KEYS)
        if unknown:
            raise ValueError(f"--settings-json has unknown keys: {', '.join(unknown)}")
        values.update(extra)
    for key in _DIRECT:
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.lora_models is not None:
        values["lora_models"] = tuple(m.strip() for m in args.lora_models.split(",") if m.strip())
    for key in ("token", "account_id", "email", "api_key", "data_dir"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return EmulatorSettings(**values)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))

    # Imported late so `--help` and argument errors stay fast.
    import uvicorn

    from airflow_provider_cfai.emulator.app import create_app

    server: uvicorn.Server | None = None
    stop_requested = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # Never raise from here: a signal can land anywhere (even inside uvicorn's logging set-up).
        # uvicorn installs its own handlers while serving, then restores this one and re-raises
        # the signal into it, which must then be harmless.
        nonlocal stop_requested
        stop_requested = True
        if server is not None:
            server.should_exit = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"cfai-emulator: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    try:
        config = uvicorn.Config(
            app,
            log_level=args.log_level,
            access_log=args.access_log,
            lifespan="off",
            server_header=False,
            # A request held by a delay fault must not hold up shutdown.
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        port = sock.getsockname()[1]
        host = f"[{args.host}]" if ":" in args.host else args.host
        base_url = f"http://{host}:{port}/client/v4"
        connection = {"conn_type": "cloudflare_ai", "login": settings.account_id, "password": settings.token}
        connection["host"] = base_url
        # The token is printed once, on purpose: it is the user's own throwaway local credential.
        print(f"cfai-emulator listening on {base_url}", flush=True)
        print(f"export AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT={shlex.quote(json.dumps(connection))}", flush=True)
        if not stop_requested:
            server.run(sockets=[sock])
    finally:
        sock.close()
        if app.state.scratch_dir is not None:
            app.state.scratch_dir.cleanup()
    return 0
