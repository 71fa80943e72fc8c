"""Twenty agents, ten thousand escalations, one receiver: none lost, none duplicated."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import AgentProc, Receiver, peek, wait_for, write_config, write_pack

pytestmark = pytest.mark.usefixtures("engine")  # each test on SQLite and on PostgreSQL

AGENTS = 20
EACH = 500

PACK = """\
[[pattern]]
id = "boom"
match = '''boom (?P<n>\\d+)'''
key = "{n}"

[[pattern.example]]
line = "boom 1"
"""


def stored(receiver: Receiver) -> tuple[int, int]:
    [row] = peek(receiver.db, "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM escalations")
    return int(row["n"]), int(row["ids"])


def test_twenty_agents_ten_thousand_escalations_none_lost_none_duplicated(tmp_path, receiver):
    packs = tmp_path / "packs"
    write_pack(packs, "ops", PACK)
    agents: list[tuple[AgentProc, Path]] = []
    for number in range(AGENTS):
        home = tmp_path / f"host{number}"
        home.mkdir()
        log = home / "app.log"
        log.touch()
        config = write_config(
            home, [(str(log), None)], packs, receiver, escalation="batch_size = 25\n"
        )
        config.write_text(config.read_text().replace('"test-host"', f'"host-{number}"'))
        agents.append((AgentProc(config), log))
    for agent, _ in agents:
        agent.start()
    started = time.monotonic()
    for number, (_, log) in enumerate(agents):
        log.write_text("".join(f"boom {number * EACH + n}\n" for n in range(EACH)))
    total = AGENTS * EACH
    assert wait_for(lambda: stored(receiver)[0] >= total, 300, every=0.2), stored(receiver)
    elapsed = time.monotonic() - started
    for agent, _ in agents:
        assert agent.stop() == 0
    rows, ids = stored(receiver)
    assert rows == ids == total
    hosts = peek(receiver.db, "SELECT count(DISTINCT host) AS n FROM escalations")[0]["n"]
    assert hosts == AGENTS
    taken = sum(agent.saw("escalated ") for agent, _ in agents)
    refused = sum(agent.saw("escalation delivery failed") for agent, _ in agents)
    throttled = sum(agent.saw("HTTP 429") for agent, _ in agents)
    print(
        f"\n{AGENTS} agents: {total} escalations stored once each in {elapsed:.1f}s;"
        f" {taken + refused} requests ({(taken + refused) / elapsed:.0f}/s): {taken} taken,"
        f" {throttled} answered 429 (one token shared by all), {refused - throttled} other;"
        f" {total / elapsed:.0f} events/s"
    )
