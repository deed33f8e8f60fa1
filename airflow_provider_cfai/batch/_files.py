"""Where batch files live: local paths, fsspec URLs and ``ObjectStoragePath`` strings, behind one API.

A location is always a string here (the trigger's kwargs must be plain data). An
``ObjectStoragePath`` keeps its connection in its string form (``s3://my_conn@bucket/key``), so it is
rebuilt as an ``ObjectStoragePath`` to open it; other URLs go to fsspec. Local paths use the
standard library and never import fsspec.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_cfai._urls import redact_url

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "check_writable",
    "describe",
    "exists",
    "local_path",
    "open_read",
    "read_text",
    "remove",
    "upload",
    "write_text",
]


def local_path(location: str) -> str | None:
    """The absolute local path of ``location``, or ``None`` if it lives on another filesystem."""
    if "::" in location:
        return None
    if "://" not in location:
        return os.path.abspath(os.path.expanduser(location))
    if location.startswith("file://"):
        rest = location[len("file://") :]
        if rest.startswith("/"):  # no ``conn_id@`` before the path
            return rest
    return None


def describe(location: str) -> str:
    """``location`` without a password or query string (signed-URL tokens), for XCom and messages.

    A connection id before ``@`` stays: it is not a secret and the location must still open.
    """
    return redact_url(location)


def _remote(location: str) -> tuple[Any, str]:
    if "::" not in location:
        try:
            from airflow.sdk import ObjectStoragePath

            path = ObjectStoragePath(location)
            return path.fs, str(path.path)
        except (ValueError, ImportError, KeyError):
            pass  # a scheme Airflow has no filesystem for (e.g. memory://): plain fsspec below
    try:
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(location)
    except (ImportError, ValueError) as exc:  # unknown protocol, or its package is not installed
        from airflow_provider_cfai.exceptions import CloudflareInputError

        raise CloudflareInputError(f"Cannot open {describe(location)}: {exc}") from exc
    return fs, str(path)


@contextlib.contextmanager
def open_read(location: str) -> Iterator[IO[bytes]]:
    """Open ``location`` for binary reading (raises ``FileNotFoundError`` when it is missing)."""
    path = local_path(location)
    if path is not None:
        with open(path, "rb") as handle:
            yield handle
        return
    fs, remote = _remote(location)
    with fs.open(remote, "rb") as handle:
        yield handle


def exists(location: str) -> bool:
    path = local_path(location)
    if path is not None:
        return os.path.exists(path)
    fs, remote = _remote(location)
    return bool(fs.exists(remote))


def read_text(location: str) -> str | None:
    """The file's text, or ``None`` if it does not exist."""
    try:
        with open_read(location) as handle:
            return handle.read().decode("utf-8")
    except FileNotFoundError:
        return None


def write_text(location: str, text: str) -> None:
    """Replace the file's content (atomically for local files: a crash leaves the old or the new)."""
    data = text.encode("utf-8")
    path = local_path(location)
    if path is None:
        fs, remote = _remote(location)
        _makedirs(fs, remote)
        with fs.open(remote, "wb") as handle:
            handle.write(data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cfai-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_writable(location: str, field: str) -> None:
    """Fail with a message naming ``location`` when a local file cannot be written there.

    Checked before any call: otherwise the first write (a temporary file next to it) fails with an
    OS error naming a file the user never chose, which Airflow would retry forever in vain. Remote
    locations are not probed (a probe would cost a write); their errors name them already.
    """
    path = local_path(location)
    if path is None:
        return
    parent = os.path.dirname(path)
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(21, "it is a folder")
        os.makedirs(parent, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cfai-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        from airflow_provider_cfai.exceptions import CloudflareInputError

        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            reason = "one of its parent folders is a file"
        raise CloudflareInputError(
            f"{field} {describe(location)} cannot be written ({reason}); set {field} to a file in a folder "
            "this task can write (its parents must be folders, not files)"
        ) from None


def remove(location: str) -> None:
    path = local_path(location)
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    fs, remote = _remote(location)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(remote)


def upload(local: str, location: str) -> None:
    fs, remote = _remote(location)
    _makedirs(fs, remote)
    fs.put_file(local, remote)


def _makedirs(fs: Any, remote: str) -> None:
    parent = remote.rsplit("/", 1)[0]
    if parent and parent != remote:
        # Object stores have no folders; filesystems that do need the parent to exist.
        with contextlib.suppress(OSError, NotImplementedError):
            fs.makedirs(parent, exist_ok=True)
