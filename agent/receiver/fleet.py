"""The hosts in the store: who was heard from, with which packs, and what tier 1 did
on each (the latest totals, and an hourly history for the tier-1 view)."""

from __future__ import annotations

import json
import time
from typing import Any

from agent.receiver.scopes import Identity
from agent.receiver.storebase import StoreBase, owned, whole

HISTORY_HOURS = 35 * 24  # hourly totals per host and pattern kept for the tier-1 view


class FleetStore(StoreBase):
    _pruned: int  # the hour the stats history was last pruned

    def _heard(
        self,
        owner: str,
        host: str,
        by: str,
        agent_version: str,
        packs: dict[str, str],
        now: float,
    ) -> None:
        """A host was heard from: when, through which token, which packs (and versions,
        when the post says) it runs. In the caller's transaction."""
        row = self._db.execute(
            "SELECT agent_version, packs FROM hosts WHERE owner=? AND host=?", (owner, host)
        ).fetchone()
        known: dict[str, str] = json.loads(row["packs"]) if row else {}
        for pack, version in packs.items():
            if version or pack not in known:
                known[pack] = version
        version = agent_version or (row["agent_version"] if row else "")
        self._db.execute(
            "INSERT INTO hosts VALUES (?,?,?,?,?,?) ON CONFLICT (owner, host) DO UPDATE SET"
            " last_heard=excluded.last_heard, submitted_by=excluded.submitted_by,"
            " agent_version=excluded.agent_version, packs=excluded.packs",
            (owner, host, now, by, version, json.dumps(dict(sorted(known.items())))),
        )

    def hosts(
        self, owners: tuple[str, ...] | None, limit: int = 500, offset: int = 0
    ) -> tuple[list[dict[str, Any]], bool]:
        """The hosts heard from, quietest first, with what tier 1 did on each."""
        where, args = owned(owners, column="hosts.owner")
        with self._lock:
            rows = self._db.execute(
                "SELECT hosts.*, total(s.matches) AS matches, total(s.resolved) AS resolved,"  # noqa: S608
                " total(s.failed) AS failed, total(s.escalated) AS escalated FROM hosts"
                " LEFT JOIN stats s ON s.owner = hosts.owner AND s.host = hosts.host"
                f" {where}"
                " GROUP BY hosts.owner, hosts.host ORDER BY last_heard, hosts.owner, hosts.host"
                " LIMIT ? OFFSET ?",
                (*args, limit + 1, offset),
            ).fetchall()
        page = []
        for r in rows[:limit]:
            item = whole(dict(r), "matches", "resolved", "failed", "escalated")
            item["packs"] = json.loads(r["packs"])
            page.append(item)
        return page, len(rows) > limit

    def history(
        self, owners: tuple[str, ...] | None, owner: str, start_hour: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Hourly totals since `start_hour`, and for each host and pattern the last
        totals before it (the baseline the first hour in the window is counted from)."""
        clauses: list[str] = ["owner = ?"] if owner else []
        values: list[Any] = [owner] if owner else []
        where, args = owned(owners, [*clauses, "hour >= ?"], [*values, start_hour])
        before, before_args = owned(owners, [*clauses, "hour < ?"], [*values, start_hour])
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM stats_history {where}"  # noqa: S608
                " ORDER BY owner, pack, pattern, host, hour",
                args,
            ).fetchall()
            base = self._db.execute(
                f"SELECT *, max(hour) FROM stats_history {before}"  # noqa: S608
                " GROUP BY owner, pack, pattern, host",
                before_args,
            ).fetchall()
        return [dict(r) for r in rows], [dict(r) for r in base]

    def store_stats(self, who: Identity, host: str, rows: list[dict[str, Any]]) -> None:
        """A host's cumulative totals per pattern, as its agent last reported them.

        The latest report wins (an agent whose state was reset reports lower
        totals, and is right to). Rows are kept per owner, host and pattern, so
        a host moved to another token replaces its figures instead of counting
        twice; only a token bound to that host and owner can post them.
        """
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                heard: dict[str, dict[str, str]] = {}
                for r in rows:
                    heard.setdefault(r["owner"], {})[r["pack"]] = ""
                for owner, packs in heard.items():
                    self._heard(owner, host, who.name, "", packs, now)
                self._stats_rows(who, host, rows, now)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back itself
                    self._db.execute("ROLLBACK")
                raise

    def _stats_rows(self, who: Identity, host: str, rows: list[dict[str, Any]], now: float) -> None:
        """The latest totals, and this hour's in the history (the tier-1 view's)."""
        hour = int(now // 3600)
        self._db.executemany(
            "INSERT OR REPLACE INTO stats_history VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    r["owner"],
                    host,
                    r["pack"],
                    r["pattern"],
                    hour,
                    r["matches"],
                    r["incidents"],
                    r["resolved"],
                    r["failed"],
                    r["escalated"],
                )
                for r in rows
            ],
        )
        if hour != self._pruned:  # once an hour: the history keeps HISTORY_HOURS
            self._db.execute("DELETE FROM stats_history WHERE hour < ?", (hour - HISTORY_HOURS,))
            self._pruned = hour
        self._db.executemany(
            "INSERT INTO stats VALUES (?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (owner, host, pack, pattern) DO UPDATE SET"
            " submitted_by=excluded.submitted_by, matches=excluded.matches,"
            " incidents=excluded.incidents, resolved=excluded.resolved,"
            " failed=excluded.failed, escalated=excluded.escalated, updated=excluded.updated",
            [
                (
                    r["owner"],
                    host,
                    r["pack"],
                    r["pattern"],
                    who.name,
                    r["matches"],
                    r["incidents"],
                    r["resolved"],
                    r["failed"],
                    r["escalated"],
                    now,
                )
                for r in rows
            ],
        )

    def stats(
        self, owners: tuple[str, ...] | None, limit: int = 1000, offset: int = 0
    ) -> tuple[list[dict[str, Any]], bool]:
        """Totals per owner, pack and pattern, summed over hosts, of the owners given:
        a page of at most `limit`, and whether more follow."""
        where, args = owned(owners)
        with self._lock:
            rows = self._db.execute(
                "SELECT owner, pack, pattern, count(DISTINCT host) AS hosts,"  # noqa: S608
                " total(matches) AS matches, total(incidents) AS incidents,"
                " total(resolved) AS resolved, total(failed) AS failed,"
                f" total(escalated) AS escalated, max(updated) AS updated FROM stats {where}"
                " GROUP BY owner, pack, pattern ORDER BY owner, pack, pattern LIMIT ? OFFSET ?",
                (*args, limit + 1, offset),
            ).fetchall()
        page = [
            whole(dict(r), "matches", "incidents", "resolved", "failed", "escalated")
            for r in rows[:limit]
        ]
        return page, len(rows) > limit
