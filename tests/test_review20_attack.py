"""Adversarial review of issue 20 (the systemd journal as a source): each test here
fails on the code reviewed and shows one bug."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import ConfigErrors, StateError
from agent.journal import JournalSpec
from agent.state import Store
from tests.helpers import AgentProc, wait_for, write_pack
from tests.test_journal import (
    Journal,
    follower,
    has_journal_open,
    needs_journal,
    read,
    read_until,
)
from tests.test_journal_source import PACK
from tests.test_journal_stream import Clock, entry, records_of, run, stream

# -- 1. start = "end": a last entry too big for the probe reads the whole history -------


@needs_journal
def test_an_oversized_last_entry_does_not_make_start_end_read_the_whole_history(tmp_path):
    """agent/journal.py `_start`/`_probe`: `--lines=1` is read with readline(max_line +
    JSON_SLACK); an entry with many fields (anyone may log them: sd_journal_send, logger
    --journald) makes that line longer, parse() gives None, and None is taken for "the
    journal is empty": from_start = True, and a source that starts at the end reads (and
    runs the fixes of) every entry the journal ever kept."""
    journal = Journal(tmp_path / "journal")
    journal.write("upstream timed out 1", "upstream timed out 2")  # history, long fixed
    # the attacker's entry, last in the journal when the agent starts: 30 fields of 4000
    # bytes (each under journalctl's 4096-byte JSON threshold, so none shown as null)
    journal.write("x", **{f"F{n}": "x" * 4000 for n in range(30)})
    made = follower(journal, from_start=False)
    try:
        assert wait_for(lambda: has_journal_open(made), 10)
        journal.write("new")
        assert read_until(made, "new") == ["new"]  # not the whole history first
    finally:
        made.stop()


@needs_journal
def test_a_journalctl_missing_at_the_first_start_does_not_turn_end_into_beginning(tmp_path):
    """agent/journal.py `_start`: the `--lines=1` probe that cannot run (OSError) is also
    taken for an empty journal and sets from_start = True for good; once journalctl can
    run (installed, PATH fixed, a transient failure), the source reads the journal from
    its start instead of from now on."""
    journal = Journal(tmp_path / "journal")
    journal.write("old 1", "old 2")
    link = tmp_path / "bin" / "journalctl"
    made = follower(journal, from_start=False, journalctl=str(link))
    try:
        assert "cannot run" in made.state.last_error
        link.parent.mkdir()
        link.symlink_to(
            subprocess.check_output(["sh", "-c", "command -v journalctl"]).strip().decode()
        )
        assert wait_for(lambda: (made.poll(), has_journal_open(made))[1], 10)
        journal.write("new")
        assert read_until(made, "new") == ["new"]
    finally:
        made.stop()


# -- 2. start = "end" is not committed: a restart before the first entry loses entries --


def _count(tmp_path: Path, sql: str) -> int:
    db = tmp_path / "state" / "state.db"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return 0


def _incidents(tmp_path: Path) -> int:
    return _count(tmp_path, "SELECT count(*) FROM incidents")


@needs_journal
@pytest.mark.parametrize("history", [True, False])
def test_start_end_is_anchored_at_the_first_start_not_at_every_start(tmp_path, history):
    """docs/config.md: `"end"`, after its last entry at the first start. The follower's
    probed cursor is never committed (agent/journalstream.py `mark` needs an entry read),
    so every start before the source's first entry probes the end again: what its units
    logged while the agent was down (a unit failing at boot, before the agent runs) is
    never read. A file source commits its starting checkpoint at once."""
    journal = Journal(tmp_path / "journal")
    if history:
        journal.write("upstream timed out 0")  # not read
    journal.write("boot", unit="other.service")  # the journal's last entry, not nginx's
    packs = tmp_path / "packs"
    write_pack(packs, "web", PACK)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nhost = "web-1"\nstate_dir = "{tmp_path / "state"}"\npacks = ["{packs}"]\n'
        f'[[source]]\njournal = {{ units = ["nginx.service"], directory = "{journal.folder}" }}\n'
        'packs = "*"\nstart = "end"\n[limits]\nsweep_interval = "100ms"\n'
    )
    agent = AgentProc(config).start()
    # committed at once: after nginx's last entry (journalctl --after-cursor of an entry
    # its --unit leaves out would skip the next one it takes)
    # (or "", none of nginx's yet: then from the journal's start at every start)
    anchored = (
        "SELECT count(*) FROM journal_cursors WHERE cursor " + ("!=" if history else "=") + " ''"
    )
    assert wait_for(lambda: _count(tmp_path, anchored) == 1), agent.log()
    assert agent.stop() == 0
    journal.write("upstream timed out 1")  # logged while the agent is down
    journal.write("more boot", unit="other.service")
    agent.start()
    try:
        counted = "SELECT coalesce(sum(count), 0) FROM incidents"
        assert wait_for(lambda: _count(tmp_path, counted) == 1, 8), agent.log()
    finally:
        agent.stop()


# -- 3. a kill during a replay: entries matched twice ------------------------------------


def test_a_second_kill_during_a_replay_matches_nothing_twice():
    """agent/journalstream.py `take`: while replaying, `_last` becomes the cursor of the
    last entry replayed (before the mark's cursor), and `mark` commits it as the new
    `cursor`. Killed again before the replay reaches the old cursor, the next start
    takes every entry between as beyond the last one committed: matched (and their fixes
    run) a second time."""
    entries = [
        entry(1, "Traceback A", pid="1"),
        entry(2, "plain B1", pid="2"),
        entry(3, "plain B2", pid="2"),
        entry(4, "plain B3", pid="2"),
        entry(5, "  at A.1", pid="1"),
    ]
    whole_clock = Clock()
    whole = records_of(run(stream(entries, clock=whole_clock), [10_000], whole_clock))

    clock = Clock()
    first = stream(entries, clock=clock)
    committed = [(first.take(5), first.mark())]  # A held since entry 1
    mark = committed[-1][1]
    assert mark is not None and mark.held
    second = stream(entries, mark, clock)  # killed, started again: replays from entry 1
    records = second.take(1)  # one pass, one entry (the follower had only that one yet)
    moved = second.mark()
    assert moved is None  # mid-replay: what was committed still holds
    committed.append((records, moved))
    third = stream(entries, mark, clock)  # killed again: from the same mark
    after = run(third, [10_000], clock)
    total = records_of(committed) + records_of(after)
    assert total == whole, total - whole


# -- 4. a hand-edited (corrupt) mark: a traceback, not a clear error ----------------------


def test_a_corrupt_held_mark_is_a_clear_state_error(tmp_path):
    """agent/state.py `journal_marks`: json.loads of the `held` column unguarded; a row
    edited by hand (or written by another version) raises JSONDecodeError / ValueError
    out of Reader.__init__: the agent dies with a traceback at every start (a crash loop
    under systemd) instead of a StateError naming the source."""
    store = Store(tmp_path / "state.db")
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute(
            "INSERT INTO journal_cursors VALUES (?,?,?,?,?)",
            ("journal:nginx.service", "s=1;i=1", 0.0, "s=1;i=1", '[["nginx.service[1]"'),
        )
    with pytest.raises(StateError, match=r"nginx\.service"):
        store.journal_marks()
    store.close()


@pytest.mark.parametrize("held", ['{"a": "b"}', "null", '[["a", "b", "c"]]', "[1]"])
def test_a_held_mark_of_the_wrong_shape_is_a_clear_state_error(tmp_path, held):
    store = Store(tmp_path / "state.db")
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute(
            "INSERT INTO journal_cursors VALUES (?,?,?,?,?)",
            ("journal:nginx.service", "s=1;i=1", 0.0, "s=1;i=1", held),
        )
    with pytest.raises(StateError):
        store.journal_marks()
    store.close()


# -- 5. two journal sources, one name: one cursor row -------------------------------------


@pytest.mark.parametrize(
    "second",
    [
        'journal = { units = ["nginx.service"], priority = "err" }',  # priority not in the name
        'journal = { identifiers = ["nginx.service"] }',  # units and identifiers joined alike
        'journal = { units = ["nginx.service"] }\nmultiline = { continuation = "^\\\\s" }',
    ],
)
def test_two_journal_sources_do_not_share_one_cursor(tmp_path, second):
    """agent/config.py Source.name is `journal:` + JournalSpec.name (units and identifiers
    joined, no priority, no multiline): two different journal sources get one name, and
    the name keys their cursor row (state.journal_cursors), their status and metrics.
    Each pass's batch.cursors[name] keeps one source's mark: after a restart both resume
    from it, so one skips what it had not read yet, and a held multiline event's `held`
    is overwritten by the other source's mark and lost. Neither refused nor told apart."""
    text = (
        '[agent]\nhost = "h"\n'
        '[[source]]\njournal = { units = ["nginx.service"] }\npacks = "*"\n'
        f'[[source]]\n{second}\npacks = "*"\n'
    )
    try:
        config = parse_config(tmp_path / "agent.toml", text)
    except ConfigErrors:
        return  # refused: fine
    names = [s.name for s in config.sources]
    assert len(set(names)) == 2, names


# -- 6. a cursor journalctl refuses: restarted forever, nothing read, never said why ------


@needs_journal
def test_a_cursor_journalctl_cannot_parse_is_not_a_restart_loop_forever(tmp_path):
    """agent/journal.py `_check_still_there`: a cursor journalctl refuses ("Failed to seek
    to cursor: Invalid argument" - a state database edited by hand, or restored from
    another format) makes the probe return None, taken as "still there"; journalctl
    --after-cursor then exits 1, and the follower restarts it with the same cursor
    forever: the source never reads again. It could resume at the oldest entry (as for a
    vacuumed cursor) and say that the committed cursor was unusable."""
    journal = Journal(tmp_path / "journal")
    journal.write("a", "b")
    made = follower(journal, cursor="garbage", from_start=False)
    try:
        got = read(made, 2, timeout=6)
        assert [e.message for e in got] == ["a", "b"]
    finally:
        made.stop()


# -- 7. a glob in the source's units is expanded once, when journalctl starts --------------


@needs_journal
def test_a_unit_glob_takes_instances_that_appear_after_journalctl_started(tmp_path):
    """docs/config.md: `units` (list, `--unit`, globs allowed). journalctl expands a
    --unit glob once, at its start, against the units already in the journal: an
    instance started later (postgresql@16-main.service after an upgrade, a new
    worker@N.service) is never read while that journalctl runs - on a healthy host,
    for ever, and unsaid. (And a glob that matches no unit yet makes journalctl exit,
    "Failed to add filter for units: No data available", restarted every 60 s.)"""
    journal = Journal(tmp_path / "journal")
    journal.write("a1", unit="pg@a.service")
    spec = JournalSpec(units=("pg@*.service",), directory=journal.folder)
    made = follower(journal, spec=spec)
    try:
        assert [e.message for e in read(made, 1)] == ["a1"]
        journal.write("b1", unit="pg@b.service")  # a new instance
        journal.write("a2", unit="pg@a.service")
        journal.write("end", unit="other.service")  # not the source's: read, not taken
        journal.write("end", unit="pg@a.service")
        assert read_until(made, "end") == ["b1", "a2", "end"]
    finally:
        made.stop()
