"""Issue 17, item 2: one team's broken pack stops no other team's packs.

A pack that fails to load, or whose examples fail, is skipped: named in the
agent's log, `status`, the metrics and `check`, and reported once to its owner
through the receiver (`pack-error`); every other pack runs. Reload applies the
same rule, pack by pack. All with the real CLI, agent and receiver.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers import (
    AgentProc,
    append,
    cli,
    make_receiver,
    status,
    wait_for,
    write_config,
    write_pack,
)

GOOD = """\
[[pattern]]
id = "disk"
match = '''^disk full on (?P<dev>\\w+)$'''
key = "{dev}"
escalate = "never"

[[pattern.example]]
line = "disk full on sda"
"""

UNKNOWN_KEY = GOOD.replace('escalate = "never"', 'escalate = "never"\nseverty = "error"')

FAILING_EXAMPLE = GOOD.replace('line = "disk full on sda"', 'line = "disk is full on sda"')


def three_packs(tmp: Path, receiver=None, extra: str = "") -> tuple[AgentProc, Path, Path]:
    """Packs `good`, `typo` (an unknown key) and `wrong` (an example that fails)."""
    packs = tmp / "packs"
    write_pack(packs, "good", GOOD, owner="team-good")
    write_pack(packs, "typo", UNKNOWN_KEY, owner="team-typo")
    write_pack(packs, "wrong", FAILING_EXAMPLE, owner="team-wrong")
    log = tmp / "app.log"
    log.touch()
    config = write_config(tmp, [(str(log), None)], packs, receiver, extra)
    return AgentProc(config), log, packs


def matched(config: Path, pack: str) -> list[dict]:
    return [i for i in status(config)["recent"] if i["pack"] == pack]


def test_the_agent_runs_every_pack_but_the_broken_ones_and_names_them(tmp_path):
    port_line = '[metrics]\nlisten = "127.0.0.1:0"\n'
    agent, log, _ = three_packs(tmp_path)
    agent.config.write_text(agent.config.read_text() + port_line)
    agent.start()
    try:
        assert "1 pack(s) (2 broken, not running: typo, wrong)" in agent.log()
        assert agent.saw("pack typo in ") == 1
        assert "pattern[0].severty: unknown key (did you mean 'severity'?)" in agent.log()
        assert agent.saw("pack wrong in ") == 1
        assert "'disk is full on sda': expected a match, got no match" in agent.log()

        append(log, "disk full on sdb")
        found = wait_for(lambda: matched(agent.config, "good"))
        assert found[0]["key"] == "sdb"

        broken = {p["pack"]: p for p in status(agent.config)["broken_packs"]}
        assert set(broken) == {"typo", "wrong"}
        assert broken["typo"]["owner"] == "team-typo"
        assert "pack.toml:" in broken["wrong"]["errors"][0]  # names the example's line
        text = cli("status", "-c", str(agent.config))
        assert "broken packs: 2 (they do not run; every other pack does)" in text
        assert "typo (owner team-typo) in " in text

        line = next(line for line in agent.lines if "metrics on http://" in line)
        url = line.rsplit(" ", 1)[1]
        metrics = httpx.get(url, timeout=5).text
        assert 'logmend_packs{state="running"} 1.0' in metrics
        assert 'logmend_packs{state="broken"} 2.0' in metrics
        assert 'logmend_pack_broken{pack="typo"} 1.0' in metrics
        assert 'logmend_pack_broken{pack="good"}' not in metrics
    finally:
        assert agent.stop() == 0


def test_check_names_the_broken_packs_and_the_ones_that_would_run(tmp_path):
    agent, _, packs = three_packs(tmp_path)
    for args in (["check", str(packs)], ["check", "-c", str(agent.config)]):
        done = subprocess.run(
            [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1, done
        assert "BROKEN: typo (owner team-typo) would not run; the other packs would:" in done.stdout
        assert "BROKEN: wrong" in done.stdout
        assert "pattern[0].severty: unknown key (did you mean 'severity'?)" in done.stdout
        assert "Traceback" not in done.stderr
    alone = subprocess.run(
        [sys.executable, "-m", "agent", "check", str(packs / "good")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert alone.returncode == 0 and "ok: good" in alone.stdout


def test_each_broken_pack_is_reported_once_to_its_owner(tmp_path):
    receiver = make_receiver(tmp_path).start()
    try:
        agent, _, _ = three_packs(tmp_path, receiver)
        agent.start()
        reports = wait_for(lambda: len(receiver.escalations(status="pack-error")) == 2 or None)
        assert reports
        agent.stop()
        agent.start()  # a restart does not report the same breakage again
        append(tmp_path / "app.log", "disk full on sdc")
        wait_for(lambda: matched(agent.config, "good") or None)
        assert wait_for(lambda: status(agent.config)["spool"]["queued"] == 0)
        got = {e["pack"]: e for e in receiver.escalations(status="pack-error")}
        assert set(got) == {"typo", "wrong"}
        assert got["typo"]["owner"] == "team-typo"
        assert any("severty" in line for line in got["typo"]["lines"])
        assert got["wrong"]["owner"] == "team-wrong"
        assert agent.stop() == 0
    finally:
        receiver.stop()


def test_reload_applies_the_rule_pack_by_pack(tmp_path):
    agent, log, packs = three_packs(tmp_path)
    agent.start()
    try:
        # the typo is mended and the good pack breaks: each pack on its own
        (packs / "typo" / "pack.toml").write_text(
            (packs / "typo" / "pack.toml").read_text().replace("severty", "severity")
        )
        good = packs / "good" / "pack.toml"
        good.write_text(good.read_text().replace("match = ", "mtach = "))
        os.kill(agent.proc.pid, signal.SIGHUP)
        wait_for(lambda: agent.saw("reloaded: "))
        assert "1 pack(s) (2 broken, not running: good, wrong)" in agent.log()
        append(log, "disk full on sdd")
        found = wait_for(lambda: matched(agent.config, "typo") or None)
        assert found[0]["key"] == "sdd"
        assert not matched(agent.config, "good")
        broken = {p["pack"] for p in status(agent.config)["broken_packs"]}
        assert broken == {"good", "wrong"}
        assert status(agent.config)["last_reload"]["ok"] is True
    finally:
        assert agent.stop() == 0


def test_hostile_pack_files_break_only_their_own_pack(tmp_path):
    """A FIFO, binary noise, a name with control characters and two packs claiming one
    name (neither wins by sorting first): each is a broken pack, named safely; a pack
    with none of that runs."""
    agent, log, packs = three_packs(tmp_path)
    (packs / "typo").rename(packs / "zz-noise")
    (packs / "zz-noise" / "pack.toml").write_bytes(b"\x00\xff[pack\n" * 100)
    write_pack(packs, "evil", GOOD, owner="team-evil")
    evil = packs / "evil" / "pack.toml"
    evil.write_text(evil.read_text().replace('name = "evil"', 'name = "ev\\u001b[31mil\\nFAKE"'))
    write_pack(packs, "twin", GOOD, owner="team-twin")
    twin = packs / "twin" / "pack.toml"
    twin.write_text(twin.read_text().replace('name = "twin"', 'name = "good"'))
    (packs / "wrong" / "pack.toml").unlink()
    os.mkfifo(packs / "wrong" / "pack.toml")
    write_pack(packs, "spare", GOOD, owner="team-spare")
    agent.start()
    try:
        assert "1 pack(s) (5 broken" in agent.log()
        assert [line for line in agent.lines if "\x1b" in line or line.startswith("FAKE")] == []
        broken = status(agent.config)["broken_packs"]
        assert sorted(p["pack"] for p in broken) == ["evil", "good", "good", "wrong", "zz-noise"]
        named = {p["dir"].rsplit("/", 1)[1]: p for p in broken}
        assert "is not a name" in named["evil"]["errors"][0]
        assert "'good' is also in" in named["good"]["errors"][0]
        assert "'good' is also in" in named["twin"]["errors"][0]
        append(log, "disk full on sde")
        assert wait_for(lambda: matched(agent.config, "spare") or None)
    finally:
        assert agent.stop() == 0


def test_a_pack_whose_user_this_host_lacks_is_set_aside_not_the_agent(tmp_path):
    """A pack asking to run its fixes as a user this host does not have used to refuse
    the whole agent at start (a crash loop for every team's packs)."""
    agent, log, packs = three_packs(tmp_path)
    for name in ("typo", "wrong"):
        toml = packs / name / "pack.toml"
        toml.write_text(with_good_pattern(toml.read_text()))
    alien = packs / "typo" / "pack.toml"
    alien.write_text(
        alien.read_text().replace(
            'owner = "team-typo"', 'owner = "team-typo"\nuser = "no-such-user-17"'
        )
    )
    agent.start()
    try:
        assert "2 pack(s) (1 broken, not running: typo)" in agent.log()
        assert "pack.user: no such user 'no-such-user-17' on this host" in agent.log()
        append(log, "disk full on sdf")
        assert wait_for(lambda: matched(agent.config, "good") or None)
    finally:
        assert agent.stop() == 0
    done = subprocess.run(
        [sys.executable, "-m", "agent", "check", "-c", str(agent.config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "BROKEN: typo (owner team-typo) would not run" in done.stdout


def with_good_pattern(text: str) -> str:
    """The pack's header with the good pattern: what is wrong is only in the header."""
    head = text.split("[[pattern]]", 1)[0]
    return head + GOOD
