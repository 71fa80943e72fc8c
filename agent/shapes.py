"""A pattern with no required literal, as a prefilter expression for Hyperscan.

A pattern matched by its shape (`^\\d{10} \\S+ \\d{3} \\d+$`, a UUID-led line,
`key=value` runs) has no literal for the literal prefilter to find, so it was
confirmed with `regex` on every line. Here it becomes an expression Hyperscan can
scan a whole block for: one that matches every ASCII line the pattern matches,
perhaps more (the confirm decides), never fewer.

It is rebuilt from the standard library's parse of the pattern (agent.literals
refuses the syntax `regex` could read differently), not passed through: each
single-character item becomes the exact byte class of the ASCII characters that
`regex` itself matches with it under the pattern's flags (so `\\s` keeps the
information separators U+001C..U+001F, `(?i)s` keeps what case folding makes of
it), repeats and groups keep their structure, and what Hyperscan cannot do
(lookarounds, backreferences, conditionals) is widened: a lookaround is
dropped, a backreference becomes "anything on the line". Lines that are not
ASCII are confirmed for every such pattern (the matcher flags them): there a
byte is not a character.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import regex

from agent.literals import parse

C: Any = importlib.import_module("re._constants")

MAX_BOUND = 100  # a counted repeat past this is widened to "any number"
_FLAGS = (
    (C.SRE_FLAG_IGNORECASE, regex.IGNORECASE),
    (C.SRE_FLAG_DOTALL, regex.DOTALL),
    (C.SRE_FLAG_ASCII, regex.ASCII),
)
_CATEGORIES = {
    C.CATEGORY_DIGIT: r"\d",
    C.CATEGORY_NOT_DIGIT: r"\D",
    C.CATEGORY_SPACE: r"\s",
    C.CATEGORY_NOT_SPACE: r"\S",
    C.CATEGORY_WORD: r"\w",
    C.CATEGORY_NOT_WORD: r"\W",
}
# A line's start is kept; its end and word boundaries are widened away: a record may be
# the line cut at max_line bytes or without its CR, where they need not hold in the block.
_ANCHORS = {
    C.AT_BEGINNING: "^",
    C.AT_BEGINNING_STRING: "^",
    C.AT_END: "",
    C.AT_END_STRING: "",
    C.AT_BOUNDARY: "",
    C.AT_NON_BOUNDARY: "",
}
# After the pattern, the rest of its line: one event per matching line, at its end.
TO_LINE_END = "[^\\n]*$"


class Unsure(Exception):
    """A construct this translation does not know: the pattern stays confirmed on every
    line."""


@functools.lru_cache(maxsize=65536)
def prefilter_expression(source: str) -> bytes | None:
    """A Hyperscan expression (for HS_FLAG_PREFILTER | HS_FLAG_MULTILINE) that matches,
    once, at the end of every ASCII line `source` matches in; None when unsure, or when
    the pattern can match an empty string (then it matches every line anyway)."""
    parsed = parse(source)
    try:
        if parsed is None or parsed.getwidth()[0] == 0:
            return None
        return ("(?:" + _emit(list(parsed), parsed.state.flags) + ")" + TO_LINE_END).encode()
    except (Unsure, RecursionError, OverflowError):
        return None


MAX_PREFIX = 64  # byte classes an anchored prefix keeps at most
_REPEATS = (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT)
_STARTS = (C.AT_BEGINNING, C.AT_BEGINNING_STRING)


@functools.lru_cache(maxsize=65536)
def anchored_prefix(source: str) -> bytes | None:
    """For the pure-Python engine: a `re` expression over bytes that every line `source`
    matches in matches at the line's start (re.MULTILINE), or None.

    It is the fixed run of single characters an anchored pattern starts with
    (`^\\d{10} ` gives ten digit classes and a space), as byte classes: each is tried
    once at each line start and never backtracks, so a hostile line cannot make it
    slow. It holds for ASCII lines only (the matcher confirms every line that is not:
    there a byte is not a character).
    """
    parsed = parse(source)
    if parsed is None:
        return None
    classes: list[str] = []
    anchored = [False]
    try:
        _prefix(list(parsed), parsed.state.flags, classes, anchored)
    except (Unsure, RecursionError, OverflowError):
        return None
    if not anchored[0] or not classes:
        return None
    return "".join(classes).encode()


def _prefix(items: list[tuple[Any, Any]], flags: int, out: list[str], anchored: list[bool]) -> bool:
    """Append the classes every match starts with; False where a variable item stops it."""
    for op, av in items:
        if len(out) >= MAX_PREFIX:
            return False
        if op in (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN):
            if not anchored[0]:
                raise Unsure("a character before the anchor")
            out.append(_byte_class(_atom(op, av), _regex_flags(flags)))
        elif op is C.AT:
            if av in _STARTS:
                if out:
                    return False  # a start after characters: matches nothing on one line
                anchored[0] = True
            elif av not in (C.AT_BOUNDARY, C.AT_NON_BOUNDARY):
                return False  # an end: nothing is sure after it
        elif op is C.SUBPATTERN:
            _, add, remove, body = av
            if not _prefix(list(body), (flags | add) & ~remove, out, anchored):
                return False
        elif op is C.ATOMIC_GROUP:
            if not _prefix(list(av), flags, out, anchored):
                return False
        elif op in _REPEATS:
            low, high, body = av
            for _ in range(min(low, MAX_PREFIX)):
                if not _prefix(list(body), flags, out, anchored):
                    return False
            if high != low:
                return False
        elif op not in (C.ASSERT, C.ASSERT_NOT):  # a lookaround is widened away
            return False  # alternation, backreference: the run ends here
    return True


def _emit(items: list[tuple[Any, Any]], flags: int) -> str:
    out: list[str] = []
    for op, av in items:
        if op in (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN):
            out.append(_byte_class(_atom(op, av), _regex_flags(flags)))
        elif op is C.AT:
            if av not in _ANCHORS:
                raise Unsure(str(av))
            out.append(_ANCHORS[av])
        elif op is C.SUBPATTERN:
            _, add, remove, body = av
            out.append("(?:" + _emit(list(body), (flags | add) & ~remove) + ")")
        elif op is C.BRANCH:
            out.append("(?:" + "|".join(_emit(list(b), flags) for b in av[1]) + ")")
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            low, high, body = av
            inner = "(?:" + _emit(list(body), flags) + ")"
            if high == C.MAXREPEAT or high > MAX_BOUND:
                out.append(inner + ("*" if low == 0 or low > MAX_BOUND else f"{{{low},}}"))
            else:
                out.append(f"{inner}{{{low},{high}}}")
        elif op is C.ATOMIC_GROUP:
            out.append("(?:" + _emit(list(av), flags) + ")")
        elif op in (C.ASSERT, C.ASSERT_NOT):
            continue  # widened: what is around is not required
        elif op is C.GROUPREF:
            out.append("[^\\n]*")  # the group's text, whatever it was, on the same line
        elif op is C.GROUPREF_EXISTS:
            _, yes, no = av
            branches = [_emit(list(yes), flags), _emit(list(no), flags) if no else ""]
            out.append("(?:" + "|".join(branches) + ")")
        else:
            raise Unsure(str(op))
    return "".join(out)


def _regex_flags(flags: int) -> int:
    chosen = regex.VERSION0
    for stdlib, ours in _FLAGS:
        if flags & stdlib:
            chosen |= ours
    return chosen


def _char(code: int) -> str:
    return f"\\U{code:08x}"


def _atom(op: Any, av: Any) -> str:
    """The `regex` source of one single-character item, every character escaped."""
    if op is C.LITERAL:
        return _char(av)
    if op is C.NOT_LITERAL:
        return f"[^{_char(av)}]"
    if op is C.ANY:
        return "."
    parts: list[str] = []
    negate = False
    for kind, value in av:
        if kind is C.NEGATE:
            negate = True
        elif kind is C.LITERAL:
            parts.append(_char(value))
        elif kind is C.RANGE:
            parts.append(f"{_char(value[0])}-{_char(value[1])}")
        elif kind is C.CATEGORY and value in _CATEGORIES:
            parts.append(_CATEGORIES[value])
        else:
            raise Unsure(str(kind))
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


@functools.lru_cache(maxsize=65536)
def _byte_class(atom: str, flags: int) -> str:
    """The ASCII characters `regex` matches with `atom` under `flags`, as a byte class; a
    newline left out (no line holds one); none of them: a byte no ASCII line holds."""
    compiled = regex.compile(atom, flags)
    codes = [c for c in range(128) if c != 10 and compiled.fullmatch(chr(c))]
    if not codes:
        return "\\xff"
    ranges: list[str] = []
    start = prev = codes[0]
    for code in [*codes[1:], -1]:
        if code == prev + 1:
            prev = code
            continue
        ranges.append(f"\\x{start:02x}" if start == prev else f"\\x{start:02x}-\\x{prev:02x}")
        start = prev = code
    return "[" + "".join(ranges) + "]"
