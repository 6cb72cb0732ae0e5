"""The keeper's worker registry: which workers it started, where, for what model."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rbee_fabric.db import open_db

_TABLE = "workers"


@dataclass
class WorkerRecord:
    id: str
    node: str
    model_ref: str
    backend: str
    device: int
    url: str
    pid: int
    state: str
    last_health_at: float
    created_at: float
    n_ctx: int = 0  # the context size asked for (0: unknown, never reused)


class Registry:
    """SQLite (WAL) registry under the keeper's data directory; safe across processes."""

    def __init__(self, path: Path) -> None:
        self._db = open_db(
            path,
            [
                f"""CREATE TABLE IF NOT EXISTS {_TABLE} (
                    id TEXT PRIMARY KEY, node TEXT NOT NULL, model_ref TEXT NOT NULL,
                    backend TEXT NOT NULL, device INTEGER NOT NULL DEFAULT 0,
                    url TEXT NOT NULL, pid INTEGER NOT NULL,
                    state TEXT NOT NULL, last_health_at REAL NOT NULL, created_at REAL NOT NULL,
                    n_ctx INTEGER NOT NULL DEFAULT 0)""",
                f"CREATE INDEX IF NOT EXISTS idx_{_TABLE}_node_model ON {_TABLE} (node, model_ref)",
            ],
        )

        columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({_TABLE})").fetchall()}
        if "device" not in columns:  # registries written before workers were matched by GPU
            self._db.execute(f"ALTER TABLE {_TABLE} ADD COLUMN device INTEGER NOT NULL DEFAULT 0")
        if "n_ctx" not in columns:  # ... and by context size
            self._db.execute(f"ALTER TABLE {_TABLE} ADD COLUMN n_ctx INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        self._db.close()

    def candidates(
        self, node: str, model_ref: str, backend: str, device: int, n_ctx: int
    ) -> list[WorkerRecord]:
        """Workers on node for model (backend, GPU, context size), most recently healthy first."""
        where = "node = ? AND model_ref = ? AND n_ctx = ?"
        args: list[object] = [node, model_ref, n_ctx]
        if backend != "auto":
            where += " AND backend = ?"
            args.append(backend)
        if backend != "cpu":
            where += " AND (backend = 'cpu' OR device = ?)" if backend == "auto" else " AND device = ?"
            args.append(device)
        rows = self._db[_TABLE].rows_where(where, args, order_by="last_health_at desc")
        return [WorkerRecord(**r) for r in rows]

    def add(self, rec: WorkerRecord) -> None:
        self._db[_TABLE].upsert(asdict(rec), pk="id")  # type: ignore[union-attr]

    def touch(self, worker_id: str, state: str) -> None:
        self._db.execute(
            f"UPDATE {_TABLE} SET state = ?, last_health_at = ? WHERE id = ?",
            [state, time.time(), worker_id],
        )

    def remove(self, worker_id: str) -> None:
        self._db.execute(f"DELETE FROM {_TABLE} WHERE id = ?", [worker_id])

    def list(self, node: str | None = None) -> list[WorkerRecord]:
        if node is None:
            rows = self._db[_TABLE].rows_where(order_by="node, created_at")
        else:
            rows = self._db[_TABLE].rows_where("node = ?", [node], order_by="created_at")
        return [WorkerRecord(**r) for r in rows]

    def get(self, worker_id: str) -> WorkerRecord | None:
        rows = list(self._db[_TABLE].rows_where("id = ?", [worker_id]))
        return WorkerRecord(**rows[0]) if rows else None

    def sync(self, node: str, live_ids: set[str]) -> int:
        """Drop this node's records the hive no longer knows; returns how many."""
        gone = [r.id for r in self.list(node) if r.id not in live_ids]
        for wid in gone:
            self.remove(wid)
        return len(gone)
