"""Run the Cloudflare Workers AI emulator from your own code and tests; needs no pytest.

Outside pytest (a script, a notebook, a demo)::

    from airflow_provider_cfai.testing import run_emulator

    with run_emulator(rate_limit=10) as emulator:
        os.environ["AIRFLOW_CONN_CLOUDFLARE_AI_DEFAULT"] = emulator.connection_json()
        ...
        print(emulator.finetunes())

In pytest, enable the plugin in your ``conftest.py`` (``pip install airflow-provider-cfai[testing]``)
and use its ``cloudflare_ai_emulator`` fixture (see :mod:`airflow_provider_cfai.pytest_plugin`)::

    pytest_plugins = ("airflow_provider_cfai.pytest_plugin",)

The plugin imports this module, never the other way round, so this one stays free of pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "DEFAULT_CONN_ID",
    "EmulatorProcess",
    "EmulatorStartupError",
    "RunningEmulator",
    "SetsEnv",
    "point_connection_at",
    "run_emulator",
]

DEFAULT_CONN_ID = "cloudflare_ai_default"
_READY_PREFIX = "cfai-emulator listening on "


class EmulatorStartupError(RuntimeError):
    """The emulator process exited or stayed silent instead of announcing its URL."""


class RunningEmulator:
    """A live emulator: its URLs and credentials, and its control API as methods.

    Fault injection: :meth:`add_fault` returns the rule (with its ``id``); :meth:`fired` says how many
    requests it took, so a test can prove its fault really happened.
    """

    def __init__(
        self,
        base_url: str,
        *,
        account_id: str,
        token: str,
        pid: int | None = None,
        email: str | None = None,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.root_url = self.base_url.removesuffix("/client/v4")
        self.account_id = account_id
        self.token = token
        self.pid = pid
        self.email = email
        self.api_key = api_key

    def __repr__(self) -> str:
        return f"RunningEmulator({self.base_url!r}, account_id={self.account_id!r}, pid={self.pid})"

    # -- Airflow connection ------------------------------------------------------------------------

    def connection_json(self, **extra: Any) -> str:
        """The connection as JSON for ``AIRFLOW_CONN_<ID>``; keyword arguments become its ``extra``."""
        conn: dict[str, Any] = {
            "conn_type": "cloudflare_ai",
            "login": self.account_id,
            "password": self.token,
            "host": self.base_url,
        }
        if extra:
            conn["extra"] = extra
        return json.dumps(conn)

    def connection_uri(self, **extra: Any) -> str:
        """The connection in Airflow's URI form (host keeps its ``http://`` scheme)."""
        host = self.base_url.removeprefix("http://")
        uri = f"cloudflare-ai://http://{quote(self.account_id, safe='')}:{quote(self.token, safe='')}@"
        uri += quote(host, safe="")
        if extra:
            uri += "/?__extra__=" + quote(json.dumps(extra), safe="")
        return uri

    # -- control API -------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._control("GET", "/state")
        return result

    def finetunes(self) -> list[dict[str, Any]]:
        """The account's finetunes, oldest first, each with ``assets`` ({file name: {size, sha256}})."""
        finetunes: list[dict[str, Any]] = self.state()["finetunes"]
        return finetunes

    def reset(self, settings: bool = False) -> None:
        """Forget finetunes, assets, faults, counters and rate-limit windows (and settings if asked)."""
        self._control("POST", "/reset", {"settings": settings})

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change run-time settings (e.g. ``list_shape="nested"``); returns all current settings."""
        result: dict[str, Any] = self._control("POST", "/settings", settings)
        return result

    def add_fault(
        self,
        *,
        path: str,
        method: str = "*",
        times: int = 1,
        action: str = "respond",
        status: int | None = None,
        body: Any = None,
        html: bool = False,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        request_body: str | None = None,
    ) -> dict[str, Any]:
        """Make the next ``times`` calls whose path (after ``/client/v4``) matches regex ``path`` misbehave.

        ``action``: ``respond`` (answer ``status``/``body`` without doing the work), ``drop`` (close the
        connection without doing the work), ``drop_after_commit`` (do the work, then close the
        connection without answering), ``delay_after_commit`` (do the work, answer after ``delay`` s),
        ``garble_after_commit`` (do the work, then answer ``status`` with a non-envelope body: ``html``,
        ``body``, or the real JSON cut in half). ``status`` defaults to 200 for ``garble_after_commit``,
        else 503. ``request_body``: a regex the request body must match too (a Batch API poll: ``"request_id"``).
        """
        spec = {
            "path": path,
            "method": method,
            "times": times,
            "action": action,
            "body": body,
            "html": html,
            "headers": headers or {},
            "delay": delay,
        }
        if status is not None:
            spec["status"] = status
        if request_body is not None:
            spec["request_body"] = request_body
        result: dict[str, Any] = self._control("POST", "/faults", spec)
        return result

    def faults(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._control("GET", "/faults")
        return result

    def clear_faults(self) -> None:
        self._control("DELETE", "/faults")

    def fired(self, rule: dict[str, Any] | int) -> int:
        """How many requests fault ``rule`` took: the dict :meth:`add_fault` returned, or its ``id``.

        Counts outlive the rule (spent or cleared) until the next :meth:`reset`. Assert on it so a
        fault test fails when its rule stops matching, instead of passing without the fault::

            rule = emulator.add_fault(method="GET", path=r"/ai/finetunes$", times=2, action="drop")
            hook.list_finetunes()
            assert emulator.fired(rule) == 2

        Raises :class:`LookupError` for a rule the emulator does not know (added before the last reset).
        """
        rule_id = rule if isinstance(rule, int) else rule["id"]
        for item in self._control("GET", "/faults?all=true"):
            if item["id"] == rule_id:
                return int(item["fired"])
        raise LookupError(
            f"fault rule {rule_id} is unknown to this emulator: added to another emulator, or before the last reset"
        )

    def ask_worker(self, namespace_id: str, key: str, prompt: str, *, model: str | None = None) -> dict[str, Any]:
        """Ask the stand-in for the user's Worker: it reads KV key ``key`` and runs the model (the
        pointer's metadata ``model`` unless given) with the finetune the key names.

        Returns ``{"model", "lora", "response"}``; the response names the finetune that answered.
        """
        body: dict[str, Any] = {"namespace_id": namespace_id, "key": key, "prompt": prompt}
        if model is not None:
            body["model"] = model
        result: dict[str, Any] = self._control("POST", "/worker", body)
        return result

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.root_url}/__emulator{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        # An HTTP(S)_PROXY in the environment must not capture loopback control calls.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise RuntimeError(f"emulator control {method} {path} failed with HTTP {exc.code}: {detail}") from None


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError:
        return ""


class EmulatorProcess:
    """``python -m airflow_provider_cfai.emulator --port 0`` as a child process.

    Readiness is the "listening on" line on the child's stdout: the socket is bound and listening
    before that line is printed, so the first request waits in the backlog rather than failing.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        account_id: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        email: str | None = None,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 30.0,
        log_level: str = "warning",
        **settings: Any,
    ) -> None:
        self.token = token or secrets.token_hex(20)
        self.account_id = account_id or secrets.token_hex(16)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.email = email
        self.api_key = api_key
        self.host = host
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.settings = settings
        self.process: subprocess.Popen[str] | None = None
        self.emulator: RunningEmulator | None = None
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None
        self._log_file: IO[str] | None = None
        self._pump: threading.Thread | None = None

    @property
    def log_path(self) -> Path | None:
        """The child's stderr (uvicorn and emulator logs), kept until :meth:`stop`."""
        return Path(self._log_dir.name) / "emulator.log" if self._log_dir else None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "airflow_provider_cfai.emulator", "--host", self.host, "--port", "0"]
        cmd += ["--account-id", self.account_id, "--log-level", self.log_level]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        if self.email is not None:
            cmd += ["--email", self.email]
        if self.settings:
            cmd += ["--settings-json", json.dumps(self.settings)]
        return cmd

    def start(self) -> RunningEmulator:
        if self.process is not None:
            raise RuntimeError("emulator already started")
        self._log_dir = tempfile.TemporaryDirectory(prefix="cfai-emulator-log-")
        log_path = self.log_path
        assert log_path is not None
        self._log_file = log_path.open("w", encoding="utf-8")
        env = dict(os.environ)
        # Secrets go through the environment, not argv, so they stay out of `ps` listings.
        env["CFAI_EMULATOR_TOKEN"] = self.token
        if self.api_key is not None:
            env["CFAI_EMULATOR_API_KEY"] = self.api_key
        else:
            env.pop("CFAI_EMULATOR_API_KEY", None)
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        try:
            base_url = self._wait_for_url()
        except BaseException:
            self.stop()
            raise
        self.emulator = RunningEmulator(
            base_url,
            account_id=self.account_id,
            token=self.token,
            pid=self.process.pid,
            email=self.email,
            api_key=self.api_key,
        )
        return self.emulator

    def _wait_for_url(self) -> str:
        assert self.process is not None
        assert self.process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = self.process.stdout

        def pump() -> None:
            # Keeps reading after start-up too, so the child never blocks on a full pipe.
            for line in stdout:
                lines.put(line)
            lines.put(None)

        self._pump = threading.Thread(target=pump, name="cfai-emulator-stdout", daemon=True)
        self._pump.start()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                raise EmulatorStartupError(
                    f"emulator did not announce its URL within {self.startup_timeout:g}s; "
                    f"log:\n{_tail(self.log_path) if self.log_path else ''}"
                ) from None
            if line is None:
                code = self.process.wait()
                log_text = _tail(self.log_path) if self.log_path else ""
                raise EmulatorStartupError(f"emulator exited with code {code} before serving; log:\n{log_text}")
            if line.startswith(_READY_PREFIX):
                return line[len(_READY_PREFIX) :].strip()

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._pump is not None:
            # The child has exited, so the pump is at end-of-file; closing the pipe under it would
            # make it fail instead.
            self._pump.join(timeout)
            self._pump = None
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None

    def __enter__(self) -> RunningEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def run_emulator(
    *,
    token: str | None = None,
    account_id: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    **settings: Any,
) -> Iterator[RunningEmulator]:
    """Start an emulator process for the ``with`` block; ``settings`` are emulator settings
    (``rate_limit=5``, ``list_shape="nested"``, ...) plus ``email``, ``api_key``, ``host``,
    ``startup_timeout`` and ``log_level``."""
    with EmulatorProcess(token=token, account_id=account_id, data_dir=data_dir, **settings) as emulator:
        yield emulator


class SetsEnv(Protocol):
    """Anything that can set an environment variable, e.g. pytest's ``monkeypatch``."""

    def setenv(self, name: str, value: str, /) -> None: ...


def point_connection_at(emulator: RunningEmulator, env: SetsEnv, conn_id: str = DEFAULT_CONN_ID) -> None:
    """Make Airflow connection ``conn_id`` resolve to ``emulator`` through ``env.setenv``.

    With pytest's ``monkeypatch`` as ``env`` the variable is removed again after the test.
    """
    env.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", emulator.connection_json())
