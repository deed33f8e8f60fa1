"""A token's pacing state in a file, shared by every process of a host under ``flock``.

Airflow runs every task in a fresh process, so a window learned in memory dies with the task. The
state lives instead in ``<temp dir>/airflow-provider-cfai-<uid>/<credential digest>.json`` (or the
directory named by ``$CFAI_RATE_LIMIT_DIR``): slot counts, times and process ids, never a secret;
the file name is a SHA-256 digest of the base URL and the credential.

Each holder is named ``host|pid|process start time|gate``. A holder of this host whose process is
gone (or whose pid now belongs to a younger process) is reaped on the next transaction. Times are
``time.monotonic()``, one clock for the whole host; a state written before the last boot is dropped.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from airflow_provider_cfai.policy import WindowState

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_cfai.hooks._pacing import StateStore

__all__ = ["STATE_DIR_ENV", "FileStore", "host_store", "process_identity", "state_dir"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Environment variable naming the directory for the state files (tests point it at a temp dir).
STATE_DIR_ENV = "CFAI_RATE_LIMIT_DIR"


@functools.lru_cache(maxsize=1)
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


_HAS_PROC = os.path.exists("/proc/self/stat")


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot) from /proc; ``""`` where /proc is missing;
    ``None`` when no such process runs (a zombie has finished, so it counts as gone)."""
    if _HAS_PROC:
        try:
            raw = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            return None
        # Fields from the 3rd on follow the command name, which is in parentheses and may hold spaces.
        fields = raw[raw.rindex(b")") + 2 :].split()
        return None if fields[0] in (b"Z", b"X") else fields[19].decode()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


@functools.lru_cache(maxsize=1)
def process_identity() -> str:
    """``host|pid|start time``: names this process's holders in a state."""
    return f"{socket.gethostname()}|{os.getpid()}|{_start_time(os.getpid()) or ''}"


def after_fork() -> None:
    process_identity.cache_clear()


def holder_alive(holder: str) -> bool | None:
    """Whether a holder's process runs; ``None`` for a holder on another host."""
    host, _, rest = holder.partition("|")
    pid, _, rest = rest.partition("|")
    started = rest.partition("|")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    now_started = _start_time(int(pid))
    return now_started is not None and (not started or not now_started or now_started == started)


def state_dir() -> Path:
    configured = os.environ.get(STATE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"airflow-provider-cfai-{os.getuid() if hasattr(os, 'getuid') else 0}"


def _private_dir(path: Path) -> Path:
    """Create ``path`` for this user only; refuse one that someone else could write to."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{path} is not a directory")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise OSError(f"{path} belongs to another user")
    if info.st_mode & 0o022:
        raise OSError(f"{path} is writable by other users")
    return path


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
            data = json.dumps({"boot": _boot_id(), "state": state.to_dict()}, separators=(",", ":")).encode()
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
            if document.get("boot") != _boot_id():
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
    from airflow_provider_cfai.hooks._pacing import MemoryStore

    directory = state_dir()
    try:
        return FileStore(_private_dir(directory) / f"{key[:40]}.json")
    except OSError as error:
        log.warning(
            "Cannot keep the rate-limit state in %s (%s): pacing within this process only. Set %s to a "
            "private directory to share it between the processes of this host.",
            directory,
            error,
            STATE_DIR_ENV,
        )
        return MemoryStore()
