"""What tier 1 did over a window, from each host's cumulative totals hour by hour.

Agents report totals since their state was made, so what happened in a window
is, per host and pattern, each hour's totals less the hour before (the last
report before the window for its first hour). A total that went down is an
agent whose state was reset: what it reports then is all new. Pure: the store
gives the rows, this adds them up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

FIELDS = ("matches", "incidents", "resolved", "failed", "escalated")
WINDOWS = {"24h": (24, 1), "7d": (7 * 24, 24), "30d": (30 * 24, 24)}  # hours, hours a bar


@dataclass
class Pattern:
    owner: str
    pack: str
    pattern: str
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIELDS, 0))
    hosts: set[str] = field(default_factory=set)

    @property
    def rate(self) -> float | None:
        """Fixed on the host ÷ incidents; None when there was no incident."""
        incidents = self.totals["incidents"]
        return self.totals["resolved"] / incidents if incidents else None


@dataclass
class Tier1:
    patterns: list[Pattern]
    bars: list[dict[str, int]]  # per bar: resolved, failed, escalated
    failing: list[tuple[str, str, int]]  # (owner, host, fixes failed), most first
    hours_a_bar: int

    def total(self, name: str) -> int:
        return sum(p.totals[name] for p in self.patterns)


def added_up(
    rows: Iterable[Mapping[str, Any]],
    base: Iterable[Mapping[str, Any]],
    start_hour: int,
    window: str,
) -> Tier1:
    """Totals per pattern, per bar and per failing host over `window` from `start_hour`.

    `rows` are hourly snapshots in the window, `base` the last snapshot before it of
    each (owner, pack, pattern, host).
    """
    hours, per_bar = WINDOWS[window]
    bars = [dict.fromkeys(("resolved", "failed", "escalated"), 0) for _ in range(hours // per_bar)]
    before = {_key(b): b for b in base}
    patterns: dict[tuple[str, str, str], Pattern] = {}
    failing: dict[tuple[str, str], int] = {}
    last: dict[tuple[str, str, str, str], Mapping[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (*_key(r), r["hour"])):
        key = _key(row)
        prev = last.get(key) or before.get(key)
        last[key] = row
        grown = {f: _grown(row[f], prev[f] if prev else 0) for f in FIELDS}
        found = patterns.setdefault(key[:3], Pattern(*key[:3]))
        found.hosts.add(key[3])
        for name, value in grown.items():
            found.totals[name] += value
        index = (row["hour"] - start_hour) // per_bar
        if 0 <= index < len(bars):
            for name in bars[index]:
                bars[index][name] += grown[name]
        if grown["failed"]:
            failing[(key[0], key[3])] = failing.get((key[0], key[3]), 0) + grown["failed"]
    ranked = sorted(failing.items(), key=lambda item: (-item[1], item[0]))[:10]
    return Tier1(
        patterns=sorted(patterns.values(), key=lambda p: (p.owner, p.pack, p.pattern)),
        bars=bars,
        failing=[(owner, host, n) for (owner, host), n in ranked],
        hours_a_bar=per_bar,
    )


def _key(row: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (row["owner"], row["pack"], row["pattern"], row["host"])


def _grown(now: int, before: int) -> int:
    """What a cumulative total added: all of it after a reset (it went down)."""
    return now - before if now >= before else now
