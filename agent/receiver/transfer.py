"""Moving a SQLite receiver's data into PostgreSQL (`logmend receiver migrate`).

The file is upgraded to the latest schema first, so both sides have the same
tables; every row is then copied (COPY, in batches read from the file) in one
transaction on the target, which must hold no receiver data: a failure half-way
leaves it as empty as it was, and the copy can simply be run again.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.errors import StateError
from agent.receiver.engine import PostgresEngine, SqliteEngine
from agent.receiver.store import ReceiverStore

# every table with data, parents first; schema_version is the target's own, health is
# a probe's scratch row
TABLES = (
    "tokens",
    "meta",
    "sessions",
    "escalations",
    "groups",
    "actions",
    "silences",
    "hosts",
    "stats",
    "stats_history",
    "articles",
    "pack_keys",
    "pack_channels",
    "pack_versions",
    "pack_params",
    "unknown",
    "unknown_days",
)
IDENTITIES = {"actions": "seq", "silences": "id"}  # their next value follows the copied rows
BATCH = 5000
MAX_INT = 2**63 - 1


def copy_sqlite_to(
    source: Path, target: str, password_file: Path | None = None
) -> Iterator[tuple[str, int]]:
    """Copy every table; yields (table, rows copied) as each is done, once committed."""
    reader = ReceiverStore(source)  # upgraded in place to the latest schema if older
    writer = ReceiverStore(target, password_file)
    try:
        src, dst = reader._engine, writer._engine
        if not isinstance(src, SqliteEngine) or not isinstance(dst, PostgresEngine):
            raise StateError("migrate copies a SQLite file into a PostgreSQL database")
        counts: list[tuple[str, int]] = []

        def copy(db: Any) -> None:
            raw = db.raw
            for table in TABLES:
                held = raw.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]  # noqa: S608
                if held:
                    raise StateError(
                        f"{dst.where}: already holds receiver data ({held} row(s) in"
                        f" {table}); migrate into a new, empty database"
                    )
            for table in TABLES:
                counts.append((table, _copy_table(src, raw, table)))
            for table, column in IDENTITIES.items():
                raw.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"  # noqa: S608
                    f" coalesce(max({column}), 0) + 1, false) FROM {table}"
                )

        dst.write(copy)
        yield from counts
    finally:
        reader.close()
        writer.close()


def _copy_table(src: SqliteEngine, raw: Any, table: str) -> int:
    info = list(src.raw.execute(f"PRAGMA table_info({table})"))
    names = ", ".join(r[1] for r in info)
    whole = [r[2].upper() == "INTEGER" for r in info]
    copied = 0
    with src.read():  # the source's lock: nothing else uses it meanwhile
        cursor = src.raw.execute(f"SELECT {names} FROM {table}")  # noqa: S608
        try:
            with raw.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as out:
                while batch := cursor.fetchmany(BATCH):
                    for row in batch:
                        out.write_row(tuple(map(_storable, row, whole)))
                        copied += 1
        except Exception as exc:
            if not type(exc).__module__.startswith("psycopg"):
                raise
            raise StateError(
                f"{table}: row {copied + 1} cannot be copied ({str(exc).splitlines()[0]});"
                " nothing was copied"
            ) from None
    return copied


def _storable(value: Any, integer: bool) -> Any:
    """A value as PostgreSQL can hold it: SQLite kept what older releases let through (a
    NUL in a group's key or a note, where PostgreSQL's text holds none: it becomes
    U+FFFD, as the receiver now stores it; a line count past 64 bits, which SQLite made
    a float: the largest integer, as the receiver now saturates it)."""
    if isinstance(value, str):
        return value.replace("\0", "\ufffd")
    if integer and isinstance(value, float):
        return int(max(-MAX_INT, min(MAX_INT, value))) if not math.isnan(value) else 0
    return value
