"""Read and check the Airflow connection: credentials, account, base URL, transport settings."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_cfai.exceptions import CloudflareConfigError

if TYPE_CHECKING:
    from airflow.sdk import Connection

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_RETRY_BUDGET = 180.0
_ACCOUNT_ID = re.compile(r"^[0-9a-fA-F]{32}$")
_BARE_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]+)?$")


@dataclass(frozen=True)
class ConnectionSettings:
    """What the hook needs from the Airflow connection, read once and checked."""

    account_id: str
    base_url: str
    timeout: float
    max_retries: int
    retry_budget: float
    verify: bool | str = True
    proxies: dict[str, str] = field(default_factory=dict, repr=False)
    token: str | None = field(default=None, repr=False)
    email: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)

    @property
    def auth_headers(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        return {"X-Auth-Email": self.email or "", "X-Auth-Key": self.api_key or ""}

    @property
    def credential_digest(self) -> str:
        secret = self.token or f"{self.email}:{self.api_key}"
        return hashlib.sha256(f"{self.base_url}|{secret}".encode()).hexdigest()


def read_settings(conn: Connection, conn_id: str, conn_type: str, overrides: Mapping[str, Any]) -> ConnectionSettings:
    """Check the connection and mask its secrets the moment they are read."""
    from airflow.sdk.log import mask_secret

    extras = _extras(conn.extra_dejson, conn_type)
    name = conn_id
    token = (conn.password or "").strip() or None
    email = str(extras.get("email") or "").strip() or None
    api_key = str(extras.get("api_key") or "").strip() or None
    for secret in (token, api_key, email):
        if secret:
            mask_secret(secret)
    if not token and not (email and api_key):
        raise CloudflareConfigError(
            f"Connection {name!r} has no credentials: set its password to a Cloudflare API token "
            "(permission 'Workers AI Write'), or set both extras 'email' and 'api_key'."
        )
    account_id = (conn.login or "").strip()
    if not account_id:
        raise CloudflareConfigError(
            f"Connection {name!r} has no account ID: set its login to your 32-character Cloudflare "
            "account ID (dashboard → Workers AI → Account ID)."
        )
    proxies = extras.get("proxies") or {}
    if not isinstance(proxies, Mapping):
        raise CloudflareConfigError(f"Connection {name!r}: extra 'proxies' must be a JSON object.")
    for proxy in proxies.values():
        if "@" in str(proxy):
            mask_secret(str(proxy))
    verify = extras.get("verify", True)
    return ConnectionSettings(
        account_id=checked_account_id(account_id),
        base_url=_base_url(name, conn.host, conn.port, conn.schema),
        timeout=_number(name, overrides, extras, "timeout", DEFAULT_TIMEOUT),
        max_retries=int(_number(name, overrides, extras, "max_retries", DEFAULT_MAX_RETRIES)),
        retry_budget=_number(name, overrides, extras, "retry_budget", DEFAULT_RETRY_BUDGET),
        verify=verify if isinstance(verify, (bool, str)) else bool(verify),
        proxies={str(k): str(v) for k, v in proxies.items()},
        token=token,
        email=None if token else email,
        api_key=None if token else api_key,
    )


def _number(conn_id: str, overrides: Mapping[str, Any], extras: Mapping[str, Any], key: str, default: float) -> float:
    value = overrides.get(key)
    if value is None:
        value = extras.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if number < 0 or (key == "timeout" and number == 0):
        raise CloudflareConfigError(f"Connection {conn_id!r}: extra {key!r} must be a positive number, got {value!r}.")
    return number


def checked_account_id(account_id: str) -> str:
    """The account ID, lower-cased, if it has Cloudflare's shape (32 hex characters)."""
    if not _ACCOUNT_ID.match(account_id):
        raise CloudflareConfigError(
            f"Account ID {account_id!r} is not 32 hexadecimal characters; copy it from the "
            "Cloudflare dashboard (Workers AI → Account ID)."
        )
    return account_id.lower()


def _base_url(conn_id: str, host: str | None, port: int | None, schema: str | None) -> str:
    host = (host or "").strip()
    if not host:
        return DEFAULT_BASE_URL
    if "://" in host:
        url = host
    elif _BARE_HOST.match(host):
        url = f"https://{host}{f':{port}' if port else ''}/{(schema or 'client/v4').strip('/')}"
    else:
        url = ""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
        raise CloudflareConfigError(
            f"Connection {conn_id!r}: host {host!r} is not a valid API base URL; use e.g. {DEFAULT_BASE_URL}"
        )
    if parts.username or parts.password:
        raise CloudflareConfigError(
            f"Connection {conn_id!r}: host must not carry credentials; put the API token in the password field."
        )
    return url.rstrip("/")


def _extras(raw: Mapping[str, Any], conn_type: str) -> dict[str, Any]:
    """Connection extras, accepting the ``extra__<conn_type>__<field>`` names older UIs wrote."""
    prefix = f"extra__{conn_type}__"
    extras = {key.removeprefix(prefix): value for key, value in raw.items() if key.startswith(prefix)}
    extras.update({key: value for key, value in raw.items() if not key.startswith(prefix)})
    return {key: value for key, value in extras.items() if value not in (None, "")}
