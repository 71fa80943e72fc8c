"""The SQLite store: file checkpoints, incidents, cooldowns and the outbound spool.

One file, WAL, so that "this line's offset advanced" and "what it caused is
recorded" commit in one transaction. Every method is one short transaction
under a lock, shared by the reader loop, the remedy workers and the sender.

The file is logmend's alone: created 0600, stamped with logmend's application
id, and an existing file that is empty, not SQLite, or someone else's
database is refused rather than taken for fresh state or written over.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import StateError
from agent.model import Batch, Checkpoint, Incident, JournalMark, Spoolable, SpoolItem
from agent.policy import OPEN, Outcome, Status
from agent.statefile import APPLICATION_ID, check_file, check_owner, create, refused

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, path TEXT NOT NULL,
    offset INTEGER NOT NULL, marker BLOB NOT NULL, updated REAL NOT NULL,
    head_len INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (dev, ino));
CREATE TABLE IF NOT EXISTS done_rotated (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL, head BLOB NOT NULL,
    path TEXT NOT NULL, UNIQUE (dev, ino, size, head));
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, pack TEXT NOT NULL,
    pattern TEXT NOT NULL, key TEXT NOT NULL, source TEXT NOT NULL,
    status TEXT NOT NULL, count INTEGER NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    samples TEXT NOT NULL, fields TEXT NOT NULL, attempts TEXT NOT NULL DEFAULT '[]',
    outcome TEXT, updated REAL NOT NULL, event BLOB, hits TEXT NOT NULL DEFAULT '[]');
CREATE INDEX IF NOT EXISTS incidents_active ON incidents (status)
    WHERE status IN ('waiting', 'remediating', 'verifying');
CREATE INDEX IF NOT EXISTS incidents_fp ON incidents (fingerprint, updated);
CREATE TABLE IF NOT EXISTS cooldowns (
    fingerprint TEXT PRIMARY KEY, until REAL NOT NULL, incident TEXT NOT NULL, resolved REAL,
    recurred INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS fix_runs (
    fingerprint TEXT NOT NULL, started REAL NOT NULL);
CREATE INDEX IF NOT EXISTS fix_runs_started ON fix_runs (started);
CREATE TABLE IF NOT EXISTS pattern_stats (
    pack TEXT NOT NULL, pattern TEXT NOT NULL, matches INTEGER NOT NULL DEFAULT 0,
    confirms INTEGER NOT NULL DEFAULT 0, timeouts INTEGER NOT NULL DEFAULT 0,
    seconds REAL NOT NULL DEFAULT 0, quarantined INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL, incidents INTEGER NOT NULL DEFAULT 0,
    resolved INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    escalated INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (pack, pattern));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reported (id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS unknown_templates (
    owner TEXT NOT NULL, id INTEGER NOT NULL, tokens TEXT NOT NULL, count INTEGER NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, samples TEXT NOT NULL,
    PRIMARY KEY (owner, id));
CREATE TABLE IF NOT EXISTS unknown_sent (
    owner TEXT NOT NULL, id INTEGER NOT NULL, count INTEGER NOT NULL,
    first_seen REAL NOT NULL, known TEXT NOT NULL DEFAULT '', PRIMARY KEY (owner, id));
CREATE TABLE IF NOT EXISTS journal_cursors (
    source TEXT PRIMARY KEY, cursor TEXT NOT NULL, updated REAL NOT NULL,
    replay TEXT NOT NULL DEFAULT '', held TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS spool_drops (
    one INTEGER PRIMARY KEY CHECK (one = 1), events INTEGER NOT NULL,
    first REAL NOT NULL, last REAL NOT NULL);
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    created REAL NOT NULL, body BLOB NOT NULL, tries INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0, parked INTEGER NOT NULL DEFAULT 0, last_error TEXT);
"""

# columns added since the first release, for state files written by it
MIGRATIONS = (
    ("incidents", "event", "BLOB"),
    ("incidents", "hits", "TEXT NOT NULL DEFAULT '[]'"),
    ("pattern_stats", "incidents", "INTEGER NOT NULL DEFAULT 0"),
    ("pattern_stats", "resolved", "INTEGER NOT NULL DEFAULT 0"),
    ("pattern_stats", "failed", "INTEGER NOT NULL DEFAULT 0"),
    ("pattern_stats", "escalated", "INTEGER NOT NULL DEFAULT 0"),
    ("cooldowns", "resolved", "REAL"),  # when its fix resolved (recurrences are counted)
    ("cooldowns", "recurred", "INTEGER NOT NULL DEFAULT 0"),
    ("journal_cursors", "replay", "TEXT NOT NULL DEFAULT ''"),  # multiline events held
    ("journal_cursors", "held", "TEXT NOT NULL DEFAULT '[]'"),
)
SPOOL_SIZE = "SELECT count(*), coalesce(sum(length(body)), 0) FROM spool"  # events, bytes
MAX_DONE_FILES = 10_000


