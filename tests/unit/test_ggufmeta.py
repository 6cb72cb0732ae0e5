from pathlib import Path

import pytest

from rbee_fabric import ggufmeta
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


def test_a_vocabulary_straddling_chunks_is_skipped_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.tiny_gguf import CHATML_TEMPLATE, write_tiny_gguf

    model = write_tiny_gguf(tmp_path / "chat.gguf", chat_template=CHATML_TEMPLATE)
    whole = ggufmeta._parse(model)
    # Chunks smaller than a length field, and than the longest token, still land
    # exactly after the array: the keys after it (the template) and the tensor index read.
    for chunk in (3, 7, 8, 11, 64):
        monkeypatch.setattr(ggufmeta, "_CHUNK", chunk)
        assert ggufmeta._parse(model) == whole
    assert whole.chat_template is True and whole.parameter_count


def test_the_context_length_alone_and_the_cache(tmp_path: Path, tiny_model: Path) -> None:
    assert ggufmeta.context_length(tiny_model) == 512
    copy = tmp_path / "m.gguf"
    copy.write_bytes(tiny_model.read_bytes())
    first = read_info(copy)
    assert read_info(copy) is first  # kept while the file is unchanged
    from tests.support.tiny_gguf import write_tiny_gguf

    write_tiny_gguf(copy, n_ctx=256)  # rewritten: read again
    assert read_info(copy).context_length == 256
    assert ggufmeta.context_length(copy) == 256
