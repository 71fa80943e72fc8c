"""The state file is logmend's alone: checked before SQLite may touch it, made whole.

An existing file that is empty, not SQLite, damaged, or someone else's
database is refused with how to start fresh, rather than taken for fresh
state (lines escalated again or skipped) or written over. A new file is made
0600 under another name, stamped with logmend's application id, and renamed
into place.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from agent.errors import StateError

# `PRAGMA application_id` of every state file logmend makes ("LGMD")
APPLICATION_ID = 0x4C474D44
# what a state file made before the application id was set has, since the first release
EARLIER_RELEASES = {
    "checkpoints": {"dev", "ino", "path", "offset", "marker"},
    "incidents": {"id", "fingerprint", "pack", "pattern", "key", "status"},
}


def _start_fresh(path: Path) -> str:
    return (
        f"to start fresh, move it aside (mv {path} {path}.bad, and its -wal and -shm files"
        " if there are any): logmend then makes a new state file and reads each file that is"
        " already there from its source's `start` (the end, by default); the incidents,"
        " cooldowns and unsent escalations of the old file are not carried over"
    )


def check_file(path: Path) -> None:
    """An existing state file must be a non-empty SQLite file before SQLite may open it."""
    with path.open("rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise StateError(f"{path}: is not a regular file; {_start_fresh(path)}")
        head = handle.read(16)
    if not head:
        raise StateError(
            f"{path}: is empty (0 bytes): a truncated or half-made state file, not fresh"
            " state (taken for it, lines would be escalated again or skipped);"
            f" {_start_fresh(path)}"
        )
    if head != b"SQLite format 3\x00":
        raise StateError(f"{path}: is not an SQLite database; {_start_fresh(path)}")


def check_owner(db: sqlite3.Connection, path: Path) -> bool:
    """Is this logmend's database? True if it is one made before the stamp, to stamp."""
    found = db.execute("PRAGMA application_id").fetchone()[0]
    if found == APPLICATION_ID:
        return False
    if found != 0:
        raise StateError(
            f"{path}: is another application's SQLite database (application id {found:#x}),"
            f" not logmend's state; {_start_fresh(path)}"
        )
    for table, columns in EARLIER_RELEASES.items():
        if not columns <= {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
            raise StateError(
                f"{path}: is an SQLite database without logmend's tables, not logmend's"
                f" state; {_start_fresh(path)}"
            )
    return True


def create(path: Path, schema: str) -> None:
    """A new state file: 0600 whatever the umask, stamped as logmend's, in place whole.

    Made under another name and renamed, so a start that dies half-way leaves
    no empty state.db behind to be refused at the next one.
    """
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StateError(
            f"{path}: is missing but {wal} is there: the rest of a state file moved or"
            f" deleted without it, which SQLite would replay into a new one; move {wal}"
            " aside too, and logmend makes a new state file"
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    new = path.with_name(path.name + ".new")
    new.unlink(missing_ok=True)  # left by a start that died here
    os.close(os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    db = sqlite3.connect(new, isolation_level=None)
    try:
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.executescript(schema)
    finally:
        db.close()
    os.replace(new, path)


def refused(path: Path, exc: sqlite3.Error) -> StateError:
    """A damaged file is to be moved aside; a lock, a full disk or permissions are not."""
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return StateError(f"{path}: is damaged or not a database ({exc}); {_start_fresh(path)}")
    return StateError(f"{path}: cannot open the state database: {exc}")


def check_state_file(path: Path) -> None:
    """Raise StateError if `path` exists and is not logmend's state; change nothing."""
    if not path.exists():
        return
    try:
        check_file(path)
        db = sqlite3.connect(path)  # only read: nothing is written before the checks pass
        try:
            check_owner(db, path)
        finally:
            db.close()
    except OSError as exc:
        raise StateError(f"{path}: cannot open the state database: {exc}") from exc
    except sqlite3.Error as exc:
        raise refused(path, exc) from exc
