"""When fixes run, and what makes them resolve: with the real agent, receiver and scripts."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from tests.helpers import (
    RECORD_SCRIPT,
    AgentProc,
    Receiver,
    agent_with_pack,
    append,
    cli,
    status,
    wait_for,
    wait_len,
    write_config,
    write_pack,
)

# waits for OUT/go, then exits 1: the test decides when a fix ends
GATE_SCRIPT = """\
#!/bin/sh
echo "$2" >> "$1/runs"
while [ ! -e "$1/go" ]; do sleep 0.02; done
exit 1
"""

# notes how many fixes run at once, of its pack ($1) and of all packs ($2)
OVERLAP_SCRIPT = """\
#!/bin/sh
touch "$1/running.$$" "$2/running.$$"
ls "$1" | grep -c '^running' >> "$1/overlap"
ls "$2" | grep -c '^running' >> "$2/overlap"
sleep 0.3
rm "$1/running.$$" "$2/running.$$"
echo "$3" >> "$1/done"
"""

# The fixes run as root: they write into pytest's tmp_path (root's, mode 0700).
PACK = """\
user = "root"

[[pattern]]
id = "flood"
match = '''^worker crashed: (?P<name>\\w+)'''
key = "{name}"

[pattern.fields]
name = { type = "word" }

[pattern.remedy]
run = ["scripts/gate.sh", "OUT", "{name}"]
attempts = 1
cooldown = "1s"

[[pattern.example]]
line = "worker crashed: w1"

[[pattern]]
id = "flappy"
match = '''^cache evicted (?P<node>\\w+)'''
key = "{node}"

[pattern.remedy]
run = ["scripts/record.sh", "OUT/flappy"]
attempts = 1
cooldown = "0s"
budget = { runs = 2, within = "1h" }

[[pattern.example]]
line = "cache evicted n1"

[[pattern]]
id = "sticky"
match = '''^queue stuck (?P<q>\\w+)'''
key = "{q}"

[pattern.remedy]
run = ["scripts/record.sh", "OUT/sticky"]
attempts = 1
cooldown = "1h"

[[pattern.example]]
line = "queue stuck q1"

[[pattern]]
id = "unverified"
match = '''^index corrupt (?P<ix>\\w+)'''
key = "{ix}"

[pattern.remedy]
run = ["scripts/record.sh", "OUT/unverified"]
verify = ["scripts/fail.sh", "OUT/verify"]
attempts = 2
backoff = { initial = "10ms", max = "20ms" }

[[pattern.example]]
line = "index corrupt ix1"

[[pattern]]
id = "db-down"
match = '''^database (?P<db>\\w+) is down'''
key = "{db}"

[pattern.remedy]
run = ["scripts/record.sh", "OUT/db"]
attempts = 1
recovery = { match = '''^database \\w+ is back$''', within = "20s" }

[[pattern.example]]
line = "database main is down"

[[pattern]]
id = "cache-down"
match = '''^cache (?P<c>\\w+) is down'''
key = "{c}"

[pattern.remedy]
run = ["scripts/record.sh", "OUT/cache"]
attempts = 1
recovery = { match = '''^cache \\w+ is back$''', within = "300ms" }

[[pattern.example]]
line = "cache c1 is down"

[[pattern]]
id = "slow-retry"
match = '''^disk slow (?P<d>\\w+)'''
key = "{d}"

[pattern.remedy]
run = ["scripts/fail.sh", "OUT/slow"]
attempts = 2
backoff = { initial = "3s", max = "3s" }

[[pattern.example]]
line = "disk slow sda"

[[pattern]]
id = "quick"
match = '''^pool exhausted (?P<p>\\w+)'''
key = "{p}"

[pattern.remedy]
run = ["scripts/record.sh", "OUT/quick"]
attempts = 1

[[pattern.example]]
line = "pool exhausted p1"

[[pattern]]
id = "threshold"
match = '''^slow query (?P<table>\\w+)'''
key = "{table}"
when = { count = 3, within = "1m" }
escalate = "always"

