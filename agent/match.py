"""The matcher: which patterns a line matches, and the fields they yield.

Every search runs under the `regex` module's timeout; a pattern that times out
is counted against, and the line goes on to the other patterns.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from agent.packs import Pattern

Hit = tuple[Pattern, dict[str, str]]
_NO_HITS: tuple[Hit, ...] = ()


@dataclass
class PatternStats:
    matches: int = 0
    timeouts: int = 0
    seconds: float = 0.0


class Matcher:
    """Tries every pattern of a source on a line; cost accounted per pattern."""

    def __init__(self, patterns: Sequence[Pattern], timeout: float, account: bool = False) -> None:
        self.patterns = tuple(patterns)
        self.timeout = timeout
        self.account = account
        self.stats = {p.qualified: PatternStats() for p in self.patterns}
        self._searches = tuple((p, p.regex.search, self.stats[p.qualified]) for p in self.patterns)

    def match(self, line: str) -> Sequence[Hit]:
        hits: list[Hit] | None = None
        timeout = self.timeout
        account = self.account
        for pattern, search, stats in self._searches:
            if account:
                started = time.perf_counter()
            try:
                found = search(line, timeout=timeout)
            except TimeoutError:
                stats.timeouts += 1
                found = None
            if account:
                stats.seconds += time.perf_counter() - started
            if found is not None:
                stats.matches += 1
                fields = {k: v for k, v in found.groupdict().items() if v is not None}
                if hits is None:
                    hits = [(pattern, fields)]
                else:
                    hits.append((pattern, fields))
        return hits if hits is not None else _NO_HITS
