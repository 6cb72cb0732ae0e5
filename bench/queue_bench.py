"""Every request served: N concurrent `rbee infer` on real Gemma, against the ideal.

    python bench/queue_bench.py                      # localhost, replicas 1 and 2
    python bench/queue_bench.py --lab                # also labnode1 over SSH (lab lock held, root)
    python bench/queue_bench.py --replicas '' --lab --append   # only the lab rows, added
    python bench/queue_bench.py --levels 1,2,4 --max-tokens 16

For 1, 2, 4, 8 and 16 clients started at once (each a new `rbee infer`
process, as users run it): completed requests, throughput (completed / wall
time of the batch) and p50/p95 latency (process start to exit). The ideal is
one worker serving the same requests back to back with no overhead between
them: request k ends at `overhead + k * generation`, where both are measured
alone on the warm worker in the same run. Results: bench/results/queue.md
and bench/results/queue.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench import Env, machine, median, p95  # noqa: E402

PROMPT = "Write one sentence about bees:"
LEVELS = (1, 2, 4, 8, 16)


def configure(env: Env, replicas: int) -> None:
    """The localhost node of env's inventory gets max_replicas."""
    inv = Path(env.env["RBEE_INVENTORY"])
    inv.write_text(inv.read_text() + f"max_replicas = {replicas}\n")


def client(env: Env, args: list[str]) -> tuple[float, bool, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "rbee_fabric.cli", *args], env=env.env,
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    return time.perf_counter() - t0, r.returncode == 0, r.stderr[-300:]


def run(env: Env, node: str, max_tokens: int, levels: list[int], label: str) -> list[dict[str, object]]:
    args = ["infer", "--node", node, "--model", "gemma3-270m", "--prompt", PROMPT,
            "--max-tokens", str(max_tokens), "--temperature", "0", "--json"]  # fmt: skip
    warm = client(env, args)
    if not warm[1]:
        raise RuntimeError(f"warm-up failed: {warm[2]}")
    # Alone on the warm worker: overhead (process, connect) and generation.
    walls, gens = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "rbee_fabric.cli", *args], env=env.env,
                           capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
        walls.append(time.perf_counter() - t0)
        gens.append(json.loads(r.stdout)["seconds"])
    gen, over = median(gens), max(0.0, median(walls) - median(gens))
    rows: list[dict[str, object]] = []
    for n in levels:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda _: client(env, args), range(n)))
        elapsed = time.perf_counter() - t0
        lat = [t for t, ok, _ in results if ok]
        errors = [e for _, ok, e in results if not ok]
        ideal = [over + k * gen for k in range(1, n + 1)]
        rows.append({
            "setup": label, "clients": n, "completed": len(lat), "errors": len(errors),
            "throughput": len(lat) / elapsed, "p50": median(lat) if lat else float("nan"),
            "p95": p95(lat) if lat else float("nan"), "ideal_throughput": n / ideal[-1],
            "ideal_p50": median(ideal), "ideal_p95": p95(ideal), "gen_s": gen, "overhead_s": over,
            "first_error": errors[0].strip().splitlines()[-1] if errors else "",
        })  # fmt: skip
        print(f"{label} n={n}: {len(lat)}/{n} in {elapsed:.1f} s", file=sys.stderr)
    return rows


def burst(env: Env, n: int) -> None:
    """N `rbee infer --node labnode1 --model gemma3-270m --max-tokens 8` at once, as the issue ran them."""
    args = ["infer", "--node", "labnode1", "--model", "gemma3-270m", "--prompt", PROMPT, "--max-tokens", "8"]
    client(env, args)  # warm
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda _: client(env, args), range(n)))
    ok = sum(1 for _, good, _ in results if good)
    print(f"burst: {ok}/{n} completed in {time.perf_counter() - t0:.1f} s over SSH", file=sys.stderr)
    for _, good, err in results:
        if not good:
            print(f"  failed: {err.strip().splitlines()[-1] if err.strip() else '?'}", file=sys.stderr)


