"""A pack's examples, proven: the lines each pattern must (or must not) match and
the fields it must find there.

`logmend test` and `logmend check` print what fails; the agent runs no pack whose
examples fail (agent/admit.py). The agent passes its memo: an example that held
for the same pattern, line and fields on an earlier start is not tried again, and
what it compiles to try one is let go (most patterns never see a candidate line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.derived import Memo
from agent.errors import ConfigError
from agent.hashing import blake2b
from agent.packs import Example, LazyRegex, Pack, Pattern
from agent.packset import BrokenPack, load_packs_apart
from agent.params import HostParams

EXAMPLE_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class ExampleFailure:
    pattern: Pattern
    line: str
    expected: str
    actual: str
    at: int | None = None  # the example's line in pack.toml

    def as_error(self, pack: Pack) -> ConfigError:
        return ConfigError(
            pack.file,
            f"pattern {self.pattern.id!r} example",
            self.at,
            f"{self.line!r}: expected {self.expected}, got {self.actual}",
        )


def check_examples(pack: Pack, memo: Memo | None = None) -> tuple[int, list[ExampleFailure]]:
    """Every example of every pattern; returns (examples checked, failures)."""
    failures = []
    for pattern in pack.patterns:
        for example in pattern.examples:
            key = _key(pattern, example) if memo is not None else b""
            if memo is not None and memo.get("example", key, _held):
                continue
            expected, actual = _example_problem(pattern, example, keep=memo is None)
            if expected:
                failures.append(ExampleFailure(pattern, example.line, expected, actual, example.at))
            elif memo is not None:
                memo.put("example", key, True)
        failures.extend(_unproven_ignores(pattern, memo))
    return sum(len(p.examples) for p in pack.patterns), failures


def _unproven_ignores(pattern: Pattern, memo: Memo | None) -> list[ExampleFailure]:
    """Each `ignore` regex must take back at least one `matches = false` example that the
    pattern's own regex matches: else nothing shows it does what it is there for."""
    out = []
    for n, rule in enumerate(pattern.ignore):
        what = [pattern.source, rule.source, [e.line for e in pattern.examples]]
        key = blake2b(json.dumps(what).encode(), digest_size=16).digest()
        if memo is not None and memo.get("ignore-proof", key, _held):
            continue
        keep = memo is None
        proven = False
        for example in pattern.examples:
            if example.matches:
                continue
            try:
                proven = bool(
                    _search(pattern.lazy, example.line, keep) and _search(rule, example.line, keep)
                )
            except TimeoutError:
                proven = False
            if proven:
                break
        if proven:
            if memo is not None:
                memo.put("ignore-proof", key, True)
            continue
        out.append(
            ExampleFailure(
                pattern,
                f"ignore[{n}] = {rule.source!r}",
                "a `matches = false` example the pattern's regex matches and this takes back",
                "none",
            )
        )
    return out


def admit(
    roots: tuple[Path, ...], host: HostParams, memo: Memo, trust: bool = True
) -> tuple[list[Pack], list[BrokenPack]]:
    """The packs that may run, and the broken ones: a pack runs only if it loads and
    every one of its examples holds; one that does not is the broken one, alone."""
    loaded, broken = load_packs_apart(roots, trust, host, memo)
    packs = []
    for pack in loaded:
        _, failures = check_examples(pack, memo)
        if failures:
            errors = tuple(f.as_error(pack) for f in failures)
            broken.append(BrokenPack(pack.dir, pack.name, pack.owner, pack.version, errors))
        else:
            packs.append(pack)
    return packs, broken


def _held(value: object) -> bool:
    return value is True


def _key(pattern: Pattern, example: Example) -> bytes:
    """A digest of all the example's answer depends on: 16 bytes held per example, not
    the texts (the memo is in memory through a start)."""
    ignore = [rule.source for rule in pattern.ignore]
    what = [pattern.source, ignore, example.line, example.matches, example.fields]
    return blake2b(json.dumps(what, sort_keys=True).encode(), digest_size=16).digest()


def _search(rule: LazyRegex, line: str, keep: bool) -> Any:
    """One search of an example line (raises TimeoutError); `keep` holds the compiled
    regex (test and check), else it is let go after (the agent's start)."""
    return (rule.get() if keep else rule.unheld()).search(line, timeout=EXAMPLE_TIMEOUT)


def _example_problem(pattern: Pattern, example: Example, keep: bool) -> tuple[str, str]:
    """(what was expected, what happened), or ("", "") when the example holds."""
    try:
        found = _search(pattern.lazy, example.line, keep)
        taken_back = None
        if found is not None:
            taken_back = next(
                (r.source for r in pattern.ignore if _search(r, example.line, keep)), None
            )
    except TimeoutError:
        return "a result", f"regex timed out after {EXAMPLE_TIMEOUT}s"
    if not example.matches:
        if found is None or taken_back is not None:
            return "", ""
        return "no match", f"matched {found.group(0)!r}"
    if found is None:
        return "a match", "no match"
    if taken_back is not None:
        return "a match", f"no match: ignore {taken_back!r} takes it back"
    fields = {k: v for k, v in found.groupdict().items() if v is not None}
    wanted = example.fields or {}
    if any(fields.get(k) != v for k, v in wanted.items()):
        return json.dumps(wanted, sort_keys=True), json.dumps(fields, sort_keys=True)
    return "", ""
