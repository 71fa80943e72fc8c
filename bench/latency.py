"""Append-to-fix latency and idle CPU of the real agent.

Usage: python -m bench.latency [--trials 200] [--idle-seconds 60] [--files 100]

Latency: a matching line is appended to a followed file (its time taken just
before the write) and the fix script writes its own start time; the benchmark
reports the median and 99th percentile of the difference. Idle: the agent
follows N quiet files for a while; CPU is read from /proc for that process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PACK = """[pack]
name = "latency"
version = "1"
owner = "bench"
user = "root"  # the stamp goes into the bench's private folder

[[pattern]]
id = "trigger"
match = '''^LATENCY TRIGGER (?P<n>\\d+)'''
key = "{n}"
escalate = "never"
fields = { n = { type = "int" } }

[pattern.remedy]
run = ["scripts/stamp.sh", "OUT", "{n}"]
attempts = 1
cooldown = "1h"

[[pattern.example]]
line = "LATENCY TRIGGER 1"
"""

STAMP = """#!/bin/sh
printf '%s %s\\n' "$2" "$(date +%s.%N)" >> "$1"
"""


def agent(config: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if b" running: " in line:
            # keep draining its log, or a full pipe would stall the agent being measured
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc
    raise RuntimeError("agent did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="logmend-latency-") as tmp:
        root = Path(tmp)
        out = root / "stamps"
        pack = root / "packs" / "latency"
        (pack / "scripts").mkdir(parents=True)
        (pack / "pack.toml").write_text(PACK.replace("OUT", str(out)))
        script = pack / "scripts" / "stamp.sh"
        script.write_text(STAMP)
        script.chmod(0o755)
        logs = root / "logs"
        logs.mkdir()
        for n in range(args.files):
            (logs / f"quiet-{n:03d}.log").write_text("")
        config = root / "agent.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{root / "state"}"\npacks = ["{root / "packs"}"]\n'
            'allow_root = ["latency"]\n'
            f'[[source]]\npath = "{logs}/*.log"\npacks = ["latency"]\n'
        )
        proc = agent(config)
        try:
            time.sleep(2)  # let start-up work settle before measuring idle
            before, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.idle_seconds)
            idle = (cpu_seconds(proc.pid) - before) / (time.monotonic() - t0)
            idle_rss = rss_mb(proc.pid)
            sent: dict[str, float] = {}
            target = logs / "quiet-000.log"
            for n in range(args.trials):
                with target.open("a") as handle:
                    sent[str(n)] = time.time()
                    handle.write(f"LATENCY TRIGGER {n}\n")
                time.sleep(0.05)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                got = out.read_text().splitlines() if out.exists() else []
                if len(got) >= args.trials:
                    break
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        stamps = dict(line.split() for line in out.read_text().splitlines())
        delays = sorted((float(stamps[n]) - sent[n]) * 1000 for n in sent if n in stamps)
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print(
        f"| measure | value |\n|---|---|\n"
        f"| append-to-fix latency, median | {statistics.median(delays):.1f} ms |\n"
        f"| append-to-fix latency, p99 | {p99:.1f} ms |\n"
        f"| trials (fixes started / lines appended) | {len(delays)} / {args.trials} |\n"
        f"| idle CPU, {args.files} quiet files, {args.idle_seconds:.0f} s | "
        f"{idle * 100:.2f}% of a core |\n"
        f"| idle RSS | {idle_rss:.0f} MB |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
