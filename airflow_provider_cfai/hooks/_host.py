"""This host: who this process is, whether another process of the host still runs, and the private
directory where the host's processes share what they learned (pacing state, the model catalog).

Imports nothing of the provider's: pacing and the catalog cache both stand on it.
"""

from __future__ import annotations

import functools
import os
import socket
import tempfile
from pathlib import Path

__all__ = ["STATE_DIR_ENV", "after_fork", "boot_id", "holder_alive", "private_dir", "process_identity", "state_dir"]

#: Environment variable naming the directory for the host's state files (tests point it at a temp dir).
STATE_DIR_ENV = "CFAI_RATE_LIMIT_DIR"

_HAS_PROC = os.path.exists("/proc/self/stat")


@functools.lru_cache(maxsize=1)
def boot_id() -> str:
    """This boot of the host ("" where unknown): ``time.monotonic()`` values from another boot mean nothing."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


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
    """``host|pid|start time``: names this process's holders in a pacing state."""
    return f"{socket.gethostname()}|{os.getpid()}|{_start_time(os.getpid()) or ''}"


def after_fork() -> None:
    """In a forked child: it is another process."""
    process_identity.cache_clear()


def holder_alive(holder: str) -> bool | None:
    """Whether the process named by a holder (``host|pid|start time|…``) runs; ``None`` for a holder on
    another host. A pid now used by a process that started at another time is a dead holder's."""
    host, _, rest = holder.partition("|")
    pid, _, rest = rest.partition("|")
    started = rest.partition("|")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    now_started = _start_time(int(pid))
    if now_started is None:
        return False
    # A pid now used by a process that started at another time: the holder's process is gone.
    return not (started and now_started and now_started != started)


def state_dir() -> Path:
    """Where the host's state files go: ``$CFAI_RATE_LIMIT_DIR``, or a per-user folder in the temp dir."""
    configured = os.environ.get(STATE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"airflow-provider-cfai-{os.getuid() if hasattr(os, 'getuid') else 0}"


def private_dir(path: Path) -> Path:
    """Create ``path`` for this user only; refuse one that someone else could write to."""
    import stat

    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{path} is not a directory")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise OSError(f"{path} belongs to another user")
    if info.st_mode & 0o022:
        raise OSError(f"{path} is writable by other users")
    return path
