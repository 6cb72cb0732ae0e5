"""Remote facts are a command plus a pure parser: the parsers, from captured output."""

from rbee_fabric.keeper.bootstrap import parse_ls_sizes, parse_probe
from rbee_fabric.keeper.preflight import parse_df, parse_node_probe, parse_shell_facts
from rbee_fabric.keeper.transport.hive import parse_ps

DF = """Filesystem     1024-blocks      Used Available Capacity Mounted on
/dev/vda         263174212  23264356 226429868      10% /
"""

DF_WRAPPED_NAME = """Filesystem                                  1024-blocks  Used Available Capacity Mounted on
tmpfs                                             1024       0      1024       0% /mnt/small
"""

PS = """  812 /home/rbeelab1/.local/share/rbee/venv/bin/python -m rbee_fabric.hive --host 127.0.0.1 --port 9201
  901 /usr/bin/vim notes.txt
"""

LS = """total 287012
-rw-r--r-- 1 rbeelab1 rbeelab1 24442078 Nov 24 09:00 llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl
-rw-r--r-- 1 rbeelab1 rbeelab1    40281 Nov 24 09:00 rbee_fabric-0.1.0-py3-none-any.whl
"""


def test_parse_df() -> None:
    assert parse_df(DF) == 226429868 // 1024
    assert parse_df(DF_WRAPPED_NAME) == 1
    assert parse_df("df: /nope: No such file or directory\n") is None


SHELL = "MemTotal: 100 kB\nMemAvailable: 50 kB\n@@\n" + DF + "@@\n@@\nLinux x86_64\n"


def test_parse_shell_facts() -> None:
    meminfo, df, smi, uname = parse_shell_facts(SHELL)
    assert "MemAvailable" in meminfo and parse_df(df) == 226429868 // 1024
    assert smi == "" and uname == "Linux x86_64"
    assert parse_shell_facts("") == ("", "", "", "")


def test_parse_node_probe() -> None:
    out = parse_node_probe('{"hive_port_free": false, "worker_port": 9300, "version": "0.1.0"}\n')
    assert out["hive_port_free"] is False and out["worker_port"] == 9300
    assert parse_node_probe("Traceback (most recent call last):\n") == {}


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
