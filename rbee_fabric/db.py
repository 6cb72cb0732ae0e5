"""Open SQLite files the way every rbee database wants them."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rbee_fabric.paths import ensure_dir


def _import_sqlite_utils() -> Any:
    """sqlite_utils without numpy: it imports numpy, when installed, only to store numpy
    values, which rbee never does; that import is 0.1 s of every keeper and hive start."""
    if "numpy" in sys.modules or "sqlite_utils" in sys.modules:
        import sqlite_utils

        return sqlite_utils
    sys.modules["numpy"] = None  # type: ignore[assignment]  # makes `import numpy` fail
    try:
        import sqlite_utils
    finally:
        del sys.modules["numpy"]
    return sqlite_utils


if TYPE_CHECKING:
    import sqlite_utils
else:
    sqlite_utils = _import_sqlite_utils()

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
