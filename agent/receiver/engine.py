"""The receiver's two database engines behind one small interface: SQLite (one file,
the embedded default) and PostgreSQL (one server that several receivers share).

The store writes one SQL text for both: `?` placeholders (made `%s` for psycopg
once per statement), ON CONFLICT upserts, FILTER and window functions, which
both speak; SQLite is given the two scalar functions PostgreSQL has built in
(greatest, least). What differs is here: how a connection is had, how a write
transaction is serialised, and which failures mean "try again later".
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
import sqlite3
import stat
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from agent.errors import StateError

T = TypeVar("T")
Row = Mapping[str, Any]

POOL_SIZE = 10  # connections a receiver process keeps to PostgreSQL at most
POOL_WAIT = 5.0  # seconds a request waits for one before it is answered 503
CONFLICT_RETRIES = 5  # a write that lost a deadlock or serialisation race runs again


class Unavailable(Exception):
    """The database cannot take the request now (down, restarting, locked, full):
    answered 503 with Retry-After, and the client tries again."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """What the store runs its SQL on, in a transaction (write) or not (read)."""

    kind: str  # "sqlite" or "postgresql": for the DDL of an upgrade (schema.py)
    for_update: str  # " FOR UPDATE" where rows can be locked, "" on SQLite (one writer)
    clock: str  # the database's own time, Unix seconds: one clock for every receiver

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Engine(ABC):
    kind: str
    shared: bool  # several receivers may share it: per-client limits kept in it
    where: str  # for messages: the path, or the URL without a password

    @abstractmethod
    def read(self) -> contextlib.AbstractContextManager[Conn]:
        """A connection for reads (each statement sees what is committed)."""

    @abstractmethod
    def write(self, work: Callable[[Conn], T]) -> T:
        """`work` in one transaction, committed if it returns; run again (from the
        start) if it lost a race another writer won, so it must not keep state of
        its own between runs."""

    @abstractmethod
    def close(self) -> None: ...


# ---------------------------------------------------------------- SQLite


class SqliteConn:
    kind = "sqlite"
    for_update = ""
    clock = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, raw: sqlite3.Connection) -> None:
        self._raw = raw

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        return self._raw.execute(sql, args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._raw.executemany(sql, rows)


def _greatest(*values: Any) -> Any:
    return max(values)


def _least(*values: Any) -> Any:
    return min(values)


class SqliteEngine(Engine):
    """One connection and a lock: SQLite has one writer at a time anyway, and a write
    transaction takes the file's write lock before it reads (BEGIN IMMEDIATE), so
    two processes on one file never both decide on what they read."""

    kind = "sqlite"
    shared = False

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.where = str(path)
        self._lock = threading.Lock()
        self.raw = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.raw.row_factory = sqlite3.Row
        self.raw.execute("PRAGMA journal_mode=WAL")
        self.raw.execute("PRAGMA busy_timeout=10000")
        self.raw.create_function("greatest", -1, _greatest, deterministic=True)
        self.raw.create_function("least", -1, _least, deterministic=True)
        self._conn = SqliteConn(self.raw)

    @contextlib.contextmanager
    def read(self) -> Iterator[Conn]:
        with self._lock, _sqlite_errors():
            yield self._conn

    def write(self, work: Callable[[Conn], T]) -> T:
        with self._lock, _sqlite_errors():
            self.raw.execute("BEGIN IMMEDIATE")
            try:
                done = work(self._conn)
                self.raw.execute("COMMIT")
            except BaseException:
                if self.raw.in_transaction:  # SQLite may have rolled back itself
                    self.raw.execute("ROLLBACK")
                raise
            return done

    def close(self) -> None:
        with self._lock:
            self.raw.close()


@contextlib.contextmanager
def _sqlite_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk full, I/O
        raise Unavailable(f"the database refuses now: {exc}") from exc


# ---------------------------------------------------------------- PostgreSQL


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> bytes:
    """A statement in psycopg's placeholder style, made once per statement text."""
    return sql.replace("%", "%%").replace("?", "%s").encode()


class PgConn:
    kind = "postgresql"
    for_update = " FOR UPDATE"
    clock = "extract(epoch FROM clock_timestamp())"

    def __init__(self, raw: Any) -> None:
        self.raw = raw  # psycopg's connection (COPY in transfer.py uses it)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        cursor: Cursor = self.raw.execute(_pg_sql(sql), args)
        return cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(_pg_sql(sql), rows)


