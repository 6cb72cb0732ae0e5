"""Joining the demo model's parts: the same bytes with or without copy_file_range."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rbee_fabric.hive.provision import join_files


def parts(tmp_path: Path) -> list[Path]:
    out = []
    for i, size in enumerate([8192, 4096 * 3 + 17, 1, 70_000]):
        p = tmp_path / f"model.gguf.part{i:02d}"
        p.write_bytes(os.urandom(size))
        out.append(p)
    return out


def test_join_writes_the_parts_in_order(tmp_path: Path) -> None:
    ps = parts(tmp_path)
    target = tmp_path / "model.gguf"
    target.write_bytes(b"x" * 500_000)  # a longer leftover is replaced, not kept at the end
    join_files(ps, target)
    assert target.read_bytes() == b"".join(p.read_bytes() for p in ps)


def test_join_without_copy_file_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    ps = parts(tmp_path)
    join_files(ps, tmp_path / "model.gguf")
    assert (tmp_path / "model.gguf").read_bytes() == b"".join(p.read_bytes() for p in ps)


def test_join_when_copy_file_range_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    ps = parts(tmp_path)
    join_files(ps, tmp_path / "model.gguf")
    assert (tmp_path / "model.gguf").read_bytes() == b"".join(p.read_bytes() for p in ps)
