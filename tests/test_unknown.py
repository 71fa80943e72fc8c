"""Issue 19, items 1 and 2 on the host: a real agent groups the error lines no pattern
matched into templates, per owner, redacted, bounded, and keeps them across a restart;
matched lines and lines that look like no error are left alone."""

from __future__ import annotations

import sqlite3

from tests.helpers import agent_with_pack, append, status, wait_for

PACK = """\
[[pattern]]
id = "stuck"
match = '''^ERROR queue stuck (?P<q>\\w+)$'''
key = "{q}"
escalate = "never"

[[pattern.example]]
line = "ERROR queue stuck q1"
"""


def unknown(config) -> list[dict]:
    return status(config)["unknown"]


def read_to_end(agent, log) -> bool:
    """The agent has committed a checkpoint at the log's end (it read every line)."""
    db = agent.config.parent / "state" / "state.db"

    def done() -> bool:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                row = conn.execute("SELECT max(offset) FROM checkpoints").fetchone()
        except sqlite3.Error:
            return False
        return bool(row and row[0] == log.stat().st_size)

    return bool(wait_for(done))


def discovering(tmp_path, extra: str = ""):
    """An agent whose source groups its unknown errors (`discover = true`)."""
    agent, log = agent_with_pack(tmp_path, PACK)
    text = agent.config.read_text()
    agent.config.write_text(text.replace('packs = "*"\n', f'packs = "*"\ndiscover = true\n{extra}'))
    return agent, log


def test_unmatched_error_lines_become_templates_that_survive_a_restart(tmp_path):
    agent, log = discovering(tmp_path)
    agent.start()
    append(
        log,
        *(f"ERROR worker {n} crashed: exit {n % 3} password=hunter{n}" for n in range(20)),
        *(f"ERROR queue stuck q{n}" for n in range(5)),  # matched: not unknown
        *(f"INFO request {n} served" for n in range(50)),  # no error word: left alone
        "FATAL cannot open /var/lib/app/db.sqlite: permission denied",
    )
    assert read_to_end(agent, log), agent.log()
    assert agent.stop() == 0  # the templates are saved on the way out
    found = {row["template"]: row for row in unknown(agent.config)}
    assert set(found) == {
        "ERROR worker <NUM> crashed: exit <NUM> <*>",
        "FATAL cannot open <PATH>: permission denied",
    }, found
    worker = found["ERROR worker <NUM> crashed: exit <NUM> <*>"]
    assert worker["count"] == 20 and worker["owner"] == "team-test"  # the pack's owner
    assert "hunter" not in str(found)  # the samples are redacted
    assert all("password=[REDACTED]" in sample for sample in worker["samples"])
    agent.start()
    append(
        log,
        "ERROR worker 99 crashed: exit 1 password=x",
        "ERROR worker 98 crashed: exit 2 password=y",
    )
    assert agent.stop() == 0
    again = {row["template"]: row["count"] for row in unknown(agent.config)}
    assert again["ERROR worker <NUM> crashed: exit <NUM> <*>"] == 22


def test_a_source_may_name_its_owner_and_words_or_opt_out(tmp_path):
    agent, log = discovering(tmp_path, 'owner = "team-web"\nerror_words = ["oops"]\n')
    text = agent.config.read_text()
    agent.start()
    append(log, "ERROR not an error word here", "oops the cache 7 broke", "oops the cache 8 broke",
           "OOPS in capitals")  # fmt: skip
    assert read_to_end(agent, log), agent.log()
    assert agent.stop() == 0
    assert [(r["template"], r["count"], r["owner"]) for r in unknown(agent.config)] == [
        ("oops the cache <NUM> broke", 2, "team-web"),
        ("OOPS in capitals", 1, "team-web"),  # the words are matched without regard to case
    ]
    agent.config.write_text(text.replace("discover = true", "discover = false"))
    agent.start()
    append(log, "oops again 9", "ERROR something new 10")
    assert read_to_end(agent, log), agent.log()
    assert agent.stop() == 0
    assert [r["count"] for r in unknown(agent.config)] == [2, 1]  # nothing more was mined


def test_off_by_default(tmp_path):
    agent, log = agent_with_pack(tmp_path, PACK)
    agent.start()
    append(log, "ERROR worker 1 crashed", "FATAL cannot open /x/y")
    assert read_to_end(agent, log), agent.log()
    assert agent.stop() == 0
    assert unknown(agent.config) == []


def test_a_flood_of_distinct_errors_keeps_the_templates_bounded(tmp_path):
    agent, log = discovering(tmp_path)
    agent.start()
    append(log, *(f"ERROR {'x' * (n % 40 + 1)} {chr(97 + n % 26)}{n}zz fails" for n in range(3000)))
    assert read_to_end(agent, log), agent.log()
    assert agent.stop() == 0
    rows = unknown(agent.config)
    assert 0 < len(rows) <= 1000
    assert sum(r["count"] for r in rows) <= 3000
