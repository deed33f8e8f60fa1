"""One asset upload, from request to committed file: validation, streaming, limits, clean-up."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect

from airflow_provider_cfai.emulator.envelope import ApiError
from airflow_provider_cfai.emulator.multipart import (
    MultipartError,
    UploadTooLarge,
    boundary_of,
    discard,
    receive_upload,
)
from airflow_provider_cfai.emulator.state import ASSET_FILE_NAMES

if TYPE_CHECKING:
    from starlette.requests import Request

    from airflow_provider_cfai.emulator.state import EmulatorState

__all__ = ["ClientGone", "receive_asset"]

LINGER_SECONDS = 30.0


class ClientGone(Exception):
    """The client disconnected mid-upload; there is nobody left to answer."""


async def receive_asset(request: Request, state: EmulatorState, finetune_ref: str) -> dict[str, Any]:
    """Store the uploaded file for ``finetune_ref`` (id or name); return the legacy asset record.

    Every refusal leaves nothing behind: the partial temp file is deleted before the rest of the
    body is drained (so the client can read the error rather than see a reset).
    """
    max_bytes = state.settings.max_file_bytes
    finetune = state.find_finetune(finetune_ref)
    try:
        if finetune is None:
            raise ApiError(404, 3037, f"Finetune {finetune_ref} not found")
        boundary = boundary_of(request.headers.get("content-type"))
    except (ApiError, MultipartError) as exc:
        await discard(request.stream(), timeout=LINGER_SECONDS)
        raise _as_api_error(exc) from None
    finetune_id = finetune.id

    def on_field(name: str, value: str) -> None:
        # Runs as soon as the field's part ends, so a bad name sent first stops the upload before
        # a byte of the file is written.
        if name == "file_name":
            if value not in ASSET_FILE_NAMES:
                allowed = " or ".join(ASSET_FILE_NAMES)
                raise ApiError(400, 1007, f"Invalid file_name {value!r}: must be exactly {allowed}")
            state.check_asset_slot(finetune_id, value)

    temp_path = state.new_upload_path()
    stream = request.stream()
    try:
        upload = await receive_upload(
            stream, boundary, temp_path=temp_path, max_file_bytes=max_bytes, on_field=on_field
        )
        file_name = upload.fields.get("file_name")
        missing = [part for part, ok in (("file_name", file_name is not None), ("file", upload.has_file)) if not ok]
        if missing or file_name is None:
            raise ApiError(400, 1007, f"Missing multipart part(s): {', '.join(missing)}")
        return state.commit_asset(finetune_id, file_name, temp_path, size=upload.size, sha256=upload.sha256)
    except UploadTooLarge as exc:
        temp_path.unlink(missing_ok=True)
        state.record_refused_upload(finetune_id, exc.bytes_written, max_bytes)
        await discard(stream, timeout=LINGER_SECONDS)
        raise ApiError(413, 1009, f"File exceeds the maximum asset size of {max_bytes} bytes") from None
    except (ApiError, MultipartError) as exc:
        temp_path.unlink(missing_ok=True)
        await discard(stream, timeout=LINGER_SECONDS)
        raise _as_api_error(exc) from None
    except ClientDisconnect:
        raise ClientGone from None
    finally:
        with contextlib.suppress(OSError):
            temp_path.unlink(missing_ok=True)


def _as_api_error(exc: ApiError | MultipartError) -> ApiError:
    return exc if isinstance(exc, ApiError) else ApiError(400, 1007, str(exc))
