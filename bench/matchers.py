"""Throughput of logmend's matcher and agent against the peers, on the same files, in one run.

Usage: python -m bench.matchers [--lines N] [--sizes 10,100,1000] [--out DIR]
Reports lines/s, MB/s and peak RSS of each tool (whole process), logmend's
ratio to each, and every tool's count of matched lines (they must agree).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.corpus import write_all

HERE = Path(__file__).resolve().parent
PY = sys.executable


@dataclass
class Result:
    tool: str
    size: int
    seconds: float
    rss_mb: float
    matched: int | None
    note: str = ""


class TooSlow(Exception):
    pass


def as_installed() -> None:
    """Byte-compile the agent's modules, as `pip install` does: an editable checkout
    (or PYTHONDONTWRITEBYTECODE) would otherwise make every measured start compile
    them from source, a cost no installed agent pays."""
    import compileall

    compileall.compile_dir(str(HERE.parent / "agent"), quiet=1)


def run(cmd: list[str], limit: float = 0) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of one whole process.

    GNU time measures the RSS: a child forked from this (larger) Python process
    would report this process's high-water mark as its own. A peer still running
    after `limit` seconds is stopped; its speed is then only an upper bound.
    """
    rss_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-rss-{os.getpid()}"
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=limit or None)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise TooSlow from None
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}")
    rss_kb = int(rss_file.read_text().split()[-1])
    return seconds, rss_kb / 1024, out.decode("utf-8", "replace")


def logmend_test(base: Path, corpus: Path) -> tuple[float, float, int]:
    seconds, rss, out = run(
        [PY, "-m", "agent", "test", str(base / "pack"), "--log", str(corpus), "--json"]
    )
    return seconds, rss, len(json.loads(out)["files"][0]["matches"])


