"""Issue 20: journalctl's JSON against a binding, for reading the journal into entries.

Usage: python -m bench.journal_reader [--entries 50000] [--rounds 3]

The agent reads the journal through `journalctl --output=json` (agent/journal.py);
the issue asks whether a well-kept binding measures better. Debian's `python3-systemd`
(systemd's own binding, built for the system's Python) is the candidate. Both read the
same journal of N entries, written by systemd-journal-remote, into what the reader
needs (cursor, MESSAGE, unit, identifier, PID, priority, hostname):

- journalctl: the agent's own command line (not following), its lines parsed by
  `agent.journal.parse`, in this process; CPU is this process's and journalctl's;
- the binding: `systemd.journal.Reader` with its default field converters, and the
  same without converters (`_Reader.next()` and `_get_all()`-style raw access through
  `get_next()` on a Reader whose converters are identity), in this process.

Reported: entries/s and CPU seconds per 10,000 entries, the median of the rounds, and
each binding figure as a ratio to journalctl's.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.journal import JournalSpec, argv, parse
from bench.journal import UNIT, JournalWriter

DIST = "/usr/lib/python3/dist-packages"  # Debian's python3-systemd


def binding() -> Any:
    """systemd.journal, or None when python3-systemd is not installed."""
    if DIST not in sys.path:
        sys.path.append(DIST)
    try:
        from systemd import journal  # type: ignore[import-not-found]
    except ImportError:
        return None
    return journal


def cpu() -> float:
    """CPU seconds of this process and its waited-for children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def through_journalctl(folder: Path) -> int:
    args = [a for a in argv(JournalSpec(directory=folder), None, True, "journalctl")
            if a != "--follow"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    count = 0
    for line in proc.stdout:
        if parse(line, 64 * 1024) is not None:
            count += 1
    proc.wait()
    return count


def through_binding(journal: Any, folder: Path, convert: bool) -> int:
    identity = {k: (lambda v: v) for k in ("MESSAGE", "_PID", "PRIORITY")}
    reader = journal.Reader(path=str(folder), converters=None if convert else identity)
    count = 0
    try:
        for entry in reader:
            fields = {
                "unit": entry.get("_SYSTEMD_UNIT"),
                "identifier": entry.get("SYSLOG_IDENTIFIER"),
                "pid": entry.get("_PID"),
                "priority": entry.get("PRIORITY"),
                "hostname": entry.get("_HOSTNAME"),
            }
            if entry.get("MESSAGE") is not None and entry["__CURSOR"] and fields:
                count += 1
    finally:
        reader.close()
    return count


def measure(run: Callable[[], int], rounds: int, entries: int) -> tuple[float, float]:
    """(entries/s, CPU seconds per 10,000 entries), medians of the rounds."""
    rates, cpus = [], []
    for _ in range(rounds):
        c0, t0 = cpu(), time.perf_counter()
        got = run()
        t1, c1 = time.perf_counter(), cpu()
        if got != entries:
            raise RuntimeError(f"read {got} entries of {entries}")
        rates.append(entries / (t1 - t0))
        cpus.append((c1 - c0) / entries * 10_000)
    return statistics.median(rates), statistics.median(cpus)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    journal = binding()
    with tempfile.TemporaryDirectory(prefix="logmend-bench-reader-") as tmp:
        folder = Path(tmp) / "journal"
        writer = JournalWriter(folder, "bench")
        try:
            messages = (
                f"worker {i % 7} served GET /items/{i} in {i % 250} ms status=200 {UNIT}"
                for i in range(args.entries)
            )
            writer.write(writer.export(messages))
        finally:
            writer.close()
        rows = [("journalctl --output=json, parsed", *measure(
            lambda: through_journalctl(folder), args.rounds, args.entries))]  # fmt: skip
        if journal is not None:
            for name, convert in (("with converters", True), ("without converters", False)):
                rate, per = measure(
                    lambda c=convert: through_binding(journal, folder, c),  # type: ignore[misc]
                    args.rounds,
                    args.entries,
                )
                rows.append((f"python3-systemd Reader, {name}", rate, per))
    base_rate, base_cpu = rows[0][1], rows[0][2]
    print(f"Reading {args.entries:,} journal entries into entries (median of {args.rounds}):\n")
    print("| reader | entries/s | CPU s per 10,000 | vs journalctl (speed, CPU) |")
    print("|---|---:|---:|---|")
    for name, rate, per in rows:
        print(
            f"| {name} | {rate:,.0f} | {per:.3f} | {rate / base_rate:.2f}×, {per / base_cpu:.2f}× |"
        )
    if journal is None:
        print("\npython3-systemd is not installed (Debian: apt install python3-systemd).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
