"""The Workers AI model catalog: reading its entries, paging through it, caching it per process.

Cloudflare types the catalog's entries as ``unknown`` and clients meet several shapes: properties
as ``[{"property_id": ..., "value": ...}]`` (or a plain object), values that are strings, numbers,
lists or objects. Everything here accepts them all and never raises on an odd entry.

The cache exists because every call counts against the token's 1200 requests per 5 minutes. Airflow
3 runs each task in a fresh process, so a cache in memory would last one task: the catalog (public
data, no secret) is also kept in a file per account in the host's state directory
(``<temp dir>/airflow-provider-cfai-<uid>/``), so the tasks of a mapped create on one host read it
once per TTL between them. Failures are remembered in memory only.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.adapters import FAMILIES, guess_family
from airflow_provider_cfai.exceptions import CloudflareAPIError, CloudflareInputError

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable
    from pathlib import Path

__all__ = [
    "CACHE",
    "CatalogCache",
    "accepts_lora",
    "family",
    "find",
    "model_name",
    "property_value",
    "read_pages",
    "search_query",
    "supports_async_queue",
    "task_name",
    "truthy",
]

#: Models per page asked for. Cloudflare documents no maximum; 50 is one most v4 APIs honour.
PAGE_SIZE = 50
#: Pages read at most: a server that ignores ``page`` must not loop for ever.
MAX_PAGES = 100
CACHE_TTL = 300.0
#: A catalog that could not be read is not asked again for this long (an outage, no permission).
FAILURE_TTL = 60.0

_FALSE_WORDS = frozenset({"", "false", "no", "0", "off", "none", "null"})
_MISSING = object()


def truthy(value: object) -> bool:
    """Whether a property value means yes: ``"true"``, ``true``, ``1``, a non-empty list or object."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_WORDS
    return bool(value)


def model_name(entry: object) -> str | None:
    name = entry.get("name") if isinstance(entry, dict) else None
    return name if isinstance(name, str) and name else None


def property_value(entry: object, property_id: str) -> Any:
    """The value of property ``property_id``, or ``None`` when the entry does not have it."""
    value = _property(entry, property_id)
    return None if value is _MISSING else value


def accepts_lora(entry: object) -> bool:
    """From the ``lora`` property when present, else from a name ending in ``-lora``."""
    value = _property(entry, "lora")
    if value is not _MISSING:
        return truthy(value)
    return (model_name(entry) or "").endswith("-lora")


def supports_async_queue(entry: object) -> bool:
    """Whether the Batch API queues this model (property ``async_queue``)."""
    return truthy(property_value(entry, "async_queue"))


def family(entry_or_name: object) -> str | None:
    """``"mistral"``, ``"gemma"`` or ``"llama"`` from the model's name (or a ``model_type`` property)."""
    name = entry_or_name if isinstance(entry_or_name, str) else model_name(entry_or_name)
    found = guess_family((name or "").rsplit("/", 1)[-1])
    if found is None:
        declared = property_value(entry_or_name, "model_type")
        found = declared if declared in FAMILIES else None
    return found


def task_name(entry: object) -> str | None:
    task = entry.get("task") if isinstance(entry, dict) else None
    if isinstance(task, dict):
        task = task.get("name")
    return task if isinstance(task, str) else None


