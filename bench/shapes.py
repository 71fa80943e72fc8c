"""Issue 16: patterns with no required literal, against a whole-process Hyperscan scan.

Usage: python -m bench.shapes [--lines N] [--shares 0,1,5] [--patterns 1000] [--out DIR]

For each share of 1,000 patterns that have no literal (drawn from structured
formats: numeric access records, UUID- and ISO-timestamp-led lines, key=value
runs; bench/corpus.py), on a mixed log where a fifth of the lines are in those
formats but named by no pattern (the lines a shape gate must judge), it measures
in the same run:

- `logmend test PACK --log CORPUS --json` with Hyperscan and with the pure-Python
  engine, and the whole agent reading the corpus (`logmend run`, cold start);
- the baseline: Hyperscan's multi-pattern scan of each line (bench/hyperscan_scan.py);
- every tool's count of matched lines (they must agree) and peak RSS;
- the agent's start with an empty log: cold (no memo), warm (the memo of the
  same set), and a reload (SIGHUP) of the same set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.corpus import write_shaped
from bench.matchers import PY, as_installed, logmend_agent, run

HERE = Path(__file__).resolve().parent
TARGET = 1.5  # within this factor of the Hyperscan scan
RSS_TARGET = 40.0  # MiB, with 1,000 patterns
START_TARGET = 0.5  # seconds, warm start or reload of an unchanged set


def logmend_test(base: Path, corpus: Path, engine: str) -> tuple[float, float, int]:
    seconds, rss, out = run(
        [PY, "-m", "agent", "test", str(base / "pack"), "--log", str(corpus), "--json",
         "--engine", engine]
    )  # fmt: skip
    report = json.loads(out)
    return seconds, rss, len(report["files"][0]["matches"])


def hyperscan_scan(base: Path, corpus: Path) -> tuple[float, float, int]:
    seconds, rss, out = run(
        [PY, str(HERE / "hyperscan_scan.py"), str(base / "patterns.json"), str(corpus)]
    )
    return seconds, rss, int(out.strip().splitlines()[-1])


class Agent:
    """`logmend run` on an empty log, its stderr followed line by line."""

    def __init__(self, base: Path) -> None:
        self.state = base / "start-state"
        log = base / "empty.log"
        log.write_text("")
        self.config = base / "start.toml"
        self.config.write_text(
            f'[agent]\nstate_dir = "{self.state}"\npacks = ["{base / "pack"}"]\n'
            f'[[source]]\npath = "{log}"\npacks = "*"\n'
        )
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> float:
        """Seconds from exec to the agent's "running" line."""
        self.lines = []
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [PY, "-m", "agent", "run", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        self._wait(" running: ", 1)
        return time.perf_counter() - started

    def reload(self) -> float:
        """Seconds from SIGHUP to the "reloaded" line."""
        assert self.proc is not None
        seen = sum("reloaded: " in line for line in self.lines)
        started = time.perf_counter()
        self.proc.send_signal(signal.SIGHUP)
        self._wait("reloaded: ", seen + 1)
        return time.perf_counter() - started

    def facts(self) -> str:
        return next(
            (line.split("facts about them: ")[-1].rstrip(")") for line in reversed(self.lines)
             if "facts about them: " in line),
            "?",
        )  # fmt: skip

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def _wait(self, text: str, count: int) -> None:
        deadline = time.perf_counter() + 120
        while sum(text in line for line in self.lines) < count:
            assert self.proc is not None
            if self.proc.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError("the agent did not get there:\n" + "\n".join(self.lines))
            time.sleep(0.002)


def start_times(base: Path, repeat: int) -> list[tuple[str, float, str]]:
    """Median seconds of `repeat` cold starts, warm starts and reloads."""
    agent = Agent(base)
    cold, warm, reload = [], [], []
    facts = {}
    for _ in range(repeat):
        shutil.rmtree(agent.state, ignore_errors=True)
        cold.append(agent.start())
        facts["cold"] = agent.facts()
        reload.append(agent.reload())
        facts["reload"] = agent.facts()
        agent.stop()
        warm.append(agent.start())
        facts["warm"] = agent.facts()
        agent.stop()
    return [
        (f"cold start (no memo), median of {repeat}", statistics.median(cold), facts["cold"]),
        (f"warm start (memo of the same set), median of {repeat}", statistics.median(warm),
         facts["warm"]),
        (f"reload (SIGHUP), same set, median of {repeat}", statistics.median(reload),
         facts["reload"]),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--patterns", type=int, default=1000)
    parser.add_argument("--shares", default="0,1,5", help="percent of patterns with no literal")
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--repeat", type=int, default=5, help="starts and reloads timed")
    args = parser.parse_args()
    as_installed()
    rows = [
        "| no literal | tool | lines/s | peak RSS MiB | matched | vs Hyperscan scan |",
        "|---:|---|---:|---:|---:|---|",
    ]
    verdicts: list[str] = []
    starts: list[str] = []
    for share in (float(s) for s in args.shares.split(",")):
        base = args.out / f"free{share:g}"
        corpus = write_shaped(base, args.patterns, share / 100, args.lines, args.seed)
        measured = {
            "hyperscan scan": hyperscan_scan(base, corpus),
            "logmend test (hyperscan)": logmend_test(base, corpus, "hyperscan"),
            "logmend agent (hyperscan)": logmend_agent(base, corpus),
            "logmend agent (hyperscan), warm": logmend_agent(base, corpus, warm=True),
            "logmend test (python)": logmend_test(base, corpus, "python"),
        }
        baseline = measured["hyperscan scan"][0]
        counts = {matched for _, _, matched in measured.values()}
        for tool, (seconds, rss, matched) in measured.items():
            ratio = seconds / baseline
            rows.append(
                f"| {share:g}% | {tool} | {args.lines / seconds:,.0f} | {rss:.1f} | {matched} | "
                + ("–" if tool == "hyperscan scan" else f"{ratio:.2f}× its time")
                + " |"
            )
            print(rows[-1], flush=True)
            if "(hyperscan)" in tool:
                verdicts.append(
                    f"{share:g}% {tool}: {ratio:.2f}× the scan's time "
                    + ("(within 1.5×)" if ratio <= TARGET else "(MISSES 1.5×)")
                    + f", {rss:.1f} MiB "
                    + ("(≤ 40)" if rss <= RSS_TARGET else "(OVER 40)")
                )
        verdicts.append(
            f"{share:g}%: counts agree: " + ("yes" if len(counts) == 1 else f"NO {sorted(counts)}")
        )
        if share == max(float(s) for s in args.shares.split(",")):
            for what, seconds, facts in start_times(base, args.repeat):
                starts.append(f"| {share:g}% | {what} | {seconds:.3f} | {facts} |")
                print(starts[-1], flush=True)
    text = "\n".join(
        [
            f"{args.lines:,} lines, {args.patterns} patterns per set; "
            f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}",
            "",
            *rows,
            "",
            "| no literal | agent | seconds | facts about the patterns |",
            "|---:|---|---:|---|",
            *starts,
            "",
            *(f"- {v}" for v in verdicts),
        ]
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shapes.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
