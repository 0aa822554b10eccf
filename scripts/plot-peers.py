#!/usr/bin/env python3
"""Plot "Herald and its peers" (scripts/peers.sh) from its result files.

    scripts/plot-peers.py [RESULTS_DIR [OUT_DIR]]

Reads RESULTS_DIR/peers-<scenario>.json (default bench-results/) and writes
one PNG per scenario found into OUT_DIR (default docs/):

  peers-idle.png     RSS per idle subscribed connection
  peers-fanout.png   fan-out frames/s, closed loop
  peers-latency.png  end-to-end latency percentiles at a fixed rate
  peers-storm.png    subscribed connections per second
  peers-jitter.png   replay latency of resuming clients, delivery rate

Every bar is labelled with its value and the server's CPU (cores) where the
scenario measured it. matplotlib comes from the same virtualenv as
scripts/plot-bench.py (~/.cache/herald-bench-venv).
"""

import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["Herald", "AnyCable", "Centrifugo", "RabbitMQ Web-STOMP", "Rails ActionCable"]
COLOURS = {
    "Herald": "#d62728",
    "AnyCable": "#1f77b4",
    "Centrifugo": "#2ca02c",
    "RabbitMQ Web-STOMP": "#ff7f0e",
    "Rails ActionCable": "#9467bd",
}


def plot_bench():
    spec = importlib.util.spec_from_file_location("plot_bench", os.path.join(HERE, "plot-bench.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load(results_dir, scenario):
    path = os.path.join(results_dir, f"peers-{scenario}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        doc = json.load(f)
    results = doc["results"]["scenarios"].get(scenario, {})
    systems = [s for s in ORDER if s in results and "error" not in results[s]]
    return doc, {s: results[s] for s in systems}


def cores(r, key="cpu"):
    try:
        return r[key]["server"]["cores"]
    except (KeyError, TypeError):
        return None


def label(name, r):
    n, sub = r.get("connections"), r.get("connections_subscribed")
    return f"{name}\n{sub:,} / {n:,}" if n and sub is not None else name


def subtitle(doc):
    m = doc.get("machine", {})
    cpu = m.get("cpu_model") or m.get("cpu") or ""
    return f"{doc.get('finished_at', '')[:16]} · {cpu}".strip(" ·")


def bars(plt, doc, data, title, value, fmt, ylabel, path, log=False, cpu_key="cpu"):
    names = list(data)
    vals = [value(data[n]) for n in names]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    b = ax.bar([label(n, data[n]) for n in names], vals, color=[COLOURS[n] for n in names])
    for rect, n, v in zip(b, names, vals):
        c = cores(data[n], cpu_key)
        text = fmt(v) + (f"\nserver {c:.2f} cores" if c is not None else "")
        ax.annotate(text, (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                    ha="center", va="bottom", fontsize=9, xytext=(0, 3), textcoords="offset points")
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n{subtitle(doc)}", fontsize=11)
    ax.margins(y=0.2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def grouped(plt, doc, data, title, series, ylabel, path, notes=None):
    """`series`: [(legend, function of a result -> ms)]."""
    import numpy as np

    names = list(data)
    x = np.arange(len(names))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for i, (legend, fn) in enumerate(series):
        vals = [fn(data[n]) for n in names]
        b = ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=legend)
        for rect, v in zip(b, vals):
            ax.annotate(f"{v:.0f}" if v >= 10 else f"{v:.1f}",
                        (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ticks = []
    for n in names:
        t = label(n, data[n])
        if notes:
            t += "\n" + notes(data[n])
        ticks.append(t)
    ax.set_xticks(x, ticks, fontsize=9)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n{subtitle(doc)}", fontsize=11)
    ax.legend(fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    plot_bench().ensure_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "bench-results")
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "docs")
    written = []

    def out(name):
        return os.path.join(out_dir, f"peers-{name}.png")

    if (got := load(results_dir, "idle")):
        doc, d = got
        written.append(bars(plt, doc, d, "Memory per idle subscribed connection (lower is better)",
                            lambda r: r["rss_per_connection_bytes"] / 1024, lambda v: f"{v:.1f} KiB",
                            "RSS per connection, KiB", out("idle"), cpu_key="idle_cpu"))
    if (got := load(results_dir, "fanout")):
        doc, d = got
        written.append(bars(plt, doc, d, "Fan-out, closed loop (higher is better)",
                            lambda r: r["frames_per_second"], lambda v: f"{v:,.0f} frames/s",
                            "frames/s (log)", out("fanout"), log=True))
    if (got := load(results_dir, "latency")):
        doc, d = got
        pct = [("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms"), ("max", "max_ms")]
        rate = doc["results"]["params"].get("rate")
        written.append(grouped(plt, doc, d, f"End-to-end latency at {rate:g} events/s, native publish path → client (lower is better)",
                               [(p, lambda r, k=k: r["latency"][k]) for p, k in pct], "ms (log)", out("latency"),
                               notes=lambda r: f"server {cores(r):.2f} cores"))
    if (got := load(results_dir, "storm")):
        doc, d = got
        written.append(bars(plt, doc, d, "Connect storm: authenticated, subscribed connections per second (higher is better)",
                            lambda r: r["connections_per_second"], lambda v: f"{v:,.0f}/s",
                            "connections/s (log)", out("storm"), log=True))
    if (got := load(results_dir, "jitter")):
        doc, d = got
        rp = "replay_publish_to_delivery"
        rr = "replay_resubscribe_to_delivery"
        written.append(grouped(
            plt, doc, d,
            "Jitter: sockets reset every ~15 s, ~2 s offline, resume (lower is better)",
            [("replay p50 (publish → delivery)", lambda r: r["latency"][rp]["p50_ms"]),
             ("replay p99", lambda r: r["latency"][rp]["p99_ms"]),
             ("replay max", lambda r: r["latency"][rp]["max_ms"]),
             ("resubscribe → replay p99", lambda r: r["latency"][rr]["p99_ms"]),
             ("live p99", lambda r: r["latency"]["live"]["p99_ms"])],
            "ms (log)", out("jitter"),
            notes=lambda r: (f"delivery {r['fleet']['delivery_rate']['mean_percent']:.3f} %, lost {r['lost']}, dup {r['duplicated']}\n"
                             f"server {cores(r):.2f} cores")))
    for p in written:
        print(os.path.relpath(p))


if __name__ == "__main__":
    main()
