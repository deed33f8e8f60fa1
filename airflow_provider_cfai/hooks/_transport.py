"""HTTP plumbing for the hook: the connection adapter, User-Agent, transport errors, progress.

Imported only once the hook sends its first request: it pulls in ``requests``.
"""

from __future__ import annotations

import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from airflow_provider_cfai.hooks._connection import origin


class BlockSizeAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections write request bodies in larger blocks.

    http.client sends a streamed body 8 KiB at a time; for adapter files of hundreds of MB that is
    tens of thousands of Python-level reads. A larger block keeps the upload near wire speed while
    memory stays bounded by the block size.
    """

    def __init__(self, *, blocksize: int, **kwargs: Any) -> None:
        self._blocksize = blocksize
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs.setdefault("blocksize", self._blocksize)
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)


def may_have_been_sent(error: requests.exceptions.RequestException) -> bool:
    """False only when the request certainly never reached the server (connect failures)."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return False
    if isinstance(error, requests.exceptions.ConnectionError):
        reason = getattr(error.args[0], "reason", None) if error.args else None
        from urllib3.exceptions import NewConnectionError

        return not isinstance(reason, NewConnectionError)
    return True


def describe_transport_error(error: requests.exceptions.RequestException, read_timeout: float, base_url: str) -> str:
    """What went wrong and where, so a wrong base URL is obvious from the message alone."""
    where = origin(base_url)
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return f"could not connect to {where} (connect timeout)"
    if isinstance(error, requests.exceptions.ReadTimeout):
        return f"no response from {where} within {read_timeout:.0f} s (read timeout)"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return f"the connection to {where} broke while reading the response"
    if isinstance(error, requests.exceptions.ConnectionError):
        return f"connection error talking to {where} ({_root_cause(error)})"
    return f"{type(error).__name__} talking to {where} ({_root_cause(error)})"


def _root_cause(error: BaseException) -> str:
    # Only exception class names: their texts may carry URLs with proxy credentials.
    seen = error
    while seen.__context__ is not None and seen.__context__ is not seen:
        seen = seen.__context__
    reason = getattr(error.args[0], "reason", None) if error.args else None
    names = [type(error).__name__]
    if reason is not None:
        names.append(type(reason).__name__)
    if seen is not error:
        names.append(type(seen).__name__)
    return " ← ".join(dict.fromkeys(names))


class ProgressLogger:
    """Logs an upload's progress at most every 10 %."""

    def __init__(self, log: Any, file_name: str, total: int) -> None:
        self._log, self._file_name, self._total = log, file_name, max(total, 1)
        self._next = 10
        self._started = time.monotonic()

    def __call__(self, monitor: Any) -> None:
        percent = monitor.bytes_read * 100 // self._total
        if percent < self._next:
            return
        self._next = (percent // 10 + 1) * 10
        elapsed = max(time.monotonic() - self._started, 1e-6)
        self._log.info("%s: %d%% uploaded (%.1f MiB/s)", self._file_name, percent, monitor.bytes_read / elapsed / 2**20)
