"""The receiver database's schema and its upgrades in place, each in one transaction.

A database records the version it was written at; a newer one than this code
knows is refused (an older receiver must not half-understand it), an older one
is upgraded step by step. Databases from before versions existed are 1.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Callable

from agent.errors import StateError
from agent.receiver.engine import Conn, Engine, SqliteConn, SqliteEngine

LATEST = 7

# The tables as schema 2 made them; a new database starts from these and takes
# every upgrade after, so a new and an upgraded database are the same.
TABLES = """
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY, name TEXT NOT NULL, scope TEXT NOT NULL,
    owners TEXT NOT NULL, hosts TEXT NOT NULL, created REAL NOT NULL,
    expires REAL, revoked REAL);
CREATE TABLE escalations (
    submitted_by TEXT NOT NULL, owner TEXT NOT NULL, host TEXT NOT NULL, id TEXT NOT NULL,
    ref TEXT NOT NULL UNIQUE, received REAL NOT NULL, pack TEXT NOT NULL,
    pattern TEXT NOT NULL, severity TEXT NOT NULL, status TEXT NOT NULL,
    fingerprint TEXT NOT NULL, count INTEGER NOT NULL, first_seen REAL NOT NULL,
    last_seen REAL NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (submitted_by, owner, host, id));
CREATE INDEX escalations_owner ON escalations (owner, pattern);
CREATE INDEX escalations_received ON escalations (received);
CREATE TABLE stats (
    owner TEXT NOT NULL, host TEXT NOT NULL, pack TEXT NOT NULL, pattern TEXT NOT NULL,
    submitted_by TEXT NOT NULL, matches INTEGER NOT NULL, incidents INTEGER NOT NULL,
    resolved INTEGER NOT NULL, failed INTEGER NOT NULL, escalated INTEGER NOT NULL,
    updated REAL NOT NULL, PRIMARY KEY (owner, host, pack, pattern));
CREATE TABLE IF NOT EXISTS health (one INTEGER PRIMARY KEY CHECK (one = 1), checked REAL NOT NULL);
CREATE TABLE schema_version (version INTEGER NOT NULL);
"""


def _script(db: sqlite3.Connection, script: str, skip: str = "") -> None:
    """Each statement of `script` in the caller's transaction (executescript would
    commit it), but those containing `skip`."""
    for statement in script.split(";"):
        if statement.strip() and not (skip and skip in statement):
            db.execute(statement)


def escalation_ref(submitted_by: str, owner: str, host: str, event_id: str) -> str:
    """The receiver's own id of an escalation: one per submitting identity, owner, host
    and event id (the key), so no other token, team or host can reach another's."""
    key = "\0".join((submitted_by, owner, host, event_id))
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def _to_2(db: sqlite3.Connection) -> list[str]:
    """Scopes and namespaced ids (issue 13).

    Tokens from before scopes become ingest tokens for any owner and host, so
    agents keep delivering; stats are dropped, as agents resend their full
    totals every `stats_interval`, now under their token's name.
    """
    have = {r[1] for r in db.execute("PRAGMA table_info(tokens)")}
    for column in ("expires", "revoked"):  # added by releases before versions existed
        if column not in have:
            db.execute(f"ALTER TABLE tokens ADD COLUMN {column} REAL")
    db.execute("ALTER TABLE tokens RENAME COLUMN owner TO name")
    db.execute("ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'ingest'")
    db.execute("""ALTER TABLE tokens ADD COLUMN owners TEXT NOT NULL DEFAULT '["*"]'""")
    db.execute("""ALTER TABLE tokens ADD COLUMN hosts TEXT NOT NULL DEFAULT '["*"]'""")
    db.execute("ALTER TABLE escalations RENAME TO escalations_v1")
    db.execute("DROP INDEX IF EXISTS escalations_owner")
    db.execute("DROP TABLE IF EXISTS stats")  # the earliest releases had none
    _script(db, TABLES, skip="CREATE TABLE tokens")
    db.create_function("escalation_ref", 4, escalation_ref, deterministic=True)
    db.execute(
        "INSERT INTO escalations SELECT submitted_by, owner, host, id,"
        " escalation_ref(submitted_by, owner, host, id), received, pack, pattern, severity,"
        " status, fingerprint, count, first_seen, last_seen, body FROM escalations_v1"
    )
    db.execute("DROP TABLE escalations_v1")
    legacy = db.execute("SELECT count(*) FROM tokens").fetchone()[0]
    if not legacy:
        return []
    return [
        f"{legacy} token(s) from before scopes are now ingest tokens for any owner and"
        " host; replace them with tokens bound to their hosts and owners"
        " (`logmend receiver token create --scope ingest ...`, docs/operations.md)"
    ]


