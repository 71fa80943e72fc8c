"""Required literals of a regex: strings a line must contain for the regex to match.

The prefilter looks for these in bulk and confirms only lines that contain them,
so a literal set must never be wrong: when in doubt, a pattern gets no
requirement and is tried on every line. The pattern is parsed with the standard
library's regex parser; any syntax where the `regex` module could read the
pattern differently (POSIX classes, fuzzy constraints, regex-only escapes and
flags) falls back to "no requirement".

A requirement is a conjunction of clauses; a clause is a set of literals of
which at least one must occur. Case-insensitive literals keep only ASCII
characters whose case partners are all ASCII (under `regex`'s simple case
folding, "i", "k" and "s" also match U+0130, U+212A and U+017F).
"""

from __future__ import annotations

import functools
import importlib
import re
import warnings
from dataclasses import dataclass
from typing import Any

_parser: Any = importlib.import_module("re._parser")
C: Any = importlib.import_module("re._constants")

MAX_EXACT = 32
MIN_LITERAL = 3
MAX_CLAUSES = 3
UNSAFE_FOLDING = frozenset("iksIKS")

Char = tuple[str, bool]  # (character, case-insensitive)
Seq = tuple[Char, ...]
Literal = tuple[str, bool]  # (text, case-insensitive); caseless text is lower-case ASCII

_REGEX_ONLY = re.compile(r"\[[:=.]")
_QUANTIFIER = re.compile(r"\{\d*(?:,\d*)?\}")


@dataclass(frozen=True, slots=True)
class Requirement:
    """Every clause must have at least one of its literals in the line; no clause: always try."""

    clauses: tuple[frozenset[Literal], ...]

    @property
    def always(self) -> bool:
        return not self.clauses


ALWAYS = Requirement(())


@dataclass(slots=True)
class _Info:
    exact: set[Seq] | None
    clauses: list[set[Seq]]


