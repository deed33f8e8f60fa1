"""A token's pacing state in a file, shared by every process of a host under ``flock``.

Airflow runs every task in a fresh process, so a window learned in memory dies with the task. The
state lives instead in ``<temp dir>/airflow-provider-cfai-<uid>/<credential digest>.json`` (or the
directory named by ``$CFAI_RATE_LIMIT_DIR``): slot counts, times and process ids, never a secret;
the file name is a SHA-256 digest of the base URL and the credential.

Each holder is named ``host|pid|process start time|gate``. A holder of this host whose process is
gone (or whose pid now belongs to a younger process) is reaped on the next transaction; any other
holder (a container sharing the directory under another host name) when its claim lapses. Times are
``time.monotonic()``, one clock for the whole host; a state written before the last boot is dropped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, TypeVar

from airflow_provider_cfai.hooks._host import STATE_DIR_ENV, boot_id, holder_alive, private_dir, state_dir
from airflow_provider_cfai.hooks._pacing_rules import WindowState
from airflow_provider_cfai.hooks._pacing_store import MemoryStore, StateStore

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["FileStore", "host_store"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class FileStore:
    """One token's state in a file, read and written under an exclusive ``flock``."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.description = f"the state file {path}"
        self._clock = clock
        self._fd: int | None = None
        self._open_lock = threading.Lock()
        self._warned = False

    def _descriptor(self) -> int:
        with self._open_lock:
            if self._fd is None:
                flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                self._fd = os.open(self.path, flags, 0o600)
            return self._fd

    def transact(self, update: Callable[[WindowState, float], T]) -> T:
        import fcntl

        fd = self._descriptor()
        fcntl.flock(fd, fcntl.LOCK_EX)
        info = os.fstat(fd)
        if info.st_nlink == 0:  # deleted under us (a temp-dir cleaner): share the file others now use
            fcntl.flock(fd, fcntl.LOCK_UN)
            self.after_fork()
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = self._descriptor()
            fcntl.flock(fd, fcntl.LOCK_EX)
            info = os.fstat(fd)
        try:
            size = info.st_size
            state = self._decode(os.pread(fd, size, 0) if size else b"")
            result = update(state, self._clock())
            data = json.dumps({"boot": boot_id(), "state": state.to_dict()}, separators=(",", ":")).encode()
            # One write, padded with spaces (valid JSON) instead of truncating: a process killed
            # mid-transaction leaves either the old state or the new one, never half of each.
            os.pwrite(fd, data.ljust(size), 0)
            return result
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _decode(self, raw: bytes) -> WindowState:
        if not raw.strip():
            return WindowState()
        try:
            document = json.loads(raw)
            if document.get("boot") != boot_id():
                return WindowState()  # monotonic times from before a reboot mean nothing now
            return WindowState.from_dict(document.get("state"))
        except (ValueError, AttributeError) as error:
            if not self._warned:
                self._warned = True
                log.warning("Rate-limit state %s was unreadable (%s); starting it afresh", self.path, error)
            return WindowState()

    def alive(self, holder: str) -> bool | None:
        return holder_alive(holder)

    def after_fork(self) -> None:
        # The child's copy of the descriptor shares the parent's open file, hence its flock: a lock
        # taken through it would not exclude the parent. Closing the copy leaves the parent's alone.
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._open_lock = threading.Lock()


def host_store(key: str) -> StateStore:
    """The host-wide store for a credential digest; this process's memory if no private dir is usable."""
    directory = state_dir()
    try:
        return FileStore(private_dir(directory) / f"{key[:40]}.json")
    except OSError as error:
        log.warning(
            "Cannot keep the rate-limit state in %s (%s): pacing within this process only. Set %s to a "
            "private directory to share it between the processes of this host.",
            directory,
            error,
            STATE_DIR_ENV,
        )
        return MemoryStore()
