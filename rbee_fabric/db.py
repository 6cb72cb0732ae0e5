"""Open SQLite files the way every rbee database wants them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from rbee_fabric.paths import ensure_dir


def open_db(path: Path) -> sqlite_utils.Database:
    """A sqlite-utils database in WAL mode, safe for several processes at once."""
    ensure_dir(path.parent)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA busy_timeout = 30000")
    db.enable_wal()
    return db
