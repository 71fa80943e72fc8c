"""Errors no pack knows yet: lines that look like errors, grouped into templates.

The gate is cheap and per block, not per line: the error words are searched for
in the whole block at once (`bytes.find` on the lowered block), and only the lines
holding one are decoded, their variable parts masked and grouped by Drain
(agent.drain). A line that looks like no error costs nothing beyond the search;
the agent also leaves out the lines a pattern matched.

`logmend discover --log FILE` mines a file offline, for a team bootstrapping a
pack: each template with its count, the numbers of its lines and a few redacted
samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.derived import Memo
from agent.drain import Drain, Template
from agent.records import LineSplitter, decode_line

# the words an error line holds, matched without regard to case; a source may give its own
ERROR_WORDS = (
    "error",
    "fatal",
    "critical",
    "panic",
    "severe",
    "emerg",
    "exception",
    "traceback",
    "failed",
    "failure",
    "cannot",
    "can't",
    "unable to",
    "denied",
    "refused",
    "timed out",
    "timeout",
)
MAX_LINE_NUMBERS = 1000  # per template, offline: the rest are counted, not listed


class ErrorGate:
    """Which lines of a block hold an error word: their start offsets. With Hyperscan,
    one caseless literal scan of the block (0.1 ms for 256 KiB); else `bytes.find` per
    word on the lowered block (4 ms)."""

    def __init__(self, words: Iterable[str] = ERROR_WORDS, memo: Memo | None = None) -> None:
        self.words = tuple(sorted({w.lower().encode() for w in words if w}))
        self._database = _caseless_database(self.words, memo)

    def lines(self, block: bytes) -> list[int]:
        if self._database is not None:
            return self._scanned(block)
        lowered = block.lower()
        starts: set[int] = set()
        for word in self.words:
            at = lowered.find(word)
            while at >= 0:
                start = lowered.rfind(b"\n", 0, at) + 1
                starts.add(start)
                end = lowered.find(b"\n", at)
                if end < 0:
                    break
                at = lowered.find(word, end)  # the rest of this line is already in
        return sorted(starts)

    def _scanned(self, block: bytes) -> list[int]:
        starts: list[int] = [-1]
        line = [-1, -1, 0]  # the last line found, [start, end), and whether out of order

        def found(index: int, start: int, end: int, flags: int, context: object) -> None:
            if line[0] < end <= line[1]:
                return  # another word of the same line
            line[0] = block.rfind(b"\n", 0, end) + 1
            line[1] = block.find(b"\n", end - 1)
            if line[1] < 0:
                line[1] = len(block)
            if line[0] <= starts[-1]:
                line[2] = 1
            starts.append(line[0])

        self._database.scan(block, match_event_handler=found)
        # matches come in the order of their ends, so the starts do; were they not,
        # nothing is lost or doubled
        return sorted(set(starts[1:])) if line[2] else starts[1:]


def _caseless_database(words: tuple[bytes, ...], memo: Memo | None = None) -> Any:
    """The words as one Hyperscan literal database, caseless; None without Hyperscan.
    With the agent's memo, built apart and kept (agent.hscompile), as the matcher's
    databases are: the agent's heap never holds the compiler's working memory."""
    try:
        import hyperscan
    except ImportError:  # pragma: no cover - exercised where the wheel is missing
        return None
    if not words:
        return None
    if memo is not None:
        from agent import hscompile

        flags = [hyperscan.HS_FLAG_CASELESS] * len(words)
        try:
            return hscompile.kept_or_built(memo, list(words), flags, literal=True)
        except (hscompile.Refused, OSError, hyperscan.error):
            pass  # built here instead, as without a memo
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    database.compile(
        expressions=list(words),
        ids=list(range(len(words))),
        elements=len(words),
        flags=[hyperscan.HS_FLAG_CASELESS] * len(words),
        literal=True,
    )
    return database


def all_lines(block: bytes) -> Iterator[int]:
    start = 0
    while start < len(block):
        yield start
        end = block.find(b"\n", start)
        if end < 0:
            return
        start = end + 1


@dataclass
class Mined:
    """A template as `discover` reports it: Drain's, with the numbers of its lines."""

    template: Template
    lines: list[int] = field(default_factory=list)
    text: str = ""  # the template's text, redacted (set as it is reported)

    def to_json(self) -> dict[str, Any]:
        return {
            "template": self.text,
            "count": self.template.count,
            "lines": self.lines,
            "samples": self.template.samples,
        }


def discover(
    paths: Iterable[Path],
    every_line: bool = False,
    words: Iterable[str] = ERROR_WORDS,
    max_templates: int = 10_000,
    max_line: int = 64 * 1024,
) -> tuple[list[Mined], int, int]:
    """(templates by count, lines read, lines grouped) of the files, read in blocks
    (never whole); line numbers count from 1 in each file."""
    from agent.redact import Redactor

    drain = Drain(max_templates=max_templates, redact=Redactor())
    gate = ErrorGate(words)
    mined: dict[int, Mined] = {}
    read = grouped = 0
    for path in paths:
        number = 0  # lines before the block
        with path.open("rb") as handle:
            for block in _blocks(handle, max_line):
                starts = all_lines(block) if every_line else iter(gate.lines(block))
                counted, at = number, 0
                for start in starts:
                    counted += block.count(b"\n", at, start)
                    at = start
                    end = block.find(b"\n", start)
                    text = decode_line(block, start, end if end >= 0 else len(block), max_line)
                    template = drain.add(text)
                    entry = mined.setdefault(template.id, Mined(template))
                    if len(entry.lines) < MAX_LINE_NUMBERS:
                        entry.lines.append(counted + 1)
                    grouped += 1
                number += block.count(b"\n") + (0 if block.endswith(b"\n") or not block else 1)
        read += number
    kept = [m for m in mined.values() if m.template.id in drain.templates]
    redact = drain.redact or str
    for m in kept:
        m.text = redact(m.template.text)
    kept.sort(key=lambda m: (-m.template.count, m.template.id))
    return kept, read, grouped


def _blocks(handle: Any, max_line: int) -> Iterator[bytes]:
    splitter = LineSplitter(max_line)
    for chunk in iter(lambda: handle.read(1 << 18), b""):
        yield splitter.feed(chunk)
    yield splitter.flush()
