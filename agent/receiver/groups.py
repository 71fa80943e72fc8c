"""Groups of escalations and their workflow in the store: made and grown on ingest,
reopened as regressions, kept quiet by silences, acted on by people; the inbox."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agent.receiver import workflow
from agent.receiver.engine import Conn, Row
from agent.receiver.inbox import InboxView
from agent.receiver.schema import group_ref
from agent.receiver.scopes import RESERVED_NAME
from agent.receiver.storebase import (
    PAGE_BYTES,
    StoreBase,
    chunks,
    event_of,
    is_ref,
    keyed,
    owned,
    rows_of,
    whole,
)
from agent.receiver.workflow import Action, Group, State, Verb, WorkflowError

# a group's lines grow by each event's count (up to 2**53): past 64 bits they stay at the
# largest integer instead of overflowing (an error on PostgreSQL, a float on SQLite)
SATURATED = (
    "CASE WHEN groups.lines > 9223372036854775807 - excluded.lines THEN 9223372036854775807"
    " ELSE groups.lines + excluded.lines END"
)
MAX_LINES = 9223372036854775807
NEW_GROUP = "(?,?,?,?,?,?,?,'open','',NULL,0,?,?,?,?,?,NULL)"  # a group's row as first made
SPARK = 14  # bars in an inbox row's sparkline, over the view's window
TIMELINE = 200  # actions of a group answered, the latest


class GroupStore(StoreBase):
    def inbox(
        self,
        owners: tuple[str, ...] | None,
        view: InboxView,
        now: float,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of groups as a team's inbox shows them, with hosts and a sparkline of
        their escalations over the view's window; and whether more follow."""
        clauses, args = view.where(now)
        where, args = owned(owners, clauses, args)
        with self._engine.read() as db:
            rows = db.execute(
                f"SELECT * FROM groups {where} ORDER BY {view.order()}"  # noqa: S608
                " LIMIT ? OFFSET ?",
                (*args, limit + 1, offset),
            ).fetchall()
            page = [dict(r) for r in rows[:limit]]
            keys = [(g["owner"], g["fingerprint"]) for g in page]
            hosts: dict[tuple[str, str], int] = {}
            spark: dict[tuple[str, str], list[int]] = {k: [0] * SPARK for k in keys}
            if keys:
                # the page's groups joined to their escalations by the group index (an
                # IN over row values is a scan of every escalation on SQLite)
                page_keys = f"WITH k(owner, fingerprint) AS (VALUES {rows_of(2, keys)})"
                flat = [v for k in keys for v in k]
                for r in db.execute(
                    f"{page_keys} SELECT k.owner, k.fingerprint, count(DISTINCT e.host) AS n"  # noqa: S608
                    " FROM k JOIN escalations e ON e.owner = k.owner"
                    " AND e.fingerprint = k.fingerprint GROUP BY 1, 2",
                    flat,
                ):
                    hosts[(r["owner"], r["fingerprint"])] = r["n"]
                start, width = now - view.window_seconds(), view.window_seconds() / SPARK
                for r in db.execute(
                    f"{page_keys} SELECT k.owner, k.fingerprint,"  # noqa: S608
                    " floor((e.first_seen - ?) / ?) AS b, count(*) AS n FROM k"
                    " JOIN escalations e ON e.owner = k.owner AND e.fingerprint = k.fingerprint"
                    " WHERE e.first_seen >= ? GROUP BY 1, 2, 3",
                    (*flat, start, width, start),
                ):
                    if 0 <= r["b"] < SPARK:
                        spark[(r["owner"], r["fingerprint"])][int(r["b"])] = r["n"]
        for g in page:
            key = (g["owner"], g["fingerprint"])
            g["hosts"], g["spark"] = hosts.get(key, 0), spark[key]
            g["regression"] = bool(g["regression"])
            g["shown_state"] = str(_group(g).shown_state(now))
        return page, len(rows) > limit

    def _regroup(self, db: Conn, grown: dict[tuple[str, str], Growth], now: float) -> None:
        """The batch's groups, made or grown (one upsert for all); one a person resolved
        that comes back reopens as a regression, unless silences cover every host it
        came back on: then it is counted, and stays as it is, silenced. A few
        statements a batch, not a few an event (in the caller's transaction)."""
        if not grown:
            return
        patterns = sorted({(o, g.pack, g.pattern) for (o, _), g in grown.items()})
        ends: dict[tuple[str, str, str], dict[str, float]] = {p: {} for p in patterns}
        for few in chunks(patterns, 300):
            with_, from_ = keyed("silences", ("owner", "pack", "pattern"), few)
            for r in db.execute(
                f"{with_} SELECT t.owner, t.pack, t.pattern, t.host, max(t.until) AS until"
                f" {from_} WHERE t.until > ? GROUP BY t.owner, t.pack, t.pattern, t.host",
                (*(v for p in few for v in p), now),
            ):
                ends[(r["owner"], r["pack"], r["pattern"])][r["host"]] = r["until"]
        states: dict[tuple[str, str], Row] = {}
        keys = sorted(grown)  # one lock order for every writer
        for chunk in chunks(keys, 500):
            args: list[Any] = []
            for owner, fingerprint in chunk:
                g = grown[(owner, fingerprint)]
                args += (owner, fingerprint, group_ref(owner, fingerprint), g.pack, g.pattern,
                         g.key, g.severity, g.first, g.last, now, g.new, g.more)  # fmt: skip
            values = ",".join([NEW_GROUP] * len(chunk))
            for r in db.execute(
                f"INSERT INTO groups VALUES {values}"  # noqa: S608
                " ON CONFLICT (owner, fingerprint) DO UPDATE SET"
                " first_seen=least(groups.first_seen, excluded.first_seen),"
                " last_seen=greatest(groups.last_seen, excluded.last_seen),"
                " severity=excluded.severity, updated=excluded.updated,"
                " occurrences=groups.occurrences+excluded.occurrences,"
                f" lines={SATURATED}"
                " RETURNING owner, fingerprint, state, assignee, snoozed_until, regression",
                args,
            ):
                states[(r["owner"], r["fingerprint"])] = r
        quiet = [k for k in keys if not ends[(k[0], grown[k].pack, grown[k].pattern)]]
        if quiet:  # no silence in force on their patterns: none of them is silenced
            db.executemany(
                "UPDATE groups SET silenced_until=NULL WHERE owner=? AND fingerprint=?"
                " AND silenced_until IS NOT NULL",
                quiet,
            )
        for key in keys:
            g = grown[key]
            pattern_ends = ends[(key[0], g.pack, g.pattern)]
            if pattern_ends:  # the group's hosts may have grown: is it still wholly covered?
                self._resilence(db, key[0], g.pack, g.pattern, now, key[1])
            self._came_back(db, key, g, pattern_ends, states[key], now)

    def _came_back(
        self,
        db: Conn,
        key: tuple[str, str],
        g: Growth,
        ends: dict[str, float],
        row: Row,
        now: float,
    ) -> None:
        """Reopen (or wake) a group that lines no silence covers came back to."""
        back = [(host, last) for host, last in g.seen if "" not in ends and host not in ends]
        if not back:
            return  # silences cover every host it came back on: counted, reopens nothing
        if row["state"] == State.RESOLVED:
            resolved = db.execute(
                "SELECT max(at) AS at FROM actions"
                " WHERE owner=? AND fingerprint=? AND verb='resolve'",
                key,
            ).fetchone()["at"]
            if resolved is not None:  # a backlog from before the resolution does not come back
                back = [(host, last) for host, last in back if last > resolved]
                if not back:
                    return
        after, verb = workflow.recurred(_group(row), now)
        if verb is not None:
            self._set_group(db, *key, after, now)
            by = RESERVED_NAME  # the receiver itself
            self._record(db, *key, now, by, verb, f"reported by {back[0][0]}")

    def _set_group(self, db: Conn, owner: str, fingerprint: str, group: Group, now: float) -> None:
        db.execute(
            "UPDATE groups SET state=?, assignee=?, snoozed_until=?, regression=?, updated=?"
            " WHERE owner=? AND fingerprint=?",
            (
                str(group.state),
                group.assignee,
                group.snoozed_until,
                int(group.regression),
                now,
                owner,
                fingerprint,
            ),
        )

    def _record(
        self, db: Conn, owner: str, fingerprint: str, now: float, who: str, verb: Verb, detail: str
    ) -> None:
        db.execute(
            "INSERT INTO actions (owner, fingerprint, at, who, verb, detail) VALUES (?,?,?,?,?,?)",
            (owner, fingerprint, now, who, str(verb), detail),
        )

    def group(
        self, ref: str, owners: tuple[str, ...] | None, occurrences: int = 200
    ) -> dict[str, Any] | None:
        """One group by its ref, if one of the owners given owns it: its state, its
        timeline of actions, and its latest `occurrences` escalations."""
        if not is_ref(ref):
            return None
        where, args = owned(owners, ["ref=?"], [ref])
        with self._engine.read() as db:
            row = db.execute(f"SELECT * FROM groups {where}", args).fetchone()  # noqa: S608
            if row is None:
                return None
            key = (row["owner"], row["fingerprint"])
            timeline = db.execute(
                "SELECT at, who, verb, detail FROM actions WHERE owner=? AND fingerprint=?"
                " ORDER BY seq DESC LIMIT ?",
                (*key, TIMELINE),
            ).fetchall()[::-1]
            hosts = [
                r["host"]
                for r in db.execute(
                    "SELECT DISTINCT host FROM escalations WHERE owner=? AND fingerprint=?"
                    " ORDER BY host LIMIT 200",
                    key,
                )
            ]
            rows: list[Row] = []
            budget = PAGE_BYTES
            for r in db.execute(
                "SELECT body, received, submitted_by, ref FROM escalations"
                " WHERE owner=? AND fingerprint=? ORDER BY last_seen DESC, ref LIMIT ?",
                (*key, occurrences),
            ):
                budget -= len(r["body"])
                if rows and budget < 0:  # big bodies: fewer of them
                    break
                rows.append(r)
        found = dict(row)
        found["regression"] = bool(found["regression"])
        found["timeline"] = [dict(a) for a in timeline]
        found["hosts"] = hosts
        found["silences"] = self.silences(row["owner"], row["pack"], row["pattern"], time.time())
        found["escalations"] = [event_of(r) for r in rows]
        return found

    def act(
        self, ref: str, owners: tuple[str, ...] | None, action: Action, who: str
    ) -> dict[str, Any] | None:
        """A person's action on a group they may see; None if there is no such group.

        Raises WorkflowError (nothing changed) if the action does not apply.
        """
        if not is_ref(ref):
            return None
        now = time.time()
        where, args = owned(owners, ["ref=?"], [ref])

        def act(db: Conn) -> bool:
            row = db.execute(
                "SELECT owner, fingerprint, pack, pattern, state, assignee, snoozed_until,"  # noqa: S608
                f" regression FROM groups {where}{db.for_update}",
                args,
            ).fetchone()
            if row is None:
                return False
            after = workflow.act(_group(row), action, now)
            self._set_group(db, row["owner"], row["fingerprint"], after, now)
            detail = _detail(action)
            if action.verb is Verb.SILENCE:
                self._silence(db, row, action, who, now)
            elif action.verb is Verb.UNSILENCE:
                detail = self._unsilence(db, row, action, now)
            self._record(db, row["owner"], row["fingerprint"], now, who, action.verb, detail)
            return True

        if not self._engine.write(act):
            return None
        return self.group(ref, owners, occurrences=0)

    def owners(self, now: float) -> list[dict[str, Any]]:
        """Every owner with groups: how many, how many open (as the inbox's open view
        counts them: not silenced), and its hosts."""
        with self._engine.read() as db:
            rows = db.execute(
                "SELECT owner, count(*) AS groups, count(*) FILTER (WHERE"
                " (state IN ('open', 'acknowledged') OR (state = 'snoozed' AND snoozed_until <= ?))"
                " AND (silenced_until IS NULL OR silenced_until <= ?)) AS open,"
                " (SELECT count(*) FROM hosts h WHERE h.owner = g.owner) AS hosts"
                " FROM groups g GROUP BY owner ORDER BY owner",
                (now, now),
            ).fetchall()
        return [whole(dict(r), "open") for r in rows]

    def _silence(self, db: Conn, group: Row, action: Action, who: str, now: float) -> None:
        """Keep the silence; every group of the pattern it covers wholly is silenced."""
        key = (group["owner"], group["pack"], group["pattern"])
        db.execute(
            "INSERT INTO silences (owner, pack, pattern, host, until, who, created, reason)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (*key, action.host, action.until, who, now, action.note),
        )
        self._resilence(db, *key, now)

    def _resilence(
        self,
        db: Conn,
        owner: str,
        pack: str,
        pattern: str,
        now: float,
        fingerprint: str | None = None,
    ) -> dict[str, float]:
        """Set how long each group of a pattern (or the one given) stays silenced: until
        the silences in force cover every host it was seen on — for each host, the
        latest end of those covering it; the group, the earliest of those. Returns the
        ends in force by host ("" everywhere). With none, no group's hosts are read:
        this runs for every escalation stored."""
        ends = {
            r["host"]: r["until"]
            for r in db.execute(
                "SELECT host, max(until) AS until FROM silences WHERE owner=? AND pack=?"
                " AND pattern=? AND until>? GROUP BY host",
                (owner, pack, pattern, now),
            )
        }
        which = "AND fingerprint=?" if fingerprint else ""
        scope = (owner, pack, pattern, *((fingerprint,) if fingerprint else ()))
        if not ends:
            db.execute(
                "UPDATE groups SET silenced_until=NULL WHERE owner=? AND pack=? AND pattern=?"  # noqa: S608
                f" {which} AND silenced_until IS NOT NULL",
                scope,
            )
            return ends
        seen: dict[str, list[str]] = {}
        for r in db.execute(
            "SELECT DISTINCT g.fingerprint, e.host FROM groups g LEFT JOIN escalations e"  # noqa: S608
            " ON e.owner = g.owner AND e.fingerprint = g.fingerprint"
            f" WHERE g.owner=? AND g.pack=? AND g.pattern=? {which.replace('AND ', 'AND g.')}",
            scope,
        ):
            hosts = seen.setdefault(r["fingerprint"], [])
            if r["host"] is not None:
                hosts.append(r["host"])
        for fingerprint_, hosts in sorted(seen.items()):
            covering = [max(ends.get("", 0.0), ends.get(h, 0.0)) for h in hosts]
            until = min(covering, default=ends.get("", 0.0)) or None
            db.execute(
                "UPDATE groups SET silenced_until=? WHERE owner=? AND fingerprint=?",
                (until, owner, fingerprint_),
            )
        return ends

    def _unsilence(self, db: Conn, group: Row, action: Action, now: float) -> str:
        """Lift one of the silences of the group's pattern; its groups show again."""
        lifted = db.execute(
            "UPDATE silences SET until=? WHERE id=? AND owner=? AND pack=? AND pattern=?"
            " AND until>?",
            (now, action.silence, group["owner"], group["pack"], group["pattern"], now),
        )
        if not lifted.rowcount:
            raise WorkflowError("no such silence in force on this pattern")
        self._resilence(db, group["owner"], group["pack"], group["pattern"], now)
        return f"lifted silence {action.silence}"

    def silences(self, owner: str, pack: str, pattern: str, now: float) -> list[dict[str, Any]]:
        """The silences in force on a pattern of an owner."""
        with self._engine.read() as db:
            rows = db.execute(
                "SELECT id, host, until, who, created, reason FROM silences"
                " WHERE owner=? AND pack=? AND pattern=? AND until>? ORDER BY id",
                (owner, pack, pattern, now),
            ).fetchall()
        return [dict(r) for r in rows]


