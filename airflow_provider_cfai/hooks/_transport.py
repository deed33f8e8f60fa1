"""HTTP plumbing for the hook: the connection adapter and the User-Agent."""

from __future__ import annotations

from functools import cache
from typing import Any

from requests.adapters import HTTPAdapter


class BlockSizeAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections write request bodies in larger blocks.

    http.client sends a streamed body 8 KiB at a time; for adapter files of hundreds of MB that is
    tens of thousands of Python-level reads. A larger block keeps the upload near wire speed while
    memory stays bounded by the block size.
    """

    def __init__(self, *, blocksize: int, **kwargs: Any) -> None:
        self._blocksize = blocksize
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs.setdefault("blocksize", self._blocksize)
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)


@cache
def user_agent() -> str:
    """``airflow-provider-cfai/<version> apache-airflow/<version> requests/<version>``."""
    from importlib.metadata import PackageNotFoundError, version

    import requests

    from airflow_provider_cfai import __version__

    try:
        airflow_version = version("apache-airflow-core")
    except PackageNotFoundError:  # pragma: no cover - Airflow installed from source
        airflow_version = "unknown"
    return f"airflow-provider-cfai/{__version__} apache-airflow/{airflow_version} requests/{requests.__version__}"
