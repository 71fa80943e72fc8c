"""The hosts in the store: who was heard from, with which packs, and what tier 1 did
on each (the latest totals, and an hourly history for the tier-1 view)."""

from __future__ import annotations

import json
import time
from typing import Any

from agent.receiver.engine import Conn
from agent.receiver.scopes import Identity
from agent.receiver.storebase import (
    StoreBase,
    chunks,
    keyed,
    locking,
    owned,
    rows_of,
    total,
    whole,
)

HISTORY_HOURS = 35 * 24  # hourly totals per host and pattern kept for the tier-1 view
STATS = ("matches", "incidents", "resolved", "failed", "escalated")


class FleetStore(StoreBase):
    _pruned: int  # the hour the stats history was last pruned

    def _heard(
        self,
        db: Conn,
        heard: dict[tuple[str, str], dict[str, str]],
        by: str,
        agent_version: str,
        now: float,
    ) -> None:
        """Hosts were heard from ((owner, host) -> the packs and versions the post says
        they run): when, through which token, with which agent. One read and one write
        per few hundred hosts, in key order. In the caller's transaction."""
        keys = sorted(heard)
        for few in chunks(keys, 500):
            flat = [v for k in few for v in k]
            db.execute(  # a new host's row made first: the read below then locks it, so
                # two receivers hearing of it at once merge its packs, not overwrite them
                f"INSERT INTO hosts VALUES {rows_of(6, few)} ON CONFLICT DO NOTHING",  # noqa: S608
                [v for k in few for v in (*k, now, by, agent_version, "{}")],
            )
            with_, from_ = keyed("hosts", ("owner", "host"), few)
            rows = {
                (r["owner"], r["host"]): r
                for r in db.execute(
                    f"{with_} SELECT t.owner, t.host, t.agent_version, t.packs {from_}"
                    f"{locking(db)}",
                    flat,
                )
            }
            args: list[Any] = []
            for key in few:
                row = rows.get(key)
                known: dict[str, str] = json.loads(row["packs"]) if row else {}
                for pack, version in heard[key].items():
                    if version or pack not in known:
                        known[pack] = version
                version = agent_version or (row["agent_version"] if row else "")
                args += (*key, now, by, version, json.dumps(dict(sorted(known.items()))))
            db.execute(
                f"INSERT INTO hosts VALUES {rows_of(6, few)} ON CONFLICT (owner, host)"  # noqa: S608
                " DO UPDATE SET last_heard=excluded.last_heard,"
                " submitted_by=excluded.submitted_by, agent_version=excluded.agent_version,"
                " packs=excluded.packs",
                args,
            )

    def hosts(
        self, owners: tuple[str, ...] | None, limit: int = 500, offset: int = 0
    ) -> tuple[list[dict[str, Any]], bool]:
        """The hosts heard from, quietest first, with what tier 1 did on each."""
        where, args = owned(owners, column="hosts.owner")
        with self._engine.read() as db:
            rows = db.execute(
                f"SELECT hosts.*, {total('s.matches')} AS matches,"  # noqa: S608
                f" {total('s.resolved')} AS resolved, {total('s.failed')} AS failed,"
                f" {total('s.escalated')} AS escalated FROM hosts"
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
        with self._engine.read() as db:
            rows = db.execute(
                f"SELECT * FROM stats_history {where}"  # noqa: S608
                " ORDER BY owner, pack, pattern, host, hour",
                args,
            ).fetchall()
            base = db.execute(
                "SELECT owner, host, pack, pattern, hour, matches, incidents, resolved, failed,"  # noqa: S608
                " escalated FROM (SELECT *, row_number() OVER (PARTITION BY owner, pack,"
                f" pattern, host ORDER BY hour DESC) AS latest FROM stats_history {before}) h"
                " WHERE latest = 1",
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
        heard: dict[tuple[str, str], dict[str, str]] = {}
        for r in rows:
            heard.setdefault((r["owner"], host), {})[r["pack"]] = ""

        def store(db: Conn) -> None:
            self._heard(db, heard, who.name, "", now)
            self._stats_rows(db, who, host, rows, now)

        self._engine.write(store)

    def _stats_rows(
        self, db: Conn, who: Identity, host: str, rows: list[dict[str, Any]], now: float
    ) -> None:
        """The latest totals, and this hour's in the history (the tier-1 view's)."""
        hour = int(now // 3600)
        db.executemany(
            "INSERT INTO stats_history VALUES (?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (owner, pack, pattern, host, hour) DO UPDATE SET"
            " matches=excluded.matches, incidents=excluded.incidents,"
            " resolved=excluded.resolved, failed=excluded.failed, escalated=excluded.escalated",
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
            db.execute("DELETE FROM stats_history WHERE hour < ?", (hour - HISTORY_HOURS,))
            self._pruned = hour
        db.executemany(
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
        sums = ", ".join(f"{total(c)} AS {c}" for c in STATS)
        with self._engine.read() as db:
            rows = db.execute(
                f"SELECT owner, pack, pattern, count(DISTINCT host) AS hosts, {sums},"  # noqa: S608
                f" max(updated) AS updated FROM stats {where}"
                " GROUP BY owner, pack, pattern ORDER BY owner, pack, pattern LIMIT ? OFFSET ?",
                (*args, limit + 1, offset),
            ).fetchall()
        page = [
            whole(dict(r), "matches", "incidents", "resolved", "failed", "escalated")
            for r in rows[:limit]
        ]
        return page, len(rows) > limit
