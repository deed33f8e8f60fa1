"""Which credential a request presents, and whether it is the right one.

Secrets never leave this module: rate-limit keys are hashes, errors never quote a header.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from typing import TYPE_CHECKING

from airflow_provider_cfai.emulator.envelope import ApiError

if TYPE_CHECKING:
    from airflow_provider_cfai.emulator.settings import EmulatorSettings

__all__ = ["Presented", "authenticate", "present"]

_BEARER = re.compile(r"Bearer\s+(\S+)\s*", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Presented:
    """What the request carries. ``kind`` is "token", "key" or None (nothing usable)."""

    kind: str | None
    rate_key: str
    secret: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    error: ApiError | None = None


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def present(headers: dict[str, str], client_host: str) -> Presented:
    """Read credentials from lower-cased request headers; the Bearer scheme wins over email + key."""
    authorization = headers.get("authorization")
    if authorization is not None:
        match = _BEARER.fullmatch(authorization)
        if match is None:
            error = ApiError(
                400,
                6003,
                "Invalid request headers",
                error_chain=[{"code": 6111, "message": "Invalid format for Authorization header"}],
            )
            return Presented(None, f"ip:{client_host}", error=error)
        token = match.group(1)
        return Presented("token", f"token:{_fingerprint(token)}", (token,))
    email, key = headers.get("x-auth-email"), headers.get("x-auth-key")
    if email and key:
        return Presented("key", f"key:{_fingerprint(email, key)}", (email, key))
    error = ApiError(400, 9106, "Missing X-Auth-Key, X-Auth-Email or Authorization headers")
    return Presented(None, f"ip:{client_host}", error=error)


def authenticate(presented: Presented, settings: EmulatorSettings, *, verify_route: bool) -> None:
    """Raise ApiError unless the presented credential is the configured one.

    A disabled or expired token still reaches the verify endpoints (they report its status) but is
    refused everywhere else, as Cloudflare does.
    """
    if presented.error is not None:
        raise presented.error
    if presented.kind == "token":
        (token,) = presented.secret
        if not hmac.compare_digest(token.encode(), settings.token.encode()):
            raise ApiError(401, 10000, "Authentication error")
        if settings.token_status != "active" and not verify_route:
            raise ApiError(401, 10000, "Authentication error")
        return
    email, key = presented.secret
    if settings.email is None or settings.api_key is None:
        raise ApiError(401, 10000, "Authentication error")
    email_ok = hmac.compare_digest(email.lower().encode(), settings.email.lower().encode())
    key_ok = hmac.compare_digest(key.encode(), settings.api_key.encode())
    if not (email_ok and key_ok):
        raise ApiError(401, 10000, "Authentication error")
