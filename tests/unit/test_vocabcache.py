"""The special token strings kept on disk per model file and llama.cpp version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rbee_fabric import contextfit
from rbee_fabric.keeper import fastpath_cold
from rbee_fabric.worker import vocabcache


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RBEE_DATA_DIR", str(tmp_path / "data"))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    return model


def test_kept_strings_come_back_for_the_same_file_and_version(data: Path) -> None:
    assert vocabcache.load(str(data), "0.3.1") is None  # nothing kept yet
    vocabcache.save(str(data), "0.3.1", ["<eos>", "<start_of_turn>"])
    assert vocabcache.load(str(data), "0.3.1") == ["<eos>", "<start_of_turn>"]
    assert vocabcache.load(str(data), "0.3.2") is None  # another llama.cpp may read it otherwise


def test_a_changed_file_is_scanned_again(data: Path) -> None:
    vocabcache.save(str(data), "v", ["<eos>"])
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert vocabcache.load(str(data), "v") is None


def test_a_damaged_cache_only_costs_the_scan(data: Path) -> None:
    vocabcache.save(str(data), "v", ["<eos>"])
    kept = next((Path(os.environ["RBEE_DATA_DIR"]) / "cache" / "specials").iterdir())
    kept.write_text('{"not": "a list"')
    assert vocabcache.load(str(data), "v") is None
    assert vocabcache.load(str(data.with_name("gone.gguf")), "v") is None


def test_the_lean_cold_path_bounds_a_prompt_as_the_full_path_does() -> None:
    assert fastpath_cold.FRAMING_PER_MESSAGE == contextfit.FRAMING_PER_MESSAGE
