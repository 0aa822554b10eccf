#!/usr/bin/env python3
"""Turn herald-loadgen result files (bench-results/*.json) into PNG plots.

    scripts/plot-bench.py [RESULTS_DIR]

Writes into RESULTS_DIR (default bench-results/):
  latency.png     end-to-end latency percentiles vs publish rate (latency runs)
  memory.png      server RSS vs connections (idle runs)
  throughput.png  fan-out frames/s, gateway vs raw baseline (fanout runs)

matplotlib is installed on first use into a virtualenv under
~/.cache/herald-bench-venv, and the script re-runs itself there.
"""

import glob
import json
import os
import subprocess
import sys

VENV = os.path.expanduser("~/.cache/herald-bench-venv")


def ensure_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        sys.exit("matplotlib is missing from " + VENV)
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    probe = subprocess.run([py, "-c", "import matplotlib"], capture_output=True)
    if probe.returncode != 0:
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "matplotlib"])
    os.execv(py, [py] + sys.argv)


def load(results_dir, scenario):
    out = []
    for path in sorted(glob.glob(os.path.join(results_dir, f"{scenario}-*.json"))):
        with open(path) as f:
            out.append((os.path.basename(path), json.load(f)))
    return out


def plot_latency(plt, results_dir):
    runs = load(results_dir, "latency")
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(12, 5.5))
    for name, doc in runs:
        proto = doc["protocol"]
        conns = doc["results"]["params"]["connections"]
        params = doc["results"]["params"]
        wait = params.get("fetch_wait_ms")
        suffix = f", fetch wait {wait} ms" if wait else ""
        if params.get("gateway_realtime"):
            suffix += ", gateway real-time"
        for server, run in doc["results"]["runs"].items():
            steps = run["steps"]
            x = [s["rate_events_per_second"] for s in steps]
            quantiles = (("p50_ms", "--"), ("p99_ms", "-"), ("p999_ms", ":"))
            if server == "gateway" and name != "latency-stomp.json":
                quantiles = (("p99_ms", "-"),)
            for q, style in quantiles:
                y = [s["latency"][q] for s in steps]
                tag = suffix if server == "gateway" else ""
                ax.plot(x, y, style, marker="o", label=f"{server} {proto} {q[:-3]}{tag}")
            k = [(s["rate_events_per_second"], (s.get("kafka_only_latency") or {}).get("p99_ms")) for s in steps]
            k = [(a, b) for a, b in k if b is not None]
            if k:
                ax.plot([a for a, _ in k], [b for _, b in k], "-.", marker="x", label=f"kafka only (bare consumer) p99{suffix}")
    ax.axhline(20, color="black", linewidth=0.8, alpha=0.5, label="issue 7 target: p99 20 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"events/s published ({conns} connections, {doc['results']['params']['recipients_per_event']} recipients per event)")
    ax.set_ylabel("produce → client receipt, ms")
    ax.set_title("End-to-end latency vs load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path = os.path.join(results_dir, "latency.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_memory(plt, results_dir):
    runs = load(results_dir, "idle")
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, doc in runs:
        r = doc["results"]
        pts = r["memory_points"]
        x = [p["connections"] for p in pts]
        y = [p["rss_bytes"] / 2**20 for p in pts]
        per = r["rss_per_connection_bytes"] / 1024
        ax.plot(x, y, marker="o", label=f"{r['server']} {doc['protocol']} ({per:.1f} KiB/conn)")
    xmax = max(max(p["connections"] for p in d["results"]["memory_points"]) for _, d in runs)
    ax.plot([0, xmax], [0, xmax * 8 / 1024], "k:", label="target slope: 8 KiB/conn")
    ax.set_xlabel("idle subscribed connections")
    ax.set_ylabel("server RSS, MiB")
    ax.set_title("Memory vs connections")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    path = os.path.join(results_dir, "memory.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_throughput(plt, results_dir):
    runs = load(results_dir, "fanout")
    if not runs:
        return None
    labels, values = [], []
    for name, doc in runs:
        for server, run in doc["results"]["runs"].items():
            labels.append(f"{server}\n{doc['protocol']}")
            values.append(run["frames_per_second"] / 1e6)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(labels, values, color=["tab:blue" if l.startswith("gateway") else "tab:gray" for l in labels])
    p = runs[-1][1]["results"]["params"]
    ax.set_ylabel("delivered frames/s (millions)")
    ax.set_title(f"Fan-out throughput, {p['connections']} connections, fan-out {p['fanout']}")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.2f}M", ha="center", va="bottom")
    path = os.path.join(results_dir, "throughput.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main():
    ensure_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results_dir = sys.argv[1] if len(sys.argv) > 1 else "bench-results"
    for fn in (plot_latency, plot_memory, plot_throughput):
        path = fn(plt, results_dir)
        if path:
            print("wrote", path)


if __name__ == "__main__":
    main()
