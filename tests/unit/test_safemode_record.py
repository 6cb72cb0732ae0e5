"""The safe-mode record and the restart rule (rbee_fabric/hive/safemode.py)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from rbee_fabric.hive.safemode import (
    SafeModeStore,
    build_key,
    engine_crash,
    recorded,
    should_retry,
    signal_name,
)


def test_record_is_keyed_by_build_and_survives_a_new_store(tmp_path: Path) -> None:
    store = SafeModeStore(tmp_path, build="llama-cpp-python 0.3.36 cpu aaaa")
    assert store.get() is None and store.initial("auto") == (False, None)
    store.record("SIGSEGV", "gemma3-270m")
    again = SafeModeStore(tmp_path, build="llama-cpp-python 0.3.36 cpu aaaa")
    safe, why = again.initial("auto")
    assert safe and why == "the engine crashed with SIGSEGV on this CPU while loading"
    # Another build (an upgrade, a rebuild) starts in normal mode again.
    assert SafeModeStore(tmp_path, build="llama-cpp-python 0.3.37 cpu bbbb").initial("auto") == (False, None)
    # The inventory wins over the record, both ways.
    assert again.initial("off") == (False, None)
    assert SafeModeStore(tmp_path, build="other").initial("on")[0] is True


def test_record_is_written_atomically_and_keeps_other_builds(tmp_path: Path) -> None:
    SafeModeStore(tmp_path, build="one").record("SIGILL", "a")
    SafeModeStore(tmp_path, build="two").record("SIGSEGV", "b")
    data = json.loads((tmp_path / "safe_mode.json").read_text())
    assert data["version"] == 1 and set(data["builds"]) == {"one", "two"}
    assert data["builds"]["one"]["signal"] == "SIGILL"
    assert [p.name for p in tmp_path.iterdir()] == ["safe_mode.json"]  # no temporary file left


def test_a_damaged_record_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / "safe_mode.json").write_text("{not json")
    assert SafeModeStore(tmp_path, build="x").get() is None
    SafeModeStore(tmp_path, build="x").record("SIGBUS", "m")  # and is replaced, not appended to
    assert SafeModeStore(tmp_path, build="x").get() is not None


def test_recorded_reads_the_current_build(tmp_path: Path) -> None:
    assert recorded(str(tmp_path)) is None
    SafeModeStore(tmp_path).record("SIGSEGV", "m")  # the real build key of this machine
    rec = recorded(str(tmp_path))
    assert rec is not None and rec["model"] == "m"
    assert build_key().startswith("llama-cpp-python ")


@pytest.mark.parametrize(
    ("code", "name", "crash"),
    [
        (-signal.SIGSEGV, "SIGSEGV", "SIGSEGV"),
        (-signal.SIGILL, "SIGILL", "SIGILL"),
        (-signal.SIGBUS, "SIGBUS", "SIGBUS"),
        (-signal.SIGKILL, "SIGKILL", None),  # from outside: the OOM killer, a user
        (-signal.SIGTERM, "SIGTERM", None),
        (4, None, None),  # the worker's own "model failed to load"
        (0, None, None),
    ],
)
def test_which_exits_are_engine_crashes(code: int, name: str | None, crash: str | None) -> None:
    assert signal_name(code) == name
    assert engine_crash(code) == crash


def test_only_a_crash_while_loading_in_auto_gets_a_restart() -> None:
    segv = -signal.SIGSEGV
    assert should_retry("auto", safe_mode=False, state="loading", stopping=False, returncode=segv) == "SIGSEGV"
    assert should_retry("auto", safe_mode=False, state="starting", stopping=False, returncode=segv) == "SIGSEGV"
    assert should_retry("auto", safe_mode=True, state="loading", stopping=False, returncode=segv) is None
    assert should_retry("auto", safe_mode=False, state="idle", stopping=False, returncode=segv) is None
    assert should_retry("auto", safe_mode=False, state="busy", stopping=False, returncode=segv) is None
    assert should_retry("auto", safe_mode=False, state="loading", stopping=True, returncode=segv) is None
    assert should_retry("off", safe_mode=False, state="loading", stopping=False, returncode=segv) is None
    kill = -signal.SIGKILL
    assert should_retry("auto", safe_mode=False, state="loading", stopping=False, returncode=kill) is None


def test_no_record_reads_without_computing_the_build_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A hive reads the store before its worker starts: the key costs ~50 ms of metadata.
    from rbee_fabric.hive import safemode

    monkeypatch.setattr(safemode, "build_key", lambda: pytest.fail("build key computed"))
    assert SafeModeStore(tmp_path).get() is None
