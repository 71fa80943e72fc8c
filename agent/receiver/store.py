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
from agent.receiver.schema import escalation_ref, migrate
from agent.receiver.scopes import Identity, Scope, binding_problem

PAGE_BYTES = 4 * 1024 * 1024  # a listing page ends past this much of stored bodies


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ReceiverStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
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
        wanted = token_hash(token)
        with self._lock:
            row = self._db.execute(
                "SELECT hash, name, scope, owners, hosts, expires, revoked FROM tokens"
                " WHERE hash=?",
                (wanted,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row["hash"], wanted):
            return None
        if row["revoked"] is not None or (
            row["expires"] is not None and row["expires"] <= time.time()
        ):
            return None
        return Identity(
            token_id=wanted[:12],
            name=str(row["name"]),
            scope=Scope(row["scope"]),
            owners=tuple(json.loads(row["owners"])),
            hosts=tuple(json.loads(row["hosts"])),
        )

    def store(self, events: list[dict[str, Any]], who: Identity) -> tuple[list[str], list[str]]:
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
                    updated = self._db.execute(
                        "UPDATE escalations SET count=?, last_seen=max(last_seen, ?), body=?"
                        " WHERE submitted_by=? AND owner=? AND host=? AND id=? AND count<?",
                        (count, float(e.get("last_seen", now)), json.dumps(e), *key, count),
                    )
                    if updated.rowcount:
                        accepted.append(e["id"])
                        continue
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO escalations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                    (accepted if cursor.rowcount else duplicates).append(e["id"])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return accepted, duplicates

    def store_stats(self, who: Identity, host: str, rows: list[dict[str, Any]]) -> None:
        """A host's cumulative totals per pattern, as its agent last reported them.

        The latest report wins (an agent whose state was reset reports lower
        totals, and is right to). Rows are kept per owner, host and pattern, so
        a host moved to another token replaces its figures instead of counting
        twice; only a token bound to that host and owner can post them.
        """
        now = time.time()
        with self._lock:
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

    def summary(
        self, owners: tuple[str, ...] | None, limit: int = 500
    ) -> tuple[list[dict[str, Any]], bool]:
        """Escalations counted per owner, pack, pattern and status (most recent first):
        at most `limit` groups, and whether more follow."""
        where, args = _owned(owners)
        with self._lock:
            rows = self._db.execute(
                "SELECT owner, pack, pattern, status, count(*) AS n, total(count) AS lines,"  # noqa: S608
                f" count(DISTINCT host) AS hosts, max(last_seen) AS last FROM escalations {where}"
                " GROUP BY owner, pack, pattern, status ORDER BY last DESC LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
        ordered = sorted(rows[:limit], key=lambda r: (r["owner"], r["pack"], r["pattern"]))
        return [_whole(dict(r), "lines") for r in ordered], len(rows) > limit


def _owned(  # only fixed column names and placeholders reach the SQL it makes
    owners: tuple[str, ...] | None, clauses: list[str] | None = None, args: list[Any] | None = None
) -> tuple[str, list[Any]]:
    """A WHERE clause limited to `owners` (None: every owner) and the clauses given."""
    clauses, args = list(clauses or []), list(args or [])
    if owners is not None:
        clauses.append(f"owner IN ({','.join('?' * len(owners))})" if owners else "0")
        args += owners
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), args


def _event(row: sqlite3.Row) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(row["body"])
    event.update(received=row["received"], submitted_by=row["submitted_by"], ref=row["ref"])
    return event


def _whole(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    """Sums are taken with total() (a double: it cannot overflow); shown as integers."""
    for key in keys:
        row[key] = int(row[key])
    return row
