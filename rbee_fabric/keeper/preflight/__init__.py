"""`rbee nodes check`: every problem the other commands would hit, per node, with its fix.

- facts.py: each fact a command (argv) plus a pure parser (parsers.py);
  probe.py is the stdlib-only program whose source runs on the node.
- verdicts.py: pass/warn/fail with the hive's and keeper's own rules.
- node.py: one node's flow; run.py: the fan-out (task group, per-node
  timeout and catch-all); adapter.py: the one link to the transports.
"""

from __future__ import annotations

from rbee_fabric.keeper.preflight.report import Check, NodeReport, Status
from rbee_fabric.keeper.preflight.run import NODE_TIMEOUT_S, check_nodes

__all__ = ["NODE_TIMEOUT_S", "Check", "NodeReport", "Status", "check_nodes"]
