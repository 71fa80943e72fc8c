"""`logmend test`: prove a pack with its examples, and try it on real logs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from agent.derived import Memo
from agent.match import Matcher
from agent.packs import Pack, Pattern
from agent.records import LineSplitter

CHUNK = 1 << 18
MAX_LINE = 64 * 1024

EXAMPLE_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class ExampleFailure:
    pattern: Pattern
    line: str
    expected: str
    actual: str


def check_examples(pack: Pack) -> tuple[int, list[ExampleFailure]]:
    """Every example of every pattern; returns (examples checked, failures)."""
    checked = 0
    failures: list[ExampleFailure] = []
    for pattern in pack.patterns:
        for example in pattern.examples:
            checked += 1
            try:
                found = pattern.regex.search(example.line, timeout=EXAMPLE_TIMEOUT)
            except TimeoutError:
                failures.append(
                    ExampleFailure(
                        pattern,
                        example.line,
                        "a result",
                        f"regex timed out after {EXAMPLE_TIMEOUT}s",
                    )
                )
                continue
            if not example.matches:
                if found is not None:
                    failures.append(
                        ExampleFailure(
                            pattern, example.line, "no match", f"matched {found.group(0)!r}"
                        )
                    )
                continue
            if found is None:
                failures.append(ExampleFailure(pattern, example.line, "a match", "no match"))
                continue
            fields = {k: v for k, v in found.groupdict().items() if v is not None}
            wanted = example.fields or {}
            wrong = {k: fields.get(k) for k, v in wanted.items() if fields.get(k) != v}
            if wrong:
                failures.append(
                    ExampleFailure(
                        pattern,
                        example.line,
                        json.dumps(wanted, sort_keys=True),
                        json.dumps(fields, sort_keys=True),
                    )
                )
    return checked, failures


def scan_logs(
    packs: list[Pack],
    logs: list[Path],
    timeout: float,
    engine: str = "auto",
    memo: Memo | None = None,
) -> dict[str, Any]:
    """Match every line of every log against every pattern; the --json document."""
    patterns = [p for pack in packs for p in pack.patterns]
    # the compile's memory apart: a large log keeps the process long enough to matter
    matcher = Matcher(patterns, timeout, engine, memo=memo or Memo(apart=True))
    files: list[dict[str, Any]] = []
    total_lines = 0
    for log_path in logs:
        matches: list[dict[str, Any]] = []
        splitter = LineSplitter(MAX_LINE)
        lines = 0
        with log_path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                block = splitter.feed(chunk)
                lines = _scan_block(matcher, block, lines, matches)
            lines = _scan_block(matcher, splitter.flush(), lines, matches)
        files.append({"path": str(log_path), "lines": lines, "matches": matches})
        total_lines += lines
    summary = [
        {
            "pack": p.pack,
            "pattern": p.id,
            "matches": s.matches,
            "seconds": round(s.seconds, 6),
            "timeouts": s.timeouts,
            "confirms": s.confirms,
        }
        for p, s in matcher.pattern_stats()
    ]
    return {
        "files": files,
        "patterns": rank_by_cost(summary, total_lines),
        "engine": matcher.engine,
        "ungated": [p.qualified for p in matcher.ungated],
    }


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


def _scan_block(matcher: Matcher, block: bytes, lines: int, out: list[dict[str, Any]]) -> int:
    """Append the block's matches with their line numbers; returns the lines counted so far."""
    counted_to = 0
    for start, _, hits in matcher.scan(block, MAX_LINE):
        lines += block.count(b"\n", counted_to, start)
        counted_to = start
        for pattern, fields in hits:
            out.append(
                {"line": lines + 1, "pack": pattern.pack, "pattern": pattern.id, "fields": fields}
            )
    return lines + block.count(b"\n", counted_to)


def print_examples(pack: Pack, checked: int, failures: list[ExampleFailure], out: TextIO) -> None:
    status = "ok" if not failures else "FAILED"
    print(
        f"{pack.name} {pack.version} ({pack.file}): {checked} example(s), "
        f"{len(failures)} failed: {status}",
        file=out,
    )
    for f in failures:
        print(
            f"  {f.pattern.id}: {f.line!r}\n    expected: {f.expected}\n    actual:   {f.actual}",
            file=out,
        )


def print_scan(report: dict[str, Any], out: TextIO) -> None:
    for file in report["files"]:
        print(
            f"{file['path']}: {file['lines']} line(s), {len(file['matches'])} match(es)", file=out
        )
        for m in file["matches"]:
            print(
                f"  line {m['line']}: {m['pack']}/{m['pattern']} {json.dumps(m['fields'])}",
                file=out,
            )
    print(
        "per pattern, costliest first (matches, tried on % of lines, µs per line, seconds,"
        " regex timeouts):",
        file=out,
    )
    for p in report["patterns"]:
        print(
            f"  {p['pack']}/{p['pattern']}: {p['matches']}  {100 * p['tried_share']:.1f}%"
            f"  {p['us_per_line']:.3f}µs  {p['seconds']:.6f}s  {p['timeouts']}",
            file=out,
        )
    for p in report["patterns"]:
        if p["costly"]:
            print(f"COSTLY {p['pack']}/{p['pattern']}: {p['costly']}", file=out)
