"""Open SQLite files the way every rbee database wants them."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import sqlite_utils

from rbee_fabric.paths import ensure_dir

BUSY_TIMEOUT_S = 30.0


def open_db(path: Path, schema: list[str]) -> sqlite_utils.Database:
    """A sqlite-utils database in WAL mode, safe for several processes at once.

    The schema is a list of `CREATE ... IF NOT EXISTS` statements, each run on
    its own in autocommit mode, so a second process creating the same file at
    the same moment waits on the busy handler instead of failing.
    """
    ensure_dir(path.parent)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    _retry(lambda: conn.execute("PRAGMA journal_mode=WAL"))
    for statement in schema:
        _retry(lambda s=statement: conn.execute(s))
    return sqlite_utils.Database(conn)


def _retry(op: object) -> None:
    """Switching to WAL can answer SQLITE_BUSY at once, bypassing the busy handler."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            op()  # type: ignore[operator]
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
