"""Receiver storage on SQLite: tokens (hashed, scoped) and escalations (idempotent by id).

Every read takes the owners the caller may see (None: all) and every write
the identity that makes it, so tenancy is enforced where the rows are, not
only in the routes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from agent.errors import StateError
from agent.receiver import workflow
from agent.receiver.inbox import InboxView
from agent.receiver.schema import escalation_ref, group_ref, migrate
from agent.receiver.scopes import Identity, Scope, binding_problem
from agent.receiver.workflow import Action, Group, State, Verb, WorkflowError

PAGE_BYTES = 4 * 1024 * 1024  # a listing page ends past this much of stored bodies
SPARK = 14  # bars in an inbox row's sparkline, over the view's window
TIMELINE = 200  # actions of a group answered, the latest
HISTORY_HOURS = 35 * 24  # hourly totals per host and pattern kept for the tier-1 view


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ReceiverStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._pruned = 0  # the hour the stats history was last pruned
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self.notes = migrate(self._db, str(path))
        except sqlite3.Error as exc:
            raise StateError(
                f"{path}: cannot open the receiver database ({exc}); if it is damaged,"
                " restore it from a backup or move it aside to start an empty one"
            ) from exc

    def writable(self) -> str | None:
        """Why the database cannot take a write now (for /healthz), or None if it can."""
        try:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO health VALUES (1, ?)", (time.time(),))
        except sqlite3.Error as exc:
            return f"the database refuses writes: {exc}"
        return None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create_token(
        self,
        scope: Scope,
        name: str = "",
        owners: tuple[str, ...] = (),
        hosts: tuple[str, ...] = (),
        expires: float | None = None,
    ) -> str:
        """A new token (shown once) for `scope`, bound to `owners` and `hosts`.

        `name` defaults to the token's id; raises ValueError for a binding
        the scope cannot have (see scopes.binding_problem).
        """
        problem = binding_problem(scope, owners, hosts, name)
        if problem is not None:
            raise ValueError(problem)
        token = "lm_" + secrets.token_urlsafe(32)
        hashed = token_hash(token)
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens (hash, name, scope, owners, hosts, created, expires)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    hashed,
                    name or hashed[:12],
                    str(scope),
                    json.dumps(list(owners)),
                    json.dumps(list(hosts)),
                    time.time(),
                    expires,
                ),
            )
        return token

    def tokens(self) -> list[dict[str, Any]]:
        """Every token by its id (the first 12 characters of its hash), never the token."""
        with self._lock:
            rows = self._db.execute(
                "SELECT substr(hash, 1, 12) AS id, name, scope, owners, hosts, created, expires,"
                " revoked FROM tokens ORDER BY created"
            ).fetchall()
        listed = []
        for row in rows:
            item = dict(row)
            item["owners"], item["hosts"] = json.loads(row["owners"]), json.loads(row["hosts"])
            listed.append(item)
        return listed

    def revoke(self, token_id: str) -> str:
        """Revoke the one token whose id starts with `token_id`; returns its name.

        Takes effect at once: every request checks the database.
        """
        if len(token_id) < 6 or not all(c in "0123456789abcdef" for c in token_id):
            raise LookupError("a token id is at least 6 hex characters, as `token list` shows")
        with self._lock:
            rows = self._db.execute(
                "SELECT hash, name FROM tokens WHERE substr(hash, 1, ?) = ?",
                (len(token_id), token_id),
            ).fetchall()
            if len(rows) != 1:
                raise LookupError(
                    f"no token with id {token_id}"
                    if not rows
                    else f"{len(rows)} tokens start with {token_id}: give more of the id"
                )
            self._db.execute(
                "UPDATE tokens SET revoked=coalesce(revoked, ?) WHERE hash=?",
                (time.time(), rows[0]["hash"]),
            )
        return str(rows[0]["name"])

    def authenticate(self, token: str) -> Identity | None:
        """Who a live token (not revoked, not expired) is, or None; compared on hashes."""
        return self.identity(token_hash(token))

    def identity(self, hashed: str) -> Identity | None:
        """Who the live token with this hash is (a console session holds the hash, never
        the token), or None: revoked and expired tokens end their sessions at once."""
        with self._lock:
            row = self._db.execute(
                "SELECT hash, name, scope, owners, hosts, expires, revoked FROM tokens"
                " WHERE hash=?",
                (hashed,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row["hash"], hashed):
            return None
        if row["revoked"] is not None or (
            row["expires"] is not None and row["expires"] <= time.time()
        ):
            return None
        return Identity(
            token_id=hashed[:12],
            name=str(row["name"]),
            scope=Scope(row["scope"]),
            owners=tuple(json.loads(row["owners"])),
            hosts=tuple(json.loads(row["hosts"])),
        )

    def open_session(self, token: str, age: float) -> tuple[str, str]:
        """A console session for a live token: (its id, its CSRF token). Only the id's
        hash is kept, so a copy of the database opens no session."""
        session, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(24), time.time()
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            self._db.execute(
                "INSERT INTO sessions VALUES (?,?,?,?)",
                (token_hash(session), token_hash(token), csrf, now + age),
            )
        return session, csrf

    def session(self, session: str) -> tuple[Identity, str] | None:
        """Who a live session is (its token live too) and its CSRF token, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT token_hash, csrf, expires FROM sessions WHERE id_hash=?",
                (token_hash(session),),
            ).fetchone()
        if row is None or row["expires"] <= time.time():
            return None
        who = self.identity(row["token_hash"])
        return (who, str(row["csrf"])) if who is not None else None

    def close_session(self, session: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE id_hash=?", (token_hash(session),))

    def secret(self, name: str) -> str:
        """A random secret kept in the database (made on first use), so every receiver
        on it signs and checks the same session cookies."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES (?, ?)", (name, secrets.token_hex(32))
            )
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (name,)).fetchone()
        return str(row["value"])

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
        where, args = _owned(owners, clauses, args)
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM groups {where} ORDER BY {view.order()}"  # noqa: S608
                " LIMIT ? OFFSET ?",
                (*args, limit + 1, offset),
            ).fetchall()
            page = [dict(r) for r in rows[:limit]]
            keys = [(g["owner"], g["fingerprint"]) for g in page]
            hosts: dict[tuple[str, str], int] = {}
            spark: dict[tuple[str, str], list[int]] = {k: [0] * SPARK for k in keys}
            if keys:
                pairs = ",".join("(?,?)" for _ in keys)
                flat = [v for k in keys for v in k]
                for r in self._db.execute(
                    "SELECT owner, fingerprint, count(DISTINCT host) AS n FROM escalations"  # noqa: S608
                    f" WHERE (owner, fingerprint) IN (VALUES {pairs}) GROUP BY 1, 2",
                    flat,
                ):
                    hosts[(r["owner"], r["fingerprint"])] = r["n"]
                start, width = now - view.window_seconds(), view.window_seconds() / SPARK
                for r in self._db.execute(
                    "SELECT owner, fingerprint, CAST((first_seen - ?) / ? AS INTEGER) AS b,"  # noqa: S608
                    " count(*) AS n FROM escalations"
                    f" WHERE (owner, fingerprint) IN (VALUES {pairs}) AND first_seen >= ?"
                    " GROUP BY 1, 2, 3",
                    (start, width, *flat, start),
                ):
                    if 0 <= r["b"] < SPARK:
                        spark[(r["owner"], r["fingerprint"])][r["b"]] = r["n"]
        for g in page:
            key = (g["owner"], g["fingerprint"])
            g["hosts"], g["spark"] = hosts.get(key, 0), spark[key]
            g["regression"] = bool(g["regression"])
            g["shown_state"] = str(_group_of(g).shown_state(now))
        return page, len(rows) > limit

    def store(
        self, events: list[dict[str, Any]], who: Identity, agent_version: str = ""
    ) -> tuple[list[str], list[str]]:
        """Insert each event once under `who`'s name; returns (accepted ids, duplicate ids).

        An escalation's key is (submitting token's name, owner, host, id): the
        same id from another name, for another owner or from another host is
        another escalation, so none can overwrite or pre-claim another's, and a
        stored row's owner and host never change. An event sent again with a
        higher count (more matches since it was first sent) updates the stored
        one; anything else with a known key is a duplicate and changes nothing.
        Owners must be decided already.
        """
        accepted: list[str] = []
        duplicates: list[str] = []
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for e in events:
                    count = int(e.get("count", 1))
                    key = (who.name, e["owner"], e["host"], e["id"])
                    before = self._db.execute(
                        "SELECT count FROM escalations"
                        " WHERE submitted_by=? AND owner=? AND host=? AND id=?",
                        key,
                    ).fetchone()
                    if before is not None:
                        if before["count"] >= count:
                            duplicates.append(e["id"])
                            continue
                        self._db.execute(
                            "UPDATE escalations SET count=?, last_seen=max(last_seen, ?), body=?"
                            " WHERE submitted_by=? AND owner=? AND host=? AND id=?",
                            (count, float(e.get("last_seen", now)), json.dumps(e), *key),
                        )
                        accepted.append(e["id"])
                        self._recur(e, now, new=0, more=count - before["count"])
                        continue
                    self._db.execute(
                        "INSERT INTO escalations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            *key,
                            escalation_ref(*key),
                            now,
                            e["pack"],
                            e["pattern"],
                            str(e.get("severity", "error")),
                            e["status"],
                            e["fingerprint"],
                            count,
                            float(e.get("first_seen", now)),
                            float(e.get("last_seen", now)),
                            json.dumps(e),
                        ),
                    )
                    accepted.append(e["id"])
                    self._recur(e, now, new=1, more=count)
                heard: dict[tuple[str, str], dict[str, str]] = {}
                for e in events:
                    packs = heard.setdefault((e["owner"], e["host"]), {})
                    packs[e["pack"]] = str(e.get("pack_version", ""))
                for (owner, host), packs in heard.items():
                    self._heard(owner, host, who.name, agent_version, packs, now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return accepted, duplicates

    def _recur(self, e: dict[str, Any], now: float, new: int, more: int) -> None:
        """The event's group, made or grown by `new` escalations and `more` lines; one a
        person resolved that comes back reopens as a regression, unless a silence
        covers the event's pattern and host: then it is counted, and the group stays
        as it is, silenced (in the caller's transaction)."""
        owner, fingerprint = e["owner"], e["fingerprint"]
        first, last = float(e.get("first_seen", now)), float(e.get("last_seen", now))
        self._db.execute(
            "INSERT INTO groups VALUES (?,?,?,?,?,?,?,'open','',NULL,0,?,?,?,?,?,NULL)"
            " ON CONFLICT (owner, fingerprint) DO UPDATE SET"
            " first_seen=min(first_seen, excluded.first_seen),"
            " last_seen=max(last_seen, excluded.last_seen), severity=excluded.severity,"
            " updated=excluded.updated, occurrences=occurrences+excluded.occurrences,"
            " lines=lines+excluded.lines",
            (
                owner,
                fingerprint,
                group_ref(owner, fingerprint),
                e["pack"],
                e["pattern"],
                str(e.get("key", "")),
                str(e.get("severity", "error")),
                first,
                last,
                now,
                new,
                more,
            ),
        )
        silenced = self._db.execute(
            "SELECT max(until) FROM silences WHERE owner=? AND pack=? AND pattern=?"
            " AND until>? AND host IN ('', ?)",
            (owner, e["pack"], e["pattern"], now, e["host"]),
        ).fetchone()[0]
        self._db.execute(
            "UPDATE groups SET silenced_until=? WHERE owner=? AND fingerprint=?",
            (silenced, owner, fingerprint),
        )
        if silenced is not None:
            return
        row = self._db.execute(
            "SELECT state, assignee, snoozed_until, regression FROM groups"
            " WHERE owner=? AND fingerprint=?",
            (owner, fingerprint),
        ).fetchone()
        if row["state"] == State.RESOLVED:
            resolved = self._db.execute(
                "SELECT max(at) FROM actions WHERE owner=? AND fingerprint=? AND verb='resolve'",
                (owner, fingerprint),
            ).fetchone()[0]
            if resolved is not None and last <= resolved:
                return  # a backlog from before the resolution: it does not come back
        after, verb = workflow.recurred(_group(row), now)
        if verb is not None:
            self._set_group(owner, fingerprint, after, now)
            self._record(owner, fingerprint, now, "receiver", verb, f"reported by {e['host']}")

    def _set_group(self, owner: str, fingerprint: str, group: Group, now: float) -> None:
        self._db.execute(
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
        self, owner: str, fingerprint: str, now: float, who: str, verb: Verb, detail: str
    ) -> None:
        self._db.execute(
            "INSERT INTO actions (owner, fingerprint, at, who, verb, detail) VALUES (?,?,?,?,?,?)",
            (owner, fingerprint, now, who, str(verb), detail),
        )

    def group(
        self, ref: str, owners: tuple[str, ...] | None, occurrences: int = 200
    ) -> dict[str, Any] | None:
        """One group by its ref, if one of the owners given owns it: its state, its
        timeline of actions, and its latest `occurrences` escalations."""
        where, args = _owned(owners, ["ref=?"], [ref])
        with self._lock:
            row = self._db.execute(f"SELECT * FROM groups {where}", args).fetchone()  # noqa: S608
            if row is None:
                return None
            key = (row["owner"], row["fingerprint"])
            timeline = self._db.execute(
                "SELECT at, who, verb, detail FROM actions WHERE owner=? AND fingerprint=?"
                " ORDER BY seq DESC LIMIT ?",
                (*key, TIMELINE),
            ).fetchall()[::-1]
            hosts = [
                r[0]
                for r in self._db.execute(
                    "SELECT DISTINCT host FROM escalations WHERE owner=? AND fingerprint=?"
                    " ORDER BY host LIMIT 200",
                    key,
                )
            ]
            rows: list[sqlite3.Row] = []
            budget = PAGE_BYTES
            for r in self._db.execute(
                "SELECT body, received, submitted_by, ref FROM escalations"
                " WHERE owner=? AND fingerprint=? ORDER BY last_seen DESC LIMIT ?",
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
        found["escalations"] = [_event(r) for r in rows]
        return found

    def act(
        self, ref: str, owners: tuple[str, ...] | None, action: Action, who: str
    ) -> dict[str, Any] | None:
        """A person's action on a group they may see; None if there is no such group.

        Raises WorkflowError (nothing changed) if the action does not apply.
        """
        now = time.time()
        where, args = _owned(owners, ["ref=?"], [ref])
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT owner, fingerprint, pack, pattern, state, assignee, snoozed_until,"  # noqa: S608
                    f" regression FROM groups {where}",
                    args,
                ).fetchone()
                if row is None:
                    self._db.execute("ROLLBACK")
                    return None
                after = workflow.act(_group(row), action, now)
                self._set_group(row["owner"], row["fingerprint"], after, now)
                detail = _detail(action)
                if action.verb is Verb.SILENCE:
                    self._silence(row, action, who, now)
                elif action.verb is Verb.UNSILENCE:
                    detail = self._unsilence(row, action, now)
                self._record(row["owner"], row["fingerprint"], now, who, action.verb, detail)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.group(ref, owners, occurrences=0)

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
        where, args = _owned(owners, column="hosts.owner")
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
            item = _whole(dict(r), "matches", "resolved", "failed", "escalated")
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
        where, args = _owned(owners, [*clauses, "hour >= ?"], [*values, start_hour])
        before, before_args = _owned(owners, [*clauses, "hour < ?"], [*values, start_hour])
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

    def owners(self, now: float) -> list[dict[str, Any]]:
        """Every owner with groups or hosts: how many groups, how many open, hosts."""
        with self._lock:
            rows = self._db.execute(
                "SELECT owner, count(*) AS groups, total(state IN ('open', 'acknowledged')"
                " OR (state = 'snoozed' AND snoozed_until <= ?)) AS open,"
                " (SELECT count(*) FROM hosts h WHERE h.owner = g.owner) AS hosts"
                " FROM groups g GROUP BY owner ORDER BY owner",
                (now,),
            ).fetchall()
        return [_whole(dict(r), "open") for r in rows]

    def _silence(self, group: sqlite3.Row, action: Action, who: str, now: float) -> None:
        """Keep the silence; the group itself is silenced at once if it covers every
        host the group was seen on."""
        key = (group["owner"], group["pack"], group["pattern"])
        self._db.execute(
            "INSERT INTO silences (owner, pack, pattern, host, until, who, created, reason)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (*key, action.host, action.until, who, now, action.note),
        )
        hosts = {
            r[0]
            for r in self._db.execute(
                "SELECT DISTINCT host FROM escalations WHERE owner=? AND fingerprint=?",
                (group["owner"], group["fingerprint"]),
            )
        }
        if not action.host or hosts <= {action.host}:
            self._db.execute(
                "UPDATE groups SET silenced_until=max(coalesce(silenced_until, 0), ?)"
                " WHERE owner=? AND fingerprint=?",
                (action.until, group["owner"], group["fingerprint"]),
            )

    def _unsilence(self, group: sqlite3.Row, action: Action, now: float) -> str:
        """Lift one of the silences of the group's pattern; its groups show again."""
        lifted = self._db.execute(
            "UPDATE silences SET until=? WHERE id=? AND owner=? AND pack=? AND pattern=?"
            " AND until>?",
            (now, action.silence, group["owner"], group["pack"], group["pattern"], now),
        )
        if not lifted.rowcount:
            raise WorkflowError("no such silence in force on this pattern")
        self._db.execute(
            "UPDATE groups SET silenced_until=NULL WHERE owner=? AND pack=? AND pattern=?",
            (group["owner"], group["pack"], group["pattern"]),
        )
        return f"lifted silence {action.silence}"

    def silences(self, owner: str, pack: str, pattern: str, now: float) -> list[dict[str, Any]]:
        """The silences in force on a pattern of an owner."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, host, until, who, created, reason FROM silences"
                " WHERE owner=? AND pack=? AND pattern=? AND until>? ORDER BY id",
                (owner, pack, pattern, now),
            ).fetchall()
        return [dict(r) for r in rows]

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
        where, args = _owned(owners)
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
            _whole(dict(r), "matches", "incidents", "resolved", "failed", "escalated")
            for r in rows[:limit]
        ]
        return page, len(rows) > limit

    def query(
        self,
        filters: dict[str, str],
        owners: tuple[str, ...] | None,
        limit: int = 500,
        offset: int = 0,
        budget: int = PAGE_BYTES,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of escalations, newest first, of the owners given, matching `filters`,
        and whether more follow.

        At most `limit` rows and, past the first, `budget` bytes of stored
        bodies: a page of big events ends early instead of filling memory.
        """
        where, args = _owned(owners, [f"{k}=?" for k in filters], list(filters.values()))
        page: list[dict[str, Any]] = []
        with self._lock:
            cursor = self._db.execute(
                f"SELECT body, received, submitted_by, ref FROM escalations {where}"  # noqa: S608
                " ORDER BY received DESC, submitted_by, id LIMIT ? OFFSET ?",
                (*args, limit + 1, offset),
            )
            more = False
            for row in cursor:
                budget -= len(row["body"])
                if len(page) == limit or (page and budget < 0):
                    more = True
                    break
                page.append(_event(row))
            cursor.close()
        return page, more

    def get(self, ref: str, owners: tuple[str, ...] | None) -> dict[str, Any] | None:
        """One escalation by its receiver id, if one of the owners given owns it."""
        where, args = _owned(owners, ["ref=?"], [ref])
        with self._lock:
            row = self._db.execute(
                f"SELECT body, received, submitted_by, ref FROM escalations {where}",  # noqa: S608
                args,
            ).fetchone()
        return None if row is None else _event(row)


def _owned(  # only fixed column names and placeholders reach the SQL it makes
    owners: tuple[str, ...] | None,
    clauses: list[str] | None = None,
    args: list[Any] | None = None,
    column: str = "owner",
) -> tuple[str, list[Any]]:
    """A WHERE clause limited to `owners` (None: every owner) and the clauses given."""
    clauses, args = list(clauses or []), list(args or [])
    if owners is not None:
        clauses.append(f"{column} IN ({','.join('?' * len(owners))})" if owners else "0")
        args += owners
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), args


def _group_of(g: dict[str, Any]) -> Group:
    return Group(
        state=State(g["state"]),
        assignee=str(g["assignee"]),
        snoozed_until=g["snoozed_until"],
        regression=bool(g["regression"]),
    )


def _group(row: sqlite3.Row) -> Group:
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


def _event(row: sqlite3.Row) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(row["body"])
    event.update(received=row["received"], submitted_by=row["submitted_by"], ref=row["ref"])
    return event


def _whole(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    """Sums are taken with total() (a double: it cannot overflow); shown as integers."""
    for key in keys:
        row[key] = int(row[key])
    return row
