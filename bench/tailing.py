"""Reading and splitting a large file through the real tailer, against `wc -l` on the same file.

Usage: python -m bench.tailing [--lines 2000000]
Both are timed as whole processes in the same run; the report gives lines/s,
MB/s and the tailer's time as a multiple of wc's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.corpus import lines as corpus_lines

READER = """
import sys
from agent.config import Source
from agent.tail import Tailer
tailer = Tailer((Source(path=sys.argv[1], start="beginning"),), {}, 65536)
tailer.sweep()
count = 0
for followed in tailer:
    while (block := followed.read(1 << 20)) is not None:
        count += block.count(b"\\n")
print(count)
"""


def timed(cmd: list[str]) -> tuple[float, int]:
    best = float("inf")
    out = ""
    for _ in range(3):  # best of three: the machine is shared
        started = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        best = min(best, time.perf_counter() - started)
    return best, int(out.split()[0])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=2_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="logmend-tailing-") as tmp:
        path = Path(tmp) / "big.log"
        with path.open("w") as handle:
            step = 100_000
            for start in range(0, args.lines, step):
                handle.write("\n".join(corpus_lines(min(step, args.lines - start), 10, start)))
                handle.write("\n")
        size = path.stat().st_size
        wc_seconds, wc_lines = timed(["wc", "-l", str(path)])
        tail_seconds, tail_lines = timed([sys.executable, "-c", READER, str(path)])
    assert wc_lines == tail_lines == args.lines, (wc_lines, tail_lines)
    print("| reader | lines/s | MB/s | time |\n|---|---:|---:|---:|")
    for name, seconds in (("wc -l", wc_seconds), ("logmend tailer", tail_seconds)):
        print(
            f"| {name} | {args.lines / seconds:,.0f} | {size / seconds / 1e6:,.0f} | "
            f"{seconds:.3f} s |"
        )
    print(
        f"\n{args.lines:,} lines, {size / 1e6:.0f} MB; the tailer takes "
        f"{tail_seconds / wc_seconds:.2f}× the time of wc -l (whole processes, best of 3)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