def find(entries: Iterable[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((entry for entry in entries if model_name(entry) == name), None)


def search_query(*, search: str | None, task: str | None, author: str | None, per_page: int) -> dict[str, str | int]:
    if isinstance(per_page, bool) or not isinstance(per_page, int) or per_page < 1:
        raise CloudflareInputError(f"per_page must be a whole number >= 1, got {per_page!r}")
    query: dict[str, str | int] = {"per_page": per_page}
    for key, value in (("search", search), ("task", task), ("author", author)):
        if value is not None and str(value).strip():
            query[key] = str(value).strip()
    return query


def read_pages(fetch_page: Callable[[int], Any], per_page: int) -> list[dict[str, Any]]:
    """Every model, fetching page 1, 2, ... until a page is short or empty.

    ``fetch_page(n)`` returns page ``n``'s ``result``. A page that starts with a model already seen
    means the server ignores ``page``: reading stops rather than repeating itself.
    """
    models: list[dict[str, Any]] = []
    seen: set[str] = set()
    for page in range(1, MAX_PAGES + 1):
        result = fetch_page(page)
        raw = result if isinstance(result, list) else [result] if isinstance(result, dict) else []
        items = [item for item in raw if model_name(item) is not None]
        if not items or model_name(items[0]) in seen:
            break
        models.extend(items)
        seen.update(name for name in map(model_name, items) if name)
        if len(raw) < per_page:
            break
    return models


class CatalogCache:
    """Catalogs by key (base URL, account) for ``ttl`` seconds; failures for ``failure_ttl``.

    Thread-safe, and one load per key at a time: threads asking together wait for one fetch.
    """

    def __init__(
        self,
        *,
        ttl: float = CACHE_TTL,
        failure_ttl: float = FAILURE_TTL,
        clock: Callable[[], float] = time.monotonic,
        directory: Callable[[], Path] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self._clock = clock
        self._directory = directory
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._held: dict[Hashable, tuple[float, list[dict[str, Any]] | CloudflareAPIError]] = {}

    def get(self, key: Hashable, load: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                held = self._held.get(key)
            if held is not None and self._clock() < held[0]:
                value = held[1]
                if isinstance(value, CloudflareAPIError):
                    raise copy.copy(value)  # a fresh instance: re-raising one object grows its traceback
                return list(value)
            shared = self._read_file(key)
            if shared is not None:
                stored_at, models = shared
                with self._lock:
                    self._held[key] = (self._clock() + self.ttl - (self._wall_clock() - stored_at), models)
                return list(models)
            try:
                models = load()
            except CloudflareAPIError as error:
                with self._lock:
                    self._held[key] = (self._clock() + self.failure_ttl, error)
                raise
            with self._lock:
                self._held[key] = (self._clock() + self.ttl, list(models))
            self._write_file(key, models)
            return list(models)

    def clear(self) -> None:
        with self._lock:
            self._held.clear()

    # The file layer is an optimisation: any trouble with it means "not cached", never an error.

    def _path(self, key: Hashable) -> Path | None:
        if self._directory is None:
            return None
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
        return self._directory() / f"catalog-{digest}.json"

    def _read_file(self, key: Hashable) -> tuple[float, list[dict[str, Any]]] | None:
        try:
            path = self._path(key)
            if path is None:
                return None
            stored = json.loads(path.read_bytes())
            stored_at, models = float(stored["stored_at"]), stored["models"]
        except (OSError, ValueError, TypeError, KeyError):
            return None
        age = self._wall_clock() - stored_at
        if not 0 <= age < self.ttl or not isinstance(models, list):
            return None
        return stored_at, [m for m in models if isinstance(m, dict)]

    def _write_file(self, key: Hashable, models: list[dict[str, Any]]) -> None:
        try:
            path = self._path(key)
            body = json.dumps({"stored_at": self._wall_clock(), "models": models}).encode()
            if path is None:
                return
            handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".catalog-")
        except (OSError, TypeError, ValueError):
            return
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(body)
            os.replace(temp, path)  # readers see the old file or the new one, never half of one
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def _host_directory() -> Path:
    from airflow_provider_cfai.hooks._host import private_dir, state_dir

    return private_dir(state_dir())


#: The cache the hook uses: in memory for this process, in a file for the host.
CACHE = CatalogCache(directory=_host_directory)


def _property(entry: object, property_id: str) -> Any:
    if not isinstance(entry, dict):
        return _MISSING
    properties = entry.get("properties")
    if isinstance(properties, dict):
        return properties.get(property_id, _MISSING)
    for item in properties if isinstance(properties, list) else ():
        if isinstance(item, dict) and (item.get("property_id") or item.get("id")) == property_id:
            return item.get("value")
    return entry.get(property_id, _MISSING)
