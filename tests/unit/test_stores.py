"""Registry and catalog on real SQLite files."""

import multiprocessing
import time
from pathlib import Path
from typing import Any

from rbee_fabric.catalog import Catalog
from rbee_fabric.keeper.registry import Registry, WorkerRecord


def rec(i: int, node: str = "localhost", model: str = "gemma3-270m", backend: str = "cpu", device: int = 0,
        n_ctx: int = 2048) -> WorkerRecord:
    return WorkerRecord(id=f"w-{i}", node=node, model_ref=model, backend=backend, device=device, url=f"http://127.0.0.1:{9300 + i}",
                        pid=1000 + i, state="idle", last_health_at=time.time(), created_at=time.time(), n_ctx=n_ctx)


def test_registry_creates_its_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "registry.db"
    reg = Registry(path)
    reg.add(rec(1))
    assert path.exists()
    assert [r.id for r in reg.candidates("localhost", "gemma3-270m", "auto", 0, 2048)] == ["w-1"]
    assert reg.candidates("localhost", "gemma3-270m", "cuda", 0, 2048) == []
    assert reg.candidates("mac", "gemma3-270m", "auto", 0, 2048) == []
    assert reg.sync("localhost", set()) == 1
    assert reg.list() == []


def test_a_worker_on_another_gpu_is_not_reused(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.db")
    reg.add(rec(1, backend="cuda", device=0))
    assert [r.id for r in reg.candidates("localhost", "gemma3-270m", "cuda", 0, 2048)] == ["w-1"]
    assert [r.id for r in reg.candidates("localhost", "gemma3-270m", "auto", 0, 2048)] == ["w-1"]
    assert reg.candidates("localhost", "gemma3-270m", "cuda", 3, 2048) == []
    assert reg.candidates("localhost", "gemma3-270m", "auto", 3, 2048) == []
    assert reg.candidates("localhost", "gemma3-270m", "cpu", 0, 2048) == []


def _writer(path: str, start: int, barrier: Any) -> None:
    barrier.wait()  # every process creates the fresh file at the same instant
    reg = Registry(Path(path))
    for i in range(start, start + 50):
        reg.add(rec(i))
        reg.touch(f"w-{i}", "busy")
    reg.close()


def test_registry_is_safe_with_several_processes(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "registry.db"  # created by all of them at once
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_writer, args=(str(path), k * 100, barrier)) for k in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = Registry(path).list()
    assert len(rows) == 300
    assert {r.state for r in rows} == {"busy"}


def test_catalog_forgets_a_file_that_went_away(tmp_path: Path, tiny_model: Path) -> None:
    copy = tmp_path / "m.gguf"
    copy.write_bytes(tiny_model.read_bytes())
    cat = Catalog(tmp_path / "catalog.db")
    info = cat.register("file:" + str(copy), copy)
    assert info.architecture == "llama" and info.quantization == "F32"
    assert cat.find("file:" + str(copy)) == info
    copy.unlink()
    assert cat.find("file:" + str(copy)) is None
    assert cat.list() == []
