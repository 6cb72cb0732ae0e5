"""`rbee models push`: copy a model the keeper has to a node without internet."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

from rbee_fabric import modelref, paths
from rbee_fabric.catalog import Catalog, sha256_file
from rbee_fabric.errors import ModelNotFound
from rbee_fabric.keeper import hivectl
from rbee_fabric.keeper.transport import Transport
from rbee_fabric.schemas import ModelInfo, RegisterRequest


class Notes(Protocol):
    def info(self, msg: str) -> None: ...

    def attempt(self, n: int, total: int, address: str, error: str) -> None: ...

    def transfer(self, name: str, done: int, total: int) -> None: ...


def local_model(model: str) -> tuple[str, Path]:
    """(reference, file) for a local GGUF path or a model of the keeper's own catalog."""
    candidate = Path(model).expanduser()
    if candidate.is_file():
        ref = modelref.parse(f"file:{candidate.resolve()}")
        return ref.canonical, candidate.resolve()
    ref = modelref.parse(model)
    if ref.kind == "file":
        assert ref.path is not None
        if not Path(ref.path).is_file():
            raise ModelNotFound(f"no such file on this machine: {ref.path}")
        return ref.canonical, Path(ref.path)
    db = paths.data_dir() / "catalog.db"
    if db.exists():
        cat = Catalog(db)
        try:
            if (info := cat.find(ref.canonical)) is not None:
                return ref.canonical, Path(info.path)
        finally:
            cat.close()
    raise ModelNotFound(
        f"{model} is not on this machine",
        hint=f"pull it here first (rbee models pull --node localhost {model}) or give a .gguf path",
        details={"reference": model},
    )


async def push(t: Transport, model: str, notes: Notes) -> ModelInfo:
    """Copy, verify (sha256 on both ends) and register the model on the node."""
    reference, path = local_model(model)
    notes.info(f"hashing {path.name}")
    digest = await asyncio.to_thread(sha256_file, path)
    data = await t.remote_path(t.node.install_dir)
    remote_dir = f"{data}/models/pushed"
    remote = f"{remote_dir}/{path.name}"
    part = remote + ".part"
    await t.run(["mkdir", "-p", remote_dir])
    await t.connector.put(path, part, lambda done, total: notes.transfer(path.name, done, total))
    await t.run(["mv", "-f", part, remote])
    if reference.startswith("file:"):
        reference = f"file:{remote}"  # a pushed file is known by where it now lives
    hive = await hivectl.connect_hive(t)
    try:
        await hivectl.ensure_hive(t, hive, notes)
        return await hive.register_model(RegisterRequest(reference=reference, path=remote, sha256=digest))
    finally:
        await hive.aclose()


__all__ = ["local_model", "push"]
