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
        """Insert each event once; returns (accepted ids, duplicate ids)."""
        accepted: list[str] = []
        duplicates: list[str] = []
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for e in events:
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
                            int(e.get("count", 1)),
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
