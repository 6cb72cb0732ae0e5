"""What `rbee serve` costs and what two nodes buy, side by side in one run.

    python bench/serve_bench.py              # gateway vs straight to the worker (gemma3-270m)
    python bench/serve_bench.py --lab        # also 8 clients over two lab nodes vs one
                                             # (lab up, root; take /tmp/rbee-lab.lock)

Part 1 sends the same raw completion (prompt, seed, temperature 0) to the
same warm worker, alternately straight to it (POST /v1/inference) and through
the gateway (POST /v1/completions, streamed), and compares time to first
token and decode tokens/s (medians). Part 2 sends 8 concurrent streamed
completions through the gateway, all pinned to labnode1, then unpinned over
labnode1 and labnode2 (both warm), and compares wall time and throughput.
Results: bench/results/serve.md and bench/results/serve.png.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import free_port, machine  # noqa: E402  (bench/bench.py, this script's neighbour)

PROMPT = "Write a short story about a bee who learns to fly:"
MAX_TOKENS = 64
KEY = "bench-gateway-key-0123456789abcdef"
MODEL = "gemma3-270m"


class Home:
    """A private rbee home and a running `rbee serve` in it."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rbee-serve-bench-"))
        atexit.register(shutil.rmtree, self.dir, True)  # after `rbee serve` and its hive stopped
        self.hive_port = free_port()
        inv = self.dir / "hosts.toml"
        inv.write_text(f'[nodes.localhost]\nhostname = "127.0.0.1"\nlocal = true\nhive_port = {self.hive_port}\n')
        self.env = {**os.environ, "RBEE_DATA_DIR": str(self.dir / "data"),
                    "RBEE_CONFIG_DIR": str(self.dir / "config"), "RBEE_INVENTORY": str(inv),
                    "RBEE_SERVE_API_KEY": KEY, **(extra_env or {})}  # fmt: skip
        self.port = free_port()
        self.log = open(self.dir / "serve.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rbee_fabric.cli", "serve", "--port", str(self.port)],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        self.http = httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=600)

    def rbee(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rbee_fabric.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    def stop(self, nodes: tuple[str, ...] = ("localhost",)) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        for n in nodes:
            self.rbee("hive", "stop", n)


def timed_stream(client: httpx.Client, url: str, body: dict[str, object], token_of: str) -> tuple[float, float, int]:
    """(TTFT s, decode tokens/s, tokens) of one streamed request."""
    if token_of == "worker":  # it frees its slot a moment after its last event
        while client.get("/v1/ready").json()["state"] != "idle":
            time.sleep(0.01)
    t0 = time.perf_counter()
    first = last = None
    n = 0
    with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            text = ev.get("token") if token_of == "worker" else (ev.get("choices") or [{}])[0].get("text")
            if text:
                now = time.perf_counter()
                first = first or now
                last = now
                n += 1
    assert first is not None and last is not None
    return first - t0, (n - 1) / (last - first) if last > first else 0.0, n


def part1(reps: int) -> dict[str, dict[str, float]]:
    h = Home()
    try:
        gw_body = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "seed": 7, "stream": True}
        timed_stream(h.http, f"{h.url}/v1/completions", gw_body, "gateway")  # spawns the worker
        hive_key = (h.dir / "config" / "api_key").read_text().strip()
        workers = httpx.get(f"http://127.0.0.1:{h.hive_port}/v1/workers",
                            headers={"Authorization": f"Bearer {hive_key}"}).json()["workers"]  # fmt: skip
        worker = httpx.Client(base_url=workers[0]["url"], headers={"Authorization": f"Bearer {hive_key}"}, timeout=600)
        direct_body = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "seed": 7}
        d_ttft, d_tps, g_ttft, g_tps = [], [], [], []
        for i in range(reps):
            order = ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")  # ABBA: drift cancels
            for which in order:
                if which == "direct":
                    a, b, _n = timed_stream(worker, "/v1/inference", direct_body, "worker")
                    d_ttft.append(a)
                    d_tps.append(b)
                else:
                    a, b, _n = timed_stream(h.http, f"{h.url}/v1/completions", gw_body, "gateway")
                    g_ttft.append(a)
                    g_tps.append(b)
        return {
            "TTFT (ms)": {"direct": statistics.median(d_ttft) * 1000, "gateway": statistics.median(g_ttft) * 1000},
            "decode (tokens/s)": {"direct": statistics.median(d_tps), "gateway": statistics.median(g_tps)},
        }
    finally:
        h.stop()


