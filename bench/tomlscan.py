"""The TOML key-line scanner on hostile lines: time per character, so linearity shows.

Usage: python -m bench.tomlscan [--sizes 1000,10000,100000,1000000] [--old-sizes 1000,2000]

Each hostile line is scanned by the current `KeyLines` at every size, and by
the old regex scanner (copied below as the baseline) at the small sizes, in
the same run. A linear scanner keeps a flat time per character as the line
grows; the old one grows with the square or cube of the line's length.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable

from agent.tomlsrc import KeyLines

# the scanner before issue 11, verbatim but for names: the baseline
_OLD_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_OLD_ASSIGN = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)


def _old_split_dotted(text: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return [p.strip("\"'") for p in parts]


def old_keylines(text: str) -> dict[tuple[str | int, ...], int]:
    lines: dict[tuple[str | int, ...], int] = {}
    arrays: dict[tuple[str, ...], int] = {}
    current: tuple[str | int, ...] = ()
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        header = _OLD_HEADER.match(line)
        if header:
            names = _old_split_dotted(header.group(2))
            resolved: list[str | int] = []
            for i, name in enumerate(names):
                resolved.append(name)
                if i < len(names) - 1 and tuple(map(str, resolved)) in arrays:
                    resolved.append(arrays[tuple(map(str, resolved))] - 1)
            if header.group(1) == "[[":
                key = tuple(map(str, resolved))
                arrays[key] = arrays.get(key, 0) + 1
                resolved.append(arrays[key] - 1)
            current = tuple(resolved)
            lines.setdefault(current, number)
            continue
        assign = _OLD_ASSIGN.match(line)
        if assign:
            path = current + tuple(_old_split_dotted(assign.group(1)))
            lines.setdefault(path, number)
            rest = line[assign.end() :]
            for quote in ('"""', "'''"):
                if rest.count(quote) == 1:
                    in_multiline = quote
    return lines


def _fit(prefix: str, unit: str, suffix: str = "") -> Callable[[int], str]:
    def make(size: int) -> str:
        body = size - len(prefix) - len(suffix)
        return prefix + unit * (body // len(unit)) + suffix

    return make


HOSTILE: dict[str, Callable[[int], str]] = {
    "`[` and spaces (the report)": _fit("[", " "),
    "`[[` and spaces, then `x`": _fit("[[", " ", "x"),
    "`a = ` and `[` nested": _fit("a = ", "["),
    "dotted key `a.a.a…` with no `=`": _fit("a", ".a"),
    'unclosed `"` string of `\\"`': _fit('k = "', '\\"'),
    'unclosed `"""` string of `\\"""`': _fit('k = """', '\\"""'),
    "unclosed array of inline tables": _fit("x = [", "{a = [1, 's', '''t'''], b.c = 2}, "),
    "mixed `[ \" ' . = {`": _fit("", "[ \"' .= {"),
}


def best_of(scan: Callable[[str], object], text: str, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        scan(text)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--old-sizes", default="1000,2000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    old_sizes = [int(s) for s in args.old_sizes.split(",") if s]
    print("| hostile line | scanner | characters | time | ns per character |")
    print("|---|---|---:|---:|---:|")
    for name, make in HOSTILE.items():
        rows = [("new", size, best_of(KeyLines, make(size), 3)) for size in sizes]
        rows += [("old", size, best_of(old_keylines, make(size), 1)) for size in old_sizes]
        for scanner, size, seconds in rows:
            print(
                f"| {name} | {scanner} | {size:,} | {seconds:.4f} s | {seconds / size * 1e9:,.0f} |"
            )
    print("\nnew: best of 3; old: the regex scanner before issue 11, one run, in the same process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
