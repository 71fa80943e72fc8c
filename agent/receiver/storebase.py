"""What every part of the receiver's store shares: the connection, its lock, and the
helpers that keep tenancy in the SQL (every read takes the owners its caller sees)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from typing import Any

PAGE_BYTES = 4 * 1024 * 1024  # a listing page ends past this much of stored bodies


class StoreBase:
    """The connection (autocommit; transactions are explicit) and the lock around it."""

    _db: sqlite3.Connection
    _lock: threading.Lock


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def owned(  # only fixed column names and placeholders reach the SQL it makes
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


def event_of(row: sqlite3.Row) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(row["body"])
    event.update(received=row["received"], submitted_by=row["submitted_by"], ref=row["ref"])
    return event


def whole(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    """Sums are taken with total() (a double: it cannot overflow); shown as integers."""
    for key in keys:
        row[key] = int(row[key])
    return row
