"""`logmend test`: prove a pack with its examples, and try it on real logs."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TextIO

from agent.derived import Memo
from agent.examples import ExampleFailure
from agent.match import Matcher
from agent.packs import Pack
from agent.records import LineSplitter

CHUNK = 1 << 18
MAX_LINE = 64 * 1024


class ScanSink(Protocol):
    """Where `scan_logs` puts what it finds, as it finds it: a log with a million
    matches is never held in memory."""

    def file(self, path: Path) -> None: ...
    def match(self, found: dict[str, Any]) -> None: ...
    def file_done(self, path: Path, lines: int, matches: int) -> None: ...
    def done(self, summary: dict[str, Any]) -> None: ...


def scan_logs(
    packs: list[Pack],
    logs: list[Path],
    timeout: float,
    sink: ScanSink,
    engine: str = "auto",
    memo: Memo | None = None,
    progress: Progress | None = None,
) -> None:
    """Match every line of every log against every pattern, into `sink`; `progress`
    hears of each chunk read (a terminal shows how far a large log has got)."""
    patterns = [p for pack in packs for p in pack.patterns]
    # the compile's memory apart: a large log keeps the process long enough to matter
    matcher = Matcher(patterns, timeout, engine, memo=memo or Memo(apart=True))
    total_lines = 0
    for log_path in logs:
        sink.file(log_path)
        splitter = LineSplitter(MAX_LINE)
        lines = found = 0
        done = 0
        with _opened(log_path) as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                block = splitter.feed(chunk)
                lines, found = _scan_block(matcher, block, lines, found, sink)
                done += len(chunk)
                if progress is not None:
                    progress.read(log_path, done, lines)
            lines, found = _scan_block(matcher, splitter.flush(), lines, found, sink)
        if progress is not None:
            progress.finish()
        sink.file_done(log_path, lines, found)
        total_lines += lines
    summary = [
        {
            "pack": p.pack,
            "pattern": p.id,
            "matches": s.matches,
            "seconds": round(s.seconds, 6),
            "timeouts": s.timeouts,
            "confirms": s.confirms,
            "ignored": s.ignored,
        }
        for p, s in matcher.pattern_stats()
    ]
    sink.done(
        {
            "patterns": rank_by_cost(summary, total_lines),
            "engine": matcher.engine,
            "ungated": [p.qualified for p in matcher.ungated],
        }
    )


class Progress:
    """How far a large log has got, on a terminal: one line redrawn at most twice a
    second (only for a file of at least `LARGE` bytes; a pipe's size is unknown)."""

    LARGE = 16 << 20

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.clock = clock
        self._last = 0.0
        self._shown = False

    def read(self, path: Path, done: int, lines: int) -> None:
        now = self.clock()
        if now - self._last < 0.5:
            return
        size = path.stat().st_size if str(path) != "-" else 0
        if size < self.LARGE:
            return
        self._last = now
        self._shown = True
        self.out.write(f"\r{path}: {100 * done // size}% read, {lines:,} lines")
        self.out.flush()

    def finish(self) -> None:
        if self._shown:
            self.out.write("\r\x1b[K")  # the line is cleared: the report follows
            self.out.flush()
            self._shown = False


def _opened(path: Path) -> contextlib.AbstractContextManager[BinaryIO]:
    """The log at `path`; "-" is standard input (left open: it is not ours)."""
    if str(path) == "-":
        return contextlib.nullcontext(sys.stdin.buffer)
    return path.open("rb")


class JsonSink:
    """The --json document, written as it is found (one object; see docs/packs.md)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._files = 0
        self._matches = 0

    def file(self, path: Path) -> None:
        self.out.write(('{"files": [' if not self._files else ", ") + '{"path": ')
        self.out.write(json.dumps(str(path)) + ', "matches": [')
        self._files += 1
        self._matches = 0

    def match(self, found: dict[str, Any]) -> None:
        self.out.write((", " if self._matches else "") + json.dumps(found))
        self._matches += 1

    def file_done(self, path: Path, lines: int, matches: int) -> None:
        self.out.write(f'], "lines": {lines}}}')

    def done(self, summary: dict[str, Any]) -> None:
        self.out.write(("]" if self._files else '{"files": []') + ", ")
        self.out.write(json.dumps(summary)[1:] + "\n")


class TextSink:
    """The human report: each match as found, then each file's count and the costs."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def file(self, path: Path) -> None:
        print(f"{path}:", file=self.out)

    def match(self, m: dict[str, Any]) -> None:
        print(
            f"  line {m['line']}: {m['pack']}/{m['pattern']} {json.dumps(m['fields'])}",
            file=self.out,
        )

    def file_done(self, path: Path, lines: int, matches: int) -> None:
        print(f"{path}: {lines} line(s), {matches} match(es)", file=self.out)

    def done(self, summary: dict[str, Any]) -> None:
        out = self.out
        print(
            "per pattern, costliest first (matches, tried on % of lines, µs per line, seconds,"
            " regex timeouts):",
            file=out,
        )
        for p in summary["patterns"]:
            print(
                f"  {p['pack']}/{p['pattern']}: {p['matches']}  {100 * p['tried_share']:.1f}%"
                f"  {p['us_per_line']:.3f}µs  {p['seconds']:.6f}s  {p['timeouts']}"
                + (f"  ({p['ignored']} taken back by its ignore rules)" if p["ignored"] else ""),
                file=out,
            )
        for p in summary["patterns"]:
            if p["costly"]:
                print(f"COSTLY {p['pack']}/{p['pattern']}: {p['costly']}", file=out)


DOMINATES = 0.5  # of all the patterns' regex time
UNGATED = 0.5  # of the lines: the prefilter lets the pattern through on most of them


def rank_by_cost(patterns: list[dict[str, Any]], lines: int) -> list[dict[str, Any]]:
    """Patterns costliest first, each with its regex time per line and the share of
    lines it was tried on; `costly` says why one would dominate a real log: it takes
    most of the regex time of the set, or the prefilter cannot keep it off most lines
    (tried on most lines, mostly in vain: a pattern with no required literal and no
    shape the engine prefilters is tried on every line)."""
    spent = sum(p["seconds"] for p in patterns)
    for p in patterns:
        p["us_per_line"] = round(1e6 * p["seconds"] / lines, 3) if lines else 0.0
        p["tried_share"] = round(p["confirms"] / lines, 4) if lines else 0.0
        why = []
        if len(patterns) > 1 and spent > 0 and p["seconds"] / spent >= DOMINATES:
            why.append(f"{100 * p['seconds'] / spent:.0f}% of all the patterns' regex time")
        wasted = p["confirms"] - p["matches"]  # tries that found nothing
        if lines and p["confirms"] / lines >= UNGATED and wasted >= p["confirms"] / 2:
            why.append(
                f"tried on {100 * p['confirms'] / lines:.0f}% of lines, matching"
                f" {100 * p['matches'] / p['confirms']:.0f}% of them: nothing gates it"
                " (no literal, and no shape the engine can prefilter)"
            )
        p["costly"] = "; ".join(why)
    return sorted(patterns, key=lambda p: (-p["seconds"], p["pack"], p["pattern"]))


def _scan_block(
    matcher: Matcher, block: bytes, lines: int, found: int, sink: ScanSink
) -> tuple[int, int]:
    """Hand the block's matches to `sink` with their line numbers; returns the lines
    counted and the matches found so far."""
    counted_to = 0
    for start, _, hits in matcher.scan(block, MAX_LINE):
        lines += block.count(b"\n", counted_to, start)
        counted_to = start
        for pattern, fields in hits:
            sink.match(
                {"line": lines + 1, "pack": pattern.pack, "pattern": pattern.id, "fields": fields}
            )
            found += 1
    return lines + block.count(b"\n", counted_to), found


def print_examples(pack: Pack, checked: int, failures: list[ExampleFailure], out: TextIO) -> None:
    status = "ok" if not failures else "FAILED"
    print(
        f"{pack.name} {pack.version} ({pack.file}): {checked} example(s), "
        f"{len(failures)} failed: {status}",
        file=out,
    )
    for f in failures:
        where = f" (line {f.at})" if f.at else ""
        print(
            f"  {f.pattern.id}{where}: {f.line!r}\n    expected: {f.expected}\n"
            f"    actual:   {f.actual}",
            file=out,
        )
