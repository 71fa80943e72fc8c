"""Issue 19, items 1 to 3 on the host: a real agent groups the error lines no pattern
matched into templates, per owner, redacted, bounded, and keeps them across a restart;
matched lines and lines that look like no error are left alone."""

from __future__ import annotations

import signal
import sqlite3

import httpx

from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore
from tests.helpers import agent_with_pack, append, make_receiver, status, wait_for

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
    assert read_to_end(agent, log), agent.log()
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


def test_on_by_default_and_off_with_discover_false(tmp_path):
    agent, log = agent_with_pack(tmp_path, PACK)
    agent.start()
    append(log, "ERROR worker 1 crashed", "FATAL cannot open /x/y")
    assert read_to_end(agent, log), agent.log()
    assert agent.stop() == 0
    assert {r["template"] for r in unknown(agent.config)} == {
        "ERROR worker <NUM> crashed", "FATAL cannot open <PATH>",
    }  # fmt: skip
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    agent, log = agent_with_pack(quiet, PACK)
    text = agent.config.read_text()
    agent.config.write_text(text.replace('packs = "*"\n', 'packs = "*"\ndiscover = false\n'))
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


def test_hosts_report_to_the_team_across_restarts_and_a_shipped_pattern_ends_it(tmp_path):
    """Item 3 end to end: two real agents, the real receiver; the drafted pattern shipped
    (the pack changed, SIGHUP) makes the template leave the team's list."""
    receiver = make_receiver(tmp_path).start()
    store = ReceiverStore(receiver.db)
    web = store.create_token(Scope.READ, "web", ("team-web",))
    other = store.create_token(Scope.READ, "other", ("team-other",))
    store.close()

    def listing(token: str) -> list[dict]:
        answer = httpx.get(f"{receiver.url}/v1/unknown",
                           headers={"Authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
        assert answer.status_code == 200, answer.text
        return list(answer.json()["unknown"])

    def counts() -> list[tuple[str, int, int]]:
        return [(u["template"], u["count"], u["hosts"]) for u in listing(web)]

    agents = []
    try:
        for host in ("web-1", "web-2"):
            root = tmp_path / host
            root.mkdir()
            agent, log = agent_with_pack(
                root, PACK, receiver=receiver, escalation='stats_interval = "200ms"\n'
            )
            text = agent.config.read_text().replace('host = "test-host"', f'host = "{host}"')
            agent.config.write_text(
                text.replace('packs = "*"\n', 'packs = "*"\ndiscover = true\nowner = "team-web"\n')
            )
            agents.append((agent.start(), log))
        for n, (_, log) in enumerate(agents):
            append(log, *(f"ERROR worker {w} crashed: exit {n}" for w in range(3 + n)))
        template = "ERROR worker <NUM> crashed: exit <NUM>"
        assert wait_for(lambda: counts() == [(template, 7, 2)]), counts()
        assert listing(other) == []  # another team sees none of it

        first, log = agents[0]
        assert first.stop() == 0
        first.start()  # a restart: the host's count goes on, nothing is counted twice
        append(log, "ERROR worker 9 crashed: exit 0")
        assert wait_for(lambda: counts() == [(template, 8, 2)]), counts()

        ref = listing(web)[0]["ref"]
        draft = httpx.get(f"{receiver.url}/v1/unknown/{ref}",
                          headers={"Authorization": f"Bearer {web}"}, timeout=10).json()["draft"]  # fmt: skip
        for n, (agent, _) in enumerate(agents):  # the pattern is shipped, host by host
            pack = agent.config.parent / "packs" / "ops" / "pack.toml"
            pack.write_text(pack.read_text() + "\n" + draft)
            agent.proc.send_signal(signal.SIGHUP)
            want = [(template, 4, 1)] if n == 0 else []  # web-2's 4 lines, then none
            assert wait_for(lambda want=want: counts() == want, 30), (counts(), agent.log())
        assert all(a.saw("is now explained by ops/") for a, _ in agents)
        append(agents[1][1], "ERROR worker 5 crashed: exit 1")  # now matched: not unknown
        assert read_to_end(agents[1][0], agents[1][1])
        assert counts() == []
    finally:
        for agent, _ in agents:
            agent.stop()
        receiver.stop()