def _incident(row: sqlite3.Row) -> Incident:
    return Incident(
        id=row["id"],
        fingerprint=row["fingerprint"],
        pack=row["pack"],
        pattern=row["pattern"],
        key=row["key"],
        source=row["source"],
        status=Status(row["status"]),
        count=row["count"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        samples=json.loads(row["samples"]),
        fields=json.loads(row["fields"]),
        attempts=json.loads(row["attempts"]),
        outcome=Outcome(row["outcome"]) if row["outcome"] else None,
        hits=json.loads(row["hits"]),  # the column is added to older files at open
    )


Recount = Callable[[bytes, int, float, list[str]], bytes]
"""A spooled body with new counts (count, last seen, lines): given by whoever owns the format."""


@dataclass(frozen=True, slots=True)
class SpoolLimits:
    """Events wait `hold` seconds to gather counts; the spool keeps the newest within bounds."""

    hold: float = 0.0
    max_events: int = 100_000
    max_bytes: int = 256 * 1024 * 1024


class Store:
    def __init__(
        self,
        path: Path,
        max_samples: int = 10,
        spool: SpoolLimits | None = None,
        busy_timeout: float = 10.0,
        recount: Recount | None = None,
    ) -> None:
        self.path = path
        self.recount = recount
        self.max_samples = max_samples
        self.spool_limits = spool or SpoolLimits()
        self._lock = threading.Lock()
        try:
            if path.exists():
                check_file(path)
            else:
                create(path, SCHEMA)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"{path}: cannot open the state database: {exc}") from exc
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            unstamped = check_owner(self._db, path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA cache_size=-256")
            self._db.executescript(SCHEMA)
            for table, column, kind in MIGRATIONS:
                have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            if unstamped:
                self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        except sqlite3.Error as exc:
            self._db.close()
            raise refused(path, exc) from exc
        except StateError:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: {exc}") from exc

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(args)).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: {exc}") from exc

    # checkpoints -----------------------------------------------------------
    def journal_marks(self) -> dict[str, JournalMark]:
        """Where each journal source (by Source.name) resumes: what it committed."""
        rows = self._read("SELECT source, cursor, replay, held FROM journal_cursors")
        marks = {}
        for source, cursor, replay, held in rows:
            try:
                pairs = json.loads(held)
                if not isinstance(pairs, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(isinstance(v, str) for v in p)
                    for p in pairs
                ):
                    raise ValueError("not a list of [stream, cursor] pairs")
            except ValueError as exc:
                raise StateError(
                    f"{self.path}: journal_cursors, source {source!r}: held is unreadable"
                    f" ({exc}); delete that row to read the source again from its end"
                ) from exc
            marks[source] = JournalMark(cursor, replay, tuple((k, v) for k, v in pairs))
        return marks

    def checkpoints(self) -> dict[tuple[int, int], Checkpoint]:
        rows = self._read(
            "SELECT dev, ino, path, offset, marker, head_len, updated FROM checkpoints"
        )
        return {
            (r["dev"], r["ino"]): Checkpoint(
                r["dev"],
                r["ino"],
                r["path"],
                r["offset"],
                r["marker"],
                r["head_len"],
                r["updated"],
            )
            for r in rows
        }

    def done_files(self) -> set[tuple[int, int, int, bytes]]:
        """Rotated files read to their end, as (device, inode, size, head hash); the newest
        are kept. (The first release's `done_files`, keyed without the head, is ignored:
        inode and size are reused.)"""
        with self._tx() as db:
            db.execute(
                "DELETE FROM done_rotated WHERE rowid NOT IN"
                " (SELECT rowid FROM done_rotated ORDER BY rowid DESC LIMIT ?)",
                (MAX_DONE_FILES,),
            )
        rows = self._read("SELECT dev, ino, size, head FROM done_rotated")
        return {(r["dev"], r["ino"], r["size"], r["head"]) for r in rows}

    # the reader's batch ------------------------------------------------------
    def commit(self, batch: Batch, now: float) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?,?,?)",
                [
                    (c.dev, c.ino, c.path, c.offset, c.marker, now, c.head_len)
                    for c in batch.checkpoints.values()
                ],
            )
            db.executemany(  # a journal source's place, with what its entries caused
                "INSERT OR REPLACE INTO journal_cursors VALUES (?,?,?,?,?)",
                [
                    (source, m.cursor, now, m.replay, json.dumps(m.held))
                    for source, m in batch.cursors.items()
                ],
            )
            db.executemany(
                "INSERT INTO incidents (id, fingerprint, pack, pattern, key, source, status, count,"
                " first_seen, last_seen, samples, fields, attempts, outcome, updated, hits)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET"
                " status=excluded.status, count=excluded.count, last_seen=excluded.last_seen,"
                " samples=excluded.samples, outcome=excluded.outcome, updated=excluded.updated,"
                " hits=excluded.hits",
                [
                    (
                        i.id,
                        i.fingerprint,
                        i.pack,
                        i.pattern,
                        i.key,
                        i.source,
                        i.status,
                        i.count,
                        i.first_seen,
                        i.last_seen,
                        json.dumps(i.samples),
                        json.dumps(i.fields),
                        json.dumps(i.attempts),
                        i.outcome,
                        now,
                        json.dumps(i.hits),
                    )
                    for i in batch.incidents.values()
                ],
            )
            db.executemany("INSERT INTO fix_runs VALUES (?,?)", batch.runs)
            self._spool(db, batch.escalations, now)  # before counts, which update them
            updates = []
            for incident_id, update in batch.counts.items():
                row = db.execute(
                    "SELECT samples, count, last_seen, event FROM incidents WHERE id=?",
                    (incident_id,),
                ).fetchone()
                if row is None:
                    continue
                samples = json.loads(row[0])
                samples = (samples + update.samples)[-self.max_samples :]
                count = row[1] + update.added
                last_seen = max(row[2], update.last_seen)
                db.execute(
                    "UPDATE incidents SET count=?, last_seen=?, samples=?, updated=? WHERE id=?",
                    (count, last_seen, json.dumps(samples), now, incident_id),
                )
                if row[3] is not None and self.recount is not None:
                    # escalated: the receiver hears the new count, under the same id
                    updates.append((incident_id, self.recount(row[3], count, last_seen, samples)))
            self._spool_bodies(db, updates, now)
            for (pack, pattern), (incidents, escalated) in batch.opened.items():
                db.execute(
                    "INSERT INTO pattern_stats (pack, pattern, updated, incidents, escalated)"
                    " VALUES (?,?,?,?,?) ON CONFLICT (pack, pattern) DO UPDATE SET"
                    " incidents=incidents+excluded.incidents,"
                    " escalated=escalated+excluded.escalated, updated=excluded.updated",
                    (pack, pattern, now, incidents, escalated),
                )
            db.executemany(
                "INSERT OR REPLACE INTO cooldowns (fingerprint, until, incident) VALUES (?,?,?)",
                [(fp, until, iid) for fp, (until, iid) in batch.cooldowns.items()],
            )
            db.executemany(
                "UPDATE cooldowns SET recurred=?, resolved=CASE WHEN ? THEN NULL ELSE resolved END"
                " WHERE fingerprint=?",
                [(n, told, fp) for fp, (n, told) in batch.recurred.items()],
            )
            db.executemany("DELETE FROM checkpoints WHERE dev=? AND ino=?", batch.forget)
            db.executemany("INSERT OR IGNORE INTO done_rotated VALUES (?,?,?,?,?)", batch.done)

    def _spool(self, db: sqlite3.Connection, events: list[Spoolable], now: float) -> None:
        self._spool_bodies(db, [(e.id, e.encode()) for e in events], now)

    def _spool_bodies(
        self, db: sqlite3.Connection, bodies: list[tuple[str, bytes]], now: float
    ) -> None:
        """Spool bodies (an update of one not yet sent replaces it), then bound the spool.

        Each body is also kept with its incident, so later matches can send the
        receiver an updated count under the same id.
        """
        if not bodies:
            return
        due = now + self.spool_limits.hold
        rows = [(event_id, now, body, due) for event_id, body in bodies]
        db.executemany(
            "INSERT INTO spool (id, created, body, next_try) VALUES (?,?,?,?)"
            " ON CONFLICT (id) DO UPDATE SET body=excluded.body",
            rows,
        )
        db.executemany("UPDATE incidents SET event=? WHERE id=?", [(r[2], r[0]) for r in rows])
        self._bound(db, now)

    def _bound(self, db: sqlite3.Connection, now: float) -> None:
        limits = self.spool_limits
        events, size = db.execute(SPOOL_SIZE).fetchone()
        if events <= limits.max_events and size <= limits.max_bytes:
            return
        dropped = 0
        for seq, length in db.execute(
            "SELECT seq, length(body) FROM spool ORDER BY seq"
        ).fetchall():
            if events <= limits.max_events and size <= limits.max_bytes:
                break
            db.execute("DELETE FROM spool WHERE seq=?", (seq,))
            events -= 1
            size -= length
            dropped += 1
        db.execute(
            "INSERT INTO spool_drops VALUES (1, ?, ?, ?) ON CONFLICT (one) DO UPDATE SET"
            " events=events+excluded.events, last=excluded.last",
            (dropped, now, now),
        )

    def spool_drops(self) -> tuple[int, float, float] | None:
        """(events dropped, first, last) since the last report, if any, and if there is room now."""
        rows = self._read("SELECT events, first, last FROM spool_drops")
        if not rows:
            return None
        limits = self.spool_limits
        events, size = self._read(SPOOL_SIZE)[0]
        if events > limits.max_events // 2 or size > limits.max_bytes // 2:
            return None
        return rows[0][0], rows[0][1], rows[0][2]

    def report_drops(self, event: Spoolable, dropped: int, now: float) -> None:
        """Spool the report of `dropped` events and take them off the count, together."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO spool (id, created, body, next_try) VALUES (?,?,?,?)",
                (event.id, now, event.encode(), now),
            )
            db.execute("UPDATE spool_drops SET events=events-?", (dropped,))
            db.execute("DELETE FROM spool_drops WHERE events<=0")

    # incidents ---------------------------------------------------------------
    def open_incidents(self) -> list[Incident]:
        """Waiting for a threshold, remediating or verifying."""
        rows = self._read("SELECT * FROM incidents WHERE status IN (?,?,?)", OPEN)
        return [_incident(r) for r in rows]

    def open_count(self) -> int:
        return int(self._read("SELECT count(*) FROM incidents WHERE status IN (?,?,?)", OPEN)[0][0])

    def incidents_by_status(self) -> dict[str, int]:
        rows = self._read("SELECT status, count(*) FROM incidents GROUP BY status")
        return {r[0]: r[1] for r in rows}

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))

    def report_once(self, events: list[Spoolable], now: float) -> int:
        """Spool each event whose id was never spooled by this call before (a broken
        pack's report: once per pack, version and errors, not once per start)."""
        with self._tx() as db:
            new = [
                e
                for e in events
                if db.execute("INSERT OR IGNORE INTO reported VALUES (?,?)", (e.id, now)).rowcount
            ]
            self._spool(db, new, now)
        return len(new)

    def unknown_templates(self) -> list[tuple[Any, ...]]:
        """(owner, id, tokens JSON, count, first_seen, last_seen, samples JSON) of the
        templates of unmatched error lines (agent.unknown)."""
        return [tuple(r) for r in self._read("SELECT * FROM unknown_templates ORDER BY owner, id")]

    def save_unknown_templates(self, owner: str, rows: list[tuple[Any, ...]]) -> None:
        """An owner's templates, replaced whole (bounded by the miner's cap)."""
        with self._tx() as db:
            db.execute("DELETE FROM unknown_templates WHERE owner=?", (owner,))
            db.executemany("INSERT INTO unknown_templates VALUES (?,?,?,?,?,?,?)", rows)
            db.execute(  # evicted templates: the receiver keeps what it last heard of them
                "DELETE FROM unknown_sent WHERE owner = ? AND known = '' AND NOT EXISTS"
                " (SELECT 1 FROM unknown_templates t WHERE t.owner = unknown_sent.owner"
                " AND t.id = unknown_sent.id)",
                (owner,),
            )

    def unknown_unsent(self, limit: int) -> list[sqlite3.Row]:
        """Templates the receiver has not heard at their present count (a team's only:
        owner "" is reported to nobody), then the ones a pattern now explains."""
        return self._read(
            "SELECT t.owner, t.id, t.tokens, t.count, t.first_seen, t.last_seen, t.samples,"
            " '' AS known FROM unknown_templates t LEFT JOIN unknown_sent s"
            " ON s.owner = t.owner AND s.id = t.id WHERE t.owner != '' AND (s.count IS NULL"
            " OR s.count != t.count OR s.first_seen != t.first_seen) AND coalesce(s.known, '') = ''"
            " UNION ALL SELECT owner, id, '[]', count, first_seen, 0, '[]', known"
            " FROM unknown_sent WHERE known != '' ORDER BY 1, 2 LIMIT ?",
            (limit,),
        )

    def unknown_acked(self, rows: list[sqlite3.Row]) -> None:
        """The receiver took these: their counts are what it has; an explained one is told."""
        with self._tx() as db:
            for r in rows:
                if r["known"]:
                    db.execute(
                        "DELETE FROM unknown_sent WHERE owner=? AND id=? AND known=?",
                        (r["owner"], r["id"], r["known"]),
                    )
                    continue
                db.execute(  # an explanation that came meanwhile is not overwritten
                    "INSERT INTO unknown_sent VALUES (?,?,?,?,'') ON CONFLICT (owner, id)"
                    " DO UPDATE SET count=excluded.count, first_seen=excluded.first_seen"
                    " WHERE known = ''",
                    (r["owner"], r["id"], r["count"], r["first_seen"]),
                )

    def retire_unknown(self, owner: str, explained: list[tuple[int, str]]) -> None:
        """Templates a pattern now explains ((id, "pack/pattern")): gone from the host, and
        the receiver is told (it ignores one it never heard of)."""
        with self._tx() as db:
            for template_id, known in explained:
                db.execute(
                    "DELETE FROM unknown_templates WHERE owner=? AND id=?", (owner, template_id)
                )
                if owner:
                    db.execute(
                        "INSERT OR REPLACE INTO unknown_sent VALUES (?,?,0,0,?)",
                        (owner, template_id, known),
                    )

    def meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key=?", (key,))
        return str(rows[0][0]) if rows else None

    def set_status(self, incident_id: str, status: str, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE incidents SET status=?, updated=? WHERE id=?", (status, now, incident_id)
            )

    def fix_runs(self, since: float) -> list[tuple[str, float]]:
        """Fix starts newer than `since` (older ones are deleted): the remediation budgets."""
        with self._tx() as db:
            db.execute("DELETE FROM fix_runs WHERE started < ?", (since,))
        rows = self._read("SELECT fingerprint, started FROM fix_runs")
        return [(r[0], r[1]) for r in rows]

    def cooling(self, now: float) -> list[dict[str, Any]]:
        """Keys in cooldown, with the incident that put them there (`flapping`: over budget)."""
        rows = self._read(
            "SELECT c.until, i.pack, i.pattern, i.key, i.status, i.outcome, i.count"
            " FROM cooldowns c JOIN incidents i ON i.id = c.incident WHERE c.until > ?"
            " ORDER BY c.until",
            (now,),
        )
        return [dict(r) for r in rows]

    def escalated_in_cooldown(self, now: float) -> list[dict[str, Any]]:
        """Keys whose latest incident escalated and still cools down: what fires as an alert."""
        rows = self._read(
            "SELECT i.*, c.until FROM cooldowns c JOIN incidents i ON i.id = c.incident"
            " WHERE c.until > ? AND i.status = ?",
            (now, Status.ESCALATED),
        )
        out = []
        for r in rows:
            row = dict(r)
            row["samples"] = json.loads(row["samples"])
            out.append(row)
        return out

    def recent_fixes(self, limit: int = 20) -> list[Incident]:
        rows = self._read(
            "SELECT * FROM incidents WHERE attempts != '[]' ORDER BY updated DESC LIMIT ?",
            (limit,),
        )
        return [_incident(r) for r in rows]

    def incident(self, incident_id: str) -> Incident | None:
        rows = self._read("SELECT * FROM incidents WHERE id=?", (incident_id,))
        return _incident(rows[0]) if rows else None

    def recent_incidents(self, limit: int = 20) -> list[Incident]:
        rows = self._read("SELECT * FROM incidents ORDER BY updated DESC LIMIT ?", (limit,))
        return [_incident(r) for r in rows]

    def finish_incident(
        self,
        incident_id: str,
        status: str,
        outcome: str,
        attempts: list[dict[str, Any]],
        cooldown_until: float | None,
        fingerprint: str,
        escalation: Spoolable | None,
        now: float,
        resolved: bool = False,
    ) -> None:
        """Close an incident; its escalation (if any) is spooled in the same transaction."""
        with self._tx() as db:
            row = db.execute(
                "UPDATE incidents SET status=?, outcome=?, attempts=?, updated=? WHERE id=?"
                " RETURNING pack, pattern",
                (status, outcome, json.dumps(attempts), now, incident_id),
            ).fetchone()
            if row is not None:
                db.execute(
                    "UPDATE pattern_stats SET resolved=resolved+?, failed=failed+?,"
                    " escalated=escalated+? WHERE pack=? AND pattern=?",
                    (
                        outcome == Outcome.RESOLVED,
                        outcome != Outcome.RESOLVED,
                        escalation is not None,
                        row[0],
                        row[1],
                    ),
                )
            if cooldown_until is not None:
                db.execute(
                    "INSERT OR REPLACE INTO cooldowns (fingerprint, until, incident, resolved)"
                    " VALUES (?,?,?,?)",
                    (fingerprint, cooldown_until, incident_id, now if resolved else None),
                )
            if escalation is not None:
                self._spool(db, [escalation], now)

    def cooldowns(self, now: float) -> dict[str, tuple[float, str, float | None, int]]:
        rows = self._read("SELECT * FROM cooldowns WHERE until > ?", (now,))
        return {
            r["fingerprint"]: (r["until"], r["incident"], r["resolved"], r["recurred"])
            for r in rows
        }

    # per-pattern cost ----------------------------------------------------------
    def add_pattern_stats(
        self, rows: list[tuple[str, str, int, int, int, float, bool]], now: float
    ) -> None:
        """Add (pack, pattern, matches, confirms, timeouts, seconds, quarantined) deltas."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO pattern_stats (pack, pattern, matches, confirms, timeouts, seconds,"
                " quarantined, updated) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (pack, pattern)"
                " DO UPDATE SET matches=matches+excluded.matches,"
                " confirms=confirms+excluded.confirms, timeouts=timeouts+excluded.timeouts,"
                " seconds=seconds+excluded.seconds,"
                " quarantined=max(quarantined, excluded.quarantined), updated=excluded.updated",
                [(*row, now) for row in rows],
            )

    def pattern_stats(self) -> list[dict[str, Any]]:
        rows = self._read("SELECT * FROM pattern_stats ORDER BY seconds DESC")
        return [dict(r) for r in rows]

    # spool -------------------------------------------------------------------
    def due(self, now: float, limit: int) -> list[SpoolItem]:
        rows = self._read(
            "SELECT seq, id, body, tries FROM spool WHERE parked=0 AND next_try<=?"
            " ORDER BY seq LIMIT ?",
            (now, limit),
        )
        return [SpoolItem(r["seq"], r["id"], r["body"], r["tries"]) for r in rows]

    def next_due(self) -> float | None:
        rows = self._read("SELECT min(next_try) FROM spool WHERE parked=0")
        value = rows[0][0]
        return float(value) if value is not None else None

    def delivered(self, seqs: list[int]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM spool WHERE seq=?", [(s,) for s in seqs])

    def retry_later(self, seqs: list[int], next_try: float, error: str) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE spool SET tries=tries+1, next_try=?, last_error=? WHERE seq=?",
                [(next_try, error, s) for s in seqs],
            )

    def park(self, seqs: list[int], error: str) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE spool SET parked=1, tries=tries+1, last_error=? WHERE seq=?",
                [(error, s) for s in seqs],
            )

    def unpark(self) -> int:
        with self._tx() as db:
            return db.execute("UPDATE spool SET parked=0, next_try=0 WHERE parked=1").rowcount

    def spool_summary(self) -> dict[str, Any]:
        rows = self._read(
            "SELECT parked, count(*) AS n, min(created) AS oldest, max(last_error) AS err"
            " FROM spool GROUP BY parked"
        )
        out: dict[str, Any] = {
            "queued": 0,
            "parked": 0,
            "oldest": None,
            "parked_error": None,
            "dropped": 0,
        }
        drops = self._read("SELECT events FROM spool_drops")
        if drops:
            out["dropped"] = drops[0][0]
        for r in rows:
            out["parked" if r["parked"] else "queued"] = r["n"]
            if r["parked"]:
                out["parked_error"] = r["err"]
            else:
                out["oldest"] = r["oldest"]
        return out
