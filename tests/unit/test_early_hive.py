"""The record a hive started by the lean path writes on the keeper's pipe
(hive/speculate.py tell_keeper), as the keeper reads it (fastpath_hive.EarlyHive)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from rbee_fabric.keeper.fastpath_hive import EarlyHive
from tests.unit.test_minihttp import Canned

RECORD = {"worker_id": "w-1", "url": "http://127.0.0.1:9301", "pid": 7, "n_ctx": 256,
          "backend": "cpu", "device": 0, "safe_mode": False, "model_path": "/m.gguf"}  # fmt: skip


@pytest.fixture
def hive_proc() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


_open: list[int] = []


@pytest.fixture(autouse=True)
def _close_write_ends() -> Iterator[None]:
    yield
    while _open:
        os.close(_open.pop())


def _early(proc: subprocess.Popen[bytes], written: bytes | None, port: int = 1) -> EarlyHive:
    """written: what the hive wrote before closing its end; None: it keeps it open."""
    r, w = os.pipe()
    if written is not None:
        os.write(w, written)
        os.close(w)
    else:
        _open.append(w)
    return EarlyHive(port, proc, r)


def test_the_record_is_read(hive_proc: subprocess.Popen[bytes]) -> None:
    early = _early(hive_proc, json.dumps(RECORD).encode() + b"\n")
    assert early.record() == RECORD
    assert early.record() is None  # read once: the pipe is closed


@pytest.mark.parametrize("written", [b"", b"{not json\n", json.dumps({"worker_id": "w-1"}).encode() + b"\n",
                                     json.dumps(RECORD).encode()])  # fmt: skip
def test_no_usable_record_means_none(hive_proc: subprocess.Popen[bytes], written: bytes) -> None:
    # Closed empty: the hive started no worker; damaged, partial or cut short: not used.
    assert _early(hive_proc, written).record() is None


def test_a_hive_that_answers_without_writing_means_none(hive_proc: subprocess.Popen[bytes]) -> None:
    # A hive of another version keeps the pipe open and never writes it.
    hive = Canned([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"])
    try:
        t0 = time.monotonic()
        assert _early(hive_proc, None, hive.port).record(wait_s=10) is None
        assert time.monotonic() - t0 < 5
    finally:
        hive.close()


def test_nothing_within_the_wait_means_none(hive_proc: subprocess.Popen[bytes]) -> None:
    assert _early(hive_proc, None).record(wait_s=0.3) is None
