#!/usr/bin/env python3
"""Number crunching for bench/run.sh: start-to-ready, the fresh-token burst, the table.

  report.py ready CPU BIN CONFIG          -> JSON {ready_ms, idle_rss_kib} (medians of 5)
  report.py burst CPU URL METRICS TOKEN   -> JSON {requests, lookups}
  report.py table RAW.jsonl [options]     -> prints the table, optionally rewrites RESULTS.md
"""
import argparse
import asyncio
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

KEEP_MARKER = "<!-- Everything below this line is kept by bench/run.sh when it rewrites the file. -->"

TARGETS = ["direct", "nginx-proxy", "nginx-auth", "nginx-auth-cached", "scopegate"]
WORKLOADS = {
    "1": "1 cached token, 1 KiB",
    "2": "2 1,000 tokens rotating",
    "3": "3 denied (out of scope)",
    "4": "4 no token",
    "5-down": "5 256 MiB download",
    "5-up": "5 256 MiB upload",
    "6": "6 Connection: close",
    "7": "7 paced (≈5k req/s)",
}


def http_status(addr, path, timeout=1.0):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode())
        head = s.recv(64).decode("latin-1")
    m = re.match(r"HTTP/1\.[01] (\d{3})", head)
    return int(m.group(1)) if m else 0


def ready(cpu, binary, config):
    """Exec to /healthz answering 200 on the admin port, and RSS once idle, 5 fresh starts."""
    times, rss = [], []
    for _ in range(5):
        with tempfile.NamedTemporaryFile("w+", suffix=".log") as logf:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                ["taskset", "-c", str(cpu), binary, "run", "--config", config],
                stdout=subprocess.DEVNULL, stderr=logf)
            admin, deadline = None, t0 + 10
            try:
                while time.perf_counter() < deadline:
                    if admin is None:
                        logf.seek(0)
                        m = re.search(r"admin=([0-9.]+:\d+)", logf.read())
                        admin = m.group(1) if m else None
                    if admin is not None:
                        try:
                            if http_status(admin, "/healthz") == 200:
                                break
                        except OSError:
                            pass
                    time.sleep(0.0005)
                else:
                    raise SystemExit("scopegate did not become ready within 10 s")
                times.append((time.perf_counter() - t0) * 1000)
                # Idle: let start-up work (config watcher, first purge tick scheduling) settle.
                time.sleep(0.5)
                with open(f"/proc/{proc.pid}/status") as f:
                    rss.append(int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)))
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    return {"ready_ms": statistics.median(times), "ready_ms_all": [round(t, 1) for t in times],
            "idle_rss_kib": statistics.median(rss)}


def metric(url, name):
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise SystemExit(f"metric {name} not found at {url}")


async def one_request(host, port, path, token):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nJOB-TOKEN: {token}\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readline()
    writer.close()
    return int(head.split()[1])


