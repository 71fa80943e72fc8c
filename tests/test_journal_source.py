"""Issue 20, items 1 and 2: a `[[source]] journal` read by a real agent through the real
journalctl, from real journal files; the entries' fields reach the keys, and what they
caused is committed with the cursor, so a kill and a restart count each entry once."""

from __future__ import annotations

import json
import signal
import sqlite3

import pytest

from agent.config import load_config
from agent.errors import ConfigErrors
from tests.helpers import AgentProc, wait_for, write_pack
from tests.test_journal import Journal, needs_journal

PACK = """\
[[pattern]]
id = "upstream"
match = '''^upstream timed out (?P<n>\\d+)$'''
key = "upstream"
escalate = "never"

[[pattern.example]]
line = "upstream timed out 1"
"""


def journal_agent(tmp_path, journal: Journal) -> AgentProc:
    packs = tmp_path / "packs"
    write_pack(packs, "web", PACK)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nhost = "web-1"\nstate_dir = "{tmp_path / "state"}"\npacks = ["{packs}"]\n'
        f'[[source]]\njournal = {{ units = ["nginx.service"], directory = "{journal.folder}" }}\n'
        'packs = "*"\nstart = "beginning"\n[limits]\nsweep_interval = "100ms"\n'
    )
    return AgentProc(config)


def counted(tmp_path) -> dict[str, int]:
    """Lines counted per unit the incidents' fields name (the entries' own fields)."""
    db = tmp_path / "state" / "state.db"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            rows = conn.execute("SELECT fields, count FROM incidents").fetchall()
    except sqlite3.Error:
        return {}
    out: dict[str, int] = {}
    for fields, count in rows:
        unit = json.loads(fields).get("unit", "?")
        out[unit] = out.get(unit, 0) + count
    return out


@needs_journal
def test_entries_are_matched_with_their_unit_and_counted_once_through_a_kill(tmp_path):
    journal = Journal(tmp_path / "journal")
    journal.write(*(f"upstream timed out {n}" for n in range(3)))
    journal.write("upstream timed out 9", unit="postgresql.service")  # another unit: not read
    agent = journal_agent(tmp_path, journal).start()
    assert wait_for(lambda: counted(tmp_path) == {"nginx.service": 3}), (
        counted(tmp_path),
        agent.log(),
    )
    journal.write(*(f"upstream timed out {n}" for n in range(3, 5)))
    assert wait_for(lambda: counted(tmp_path) == {"nginx.service": 5}), agent.log()
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    journal.write("upstream timed out 5")
    agent.start()
    assert wait_for(lambda: counted(tmp_path) == {"nginx.service": 6}), agent.log()
    assert agent.stop() == 0
    agent.start()  # nothing new: nothing counted again
    journal.write("upstream timed out 6")
    assert wait_for(lambda: counted(tmp_path) == {"nginx.service": 7}), agent.log()
    assert agent.stop() == 0


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ('path = "/x"\njournal = { units = ["a"] }', "not both"),
        ('journal = { priority = "loud" }', "journal.priority"),
        ('journal = { directory = "relative" }', "must be an absolute path"),
        ('journal = { colour = "red" }', "unknown key"),
        ("", "is required (the files to follow), or journal instead"),
    ],
)
def test_a_bad_journal_source_is_an_error_naming_its_place(tmp_path, source, words):
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path}"\npacks = ["{tmp_path}"]\n[[source]]\n{source}\n'
        'packs = "*"\n'
    )
    with pytest.raises(ConfigErrors) as caught:
        load_config(config)
    assert words in str(caught.value) and "source[0]" in str(caught.value)
