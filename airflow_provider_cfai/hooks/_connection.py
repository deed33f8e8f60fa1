"""Read and check the Airflow connection: credentials, account, base URL, transport settings."""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_cfai._numbers import whole_number
from airflow_provider_cfai.exceptions import CloudflareAPIError, CloudflareAuthError, CloudflareConfigError

if TYPE_CHECKING:
    from airflow.sdk import Connection

DEFAULT_API_PATH = "client/v4"
DEFAULT_BASE_URL = f"https://api.cloudflare.com/{DEFAULT_API_PATH}"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_RETRY_BUDGET = 180.0
_ACCOUNT_ID = re.compile(r"^[0-9a-fA-F]{32}$")
_HOST_NAME = re.compile(r"^([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|[0-9A-Fa-f:.]+)$")  # a DNS name, IPv4 or IPv6
_API_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)*/?$")  # no empty segments, no ports or schemes mistyped into it


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
    # Pacing across processes (hooks/_pacing.py): how many hosts may spend the token at once, and an
    # optional Redis holding one shared budget for all of them.
    rate_limit_sharers: int = 1
    redis_url: str | None = field(default=None, repr=False)
    redis_conn_id: str | None = None
    conn_id: str | None = None  # the Airflow connection these came from, for messages

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
        _mask_url_credentials(str(proxy))
    verify = extras.get("verify", True)
    return ConnectionSettings(
        account_id=checked_account_id(account_id),
        base_url=_base_url(name, conn.host, conn.port, conn.schema),
        timeout=_number(name, overrides, extras, "timeout", DEFAULT_TIMEOUT),
        max_retries=_max_retries(name, overrides, extras),
        retry_budget=_number(name, overrides, extras, "retry_budget", DEFAULT_RETRY_BUDGET),
        verify=verify if isinstance(verify, (bool, str)) else bool(verify),
        proxies={str(k): str(v) for k, v in proxies.items()},
        token=token,
        email=None if token else email,
        api_key=None if token else api_key,
        **_pacing_extras(name, extras),
        conn_id=name,
    )


def _mask_url_credentials(url: str) -> None:
    """Mask a URL that carries credentials, and its password on its own (a message may quote just that)."""
    from airflow.sdk.log import mask_secret

    if "@" not in url:
        return
    mask_secret(url)
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        mask_secret(password)


def _pacing_extras(conn_id: str, extras: Mapping[str, Any]) -> dict[str, Any]:
    """Extras ``rate_limit_sharers``, ``redis_url`` and ``redis_conn_id`` (see hooks/_pacing.py)."""
    from airflow.sdk.log import mask_secret

    value = extras.get("rate_limit_sharers", 1)
    sharers = whole_number(value, minimum=1)
    if sharers is None:
        raise CloudflareConfigError(
            f"Connection {conn_id!r}: extra 'rate_limit_sharers' must be a whole number of at least 1 (the hosts "
            f"that may use this token at the same time), got {value!r}."
        )
    redis_url = str(extras.get("redis_url") or "").strip() or None
    redis_conn_id = str(extras.get("redis_conn_id") or "").strip() or None
    if redis_url and redis_conn_id:
        raise CloudflareConfigError(
            f"Connection {conn_id!r}: set one of the extras 'redis_url' and 'redis_conn_id', not both."
        )
    if redis_url:
        parts = urlsplit(redis_url)
        if parts.password:
            mask_secret(parts.password)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise CloudflareConfigError(
                f"Connection {conn_id!r}: extra 'redis_url' must look like redis://host:6379/0 "
                f"(or rediss://, unix://), got a {parts.scheme or 'schemeless'} URL."
            )
    return {"rate_limit_sharers": sharers, "redis_url": redis_url, "redis_conn_id": redis_conn_id}


def _number(conn_id: str, overrides: Mapping[str, Any], extras: Mapping[str, Any], key: str, default: float) -> float:
    value = overrides.get(key)
    if value is None:
        value = extras.get(key, default)
    zero_allowed = key != "timeout"
    kind = "a non-negative" if zero_allowed else "a positive"
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0 or (number == 0 and not zero_allowed):
        raise CloudflareConfigError(f"Connection {conn_id!r}: extra {key!r} must be {kind} number, got {value!r}.")
    return number


def _max_retries(conn_id: str, overrides: Mapping[str, Any], extras: Mapping[str, Any]) -> int:
    value = overrides.get("max_retries")
    if value is None:
        value = extras.get("max_retries", DEFAULT_MAX_RETRIES)
    retries = whole_number(value)
    if retries is None:
        raise CloudflareConfigError(
            f"Connection {conn_id!r}: extra 'max_retries' must be a non-negative whole number, got {value!r}."
        )
    return retries


@functools.cache
def user_agent(client: str) -> str:
    """``airflow-provider-cfai/<version> apache-airflow/<version> <client>`` for both transports."""
    from importlib.metadata import PackageNotFoundError, version

    from airflow_provider_cfai import __version__

    try:
        airflow_version = version("apache-airflow-core")
    except PackageNotFoundError:  # pragma: no cover - Airflow installed from source
        airflow_version = "unknown"
    return f"airflow-provider-cfai/{__version__} apache-airflow/{airflow_version} {client}"


