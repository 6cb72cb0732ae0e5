"""Remote facts are a command plus a pure parser: the parsers, from captured output."""

from rbee_fabric.keeper.bootstrap import parse_ls_sizes, parse_probe
from rbee_fabric.keeper.transport.hive import parse_ps

PS = """  812 /home/rbeelab1/.local/share/rbee/venv/bin/python -m rbee_fabric.hive --host 127.0.0.1 --port 9201
  901 /usr/bin/vim notes.txt
"""

LS = """total 287012
-rw-r--r-- 1 rbeelab1 rbeelab1 24442078 Nov 24 09:00 llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl
-rw-r--r-- 1 rbeelab1 rbeelab1    40281 Nov 24 09:00 rbee_fabric-0.1.0-py3-none-any.whl
"""


def test_parse_python_probe() -> None:
    facts = parse_probe("3.11.2 Linux x86_64 venv,ensurepip\n")
    assert facts.version == (3, 11, 2) and facts.machine == "x86_64" and facts.has_venv
    assert not parse_probe("3.11.2 Linux x86_64 venv\n").has_venv  # no ensurepip: venv cannot bootstrap pip
    assert not parse_probe("3.12.1 Darwin arm64\n").has_venv


def test_parse_ps_keeps_only_our_programs() -> None:
    assert parse_ps(PS) == [812]
    assert parse_ps("") == []


def test_parse_ls_sizes() -> None:
    sizes = parse_ls_sizes(LS)
    assert sizes["rbee_fabric-0.1.0-py3-none-any.whl"] == 40281
    assert len(sizes) == 2
