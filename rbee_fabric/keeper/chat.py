"""`rbee chat`: one conversation with one worker, turn by turn.

The worker is found or started exactly as `rbee infer` does (same transport,
same steps); each turn sends the whole conversation, rendered by the worker
with the model's template. When the conversation outgrows the context, the
oldest turns are dropped with a one-line notice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rbee_fabric.errors import ContextTooLong
from rbee_fabric.keeper.infer import Acquired, Reporter, Summary, _inference
from rbee_fabric.schemas import ChatMessage, DownloadProgress, LoadingProgress


@dataclass
class Turn:
    user: str
    assistant: str


class _Capture:
    """Forwards everything to the user's reporter and keeps the answer's text."""

    def __init__(self, out: Reporter) -> None:
        self.out = out
        self.pieces: list[str] = []

    def info(self, msg: str) -> None:
        self.out.info(msg)

    def attempt(self, n: int, total: int, address: str, error: str) -> None:
        self.out.attempt(n, total, address, error)

    def download(self, p: DownloadProgress) -> None:
        self.out.download(p)

    def loading(self, p: LoadingProgress) -> None:
        self.out.loading(p)

    def token(self, text: str) -> None:
        self.pieces.append(text)
        self.out.token(text)


@dataclass
class ChatSession:
    worker: Acquired
    out: Reporter
    system: str | None = None
    turns: list[Turn] = field(default_factory=list)
    dropped: int = 0
    last: Summary | None = None

    def describe(self) -> str:
        """One line on how the conversation is rendered, said once at the start."""
        fmt = self.worker.run.opts.chat_format
        if fmt:
            return f"chat format: {fmt}"
        if self.worker.chat_template:
            return "chat through the model's own template"
        return (
            "this model has no chat template: the worker uses the known format of its "
            "architecture (a base model continues text rather than following instructions)"
        )

    def messages(self, user: str) -> list[ChatMessage]:
        msgs = [ChatMessage(role="system", content=self.system)] if self.system else []
        for t in self.turns:
            msgs.append(ChatMessage(role="user", content=t.user))
            msgs.append(ChatMessage(role="assistant", content=t.assistant))
        msgs.append(ChatMessage(role="user", content=user))
        return msgs

    def clear(self) -> None:
        self.turns.clear()

    async def ask(self, user: str) -> Summary:
        """Stream one answer; the turn is kept only when the answer completes."""
        run = self.worker.run
        while True:
            capture = _Capture(self.out)
            run.out = capture
            run.opts.messages = self.messages(user)
            run.started = time.monotonic()  # each answer's times start at its question
            try:
                summary = await _inference(run, self.worker.rec, reused=self.worker.reused)
            except ContextTooLong as exc:
                if not self.turns:
                    raise
                self.turns.pop(0)
                self.dropped += 1
                n_ctx = exc.details.get("n_ctx", "?")
                self.out.info(
                    f"(the conversation outgrew the context of {n_ctx} tokens: "
                    "dropped the oldest turn)"
                )
                continue
            finally:
                run.out = self.out
            self.worker.reused = True
            self.turns.append(Turn(user, "".join(capture.pieces)))
            self.last = summary
            return summary
