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


class SpecialTokens:
    """The tables a filter needs, built once per model (Gemma 3 has ~6000 specials).

    No regular expression: compiling an alternation of thousands of strings cost
    the first request ~0.3 s. A scan that tries the few distinct lengths at each
    position that starts like a special costs microseconds per token instead.
    """

    def __init__(self, specials: Iterable[str]) -> None:
        self.strings = frozenset(s for s in specials if s)
        self.lengths = sorted({len(s) for s in self.strings}, reverse=True)  # longest first
        self.starts = frozenset(s[0] for s in self.strings)
        # Every proper prefix of a special string: a tail that may still grow into one.
        self.prefixes = frozenset(s[:i] for s in self.strings for i in range(1, len(s)))
        self.max = self.lengths[0] if self.lengths else 0

    def strip(self, text: str) -> str:
        """text with every special string removed, leftmost-longest, in one pass."""
        if not self.strings or not any(c in self.starts for c in text):
            return text
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            if text[i] in self.starts:
                for length in self.lengths:
                    if text[i : i + length] in self.strings:
                        i += length
                        break
                else:
                    out.append(text[i])
                    i += 1
            else:
                out.append(text[i])
                i += 1
        return "".join(out)


class SpecialTokenFilter:
    """Feed text pieces in order; get back text with no special token in it."""

    def __init__(self, specials: SpecialTokens | Iterable[str]) -> None:
        self._t = specials if isinstance(specials, SpecialTokens) else SpecialTokens(specials)
        self._pending = ""

    def feed(self, piece: str) -> str:
        t = self._t
        text = t.strip(self._pending + piece)
        hold = 0
        for n in range(min(len(text), t.max - 1), 0, -1):
            if text[-n:] in t.prefixes:
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
