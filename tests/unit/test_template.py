"""The worker template's command-line rewriting: the fullest title that fits, else none."""

from __future__ import annotations

import sys

from rbee_fabric.hive.template import _packed, worker_title

ARGV = ["--worker-id", "w-0123456789", "--model", "/models/m.gguf", "--port", "9300"]


def test_the_whole_command_line_when_it_fits() -> None:
    assert worker_title(ARGV, 4096) == [sys.executable, "-m", "rbee_fabric.worker", *ARGV]


def test_shorter_titles_keep_what_pidfile_is_worker_reads() -> None:
    short = ["-m", "rbee_fabric.worker", "--worker-id", "w-0123456789"]
    title = worker_title(ARGV, len(_packed(short)))
    assert title == short
    assert worker_title(ARGV, len(_packed(short)) - 1) is None  # the hive starts it the old way