[pattern.remedy]
run = ["scripts/record.sh", "OUT/threshold"]
attempts = 1

[[pattern.example]]
line = "slow query users"
"""

SERIAL_PACK = """\
user = "root"

[[pattern]]
id = "JOB"
match = '''^JOB (?P<k>\\w+)'''
key = "{k}"

[pattern.fields]
k = { type = "word" }

[pattern.remedy]
run = ["scripts/overlap.sh", "OUT", "ALL", "{k}"]
attempts = 1

[[pattern.example]]
line = "JOB a"
"""


def make_agent(
    tmp: Path, receiver: Receiver | None, extra: str = ""
) -> tuple[AgentProc, Path, Path]:
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    scripts = {
        "gate.sh": GATE_SCRIPT,
        "record.sh": RECORD_SCRIPT.format(exit_code=0),
        "fail.sh": RECORD_SCRIPT.format(exit_code=1),
    }
    agent, log = agent_with_pack(
        tmp,
        PACK.replace("OUT", str(out)),
        scripts,
        receiver,
        extra=extra,
        agent_extra='allow_root = ["ops"]\n',
    )
    return agent, log, out


def runs(path: Path) -> int:
    return len(list(path.parent.glob(path.name + ".*.argv")))


def db_rows(tmp: Path, sql: str, *args: object) -> list[sqlite3.Row]:
    with sqlite3.connect(f"file:{tmp / 'state' / 'state.db'}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        return db.execute(sql, args).fetchall()


def test_a_flood_runs_the_fix_once_per_cooldown_and_escalates_once_with_the_count(
    tmp_path, receiver
):
    agent, log, out = make_agent(tmp_path, receiver)
    agent.start()
    lines = 100_000
    with log.open("a") as handle:
        handle.write("worker crashed: w1\n" * lines)
    counted = wait_for(
        lambda: db_rows(tmp_path, "SELECT count FROM incidents WHERE pattern='flood'"), 60
    )
    assert wait_for(
        lambda: (
            db_rows(tmp_path, "SELECT count FROM incidents WHERE pattern='flood'")[0][0] == lines
        ),
        60,
    ), (counted, agent.log())
    (out / "go").touch()  # the fix may end now: it fails, and escalates
    [event] = wait_len(lambda: receiver.escalations(pattern="flood"), 1)
    assert event["status"] == "remedy-failed" and event["count"] == lines
    assert (out / "runs").read_text() == "w1\n"
    # matches during the cooldown are counted into the incident, never start a fix
    until = db_rows(tmp_path, "SELECT until FROM cooldowns")[0][0]
    assert wait_for(lambda: time.time() > until + 0.2, 5)
    append(log, "worker crashed: w1")
    assert wait_len(lambda: receiver.escalations(pattern="flood"), 2)
    assert (out / "runs").read_text() == "w1\nw1\n"
    assert len(receiver.escalations(pattern="flood")) == 2
    assert agent.stop() == 0


def test_budget_stops_a_flapping_fix_and_escalates_flapping_even_after_a_restart(
    tmp_path, receiver
):
    agent, log, out = make_agent(tmp_path, receiver)
    agent.start()
    for expected in (1, 2):
        append(log, "cache evicted n1")
        assert wait_for(lambda n=expected: agent.saw("resolved ops/flappy") == n), agent.log()
    append(log, "cache evicted n1")
    [event] = wait_len(lambda: receiver.escalations(pattern="flappy"), 1)
    assert event["status"] == "flapping" and event["outcome"] == "flapping"
    assert runs(out / "flappy") == 2
    assert "OVER BUDGET" in cli("status", "-c", str(agent.config))
    assert agent.stop() == 0
    agent.start()
    append(log, "cache evicted n1", "cache evicted n2")
    assert wait_for(lambda: runs(out / "flappy") == 3)  # another key has its own budget
    flapping = db_rows(tmp_path, "SELECT count FROM incidents WHERE outcome='flapping'")
    assert wait_for(
        lambda: db_rows(tmp_path, "SELECT count FROM incidents WHERE outcome='flapping'")[0][0] == 2
    ), flapping
    assert runs(out / "flappy") == 3 and len(receiver.escalations(pattern="flappy")) == 1
    assert agent.stop() == 0


def test_cooldown_survives_a_restart(tmp_path):
    agent, log, out = make_agent(tmp_path, None)
    agent.start()
    append(log, "queue stuck q1")
    assert wait_for(lambda: agent.saw("resolved ops/sticky")), agent.log()
    assert agent.stop() == 0
    agent.start()
    append(log, "queue stuck q1", "queue stuck q2")
    assert wait_for(lambda: runs(out / "sticky") == 2)  # q2 is fixed, q1 cools down
    cooling = status(agent.config)["cooldowns"]
    assert [(c["key"], c["count"]) for c in cooling if c["pattern"] == "sticky"] == [
        ("q1", 2),
        ("q2", 1),
    ]
    assert agent.stop() == 0
    assert runs(out / "sticky") == 2


def test_a_verify_that_fails_escalates_with_every_run(tmp_path, receiver):
    agent, log, out = make_agent(tmp_path, receiver)
    agent.start()
    append(log, "index corrupt ix9")
    [event] = wait_len(lambda: receiver.escalations(pattern="unverified"), 1)
    assert event["status"] == "remedy-failed"
    assert [(a["phase"], a["exit_code"]) for a in event["attempts"]] == [
        ("fix", 0),
        ("verify", 1),
        ("fix", 0),
        ("verify", 1),
    ]
    assert runs(out / "unverified") == 2 and runs(out / "verify") == 2
    assert agent.stop() == 0


def test_a_recovery_line_within_the_deadline_resolves_and_its_absence_escalates(tmp_path, receiver):
    agent, log, out = make_agent(tmp_path, receiver)
    agent.start()
    append(log, "database main is down", "cache c1 is down")
    assert wait_for(lambda: runs(out / "db") == 1)
    assert wait_for(
        lambda: (
            [
                r[0]
                for r in db_rows(tmp_path, "SELECT status FROM incidents WHERE pattern='db-down'")
            ]
            == ["verifying"]
        )
    )
    [cache] = wait_len(lambda: receiver.escalations(pattern="cache-down"), 1)
    assert [a["phase"] for a in cache["attempts"]] == ["fix", "recovery"]
    assert cache["attempts"][1]["timed_out"]
    append(log, "database main is back soon", "database main is back")
    assert wait_for(lambda: agent.saw("resolved ops/db-down")), agent.log()
    [row] = db_rows(tmp_path, "SELECT status, attempts FROM incidents WHERE pattern='db-down'")
    assert row["status"] == "resolved"
    recovery = json.loads(row["attempts"])[1]
    assert recovery["phase"] == "recovery" and recovery["stdout"] == "database main is back"
    assert receiver.escalations(pattern="db-down") == []
    assert agent.stop() == 0


def test_waiting_to_retry_does_not_hold_up_another_fix(tmp_path):
    agent, log, out = make_agent(tmp_path, None, "max_concurrent_fixes = 1\n")
    agent.start()
    append(log, "disk slow sda")
    assert wait_for(lambda: runs(out / "slow") == 1)
    append(log, "pool exhausted p1")
    assert wait_for(lambda: runs(out / "quick") == 1)
    assert runs(out / "slow") == 1, "the quick fix waited for the slow one's backoff"
    assert wait_for(lambda: runs(out / "slow") == 2, 20)
    assert agent.stop() == 0


def test_per_pack_and_global_limits_bound_fixes_running_at_once(tmp_path):
    out = tmp_path / "out"
    packs = tmp_path / "packs"
    every = out / "all"
    every.mkdir(parents=True)
    for name in ("serial", "wide"):
        (out / name).mkdir()
        body = SERIAL_PACK.replace("OUT", str(out / name)).replace("ALL", str(every))
        pack = write_pack(packs, name, body.replace("JOB", name), {"overlap.sh": OVERLAP_SCRIPT})
        if name == "serial":
            text = (pack / "pack.toml").read_text()
            (pack / "pack.toml").write_text(
                text.replace("\n\n", "\nmax_concurrent_fixes = 1\n\n", 1)
            )
    logs = tmp_path / "logs"
    logs.mkdir()
    extra = "max_concurrent_fixes = 3\n"
    config = write_config(
        tmp_path,
        [(f"{logs}/*.log", None)],
        packs,
        None,
        extra,
        agent_extra='allow_root = ["serial", "wide"]\n',
    )
    agent = AgentProc(config).start()
    keys = [f"k{n}" for n in range(5)]
    append(logs / "app.log", *(f"{name} {k}" for name in ("serial", "wide") for k in keys))

    def done(name: str) -> bool:
        path = out / name / "done"
        return path.exists() and sorted(path.read_text().split()) == keys

    assert wait_for(lambda: done("serial") and done("wide"), 30), agent.log()

    def most(folder: Path) -> int:
        return max(int(n) for n in (folder / "overlap").read_text().split())

    assert most(out / "serial") == 1
    assert most(every) <= 3
    assert agent.stop() == 0


def test_an_incident_waits_for_its_threshold_then_travels_with_its_fingerprint(tmp_path, receiver):
    agent, log, out = make_agent(tmp_path, receiver)
    agent.start()
    append(log, "slow query users")
    [waiting] = wait_len(
        lambda: [i for i in status(agent.config)["open"] if i["pattern"] == "threshold"], 1
    )
    assert waiting["status"] == "waiting" and waiting["count"] == 1
    append(log, "slow query users", "slow query users")
    [event] = wait_len(lambda: receiver.escalations(pattern="threshold"), 1)
    assert event["status"] == "always" and event["outcome"] == "resolved"
    assert event["id"] == waiting["id"] and event["fingerprint"] == waiting["fingerprint"]
    assert event["count"] == 3 and runs(out / "threshold") == 1
    assert agent.stop() == 0


def test_dry_run_logs_the_fix_runs_nothing_and_leaves_the_state_alone(tmp_path):
    agent, log, out = make_agent(tmp_path, None)
    agent.start()
    append(log, "queue stuck q1")
    assert wait_for(lambda: agent.saw("resolved ops/sticky"))
    assert agent.stop() == 0
    before = [tuple(r) for r in db_rows(tmp_path, "SELECT offset FROM checkpoints")]
    agent.start("--dry-run")
    append(log, "queue stuck q2")
    assert wait_for(lambda: agent.saw("dry run: would run")), agent.log()
    [line] = [line for line in agent.lines if "dry run: would run" in line]
    assert str(out / "sticky") in line and "record.sh" in line
    assert agent.stop() == 0
    assert runs(out / "sticky") == 1
    assert [tuple(r) for r in db_rows(tmp_path, "SELECT offset FROM checkpoints")] == before
    assert [r[0] for r in db_rows(tmp_path, "SELECT key FROM incidents")] == ["q1"]


def test_a_dry_run_claims_no_recovery_line_it_did_not_see(tmp_path):
    """Issue 17: a dry run used to log the recovery line as seen (`-> exit 0`)."""
    agent, log, _ = make_agent(tmp_path, None)
    agent.start("--dry-run")
    append(log, "database main is down")
    assert wait_for(lambda: agent.saw("recovery ops/db-down")), agent.log()
    [line] = [line for line in agent.lines if "recovery ops/db-down" in line]
    assert line.endswith("-> not awaited: a dry run runs no fix, so no recovery line is due")
    assert "line seen" not in agent.log() and "exit 0" not in line
    assert agent.stop() == 0


def test_a_recovery_line_seen_is_logged_as_the_line_it_was(tmp_path):
    agent, log, _ = make_agent(tmp_path, None)
    agent.start()
    append(log, "database main is down")
    assert wait_for(lambda: agent.saw("dry run") == 0 and agent.saw("fix ops/db-down"))
    append(log, "database main is back")
    assert wait_for(lambda: agent.saw("recovery ops/db-down")), agent.log()
    assert "-> line seen: 'database main is back'" in agent.log()
    assert agent.stop() == 0
