"""The state file across versions: a file written by the first release opens and works."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.state import Batch, Incident, Store

# the schema of the first release (before fix budgets, stats and event updates)
FIRST_RELEASE = """
CREATE TABLE checkpoints (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, path TEXT NOT NULL,
    offset INTEGER NOT NULL, marker BLOB NOT NULL, updated REAL NOT NULL,
    head_len INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (dev, ino));
CREATE TABLE incidents (
    id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, pack TEXT NOT NULL,
    pattern TEXT NOT NULL, key TEXT NOT NULL, source TEXT NOT NULL,
    status TEXT NOT NULL, count INTEGER NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    samples TEXT NOT NULL, fields TEXT NOT NULL, attempts TEXT NOT NULL DEFAULT '[]',
    outcome TEXT, updated REAL NOT NULL);
CREATE TABLE pattern_stats (
    pack TEXT NOT NULL, pattern TEXT NOT NULL, matches INTEGER NOT NULL DEFAULT 0,
    confirms INTEGER NOT NULL DEFAULT 0, timeouts INTEGER NOT NULL DEFAULT 0,
    seconds REAL NOT NULL DEFAULT 0, quarantined INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL, PRIMARY KEY (pack, pattern));
INSERT INTO checkpoints VALUES (1, 2, '/var/log/app.log', 4096, x'00', 0, 0);
INSERT INTO pattern_stats (pack, pattern, matches, updated) VALUES ('p', 'q', 7, 0);
"""


def test_a_state_file_of_the_first_release_opens_keeps_positions_and_takes_new_rows(
    tmp_path: Path,
):
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(FIRST_RELEASE)
    store = Store(path)
    [checkpoint] = store.checkpoints().values()
    assert (checkpoint.path, checkpoint.offset) == ("/var/log/app.log", 4096)
    batch = Batch()
    incident = Incident("i1", "fp", "p", "q", "k", "/var/log/app.log", "escalated", 1, 1.0, 1.0)
    batch.incidents[incident.id] = incident
    batch.opened[("p", "q")] = [1, 1]
    batch.escalations.append({"id": "i1", "count": 1})
    store.commit(batch, 2.0)
    [stats] = store.pattern_stats()
    assert (stats["matches"], stats["incidents"], stats["escalated"]) == (7, 1, 1)
    assert store.spool_summary()["queued"] == 1
    store.close()
