"""Issue 20, items 1 and 2: a `[[source]] journal` read by a real agent through the real
journalctl, from real journal files; the entries' fields reach the keys, and what they
caused is committed with the cursor, so a kill and a restart count each entry once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigErrors
from agent.packs import load_pack
from tests.helpers import AgentProc, wait_for, write_pack
from tests.test_journal import Journal, needs_journal

SHIPPED = Path(__file__).resolve().parent.parent / "patterns"
PACK = """\
[[pattern]]
id = "upstream"
match = '''^upstream timed out (?P<n>\\d+)$'''
key = "upstream"
escalate = "never"

[[pattern.example]]
line = "upstream timed out 1"
"""


TRACEBACK = """\
[[pattern]]
id = "crash"
match = '''(?s)^Traceback \\(most recent call last\\):\\n.*\\n(?P<error>\\w+Error): (?P<what>[^\\n]*)$'''
key = "{error}"
escalate = "never"

[[pattern.example]]
line = "Traceback (most recent call last):"
matches = false
"""


def journal_agent(
    tmp_path,
    folder: Path,
    pack: str = PACK,
    more: str = "",
    metrics: bool = False,
    select: str = 'units = ["nginx.service"]',
) -> AgentProc:
    """An agent with one pack and one journal source on the journal in `folder`."""
    packs = tmp_path / "packs"
    write_pack(packs, "web", pack)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nhost = "web-1"\nstate_dir = "{tmp_path / "state"}"\npacks = ["{packs}"]\n'
        f'[[source]]\njournal = {{ {select}, directory = "{folder}" }}\n'
        f'packs = "*"\nstart = "beginning"\n{more}[limits]\nsweep_interval = "100ms"\n'
        + ('[metrics]\nlisten = "127.0.0.1:0"\n' if metrics else "")
    )
    return AgentProc(config)


def query(tmp_path, sql: str) -> list[tuple]:
    """Rows of the agent's state database, read while it runs ([] until it exists)."""
    db = tmp_path / "state" / "state.db"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.Error:
        return []


def samples(tmp_path) -> list[tuple[str, str, list[str]]]:
    """Each incident's key, PID and sample lines."""
    rows = query(tmp_path, "SELECT key, fields, samples FROM incidents ORDER BY key")
    return [(k, json.loads(f).get("pid", "?"), json.loads(s)) for k, f, s in rows]


def held(tmp_path) -> str:
    rows = query(tmp_path, "SELECT held FROM journal_cursors")
    return rows[0][0] if rows else ""


@needs_journal
def test_a_traceback_logged_line_by_line_is_joined_per_process_and_held_through_a_kill(
    tmp_path,
):
    journal = Journal(tmp_path / "journal")
    more = "multiline = { continuation = '^(?:\\s|\\w+Error:)' }\nflush_after = \"2s\"\n"
    agent = journal_agent(tmp_path, journal.folder, TRACEBACK, more).start()
    head = "Traceback (most recent call last):"
    journal.write(head, _PID="10")
    journal.write(head, _PID="20")
    journal.write('  File "app.py", line 1, in main', _PID="10")
    journal.write('  File "db.py", line 9, in connect', _PID="20")
    # both events are held, one per process, and that is committed before the kill
    assert wait_for(lambda: held(tmp_path).count("nginx.service[") == 2), agent.log()
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    journal.write("ValueError: bad input", _PID="10")
    journal.write("ConnectionError: refused", _PID="20")
    agent.start()
    assert wait_for(lambda: len(samples(tmp_path)) == 2), (samples(tmp_path), agent.log())
    assert samples(tmp_path) == [
        ("ConnectionError", "20", [f'{head}\n  File "db.py", line 9, in connect\nConnectionError: refused']),
        ("ValueError", "10", [f'{head}\n  File "app.py", line 1, in main\nValueError: bad input']),
    ]  # fmt: skip
    assert wait_for(lambda: held(tmp_path) == "[]"), agent.log()  # flushed when quiet
    assert agent.stop() == 0
    agent.start()  # nothing new: nothing matched again
    journal.write(head, "  x", "KeyError: again", _PID="10")
    assert wait_for(lambda: len(samples(tmp_path)) == 3), (samples(tmp_path), agent.log())
    assert [count for count in counted(tmp_path).values()] == [3]
    assert agent.stop() == 0


def counted(tmp_path) -> dict[str, int]:
    """Lines counted per unit the incidents' fields name (the entries' own fields)."""
    out: dict[str, int] = {}
    for fields, count in query(tmp_path, "SELECT fields, count FROM incidents"):
        unit = json.loads(fields).get("unit", "?")
        out[unit] = out.get(unit, 0) + count
    return out


