"""Errors no pack knows yet, across the fleet: each host's templates of unmatched error
lines (agent.unknown), kept per owner, host and template, and shown to the owning team
ranked by count and host spread, with the trend of the last days (issue 19).

Agents post cumulative counts keyed by host, owner and the host's template id, so a
post lost or sent twice counts nothing twice: what a post adds to a day is its count
less the count stored before (all of it when the host's template is new or its state
was reset). The same template text on several hosts is one entry (its ref). A host
that now matches a template with a shipped pattern says so (`known`), and the
template leaves the list once no host still reports it unknown.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from agent.draft import draft_toml, pattern_id
from agent.receiver.engine import Conn
from agent.receiver.limits import MAX_COUNT, MAX_ID, InvalidEvent, count, moment, name, text
from agent.receiver.scopes import AGENT_OWNER, Forbidden, Identity
from agent.receiver.storebase import (
    PAGE_BYTES,
    StoreBase,
    chunks,
    keyed,
    owned,
    rows_of,
    total,
    whole,
)

MAX_ROWS = 1000  # templates per post
MAX_TEMPLATE = 4096  # characters of a template or a sample
MAX_SAMPLES = 10
MAX_PER_HOST = 2000  # rows kept per owner and host (an agent keeps 1,000)
MAX_PER_OWNER = 100_000  # rows kept per owner; the least recently seen go first
KEEP_DAYS = 35  # days a template not seen since is kept, and of counts for the trend
SAMPLE = 1000  # characters of the sample a listing shows
TREND_DAYS = 7
SORTS = ("count", "hosts")


def unknown_ref(owner: str, template: str) -> str:
    """The receiver's id of one owner's template: the same text on every host."""
    return hashlib.sha256(f"{owner}\0{template}".encode()).hexdigest()[:20]


def _clean(value: Any, where: str, required: bool = True) -> str:
    """Text as stored: valid UTF-8, bounded, a NUL (PostgreSQL's text holds none) shown."""
    return text(value, where, MAX_TEMPLATE, required).replace("\0", "\ufffd")


def validate_unknown(doc: Any, now: float) -> tuple[str, list[dict[str, Any]]]:
    """A host's templates; raises InvalidEvent naming the place."""
    if not isinstance(doc, dict):
        raise InvalidEvent('body must be an object with a "host" string')
    host = name(doc.get("host"), "host")
    rows = doc.get("templates")
    if not isinstance(rows, list):
        raise InvalidEvent('body must have a "templates" list')
    if len(rows) > MAX_ROWS:
        raise InvalidEvent(f"at most {MAX_ROWS} templates per request")
    out = []
    for index, row in enumerate(rows):
        at = f"templates[{index}]"
        if not isinstance(row, dict):
            raise InvalidEvent(f"{at} must be an object")
        ident = row.get("id")
        if not isinstance(ident, int) or isinstance(ident, bool) or not 1 <= ident <= 2**53:
            raise InvalidEvent(f"{at}.id must be an integer between 1 and 2**53")
        checked: dict[str, Any] = {
            "owner": name(row.get("owner", ""), f"{at}.owner", required=False),
            "id": ident,
        }
        if "known" in row:  # a pattern now explains it on this host
            checked["known"] = name(row["known"], f"{at}.known", 2 * MAX_ID)
            out.append(checked)
            continue
        samples = row.get("samples", [])
        if not isinstance(samples, list) or len(samples) > MAX_SAMPLES:
            raise InvalidEvent(f"{at}.samples must be a list of at most {MAX_SAMPLES} lines")
        checked.update(
            template=_clean(row.get("template"), f"{at}.template"),
            count=count(row.get("count"), f"{at}.count"),
            first_seen=moment(row.get("first_seen"), f"{at}.first_seen", now),
            last_seen=moment(row.get("last_seen"), f"{at}.last_seen", now),
            samples=[_clean(s, f"{at}.samples[{n}]", False) for n, s in enumerate(samples)],
        )
        out.append(checked)
    return host, out


class UnknownStore(StoreBase):
    _pruned_day: int = 0

    def store_unknown(self, who: Identity, host: str, rows: list[dict[str, Any]]) -> int:
        """A host's templates as its agent reports them (owners checked), in one
        transaction; returns how many were stored."""
        for index, row in enumerate(rows):
            if row["owner"] == AGENT_OWNER:  # the central team's: no agent mines for it
                raise Forbidden(f"templates[{index}].owner: {AGENT_OWNER!r} is not a team")
            row["owner"] = who.owner_for(row["owner"], f"templates[{index}]")
        who.check_host(host, "host")
        now = time.time()
        self._engine.write(lambda db: self._store(db, who, host, rows, now))
        return len(rows)

    def _store(
        self, db: Conn, who: Identity, host: str, rows: list[dict[str, Any]], now: float
    ) -> None:
        day = int(now // 86400)
        # one row per template (the last said wins): a key twice in one INSERT is an error
        reported = list({(r["owner"], r["id"]): r for r in rows if "known" not in r}.values())
        keys = sorted({(r["owner"], host, r["id"]) for r in rows})
        before: dict[tuple[str, int], Mapping[str, Any]] = {}
        for some in chunks(keys, 300):
            with_, from_ = keyed("unknown", ("owner", "host", "id"), some)
            flat = [v for key in some for v in key]
            for r in db.execute(
                f"{with_} SELECT t.owner, t.id, t.ref, t.count, t.first_seen, t.last_seen,"
                f" t.known {from_}",
                flat,
            ):
                before[(r["owner"], r["id"])] = r
        args: list[tuple[Any, ...]] = []
        growth: list[tuple[Any, ...]] = []
        restarted: list[tuple[str, str, int]] = []
        for r in reported:
            old = before.get((r["owner"], r["id"]))
            added = r["count"]
            if old is not None and old["first_seen"] == r["first_seen"]:
                if r["count"] < old["count"] or r["last_seen"] < old["last_seen"]:
                    continue  # an older post that arrived late: old news, not a reset
                if old["known"] and r["count"] == old["count"]:
                    continue  # a repeat of what preceded the explanation
                added = r["count"] - old["count"]
            ref = unknown_ref(r["owner"], r["template"])
            if old is not None and old["first_seen"] != r["first_seen"] and old["ref"] != ref:
                restarted.append((r["owner"], host, r["id"]))  # another template, same id
            args.append((
                r["owner"], host, r["id"], ref,
                r["template"], r["count"], r["first_seen"], r["last_seen"],
                json.dumps(r["samples"]), r["samples"][0][:SAMPLE] if r["samples"] else "",
                "", who.name, now,
            ))  # fmt: skip
            if added:
                growth.append((r["owner"], host, r["id"], day, added))
        self._forget_days(db, restarted)
        for part in chunks(args, 200):
            db.execute(
                f"INSERT INTO unknown VALUES {rows_of(13, part)} ON CONFLICT (owner, host, id)"  # noqa: S608
                " DO UPDATE SET ref=excluded.ref, template=excluded.template,"
                " count=excluded.count, first_seen=excluded.first_seen,"
                " last_seen=excluded.last_seen, samples=excluded.samples,"
                " sample=excluded.sample, known='', submitted_by=excluded.submitted_by,"
                " updated=excluded.updated",
                [v for row in part for v in row],
            )
        for part in chunks(growth, 200):
            db.execute(
                f"INSERT INTO unknown_days VALUES {rows_of(5, part)} ON CONFLICT"  # noqa: S608
                " (owner, host, id, day) DO UPDATE SET count = CASE WHEN"
                f" unknown_days.count + excluded.count > {MAX_COUNT} THEN {MAX_COUNT}"
                " ELSE unknown_days.count + excluded.count END",
                [v for row in part for v in row],
            )
        explained = [  # every row of that host with the explained one's text
            (r["known"], now, r["owner"], host, before[(r["owner"], r["id"])]["ref"])
            for r in rows
            if "known" in r and (r["owner"], r["id"]) in before
        ]
        db.executemany(
            "UPDATE unknown SET known=?, updated=? WHERE owner=? AND host=? AND ref=?", explained
        )
        if len(before) < len(keys):  # new rows: the bounds hold
            for owner in sorted({r["owner"] for r in reported}):
                self._bound(db, "owner = ? AND host = ?", (owner, host), MAX_PER_HOST)
                self._bound(db, "owner = ?", (owner,), MAX_PER_OWNER)
        if day != self._pruned_day:  # once a day: what was not seen for KEEP_DAYS goes
            db.execute("DELETE FROM unknown_days WHERE day < ?", (day - KEEP_DAYS,))
            stale = db.execute(
                "SELECT owner, host, id FROM unknown WHERE last_seen < ?",
                ((day - KEEP_DAYS) * 86400.0,),
            ).fetchall()
            self._forget(db, [(r["owner"], r["host"], r["id"]) for r in stale])
            self._pruned_day = day

    def _forget(self, db: Conn, keys: list[tuple[str, str, int]]) -> None:
        """Rows gone, with their days."""
        self._forget_days(db, keys)
        for some in chunks(keys, 300):
            db.execute(
                "DELETE FROM unknown WHERE (owner, host, id) IN"  # noqa: S608
                f" (VALUES {rows_of(3, some)})",
                [v for key in some for v in key],
            )

    @staticmethod
    def _forget_days(db: Conn, keys: list[tuple[str, str, int]]) -> None:
        for some in chunks(keys, 300):
            db.execute(
                "DELETE FROM unknown_days WHERE (owner, host, id) IN"  # noqa: S608
                f" (VALUES {rows_of(3, some)})",
                [v for key in some for v in key],
            )

    def _bound(self, db: Conn, where: str, args: tuple[Any, ...], most: int) -> None:
        """Past `most` rows, the least recently seen go (a team's churn is its own)."""
        held = db.execute(f"SELECT count(*) AS n FROM unknown WHERE {where}", args).fetchone()["n"]  # noqa: S608
        if held <= most:
            return
        extra = db.execute(
            f"SELECT owner, host, id FROM unknown WHERE {where}"  # noqa: S608
            " ORDER BY last_seen, host, id LIMIT ?",
            (*args, held - most),
        ).fetchall()
        self._forget(db, [(r["owner"], r["host"], r["id"]) for r in extra])

    def unknown(
        self,
        owners: tuple[str, ...] | None,
        sort: str = "count",
        limit: int = 50,
        offset: int = 0,
        now: float | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """The templates still unknown on some host, most seen (or most spread) first, a
        page of at most `limit` (and PAGE_BYTES), each with its hosts, counts, a sample
        and the days' growth."""
        order = "hosts DESC, total DESC" if sort == "hosts" else "total DESC, hosts DESC"
        where, args = owned(owners, ["known = ''"], [])
        today = int((time.time() if now is None else now) // 86400)
        with self._engine.read() as db:
            rows = db.execute(
                "SELECT owner, ref, max(template) AS template, count(DISTINCT host) AS hosts,"  # noqa: S608
                f" {total('count')} AS total, min(first_seen) AS first_seen,"
                f" max(last_seen) AS last_seen, max(sample) AS sample FROM unknown {where}"
                f" GROUP BY owner, ref ORDER BY {order}, owner, ref LIMIT ? OFFSET ?",
                (*args, limit + 1, offset),
            ).fetchall()
            page: list[dict[str, Any]] = []
            size = 0
            for r in rows[:limit]:
                size += len(r["template"]) + len(r["sample"]) + 200
                if page and size > PAGE_BYTES:
                    break
                page.append(whole(dict(r), "total"))
            days = self._days(db, [(p["owner"], p["ref"]) for p in page], today - TREND_DAYS + 1)
        for item in page:
            item["count"] = item.pop("total")
            item["samples"] = [item.pop("sample")] if item["sample"] else []
            item["days"] = _series(days.get((item["owner"], item["ref"]), {}), today, TREND_DAYS)
        return page, len(rows) > len(page)

    def _days(
        self, db: Conn, keys: list[tuple[str, str]], since: int
    ) -> dict[tuple[str, str], dict[int, int]]:
        """New lines a day of each (owner, ref): its rows' growth, whichever text they had."""
        found: dict[tuple[str, str], dict[int, int]] = {}
        for few in chunks(keys, 300):
            with_, from_ = keyed("unknown", ("ref", "owner"), few)
            for r in db.execute(
                f"{with_} SELECT t.owner, t.ref, d.day, {total('d.count')} AS n {from_}"
                " JOIN unknown_days d ON d.owner = t.owner AND d.host = t.host AND d.id = t.id"
                " WHERE t.known = '' AND d.day >= ? GROUP BY t.owner, t.ref, d.day",
                [*(v for k in few for v in (k[1], k[0])), since],
            ):
                found.setdefault((r["owner"], r["ref"]), {})[r["day"]] = int(r["n"])
        return found

    def unknown_one(
        self, owners: tuple[str, ...] | None, ref: str, now: float | None = None
    ) -> dict[str, Any] | None:
        """One template: where it is seen (the hosts most first), its samples from the
        hosts that saw it last, its last days, and a drafted pattern; None if not this
        team's."""
        where, args = owned(owners, ["ref = ?", "known = ''"], [ref])
        today = int((time.time() if now is None else now) // 86400)
        with self._engine.read() as db:
            head = db.execute(
                "SELECT owner, max(template) AS template, count(DISTINCT host) AS hosts,"  # noqa: S608
                f" {total('count')} AS count, min(first_seen) AS first_seen,"
                f" max(last_seen) AS last_seen FROM unknown {where} GROUP BY owner",
                args,
            ).fetchone()
            if head is None:
                return None
            found = whole(dict(head), "count")
            found["where"] = [
                whole(dict(r), "count")
                for r in db.execute(
                    f"SELECT host, {total('count')} AS count, max(last_seen) AS last_seen"  # noqa: S608
                    f" FROM unknown {where} GROUP BY host ORDER BY count DESC, host LIMIT 50",
                    args,
                )
            ]
            latest = db.execute(
                f"SELECT samples FROM unknown {where} ORDER BY last_seen DESC LIMIT ?",  # noqa: S608
                (*args, MAX_SAMPLES),
            ).fetchall()
            days = self._days(db, [(found["owner"], ref)], today - 4 * TREND_DAYS + 1)
        samples: list[str] = []
        for r in latest:
            samples += [s for s in json.loads(r["samples"]) if s not in samples]
        samples = samples[:MAX_SAMPLES]
        tokens = found["template"].split()
        found.update(
            ref=ref,
            samples=samples,
            days=_series(days.get((found["owner"], ref), {}), today, 4 * TREND_DAYS),
            draft=draft_toml(tokens, samples, pattern_id(tokens, set())),
        )
        return found

    def explained(self, owners: tuple[str, ...] | None, limit: int = 20) -> list[dict[str, Any]]:
        """Templates a shipped pattern now explains on some host, the latest first."""
        where, args = owned(owners, ["known != ''"], [])
        with self._engine.read() as db:
            rows = db.execute(
                "SELECT owner, ref, max(template) AS template, max(known) AS known,"  # noqa: S608
                f" count(DISTINCT host) AS hosts, max(updated) AS updated FROM unknown {where}"
                " GROUP BY owner, ref ORDER BY updated DESC, owner, ref LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [dict(r) for r in rows]


def _series(by_day: Mapping[int, int], today: int, days: int) -> list[int]:
    """Counts of the last `days` days, the oldest first (0 where none was heard)."""
    return [int(by_day.get(day, 0)) for day in range(today - days + 1, today + 1)]
