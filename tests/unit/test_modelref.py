import pytest

from rbee_fabric import modelref
from rbee_fabric.errors import ModelNotFound, UsageError


@pytest.mark.parametrize(
    ("raw", "kind", "canonical"),
    [
        ("gemma3-270m", "alias", "gemma3-270m"),
        ("file:/models/x.gguf", "file", "file:/models/x.gguf"),
        ("file:///models/x.GGUF", "file", "file:/models/x.GGUF"),
        ("hf:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF", "hf", "hf:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"),
        ("hf:org/repo:model.Q4_K_M.gguf", "hf", "hf:org/repo:model.Q4_K_M.gguf"),
        ("hf:org/repo:q4_k_m", "hf", "hf:org/repo:Q4_K_M"),
    ],
)
def test_accepted_forms(raw: str, kind: str, canonical: str) -> None:
    ref = modelref.parse(raw)
    assert ref.kind == kind
    assert ref.canonical == canonical


@pytest.mark.parametrize(
    "raw", ["file:relative.gguf", "file:/x/model.bin", "hf:noslash", "hf:a/b/c", "hf:org/repo:notaquant", "  "]
)
def test_malformed_is_invalid_request_with_the_forms(raw: str) -> None:
    with pytest.raises(UsageError) as exc:
        modelref.parse(raw)
    assert exc.value.code == "INVALID_REQUEST"
    assert exc.value.exit_code == 2


def test_unknown_alias_is_model_not_found_never_a_fallback() -> None:
    with pytest.raises(ModelNotFound) as exc:
        modelref.parse("llama-9000")
    assert "llama-9000" in exc.value.message
    assert "hf:ORG/REPO" in (exc.value.hint or "")


@pytest.mark.parametrize("raw", ["./model.gguf", "/abs/model.gguf", "model.gguf", "ollama:llama3", "a b", "http://x/y.gguf"])
def test_a_path_url_or_other_scheme_is_malformed_exit_2(raw: str) -> None:
    with pytest.raises(UsageError) as exc:
        modelref.parse(raw)
    assert exc.value.exit_code == 2 and "malformed model reference" in exc.value.message
    if raw.endswith(".gguf") and not raw.startswith("http"):
        assert "file:/abs/path/model.gguf" in exc.value.hint


@pytest.mark.parametrize("raw", ["llama9-70b", "meta-llama/Llama-3.2-1B"])
def test_a_well_formed_name_nobody_has_is_model_not_found_exit_1(raw: str) -> None:
    with pytest.raises(ModelNotFound) as exc:
        modelref.parse(raw)
    assert exc.value.exit_code == 1 and raw in exc.value.message
    if "/" in raw:
        assert f"hf:{raw}" in exc.value.hint