def _unescaped_braces_are_quantifiers(source: str) -> bool:
    """A "{" that the stdlib parser would read as a literal may be fuzzy syntax for `regex`."""
    i = 0
    while i < len(source):
        ch = source[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{" and not _QUANTIFIER.match(source, i):
            return False
        i += 1
    return True


def parsable(source: str) -> bool:
    """Whether the standard library's parser reads `source` as `regex` does: no POSIX
    class, no fuzzy constraint (a "{" that is no quantifier), no white space that only
    `regex` skips in verbose mode (U+001C..U+001F, U+0085, U+00A0, U+2028, ...)."""
    return (
        not _REGEX_ONLY.search(source)
        and _unescaped_braces_are_quantifiers(source)
        and not any(c.isspace() and c not in _STDLIB_SPACE for c in source)
    )


_STDLIB_SPACE = " \t\n\r\v\f"  # what the stdlib parser skips in verbose mode


def parse(source: str) -> Any | None:
    """The standard library's parse of `source` where it reads it as `regex` does (no
    warning either: a "possible nested set" is one it may not); else None."""
    if not parsable(source):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return _parser.parse(source)
    except (re.error, Warning, RecursionError, OverflowError, ValueError):
        return None


@functools.lru_cache(maxsize=65536)
def requirement(source: str, minimum: int = MIN_LITERAL) -> Requirement:
    """The literals any match of `source` must contain, or ALWAYS when unsure; each
    clause's shortest literal is at least `minimum` characters (shorter ones gate
    little in bulk, but can sort the few lines a shape let through)."""
    parsed = parse(source)
    if parsed is None:
        return ALWAYS
    icase = bool(parsed.state.flags & C.SRE_FLAG_IGNORECASE)
    info = _sequence(list(parsed), icase)
    candidates = [*info.clauses]
    if info.exact is not None:
        candidates.append(info.exact)
    scored = []
    for clause in candidates:
        if any(
            ("\0" in text or "\ufffd" in text)
            for text in ("".join(c for c, _ in seq) for seq in clause)
        ):
            # Hyperscan's literal mode stops at a NUL; U+FFFD is what bytes that are not
            # UTF-8 decode to, and the raw line does not hold it: neither gates anything
            continue
        literals = frozenset(_best_piece(seq) for seq in clause)
        quality = min((len(text) for text, _ in literals), default=0)
        if quality >= minimum:
            scored.append((quality, -len(literals), literals))
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    unique: list[frozenset[Literal]] = []
    for _, _, literals in scored:
        if literals not in unique:
            unique.append(literals)
    return Requirement(tuple(unique[:MAX_CLAUSES]))


def _best_piece(seq: Seq) -> Literal:
    """The longest contiguous run of `seq` the prefilter can search for exactly."""
    best: Literal = ("", False)
    run: list[str] = []
    run_icase = False

    def close() -> None:
        nonlocal best
        text = "".join(run)
        if len(text) > len(best[0]) or (len(text) == len(best[0]) and best[1] and not run_icase):
            best = (text, run_icase)
        run.clear()

    for ch, icase in seq:
        usable = not icase or (ch.isascii() and ch not in UNSAFE_FOLDING)
        if not usable or (run and icase != run_icase):
            close()
        if usable:
            if not run:
                run_icase = icase
            run.append(ch.lower() if icase else ch)
    close()
    return best


def _sequence(items: list[tuple[Any, Any]], icase: bool) -> _Info:
    running: set[Seq] | None = {()}
    clauses: list[set[Seq]] = []
    exact = True
    for op, av in items:
        child = _node(op, av, icase)
        clauses.extend(child.clauses)
        if child.exact is None:
            exact = False
            if running and running != {()}:
                clauses.append(running)
            running = {()}
            continue
        assert running is not None
        product = {a + b for a in running for b in child.exact}
        if len(product) > MAX_EXACT:
            exact = False
            if running != {()}:
                clauses.append(running)
            running = set(child.exact)
        else:
            running = product
    if exact:
        return _Info(running, clauses)
    if running and running != {()}:
        clauses.append(running)
    return _Info(None, clauses)


def _best_clause(info: _Info) -> set[Seq] | None:
    options = [*info.clauses]
    if info.exact is not None:
        options.append(info.exact)
    best = None
    best_quality = 0
    for clause in options:
        quality = min((len(_best_piece(seq)[0]) for seq in clause), default=0)
        if quality > best_quality:
            best, best_quality = clause, quality
    return best


def _alternation(branches: list[_Info]) -> _Info:
    if all(b.exact is not None for b in branches):
        union: set[Seq] = set().union(*(b.exact for b in branches if b.exact is not None))
        if len(union) <= MAX_EXACT:
            return _Info(union, [])
    clause: set[Seq] = set()
    for branch in branches:
        best = _best_clause(branch)
        if best is None:
            return _Info(None, [])
        clause |= best
    return _Info(None, [clause])


def _node(op: Any, av: Any, icase: bool) -> _Info:
    if op is C.LITERAL:
        return _Info({((chr(av), icase),)}, [])
    if op in (C.AT, C.ASSERT, C.ASSERT_NOT):
        return _Info({()}, [])
    if op is C.SUBPATTERN:
        _, add, remove, sub = av
        if add & C.SRE_FLAG_IGNORECASE:
            icase = True
        if remove & C.SRE_FLAG_IGNORECASE:
            icase = False
        return _sequence(list(sub), icase)
    if op is C.ATOMIC_GROUP:
        return _sequence(list(av), icase)
    if op is C.BRANCH:
        return _alternation([_sequence(list(b), icase) for b in av[1]])
    if op is C.GROUPREF_EXISTS:
        _, yes, no = av
        return _alternation(
            [_sequence(list(yes), icase), _sequence(list(no), icase) if no else _Info({()}, [])]
        )
    if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
        low, high, sub = av
        child = _sequence(list(sub), icase)
        if low == 0:
            if high == 1 and child.exact is not None:
                return _Info(child.exact | {()}, [])
            return _Info(None, [])
        if low == high and child.exact is not None and len(child.exact) ** low <= MAX_EXACT:
            result: set[Seq] = {()}
            for _ in range(low):
                result = {a + b for a in result for b in child.exact}
            return _Info(result, [])
        clauses = [*child.clauses]
        if child.exact is not None:
            clauses.append(child.exact)
        return _Info(None, clauses)
    if op is C.IN:
        return _Info(_class_chars(av, icase), [])
    return _Info(None, [])


def _class_chars(items: list[tuple[Any, Any]], icase: bool) -> set[Seq] | None:
    chars: set[Seq] = set()
    for op, av in items:
        if op is C.LITERAL:
            chars.add(((chr(av), icase),))
        elif op is C.RANGE and av[1] - av[0] < 8:
            chars.update(((chr(c), icase),) for c in range(av[0], av[1] + 1))
        else:
            return None
        if len(chars) > 8:
            return None
    return chars
