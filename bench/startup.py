"""Start-up figures: what a user waits for before the first word, rbee against bare.

    python bench/bench.py --startup            # only these figures (about 2 minutes)

- warm: `rbee infer` as a whole new process (process start to its first byte on
  stdout, worker already loaded), on the lean path and with RBEE_FAST_PATH=0
  (the full typer path), against bare llama-cpp-python's time to first token
  in a process that has the model loaded;
- cold: no hive running, model in the catalog, against a new bare Python
  process (import llama_cpp, load, first token); with the phases of rbee's
  cold start, each from the moment the `rbee infer` process was spawned:
  keeper start (it said it starts the hive), hive ready (the hive's log line
  "listening on"), worker ready (the worker's "listening on"), model loaded
  ("model loaded"), first token (first byte on stdout);
- `rbee --help` wall time; decode speed after the first token, rbee (--json)
  against bare, and their ratio. The warm and decode runs alternate: one rbee
  round, then one bare request, reps times.

The package's bytecode is compiled first, as `pip install .` does (compile_package).
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

PHASES = ("keeper start", "hive ready", "worker ready", "model loaded", "first token")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _stamp(line: str) -> float | None:
    m = _STAMP.match(line)
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _last(path: Path, needle: str, after: float) -> float | None:
    """The time of the last log line holding needle, written after `after` (epoch s)."""
    found = None
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if needle in line and (t := _stamp(line)) is not None and t >= after - 0.01:
            found = t
    return found


def cold_phases(env: Any, args: list[str]) -> dict[str, float]:
    """One cold `rbee infer` (no hive running); seconds from spawn to each phase."""
    t_wall = time.time()
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "rbee_fabric.cli", *args], env=env.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert p.stdout is not None and p.stderr is not None
    keeper = None
    # The keeper's note comes before any token: read stderr lines until it.
    for raw in p.stderr:
        if b"starting it" in raw:
            keeper = time.perf_counter() - t0
            break
    first = p.stdout.read(1)
    t_first = time.perf_counter() - t0
    _rest, err = p.communicate(timeout=300)
    if p.returncode != 0 or not first:
        raise RuntimeError(f"rbee {' '.join(args)} failed: {err.decode()[-500:]}")
    logs = Path(env.env["RBEE_DATA_DIR"]) / "logs"
    hive = _last(logs / "hive.log", "listening on", t_wall)
    worker_log = max(logs.glob("worker-*.log"), key=lambda f: f.stat().st_mtime)
    worker = _last(worker_log, "listening on", t_wall)
    loaded = _last(worker_log, "model loaded", t_wall)
    rel = {k: (v - t_wall if v is not None else float("nan"))
           for k, v in (("hive ready", hive), ("worker ready", worker), ("model loaded", loaded))}  # fmt: skip
    return {"keeper start": keeper if keeper is not None else float("nan"), **rel,
            "first token": t_first}  # fmt: skip


def compile_package() -> None:
    """The package's bytecode, as `pip install .` leaves it (llama_cpp, the bare side,
    has its own): an editable checkout under PYTHONDONTWRITEBYTECODE=1 would
    compile every rbee module again in every process it starts."""
    import compileall

    import rbee_fabric

    compileall.compile_dir(str(Path(rbee_fabric.__file__).parent), quiet=1)


def help_time(reps: int) -> tuple[float, float]:
    times, py = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rbee_fabric.cli", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], capture_output=True, check=True)
        py.append(time.perf_counter() - t0)
    return statistics.median(times), statistics.median(py)


def run_startup(reps: int, gemma: str, env_cls: Any, bare_process: Any, bare_in_process: Any,
                args: list[str]) -> dict[str, Any]:  # fmt: skip
    """All start-up figures in one run; medians of reps."""
    compile_package()
    env = env_cls()
    out: dict[str, Any] = {}
    try:
        env.rbee(*args)  # registers the model in the catalog
        env.stop()
        phases: dict[str, list[float]] = {k: [] for k in PHASES}
        bare_cold = []
        for _ in range(reps):
            bare_cold.append(bare_process(gemma, "cold"))
            for k, v in cold_phases(env, args).items():
                phases[k].append(v)
            env.stop()
        out["phases"] = {k: statistics.median(v) for k, v in phases.items()}
        out["cold"] = {"rbee": out["phases"]["first token"], "bare": statistics.median(bare_cold)}

        env.rbee(*args)  # a warm worker
        # Bare runs in this process, one after each rbee round: the same moments.
        bare = bare_in_process(gemma)
        lean, full, tps, bare_ttft, bare_tps = [], [], [], [], []
        try:
            for _ in range(reps):
                lean.append(env.first_byte(*args)[0])
                saved = env.env.get("RBEE_FAST_PATH")
                env.env["RBEE_FAST_PATH"] = "0"
                full.append(env.first_byte(*args)[0])
                env.env.pop("RBEE_FAST_PATH") if saved is None else env.env.update(RBEE_FAST_PATH=saved)
                tps.append(json.loads(env.rbee(*args, "--json").stdout)["tokens_per_second"])
                ttft, speed = next(bare)
                bare_ttft.append(ttft)
                bare_tps.append(speed)
        finally:
            bare.close()
        env.stop()
    finally:
        env.stop()
    out["warm"] = {"rbee": statistics.median(lean), "full": statistics.median(full),
                   "bare": statistics.median(bare_ttft)}  # fmt: skip
    out["decode"] = {"rbee": statistics.median(tps), "bare": statistics.median(bare_tps)}
    out["help"] = dict(zip(("rbee", "bare"), help_time(max(reps, 5)), strict=True))
    return out


def startup_markdown(r: dict[str, Any]) -> list[str]:
    w, c, d, h = r["warm"], r["cold"], r["decode"], r["help"]
    ratio = d["rbee"] / d["bare"] if d["bare"] else float("nan")

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = [
        "| measure | rbee | bare llama-cpp-python | added | target | verdict |",
        "|---|---|---|---|---|---|",
        f"| warm time to first token, `rbee infer` as a new process | {w['rbee']:.3f} s "
        f"(full typer path: {w['full']:.3f} s) | {w['bare']:.3f} s (in process) | "
        f"{(w['rbee'] - w['bare']) * 1000:+.0f} ms | ≤ +150 ms | {verdict(w['rbee'] - w['bare'] <= 0.150)} |",
        f"| cold start to first token (no hive, model in catalog) | {c['rbee']:.2f} s | "
        f"{c['bare']:.2f} s (new process) | {c['rbee'] - c['bare']:+.2f} s | ≤ +1.0 s | "
        f"{verdict(c['rbee'] - c['bare'] <= 1.0)} |",
        f"| decode speed after the first token | {d['rbee']:.1f} tok/s | {d['bare']:.1f} tok/s | "
        f"ratio {ratio:.3f} | ≥ 0.99 | {verdict(ratio >= 0.99)} |",
        f"| `rbee --help` | {h['rbee']:.3f} s | `python -c pass` {h['bare']:.3f} s | | ≤ 0.2 s | "
        f"{verdict(h['rbee'] <= 0.2)} |",
        "", "Cold start, phases (seconds from spawning `rbee infer`, median):", "",
        "| " + " | ".join(PHASES) + " |", "|" + "---|" * len(PHASES),
        "| " + " | ".join(f"{r['phases'][k]:.2f}" for k in PHASES) + " |",
    ]  # fmt: skip
    return lines