@needs_journal
def test_entries_are_matched_with_their_unit_and_counted_once_through_a_kill(tmp_path):
    journal = Journal(tmp_path / "journal")
    journal.write(*(f"upstream timed out {n}" for n in range(3)))
    journal.write("upstream timed out 9", unit="postgresql.service")  # another unit: not read
    agent = journal_agent(tmp_path, journal.folder).start()
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


@needs_journal
def test_shipped_packs_see_only_the_entries_of_the_units_they_name(tmp_path):
    """The nginx and PostgreSQL packs on a host that logs to the journal: each matches its
    own units' entries; the same text logged by another unit triggers nothing of theirs
    (journald sets the unit from the process's cgroup; the program cannot)."""
    journal = Journal(tmp_path / "journal")
    packs = tmp_path / "packs"
    for name in ("nginx", "postgresql"):
        shutil.copytree(SHIPPED / name, packs / name)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nhost = "web-1"\nstate_dir = "{tmp_path / "state"}"\npacks = ["{packs}"]\n'
        f'[[source]]\njournal = {{ directory = "{journal.folder}" }}\n'
        'packs = ["nginx", "postgresql"]\nstart = "beginning"\n'
        '[limits]\nsweep_interval = "100ms"\n'
    )
    nginx = (
        "2024/03/01 12:00:02 [error] 2471#2471: *12 upstream timed out (110: Connection timed"
        " out) while reading response header from upstream, client: 10.1.2.3, server: shop,"
        ' request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8080/"'
    )
    postgres = "2024-03-01 12:00:01.001 UTC [5150] FATAL:  sorry, too many clients already"
    journal.write(nginx, unit="nginx.service")
    journal.write(nginx, unit="evil.service")
    journal.write(postgres, unit="postgresql@15-main.service")
    journal.write(postgres, unit="nginx.service")
    journal.write(postgres, _SYSTEMD_UNIT="")  # no unit at all (a kernel or remote entry)
    last = subprocess.run(
        ["journalctl", f"--directory={journal.folder}", "-o", "json", "-n", "1"],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    cursor = json.loads(last.stdout)["__CURSOR"]
    agent = AgentProc(config).start()
    assert wait_for(lambda: query(tmp_path, "SELECT cursor FROM journal_cursors") == [(cursor,)]), (
        agent.log()
    )
    rows = query(tmp_path, "SELECT pack, pattern, fields, count FROM incidents ORDER BY pack")
    assert [(p, i, json.loads(f)["unit"], n) for p, i, f, n in rows] == [
        ("nginx", "upstream-timeout", "nginx.service", 1),
        ("postgresql", "too-many-clients", "postgresql@15-main.service", 1),
    ]
    assert agent.stop() == 0
    stats = query(tmp_path, "SELECT pack, pattern, matches FROM pattern_stats WHERE matches > 0")
    assert sorted(stats) == [
        ("nginx", "upstream-timeout", 1),
        ("postgresql", "too-many-clients", 1),
    ]


def test_a_packs_units_are_unit_names_or_globs(tmp_path):
    for units, words in [
        ('["nginx.service; rm -rf /"]', "is not a unit name or glob"),
        ('"nginx.service"', "must be a list of strings"),
        (str([f"u{n}.service" for n in range(65)]).replace("'", '"'), "at most 64"),
    ]:
        pack = tmp_path / "packs" / "web" / "pack.toml"
        pack.parent.mkdir(parents=True, exist_ok=True)
        pack.write_text(f'[pack]\nname = "web"\nowner = "t"\nunits = {units}\n\n' + PACK)
        with pytest.raises(ConfigErrors) as caught:
            load_pack(pack.parent, trust=False)
        assert f"{pack}" in str(caught.value) and ": pack.units: " in str(caught.value)
        assert words in str(caught.value)


def journalctl_of(pid: int) -> int | None:
    """The PID of the agent's journalctl --follow (a child of the agent), if running."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == pid and b"journalctl" in cmdline and b"--follow" in cmdline:
            return int(entry.name)
    return None


@needs_journal
def test_a_journalctl_that_dies_is_restarted_and_said_in_metrics_and_status(tmp_path):
    from tests.test_service import scrape

    journal = Journal(tmp_path / "journal")
    journal.write(*(f"upstream timed out {n}" for n in range(3)))
    agent = journal_agent(tmp_path, journal.folder, more="", metrics=True).start()
    line = next(line for line in agent.lines if "metrics on http://" in line)
    url = line.split("metrics on ", 1)[1]
    source = (("source", f"journal:nginx.service in {journal.folder}"),)
    assert wait_for(lambda: scrape(url).get(("logmend_journal_entries_total", source)) == 3)
    assert agent.proc is not None
    first = journalctl_of(agent.proc.pid)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: scrape(url).get(("logmend_journal_restarts_total", source)) == 1)
    assert wait_for(lambda: journalctl_of(agent.proc.pid) not in (None, first), timeout=20)
    journal.write("upstream timed out 3")
    assert wait_for(lambda: counted(tmp_path) == {"nginx.service": 4}), agent.log()
    metrics = scrape(url)
    assert metrics[("logmend_journal_running", source)] == 1
    assert metrics[("logmend_journal_entries_total", source)] == 4
    assert metrics[("logmend_journal_read_bytes_total", source)] > 4 * 100  # JSON per entry
    assert metrics[("logmend_journal_lost_entries_total", source)] == 0
    assert agent.saw("journalctl exited with -9")
    assert agent.stop() == 0
    shown = subprocess.run(
        [sys.executable, "-m", "agent", "status", "-c", str(tmp_path / "agent.toml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    said = next(s for s in shown.stdout.splitlines() if s.startswith("  journal:nginx.service"))
    assert "running; 4 entries" in said and "restarted 1 time(s), last: journalctl exited" in said


@needs_journal
def test_rotation_a_new_boot_and_vacuuming_with_a_real_agent(tmp_path):
    """journald rotates while the agent reads (a new file beside the archived one); the
    host reboots while the agent is stopped (SIGTERM; a new boot id, a new file); then
    the oldest files are vacuumed while it is stopped again, unread entries with them:
    every entry still there is counted once, and what was lost is said."""
    journal = Journal(tmp_path / "journal")
    journal.write(*(f"upstream timed out {n}" for n in range(3)))
    agent = journal_agent(tmp_path, journal.folder).start()
    assert wait_for(lambda: counted(tmp_path) == {"nginx.service": 3}), agent.log()
    archived = journal.folder / "test@0001.journal"
    (journal.folder / "test.journal").rename(archived)  # rotated while followed
    journal.write(*(f"upstream timed out {n}" for n in range(3, 5)), file="second.journal")
    assert wait_for(lambda: counted(tmp_path) == {"nginx.service": 5}), agent.log()
    assert agent.stop() == 0  # SIGTERM
    reboot = "fedcba9876543210fedcba9876543210"
    journal.write("upstream timed out 5", "upstream timed out 6", file="boot2.journal",
                  _BOOT_ID=reboot)  # fmt: skip
    agent.start()
    assert wait_for(lambda: counted(tmp_path) == {"nginx.service": 7}), agent.log()
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    journal.write("upstream timed out 7", file="boot2.journal", _BOOT_ID=reboot)  # unread
    journal.write("upstream timed out 8", file="boot3.journal", _BOOT_ID=reboot)
    for gone in (archived, journal.folder / "second.journal", journal.folder / "boot2.journal"):
        gone.unlink()  # vacuumed: the cursor's file and an unread entry go
    agent.start()
    assert wait_for(lambda: counted(tmp_path) == {"nginx.service": 8}), agent.log()
    assert agent.saw("its cursor is no longer in the journal")
    assert agent.stop() == 0
    shown = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--json", "-c", str(tmp_path / "agent.toml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    (status,) = [v for k, v in json.loads(shown.stdout)["journals"].items() if k != "at"]
    assert status["resumed_oldest"] == 1 and status["entries"] == 1


OPTIONAL_UNIT = """\
[[pattern]]
id = "crash"
match = '''^crash(?: in (?P<unit>[a-z]+\\.service))?$'''
key = "k"
escalate = "never"

[[pattern.example]]
line = "crash in a.service"
"""


@needs_journal
def test_the_journal_never_fills_a_group_of_the_pattern_that_did_not_take_part(tmp_path):
    """A field the pattern captures is the pattern's alone: its optional group that did
    not match is not filled with the entry's own unit (which would then reach what the
    pattern's constraint was written for); fields it has no group for still come."""
    journal = Journal(tmp_path / "journal")
    journal.write("crash")
    agent = journal_agent(tmp_path, journal.folder, OPTIONAL_UNIT).start()
    assert wait_for(lambda: len(query(tmp_path, "SELECT fields FROM incidents")) == 1), agent.log()
    ((fields,),) = query(tmp_path, "SELECT fields FROM incidents")
    assert "unit" not in json.loads(fields) and json.loads(fields)["pid"] == "4242"
    assert agent.stop() == 0
