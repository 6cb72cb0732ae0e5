"""`rbee models push`: copy a model the keeper has to a node without internet."""

from __future__ import annotations

import asyncio
import contextlib
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
    """Copy, verify (sha256 on both ends) and register the model on the node.

    Nothing is copied when the node's catalog already has the same file
    (size and sha256) in its model directory. A copy goes to NAME.part and
    is renamed once complete; a failed copy removes the part file, and a
    replaced copy of the same reference is deleted once the new one is in.
    """
    reference, path = local_model(model)
    notes.info(f"hashing {path.name}")
    digest = await asyncio.to_thread(sha256_file, path)
    size = path.stat().st_size
    data = await t.remote_path(t.node.install_dir)
    remote_dir = f"{data}/models/pushed"
    async with hivectl.hive_client(t) as hive:
        await hivectl.ensure_hive(t, hive, notes)
        catalog = (await hive.models()).models
        if (have := await _already_there(t, catalog, digest, size, f"{data}/models/")) is not None:
            notes.info(f"{t.node.name} already has {path.name} ({have.path}); nothing to copy")
            if reference.startswith("file:"):
                reference = f"file:{have.path}"
            if have.reference == modelref.parse(reference).canonical:
                return have
            return await hive.register_model(RegisterRequest(reference=reference, path=have.path, sha256=digest))
        remote = f"{remote_dir}/{path.name}"
        await _copy(t, path, remote, notes)
        if reference.startswith("file:"):
            reference = f"file:{remote}"  # a pushed file is known by where it now lives
        info = await hive.register_model(RegisterRequest(reference=reference, path=remote, sha256=digest))
    # An older copy of the same reference that rbee pushed is not left behind.
    stale = [m.path for m in catalog
             if m.reference == info.reference and m.path != remote and m.path.startswith(remote_dir + "/")]  # fmt: skip
    if stale:
        await t.run(["rm", "-f", *stale], check=False)
    return info


async def _already_there(
    t: Transport, catalog: list[ModelInfo], digest: str, size: int, models_dir: str
) -> ModelInfo | None:
    """The catalog entry holding this very file in the node's model directory, if its file is intact."""
    for m in catalog:
        if m.sha256 == digest and m.size_bytes == size and m.path.startswith(models_dir):
            r = await t.run(["ls", "-ln", m.path], check=False)
            parts = r.stdout.split()
            if r.exit_status == 0 and len(parts) >= 5 and parts[4] == str(size):
                return m
    return None


async def _copy(t: Transport, path: Path, remote: str, notes: Notes) -> None:
    """Copy to REMOTE.part, then rename; the part file never outlives a failure."""
    part = remote + ".part"
    await t.run(["mkdir", "-p", remote.rsplit("/", 1)[0]])
    try:
        await t.connector.put(path, part, lambda done, total: notes.transfer(path.name, done, total))
        await t.run(["mv", "-f", part, remote])
    except BaseException:
        with contextlib.suppress(Exception):
            await t.run(["rm", "-f", part], check=False)
        raise


__all__ = ["local_model", "push"]
