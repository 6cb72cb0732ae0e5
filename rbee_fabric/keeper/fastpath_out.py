"""What the lean path prints, byte for byte what cli/ui.py prints for the same events.

Tokens go to stdout, notes to stderr. Where stderr is not a terminal (pipes,
files, the benchmark) rich prints the plain text, so this writes it directly;
on a terminal it uses rich itself (the same Console settings), loaded then.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from rbee_fabric import tokenline

# As cli/ui.py: C0 controls but tab and newline, DEL and the C1 controls.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Environment variables that make rich treat a non-terminal as one.
_RICH_TERMINAL_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def sanitize(text: object) -> str:
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def plain_stderr() -> bool:
    """True when rich would print plain text to stderr (no terminal, nothing forcing one)."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
    return not tty and not any(os.environ.get(k) for k in _RICH_TERMINAL_ENV)


class Output:
    def __init__(self, *, quiet_tokens: bool) -> None:
        self.quiet_tokens = quiet_tokens
        self.tokens: list[str] = []
        self._plain = plain_stderr()
        self._console: Any = None

    def dim(self, text: str) -> None:
        """err.print(f"[dim]{safe(text)}[/dim]")."""
        if self._plain:
            sys.stderr.write(sanitize(text) + "\n")
            sys.stderr.flush()
            return
        from rbee_fabric.cli.ui import err, safe

        err.print(f"[dim]{safe(text)}[/dim]")

    info = dim

    def token(self, text: str) -> None:
        self.tokens.append(text)
        if not self.quiet_tokens:
            sys.stdout.write(sanitize(text))
            sys.stdout.flush()
            tokenline.wrote(text)

