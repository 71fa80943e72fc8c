"""Issue 20, the journal follower (agent/journal.py): journalctl's JSON read into
entries with their cursors, bounded, resumed after a cursor, restarted when it dies.
Real journal files, written by systemd-journal-remote (no journald needed), read by
the real journalctl; hostile entries as the attacker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.journal import (
    Entry,
    JournalFollower,
    JournalSpec,
    argv,
    lost_between,
    machine_id,
    parse,
    seqnum,
    system_journal,
)
from tests.helpers import wait_for

REMOTE = next(
    (p for p in ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote")
     if Path(p).exists()),
    None,
)  # fmt: skip
needs_journal = pytest.mark.skipif(
    REMOTE is None or shutil.which("journalctl") is None,
    reason="systemd-journal-remote and journalctl (Debian: systemd, systemd-journal-remote)",
)
BOOT = "0123456789abcdef0123456789abcdef"


class Journal:
    """A journal folder written entry by entry, as journald would."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.n = 0

    def write(
        self,
        *messages: str | bytes,
        unit: str = "nginx.service",
        file: str = "test.journal",  # another name: a new file, as journald's rotation makes
        **extra: str,
    ) -> None:
        out = bytearray()
        for message in messages:
            self.n += 1
            fields = {
                "__REALTIME_TIMESTAMP": str(int(time.time() * 1e6) + self.n),
                "__MONOTONIC_TIMESTAMP": str(self.n),
                "_BOOT_ID": BOOT, "_SYSTEMD_UNIT": unit, "SYSLOG_IDENTIFIER": unit.partition(".")[0],
                "_PID": "4242", "PRIORITY": "3", "_HOSTNAME": "web-1", **extra,
            }  # fmt: skip
            for key, value in fields.items():
                out += f"{key}={value}\n".encode()
            body = message.encode() if isinstance(message, str) else message
            if b"\n" in body or isinstance(message, bytes):  # the binary form of a field
                out += b"MESSAGE\n" + len(body).to_bytes(8, "little") + body + b"\n"
            else:
                out += b"MESSAGE=" + body + b"\n"
            out += b"\n"
        assert REMOTE is not None
        done = subprocess.run(
            [REMOTE, f"--output={self.folder / file}", "-"],
            input=bytes(out), capture_output=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr


def follower(journal: Journal, cursor: str | None = None, **over) -> JournalFollower:
    spec = over.pop("spec", JournalSpec(directory=journal.folder))
    made = JournalFollower(
        spec, cursor, from_start=over.pop("from_start", True), max_line=over.pop("max_line", 4096),
        wake=threading.Event(), backoff=(0.05, 0.2), **over,
    )  # fmt: skip
    made.poll()
    return made


def has_journal_open(made: JournalFollower) -> bool:
    """Whether the follower's journalctl holds a journal file open (it is reading)."""
    if made._proc is None:
        return False
    fds = Path(f"/proc/{made._proc.pid}/fd")
    try:
        return any(os.readlink(fds / fd).endswith(".journal") for fd in os.listdir(fds))
    except OSError:
        return False


def read(made: JournalFollower, count: int, timeout: float = 15) -> list[Entry]:
    got: list[Entry] = []

    def enough() -> bool:
        made.poll()
        got.extend(made.take(1000))
        return len(got) >= count

    assert wait_for(enough, timeout), (got, made.state)
    return got


def read_until(made: JournalFollower, last: str, timeout: float = 15) -> list[str]:
    """The messages read up to and including `last`, a marker written after what is
    checked: entries come in order, so what did not come before it will not come."""
    got: list[str] = []

    def seen() -> bool:
        made.poll()
        got.extend(e.message for e in made.take(1000) if e.wanted)
        return last in got

    assert wait_for(seen, timeout), (got, made.state)
    return got


# -- pure ------------------------------------------------------------------------------


def test_argv_follows_from_a_cursor_the_start_or_the_end():
    spec = JournalSpec(("nginx.service",), ("sshd",), "warning", Path("/j"))
    assert argv(spec, "s=1;i=2", True, "journalctl")[1:] == [
        "--output=json", "--follow", "--merge", "--all", "--no-pager", "--quiet", "--directory=/j",
        "--unit=nginx.service", "--identifier=sshd", "--priority=warning", "--after-cursor=s=1;i=2",
    ]  # fmt: skip
    assert argv(JournalSpec(), None, True, "journalctl")[-1] == "--no-tail"
    assert argv(JournalSpec(), None, False, "journalctl")[-1] == "--lines=0"
    assert argv(spec, "s=1;i=2", True, "journalctl", at=True)[-1] == "--cursor=s=1;i=2"
    # the system's journal, merged (or --follow would read this boot only): this host's
    mine = "0123456789abcdef0123456789abcdef"
    assert f"_MACHINE_ID={mine}" in argv(JournalSpec(), None, True, "journalctl", machine=mine)
    assert not any("_MACHINE_ID" in a for a in argv(spec, None, True, "journalctl", machine=mine))


def test_the_machine_id_is_read_or_left_out(tmp_path):
    (tmp_path / "id").write_text("0123456789abcdef0123456789abcdef\n")
    (tmp_path / "bad").write_text("0123456789abcdef0123456789abcdef --unit=x\n")
    assert machine_id(tmp_path / "id") == "0123456789abcdef0123456789abcdef"
    assert machine_id(tmp_path / "bad") == machine_id(tmp_path / "none") == ""


def test_an_entry_carries_its_message_cursor_and_the_fields_keys_may_use():
    line = json.dumps({
        "__CURSOR": "s=a;i=3", "MESSAGE": "upstream timed out", "_SYSTEMD_UNIT": "nginx.service",
        "SYSLOG_IDENTIFIER": "nginx", "_PID": "7", "PRIORITY": "3", "_HOSTNAME": "web-1",
        "_CMDLINE": "nginx: worker", "X": "y",
    }).encode()  # fmt: skip
    entry = parse(line, 4096)
    assert entry == Entry("s=a;i=3", "upstream timed out", {
        "unit": "nginx.service", "identifier": "nginx", "pid": "7", "priority": "3",
        "hostname": "web-1",
    })  # fmt: skip


@pytest.mark.parametrize(
    ("message", "text", "garbage"),
    [
        ([104, 105, 0, 255], "hi\x00\ufffd", True),  # binary: journalctl gives the bytes
        (None, "", True),  # too large to show without --all
        ("x" * 5000, "x" * 4096, True),  # past the line limit: cut, marked
        ("é" * 3000, "é" * 2048, True),
        ([300, -1, "a"], "", True),
    ],
)
def test_binary_absent_and_huge_messages_are_garbage_like_a_files(message, text, garbage):
    entry = parse(json.dumps({"__CURSOR": "c", "MESSAGE": message}).encode(), 4096)
    assert entry is not None and (entry.message, entry.garbage) == (text, garbage)


@pytest.mark.parametrize("line", [b"", b"not json", b"[1,2]", b'{"MESSAGE":"no cursor"}',
                                  b'{"__CURSOR":7}', b"\xff\xfe"])  # fmt: skip
def test_a_line_that_is_no_entry_is_none(line):
    assert parse(line, 4096) is None


def test_hostile_fields_are_dropped_or_cut():
    entry = parse(json.dumps({"__CURSOR": "c", "MESSAGE": "m", "_SYSTEMD_UNIT": "a\x1b[31mb",
                              "_HOSTNAME": "h" * 1000, "_PID": ["x"]}).encode(), 4096)  # fmt: skip
    assert entry is not None and entry.fields == {"hostname": "h" * 256}


@given(st.binary(max_size=300))
def test_parse_never_raises(line):
    parse(line, 64)


def test_what_was_vacuumed_between_two_cursors_is_counted():
    assert seqnum("s=ab;i=1f;b=x") == ("ab", 31)
    assert lost_between("s=ab;i=2", "s=ab;i=3") == 0
    assert lost_between("s=ab;i=2", "s=ab;i=a") == 7
    assert lost_between("s=ab;i=2", "s=cd;i=a") is None  # another sequence: no count
    assert lost_between("garbage", "s=ab;i=a") is None


# -- with real journal files and the real journalctl -------------------------------------


@needs_journal
def test_entries_appended_while_following_arrive_in_order_with_cursors(tmp_path):
    journal = Journal(tmp_path / "journal")
    journal.write("one", "two")
    made = follower(journal)
    try:
        first = read(made, 2)
        assert [e.message for e in first] == ["one", "two"]
        assert first[0].fields["unit"] == "nginx.service" and first[0].fields["pid"] == "4242"
        journal.write("three", b"bin\xffary\x00", "five")
        later = read(made, 3)
        assert [(e.message, e.garbage) for e in later] == [
            ("three", False),
            ("bin\ufffdary\x00", True),
            ("five", False),
        ]
        assert len({e.cursor for e in first + later}) == 5
    finally:
        made.stop()


@needs_journal
def test_a_restart_resumes_after_the_cursor_and_a_new_source_at_the_end(tmp_path):
    journal = Journal(tmp_path / "journal")
    journal.write("a", "b", "c")
    made = follower(journal)
    entries = read(made, 3)
    made.stop()
    again = follower(journal, cursor=entries[1].cursor)
    try:
        assert [e.message for e in read(again, 1)] == ["c"]
        journal.write("d")
        assert [e.message for e in read(again, 1)] == ["d"]
    finally:
        again.stop()
    fresh = follower(journal, from_start=False)  # a new source: what comes from now on
    try:
        assert wait_for(lambda: has_journal_open(fresh), 10)  # it has the journal open
        journal.write("e")
        assert [e.message for e in read(fresh, 1)] == ["e"]
    finally:
        fresh.stop()


@needs_journal
def test_a_journalctl_that_dies_is_started_again_and_nothing_is_read_twice(tmp_path):
    journal = Journal(tmp_path / "journal")
    journal.write("a", "b")
    made = follower(journal)
    try:
        assert [e.message for e in read(made, 2)] == ["a", "b"]
        assert made._proc is not None
        os.kill(made._proc.pid, signal.SIGKILL)
        journal.write("c")
        assert [e.message for e in read(made, 1)] == ["c"]
        assert made.state.starts == 2 and made.state.exits == 1
        assert "exited with -9" in made.state.last_error
        journal.write("end")
        assert read_until(made, "end") == ["end"]  # nothing again
    finally:
        made.stop()


@needs_journal
def test_units_and_priority_choose_the_entries(tmp_path):
    journal = Journal(tmp_path / "journal")
    journal.write("from nginx", unit="nginx.service")
    journal.write("from postgres", unit="postgresql.service")
    journal.write("nginx but chatty", unit="nginx.service", PRIORITY="7")
    spec = JournalSpec(units=("nginx.service",), priority="warning", directory=journal.folder)
    made = follower(journal, spec=spec)
    try:
        journal.write("end", unit="nginx.service")
        assert read_until(made, "end") == ["from nginx", "end"]
    finally:
        made.stop()


@needs_journal
def test_a_missing_journalctl_is_said_and_retried(tmp_path):
    made = follower(Journal(tmp_path / "journal"), journalctl=str(tmp_path / "nope"))
    try:
        assert not made.state.running and "cannot run" in made.state.last_error
        first = made._next_start
        assert wait_for(lambda: (made.poll(), made._next_start != first)[1], 5)
    finally:
        made.stop()


@needs_journal
def test_a_full_queue_holds_journalctl_back_and_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("agent.journal.QUEUE", 5)
    journal = Journal(tmp_path / "journal")
    journal.write(*(f"m{n}" for n in range(40)))
    made = follower(journal)
    try:
        assert wait_for(lambda: made.entries.full(), 10)
        assert [e.message for e in read(made, 40)] == [f"m{n}" for n in range(40)]
    finally:
        made.stop()


@needs_journal
def test_a_cursor_the_journal_no_longer_has_resumes_at_the_oldest_entry(tmp_path):
    """The file the cursor was in is gone (vacuumed, or rotated away): journalctl
    asked to follow after it would start near it and skip what lies before; the
    follower starts at the oldest entry still there and says so."""
    journal = Journal(tmp_path / "journal")
    journal.write("a0", "a1", "a2")
    made = follower(journal)
    cursor = read(made, 2)[1].cursor
    made.stop()
    (journal.folder / "test.journal").unlink()
    journal.write("b0", "b1", "b2")  # a new file, a new sequence
    again = follower(journal, cursor=cursor, from_start=False)
    try:
        assert [e.message for e in read(again, 3)] == ["b0", "b1", "b2"]
        assert again.state.resumed_oldest == 1
    finally:
        again.stop()


@needs_journal
def test_an_empty_journal_is_followed_until_its_first_entries(tmp_path):
    """No entry yet (a fresh host, a new container): journalctl --follow alone would exit
    with "No such boot ID in journal" (it implies --boot) and be restarted forever."""
    journal = Journal(tmp_path / "journal")
    made = follower(journal, from_start=False)
    try:
        assert wait_for(lambda: made._proc is not None and made._proc.poll() is None, 5)
        journal.write("first", "second")
        assert [e.message for e in read(made, 2)] == ["first", "second"]
        assert made.state.exits == 0 and made.state.starts == 1
    finally:
        made.stop()


def test_this_hosts_journal_folder_is_the_persistent_one_else_the_volatile_one(tmp_path):
    """Not the whole system journal: merged (--merge), that is every machine folder
    under it, and a container's, linked in, is written by the container's root."""
    mine = "0123456789abcdef0123456789abcdef"
    persistent, volatile = tmp_path / "var", tmp_path / "run"
    roots = (persistent, volatile)
    assert system_journal(mine, roots) is None
    (volatile / mine).mkdir(parents=True)
    assert system_journal(mine, roots) == volatile / mine
    (persistent / mine).mkdir(parents=True)
    assert system_journal(mine, roots) == persistent / mine
    assert system_journal("", roots) is None
