from pathlib import Path

import pytest

from rbee_fabric.ggufmeta import GGUFError, read_info


def test_reads_the_tiny_model_header(tiny_model: Path) -> None:
    info = read_info(tiny_model)
    assert info.architecture == "llama"
    assert info.quantization == "F32"
    assert info.context_length == 512
    assert info.block_count == 2 and info.embedding_length == 64 and info.head_count == 4
    assert info.parameter_count and 100_000 < info.parameter_count < 200_000
    # 2 (k and v) * 2 layers * 512 ctx * 64 wide * 2 bytes
    assert info.kv_cache_bytes(512) == 2 * 2 * 512 * 64 * 2


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(GGUFError, match="not a GGUF"):
        read_info(bad)


def test_truncated_header(tmp_path: Path, tiny_model: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:100])
    with pytest.raises(GGUFError, match="ends inside"):
        read_info(cut)
