"""Model provisioning from a Hugging Face-shaped server, with faults injected for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RbeeHome
from tests.support.hubserver import Hub
from tests.support.tiny_gguf import write_tiny_gguf

MB = 2**20


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loadable GGUF of ~8 MB (the tiny model padded), so a download takes a while."""
    p = write_tiny_gguf(tmp_path_factory.mktemp("hub") / "tiny.Q4_K_M.gguf", seed=3)
    with open(p, "ab") as fh:
        fh.write(os.urandom(8 * MB))
    return p


@pytest.fixture
def hub() -> Iterator[Hub]:
    h = Hub().start()
    yield h
    h.stop()


@pytest.fixture
def home(rbee_home: RbeeHome, hub: Hub) -> Iterator[RbeeHome]:
    rbee_home.local_node()
    rbee_home.env.update({"HF_ENDPOINT": hub.url, "RBEE_DOWNLOAD_BACKOFF_S": "0.1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    yield rbee_home
    subprocess.run([sys.executable, "-m", "rbee_fabric.cli", "hive", "stop", "localhost"], env=rbee_home.env,
                   capture_output=True, timeout=60)  # fmt: skip




def catalog(home: RbeeHome) -> list[dict]:
    return json.loads(home.run("models", "list", "--json").stdout)


def model_files(home: RbeeHome) -> list[str]:
    root = home.data / "models"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_pull_picks_q4_k_m_survives_a_reset_and_infer_runs(home: RbeeHome, hub: Hub, big_model: Path, tiny_model: Path) -> None:
    f = hub.add("org/tiny-GGUF", "tiny.Q4_K_M.gguf", big_model, reset_at=3 * MB)
    hub.add("org/tiny-GGUF", "tiny.Q8_0.gguf", tiny_model)
    r = home.run("models", "pull", "hf:org/tiny-GGUF")
    assert r.returncode == 0, r.stderr
    assert "fetching tiny.Q4_K_M.gguf" in r.stderr  # the choice is shown
    assert "verifying" in r.stderr
    # The reset cut the first GET; the second resumed at the byte where it stopped.
    assert len(f.served) == 2
    first_start, first_sent = f.served[0]
    assert first_start == 0 and f.served[1][0] == first_sent > 0
    [entry] = catalog(home)
    assert entry["reference"] == "hf:org/tiny-GGUF" and entry["sha256"] == f.sha256
    assert entry["size_bytes"] == big_model.stat().st_size
    assert model_files(home) == ["hf/org/tiny-GGUF/tiny.Q4_K_M.gguf"]
    out = home.run("infer", "--model", "hf:org/tiny-GGUF", "--prompt", "hi", "--max-tokens", "4", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tokens"] >= 1


def test_a_stall_times_out_and_is_retried(home: RbeeHome, hub: Hub, big_model: Path) -> None:
    home.env["RBEE_DOWNLOAD_READ_TIMEOUT_S"] = "1"
    f = hub.add("org/stall-GGUF", "tiny.Q4_K_M.gguf", big_model, stall_at=2 * MB, stall_s=20)
    r = home.run("models", "pull", "hf:org/stall-GGUF")
    assert r.returncode == 0, r.stderr
    # The stalled response is still asleep on the server; a retry resumed at the stall.
    assert (2 * MB, big_model.stat().st_size - 2 * MB) in f.served
    assert catalog(home)[0]["sha256"] == f.sha256


def test_a_wrong_hash_is_refused_and_nothing_is_kept(home: RbeeHome, hub: Hub, big_model: Path) -> None:
    hub.add("org/bad-GGUF", "tiny.Q4_K_M.gguf", big_model, wrong_sha=True)
    r = home.run("models", "pull", "hf:org/bad-GGUF")
    assert r.returncode == 1
    assert "DOWNLOAD_FAILED" in r.stderr and "corrupt" in r.stderr
    assert catalog(home) == []
    assert model_files(home) == []  # no .part, no final file


def test_download_fails_after_six_attempts_with_the_last_error(home: RbeeHome, hub: Hub, big_model: Path) -> None:
    # Issue 5, case 2: every response is cut at 2 MB, so no attempt gets further.
    f = hub.add("org/flaky-GGUF", "tiny.Q4_K_M.gguf", big_model, reset_always_at=2 * MB)
    r = home.run("infer", "--model", "hf:org/flaky-GGUF", "--prompt", "x")
    assert r.returncode == 1
    assert "DOWNLOAD_FAILED" in r.stderr and "after 6 attempts" in r.stderr
    assert "Suggestion:" in r.stderr and "resumes" in r.stderr
    assert len(f.served) == 6
    assert catalog(home) == []
    assert not any(n.endswith(".gguf") for n in model_files(home))  # only the .part, kept for a resume


def test_not_found_and_private_repos(home: RbeeHome, hub: Hub, big_model: Path) -> None:
    hub.add("org/tiny-GGUF", "tiny.Q4_K_M.gguf", big_model)
    r = home.run("models", "pull", "hf:org/nope-GGUF")
    assert r.returncode == 1 and "MODEL_NOT_FOUND" in r.stderr and "org/nope-GGUF" in r.stderr
    r = home.run("models", "pull", "hf:org/tiny-GGUF:other.gguf")
    assert r.returncode == 1 and "MODEL_NOT_FOUND" in r.stderr and "tiny.Q4_K_M.gguf" in r.stderr
    r = home.run("models", "pull", "hf:org/tiny-GGUF:Q2_K")
    assert r.returncode == 1 and "no Q2_K file" in r.stderr
    r = home.run("models", "pull", "hf:not/a/repo")
    assert r.returncode == 2 and "INVALID_REQUEST" in r.stderr
    hub.add("org/private-GGUF", "tiny.Q4_K_M.gguf", big_model)
    hub.repos["org/private-GGUF"].private_token = "hf_secret"
    r = home.run("models", "pull", "hf:org/private-GGUF")
    assert r.returncode == 1 and "MODEL_NOT_FOUND" in r.stderr and "HF_TOKEN" in r.stderr
    assert catalog(home) == []


def test_private_repo_with_a_token(home: RbeeHome, hub: Hub, big_model: Path) -> None:
    hub.add("org/private-GGUF", "tiny.Q4_K_M.gguf", big_model)
    hub.repos["org/private-GGUF"].private_token = "hf_secret"
    home.env["HF_TOKEN"] = "hf_secret"  # the hive the keeper starts inherits it
    r = home.run("models", "pull", "hf:org/private-GGUF")
    assert r.returncode == 0, r.stderr


def test_a_download_cut_by_killing_the_hive_resumes(home: RbeeHome, hub: Hub, big_model: Path) -> None:
    f = hub.add("org/slow-GGUF", "tiny.Q4_K_M.gguf", big_model, rate=3 * MB)
    p = subprocess.Popen([sys.executable, "-m", "rbee_fabric.cli", "models", "pull", "hf:org/slow-GGUF"],
                         env=home.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    part = home.data / "models" / "hf" / "org" / "slow-GGUF" / "tiny.Q4_K_M.gguf.part"
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > 3 * MB) and time.monotonic() < deadline:
        time.sleep(0.05)
    hive_pid = int(next(home.data.glob("hive-*.pid")).read_text().split()[0])
    os.kill(hive_pid, signal.SIGKILL)
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 1, err
    kept = part.stat().st_size
    assert kept > 3 * MB and catalog_path_absent(home)
    f.rate = None
    r = home.run("models", "pull", "hf:org/slow-GGUF")
    assert r.returncode == 0, r.stderr
    assert "resuming tiny.Q4_K_M.gguf at" in r.stderr
    resumed_start = f.served[-1][0]
    assert resumed_start == kept  # nothing before the cut was fetched again
    assert catalog(home)[0]["sha256"] == f.sha256


def catalog_path_absent(home: RbeeHome) -> bool:
    return not (home.data / "models" / "hf" / "org" / "slow-GGUF" / "tiny.Q4_K_M.gguf").exists()


def test_disk_full_is_refused_before_writing(rbee_home: RbeeHome, hub: Hub, big_model: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        rbee_home.local_node()
        rbee_home.env.update({"HF_ENDPOINT": hub.url, "RBEE_DATA_DIR": str(small / "data")})
        hub.add("org/tiny-GGUF", "tiny.Q4_K_M.gguf", big_model)
        r = rbee_home.run("models", "pull", "hf:org/tiny-GGUF")
        assert r.returncode == 1
        assert "INSUFFICIENT_DISK" in r.stderr and "need 9 MB" in r.stderr
        assert not list((small / "data" / "models").rglob("*.gguf*"))
        rbee_home.run("hive", "stop", "localhost")
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
