"""A real ``redis-server`` for the tests, started once per session on a free loopback port.

Registered in ``tests/conftest.py`` (``pytest_plugins``). Where ``redis-server`` is not installed,
the tests that need it are skipped with that reason on a developer's machine, and fail in CI
(``CI=true``): ``.ci/run`` installs it, so a missing server there is a broken build, never a
silently skipped guarantee.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_STARTUP_SECONDS = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _binary() -> str:
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )
    if found is None:
        message = (
            "redis-server is not installed, and the Redis rate-limiter tests need a real one "
            "(Debian/Ubuntu: apt-get install -y redis-server; .ci/run does this)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def _start(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    import redis

    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + _STARTUP_SECONDS
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                client.ping()
                return proc, port
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    proc.kill()
    output = proc.communicate()[0].decode(errors="replace")
    raise RuntimeError(f"redis-server on port {port} did not answer within {_STARTUP_SECONDS:g} s:\n{output[-2000:]}")


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a redis-server that lives for the whole session."""
    binary = _binary()
    workdir = tmp_path_factory.mktemp("redis")
    for attempt in range(3):  # another process may take the free port between the probe and the bind
        try:
            proc, port = _start(binary, workdir)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The session's Redis, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server_url
