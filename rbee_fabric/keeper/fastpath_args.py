"""The lean path's reading of `rbee [--inventory F] [--debug] infer OPTIONS` (stdlib only).

It understands the common spellings of `rbee infer`'s own options and
nothing else: any other token, a value out of the option's range, `--help`
or `--` makes it give up (None), and typer parses the command as always.
"""

from __future__ import annotations

import math
from typing import Any

from rbee_fabric.keeper import defaults


class LeanArgs:
    """The flags of `rbee infer` the lean path reads (a plain class: no dataclasses import)."""

    model: str
    node: str = "localhost"
    prompt: str | None = None
    max_tokens: int | None = None
    system: str | None = None
    raw: bool = False
    chat_format: str | None = None
    temperature: float = defaults.TEMPERATURE
    top_p: float = defaults.TOP_P
    seed: int | None = None
    backend: str = "auto"
    device: int = 0
    timeout: float = defaults.LOAD_TIMEOUT_S
    queue_timeout: float = defaults.QUEUE_TIMEOUT_S
    retry: int = defaults.RETRY
    ctx_size: int = defaults.N_CTX
    start_hive: bool = True
    as_json: bool = False
    inventory: str | None = None
    debug: bool = False
    infer_at: int = 0  # index of "infer" in argv
    extra: list[str]

    def __init__(self, model: str, **values: Any) -> None:
        self.model = model
        self.extra = []
        for name, value in values.items():
            if not hasattr(LeanArgs, name) and name != "extra":
                raise TypeError(f"LeanArgs has no field {name!r}")
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"LeanArgs({vars(self)!r})"


def _num(kind: type, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Any:
    def conv(text: str) -> Any:
        value = kind(text)  # ValueError: not for us
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(text)
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise ValueError(text)
        if hi is not None and value > hi:
            raise ValueError(text)
        return value

    return conv


# option -> (field, converter); flags -> (field, value)
_VALUES: dict[str, tuple[str, Any]] = {
    "--model": ("model", str), "-m": ("model", str),
    "--node": ("node", str), "-n": ("node", str),
    "--prompt": ("prompt", str), "-p": ("prompt", str),
    "--max-tokens": ("max_tokens", _num(int, 1)),
    "--system": ("system", str),
    "--chat-format": ("chat_format", str),
    "--temperature": ("temperature", _num(float, 0.0, 10.0)),
    "--top-p": ("top_p", _num(float, 0.0, 1.0)),
    "--seed": ("seed", _num(int, 0)),
    "--backend": ("backend", str),
    "--device": ("device", _num(int, 0)),
    "--timeout": ("timeout", _num(float, 1.0)),
    "--queue-timeout": ("queue_timeout", _num(float, 0.1)),
    "--retry": ("retry", _num(int, 1)),
    "--ctx-size": ("ctx_size", _num(int, 16)),
}  # fmt: skip
_FLAGS: dict[str, tuple[str, bool]] = {
    "--raw": ("raw", True),
    "--json": ("as_json", True),
    "--start-hive": ("start_hive", True),
    "--no-start-hive": ("start_hive", False),
}


def parse(argv: list[str]) -> LeanArgs | None:
    """argv without the program name; None when the lean path should not try."""
    got: dict[str, Any] = {}
    i = 0
    # The root options, before the command.
    while i < len(argv) and argv[i] != "infer":
        tok = argv[i]
        if tok == "--debug":
            got["debug"] = True
            i += 1
        elif tok == "--inventory" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            got["inventory"] = argv[i + 1]
            i += 2
        elif tok.startswith("--inventory="):
            got["inventory"] = tok.partition("=")[2]
            i += 1
        else:
            return None
    if i >= len(argv):
        return None
    got["infer_at"] = i
    i += 1
    while i < len(argv):
        tok = argv[i]
        name, eq, inline = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        if name in _FLAGS and not eq:
            key, flag = _FLAGS[name]
            got[key] = flag
            i += 1
            continue
        if name not in _VALUES:
            return None  # --help, --, positional words, other spellings: typer's job
        if eq:
            text = inline
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            text = argv[i + 1]
            i += 2
        else:
            return None
        key, conv = _VALUES[name]
        try:
            got[key] = conv(text)
        except ValueError:
            return None
    if "model" not in got:
        return None
    return LeanArgs(**got)
