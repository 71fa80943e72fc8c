"""The reader loop alone, in process: this checkout against another, in one run.

    python -m bench.reader_loop --other PATH [--lines N] [--patterns N] [--rounds N]

PATH is another checkout of logmend (a `git worktree add` of an older commit).
Each round runs the same pass loop over the same corpus in a fresh process for
each checkout, alternating, and reports the best and median seconds of each
and their ratio: a refactor of the reader must not make the per-line path
slower.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.corpus import write_all

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Runs inside the measured checkout: only APIs both the old and new Agent have.
LOOP = """
import sys, time
from pathlib import Path
from agent.config import load_config
from agent.daemon import Agent
agent = Agent(load_config(Path(sys.argv[1])))
reader = getattr(agent, "reader", agent)
reader.tailer.sweep()
started = time.perf_counter()
while agent.pass_once():
    pass
seconds = time.perf_counter() - started
print(seconds, sum(reader.lines_by_source.values()))
"""


def measure(checkout: Path, config: Path, state: Path) -> tuple[float, int]:
    shutil.rmtree(state, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, "-c", LOOP, str(config)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=checkout,
    )
    seconds, lines = done.stdout.split()
    return float(seconds), int(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", type=Path, required=True, help="another checkout")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--patterns", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args()
    made = write_all(args.out, [args.patterns], args.lines, args.seed)[args.patterns]
    base, corpus = Path(made["dir"]), Path(made["corpus"])
    state = base / "reader-state"
    config = base / "reader.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{state}"\npacks = ["{base / "pack"}"]\n'
        f'[[source]]\npath = "{corpus}"\npacks = "*"\nstart = "beginning"\n'
    )
    runs: dict[str, list[float]] = {"this": [], "other": []}
    lines: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, checkout in (("other", args.other.resolve()), ("this", ROOT)):
            seconds, read = measure(checkout, config, state)
            runs[name].append(seconds)
            lines[name] = read
            print(f"{name:<6} {seconds:7.3f} s  {read} lines", flush=True)
    best = {name: min(times) for name, times in runs.items()}
    median = {name: statistics.median(times) for name, times in runs.items()}
    print(
        f"\n| checkout | lines | best s | median s |\n|---|---:|---:|---:|\n"
        f"| other ({args.other}) | {lines['other']:,} | {best['other']:.3f} "
        f"| {median['other']:.3f} |\n"
        f"| this | {lines['this']:,} | {best['this']:.3f} | {median['this']:.3f} |\n\n"
        f"this / other: best {best['this'] / best['other']:.3f}×, "
        f"median {median['this'] / median['other']:.3f}×"
    )
    return 0 if lines["this"] == lines["other"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
