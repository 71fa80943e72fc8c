"""What every part of the receiver's store shares: the connection, its lock, and the
helpers that keep tenancy in the SQL (every read takes the owners its caller sees)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from agent.receiver.engine import Conn, Engine

T = TypeVar("T")
PAGE_BYTES = 4 * 1024 * 1024  # a listing page ends past this much of stored bodies


class StoreBase:
    """The engine every part of the store runs its SQL on (engine.py)."""

    _engine: Engine


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    """`items` a few hundred at a time: within both engines' limits on placeholders."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def rows_of(width: int, chunk: list[Any]) -> str:
    """Placeholders for `chunk` as rows of VALUES (only ? and commas reach the SQL)."""
    return ",".join(["(" + ",".join("?" * width) + ")"] * len(chunk))


def keyed(table: str, columns: tuple[str, ...], keys: list[Any]) -> tuple[str, str]:
    """(WITH clause, FROM clause): `table` as t joined to `keys` (VALUES, as k) on the
    `columns` of one of its indexes, so each key is one index search on both engines
    (a row-value IN over VALUES is a scan of the whole table on SQLite). Only fixed
    names and placeholders reach the SQL."""
    names = ", ".join(columns)
    on = " AND ".join(f"t.{c} = k.{c}" for c in columns)
    return (
        f"WITH k({names}) AS (VALUES {rows_of(len(columns), keys)})",
        f"FROM k JOIN {table} t ON {on}",
    )


def locking(db: Conn) -> str:
    """Lock the rows of t read (PostgreSQL); SQLite's writer holds the whole file."""
    return f"{db.for_update} OF t" if db.for_update else ""


def total(column: str) -> str:
    """A sum that cannot overflow (a double, as SQLite's total() is) and is 0 over no
    rows, on both engines: whole() shows it as an integer."""
    return f"coalesce(sum(CAST({column} AS DOUBLE PRECISION)), 0)"


def is_ref(ref: str) -> bool:
    """Whether `ref` has the shape of a receiver id (20 hex characters): anything else,
    from a URL, finds nothing without reaching the database (a NUL would not reach
    PostgreSQL's text at all)."""
    return len(ref) == 20 and all(c in "0123456789abcdef" for c in ref)


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
        clauses.append(f"{column} IN ({','.join('?' * len(owners))})" if owners else "1 = 0")
        args += owners
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), args


def event_of(row: Mapping[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(row["body"])
    event.update(received=row["received"], submitted_by=row["submitted_by"], ref=row["ref"])
    return event


def whole(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    """Sums are taken with total() (a double: it cannot overflow); shown as integers."""
    for key in keys:
        row[key] = int(row[key])
    return row