def logmend_agent(
    base: Path,
    corpus: Path,
    warm: bool = False,
    source_extra: str = "",
    cpu: list[float] | None = None,
) -> tuple[float, float, int]:
    """The whole agent reading the file from its start to its end (no remedies run);
    `warm`: with the pattern memo an earlier run of the same set left (agent.derived);
    `source_extra`: more keys of the [[source]] (`discover = false`); `cpu`: the agent's
    CPU seconds (user and system, start to stop) are appended to it."""
    state = base / "agent-state"
    memo = state / "patterns.memo"
    kept = memo.read_bytes() if warm and memo.exists() else None
    shutil.rmtree(state, ignore_errors=True)
    if kept is not None:
        state.mkdir(mode=0o700)
        memo.write_bytes(kept)
        memo.chmod(0o600)
    config = base / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{state}"\npacks = ["{base / "pack"}"]\n'
        f'[[source]]\npath = "{corpus}"\npacks = "*"\nstart = "beginning"\n{source_extra}'
        '[limits]\nsweep_interval = "20ms"\n'
    )
    size = corpus.stat().st_size
    rss_file = base / "agent-rss"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            "/usr/bin/time",
            "-f",
            "%U %S %M",
            "-o",
            str(rss_file),
            PY,
            "-m",
            "agent",
            "run",
            "-c",
            str(config),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = state / "state.db"
    done = None
    while proc.poll() is None and time.perf_counter() - started < 3600:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as conn:
                    row = conn.execute("SELECT max(offset) FROM checkpoints").fetchone()
                if row and row[0] == size:
                    done = time.perf_counter() - started
                    break
            except sqlite3.Error:
                pass
        time.sleep(0.01)
    agent_pid = int(
        subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()[0]
    )
    os.kill(agent_pid, signal.SIGTERM)
    proc.wait()
    if done is None:
        raise RuntimeError("the agent did not finish reading")
    status = subprocess.run(
        [PY, "-m", "agent", "status", "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    matched = sum(p["matches"] for p in json.loads(status.stdout)["patterns"])
    user, system, peak = rss_file.read_text().split()[-3:]
    if cpu is not None:
        cpu.append(float(user) + float(system))
    return done, int(peak) / 1024, matched


def peers(base: Path, corpus: Path) -> dict[str, list[str] | None]:
    patterns = str(base / "patterns.json")
    return {
        "regex loop": [PY, str(HERE / "plain_loop.py"), patterns, str(corpus)],
        "hyperscan scan": [PY, str(HERE / "hyperscan_scan.py"), patterns, str(corpus)],
        "fail2ban-regex": (
            ["fail2ban-regex", "--print-no-missed", str(corpus), str(base / "fail2ban.conf")]
            if shutil.which("fail2ban-regex")
            else None
        ),
        "sec": (
            [
                "sec",
                f"--conf={base / 'sec.rules'}",
                f"--input={corpus}",
                "--notail",
                "--fromstart",
                "--log=/dev/null",
            ]
            if shutil.which("sec")
            else None
        ),
        "swatch": (
            ["swatchdog", f"--config-file={base / 'swatch.rc'}", f"--examine={corpus}"]
            if shutil.which("swatchdog")
            else None
        ),
    }


def count(tool: str, out: str) -> int:
    if tool == "fail2ban-regex":
        found = re.search(r"Lines: \d+ lines, \d+ ignored, (\d+) matched", out)
        return int(found.group(1)) if found else -1
    if tool == "swatch":
        clean = re.sub(r"\x1b\[[0-9;]*m", "", out)
        return sum(
            1 for line in clean.splitlines() if len(line) > 20 and not line.startswith("***")
        )
    if tool == "sec":
        return len(out.splitlines())
    return int(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument(
        "--peer-limit",
        type=float,
        default=300.0,
        help="seconds a peer may take before it is stopped",
    )
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--skip", default="", help="comma-separated tools to leave out")
    args = parser.parse_args()
    as_installed()
    sizes = [int(s) for s in args.sizes.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    made = write_all(args.out, sizes, args.lines, args.seed)
    results: list[Result] = []
    for size in sizes:
        base = Path(made[size]["dir"])
        corpus = Path(made[size]["corpus"])
        for tool, fn in (("logmend test", logmend_test), ("logmend agent", logmend_agent)):
            seconds, rss, matched = fn(base, corpus)
            results.append(Result(tool, size, seconds, rss, matched))
            print(
                f"{size:>5} {tool:<15} {seconds:8.2f}s {rss:6.1f} MB  matched {matched}", flush=True
            )
        for tool, cmd in peers(base, corpus).items():
            if tool in skip:
                continue
            if cmd is None:
                results.append(Result(tool, size, 0, 0, None, "not installed (bench/setup.sh)"))
                continue
            try:
                seconds, rss, out = run(cmd, args.peer_limit)
            except TooSlow:
                results.append(
                    Result(
                        tool,
                        size,
                        args.peer_limit,
                        0,
                        None,
                        f"did not finish in {args.peer_limit:.0f} s",
                    )
                )
                print(f"{size:>5} {tool:<15} did not finish in {args.peer_limit:.0f} s", flush=True)
                continue
            results.append(Result(tool, size, seconds, rss, count(tool, out)))
            print(
                f"{size:>5} {tool:<15} {seconds:8.2f}s {rss:6.1f} MB  matched "
                f"{results[-1].matched}",
                flush=True,
            )
    report(results, args.lines, Path(made[sizes[0]]["corpus"]).stat().st_size, args.out)
    return 0


def report(results: list[Result], lines: int, size_bytes: int, out: Path) -> None:
    rows = [
        "| patterns | tool | lines/s | MB/s | peak RSS MB | matched | logmend test is |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for result in results:
        mine = next(r for r in results if r.size == result.size and r.tool == "logmend test")
        if result.matched is None:
            bound = (
                f"< {lines / result.seconds:,.0f} | < {size_bytes / result.seconds / 1e6:.1f}"
                if result.seconds
                else "– | –"
            )
            faster = f"over {result.seconds / mine.seconds:.0f}× faster" if result.seconds else ""
            rows.append(
                f"| {result.size} | {result.tool} | {bound} | – | – | {faster} ({result.note}) |"
            )
            continue
        ratio = result.seconds / mine.seconds
        rows.append(
            f"| {result.size} | {result.tool} | {lines / result.seconds:,.0f} | "
            f"{size_bytes / result.seconds / 1e6:.1f} | {result.rss_mb:.0f} | {result.matched} | "
            + (
                "–"
                if result.tool == "logmend test"
                else f"{ratio:.1f}× faster"
                if ratio >= 1
                else f"{1 / ratio:.1f}× slower"
            )
            + " |"
        )
    agreed = {
        r.size: {x.matched for x in results if x.size == r.size and x.matched is not None}
        for r in results
    }
    rows.append("")
    rows.append(
        f"{lines:,} lines ({size_bytes / 1e6:.1f} MB) per corpus; counts agree: "
        + ", ".join(
            f"{s} patterns {'yes' if len(v) == 1 else 'NO ' + str(sorted(v))}"
            for s, v in agreed.items()
        )
    )
    text = "\n".join(rows)
    print(text)
    (out / "matchers.md").write_text(text + "\n")
    (out / "matchers.json").write_text(json.dumps([r.__dict__ for r in results], indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