GROUPS = """
CREATE TABLE groups (
    owner TEXT NOT NULL, fingerprint TEXT NOT NULL, ref TEXT NOT NULL UNIQUE,
    pack TEXT NOT NULL, pattern TEXT NOT NULL, key TEXT NOT NULL, severity TEXT NOT NULL,
    state TEXT NOT NULL, assignee TEXT NOT NULL, snoozed_until REAL,
    regression INTEGER NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    updated REAL NOT NULL, occurrences INTEGER NOT NULL, lines INTEGER NOT NULL,
    silenced_until REAL, PRIMARY KEY (owner, fingerprint));
CREATE INDEX groups_recent ON groups (owner, last_seen);
CREATE TABLE actions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, fingerprint TEXT NOT NULL,
    at REAL NOT NULL, who TEXT NOT NULL, verb TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX actions_group ON actions (owner, fingerprint, seq);
CREATE INDEX escalations_group ON escalations (owner, fingerprint);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE silences (
    id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, pack TEXT NOT NULL,
    pattern TEXT NOT NULL, host TEXT NOT NULL, until REAL NOT NULL, who TEXT NOT NULL,
    created REAL NOT NULL, reason TEXT NOT NULL);
CREATE INDEX silences_match ON silences (owner, pack, pattern, until);
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY, token_hash TEXT NOT NULL, csrf TEXT NOT NULL,
    expires REAL NOT NULL);
CREATE TABLE stats_history (
    owner TEXT NOT NULL, host TEXT NOT NULL, pack TEXT NOT NULL, pattern TEXT NOT NULL,
    hour INTEGER NOT NULL, matches INTEGER NOT NULL, incidents INTEGER NOT NULL,
    resolved INTEGER NOT NULL, failed INTEGER NOT NULL, escalated INTEGER NOT NULL,
    PRIMARY KEY (owner, pack, pattern, host, hour));
CREATE INDEX stats_history_hour ON stats_history (hour);
CREATE TABLE hosts (
    owner TEXT NOT NULL, host TEXT NOT NULL, last_heard REAL NOT NULL,
    submitted_by TEXT NOT NULL, agent_version TEXT NOT NULL, packs TEXT NOT NULL,
    PRIMARY KEY (owner, host));
"""


def group_ref(owner: str, fingerprint: str) -> str:
    """The receiver's id of a group: one owner's escalations of one fingerprint."""
    return hashlib.sha256(f"{owner}\0{fingerprint}".encode()).hexdigest()[:20]


def _to_3(db: sqlite3.Connection) -> list[str]:
    """Groups of escalations a team works (state, assignee, snooze, regression,
    silence), the actions taken on them, silences of a pattern on a host or
    everywhere, the hosts heard from, each host's totals hour by hour (for what tier 1
    did over time), and the receiver's own settings (issue 14). Every existing
    escalation lands in an open group."""
    _script(db, GROUPS)
    db.create_function("group_ref", 2, group_ref, deterministic=True)
    db.execute(
        "INSERT INTO groups SELECT owner, fingerprint, group_ref(owner, fingerprint), pack,"
        " pattern, coalesce(json_extract(body, '$.key'), ''), max(severity), 'open', '',"
        " NULL, 0, min(first_seen), max(last_seen), max(received), count(*), sum(count),"
        " NULL FROM escalations GROUP BY owner, fingerprint"
    )
    db.execute(  # a baseline an hour back: the tier-1 view counts from it, not from zero
        "INSERT INTO stats_history SELECT owner, host, pack, pattern,"
        " CAST(strftime('%s', 'now') AS INTEGER) / 3600 - 1, matches, incidents, resolved,"
        " failed, escalated FROM stats"
    )
    db.execute(
        "INSERT INTO hosts SELECT owner, host, max(received), max(submitted_by), '',"
        " json_group_object(pack, coalesce(json_extract(body, '$.pack_version'), ''))"
        " FROM escalations GROUP BY owner, host"
    )
    return []


