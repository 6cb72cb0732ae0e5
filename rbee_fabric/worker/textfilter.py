"""Keep special and control token text out of generated text, even split across chunks.

llama.cpp renders some special tokens as text (Gemma's `<start_of_image>` is a
"user-defined" token, so it appears even without `special=True`). The filter
removes every occurrence of the model's special token strings from a stream
of text pieces, holding back a tail that could still be the start of one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

# llama_token_attr bits (llama.h)
ATTR_CONTROL = 8
ATTR_USER_DEFINED = 16

# User-defined tokens that are markup of the model, not text: `<start_of_image>`,
# `<|im_start|>`, `[multimodal]`. Plain HTML tags (`<b>`, `</table>`) are text.
_MARKUP = re.compile(r"^(<\|[^<>|]+\|>|<[a-z0-9]+(_[a-z0-9]+)+>|\[[a-z_]+\])$")


def is_special(text: str, attr: int) -> bool:
    """Whether a vocabulary entry must never appear in generated text."""
    if not text.strip():
        return False  # whitespace tokens (Gemma's runs of newlines) are text
    if attr & ATTR_CONTROL:
        return True
    return bool(attr & ATTR_USER_DEFINED) and bool(_MARKUP.match(text))


class SpecialTokenFilter:
    """Feed text pieces in order; get back text with no special token in it."""

    def __init__(self, specials: Iterable[str]) -> None:
        self._specials = sorted({s for s in specials if s}, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(re.escape(s) for s in self._specials)) if self._specials else None
        )
        # Every proper prefix of a special string: a tail that may still grow into one.
        self._prefixes = {s[:i] for s in self._specials for i in range(1, len(s))}
        self._max = max((len(s) for s in self._specials), default=0)
        self._pending = ""

    def feed(self, piece: str) -> str:
        text = self._pending + piece
        if self._pattern is not None:
            text = self._pattern.sub("", text)
        hold = 0
        for n in range(min(len(text), self._max - 1), 0, -1):
            if text[-n:] in self._prefixes:
                hold = n
                break
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The held-back tail at the end of the stream (it never became a token)."""
        text, self._pending = self._pending, ""
        return text

    def filter(self, pieces: Iterable[str]) -> Iterator[str]:
        for piece in pieces:
            if out := self.feed(piece):
                yield out
        if tail := self.flush():
            yield tail
