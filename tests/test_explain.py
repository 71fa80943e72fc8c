"""Issue 17, item 1: `logmend explain` — what is this line, and what would the agent do?

With the real CLI: lines as arguments or on standard input, pack folders or an
agent config (whose state says which keys cool down and which fixes are over
budget), text and --json. Nothing runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import append, status, wait_for, write_config, write_pack

PACK = """\
user = "root"

[[pattern]]
id = "stuck"
match = '''^queue stuck (?P<q>\\S+)$'''
key = "{q}"
severity = "warning"
article = "articles/a.md"

[pattern.fields]
q = { type = "word" }

[pattern.remedy]
run = ["scripts/fix.sh", "--queue", "{q}"]
verify = ["scripts/fix.sh", "--check", "{q}"]
attempts = 1
cooldown = "1h"

[[pattern.example]]
line = "queue stuck q1"

[[pattern]]
id = "any-queue"
match = '''queue (?P<what>\\w+)'''
escalate = "never"
[pattern.when]
count = 3
within = "1m"

[[pattern.example]]
line = "queue stuck q1"
"""


def explain(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "explain", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def pack_here(tmp_path: Path) -> Path:
    return write_pack(tmp_path / "packs", "ops", PACK, {"fix.sh": "#!/bin/sh\nexit 0\n"})


def test_every_matching_pattern_with_its_fix_as_it_would_run(tmp_path):
    pack = pack_here(tmp_path)
    done = explain(str(pack), "queue stuck q7", "all is well", "--json")
    assert done.returncode == 0, done.stderr
    first, second = json.loads(done.stdout)["lines"]
    assert first["line"] == "queue stuck q7" and second == {"line": "all is well", "matches": []}
    stuck, anyq = first["matches"]
    script = str((pack / "scripts" / "fix.sh").resolve())
    assert stuck == {
        "pack": "ops",
        "pattern": "stuck",
        "owner": "team-test",
        "fields": {"q": "q7"},
        "key": "q7",
        "severity": "warning",
        "escalate": "unresolved",
        "when": {"count": 1, "within": 0.0},
        "remedy": {
            "run": [script, "--queue", "q7"],
            "verify": [script, "--check", "q7"],
            "runs_as": "",
            "would_run": True,
            "why_not": "",
        },
        "article": "articles/a.md",
        "article_text": "# what to do\n",
    }
    assert anyq["remedy"] is None and anyq["escalate"] == "never"
    assert anyq["when"] == {"count": 3, "within": 60.0}


def test_a_field_its_constraint_refuses_is_said_and_no_argv_is_built(tmp_path):
    pack = pack_here(tmp_path)
    done = explain(str(pack), "queue stuck ../../etc", "--json")
    (stuck, _) = json.loads(done.stdout)["lines"][0]["matches"]
    assert stuck["remedy"]["run"] is None and stuck["remedy"]["would_run"] is False
    assert stuck["remedy"]["why_not"].startswith("a field is refused: ")


def test_lines_from_standard_input_and_the_text_form(tmp_path):
    pack = pack_here(tmp_path)
    done = explain(str(pack), stdin="queue stuck q1\nnothing here\n")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "'queue stuck q1'\n  ops/stuck (owner team-test): severity warning" in text
    assert "    fix: [" in text and "'--queue', 'q1']" in text
    assert "    article: articles/a.md\n      # what to do" in text
    assert "opens an incident at 3 matches within 60s" in text
    assert "'nothing here'\n  no pattern knows this line" in text


def test_with_a_config_the_state_says_what_cools_down(tmp_path):
    from tests.helpers import AgentProc

    pack = pack_here(tmp_path)
    log = tmp_path / "app.log"
    log.touch()
    config = write_config(
        tmp_path, [(str(log), None)], pack.parent, agent_extra='allow_root = ["ops"]\n'
    )
    agent = AgentProc(config).start()
    try:
        append(log, "queue stuck q1")
        assert wait_for(lambda: agent.saw("resolved ops/stuck")), agent.log()
        assert wait_for(lambda: status(config)["cooldowns"])
    finally:
        assert agent.stop() == 0
    # status names the article too (issue 17: it never did)
    assert status(config)["fixes"][0]["article"] == "articles/a.md"
    from tests.helpers import cli

    assert "    article: articles/a.md (in the pack's folder)" in cli("status", "-c", str(config))
    done = explain("-c", str(config), "queue stuck q1", "queue stuck q2", "--json")
    assert done.returncode == 0, done.stderr
    q1, q2 = (line["matches"][0]["remedy"] for line in json.loads(done.stdout)["lines"])
    assert q1["would_run"] is False and q1["why_not"].startswith("the key is cooling down for")
    assert q2["would_run"] is True
    assert q1["runs_as"] == "root:root"  # allow_root lists the pack, which asks for root


def test_hostile_lines_are_explained_safely(tmp_path):
    """Control characters are shown escaped, a huge line is explained, not choked on."""
    pack = pack_here(tmp_path)
    done = explain(str(pack), "queue stuck \x1b[2J")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\\x1b[2J" in done.stdout
    huge = explain(
        str(pack), "--json", stdin="queue stuck " + "q" * 5_000_000 + "\nqueue stuck q2\n"
    )
    assert huge.returncode == 0, huge.stderr
    lines = json.loads(huge.stdout)["lines"]
    assert len(lines[0]["line"]) == 64 * 1024  # cut where the agent cuts a line
    assert lines[1]["matches"][0]["key"] == "q2"


def test_neither_or_both_is_said(tmp_path):
    pack = pack_here(tmp_path)
    assert explain("queue stuck q1", stdin="").returncode == 1  # a line is not a pack folder
    assert "give -c CONFIG or PACK_DIR" in explain("queue stuck q1", stdin="").stderr
    assert explain(str(pack), str(tmp_path / "nowhere")).returncode == 0  # that is a line