SQLITE_UPGRADES: dict[int, Callable[[sqlite3.Connection], list[str]]] = {1: _to_2, 2: _to_3}
"""Upgrades from before PostgreSQL was supported: SQLite's SQL, on SQLite files only."""

FIRST_POSTGRESQL = 3  # PostgreSQL databases start at this schema: none is older

BUCKETS = """
CREATE TABLE buckets (
    token_id TEXT PRIMARY KEY, level REAL NOT NULL, at REAL NOT NULL,
    granted INTEGER NOT NULL);
"""


def _to_4(db: Conn) -> list[str]:
    """Rate-limit buckets per token that every receiver on the database shares, so a
    token's rate holds across several receivers behind a load balancer; and the
    escalations of a group found by host too (the inbox's host filter), so it reads
    an index, not every escalation of every group (issue 15)."""
    _create(db, BUCKETS)
    db.execute("CREATE INDEX escalations_group_host ON escalations (owner, fingerprint, host)")
    db.execute("DROP INDEX escalations_group")  # its prefix
    return []


def _create(db: Conn, ddl: str) -> None:
    """Tables as SQLite's DDL says them, in PostgreSQL's types there."""
    for statement in (postgresql_ddl(ddl) if db.kind == "postgresql" else ddl).split(";"):
        if statement.strip():
            db.execute(statement)


ARTICLES = """
CREATE TABLE articles (
    owner TEXT NOT NULL, pack TEXT NOT NULL, pattern TEXT NOT NULL, version TEXT NOT NULL,
    match TEXT NOT NULL, article TEXT NOT NULL, text TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (owner, pack, pattern));
"""


def _to_5(db: Conn) -> list[str]:
    """The knowledge articles teams publish, searchable by error text (issue 17)."""
    _create(db, ARTICLES)
    return []


PACKS = """
CREATE TABLE pack_keys (
    key_id TEXT PRIMARY KEY, owner TEXT NOT NULL, line TEXT NOT NULL, added REAL NOT NULL);
CREATE TABLE pack_versions (
    pack TEXT NOT NULL, version TEXT NOT NULL, owner TEXT NOT NULL, digest TEXT NOT NULL,
    key_id TEXT NOT NULL, size INTEGER NOT NULL, bundle BLOB NOT NULL, published REAL NOT NULL,
    PRIMARY KEY (pack, version));
CREATE TABLE pack_channels (
    pack TEXT PRIMARY KEY, owner TEXT NOT NULL, current TEXT, candidate TEXT,
    percent INTEGER NOT NULL, updated REAL NOT NULL);
CREATE INDEX pack_channels_owner ON pack_channels (owner);
CREATE TABLE pack_params (
    pack TEXT NOT NULL, hosts TEXT NOT NULL, owner TEXT NOT NULL, params TEXT NOT NULL,
    updated REAL NOT NULL, PRIMARY KEY (pack, hosts));
"""


def _to_6(db: Conn) -> list[str]:
    """Signed pack bundles, the teams' keys, and which version hosts run (issue 18)."""
    _create(db, PACKS)
    return []


UNKNOWN = """
CREATE TABLE unknown (
    owner TEXT NOT NULL, host TEXT NOT NULL, id INTEGER NOT NULL, ref TEXT NOT NULL,
    template TEXT NOT NULL, count INTEGER NOT NULL, first_seen REAL NOT NULL,
    last_seen REAL NOT NULL, samples TEXT NOT NULL, sample TEXT NOT NULL, known TEXT NOT NULL,
    submitted_by TEXT NOT NULL, updated REAL NOT NULL, PRIMARY KEY (owner, host, id));
CREATE INDEX unknown_ref ON unknown (ref, owner);
CREATE INDEX unknown_recent ON unknown (owner, last_seen);
CREATE TABLE unknown_days (
    owner TEXT NOT NULL, host TEXT NOT NULL, id INTEGER NOT NULL, day INTEGER NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (owner, host, id, day));
CREATE INDEX unknown_days_day ON unknown_days (day);
"""