def burst(url, metrics, token, n=1000):
    """n concurrent requests of one token never seen before; forge look-ups counted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * n)), hard))
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    host, port, path = m.group(1), int(m.group(2)), m.group(3)
    before = metric(metrics, "scopegate_job_lookups_total")

    async def all_of_them():
        return await asyncio.gather(*(one_request(host, port, path, token) for _ in range(n)))

    statuses = asyncio.run(all_of_them())
    after = metric(metrics, "scopegate_job_lookups_total")
    return {"requests": n, "ok": sum(1 for s in statuses if s == 200), "lookups": after - before}


def median(xs):
    return statistics.median(xs) if xs else None


def summarise(rows):
    """(workload, target) -> medians over rounds."""
    groups = {}
    for r in rows:
        groups.setdefault((r["workload"], r["target"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        if key[0].startswith("5-"):
            speeds = [median(r["speeds"]) for r in rs]
            mib = [len(r["speeds"]) * r["bytes_each"] / 2**20 for r in rs]
            out[key] = {
                "rate": median(speeds) / 1e6,  # MB/s
                "cpu": median([r["cpu_ticks"] / r["clk_tck"] * 1e6 / m for r, m in zip(rs, mib)]),
                "peak": max(r["peak_kib"] for r in rs) / 1024,
                "rounds": len(rs), "bad": 0,
            }
            continue
        rates, p50, p99, cpu, bad = [], [], [], [], 0
        for r in rs:
            w = r["wrk"]
            rates.append(w["requests"] / (w["duration_us"] / 1e6))
            p50.append(w["p50_us"])
            p99.append(w["p99_us"])
            cpu.append(r["cpu_ticks"] / r["clk_tck"] * 1e6 / max(w["requests"], 1))
            transport = w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"]
            wrong = (w["requests"] - w["status_errors"]) if r["expect_errors"] == "all" else w["status_errors"]
            bad += transport + wrong
        out[key] = {"rate": median(rates), "p50": median(p50), "p99": median(p99),
                    "cpu": median(cpu), "peak": max(r["peak_kib"] for r in rs) / 1024,
                    "rounds": len(rs), "bad": bad}
    return out


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def table(summary):
    lines = ["| workload | target | req/s (MB/s) | p50 µs | p99 µs | × direct | × nginx proxy_pass "
             "| CPU µs/req (/MiB) | peak RSS MiB | rounds | wrong answers |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in WORKLOADS:
        for t in TARGETS:
            s = summary.get((w, t))
            if s is None:
                continue
            d = summary.get((w, "direct"))
            p = summary.get((w, "nginx-proxy"))
            lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                WORKLOADS[w], t, fmt(s["rate"], ",.0f"), fmt(s.get("p50"), ".0f"),
                fmt(s.get("p99"), ".0f"),
                fmt(s["rate"] / d["rate"] if d else None, ".2f"),
                fmt(s["rate"] / p["rate"] if p else None, ".2f"),
                fmt(s["cpu"], ".1f"), fmt(s["peak"], ".1f"), s["rounds"], s["bad"]))
    return "\n".join(lines)


def targets(summary, ready_j, burst_j):
    def get(w, t, k="rate"):
        s = summary.get((w, t))
        return None if s is None else s.get(k)

    checks = []

    def check(name, value, goal, ok):
        checks.append(f"| {name} | {value} | {goal} | {'met' if ok else 'NOT MET'} |")

    def ratio(a, b):
        return a / b if a is not None and b else None

    sg1, px1, au1 = get("1", "scopegate"), get("1", "nginx-proxy"), get("1", "nginx-auth")
    r = ratio(sg1, px1)
    if r is not None:
        check("W1 scopegate ÷ nginx proxy_pass req/s", f"{r:.2f}×", "≥ 1.0×", r >= 1.0)
    r = ratio(sg1, au1)
    if r is not None:
        check("W1 scopegate ÷ nginx auth_request (uncached)", f"{r:.2f}×", "≥ 3×", r >= 3)
    a, b = get("1", "scopegate", "p99"), get("1", "nginx-proxy", "p99")
    if a is not None and b is not None:
        check("W1 p99 scopegate vs proxy_pass", f"{a:.0f} µs vs {b:.0f} µs", "≤", a <= b)
    r = ratio(get("2", "scopegate"), sg1)
    if r is not None:
        check("W2 ÷ W1 (scopegate)", f"{r:.2f}×", "≥ 0.9×", r >= 0.9)
    r = ratio(get("3", "scopegate"), sg1)
    if r is not None:
        check("W3 ÷ W1 (scopegate)", f"{r:.2f}×", "≥ 1.5×", r >= 1.5)
    for d in ("down", "up"):
        r = ratio(get(f"5-{d}", "scopegate"), get(f"5-{d}", "nginx-proxy"))
        if r is not None:
            check(f"W5 {d}load MB/s ÷ nginx proxy_pass", f"{r:.2f}×", "≥ 1.0×", r >= 1.0)
        pk = get(f"5-{d}", "scopegate", "peak")
        if pk is not None:
            check(f"W5 {d}load peak RSS", f"{pk:.1f} MiB", "≤ 32 MiB", pk <= 32)
    if burst_j:
        check("1,000-request burst of a fresh token: forge look-ups",
              f"{burst_j['lookups']:.0f} ({burst_j['ok']}/{burst_j['requests']} answered 200)",
              "exactly 1", burst_j["lookups"] == 1)
    if ready_j:
        check("idle RSS", f"{ready_j['idle_rss_kib'] / 1024:.1f} MiB", "≤ 16 MiB",
              ready_j["idle_rss_kib"] <= 16 * 1024)
        check("start to ready (exec → /healthz 200)",
              f"{ready_j['ready_ms']:.1f} ms (all: {ready_j['ready_ms_all']})", "≤ 100 ms",
              ready_j["ready_ms"] <= 100)
    return "\n".join(["| target | measured | goal | |", "|---|---|---|---|"] + checks)


def sh(cmd, cwd=None):
    try:
        return subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("ready")
    r.add_argument("cpu"); r.add_argument("binary"); r.add_argument("config")
    b = sub.add_parser("burst")
    b.add_argument("cpu"); b.add_argument("url"); b.add_argument("metrics"); b.add_argument("token")
    t = sub.add_parser("table")
    t.add_argument("raw")
    for opt in ("ready", "burst", "started", "command", "load", "root", "duration", "rounds",
                "conns", "write"):
        t.add_argument("--" + opt)
    a = ap.parse_args()

    if a.cmd == "ready":
        print(json.dumps(ready(a.cpu, a.binary, a.config)))
        return
    if a.cmd == "burst":
        os.sched_setaffinity(0, {int(a.cpu)})
        print(json.dumps(burst(a.url, a.metrics, a.token)))
        return

    rows = [json.loads(line) for line in open(a.raw) if line.strip()]
    summary = summarise(rows)
    ready_j = json.loads(a.ready) if a.ready else None
    burst_j = json.loads(a.burst) if a.burst else None
    tbl, tgt = table(summary), targets(summary, ready_j, burst_j)
    print(tbl)
    print()
    print(tgt)
    if not a.write:
        return
    cpu_model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    commit = sh("git rev-parse --short HEAD", a.root)
    # RESULTS.md itself (its kept notes) does not make the measured code dirty.
    dirty = sh("git status --porcelain --untracked-files=no -- . ':!bench/RESULTS.md'", a.root)
    kept = ""
    if os.path.exists(a.write):
        text = open(a.write).read()
        if KEEP_MARKER in text:
            kept = text.split(KEEP_MARKER, 1)[1]
    doc = f"""# Benchmark results (latest run of bench/run.sh)

- date: {a.started}
- command: `{a.command}`
- machine: `{sh('uname -a')}`; nproc {sh('nproc')}; CPU {cpu_model}
- rustc: `{sh('rustc --version')}`; nginx: `{sh('nginx -v 2>&1')}`; wrk: `{sh('wrk -v 2>&1 | head -1')}`
- git commit: `{commit}`{' (with uncommitted changes)' if dirty else ''}
- load average (1/5/15 min) before → after: {a.load}
- per measurement: {a.duration}, {a.conns} connections, 2 wrk threads; {a.rounds} interleaved round(s); medians over rounds
- pinning: wrk and curl on CPU 0; the fake forge and the target under test on CPU 1

{tbl}

## Issue 6 targets

{tgt}

{KEEP_MARKER}{kept}"""
    with open(a.write, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    sys.exit(main())