def eight_clients(h: Home, model: str) -> tuple[float, float, list[str]]:
    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "seed": 7, "stream": True}

    def one(_: int) -> tuple[int, str]:
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as c:
            r = c.post(f"{h.url}/v1/completions", json={**body, "stream": False})
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"]), r.headers["x-rbee-node"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    wall = time.perf_counter() - t0
    return wall, sum(n for n, _ in results) / wall, [node for _, node in results]


def part2(reps: int) -> dict[str, dict[str, float]]:
    from tests.lab import lab

    lab.up(2)
    h = Home(lab.env())
    h.env["RBEE_WHEELHOUSE_DIR"] = str(h.dir / "wheelhouse")
    try:
        for n in ("labnode1", "labnode2"):
            r = h.rbee("nodes", "install", n)
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
        for n in ("labnode1", "labnode2"):  # warm a worker on each
            h.http.post(f"{h.url}/v1/completions", json={"model": f"{n}/{MODEL}", "prompt": "x", "max_tokens": 2}).raise_for_status()
        one_wall, one_tps, two_wall, two_tps = [], [], [], []
        spread: list[str] = []
        for _ in range(reps):
            w, t, _nodes = eight_clients(h, f"labnode1/{MODEL}")
            one_wall.append(w)
            one_tps.append(t)
            w, t, nodes = eight_clients(h, MODEL)
            two_wall.append(w)
            two_tps.append(t)
            spread = nodes
        print("unpinned requests went to:", {n: spread.count(n) for n in set(spread)})
        return {
            "8 clients: wall time (s)": {"one node": statistics.median(one_wall), "two nodes": statistics.median(two_wall)},
            "8 clients: tokens/s overall": {"one node": statistics.median(one_tps), "two nodes": statistics.median(two_tps)},
        }
    finally:
        h.stop(("labnode1", "labnode2", "localhost"))
        lab.down()


def write(p1: dict[str, dict[str, float]], p2: dict[str, dict[str, float]], reps: int) -> None:
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# rbee serve benchmark ({MODEL}, {MAX_TOKENS} tokens, median of {reps})", "", f"Machine: {machine()}", ""]
    lines += ["| measure | straight to the worker | through rbee serve | difference | target |", "|---|---|---|---|---|"]
    t, d = p1["TTFT (ms)"], p1["decode (tokens/s)"]
    added = t["gateway"] - t["direct"]
    ratio = d["gateway"] / d["direct"]
    lines.append(f"| time to first token | {t['direct']:.1f} ms | {t['gateway']:.1f} ms | {added:+.1f} ms | <= +15 ms: {'met' if added <= 15 else 'MISSED'} |")
    lines.append(f"| decode | {d['direct']:.1f} tok/s | {d['gateway']:.1f} tok/s | ratio {ratio:.3f} | >= 0.99: {'met' if ratio >= 0.99 else 'MISSED'} |")
    if p2:
        w, s = p2["8 clients: wall time (s)"], p2["8 clients: tokens/s overall"]
        lines += ["", "| 8 concurrent clients | labnode1 alone | labnode1 + labnode2 | speed-up |", "|---|---|---|---|"]
        lines.append(f"| wall time | {w['one node']:.2f} s | {w['two nodes']:.2f} s | x{w['one node'] / w['two nodes']:.2f} |")
        lines.append(f"| tokens/s overall | {s['one node']:.1f} | {s['two nodes']:.1f} | x{s['two nodes'] / s['one node']:.2f} |")
    (out / "serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    panels = [("TTFT (ms)", p1["TTFT (ms)"]), ("decode tok/s", p1["decode (tokens/s)"])]
    if p2:
        panels.append(("8 clients tok/s", p2["8 clients: tokens/s overall"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (title, vals) in zip(axes, panels, strict=True):
        ax.bar(list(vals), list(vals.values()), color=["#888", "#e8a317"])
        ax.set_title(title)
    fig.suptitle(f"rbee serve, {MODEL}")
    fig.tight_layout()
    fig.savefig(out / "serve.png", dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--lab", action="store_true")
    a = ap.parse_args()
    p1 = part1(a.reps)
    p2 = part2(max(1, a.reps // 5)) if a.lab else {}
    write(p1, p2, a.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
