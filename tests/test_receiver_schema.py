"""The receiver database upgrades in place and refuses one newer than it knows.

A database as the release before scopes wrote it (schema 1: tokens with an owner
label, escalations keyed by id alone, stats keyed by host) is opened by this
release: nothing stored is lost, its tokens keep working as ingest tokens for any
owner and host, and the operator is told so.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.errors import StateError
from agent.receiver.schema import LATEST, escalation_ref, group_ref
from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore, token_hash
from tests.helpers import wire_event

RELEASE_1 = """
CREATE TABLE tokens (hash TEXT PRIMARY KEY, owner TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE escalations (
    id TEXT PRIMARY KEY, received REAL NOT NULL, submitted_by TEXT NOT NULL,
    host TEXT NOT NULL, owner TEXT NOT NULL, pack TEXT NOT NULL, pattern TEXT NOT NULL,
    severity TEXT NOT NULL, status TEXT NOT NULL, fingerprint TEXT NOT NULL,
    count INTEGER NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX escalations_owner ON escalations (owner, pattern);
CREATE TABLE stats (
    host TEXT NOT NULL, pack TEXT NOT NULL, pattern TEXT NOT NULL, owner TEXT NOT NULL,
    matches INTEGER NOT NULL, incidents INTEGER NOT NULL, resolved INTEGER NOT NULL,
    failed INTEGER NOT NULL, escalated INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (host, pack, pattern));
"""


def release_1_database(path: Path) -> str:
    """A database as the first release left it, with one token, two escalations, stats."""
    token = "lm_from-the-first-release"
    with sqlite3.connect(path) as db:
        db.executescript(RELEASE_1)
        db.execute("INSERT INTO tokens VALUES (?, 'web-hosts', ?)", (token_hash(token), 1.0))
        for n in (1, 2):
            e = wire_event(n, owner="team-a")
            db.execute(
                "INSERT INTO escalations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    e["id"], 10.0 + n, "web-hosts", e["host"], e["owner"], e["pack"],
                    e["pattern"], "error", e["status"], e["fingerprint"], e["count"],
                    e["first_seen"], e["last_seen"], json.dumps({"id": e["id"], "count": 3}),
                ),
            )  # fmt: skip
        db.execute("INSERT INTO stats VALUES ('h1', 'nginx', 'p', 'team-a', 5, 1, 1, 0, 0, 1.0)")
    return token


def test_a_release_1_database_is_upgraded_in_place_and_loses_no_escalation(tmp_path, capsys):
    db = tmp_path / "receiver.db"
    token = release_1_database(db)
    assert main(["receiver", "token", "list", "--db", str(db)]) == 0
    out, err = capsys.readouterr()
    assert "1 token(s) from before scopes are now ingest tokens for any owner and host" in err
    assert "web-hosts" in out and "ingest" in out and "owners *; hosts *" in out
    store = ReceiverStore(db)
    try:
        assert store.notes == []  # upgraded once; the second opening has nothing to say
        who = store.authenticate(token)
        assert who is not None and who.scope is Scope.INGEST
        assert (who.name, who.owners, who.hosts) == ("web-hosts", ("*",), ("*",))
        rows, more = store.query({}, None)
        assert not more and sorted(r["id"] for r in rows) == ["ev-1", "ev-2"]
        assert {r["ref"] for r in rows} == {
            escalation_ref("web-hosts", "team-a", "h1", f"ev-{n}") for n in (1, 2)
        }
        # the same agent goes on updating its escalations under the same name
        accepted, _ = store.store([{**wire_event(1, owner="team-a"), "count": 9}], who)
        assert accepted == ["ev-1"]
        assert [r["count"] for r in store.query({"host": "h1"}, None)[0] if r["id"] == "ev-1"] == [
            9
        ]
        assert store.stats(None) == ([], False)  # totals come back with the agents' next report
        for n in (1, 2):  # each escalation in an open group of its owner and fingerprint
            group = store.group(group_ref("team-a", f"fp{n}"), ("team-a",))
            assert group is not None and group["state"] == "open"
            assert [e["id"] for e in group["escalations"]] == [f"ev-{n}"]
    finally:
        store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(LATEST,)]


def test_a_database_newer_than_this_release_is_refused_unchanged(tmp_path):
    db = tmp_path / "receiver.db"
    ReceiverStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (LATEST + 1,))
    before = db.read_bytes()
    with pytest.raises(StateError, match=f"written by a newer receiver \\(schema {LATEST + 1}"):
        ReceiverStore(db)
    assert db.read_bytes() == before


def test_an_upgrade_that_fails_half_way_leaves_the_database_as_it_was(tmp_path):
    """The upgrade is one transaction: a database it cannot finish stays at release 1."""
    db = tmp_path / "receiver.db"
    release_1_database(db)
    with sqlite3.connect(db) as conn:  # a table in the way of the upgrade's own
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute("CREATE TABLE escalations_v1 (x)")
    with pytest.raises(StateError, match="cannot open the receiver database"):
        ReceiverStore(db)
    with sqlite3.connect(db) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(tokens)")]
        assert columns == ["hash", "owner", "created"]
        assert conn.execute("SELECT count(*) FROM escalations").fetchone() == (2,)


def test_a_fresh_database_starts_at_the_latest_schema(tmp_path):
    store = ReceiverStore(tmp_path / "receiver.db")
    try:
        assert store.notes == []
        token = store.create_token(Scope.ADMIN, "central", expires=time.time() + 60)
        assert store.authenticate(token) is not None
    finally:
        store.close()
