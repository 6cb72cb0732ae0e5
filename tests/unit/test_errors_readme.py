"""The README's "Exit codes" and "Troubleshooting" tables say what errors.py does, for every code."""

from __future__ import annotations

import re
from pathlib import Path

from rbee_fabric import errors

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
CODES = {cls.code: cls for cls in errors.ALL_ERRORS}


def _section(title: str) -> str:
    start = README.index(title)
    rest = README[start + len(title) :]
    end = re.search(r"^#{2,3} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def _rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header


def _codes(text: str) -> set[str]:
    return set(re.findall(r"`([A-Z][A-Z_]{3,})`", text))


def test_the_troubleshooting_table_has_a_row_for_every_code_and_no_other() -> None:
    rows = _rows(_section("## Troubleshooting"))
    listed = set().union(*(_codes(r[0]) for r in rows))
    assert listed == set(CODES), (
        f"missing from the README: {sorted(set(CODES) - listed)}; not in errors.py: {sorted(listed - set(CODES))}"
    )
    for row in rows:
        assert len(row) == 3 and row[1] and row[2], f"row without what happened or what to do: {row}"


def test_the_troubleshooting_table_names_every_usage_error_exit_2() -> None:
    for code, what, _fix in _rows(_section("## Troubleshooting")):
        for c in _codes(code):
            says_2 = "(exit 2)" in what
            assert says_2 == (CODES[c].exit_code == errors.EXIT_USAGE), (
                f"{c}: exit code {CODES[c].exit_code}, but the README {'says' if says_2 else 'does not say'} (exit 2)"
            )


def test_the_exit_code_table_matches_every_class() -> None:
    rows = {r[0]: r[1] for r in _rows(_section("### Exit codes"))}
    assert set(rows) == {"0", "1", "2", "130"}
    by_exit: dict[int, set[str]] = {}
    for code, cls in CODES.items():
        by_exit.setdefault(cls.exit_code, set()).add(code)
    assert _codes(rows["2"]) == by_exit[errors.EXIT_USAGE]
    assert _codes(rows["130"]) == by_exit[errors.EXIT_CANCELED] == {"REQUEST_CANCELED"}
    assert _codes(rows["1"]) <= by_exit[errors.EXIT_RUNTIME]
    assert "MODEL_NOT_FOUND" in _codes(rows["1"]) and "malformed model reference" in rows["2"]
