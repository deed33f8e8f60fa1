"""One rule for showing a URL in logs, messages and XCom (adapter folders, batch files, Redis)."""

from __future__ import annotations

import pytest

from airflow_provider_cfai._urls import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("/data/adapter", "/data/adapter", id="local-path-as-given"),
        pytest.param("s3://bucket/a?X-Amz-Signature=sig#frag", "s3://bucket/a", id="query-and-fragment-go"),
        pytest.param("s3://AKIAKEY:s3cr3t@bucket/a", "s3://bucket/a", id="key-id-and-secret-go"),
        pytest.param("s3://aws_default@bucket/a", "s3://aws_default@bucket/a", id="connection-id-stays"),
        pytest.param("redis://user:pw@host:6380/2", "redis://host:6380/2", id="redis-password"),
        pytest.param("redis://:pw@host/0", "redis://host/0", id="redis-password-only"),
        pytest.param("redis://host/0?password=pw", "redis://host/0", id="redis-password-in-query"),
        pytest.param(
            "zip://model::s3://k:s@bucket/a.zip?sig=1", "zip://model::s3://bucket/a.zip", id="every-link-of-a-chain"
        ),
    ],
)
def test_redact_url_hides_credentials_and_tokens(url: str, shown: str) -> None:
    assert redact_url(url) == shown
