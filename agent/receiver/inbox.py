"""What a team's inbox shows: its filters and sort, read from the URL and written back.

The filters live in the query string, so a view can be bookmarked, shared and
auto-refreshed as it is. Every value is checked against a fixed vocabulary or
bounded in length, and only fixed SQL with placeholders comes out of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

MAX_FILTER = 256


class StateFilter(StrEnum):
    OPEN = "open"  # open, acknowledged, or snoozed past its end, and not silenced
    ACKNOWLEDGED = "acknowledged"
    SNOOZED = "snoozed"
    RESOLVED = "resolved"
    REGRESSION = "regression"
    SILENCED = "silenced"
    ALL = "all"


class Sort(StrEnum):
    LAST = "last"
    FIRST = "first"
    LINES = "lines"
    OCCURRENCES = "occurrences"


WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0, "all": 0.0}
SPARK_ALL = 30 * 86400.0  # the sparkline's span when the window is "all"
ORDER = {
    Sort.LAST: "last_seen DESC, ref",
    Sort.FIRST: "first_seen DESC, ref",
    Sort.LINES: "lines DESC, last_seen DESC, ref",
    Sort.OCCURRENCES: "occurrences DESC, last_seen DESC, ref",
}


class BadView(ValueError):
    """A filter value outside its vocabulary or bounds: a 400 naming it."""


@dataclass(frozen=True)
class InboxView:
    state: StateFilter = StateFilter.OPEN
    pattern: str = ""
    pack: str = ""
    host: str = ""
    severity: str = ""
    owner: str = ""
    window: str = "7d"
    sort: Sort = Sort.LAST
    page: int = 1

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> InboxView:
        def pick(name: str, default: str = "") -> str:
            value = query.get(name, default)
            if len(value) > MAX_FILTER or not value.isprintable():
                raise BadView(f"{name}: at most {MAX_FILTER} printable characters")
            return value

        try:
            state = StateFilter(pick("state", "open"))
            sort = Sort(pick("sort", "last"))
        except ValueError as exc:
            raise BadView(str(exc)) from None
        window = pick("window", "7d")
        if window not in WINDOWS:
            raise BadView(f"window: one of {', '.join(WINDOWS)}")
        page = pick("page", "1")
        if not (page.isascii() and page.isdigit() and 1 <= int(page) <= 10_000):
            raise BadView("page: a number from 1 to 10000")
        return cls(
            state=state,
            pattern=pick("pattern"),
            pack=pick("pack"),
            host=pick("host"),
            severity=pick("severity"),
            owner=pick("owner"),
            window=window,
            sort=sort,
            page=int(page),
        )

    def window_seconds(self) -> float:
        """The span the sparkline covers: the window, or the last 30 days for "all"."""
        return WINDOWS[self.window] or SPARK_ALL

    def where(self, now: float) -> tuple[list[str], list[Any]]:
        """SQL conditions on the groups table (aliased as itself) and their values."""
        clauses: list[str] = []
        args: list[Any] = []
        if WINDOWS[self.window]:
            clauses.append("last_seen >= ?")
            args.append(now - WINDOWS[self.window])
        if self.state is StateFilter.OPEN:
            clauses.append(
                "(state IN ('open', 'acknowledged') OR (state = 'snoozed' AND snoozed_until <= ?))"
            )
            clauses.append("(silenced_until IS NULL OR silenced_until <= ?)")
            args += [now, now]
        elif self.state is StateFilter.SILENCED:
            clauses.append("silenced_until > ?")
            args.append(now)
        elif self.state is StateFilter.SNOOZED:
            clauses.append("state = 'snoozed' AND snoozed_until > ?")
            args.append(now)
        elif self.state is StateFilter.REGRESSION:
            clauses.append("regression = 1")
        elif self.state is not StateFilter.ALL:
            clauses.append("state = ?")
            args.append(str(self.state))
        for column in ("pattern", "pack", "severity", "owner"):
            value = getattr(self, column)
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        if self.host:
            clauses.append(
                "EXISTS (SELECT 1 FROM escalations e WHERE e.owner = groups.owner"
                " AND e.fingerprint = groups.fingerprint AND e.host = ?)"
            )
            args.append(self.host)
        return clauses, args

    def order(self) -> str:
        return ORDER[self.sort]

    def query(self, **changes: Any) -> str:
        """This view's query string, with `changes`; defaults left out, so URLs stay short."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        defaults = InboxView()
        kept = {
            name: str(value)
            for name, value in values.items()
            if str(value) != str(getattr(defaults, name))
        }
        return urlencode(kept)
