"""Removing a model by the name a user knows it by: its id or its reference (issue 17)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import Hive, RbeeHome, start_hive, stop_hive
from tests.support.hubserver import Hub
from tests.support.tiny_gguf import write_tiny_gguf


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub().start()
    h.add("org/tiny-GGUF", "tiny.Q4_K_M.gguf", write_tiny_gguf(tmp_path / "a" / "tiny.Q4_K_M.gguf", seed=1))
    h.add("org/tiny-GGUF", "tiny.Q8_0.gguf", write_tiny_gguf(tmp_path / "b" / "tiny.Q8_0.gguf", seed=2))
    yield h
    h.stop()


@pytest.fixture
def hub_hive(rbee_home: RbeeHome, hub: Hub) -> Iterator[Hive]:
    h = start_hive(rbee_home, env={"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"})
    yield h
    stop_hive(h)


def pull(hive: Hive, reference: str) -> dict:
    r = httpx.post(f"{hive.url}/v1/models/download", json={"reference": reference}, headers=hive.headers)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for m in httpx.get(f"{hive.url}/v1/models", headers=hive.headers).json()["models"]:
            if m["reference"] == reference:
                return m
        time.sleep(0.05)
    raise AssertionError(f"{reference} never entered the catalog")


def rm(hive: Hive, name: str) -> httpx.Response:
    return httpx.delete(f"{hive.url}/v1/models/{quote(name, safe=':/')}", headers=hive.headers, timeout=30)


def catalog(hive: Hive) -> list[str]:
    return [m["reference"] for m in httpx.get(f"{hive.url}/v1/models", headers=hive.headers).json()["models"]]


def test_rm_accepts_the_reference_as_infer_takes_it(hub_hive: Hive, tiny_model: Path) -> None:
    q4 = pull(hub_hive, "hf:org/tiny-GGUF:Q4_K_M")
    pull(hub_hive, "hf:org/tiny-GGUF:Q8_0")
    pull(hub_hive, f"file:{tiny_model}")

    # A repo with two files in the catalog: ambiguous, and the answer names both.
    r = rm(hub_hive, "hf:org/tiny-GGUF")
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "INVALID_REQUEST" and "matches 2 models" in err["message"]
    assert q4["id"] in err["message"] and "hint" in err["details"]
    assert len(catalog(hub_hive)) == 3  # nothing removed

    r = rm(hub_hive, "hf:org/tiny-GGUF:Q8_0")
    assert r.status_code == 200, r.text
    assert "hf:org/tiny-GGUF:Q8_0" in r.json()["message"] and "and its file" in r.json()["message"]
    # Now the repo reference means the one file left; the id still works too.
    r = rm(hub_hive, "hf:org/tiny-GGUF")
    assert r.status_code == 200, r.text
    assert q4["id"] in r.json()["message"]
    assert not (hub_hive.home.data / "models" / "hf").exists()  # no empty directories left behind

    r = rm(hub_hive, f"file:{tiny_model}")
    assert r.status_code == 200, r.text
    assert tiny_model.exists()  # the user's own file stays
    assert catalog(hub_hive) == []


def test_rm_of_an_unknown_model_lists_what_the_catalog_holds(hive: Hive, tiny_model: Path) -> None:
    r = rm(hive, "gemma3-270m")
    assert r.status_code == 404
    assert r.json()["error"]["details"]["hint"] == "the catalog is empty"
    model = httpx.post(f"{hive.url}/v1/models/download", json={"reference": f"file:{tiny_model}"},
                       headers=hive.headers).json()["model"]  # fmt: skip
    r = rm(hive, "llama9-70b")
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "MODEL_NOT_FOUND" and "'llama9-70b'" in err["message"]
    assert model["id"] in err["details"]["hint"] and f"file:{tiny_model}" in err["details"]["hint"]
    r = rm(hive, model["id"])
    assert r.status_code == 200 and catalog(hive) == []


def test_rbee_models_rm_takes_a_reference(rbee_home: RbeeHome, hub: Hub, tiny_model: Path) -> None:
    rbee_home.local_node()
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    try:
        for ref in ("hf:org/tiny-GGUF:Q4_K_M", "hf:org/tiny-GGUF:Q8_0"):
            assert rbee_home.run("models", "pull", ref, env=env).returncode == 0
        r = rbee_home.run("models", "rm", "hf:org/tiny-GGUF", env=env)
        assert r.returncode == 2, r.stderr
        assert "INVALID_REQUEST" in r.stderr and "matches 2 models" in r.stderr and "Suggestion:" in r.stderr
        r = rbee_home.run("models", "rm", "llama9-70b", env=env)
        assert r.returncode == 1 and "MODEL_NOT_FOUND" in r.stderr
        assert "Suggestion: the catalog holds: tiny-gguf-q4-k-m-" in r.stderr
        r = rbee_home.run("models", "rm", "--node", "localhost", "hf:org/tiny-GGUF:Q8_0", env=env)
        assert r.returncode == 0, r.stderr
        assert "removed hf:org/tiny-GGUF:Q8_0" in r.stderr
        listed = json.loads(rbee_home.run("models", "list", "--json", env=env).stdout)
        assert [m["reference"] for m in listed] == ["hf:org/tiny-GGUF:Q4_K_M"]
    finally:
        rbee_home.run("hive", "stop", "localhost", env=env)
