"""On-disk layout of the emulator's data directory: one JSON file for records, one file per asset.

``DIR/finetunes.json`` holds finetunes and asset metadata; ``DIR/assets/<finetune_id>/<file_name>`` holds
the uploaded bytes; ``DIR/tmp/`` holds uploads still streaming in.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Store"]

_FORMAT_VERSION = 1


class Store:
    def __init__(self, root: Path, *, persistent: bool) -> None:
        self.root = root
        self.persistent = persistent
        self.assets_dir = root / "assets"
        self.tmp_dir = root / "tmp"
        self._records = root / "finetunes.json"
        self.assets_dir.mkdir(parents=True, exist_ok=True)
        # Leftovers of uploads cut short by a crash are never valid assets.
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> list[dict[str, Any]]:
        if not self.persistent or not self._records.exists():
            return []
        data = json.loads(self._records.read_text(encoding="utf-8"))
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{self._records}: unsupported format version {data.get('version')!r}")
        entries: list[dict[str, Any]] = data["finetunes"]
        return entries

    def save(self, entries: list[dict[str, Any]]) -> None:
        if not self.persistent:
            return
        # Write-then-rename so a crash mid-write leaves the previous file intact.
        tmp = self._records.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"version": _FORMAT_VERSION, "finetunes": entries}), encoding="utf-8")
        os.replace(tmp, self._records)

    def new_upload_path(self) -> Path:
        return self.tmp_dir / f"upload-{uuid.uuid4().hex}.part"

    def asset_path(self, finetune_id: str, file_name: str) -> Path:
        return self.assets_dir / finetune_id / file_name

    def commit_asset(self, temp_path: Path, finetune_id: str, file_name: str) -> None:
        target = self.asset_path(finetune_id, file_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp_path, target)

    def wipe(self) -> None:
        shutil.rmtree(self.assets_dir, ignore_errors=True)
        self.assets_dir.mkdir(parents=True, exist_ok=True)
        self.save([])
