"""URLs as logs, messages and XCom may show them: without credentials or signed-URL tokens."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """``url`` without credentials, query string or fragment, for logs, messages and XCom.

    User info with a password goes whole (``s3://KEY:SECRET@bucket``: the key ID too); a user name
    alone stays, since it is how Airflow's object storage names a connection (``s3://aws_default@bucket``)
    and is no secret. The query goes because signed URLs carry their token there (and Redis URLs may
    carry ``?password=``). Each link of an fsspec chain (``zip://x::s3://...``) is cleaned; a plain
    path comes back as given.
    """
    if "://" not in url:
        return url
    cleaned = []
    for part in url.split("::"):
        split = urlsplit(part)
        userinfo, _, host = split.netloc.rpartition("@")
        netloc = f"{userinfo}@{host}" if userinfo and ":" not in userinfo else host
        cleaned.append(urlunsplit((split.scheme, netloc, split.path, "", "")))
    return "::".join(cleaned)
