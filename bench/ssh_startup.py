"""Start-up over SSH: labnode1 of the lab against this machine and bare, one run.

    python bench/bench.py --ssh          # root, openssh-server (brings up lab node 1)

- warm: `rbee infer --node labnode1` as a new process (spawn to its first byte
  on stdout, worker loaded) through the node's kept SSH connection
  (keeper/link.py), and with RBEE_SSH_KEEP_S=0 (a new connection, the full
  path), against the same on this machine and bare llama-cpp-python's time to
  first token in a process that has the model loaded;
- cold: the node's hive stopped, model in its catalog, against the same on
  this machine and a new bare Python process.

Rounds alternate (this machine, the node through its link, without it, bare)
so that all see the same moments of a noisy VM.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

NODE = "labnode1"


def run_ssh_startup(reps: int, gemma: str, env_cls: Any, bare_process: Any, bare_in_process: Any,
                    args: list[str]) -> dict[str, dict[str, float]]:  # fmt: skip
    from startup import compile_package

    from tests.lab import lab

    compile_package()
    was_up = bool(lab.read_state().get("nodes"))
    lab.up(1)
    here, node = env_cls(), env_cls()
    node.env.update(lab.env())
    node.env["RBEE_WHEELHOUSE_DIR"] = str(node.dir / "wheelhouse")
    remote = [*args, "--node", NODE]
    rows: dict[str, list[float]] = {k: [] for k in (
        "warm here", "warm link", "warm no link", "warm bare", "cold here", "cold node", "cold bare")}  # fmt: skip
    try:
        r = node.rbee("nodes", "install", NODE, "--force", timeout=900)  # this checkout's code
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        for env, a in ((here, args), (node, remote)):
            env.rbee(*a)  # the model in each catalog
        for _ in range(reps):
            node.rbee("hive", "stop", NODE)
            rows["cold node"].append(node.first_byte(*remote)[0])
            time.sleep(3)  # the link it leaves connects in the background: not during the next figure
            here.stop()
            rows["cold here"].append(here.first_byte(*args)[0])
            rows["cold bare"].append(bare_process(gemma, "cold"))
        bare = bare_in_process(gemma)
        try:
            for _ in range(reps):
                rows["warm here"].append(here.first_byte(*args)[0])
                rows["warm link"].append(node.first_byte(*remote)[0])
                node.env["RBEE_SSH_KEEP_S"] = "0"
                rows["warm no link"].append(node.first_byte(*remote)[0])
                del node.env["RBEE_SSH_KEEP_S"]
                rows["warm bare"].append(next(bare)[0])
        finally:
            bare.close()
    finally:
        node.rbee("hive", "stop", NODE)
        here.stop()
        if not was_up:
            lab.down()  # the lab as it was: nothing left running
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in rows.items()}


def ssh_markdown(r: dict[str, dict[str, float]]) -> list[str]:
    def cell(k: str) -> str:
        return f"{r[k]['median']:.3f} s ({r[k]['min']:.3f}-{r[k]['max']:.3f})"

    def added(k: str, base: str) -> str:
        return f"{(r[k]['median'] - r[base]['median']) * 1000:+.0f} ms"

    return [
        "| measure | median (min-max) | added to bare | added to this machine |", "|---|---|---|---|",
        f"| warm, bare llama-cpp-python (in process) | {cell('warm bare')} | | |",
        f"| warm, `rbee infer` on this machine | {cell('warm here')} | {added('warm here', 'warm bare')} | |",
        f"| warm, `rbee infer` on {NODE}, through its kept connection | {cell('warm link')} | "
        f"{added('warm link', 'warm bare')} | {added('warm link', 'warm here')} |",
        f"| warm, `rbee infer` on {NODE}, RBEE_SSH_KEEP_S=0 (new connection) | {cell('warm no link')} | "
        f"{added('warm no link', 'warm bare')} | {added('warm no link', 'warm here')} |",
        f"| cold, bare (new process: import, load, first token) | {cell('cold bare')} | | |",
        f"| cold, `rbee infer` on this machine (no hive) | {cell('cold here')} | {added('cold here', 'cold bare')} | |",
        f"| cold, `rbee infer` on {NODE} (hive stopped) | {cell('cold node')} | "
        f"{added('cold node', 'cold bare')} | {added('cold node', 'cold here')} |",
    ]  # fmt: skip
