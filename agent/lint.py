"""Lint rules for patterns that feed a fix: what an attacker's echoed text must not reach.

Whoever can make a program log text controls what a pattern matches inside
free-text parts of a line. A pattern that feeds a fix must therefore be
anchored to the program's own line format, and must not let an unbounded
wildcard come before a field the fix uses (fail2ban's log-injection lint).
"""

from __future__ import annotations

import importlib
from typing import Any

import regex

_parser: Any = importlib.import_module("re._parser")
_C: Any = importlib.import_module("re._constants")

ANCHORED = regex.compile(r"(?:\(\?[a-zA-Z]+\))*(?:\^|\\A)")


def loose_before(source: str, fields: set[str]) -> bool:
    """True if an unbounded `.*`/`.+` comes before a field a fix uses.

    Text matched by such a wildcard can be anything a user made the program
    log, including a forged copy of the rest of the line (fail2ban's lint).
    """
    try:
        parsed = _parser.parse(source)
    except Exception:  # syntax only the regex module knows: other lints still apply
        return False
    names = {index: name for name, index in parsed.state.groupdict.items()}

    def walk(items: Any) -> bool | None:
        """True: loose wildcard found first; False: a used field reached first; None: neither."""
        for op, av in items:
            if op is _C.SUBPATTERN:
                if names.get(av[0]) in fields:
                    return False
                found = walk(av[3])
            elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT, _C.POSSESSIVE_REPEAT):
                if av[1] == _C.MAXREPEAT and any(o is _C.ANY for o, _ in av[2]):
                    return True
                found = walk(av[2])
            elif op is _C.BRANCH:
                results = [walk(branch) for branch in av[1]]
                found = True if True in results else (False if False in results else None)
            else:
                found = None
            if found is not None:
                return found
        return None

    return walk(parsed) is True


def remedy_pattern_problem(source: str, used: set[str]) -> str | None:
    """Why a pattern whose fields `used` reach a fix is unsafe to act on, or None."""
    if not ANCHORED.match(source):
        return (
            "feeds a fix, so it must be anchored to the program's own line format "
            "(start with ^): unanchored, text a user makes another program log can match"
        )
    if loose_before(source, used):
        return (
            "has an unbounded .* or .+ before a field the fix uses: text a user makes the "
            "program log can forge that field; match the line's real structure instead"
        )
    return None