def missing_connection_error(conn_id: str, conn_type: str, error: Exception) -> CloudflareConfigError | None:
    """A permanent error for a connection ID that does not exist, or ``None`` for any other failure.

    Airflow raises its not-found error (from ``airflow.exceptions`` or ``airflow.sdk.exceptions``,
    depending on the version), which Airflow would retry with the task's delay: a typo never heals.
    """
    if not any(cls.__name__ == "AirflowNotFoundException" for cls in type(error).__mro__):
        return None
    return CloudflareConfigError(
        f"Airflow connection {conn_id!r} does not exist. Check the task's cloudflare_conn_id for a typo, or "
        f"create it, e.g. `airflow connections add {conn_id} --conn-type {conn_type} --conn-login <account id> "
        f"--conn-password <api token>` or an AIRFLOW_CONN_{conn_id.upper()} environment variable."
    )


def checked_account_id(account_id: str) -> str:
    """The account ID, lower-cased, if it has Cloudflare's shape (32 hex characters)."""
    if not _ACCOUNT_ID.match(account_id):
        raise CloudflareConfigError(
            f"Account ID {account_id!r} is not 32 hexadecimal characters; copy it from the "
            "Cloudflare dashboard (Workers AI → Account ID)."
        )
    return account_id.lower()


def _base_url(conn_id: str, host: str | None, port: int | None, schema: str | None) -> str:
    """The API base URL from the connection's host, port and schema, read the same way for every form.

    ``host`` may be a bare host name or a URL; a port or path it carries wins over the ``port`` and
    ``schema`` fields only when those are empty, so the URI form
    ``cloudflare-ai://http://<account>:<token>@127.0.0.1:8787/client/v4`` (which Airflow stores as host
    ``http://127.0.0.1``, port 8787, schema ``client/v4``) and the JSON form with a full URL in
    ``host`` give the same base URL.
    """
    host = (host or "").strip()
    schema = (schema or "").strip().strip("/")
    if not host:
        if port or schema:
            raise CloudflareConfigError(
                f"Connection {conn_id!r}: port or schema is set but host is empty; set host to the API "
                f"base URL, e.g. {DEFAULT_BASE_URL}"
            )
        return DEFAULT_BASE_URL
    parts = urlsplit(host if "://" in host else f"https://{host}")
    invalid = CloudflareConfigError(
        f"Connection {conn_id!r}: host {host!r} is not a valid API base URL; use e.g. {DEFAULT_BASE_URL} "
        "or api.cloudflare.com"
    )
    try:
        host_port = parts.port
    except ValueError:
        raise invalid from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not _HOST_NAME.match(parts.hostname)
        or not _API_PATH.match(parts.path)
        or parts.query
        or parts.fragment
    ):
        raise invalid
    if parts.username or parts.password:
        raise CloudflareConfigError(
            f"Connection {conn_id!r}: host must not carry credentials; put the API token in the password field."
        )
    if host_port is not None and port and host_port != port:
        raise CloudflareConfigError(
            f"Connection {conn_id!r}: host {host!r} names port {host_port} but the port field says {port}; "
            "keep one of them."
        )
    host_path = parts.path.strip("/")
    if host_path and schema and host_path != schema:
        raise CloudflareConfigError(
            f"Connection {conn_id!r}: host {host!r} names path /{host_path} but the schema field says "
            f"{schema!r}; keep one of them."
        )
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    effective_port = host_port or port
    if effective_port:
        netloc += f":{effective_port}"
    path = host_path or schema or DEFAULT_API_PATH
    return f"{parts.scheme}://{netloc}/{path}"


def _extras(raw: Mapping[str, Any], conn_type: str) -> dict[str, Any]:
    """Connection extras, accepting the ``extra__<conn_type>__<field>`` names older UIs wrote."""
    prefix = f"extra__{conn_type}__"
    extras = {key.removeprefix(prefix): value for key, value in raw.items() if key.startswith(prefix)}
    extras.update({key: value for key, value in raw.items() if not key.startswith(prefix)})
    return {key: value for key, value in extras.items() if value not in (None, "")}


def credentials_hint(settings: ConnectionSettings, conn_id: str, error: CloudflareAPIError) -> str | None:
    """What to fix in the connection when Cloudflare refused its account or credentials, else ``None``.

    The same words for a task's error and for ``airflow connections test``.
    """
    if 7003 in error.codes:
        # "Could not route to /accounts/…": the account part of the path is what is wrong.
        return (
            f"Cloudflare has no account {settings.account_id!r} for these credentials; check the login (the "
            f"account ID) of Airflow connection {conn_id!r}, not the token"
        )
    if not isinstance(error, CloudflareAuthError):
        return None
    if settings.token:
        return (
            f"Cloudflare refused the API token of Airflow connection {conn_id!r}; check that its password is an "
            f"active token with permission 'Workers AI Write' (try `airflow connections test {conn_id}`)"
        )
    return (
        f"Cloudflare refused the email and Global API key of Airflow connection {conn_id!r}; check its extras "
        "'email' and 'api_key'"
    )


def origin(base_url: str) -> str:
    """``scheme://host:port`` of a URL: where a request went, without path, query or credentials.

    How both hooks name the server in their messages (an IPv6 host in brackets).
    """
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{host}:{port}"