def _to_7(db: Conn) -> list[str]:
    """The errors no pack knows yet, per owner, host and template, and their daily
    growth (issue 19)."""
    _create(db, UNKNOWN)
    return []


UPGRADES: dict[int, Callable[[Conn], list[str]]] = {3: _to_4, 4: _to_5, 5: _to_6, 6: _to_7}
"""Upgrades from FIRST_POSTGRESQL on, version -> the step to the next: SQL both engines
speak (see engine.py), run on both, in the migrating transaction."""

MIGRATION_LOCK = 0x6C6F676D656E64  # "logmend": PostgreSQL's advisory lock for migrating


def migrate(engine: Engine) -> list[str]:
    """Bring the database to LATEST; returns what an operator should know about it.

    The write lock is taken before anything is read, so two processes opening
    the same new or old database at once do not both create or both upgrade it.
    """
    if isinstance(engine, SqliteEngine):
        return _migrate_sqlite(engine.raw, engine.where)
    return engine.write(lambda db: _migrate_postgresql(db, engine.where))


def _migrate_sqlite(db: sqlite3.Connection, where: str) -> list[str]:
    notes: list[str] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "tokens" not in tables:  # a new database: the tables of 2, then every upgrade
            _script(db, TABLES)
            db.execute("INSERT INTO schema_version VALUES (2)")
            tables.add("schema_version")
        version = 1
        if "schema_version" in tables:
            version = _version(
                db.execute("SELECT max(version) FROM schema_version").fetchone()[0], where
            )
        while version < min(LATEST, FIRST_POSTGRESQL):
            notes += SQLITE_UPGRADES[version](db)
            version = _step_done(SqliteConn(db), version)
        notes += _upgrade(SqliteConn(db), version, where)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled back itself
            db.execute("ROLLBACK")
        raise
    return notes


def _migrate_postgresql(db: Conn, where: str) -> list[str]:
    db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
    tables = {
        r["tablename"]
        for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    }
    if "tokens" not in tables:  # a new database: the tables of 3, then every upgrade
        _create(db, TABLES + GROUPS)
        db.execute("INSERT INTO schema_version VALUES (?)", (FIRST_POSTGRESQL,))
        tables.add("schema_version")
    if "schema_version" not in tables:
        raise StateError(f"{where}: has a tokens table but no schema_version: not a receiver's")
    version = _version(
        db.execute("SELECT max(version) AS v FROM schema_version").fetchone()["v"], where
    )
    if version < FIRST_POSTGRESQL:
        raise StateError(f"{where}: schema {version} cannot be on PostgreSQL: it is damaged")
    return _upgrade(db, version, where)


def _version(found: object, where: str) -> int:
    if not isinstance(found, int):
        raise StateError(f"{where}: its schema_version table is empty or damaged")
    if found > LATEST:
        raise StateError(
            f"{where}: written by a newer receiver (schema {found}; this one knows"
            f" up to {LATEST}); run the newer release"
        )
    return found


def _upgrade(db: Conn, version: int, where: str) -> list[str]:
    """The steps from `version` to LATEST that both engines share."""
    notes: list[str] = []
    while version < LATEST:
        if version not in UPGRADES:
            raise StateError(f"{where}: no upgrade known from schema {version}")
        notes += UPGRADES[version](db)
        version = _step_done(db, version)
    return notes


def _step_done(db: Conn, version: int) -> int:
    db.execute("DELETE FROM schema_version")
    db.execute("INSERT INTO schema_version VALUES (?)", (version + 1,))
    return version + 1


def postgresql_ddl(ddl: str) -> str:
    """SQLite's table definitions in PostgreSQL's types, so both engines have the same
    tables: 64-bit integers, double-precision times, text ordered by bytes (as
    SQLite's is, whatever the server's locale), identity columns for AUTOINCREMENT."""
    ddl = ddl.replace(
        "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    )
    ddl = re.sub(r"\bINTEGER\b", "BIGINT", ddl)
    ddl = re.sub(r"\bREAL\b", "DOUBLE PRECISION", ddl)
    ddl = re.sub(r"\bBLOB\b", "BYTEA", ddl)
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', ddl)
