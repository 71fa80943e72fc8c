"""The multi-pattern matcher: a literal prefilter in bulk, `regex` to confirm.

Each pattern's required literals (agent.literals) are searched for in a whole
block of lines at once: with Hyperscan where it is installed (gigabytes per
second, cost nearly flat in the number of literals), else with `bytes.find`
per literal. Only lines holding every clause of a pattern's requirement are
decoded and confirmed with the pattern's `regex`, under its timeout. Lines
that hold no literal cost nothing in Python: no split, no decode, no object.
A pattern with no literal is gated by its shape (agent.shapes): the whole
pattern as a Hyperscan prefilter expression, or, without Hyperscan, the fixed
prefix an anchored one starts with. What is derived from the patterns comes
from the memo (agent.derived) when an earlier start kept it.

The answers are exactly those of trying every pattern in turn with
`regex.search` on every line; the prefilter only skips lines that cannot match.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from agent import hscompile
from agent.derived import Memo
from agent.literals import MIN_LITERAL, Literal, Requirement, requirement
from agent.packs import Pattern
from agent.records import decode_line, split_block
from agent.shapes import anchored_prefix, prefilter_expression

Hit = tuple[Pattern, dict[str, str]]
LineHits = tuple[int, str, list[Hit]]  # (offset of the line in the block, its text, hits)
_NO_HITS: tuple[Hit, ...] = ()
_NL = b"\n"

_hs: Any
try:
    import hyperscan as _hs
except ImportError:  # pragma: no cover - exercised where the wheel is missing
    _hs = None

ENGINES = ("hyperscan", "python")


def available_engines() -> tuple[str, ...]:
    return ENGINES if _hs is not None else ("python",)


@dataclass
class PatternStats:
    matches: int = 0
    confirms: int = 0
    timeouts: int = 0
    seconds: float = 0.0
    quarantined: bool = False
    error: str = ""  # why its regex could not be compiled when first needed
    ignored: int = 0  # lines it matched that its `ignore` regexes took back


class _Scanner:
    """Finds every occurrence of a set of literals in a block: (literal id, end offset)."""

    def __init__(self, literals: list[Literal]) -> None:
        self.literals = literals

    def find(self, block: bytes) -> list[tuple[int, int]]:
        raise NotImplementedError


class _PythonScanner(_Scanner):
    def __init__(self, literals: list[Literal]) -> None:
        super().__init__(literals)
        self._needles = [(i, text.encode(), icase) for i, (text, icase) in enumerate(literals)]
        self._any_icase = any(icase for _, _, icase in self._needles)

    def find(self, block: bytes) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        lowered = block.lower() if self._any_icase else block
        for index, needle, icase in self._needles:
            hay = lowered if icase else block
            at = hay.find(needle)
            size = len(needle)
            while at >= 0:
                found.append((index, at + size))
                at = hay.find(needle, at + 1)
        return found


class _HyperscanScanner(_Scanner):
    def __init__(self, literals: list[Literal], memo: Memo) -> None:
        super().__init__(literals)
        assert _hs is not None
        self._db = hscompile.kept_or_built(
            memo,
            [text.encode() for text, _ in literals],
            [_hs.HS_FLAG_CASELESS if icase else 0 for _, icase in literals],
            literal=True,
        )

    def find(self, block: bytes) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        append = found.append

        def on_match(index: int, start: int, end: int, flags: int, context: object) -> None:
            append((index, end))

        self._db.scan(block, match_event_handler=on_match)
        return found


class _NoScanner(_Scanner):
    def find(self, block: bytes) -> list[tuple[int, int]]:
        return []


class _ShapeScanner:
    """Patterns with no literal, as Hyperscan prefilter expressions (agent.shapes): the
    lines where each may match, and every line that is not ASCII."""

    def __init__(self, patterns: list[int], database: Any) -> None:
        self.patterns = patterns  # the pattern of each expression id; NOT_ASCII's id follows
        self._db = database

    def lines(self, block: bytes) -> dict[int, set[int]]:
        """Line start -> the patterns that may match in it (all of them, where not ASCII)."""
        per_line: dict[int, set[int]] = {}
        patterns = self.patterns
        everyone = len(patterns)
        rfind = block.rfind

        def on_match(index: int, start: int, end: int, flags: int, context: object) -> None:
            line = rfind(_NL, 0, end) + 1
            if index == everyone:
                per_line[line] = set(patterns)
            else:
                per_line.setdefault(line, set()).add(patterns[index])

        self._db.scan(block, match_event_handler=on_match)
        return per_line


_NOT_ASCII = re.compile(rb"[\x80-\xff][^\n]*").finditer


Checks = tuple[tuple[tuple[bytes, bool], ...], ...]  # clauses of (literal, caseless)


def _holds(checks: Checks, raw: bytes) -> bool:
    """Every clause has one of its literals in the line (lower-cased only if one asks)."""
    lowered: bytes | None = None
    for clause in checks:
        for needle, icase in clause:
            if icase:
                if lowered is None:
                    lowered = raw.lower()
                if needle in lowered:
                    break
            elif needle in raw:
                break
        else:
            return False  # no literal of this clause is in the line
    return True


class _PrefixGate:
    """The pure-Python engine's gate for patterns with no literal: the fixed run of byte
    classes each anchored one starts with (agent.shapes.anchored_prefix), all tried at
    once at every line start by one `re`, then each on the few lines that pass, with
    the short literals (two characters: `ms`, a code) the pattern requires."""

    def __init__(self, gates: list[tuple[int, bytes, Checks]]) -> None:
        self.patterns = [p for p, _, _ in gates]
        union = b"(?:" + b"|".join(prefix for _, prefix, _ in gates) + b")"
        self._first = re.compile(union).match
        # led by the newline: `re` jumps from newline to newline (a literal prefix) instead
        # of trying every byte
        self._after_newline = re.compile(b"\n" + union).finditer
        self._gates = [(p, re.compile(prefix).match, checks) for p, prefix, checks in gates]

    def lines(self, block: bytes) -> dict[int, set[int]]:
        """Line start -> the patterns whose prefix the line starts with (all of them, where
        the line is not ASCII)."""
        gates = self._gates
        starts = [0] if self._first(block) else []
        starts.extend(found.start() + 1 for found in self._after_newline(block))
        per_line: dict[int, set[int]] = {}
        for start in starts:
            raw: bytes | None = None
            chosen = set()
            for p, match, checks in gates:
                if not match(block, start):
                    continue
                if checks:
                    if raw is None:
                        end = block.find(_NL, start)
                        raw = block[start : end if end >= 0 else len(block)]
                    if not _holds(checks, raw):
                        continue
                chosen.add(p)
            if chosen:
                per_line[start] = chosen
        if not block.isascii():
            rfind = block.rfind
            for found in _NOT_ASCII(block):
                per_line[rfind(_NL, 0, found.start()) + 1] = set(self.patterns)
        return per_line


def _is_requirement(value: Any) -> bool:
    return isinstance(value, tuple) and all(
        isinstance(clause, tuple)
        and clause
        and all(
            isinstance(lit, tuple)
            and len(lit) == 2
            and isinstance(lit[0], str)
            and lit[0]
            and isinstance(lit[1], bool)
            for lit in clause
        )
        for clause in value
    )


SHORT_LITERAL = 2  # what the prefix gate checks after the prefix


def _as_checks(clauses: Iterable[frozenset[Literal]]) -> Checks:
    return tuple(tuple((t.encode(), icase) for t, icase in clause) for clause in clauses)


def _requirement(memo: Memo, source: str, minimum: int = MIN_LITERAL) -> Requirement:
    kind = "requirement" if minimum == MIN_LITERAL else f"requirement{minimum}"
    kept = memo.get(kind, source, _is_requirement)
    if kept is not None:
        return Requirement(tuple(frozenset((t, bool(i)) for t, i in c) for c in kept))
    need = requirement(source, minimum)
    memo.put(kind, source, [sorted(clause) for clause in need.clauses])
    return need


_UNKNOWN = object()


def _expression(
    memo: Memo, kind: str, source: str, derive: Callable[[str], bytes | None]
) -> bytes | None:
    """A shape or prefix expression of `source` (None: it has none), from the memo if kept."""
    kept = memo.get(kind, source, lambda v: v is None or isinstance(v, bytes), _UNKNOWN)
    if kept is _UNKNOWN:
        kept = derive(source)
        memo.put(kind, source, kept)
    assert kept is None or isinstance(kept, bytes)
    return kept


class Matcher:
    """Matches blocks of lines (or single records) against a set of patterns."""

    def __init__(
        self,
        patterns: Sequence[Pattern],
        timeout: float,
        engine: str = "auto",
        max_timeouts: int = 0,
        clock: Callable[[], float] = time.perf_counter,
        memo: Memo | None = None,
    ) -> None:
        self.patterns = tuple(patterns)
        self.timeout = timeout
        self.max_timeouts = max_timeouts
        self.clock = clock
        self.stats = [PatternStats() for _ in self.patterns]
        self.quarantined: list[Pattern] = []
        memo = memo or Memo()
        if engine == "auto":
            engine = available_engines()[0]
        if engine not in available_engines():
            raise ValueError(f"matcher engine {engine!r} is not available here")
        needs = [_requirement(memo, p.source) for p in self.patterns]
        prefixes: dict[int, bytes | None] = {}
        if engine == "python":  # no shape prefilter: short literals gate what no prefix does
            for index, need in enumerate(needs):
                if need.always:
                    source = self.patterns[index].source
                    prefixes[index] = _expression(memo, "prefix", source, anchored_prefix)
                    if prefixes[index] is None:
                        needs[index] = _requirement(memo, source, SHORT_LITERAL)
        usage: dict[Literal, int] = {}
        for need in needs:
            for lit in {lit for clause in need.clauses for lit in clause}:
                usage[lit] = usage.get(lit, 0) + 1
        literals: dict[Literal, int] = {}
        by_literal: list[list[int]] = []
        checks: list[Checks] = []
        always: list[int] = []
        for index, need in enumerate(needs):
            if need.always:
                always.append(index)
                checks.append(())
                continue
            # the scanner looks for the clause fewest patterns share; the others are checked
            # on the few lines it finds
            anchor = min(
                need.clauses,
                key=lambda c: (max(usage[lit] for lit in c), -min(len(t) for t, _ in c)),
            )
            for lit in anchor:
                if lit not in literals:
                    literals[lit] = len(literals)
                    by_literal.append([])
                by_literal[literals[lit]].append(index)
            checks.append(_as_checks(c for c in need.clauses if c is not anchor))
        self._checks = checks
        self._all_records = tuple(always)  # match(): a record is confirmed for each
        self._shapes = self._shape_gate(engine, always, prefixes, memo) if always else None
        shaped = self._shapes.patterns if self._shapes is not None else []
        self.shaped = tuple(shaped)  # no literal, gated by their shape or anchored prefix
        self._always = tuple(sorted(set(always) - set(shaped)))
        self._by_literal = [tuple(p) for p in by_literal]
        ordered = list(literals)  # insertion order is id order
        self._lengths = [len(text.encode()) for text, _ in ordered]
        self.engine = engine
        scanner: _Scanner
        if not ordered:
            scanner = _NoScanner([])
        elif engine == "hyperscan":
            scanner = _HyperscanScanner(ordered, memo)
        else:
            scanner = _PythonScanner(ordered)
        self._find = scanner.find

    def _shape_gate(
        self, engine: str, always: list[int], prefixes: dict[int, bytes | None], memo: Memo
    ) -> _ShapeScanner | _PrefixGate | None:
        """What keeps patterns with no literal off most lines: their shape in Hyperscan,
        else their anchored prefix (`prefixes`); those it cannot take stay on every line."""
        sources = [(i, self.patterns[i].source) for i in always]
        if engine == "hyperscan":
            shapes = [(i, _expression(memo, "shape", s, prefilter_expression)) for i, s in sources]
            candidates = [(i, e) for i, e in shapes if e is not None]
            if not candidates:
                return None
            taken, database = hscompile.shapes_database(memo, [e for _, e in candidates])
            shaped = [i for (i, _), ok in zip(candidates, taken, strict=True) if ok]
            return _ShapeScanner(shaped, database) if shaped else None
        gated: list[tuple[int, bytes, Checks]] = []
        for i, source in sources:
            prefix = prefixes[i]
            if prefix is not None:
                short = _requirement(memo, source, SHORT_LITERAL)
                gated.append((i, prefix, _as_checks(short.clauses)))
        return _PrefixGate(gated) if gated else None

    # -- the hot path ---------------------------------------------------------------
    def scan(self, block: bytes, max_line: int = 1 << 30) -> list[LineHits]:
        """Lines of `block` (each ending in a newline) that match, in order, with their hits."""
        found = self._find(block) if self._by_literal else []
        shaped = self._shapes.lines(block) if self._shapes is not None else {}
        out: list[LineHits] = []
        if self._always:
            return self._scan_all(block, found, max_line, shaped)
        if not found and not shaped:
            return out
        per_line = self._group(block, found) if found else {}
        for start in sorted(per_line.keys() | shaped.keys()) if shaped else sorted(per_line):
            end = block.find(_NL, start)
            if end < 0:
                end = len(block)
            present = per_line.get(start)
            candidates = self._candidates(present, block[start:end]) if present else []
            if shaped and start in shaped:
                candidates = sorted(shaped[start].union(candidates))
            if candidates:
                text = decode_line(block, start, end, max_line)
                hits = self._confirm(text, candidates)
                if hits:
                    out.append((start, text, hits))
        return out

    def match(self, text: str) -> Sequence[Hit]:
        """The hits of one record (a line or a multiline event)."""
        candidates: Sequence[int]
        if self._by_literal:
            raw = text.encode("utf-8", "surrogatepass")
            found = self._find(raw)
            candidates = self._candidates({lit for lit, _ in found}, raw) if found else ()
        else:
            candidates = ()
        if self._all_records:
            candidates = sorted(set(candidates).union(self._all_records))
        if not candidates:
            return _NO_HITS
        return self._confirm(text, candidates) or _NO_HITS

    # -- helpers ----------------------------------------------------------------------
    def _group(self, block: bytes, found: list[tuple[int, int]]) -> dict[int, set[int]]:
        per_line: dict[int, set[int]] = {}
        lengths = self._lengths
        line_start = line_end = -1
        for lit, end in found:
            begin = end - lengths[lit]
            if not line_start <= begin < line_end:
                line_start = block.rfind(_NL, 0, begin) + 1
                line_end = block.find(_NL, begin)
                if line_end < 0:
                    line_end = len(block)
            if end > line_end:
                continue  # a literal that crosses a line break is in no line
            seen = per_line.get(line_start)
            if seen is None:
                per_line[line_start] = {lit}
            else:
                seen.add(lit)
        return per_line

    def _candidates(self, present: set[int], raw: bytes) -> list[int]:
        """Patterns whose anchor literal is in the line and whose other clauses hold too."""
        by_literal = self._by_literal
        chosen: set[int] = set()
        for lit in present:
            chosen.update(by_literal[lit])
        checks = self._checks
        return [index for index in sorted(chosen) if _holds(checks[index], raw)]

    def _timed_out(self, pattern: Pattern, stats: PatternStats) -> None:
        """Counted; past max_timeouts the pattern is quarantined (and its owner told)."""
        stats.timeouts += 1
        if self.max_timeouts and stats.timeouts >= self.max_timeouts and not stats.quarantined:
            stats.quarantined = True
            self.quarantined.append(pattern)

    def _ignored(self, pattern: Pattern, text: str, stats: PatternStats) -> bool:
        """Whether one of the pattern's `ignore` regexes takes back a line it matched.
        One that runs past the timeout (or cannot compile here) takes nothing back: an
        ignore rule fails toward telling."""
        for rule in pattern.ignore:
            try:
                if rule.get().search(text, timeout=self.timeout) is not None:
                    return True
            except TimeoutError:
                self._timed_out(pattern, stats)  # its rules are the pattern's cost
            except Exception as exc:  # it compiled at an earlier start; here it cannot
                stats.error = f"ignore {rule.source!r}: {type(exc).__name__}: {exc}"
        return False

    def _confirm(self, text: str, candidates: Sequence[int]) -> list[Hit]:
        hits: list[Hit] = []
        timeout = self.timeout
        clock = self.clock
        for index in candidates:
            stats = self.stats[index]
            if stats.quarantined:
                continue
            pattern = self.patterns[index]
            try:
                search = pattern.regex.search  # compiled on first use (agent.packs.LazyRegex)
            except Exception as exc:  # it compiled at an earlier start; here it cannot
                stats.error = f"{type(exc).__name__}: {exc}"
                stats.quarantined = True
                self.quarantined.append(pattern)
                continue
            started = clock()
            try:
                found = search(text, timeout=timeout)
            except TimeoutError:
                found = None
                self._timed_out(pattern, stats)
            if found is not None and pattern.ignore and self._ignored(pattern, text, stats):
                found = None
                stats.ignored += 1
            stats.seconds += clock() - started
            stats.confirms += 1
            if found is not None:
                stats.matches += 1
                hits.append(
                    (pattern, {k: v for k, v in found.groupdict().items() if v is not None})
                )
        return hits

    def _scan_all(
        self,
        block: bytes,
        found: list[tuple[int, int]],
        max_line: int,
        shaped: dict[int, set[int]],
    ) -> list[LineHits]:
        """Some pattern has no usable literal nor shape: every line is confirmed for it."""
        per_line = self._group(block, found) if found else {}
        out: list[LineHits] = []
        always = set(self._always)
        start = 0
        for raw in split_block(block):
            present = per_line.get(start)
            candidates = sorted(
                always.union(
                    self._candidates(present, raw) if present else (), shaped.get(start, ())
                )
            )
            text = decode_line(raw, 0, len(raw), max_line)
            hits = self._confirm(text, candidates)
            if hits:
                out.append((start, text, hits))
            start += len(raw) + 1
        return out

    @property
    def ungated(self) -> tuple[Pattern, ...]:
        """The patterns no prefilter gates: confirmed by `regex` on every line."""
        return tuple(self.patterns[i] for i in self._always)

    def explains(self, texts: Sequence[str]) -> list[Pattern | None]:
        """The first pattern that matches each text, counted in no statistic: whether a
        newly loaded pattern now explains an unknown error's samples."""
        saved = [replace(s) for s in self.stats]
        quarantined = list(self.quarantined)
        try:
            return [next((p for p, _ in self.match(t)), None) for t in texts]
        finally:
            self.stats, self.quarantined = saved, quarantined

    def pattern_stats(self) -> Iterator[tuple[Pattern, PatternStats]]:
        return zip(self.patterns, self.stats, strict=True)