def safe_url(url: str) -> str:
    """The URL as it may be shown: without a password, in its user part or its query."""
    parts = urlsplit(url)
    query = "&".join(
        f"{k}=..." if k.lower() == "password" else f"{k}={v}" if v else k
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    parts = parts._replace(query=query)
    if parts.password is not None:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def _has_password(url: str) -> bool:
    parts = urlsplit(url)
    keys = {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    return parts.password is not None or "password" in keys


def read_password(path: Path) -> str:
    """The database password from a file only root (or its owner) can read, as a
    token file is: never on a command line, where `ps` shows it."""
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StateError(
                f"{path}: the database password file is readable by others"
                f" (mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it"
            )
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise StateError(f"{path}: cannot read the database password file: {exc}") from exc


class PostgresEngine(Engine):
    """A pool of connections (psycopg 3): reads in autocommit, each write one
    transaction at READ COMMITTED in which the store locks the rows it decides on
    (SELECT ... FOR UPDATE, INSERT ... ON CONFLICT), retried if it lost a deadlock.
    A connection is checked as it is taken from the pool, so a restarted server
    costs no request; an unreachable one is a 503 within POOL_WAIT seconds."""

    kind = "postgresql"
    shared = True

    def __init__(self, url: str, password: str | None = None, pool_size: int = POOL_SIZE) -> None:
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self.where = safe_url(url)
        self._psycopg = psycopg
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
        if password is not None:
            kwargs["password"] = password
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            timeout=POOL_WAIT,
            check=ConnectionPool.check_connection,
            configure=_configure,
            name="logmend-receiver",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=POOL_WAIT * 2)
        except Exception as exc:
            self._pool.close()
            reason = _reason(exc)
            try:  # the pool says only that it timed out: one connection says why
                psycopg.connect(url, **kwargs).close()
            except psycopg.Error as why:
                reason = _reason(why)
            raise StateError(f"{self.where}: cannot connect to PostgreSQL ({reason})") from exc

    @contextlib.contextmanager
    def _connection(self, rerun: bool = False) -> Iterator[Any]:
        """A pooled connection; the driver's errors as Unavailable where they pass (a
        lost race too, unless `rerun`: the caller runs its transaction again)."""
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection() as raw:
                yield raw
        except PoolTimeout as exc:
            raise Unavailable(f"no connection to the database within {POOL_WAIT:g} s") from exc
        except self._psycopg.Error as exc:
            if rerun and isinstance(exc, self._psycopg.errors.TransactionRollback):
                raise
            if not transient(exc):
                raise  # a bug or a value the database cannot hold: a 500, and in the log
            raise Unavailable(f"the database refuses now: {_reason(exc)}") from exc

    @contextlib.contextmanager
    def read(self) -> Iterator[Conn]:
        with self._connection() as raw:
            yield PgConn(raw)

    def write(self, work: Callable[[Conn], T]) -> T:
        for attempt in range(CONFLICT_RETRIES):
            try:
                with self._connection(rerun=True) as raw, raw.transaction():
                    return work(PgConn(raw))
            except self._psycopg.errors.TransactionRollback:  # a deadlock or serialisation
                if attempt == CONFLICT_RETRIES - 1:
                    raise Unavailable("the write kept losing races with other writers") from None
                time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._pool.close()


STATEMENT_TIMEOUT = "30s"  # no query of any client holds a connection or its locks longer
LOCK_TIMEOUT = "10s"  # as SQLite's busy timeout: a row another receiver holds that long is a 503


def _configure(raw: Any) -> None:
    """Each new connection: a bound on every statement and on a transaction left idle."""
    raw.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
    raw.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")  # a stalled peer's lock: a 503
    raw.execute(f"SET idle_in_transaction_session_timeout = '{STATEMENT_TIMEOUT}'")


TRANSIENT = ("08", "40", "53", "57", "58", "25006", "55P03", "55006")
"""SQLSTATE classes and codes that pass: connection lost, a race lost, out of resources,
the server shutting down or restarting, a read-only server (a standby, a failover), a
lock not had in time."""


def transient(exc: BaseException) -> bool:
    """Whether a driver error means "try again later" (503) rather than a bug (500)."""
    state = getattr(exc, "sqlstate", None)
    if state is None:  # no answer from the server at all: the connection failed
        return type(exc).__name__ in ("OperationalError", "InterfaceError")
    return str(state).startswith(TRANSIENT)


def _reason(exc: BaseException) -> str:
    """The first line of a driver's message: libpq's carry hints and context after."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def open_engine(
    location: str | Path, password_file: Path | None = None, pool_size: int = POOL_SIZE
) -> Engine:
    """The engine a --db value names: a postgresql:// URL, else a SQLite file's path."""
    if is_url(location):
        url = str(location)
        if _has_password(url):
            raise StateError(
                f"{safe_url(url)}: a password in the database URL would show in `ps` and"
                " in logs; put it in a file (--db-password-file) and leave it out of the URL"
            )
        password = read_password(password_file) if password_file else None
        return PostgresEngine(url, password, pool_size)
    if SCHEME.match(str(location)):
        raise StateError(
            f"{safe_url(str(location))}: not a database this receiver knows: a PostgreSQL URL"
            " starts postgresql:// (lower case, two slashes), anything else is a SQLite file's path"
        )
    if password_file is not None:
        raise StateError("--db-password-file is for a postgresql:// database, not a file")
    return SqliteEngine(Path(location))


SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # what looks like a URL's scheme, not a path
