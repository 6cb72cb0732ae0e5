"""A node's model catalog: which GGUF files the hive can load, in SQLite."""

from __future__ import annotations

import builtins
import hashlib
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rbee_fabric import modelref
from rbee_fabric.db import open_db
from rbee_fabric.errors import RbeeError
from rbee_fabric.ggufmeta import read_info
from rbee_fabric.schemas import ModelInfo

_TABLE = "models"


def model_id_for(reference: str) -> str:
    """A short, stable, readable id for a canonical reference."""
    tail = re.sub(r"[^a-z0-9]+", "-", reference.rsplit("/", 1)[-1].lower()).strip("-")
    digest = hashlib.sha256(reference.encode()).hexdigest()[:8]
    return f"{tail[:40]}-{digest}" if tail else digest


class Catalog:
    """Model catalog of one node; an entry exists only for a complete, verified file."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_db(
            path,
            [
                f"""CREATE TABLE IF NOT EXISTS {_TABLE} (
                    id TEXT PRIMARY KEY, reference TEXT NOT NULL UNIQUE, path TEXT NOT NULL,
                    size_bytes INTEGER NOT NULL, sha256 TEXT, architecture TEXT,
                    quantization TEXT, context_length INTEGER, parameter_count INTEGER,
                    added_at TEXT NOT NULL, chat_template INTEGER)""",
            ],
        )

    def close(self) -> None:
        self._db.close()

    def list(self) -> list[ModelInfo]:
        with self._lock:
            rows = list(self._db[_TABLE].rows_where(order_by="added_at"))
        return [_info(row) for row in rows]

    def get(self, model_id: str) -> ModelInfo | None:
        with self._lock:
            rows = list(self._db[_TABLE].rows_where("id = ?", [model_id]))
        return _info(rows[0]) if rows else None

    def matching(self, name: str) -> builtins.list[ModelInfo]:
        """Entries a user's name for a model means: its id, or a reference as `--model` takes it.

        An exact id or reference gives one entry; `hf:ORG/REPO` also means
        every file of that repo in the catalog (so it may give several).
        """
        if (by_id := self.get(name)) is not None:
            return [by_id]
        try:
            ref = modelref.parse(name)
        except RbeeError:
            return []
        entries = self.list()
        exact = [m for m in entries if m.reference == ref.canonical]
        if exact or ref.kind != "hf" or ref.filename or ref.quant:
            return exact
        return [m for m in entries if m.reference.startswith(f"{ref.canonical}:")]

    def find(self, reference: str) -> ModelInfo | None:
        """The entry for a canonical reference, if its file is still there intact."""
        with self._lock:
            rows = list(self._db[_TABLE].rows_where("reference = ?", [reference]))
        if not rows:
            return None
        info = _info(rows[0])
        path = Path(info.path)
        if not path.is_file() or path.stat().st_size != info.size_bytes:
            self.remove(info.id)  # the file went away or changed: forget it
            return None
        if rows[0].get("chat_template") is None:  # registered before rbee read templates
            return self.register(info.reference, path, info.sha256)
        return info

    def register(self, reference: str, path: Path, sha256: str | None = None) -> ModelInfo:
        """Record a complete file (reads its GGUF header for the metadata)."""
        meta = read_info(path)
        info = ModelInfo(
            id=model_id_for(reference),
            reference=reference,
            path=str(path),
            size_bytes=path.stat().st_size,
            sha256=sha256,
            architecture=meta.architecture,
            quantization=meta.quantization,
            context_length=meta.context_length,
            parameter_count=meta.parameter_count,
            chat_template=meta.chat_template,
            added_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        with self._lock:
            self._db[_TABLE].upsert(info.model_dump(), pk="id", alter=True)  # type: ignore[union-attr]
        return info

    def remove(self, model_id: str) -> bool:
        with self._lock:
            cur = self._db.execute(f"DELETE FROM {_TABLE} WHERE id = ?", [model_id])
        return cur.rowcount > 0


def _info(row: dict[str, Any]) -> ModelInfo:
    """A catalog row as ModelInfo; rows written before a column existed hold None there."""
    return ModelInfo(**{k: v for k, v in row.items() if v is not None})


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
