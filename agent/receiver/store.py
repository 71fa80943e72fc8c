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

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY, owner TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS escalations (
    id TEXT PRIMARY KEY, received REAL NOT NULL, submitted_by TEXT NOT NULL,
    host TEXT NOT NULL, owner TEXT NOT NULL, pack TEXT NOT NULL, pattern TEXT NOT NULL,
    severity TEXT NOT NULL, status TEXT NOT NULL, fingerprint TEXT NOT NULL,
    count INTEGER NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS escalations_owner ON escalations (owner, pattern);
CREATE TABLE IF NOT EXISTS stats (
    host TEXT NOT NULL, pack TEXT NOT NULL, pattern TEXT NOT NULL, owner TEXT NOT NULL,
    matches INTEGER NOT NULL, incidents INTEGER NOT NULL, resolved INTEGER NOT NULL,
    failed INTEGER NOT NULL, escalated INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (host, pack, pattern));
"""

REQUIRED = {
    "id": str,
    "host": str,
    "owner": str,
    "pack": str,
    "pattern": str,
    "status": str,
    "fingerprint": str,
}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class InvalidEvent(ValueError):
    pass


STATS_FIELDS = ("matches", "incidents", "resolved", "failed", "escalated")


def validate_stats(doc: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(doc, dict) or not isinstance(doc.get("host"), str) or not doc["host"]:
        raise InvalidEvent('body must be an object with a "host" string')
    rows = doc.get("stats")
    if not isinstance(rows, list):
        raise InvalidEvent('body must have a "stats" list')
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InvalidEvent(f"stats[{index}] must be an object")
        for key in ("pack", "pattern"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise InvalidEvent(f"stats[{index}].{key} must be a non-empty string")
        if not isinstance(row.get("owner", ""), str):
            raise InvalidEvent(f"stats[{index}].owner must be a string")
        row.setdefault("owner", "")
        for key in STATS_FIELDS:
            value = row.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidEvent(f"stats[{index}].{key} must be a non-negative integer")
            row[key] = value
    return doc["host"], rows


def validate(event: Any, index: int) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise InvalidEvent(f"events[{index}] must be an object")
    for key, kind in REQUIRED.items():
        if not isinstance(event.get(key), kind) or not event[key]:
            raise InvalidEvent(f"events[{index}].{key} must be a non-empty string")
    if len(event["id"]) > 200:
        raise InvalidEvent(f"events[{index}].id is too long")
    for key in ("count",):
        if key in event and not isinstance(event[key], int):
            raise InvalidEvent(f"events[{index}].{key} must be an integer")
    for key in ("first_seen", "last_seen"):
        if key in event and not isinstance(event[key], int | float):
            raise InvalidEvent(f"events[{index}].{key} must be a number")
    return event


class ReceiverStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create_token(self, owner: str) -> str:
        token = "lm_" + secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens VALUES (?,?,?)", (token_hash(token), owner, time.time())
            )
        return token

    def authenticate(self, token: str) -> str | None:
        """The owner of a token, or None; compared on hashes in constant time."""
        wanted = token_hash(token)
        with self._lock:
            row = self._db.execute(
                "SELECT hash, owner FROM tokens WHERE hash=?", (wanted,)
            ).fetchone()
        if row is None or not hmac.compare_digest(row["hash"], wanted):
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
                "SELECT owner, pack, pattern, count(*) AS hosts, sum(matches) AS matches,"
                " sum(incidents) AS incidents, sum(resolved) AS resolved, sum(failed) AS failed,"
                " sum(escalated) AS escalated, max(updated) AS updated FROM stats"
                " GROUP BY owner, pack, pattern ORDER BY owner, pack, pattern"
            ).fetchall()
        return [dict(r) for r in rows]

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
                "SELECT owner, pack, pattern, status, count(*) AS n, sum(count) AS lines,"
                " count(DISTINCT host) AS hosts, max(last_seen) AS last FROM escalations"
                " GROUP BY owner, pack, pattern, status ORDER BY owner, pack, pattern, status"
            ).fetchall()
        return [dict(r) for r in rows]
