"""Everything the emulator remembers, in one class behind one lock.

Parts with a lock of their own (the Batch API queue) are attached by the app
(:meth:`EmulatorState.attach`), so this module imports none of them; a reset clears them and
``/state`` shows them all the same.

Business rules that depend on stored data (limits, duplicate names, overwrites) live here so the
routes stay thin; they raise :class:`ApiError`, which the app renders as a Cloudflare envelope.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_cfai.emulator import catalog
from airflow_provider_cfai.emulator.envelope import ApiError, success_body_raw
from airflow_provider_cfai.emulator.faults import FaultRule, parse_fault
from airflow_provider_cfai.emulator.ratelimit import Decision, RateLimiter

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from airflow_provider_cfai.emulator.settings import EmulatorSettings
    from airflow_provider_cfai.emulator.store import Store

__all__ = ["ASSET_FILE_NAMES", "EmulatorState", "Finetune", "LoraTarget"]

ASSET_FILE_NAMES = ("adapter_config.json", "adapter_model.safetensors")
_RATE_KEYS = frozenset({"rate_limit", "rate_window", "rate_lockout"})


@dataclasses.dataclass
class Asset:
    id: str
    file_name: str
    size: int
    sha256: str
    created_at: str
    modified_at: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Finetune:
    record: dict[str, Any]
    encoded: bytes
    assets: dict[str, Asset] = dataclasses.field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def name(self) -> str:
        return str(self.record["name"])


@dataclasses.dataclass(frozen=True)
class LoraTarget:
    id: str
    name: str
    model: str
    complete: bool


class StatePart(Protocol):
    """A part kept beside the state with its own lock (the Batch API queue): reset empties it, ``/state`` shows it."""

    def clear(self) -> None: ...

    def describe(self) -> Any: ...


class EmulatorState:
    def __init__(
        self, settings: EmulatorSettings, store: Store, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._startup_settings = settings
        self._settings = settings
        self._store = store
        self._clock = clock
        self._finetunes: dict[str, Finetune] = {}
        self._by_name: dict[str, str] = {}
        self._list_cache: dict[str, bytes] = {}
        self._limiter = RateLimiter()
        self._faults: list[FaultRule] = []
        # Every rule added since the last reset, spent or cleared ones too, with its ``fired`` count.
        self._fault_history: list[FaultRule] = []
        self._counters: collections.Counter[str] = collections.Counter()
        self._log: collections.deque[dict[str, Any]] = collections.deque(maxlen=settings.request_log_size)
        self._rate_limited = 0
        self._lockouts = 0
        self._refused_uploads: list[dict[str, Any]] = []
        # Parts the app attaches (the Batch API queue, emulator/batch_queue.py), by their /state key.
        self._parts: dict[str, StatePart] = {}
        for entry in store.load():
            self._restore(entry)

    @property
    def clock(self) -> Callable[[], float]:
        """The monotonic clock the state's windows and its parts' timers run on."""
        return self._clock

    def attach(self, name: str, part: StatePart) -> None:
        """Keep ``part`` with the state: :meth:`reset` clears it, :meth:`snapshot` shows it under ``name``."""
        with self._lock:
            self._parts[name] = part

    @property
    def settings(self) -> EmulatorSettings:
        # Settings objects are immutable and swapped whole, so readers need no lock.
        return self._settings

    # -- finetunes -------------------------------------------------------------------------------

    def create_finetune(self, *, name: str, model: str, description: str | None, public: bool) -> dict[str, Any]:
        with self._lock:
            settings = self._settings
            if model not in settings.lora_models:
                raise ApiError(400, 1003, f"Finetune creation failed: model {model} does not support LoRA")
            if len(self._finetunes) >= settings.max_finetunes:
                raise ApiError(
                    400,
                    1004,
                    f"Finetune creation failed: the account already has {len(self._finetunes)} finetunes, "
                    f"the limit is {settings.max_finetunes}",
                )
            if settings.duplicate_names == "reject" and name in self._by_name:
                raise ApiError(400, 1005, f"Finetune creation failed: a finetune named {name!r} already exists")
            now = catalog.timestamp()
            record: dict[str, Any] = {
                "id": str(uuid.uuid4()),
                "created_at": now,
                "modified_at": now,
                "public": public,
                "name": name,
                "model": model,
            }
            if description is not None:
                record["description"] = description
            self._add(Finetune(record=record, encoded=json.dumps(record).encode()))
            self._persist()
            return dict(record)

    def list_body(self) -> bytes:
        with self._lock:
            shape = self._settings.list_shape
            body = self._list_cache.get(shape)
            if body is None:
                items = [ft.encoded for ft in self._finetunes.values()]
                if shape == "object":
                    result = items[0] if items else b"null"
                else:
                    result = b"[" + b",".join(items) + b"]"
                    if shape == "nested":
                        result = b"[" + result + b"]"
                body = self._list_cache[shape] = success_body_raw(result)
            return body

    def public_finetunes(self, *, limit: int, offset: int, order_by: str | None) -> list[dict[str, Any]]:
        with self._lock:
            settings = self._settings
            seeds = catalog.public_seed(settings.public_seed, settings.lora_models)
            records = [*seeds, *(ft.record for ft in self._finetunes.values() if ft.record["public"])]
        if order_by is not None:
            records = sorted(records, key=catalog.sort_key(order_by))
        return [dict(r) for r in records[offset : offset + limit]]

    def find_finetune(self, ref: str) -> Finetune | None:
        with self._lock:
            return self._find(ref)

    def lora_target(self, ref: str) -> LoraTarget | None:
        """The finetune a run's ``lora`` names: the account's own first, then Cloudflare's public ones."""
        with self._lock:
            ft = self._find(ref)
            if ft is not None:
                complete = all(name in ft.assets for name in ASSET_FILE_NAMES)
                return LoraTarget(ft.id, ft.name, str(ft.record["model"]), complete)
            settings = self._settings
            for seed in catalog.public_seed(settings.public_seed, settings.lora_models):
                if ref in (seed["id"], seed["name"]):
                    return LoraTarget(seed["id"], seed["name"], seed["model"], complete=True)
            return None

    # -- assets ----------------------------------------------------------------------------------

    def new_upload_path(self) -> Path:
        return self._store.new_upload_path()

    def check_asset_slot(self, finetune_id: str, file_name: str) -> None:
        with self._lock:
            self._check_slot(finetune_id, file_name)

    def commit_asset(
        self, finetune_id: str, file_name: str, temp_path: Path, *, size: int, sha256: str
    ) -> dict[str, Any]:
        with self._lock:
            # Checked again under the lock: two uploads of one file may race past the early check.
            self._check_slot(finetune_id, file_name)
            ft = self._finetunes[finetune_id]
            now = catalog.timestamp()
            previous = ft.assets.get(file_name)
            asset = Asset(
                id=previous.id if previous else str(uuid.uuid4()),
                file_name=file_name,
                size=size,
                sha256=sha256,
                created_at=previous.created_at if previous else now,
                modified_at=now,
            )
            self._store.commit_asset(temp_path, finetune_id, file_name)
            ft.assets[file_name] = asset
            self._persist()
            return {
                "id": asset.id,
                "finetune_id": finetune_id,
                "file_name": file_name,
                "bucket_name": "cfai-emulator-finetunes",
                "created_at": asset.created_at,
                "modified_at": asset.modified_at,
            }

    def record_refused_upload(self, finetune_id: str, bytes_written: int, limit: int) -> None:
        with self._lock:
            self._refused_uploads.append({"finetune_id": finetune_id, "bytes_written": bytes_written, "limit": limit})

    # -- gate: faults and rate limiting ------------------------------------------------------------

    def fault_needs_body(self, method: str, path: str) -> bool:
        """Whether a pending rule for this call also looks at the request body (``request_body``)."""
        with self._lock:
            return any(rule.wants_body(method, path) for rule in self._faults)

    def take_fault(self, method: str, path: str, body: bytes | None = None) -> FaultRule | None:
        with self._lock:
            for rule in self._faults:
                if rule.matches(method, path, body):
                    rule.times -= 1
                    rule.fired += 1
                    snapshot = dataclasses.replace(rule)
                    self._faults = [r for r in self._faults if r.times > 0]
                    return snapshot
            return None

    def admit(self, rate_key: str) -> Decision:
        with self._lock:
            s = self._settings
            decision = self._limiter.check(
                rate_key, self._clock(), limit=s.rate_limit, window=s.rate_window, lockout=s.rate_lockout
            )
            if not decision.allowed:
                self._rate_limited += 1
            if decision.started_lockout:
                self._lockouts += 1
            return decision

    def record_request(
        self,
        *,
        method: str,
        path: str,
        route: str | None,
        status: int | None,
        fault: str | None,
        lora: str | None = None,
    ) -> None:
        with self._lock:
            self._counters[f"{method} {route or path}"] += 1
            entry = {
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "fault": fault,
                "time": time.time(),
            }
            if lora is not None:
                entry["lora"] = lora  # an /ai/run body's finetune, as the client sent it
            self._log.append(entry)

    # -- control API -----------------------------------------------------------------------------

    def add_fault(self, spec: object) -> dict[str, Any]:
        rule = parse_fault(spec)
        with self._lock:
            self._faults.append(rule)
            self._fault_history.append(rule)
            return rule.describe()

    def faults(self, *, include_spent: bool = False) -> list[dict[str, Any]]:
        """Pending rules; with ``include_spent``, every rule added since the last reset."""
        with self._lock:
            return [rule.describe() for rule in (self._fault_history if include_spent else self._faults)]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = []

    def patch_settings(self, patch: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            new = self._settings.patched(patch)
            self._apply_settings(new)
            return new.public_view()

    def reset(self, *, settings: bool = False) -> None:
        with self._lock:
            self._finetunes.clear()
            self._by_name.clear()
            self._list_cache.clear()
            self._faults = []
            self._fault_history = []
            self._counters.clear()
            self._log.clear()
            self._limiter.clear()
            self._rate_limited = 0
            self._lockouts = 0
            self._refused_uploads = []
            for part in self._parts.values():
                part.clear()
            self._store.wipe()
            if settings:
                self._apply_settings(self._startup_settings)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            finetunes = []
            for ft in self._finetunes.values():
                item = dict(ft.record)
                item["assets"] = {n: {"size": a.size, "sha256": a.sha256} for n, a in ft.assets.items()}
                finetunes.append(item)
            return {
                "finetunes": finetunes,
                "counters": dict(self._counters),
                "requests": list(self._log),
                "rate_limited_responses": self._rate_limited,
                "lockouts": self._lockouts,
                "refused_uploads": list(self._refused_uploads),
                "faults": [rule.describe() for rule in self._faults],
                "fired_faults": [
                    {"id": r.id, "path": r.path, "method": r.method, "action": r.action, "fired": r.fired}
                    for r in self._fault_history
                ],
                **{name: part.describe() for name, part in self._parts.items()},
                "settings": self._settings.public_view(),
            }

    # -- internals (caller holds the lock) -------------------------------------------------------

    def _apply_settings(self, new: EmulatorSettings) -> None:
        old = self._settings
        self._settings = new
        self._list_cache.clear()
        if any(getattr(old, k) != getattr(new, k) for k in _RATE_KEYS):
            # A test that reconfigures the budget expects it to start from full, not mid-window.
            self._limiter.clear()
        if old.request_log_size != new.request_log_size:
            self._log = collections.deque(self._log, maxlen=new.request_log_size)

    def _find(self, ref: str) -> Finetune | None:
        ft = self._finetunes.get(ref)
        if ft is None and ref in self._by_name:
            ft = self._finetunes[self._by_name[ref]]
        return ft

    def _check_slot(self, finetune_id: str, file_name: str) -> None:
        ft = self._finetunes.get(finetune_id)
        if ft is None:
            raise ApiError(404, 3037, f"Finetune {finetune_id} not found")
        if self._settings.asset_overwrite == "reject" and file_name in ft.assets:
            raise ApiError(
                409, 1008, f"Asset {file_name} already exists for finetune {ft.id}; assets cannot be changed"
            )

    def _add(self, ft: Finetune) -> None:
        self._finetunes[ft.id] = ft
        # The oldest finetune keeps a duplicated name, so lookups by name stay stable.
        self._by_name.setdefault(ft.name, ft.id)
        self._list_cache.clear()

    def _restore(self, entry: dict[str, Any]) -> None:
        record = entry["finetune"]
        assets = {name: Asset(**data) for name, data in entry.get("assets", {}).items()}
        self._add(Finetune(record=record, encoded=json.dumps(record).encode(), assets=assets))

    def _persist(self) -> None:
        entries = [
            {"finetune": ft.record, "assets": {n: a.to_json() for n, a in ft.assets.items()}}
            for ft in self._finetunes.values()
        ]
        self._store.save(entries)
