"""The state file across versions, and only logmend's: others are refused, new ones are 0600."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from agent.errors import StateError
from agent.events import Event
from agent.model import Batch, Incident
from agent.policy import Status, Wire
from agent.state import Store
from agent.statefile import APPLICATION_ID, check_state_file
from tests.helpers import PYTHON, agent_with_pack
from tests.test_inputs import MINIMAL

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
    incident = Incident(
        "i1", "fp", "p", "q", "k", "/var/log/app.log", Status.ESCALATED, 1, 1.0, 1.0
    )
    batch.incidents[incident.id] = incident
    batch.opened[("p", "q")] = [1, 1]
    batch.escalations.append(
        Event("i1", "fp", "h", "p", "1", "team", "q", "error", Wire.NO_REMEDY, "x", 1.0, 1.0, 1)
    )
    store.commit(batch, 2.0)
    [stats] = store.pattern_stats()
    assert (stats["matches"], stats["incidents"], stats["escalated"]) == (7, 1, 1)
    assert store.spool_summary()["queued"] == 1
    store.close()


def test_a_state_file_of_the_first_release_is_stamped_as_logmends_when_opened(tmp_path: Path):
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(FIRST_RELEASE)
    Store(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    Store(path).close()  # and opens again as logmend's own


def modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


def test_a_new_state_file_and_its_wal_and_shm_are_0600_in_a_0700_folder_under_umask_022(
    tmp_path: Path,
):
    folder = tmp_path / "state"
    old = os.umask(0o022)
    try:
        store = Store(folder / "state.db")
        store.set_meta("k", "v")  # a write: the -wal and -shm files exist now
    finally:
        os.umask(old)
    assert modes(folder) == {"state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    store.close()
    with sqlite3.connect(folder / "state.db") as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def other_sqlite(path: Path, application_id: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA application_id={application_id}")
        db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
        db.execute("INSERT INTO accounts VALUES (1, 100)")


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
        (lambda p: p.write_text("[agent]\nhost = 'x'\n"), "is not an SQLite database"),
        (lambda p: other_sqlite(p, 0x12345678), "another application's SQLite database"),
        (lambda p: other_sqlite(p, 0), "an SQLite database without logmend's tables"),
        (
            lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200),
            "is damaged or not a database",
        ),
    ],
    ids=["empty", "text", "other-application", "other-tables", "damaged"],
)
def test_a_state_file_that_is_not_logmends_is_refused_untouched_with_how_to_start_fresh(
    tmp_path: Path, make, says
):
    path = tmp_path / "state.db"
    make(path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(StateError) as caught:
        Store(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and says in message, message
    assert f"mv {path} {path}.bad" in message
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # not a byte written
    with pytest.raises(StateError, match=re.escape(says)):
        check_state_file(path)
    path.rename(tmp_path / "state.db.bad")  # what the message says to do
    Store(path).close()


def test_a_missing_state_file_whose_wal_is_left_is_refused_not_replayed(tmp_path: Path):
    path = tmp_path / "state.db"
    store = Store(path)
    store.set_meta("k", "v")  # still open: the write is in its -wal
    assert (tmp_path / "state.db-wal").stat().st_size > 0
    path.rename(tmp_path / "moved.db")  # moved without its -wal
    try:
        with pytest.raises(StateError, match=r"state\.db-wal is there"):
            Store(path)
        assert not path.exists()
    finally:
        store.close()


def test_a_state_file_half_made_by_a_start_that_died_is_made_again(tmp_path: Path):
    (tmp_path / "state.db.new").write_bytes(b"")
    Store(tmp_path / "state.db").close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]


@pytest.mark.parametrize("command", [["run"], ["run", "--dry-run"], ["status"]])
def test_the_cli_refuses_an_empty_state_file_by_name_and_exits_1(tmp_path: Path, command):
    agent, _ = agent_with_pack(tmp_path, MINIMAL)
    state = tmp_path / "state" / "state.db"
    state.parent.mkdir()
    state.write_bytes(b"")
    done = subprocess.run(
        [PYTHON, "-m", "agent", *command, "-c", str(agent.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"error: {state}: is empty (0 bytes)")
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in state.parent.iterdir()) == ["state.db"]
    assert state.read_bytes() == b""
