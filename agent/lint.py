"""Lint rules for patterns that feed a fix: what an attacker's echoed text must not reach.

Whoever can make a program log text controls what a pattern matches inside
free-text parts of a line. A pattern that feeds a fix must therefore be
anchored to the program's own line format (every alternative, and never with
`(?m)`, which lets `^` match inside a multiline event), and no wildcard that
can cover anything may come before a field the fix sees (fail2ban's
log-injection lint). The rules read the pattern with the stdlib parser; a
pattern it cannot read is refused rather than waved through.
"""

from __future__ import annotations

import importlib
from typing import Any

import regex

_parser: Any = importlib.import_module("re._parser")
_C: Any = importlib.import_module("re._constants")

LONG_REPEAT = 32  # `.{0,255}` holds a forged field as well as `.*` does
_COMPLEMENTS = {
    frozenset({"CATEGORY_SPACE", "CATEGORY_NOT_SPACE"}),
    frozenset({"CATEGORY_DIGIT", "CATEGORY_NOT_DIGIT"}),
    frozenset({"CATEGORY_WORD", "CATEGORY_NOT_WORD"}),
}


def remedy_pattern_problem(source: str, flags: int, used: set[str]) -> str | None:
    """Why a pattern (its source, and its flags as `regex` compiled them) whose fields
    `used` reach a fix is unsafe to act on, or None."""
    if flags & regex.MULTILINE:
        return (
            "feeds a fix, so it cannot use (?m): ^ would match at any line of a multiline "
            "event, including one a user made the program log"
        )
    try:
        parsed = _parser.parse(source)
    except Exception as exc:  # syntax only the regex module knows
        return (
            f"feeds a fix, so the lint must be able to read it, and it cannot ({exc}): "
            r"write it without regex-only syntax (e.g. [^\W\d_] for \p{L})"
        )
    first = list(parsed)[:1]
    if (
        not first
        or first[0][0] is not _C.AT
        or first[0][1]
        not in (
            _C.AT_BEGINNING,
            _C.AT_BEGINNING_STRING,
        )
    ):
        return (
            "feeds a fix, so it must be anchored to the program's own line format "
            "(start every alternative with ^): unanchored, text a user makes another "
            "program log can match"
        )
    names = {index: name for name, index in parsed.state.groupdict.items()}
    if _walk(parsed, {i for i, name in names.items() if name in used})[0]:
        return (
            "has an unbounded wildcard (.*, .+, [\\s\\S]*, ...) before a field the fix sees: "
            "text a user makes the program log can forge that field; match the line's real "
            "structure instead"
        )
    return None


def _walk(items: Any, used: set[int], loose: bool = False) -> tuple[bool, bool]:
    """(a used field comes after a loose wildcard, a loose wildcard was seen), in order.

    A wildcard inside a used field is that field's constraint's business, not
    this rule's; one anywhere before it lets the line's free text forge it.
    """
    for op, av in items:
        if op is _C.SUBPATTERN:
            if av[0] in used:
                if loose:
                    return True, loose
                continue
            forged, loose = _walk(av[3], used, loose)
        elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT, _C.POSSESSIVE_REPEAT):
            if av[1] > LONG_REPEAT and _anything(av[2]):
                loose = True
            forged, loose = _walk(av[2], used, loose)
        elif op is _C.BRANCH:
            forged, loose = _either(_walk(branch, used, loose) for branch in av[1])
        elif op in (_C.ASSERT, _C.ASSERT_NOT):
            forged, loose = _walk(av[1], used, loose)
        elif op is _C.ATOMIC_GROUP:
            forged, loose = _walk(av, used, loose)
        elif op is _C.GROUPREF_EXISTS:
            forged, loose = _either(_walk(part, used, loose) for part in av[1:] if part)
        else:
            forged = False
        if forged:
            return True, loose
    return False, loose


def _either(results: Any) -> tuple[bool, bool]:
    seen = list(results) or [(False, False)]
    return any(f for f, _ in seen), any(lo for _, lo in seen)


def _anything(items: Any) -> bool:
    """Whether these items can match free text, spaces and letters both, at any depth.

    `.`, `[\\s\\S]`, `[^"]`, `[^\\x00]`, `\\D` can carry a forged copy of the rest of
    a line; `\\S`, `\\w`, `[^ ]`, `\\d` cannot cross a space, so they cannot.
    """
    for op, av in items:
        if op is _C.ANY:
            return True
        if op is _C.NOT_LITERAL and av != ord(" "):
            return True
        if op is _C.IN and _loose_set(av):
            return True
        if any(_anything(child) for child in _children(op, av)):
            return True
    return False


def _loose_set(members: Any) -> bool:
    categories = {str(v) for o, v in members if o is _C.CATEGORY}
    if any(o is _C.NEGATE for o, _ in members):  # [^...]: loose unless it excludes a space
        excluded_space = "CATEGORY_SPACE" in categories or any(
            o is _C.LITERAL and v == ord(" ") for o, v in members
        )
        return not excluded_space
    return "CATEGORY_NOT_DIGIT" in categories or any(pair <= categories for pair in _COMPLEMENTS)


def _children(op: Any, av: Any) -> list[Any]:
    """The sub-sequences a node holds (groups, repeats, branches, atomic groups)."""
    if op is _C.SUBPATTERN:
        return [av[3]]
    if op in (_C.MAX_REPEAT, _C.MIN_REPEAT, _C.POSSESSIVE_REPEAT):
        return [av[2]]
    if op is _C.BRANCH:
        return list(av[1])
    if op is _C.ATOMIC_GROUP:
        return [av]
    return []
