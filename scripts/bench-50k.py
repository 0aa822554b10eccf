#!/usr/bin/env python3
"""50,000 idle subscribed connections on one host whose per-process open-file
limit is 20,000 (it cannot be raised without CAP_SYS_RESOURCE).

One gateway process cannot hold 50,000 sockets there, and neither can one
load generator. So N gateway processes share one port with `--reuse-port`
(the kernel spreads new connections over them, as it would for the
processes of a pod), and N `herald-loadgen idle` runs connect to that port at
once, each with its own account range (`--account-base`) and source
addresses. This script starts the broker and the gateways, samples the
gateways' summed RSS before any connection and once every connection is
open, and checks that every load generator received its events with no loss
or duplicate.

 The broker is Apache Kafka, started by `herald-test-services` (herald-testkit).

    cargo build --release -p herald-gateway -p herald-bench -p herald-testkit
    scripts/bench-50k.py                 # STOMP, 50,000 connections, 3 processes
    scripts/bench-50k.py --protocol room
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
SECRET = "herald-bench-secret-0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def connections(ops):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{ops}/metrics", timeout=2).read().decode()
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        if line.startswith("herald_connections{"):
            total += int(float(line.split()[-1]))
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", default="stomp", choices=["stomp", "room", "notifications"])
    ap.add_argument("--connections", type=int, default=50_000)
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--idle-secs", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    per = -(-args.connections // args.processes)
    tmp = tempfile.mkdtemp(prefix="herald-50k-")
    ws = free_port()
    prefix = f"bench50k{os.getpid()}."
    children = []

    def spawn(cmd, log):
        p = subprocess.Popen(cmd, stdout=open(os.path.join(tmp, log), "w"), stderr=subprocess.STDOUT)
        children.append(p)
        return p

    try:
        # Apache Kafka for the run; it stops when its stdin (held here) closes.
        env_file = os.path.join(tmp, "services.env")
        services = subprocess.Popen([os.path.join(BIN, "herald-test-services"), "--env-file", env_file,
                                     "--no-postgres"], stdin=subprocess.PIPE,
                                    stdout=open(os.path.join(tmp, "kafka.log"), "w"), stderr=subprocess.STDOUT)
        children.append(services)
        while not os.path.exists(env_file):
            if services.poll() is not None:
                print("error: Apache Kafka did not start; see " + os.path.join(tmp, "kafka.log"))
                return 1
            time.sleep(0.2)
        with open(env_file) as f:
            env = dict(line.strip().split("=", 1) for line in f if "=" in line)
        kafka = env["HERALD_TEST_KAFKA"]
        gateways = []
        for i in range(args.processes):
            ops = free_port()
            p = spawn([os.path.join(BIN, "herald-gateway"), "--kafka-brokers", kafka, "--topic-prefix", prefix,
                       "--listen", f"127.0.0.1:{ws}", "--reuse-port", "true", "--ops-listen", f"127.0.0.1:{ops}",
                       "--jwt-secret", SECRET, "--identities", "false", "--metadata-refresh-secs", "2",
                       "--max-connections-per-ip", "0"], f"gateway{i}.log")
            gateways.append((p, ops))
        time.sleep(3)
        rss_before = sum(rss_bytes(p.pid) for p, _ in gateways)
        loadgens = []
        for i in range(args.processes):
            out = os.path.join(tmp, f"loadgen{i}.json")
            p = spawn([os.path.join(BIN, "herald-loadgen"), "idle", "--protocol", args.protocol, "--kafka", kafka,
                       "--topic-prefix", prefix, "--gateway-addr", f"127.0.0.1:{ws}", "--connections", str(per),
                       "--account-base", str(1000 + i * 100_000), "--first-source-ip", str(10 + i * 20),
                       "--idle-secs", str(args.idle_secs), "--settle-secs", "2", "--out", out],
                      f"loadgen{i}.log")
            loadgens.append((p, out))
        # Sample while the load generators hold their connections.
        # `idle`: the first sample with every connection open (after the
        # load generators' settle time); `after_event`: the last one, once
        # each account has received an event.
        idle = last = full_at = None
        while any(p.poll() is None for p, _ in loadgens):
            counts = [connections(ops) for _, ops in gateways]
            if sum(counts) >= args.connections:
                full_at = full_at or time.time()
                last = (sum(counts), sum(rss_bytes(p.pid) for p, _ in gateways), counts)
                if idle is None and time.time() - full_at >= 3:
                    idle = last
            time.sleep(1)
        if idle is None or last is None:
            print("error: the connections were never all open at once; see the logs in " + tmp)
            return 1
        results = []
        for p, out in loadgens:
            with open(out) as f:
                results.append(json.load(f)["results"])
        n, rss_all, counts = idle
        rss_event = last[1]
        lost = sum(r["lost"] for r in results)
        dup = sum(r["duplicated"] for r in results)
        delivered = all(r["delivered_all"] for r in results)
        per_conn = (rss_all - rss_before) / max(n, 1)
        per_conn_event = (rss_event - rss_before) / max(n, 1)
        summary = {
            "protocol": args.protocol,
            "processes": args.processes,
            "connections_open_at_peak": n,
            "connections_subscribed": sum(r["connections_subscribed"] for r in results),
            "gateway_rss_before_bytes": rss_before,
            "gateway_rss_idle_bytes": rss_all,
            "rss_per_connection_bytes": per_conn,
            "gateway_rss_after_one_event_bytes": rss_event,
            "rss_per_connection_after_one_event_bytes": per_conn_event,
            "per_gateway_connections": counts,
            "delivered_all": delivered,
            "lost": lost,
            "duplicated": dup,
            "connects_per_second": [r["connects_per_second"] for r in results],
            "machine_nofile_limit": int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True,
                                                        text=True).stdout.strip() or 0),
        }
        print(f"idle50k[{args.protocol}]: {n} connections open at once over {args.processes} gateway "
              f"processes; gateway RSS {rss_before / 2**20:.1f} -> {rss_all / 2**20:.1f} MiB = "
              f"{per_conn:.0f} B/connection idle, {per_conn_event:.0f} after one event; delivered_all {delivered}, lost {lost}, duplicated {dup}")
        out = args.out or os.path.join(ROOT, "bench-results", f"idle50k-{args.protocol}.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "results": summary,
                       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=2)
        print(f"wrote {out}")
        ok = delivered and lost == 0 and dup == 0 and n >= args.connections
        return 0 if ok else 1
    finally:
        for p in children:
            if p.poll() is None:
                p.terminate()
        for p in children:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