def write(rows: list[dict[str, object]], max_tokens: int) -> Path:
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Concurrent requests on one node (issue 13)", "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- model: Gemma 3 270M Q4_K_M, prompt {PROMPT!r}, max_tokens {max_tokens}, temperature 0",
        "- each client is a new `rbee infer` process; latency = process start to exit",
        "- ideal = one worker back to back: request k ends at overhead + k x generation "
        "(both measured alone, same run)", "",
        "| setup | clients | completed | throughput (req/s) | ideal (req/s) | p50 (s) | ideal p50 | p95 (s) | ideal p95 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['setup']} | {r['clients']} | {r['completed']}/{r['clients']} | {r['throughput']:.2f} | "
            f"{r['ideal_throughput']:.2f} | {r['p50']:.2f} | {r['ideal_p50']:.2f} | {r['p95']:.2f} | "
            f"{r['ideal_p95']:.2f} |"
        )
    setups = sorted({str(r["setup"]) for r in rows})
    for s in setups:
        one = next(r for r in rows if r["setup"] == s)
        lines.append("")
        lines.append(f"- {s}: generation alone {one['gen_s']:.2f} s, overhead alone {one['overhead_s']:.2f} s")
    errs = [r for r in rows if r["errors"]]
    for r in errs:
        lines.append(f"- {r['setup']} n={r['clients']}: {r['errors']} failed, e.g. {r['first_error']}")
    md = out / "queue.md"
    md.write_text("\n".join(lines) + "\n")
    (out / "queue.json").write_text(json.dumps(rows, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for i, s in enumerate(setups):
            rs = [r for r in rows if r["setup"] == s]
            xs = [r["clients"] for r in rs]
            color = f"C{i}"
            axes[0].plot(xs, [r["throughput"] for r in rs], "o-", color=color, label=s)
            axes[0].plot(xs, [r["ideal_throughput"] for r in rs], ":", color=color,
                         label=f"{s}: ideal (one worker back to back)")  # fmt: skip
            axes[1].plot(xs, [r["p95"] for r in rs], "o-", color=color, label=f"{s} p95")
            axes[1].plot(xs, [r["ideal_p95"] for r in rs], ":", color=color, label=f"{s} ideal p95")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent rbee infer clients")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("completed requests / s")
        axes[1].set_ylabel("latency (s)")
        axes[0].set_title("throughput")
        axes[1].set_title("latency")
        fig.tight_layout()
        fig.savefig(out / "queue.png", dpi=100)
    except ImportError:
        print("matplotlib not installed: no chart (pip install '.[bench]')", file=sys.stderr)
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument("--lab", action="store_true", help="also labnode1 over SSH (hold the lab lock)")
    ap.add_argument("--burst", type=int, default=0, help="on the lab node, first N clients at once (8 tokens)")
    ap.add_argument("--append", action="store_true", help="keep the rows of results/queue.json")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    rows: list[dict[str, object]] = []
    if a.append:
        rows = json.loads((ROOT / "bench" / "results" / "queue.json").read_text())
    for replicas in [int(x) for x in a.replicas.split(",") if x]:
        env = Env()
        configure(env, replicas)
        try:
            rows += run(env, "localhost", a.max_tokens, levels, f"localhost, max_replicas {replicas}")
        finally:
            env.stop()
    if a.lab:
        from tests.lab import lab

        lab.up(1, fresh=True)  # no hive or worker left from an earlier run
        env = Env()
        env.env.update(lab.env())
        env.env["RBEE_WHEELHOUSE_DIR"] = str(env.dir / "wheelhouse")
        try:
            r = env.rbee("nodes", "install", "labnode1", timeout=900)  # this very code, on a fresh node
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
            if a.burst:
                burst(env, a.burst)
            rows += run(env, "labnode1", a.max_tokens, levels, "labnode1 over SSH, max_replicas 1")
        finally:
            env.rbee("hive", "stop", "labnode1")
            lab.down()
    print(write(rows, a.max_tokens).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
