"""Does a prompt fit a context? One rule for the keeper (before loading) and the worker.

A request needs its prompt's tokens plus `max_tokens` (1 when generating
until the end of the turn) within the context. Every token covers at least
one byte of the text as the tokenizer sees it, where SentencePiece writes
each space as the 3-byte '▁' (and puts one in front); so a prompt whose
bytes, so counted, already fit is never tokenized: only a prompt that might
not fit pays for counting.
"""

from __future__ import annotations

from rbee_fabric.errors import ContextTooLong
from rbee_fabric.schemas import InferenceRequest

FRAMING_PER_MESSAGE = 16  # tokens a chat template adds around a message, generously


def text_of(req: InferenceRequest) -> str:
    """The text whose tokens fill the context (chat: the messages' contents)."""
    if req.prompt is not None:
        return req.prompt
    return "\n".join(m.content for m in req.messages or [])


def surely_fits(req: InferenceRequest, n_ctx: int) -> bool:
    """True when the prompt fits whatever its tokens (an upper bound: its bytes)."""
    text = text_of(req)
    bound = len(text.encode()) + 2 * text.count(" ") + 5  # '▁' for spaces, prefix, BOS, EOS
    bound += FRAMING_PER_MESSAGE * len(req.messages or [])
    return bound + (req.max_tokens or 1) <= n_ctx


def check(req: InferenceRequest, prompt_tokens: int, n_ctx: int, *, limit: int | None = None) -> None:
    """Raise CONTEXT_TOO_LONG with the counts and what to do; limit = the model's own maximum."""
    room = req.max_tokens or 1
    if prompt_tokens + room <= n_ctx:
        return
    need = prompt_tokens + room
    size = 1 << (need - 1).bit_length()  # the next power of two
    if limit is not None and need > limit:
        what = (
            f"a shorter prompt or fewer --max-tokens: the model's context is at most {limit} "
            "tokens"
        )
    else:
        what = f"--ctx-size {min(size, limit) if limit else size}, fewer --max-tokens, or a shorter prompt"
    raise ContextTooLong(
        f"the prompt is {prompt_tokens} tokens and {room} more are asked for, "
        f"but the context holds {n_ctx} tokens",
        hint=f"use {what}",
        details={"prompt_tokens": prompt_tokens, "n_ctx": n_ctx, "max_tokens": req.max_tokens},
    )
