"""Receiver storage on SQLite: tokens (hashed) and escalations (idempotent by id)."""

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

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY, owner TEXT NOT NULL, created REAL NOT NULL,
    expires REAL, revoked REAL);
CREATE TABLE IF NOT EXISTS escalations (
    id TEXT PRIMARY KEY, received REAL NOT NULL, submitted_by TEXT NOT NULL,
    host TEXT NOT NULL, owner TEXT NOT NULL, pack TEXT NOT NULL, pattern TEXT NOT NULL,
    severity TEXT NOT NULL, status TEXT NOT NULL, fingerprint TEXT NOT NULL,
    count INTEGER NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS escalations_owner ON escalations (owner, pattern);
CREATE TABLE IF NOT EXISTS health (
    one INTEGER PRIMARY KEY CHECK (one = 1), checked REAL NOT NULL);
CREATE TABLE IF NOT EXISTS stats (
    host TEXT NOT NULL, pack TEXT NOT NULL, pattern TEXT NOT NULL, owner TEXT NOT NULL,
    matches INTEGER NOT NULL, incidents INTEGER NOT NULL, resolved INTEGER NOT NULL,
    failed INTEGER NOT NULL, escalated INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (host, pack, pattern));
"""


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
            self._db.executescript(SCHEMA)
            have = {r[1] for r in self._db.execute("PRAGMA table_info(tokens)")}
            for column in ("expires", "revoked"):  # databases of earlier releases
                if column not in have:
                    self._db.execute(f"ALTER TABLE tokens ADD COLUMN {column} REAL")
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

    def create_token(self, owner: str, expires: float | None = None) -> str:
        """A new token for `owner`, valid until `expires` (Unix time) if given; shown once."""
        token = "lm_" + secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens (hash, owner, created, expires) VALUES (?,?,?,?)",
                (token_hash(token), owner, time.time(), expires),
            )
        return token

    def tokens(self) -> list[dict[str, Any]]:
        """Every token by its id (the first 12 characters of its hash), never the token."""
        with self._lock:
            rows = self._db.execute(
                "SELECT substr(hash, 1, 12) AS id, owner, created, expires, revoked FROM tokens"
                " ORDER BY created"
            ).fetchall()
        return [dict(r) for r in rows]

    def revoke(self, token_id: str) -> str:
        """Revoke the one token whose id starts with `token_id`; returns its owner.

        Takes effect at once: every request checks the database.
        """
        if len(token_id) < 6 or not all(c in "0123456789abcdef" for c in token_id):
            raise LookupError("a token id is at least 6 hex characters, as `token list` shows")
        with self._lock:
            rows = self._db.execute(
                "SELECT hash, owner FROM tokens WHERE substr(hash, 1, ?) = ?",
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
        return str(rows[0]["owner"])

    def authenticate(self, token: str) -> str | None:
        """The owner of a live token (not revoked, not expired), or None; compared on hashes."""
        wanted = token_hash(token)
        with self._lock:
            row = self._db.execute(
                "SELECT hash, owner, expires, revoked FROM tokens WHERE hash=?", (wanted,)
            ).fetchone()
        if row is None or not hmac.compare_digest(row["hash"], wanted):
            return None
        if row["revoked"] is not None or (
            row["expires"] is not None and row["expires"] <= time.time()
        ):
            return None
        return str(row["owner"])

    def store(self, events: list[dict[str, Any]], submitted_by: str) -> tuple[list[str], list[str]]:
        """Insert each event once; returns (accepted ids, duplicate ids).

        An event sent again with a higher count (more matches since it was
        first sent) updates the stored one; anything else with a known id is a
        duplicate and changes nothing.
        """
        accepted: list[str] = []
        duplicates: list[str] = []
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for e in events:
                    count = int(e.get("count", 1))
                    updated = self._db.execute(
                        "UPDATE escalations SET count=?, last_seen=max(last_seen, ?), body=?"
                        " WHERE id=? AND count<?",
                        (
                            count,
                            float(e.get("last_seen", now)),
                            json.dumps(e, default=str),
                            e["id"],
                            count,
                        ),
                    )
                    if updated.rowcount:
                        accepted.append(e["id"])
                        continue
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO escalations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            e["id"],
                            now,
                            submitted_by,
                            e["host"],
                            e["owner"],
                            e["pack"],
                            e["pattern"],
                            str(e.get("severity", "error")),
                            e["status"],
                            e["fingerprint"],
                            count,
                            float(e.get("first_seen", now)),
                            float(e.get("last_seen", now)),
                            json.dumps(e, default=str),
                        ),
                    )
                    (accepted if cursor.rowcount else duplicates).append(e["id"])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return accepted, duplicates

    def store_stats(self, host: str, rows: list[dict[str, Any]]) -> None:
        """Cumulative totals per host and pattern; an older (smaller) report changes nothing."""
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT INTO stats VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (host, pack, pattern)"
                " DO UPDATE SET owner=excluded.owner, matches=max(matches, excluded.matches),"
                " incidents=max(incidents, excluded.incidents),"
                " resolved=max(resolved, excluded.resolved), failed=max(failed, excluded.failed),"
                " escalated=max(escalated, excluded.escalated), updated=excluded.updated",
                [
                    (
                        host,
                        r["pack"],
                        r["pattern"],
                        r["owner"],
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

    def stats(self) -> list[dict[str, Any]]:
        """Totals per owner, pack and pattern, summed over hosts."""
        with self._lock:
            rows = self._db.execute(
                "SELECT owner, pack, pattern, count(*) AS hosts, total(matches) AS matches,"
                " total(incidents) AS incidents, total(resolved) AS resolved,"
                " total(failed) AS failed, total(escalated) AS escalated,"
                " max(updated) AS updated FROM stats"
                " GROUP BY owner, pack, pattern ORDER BY owner, pack, pattern"
            ).fetchall()
        return [
            _whole(dict(r), "matches", "incidents", "resolved", "failed", "escalated") for r in rows
        ]

    def query(
        self, filters: dict[str, str], limit: int = 500, offset: int = 0
    ) -> list[dict[str, Any]]:
        clauses = [f"{k}=?" for k in filters]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT body, received, submitted_by FROM escalations {where}"  # noqa: S608
                " ORDER BY received DESC, id LIMIT ? OFFSET ?",
                (*filters.values(), limit, offset),
            ).fetchall()
        out = []
        for row in rows:
            event = json.loads(row["body"])
            event["received"] = row["received"]
            out.append(event)
        return out

    def summary(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT owner, pack, pattern, status, count(*) AS n, total(count) AS lines,"
                " count(DISTINCT host) AS hosts, max(last_seen) AS last FROM escalations"
                " GROUP BY owner, pack, pattern, status ORDER BY owner, pack, pattern, status"
            ).fetchall()
        return [_whole(dict(r), "lines") for r in rows]


def _whole(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    """Sums are taken with total() (a double: it cannot overflow); shown as integers."""
    for key in keys:
        row[key] = int(row[key])
    return row
