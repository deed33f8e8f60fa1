"""Streaming ``multipart/form-data`` reader: the file part goes straight to disk, never into memory.

Byte counting and hashing happen as chunks arrive, so an over-size upload is refused as soon as it
passes the limit rather than after it has been stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from typing import IO, TYPE_CHECKING

from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from python_multipart.multipart import MultipartCallbacks

__all__ = ["MultipartError", "ReceivedUpload", "UploadTooLarge", "boundary_of", "discard", "receive_upload"]

_MAX_FIELD_BYTES = 4096


class MultipartError(ValueError):
    """The body is not the multipart/form-data it claims to be."""


class UploadTooLarge(Exception):
    def __init__(self, bytes_written: int) -> None:
        super().__init__(bytes_written)
        self.bytes_written = bytes_written


@dataclasses.dataclass
class ReceivedUpload:
    fields: dict[str, str]
    has_file: bool
    size: int
    sha256: str


def boundary_of(content_type: str | None) -> bytes:
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise MultipartError("Content-Type must be multipart/form-data with a boundary")
    return params[b"boundary"]


class _Receiver:
    """Parser callbacks; one instance per upload."""

    def __init__(self, file_field: str, temp_path: Path, max_bytes: int, on_field: Callable[[str, str], None]) -> None:
        self.file_field = file_field
        self.temp_path = temp_path
        self.max_bytes = max_bytes
        self.on_field = on_field
        self.fields: dict[str, str] = {}
        self.size = 0
        self.digest = hashlib.sha256()
        self.file: IO[bytes] | None = None
        self.file_seen = False
        self.finished = False
        self._headers: dict[str, bytes] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._part: str | None = None
        self._is_file = False
        self._value = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._part = None
        self._is_file = False
        self._value = bytearray()

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition"))
        name = params.get(b"name")
        if disposition != b"form-data" or name is None:
            raise MultipartError("every part needs Content-Disposition: form-data with a name")
        self._part = name.decode("utf-8", "replace")
        if self._part == self.file_field:
            if self.file_seen:
                raise MultipartError(f"more than one {self.file_field!r} part")
            self.file_seen = True
            self._is_file = True
            self.file = self.temp_path.open("wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            assert self.file is not None
            self.size += end - start
            if self.size > self.max_bytes:
                raise UploadTooLarge(self.file.tell())
            chunk = memoryview(data)[start:end]
            self.digest.update(chunk)
            self.file.write(chunk)
            return
        self._value.extend(data[start:end])
        if len(self._value) > _MAX_FIELD_BYTES:
            raise MultipartError(f"form field {self._part!r} is longer than {_MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._is_file:
            assert self.file is not None
            self.file.close()
            return
        assert self._part is not None
        try:
            value = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise MultipartError(f"form field {self._part!r} is not UTF-8") from None
        self.fields[self._part] = value
        self.on_field(self._part, value)

    def _end(self) -> None:
        self.finished = True

    def close(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()


async def receive_upload(
    stream: AsyncIterator[bytes],
    boundary: bytes,
    *,
    temp_path: Path,
    max_file_bytes: int,
    file_field: str = "file",
    on_field: Callable[[str, str], None] = lambda name, value: None,
) -> ReceivedUpload:
    """Parse the body from ``stream``, writing part ``file_field`` to ``temp_path``.

    ``on_field`` sees each text field as soon as it is complete and may raise to abort the upload.
    On any exception the caller owns ``temp_path`` (it may exist, partly written) and the rest of the
    stream (unread).
    """
    receiver = _Receiver(file_field, temp_path, max_file_bytes, on_field)
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except (UploadTooLarge, MultipartError):
        raise
    except ValueError as exc:
        # python-multipart's own parse errors subclass ValueError.
        raise MultipartError(f"malformed multipart body: {exc}") from None
    finally:
        receiver.close()
    if not receiver.finished:
        raise MultipartError("multipart body ended before its closing boundary")
    return ReceivedUpload(
        fields=receiver.fields,
        has_file=receiver.file_seen,
        size=receiver.size,
        sha256=receiver.digest.hexdigest(),
    )


async def discard(stream: AsyncIterator[bytes], *, timeout: float) -> None:
    """Read and drop the rest of a request body, so the client can read our answer.

    Answering before the body is consumed makes the server close the connection with unread data,
    which the client sees as a reset instead of the error; like nginx's lingering close, the wait is
    bounded.
    """
    # ClientDisconnect and friends just mean there is nothing left to drain.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(_drain(stream), timeout)


async def _drain(stream: AsyncIterator[bytes]) -> None:
    async for _ in stream:
        pass
