"""Terminal output: tokens on stdout, everything else on stderr, errors in one place."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column

from rbee_fabric import paths, tokenline
from rbee_fabric.errormap import disk_error
from rbee_fabric.errors import (
    EXIT_CANCELED,
    EXIT_RUNTIME,
    ConfigError,
    RbeeError,
    RequestCanceled,
)

if TYPE_CHECKING:
    from rbee_fabric.schemas import DownloadProgress, LoadingProgress

err = Console(stderr=True, highlight=False)
# In a terminal, long lines break between words; piped, each stays one line for grep.
err.soft_wrap = not err.is_terminal

# C0 controls but tab and newline, DEL and the C1 controls (ESC, CSI, OSC...):
# text from daemons, logs and models never drives the user's terminal.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sanitize(text: object) -> str:
    """Text from elsewhere, made inert for a terminal (escape sequences shown, not run)."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def safe(text: object) -> str:
    """Remote text for a rich print: sanitized, and its [markup] shown literally."""
    return escape(sanitize(text))


class TerminalReporter:
    """Draws the flow for a person: progress bars and notes on stderr, tokens on stdout."""

    def __init__(self, *, quiet_tokens: bool = False) -> None:
        self.quiet_tokens = quiet_tokens
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._kind: str | None = None
        self._notes_shown = 0  # of the download's notes (each event carries them all)
        self.tokens: list[str] = []

    def _bar(self, kind: str, description: str, total: float | None) -> Progress:
        if self._kind != kind:
            self.close_bar()
            self._progress = Progress(*bar_columns(kind, err.width), console=err, expand=True)
            self._progress.start()
            self._task = self._progress.add_task(description, total=total)
            self._kind = kind
        assert self._progress is not None
        return self._progress

    def close_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress, self._task, self._kind = None, None, None

    def info(self, msg: str) -> None:
        self.close_bar()
        err.print(f"[dim]{safe(msg)}[/dim]")

    def attempt(self, n: int, total: int, address: str, error: str) -> None:
        self.close_bar()
        where = "" if address in error else f" {safe(address)}:"  # the error may name it already
        err.print(f"[yellow]attempt {n}/{total}[/yellow]{where} {safe(error)}")

    def download(self, p: DownloadProgress) -> None:
        name = safe(p.filename or "model")
        if len(p.notes) > self._notes_shown:  # retries and their reasons, where a model comes from
            self.close_bar()
            for note in p.notes[self._notes_shown :]:
                err.print(f"[yellow]{safe(note)}[/yellow]" if note.startswith("retry") else f"[dim]{safe(note)}[/dim]")
            self._notes_shown = len(p.notes)
        if p.stage == "downloading":
            if p.resumed_from and self._kind != "download":
                err.print(f"[dim]resuming {name} at {p.resumed_from / 1e6:.1f} MB[/dim]")
            bar = self._bar("download", safe(p.label) if p.label else f"fetching {name}", p.bytes_total)
            assert self._task is not None
            bar.update(self._task, completed=p.bytes_done, total=p.bytes_total)
            return
        if self._kind == "download" and self._progress is not None and p.stage in ("verifying", "done"):
            assert self._task is not None  # every byte is there: the bar ends full
            self._progress.update(self._task, completed=self._progress.tasks[0].total)
        self.close_bar()
        if p.stage == "verifying":
            err.print(f"[dim]verifying {name} (sha256)[/dim]")

    def transfer(self, name: str, done: int, total: int) -> None:
        bar = self._bar("download", f"copying {safe(name)}", total)
        assert self._task is not None
        bar.update(self._task, completed=done, total=total)
        if done >= total:
            self.close_bar()

    def loading(self, p: LoadingProgress) -> None:
        bar = self._bar("loading", "loading model", 1.0)
        assert self._task is not None
        bar.update(self._task, completed=p.progress)
        if p.stage != "loading":
            self.close_bar()

    def token(self, text: str) -> None:
        self.close_bar()
        self.tokens.append(text)
        if not self.quiet_tokens:
            sys.stdout.write(sanitize(text))
            sys.stdout.flush()
            tokenline.wrote(text)


def bar_columns(kind: str, width: int) -> list[Any]:
    """A progress bar's columns, on one line at any width.

    Only the description (shortened with an ellipsis) and the bar itself give
    way; sizes are decimal MB, as in `rbee models list`. Below 80 columns the
    speed and time left are dropped before anything wraps.
    """
    fixed = Column(no_wrap=True)
    description = TextColumn(
        "{task.description}",
        table_column=Column(no_wrap=True, overflow="ellipsis", max_width=max(10, width // 2)),
    )
    columns: list[Any] = [description, BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=5))]
    if kind == "download":
        columns.append(DownloadColumn(binary_units=False, table_column=fixed))
        if width >= 80:
            columns += [TransferSpeedColumn(table_column=fixed), TimeRemainingColumn(table_column=fixed)]
    else:
        columns.append(TextColumn("{task.percentage:>3.0f}%", table_column=fixed))
    return columns


def canceled(message: str) -> None:
    """On a terminal the ^C echo leaves the cursor mid-line (after the tokens): a new line first."""
    ended = tokenline.end() and sys.stdout.isatty()
    err.print(("\n" if err.is_terminal and not ended else "") + sanitize(message), markup=False)


def fail(error: RbeeError) -> NoReturn:
    """Print an RbeeError as the user sees it and exit with its code."""
    if isinstance(error, RequestCanceled):
        canceled(error.message)
        raise SystemExit(error.exit_code)
    tokenline.end()  # the tokens streamed so far keep their line; the error starts its own
    err.print(f"[bold red]error[/bold red] [red]{safe(error.code)}[/red]: {safe(error.message)}")
    if error.hint:
        err.print(f"Suggestion: {sanitize(error.hint)}", markup=False)
    raise SystemExit(error.exit_code)


def report(exc: BaseException, *, debug: bool = False) -> NoReturn:
    """Turn any failure of a command into its message and exit code (the one place)."""
    if isinstance(exc, RbeeError):
        if debug:
            traceback.print_exception(exc)
        fail(exc)
    if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
        canceled("Canceled.")
        raise SystemExit(EXIT_CANCELED) from None
    if (disk := disk_error(exc, str(paths.data_dir()))) is not None:
        fail(disk)
    if isinstance(exc, sqlite3.Error):  # the keeper's registry.db cannot be opened or read
        if debug:
            traceback.print_exception(exc)
        data = paths.data_dir()
        fail(ConfigError(
            f"cannot use the registry {data / 'registry.db'}: {exc}",
            hint=f"{data} must be a directory you can write; move a damaged registry.db aside "
            "(rbee starts a new, empty one)",
            details={"file": str(data / "registry.db")},
        ))  # fmt: skip
    if debug:
        traceback.print_exception(exc)
        raise SystemExit(EXIT_RUNTIME) from None
    # A bug: one line for the user, the traceback in a log.
    err.print(f"[bold red]error[/bold red] INTERNAL_ERROR: {type(exc).__name__}: {safe(exc)}")
    where = "run again with --debug to see the traceback"
    try:
        log_path = paths.ensure_dir(paths.logs_dir()) / "keeper.log"
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} unexpected error in rbee {' '.join(sys.argv[1:])}\n")
            log.writelines(traceback.format_exception(exc))
        where = f"run again with --debug; the traceback is in {log_path}"
    except OSError:
        pass  # no log to write to: the suggestion says --debug
    err.print(f"Suggestion: {where}", markup=False)
    raise SystemExit(EXIT_RUNTIME) from None