@dataclass
class Growth:
    """What a batch adds to one group: escalations, lines, its span, where it was seen."""

    pack: str
    pattern: str
    key: str
    severity: str
    first: float
    last: float
    new: int = 0
    more: int = 0
    seen: list[tuple[str, float]] = field(default_factory=list)  # (host, last seen) per event

    def add(self, e: dict[str, Any], new: int, more: int, now: float) -> None:
        first, last = float(e.get("first_seen", now)), float(e.get("last_seen", now))
        self.first, self.last = min(self.first, first), max(self.last, last)
        self.severity = str(e.get("severity", "error"))  # the latest event's, as it was
        self.new += new
        self.more = min(self.more + more, MAX_LINES)
        self.seen.append((e["host"], last))


def growth(e: dict[str, Any], now: float) -> Growth:
    first, last = float(e.get("first_seen", now)), float(e.get("last_seen", now))
    key = str(e.get("key", "")).replace("\0", "\ufffd")  # no NUL in a PostgreSQL text
    return Growth(e["pack"], e["pattern"], key, str(e.get("severity", "error")), first, last)


def _group(row: Row) -> Group:
    return Group(
        state=State(row["state"]),
        assignee=str(row["assignee"]),
        snoozed_until=row["snoozed_until"],
        regression=bool(row["regression"]),
    )


def _detail(action: Action) -> str:
    """What the timeline says beside the verb."""
    if action.verb is Verb.ASSIGN:
        assignee = action.assignee.strip()
        return f"to {assignee}" if assignee else "unassigned"
    if action.verb is Verb.SNOOZE and action.until is not None:
        return "until " + _utc(action.until)
    if action.verb is Verb.SILENCE and action.until is not None:
        where = f"on {action.host}" if action.host else "everywhere"
        reason = f" ({action.note})" if action.note else ""
        return f"{where} until {_utc(action.until)}{reason}"
    return action.note if action.verb is Verb.NOTE else ""


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
