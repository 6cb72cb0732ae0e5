"""Foreign exceptions into the error tree: a full disk, the web framework's HTTP errors."""

from __future__ import annotations

from rbee_fabric.errors import DiskError, HttpError, MethodNotAllowed, NotFound, RbeeError

_DISK_WORDS = ("disk i/o error", "database or disk is full", "no space left on device")


def disk_error(exc: BaseException, where: str = "the rbee data directory") -> DiskError | None:
    """A DiskError for a full or failing disk (SQLite or OS error), else None."""
    import errno

    text = str(exc).lower()
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT):
        pass
    elif type(exc).__name__ not in ("OperationalError", "DatabaseError") or not any(
        w in text for w in _DISK_WORDS
    ):
        return None
    return DiskError(
        f"cannot write to {where}: {exc}",
        hint=f"the disk of {where} is full or failing: free space there (df -h), then retry",
        details={"where": where, "reason": str(exc)},
    )


def http_error(status: int, detail: str) -> RbeeError:
    """The web framework's own HTTP errors (no route, wrong method) as tree errors."""
    if status == 404:
        return NotFound(detail, details={"status": status})
    if status == 405:
        return MethodNotAllowed(detail, details={"status": status})
    return HttpError(detail, details={"status": status})
