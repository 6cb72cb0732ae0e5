"""Messages met on a first walk through the README: each says what to do, with the real names."""

from __future__ import annotations

from tests.conftest import RbeeHome


def test_shutting_down_an_unknown_worker_names_it_in_the_suggestion(rbee_home: RbeeHome) -> None:
    rbee_home.local_node()
    r = rbee_home.run("workers", "shutdown", "--id", "w-nosuch")
    assert r.returncode == 1
    assert "WORKER_NOT_FOUND" in r.stderr
    suggestion = " ".join(r.stderr[r.stderr.index("Suggestion:"):].split())
    assert "rbee workers list" in suggestion
    assert "rbee workers shutdown --id w-nosuch --node NODE" in suggestion  # the id it was given
