"""Whether streamed tokens left stdout mid-line (stdlib only).

Both infer paths note what they write; the one error printer (cli/ui.py) ends
the line first, so an error never starts glued to the last token.
"""

from __future__ import annotations

import sys

_open = False


def wrote(text: str) -> None:
    global _open
    if text:
        _open = not text.endswith("\n")


def end() -> bool:
    """Finish a line the tokens left open; whether a newline was written."""
    global _open
    if not _open:
        return False
    _open = False
    sys.stdout.write("\n")
    sys.stdout.flush()
    return True
