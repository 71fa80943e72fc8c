"""Issue 18, item 3, end to end: a real receiver and several real agents on loopback.
A team publishes; every host runs it; a version whose examples fail on the hosts is
refused there and its owner hears of it; a staged version reaches a stable half;
a receiver that goes away costs nothing; a kill in the middle leaves whole packs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from agent import bundle
from agent.receiver.packstore import takes_candidate
from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore
from agent.signing import generate, load_private, sign
from tests.helpers import RECORD_SCRIPT, AgentProc, Receiver, append, wait_for, write_pack

PACK = """\
user = "root"

[pack.params]
out = "/nonexistent/fix"

[[pattern]]
id = "stuck"
match = '''^queue stuck (?P<q>\\w+)$'''
key = "{q}"
escalate = "never"

[pattern.fields]
q = { type = "word" }

[pattern.remedy]
run = ["scripts/record.sh", "{param.out}", "{q}"]
attempts = 1

[[pattern.example]]
line = "queue stuck q1"
"""


def logmend(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60
    )


class Team:
    """team-cache: its key (registered at the receiver) and its write token."""

    def __init__(self, root: Path, receiver: Receiver) -> None:
        self.root = root / "team"
        self.root.mkdir()
        private, self.public = generate("team-cache", self.root / "key")
        self.key = load_private(private)
        added = logmend("receiver", "key", "add", str(self.public), "--db", str(receiver.db))
        assert added.returncode == 0, added.stderr
        store = ReceiverStore(receiver.db)
        self.token = store.create_token(Scope.WRITE, "ci-cache", ("team-cache",))
        self.reader = store.create_token(Scope.READ, "cache", ("team-cache",))
        store.close()
        self.receiver = receiver

    def publish(self, version: str, body: str = PACK, percent: int = 100) -> None:
        folder = write_pack(
            self.root / version, "redis", body, {"record.sh": RECORD_SCRIPT.format(exit_code=0)},
            owner="team-cache",
        )  # fmt: skip
        toml = folder / "pack.toml"
        toml.write_text(toml.read_text().replace('version = "1.2.3"', f'version = "{version}"'))
        found = bundle.read(bundle.build(folder, "redis", version, "team-cache", "0.1.0"), "b")
        path = self.root / f"redis-{version}.lmpack"
        path.write_bytes(bundle.signed(found, sign(self.key, found.manifest_bytes)))
        token = self.root / "token"
        token.write_text(self.token)
        done = logmend("pack", "publish", str(path), "--url", self.receiver.url,
                       "--token-file", str(token), "--percent", str(percent))  # fmt: skip
        assert done.returncode == 0, done.stderr

    def pack_errors(self) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{self.receiver.url}/v1/escalations",
            params={"status": "pack-error"},
            headers={"Authorization": f"Bearer {self.reader}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()["escalations"]
        return found


def host_agent(
    tmp: Path, host: str, receiver: Receiver, trust: Path, local_params: bool = True
) -> tuple[AgentProc, Path]:
    """An agent for `host` taking team-cache's redis pack from the receiver."""
    base = tmp / host
    (base / "packs").mkdir(parents=True)
    (base / "out").mkdir()
    log = base / "app.log"
    log.write_text("")
    token = base / "token"
    token.write_text(receiver.token)
    token.chmod(0o600)
    config = base / "agent.toml"
    config.write_text(
        f'[agent]\nhost = "{host}"\nstate_dir = "{base / "state"}"\npacks = ["{base / "packs"}"]\n'
        'allow_root = ["redis"]\n'
        f'[[source]]\npath = "{log}"\npacks = ["redis"]\n'
        f'[escalation]\nurl = "{receiver.url}/v1/escalations"\ntoken_file = "{token}"\n'
        'backoff_initial = "100ms"\nbackoff_max = "500ms"\naggregate = "0s"\n'
        f'[sync]\nurl = "{receiver.url}"\npacks = ["redis"]\ntrust = ["{trust}"]\n'
        'interval = "1s"\ntimeout = "5s"\n'
        + (f'[params.redis]\nout = "{base / "out" / "fix"}"\n' if local_params else "")
        + '[limits]\nsweep_interval = "100ms"\n'
    )
    return AgentProc(config), log


def runs(agent: AgentProc, version: str) -> bool:
    """The agent runs `version` of redis: loaded (its status says) and linked."""
    done = logmend("status", "-c", str(agent.config), "--json")
    if done.returncode != 0:
        return False
    link = agent.config.parent / "state" / "packs" / "redis"
    facts = link.resolve().parent / "manifest.json"
    linked = link.is_symlink() and json.loads(facts.read_text())["version"] == version
    return bool(linked and json.loads(done.stdout)["packs"].get("redis") == version)


def fixed(log: Path, agent: AgentProc, q: str) -> bool:
    """A `queue stuck Q` line is fixed by the pack (its script records Q)."""
    append(log, f"queue stuck {q}")
    out = agent.config.parent / "out"
    return bool(
        wait_for(lambda: any(p.read_bytes() == f"{q}\0".encode() for p in out.glob("fix.*.argv")))
    )


def test_every_host_runs_v1_and_refuses_a_v2_whose_examples_fail_there(tmp_path, receiver):
    team = Team(tmp_path, receiver)
    team.publish("1.0.0")
    agents = [host_agent(tmp_path, f"cache-{n}", receiver, team.public) for n in range(3)]
    for agent, _ in agents:
        agent.start()
    for agent, log in agents:
        assert wait_for(lambda agent=agent: agent.saw("reloaded") > 0, 30), agent.log()
        assert wait_for(lambda agent=agent: runs(agent, "1.0.0"), 15), agent.log()
        assert fixed(log, agent, "q7"), agent.log()
    # v2: its example no longer matches its own pattern (built without `pack build`'s proof)
    team.publish("2.0.0", PACK.replace('line = "queue stuck q1"', 'line = "queue stuck"'))
    for agent, log in agents:
        assert wait_for(lambda agent=agent: agent.saw("redis 2.0.0 refused") > 0, 30), agent.log()
        assert runs(agent, "1.0.0")
        assert fixed(log, agent, "q8"), agent.log()  # v1 goes on fixing
    errors = wait_for(lambda: len(team.pack_errors()) >= 3 and team.pack_errors(), 30)
    assert errors, team.pack_errors()
    assert {e["host"] for e in errors} == {"cache-0", "cache-1", "cache-2"}
    assert all(e["pack_version"] == "2.0.0" and e["owner"] == "team-cache" for e in errors)
    assert "expected a match" in errors[0]["lines"][0]
    status = logmend("status", "-c", str(agents[0][0].config))
    assert "REFUSED redis 2.0.0" in status.stdout and "packs: redis 1.0.0" in status.stdout
    for agent, _ in agents:
        assert agent.stop() == 0
        assert "Traceback" not in agent.log()


def test_half_the_hosts_take_a_staged_version_stably_and_all_follow_a_rollback(tmp_path, receiver):
    team = Team(tmp_path, receiver)
    team.publish("1.0.0")
    names = [f"web-{n}" for n in range(40)]
    inside = [h for h in names if takes_candidate("redis", h, 50)][:2]
    outside = [h for h in names if not takes_candidate("redis", h, 50)][:2]
    agents = {h: host_agent(tmp_path, h, receiver, team.public)[0] for h in inside + outside}
    for agent in agents.values():
        agent.start()
    for agent in agents.values():
        assert wait_for(lambda agent=agent: runs(agent, "1.0.0"), 30), agent.log()
    team.publish("2.0.0", percent=50)
    for host in inside:
        assert wait_for(lambda host=host: runs(agents[host], "2.0.0"), 30), agents[host].log()
    for host in outside:
        assert runs(agents[host], "1.0.0") and agents[host].saw("2.0.0") == 0
    again = agents[inside[0]]
    assert again.stop() == 0
    again.start()  # stable: the same host, the same answer
    assert runs(again, "2.0.0")
    assert not wait_for(lambda: again.saw("installed") > 0, 2.5)  # two syncs: nothing new
    team.publish("1.0.0")  # the rollback: 1.0.0 current for all again
    for agent in agents.values():
        assert wait_for(lambda agent=agent: runs(agent, "1.0.0"), 30), agent.log()
    for agent in agents.values():
        assert agent.stop() == 0


def test_a_receiver_that_goes_away_costs_nothing_and_the_host_catches_up(tmp_path, receiver):
    team = Team(tmp_path, receiver)
    team.publish("1.0.0")
    agent, log = host_agent(tmp_path, "cache-0", receiver, team.public)
    agent.start()
    assert wait_for(lambda: runs(agent, "1.0.0"), 30), agent.log()
    receiver.stop()
    assert wait_for(lambda: agent.saw("pack sync: ") > 0 and agent.saw("keep running") > 0, 15)
    assert fixed(log, agent, "q9"), agent.log()  # the packs here go on working
    status = logmend("status", "-c", str(agent.config))
    assert "FAILED" in status.stdout and "packs: redis 1.0.0" in status.stdout
    receiver.start()  # the same port
    team.publish("1.1.0")
    assert wait_for(lambda: runs(agent, "1.1.0"), 30), agent.log()
    assert agent.stop() == 0


def test_a_host_refuses_a_key_it_does_not_trust_and_a_kill_mid_sync_leaves_whole_packs(
    tmp_path, receiver
):
    team = Team(tmp_path, receiver)
    team.publish("1.0.0")
    _, other = generate("team-cache", tmp_path / "not-the-teams")  # same owner, other key
    wary, _ = host_agent(tmp_path, "cache-wary", receiver, other)
    wary.start()
    assert wait_for(lambda: wary.saw("redis 1.0.0 refused") > 0, 30), wary.log()
    assert "not trusted here" in wary.log()
    assert not (tmp_path / "cache-wary" / "state" / "packs" / "redis").exists()
    assert wary.stop() == 0

    agent, _ = host_agent(tmp_path, "cache-0", receiver, team.public)
    agent.start()
    assert wait_for(lambda: runs(agent, "1.0.0"), 30), agent.log()
    for n in range(1, 4):
        team.publish(f"1.{n}.0")
        assert wait_for(lambda n=n: agent.saw(f"installed redis 1.{n}.0") > 0, 30), agent.log()
        agent.stop(signal.SIGKILL)  # at once, wherever the swap and reload are
        link = tmp_path / "cache-0" / "state" / "packs" / "redis"
        assert (link / "pack.toml").is_file() and (link / "scripts" / "record.sh").is_file()
        agent.start()  # restarts on a complete pack set, nothing broken
        assert agent.saw("broken") == 0, agent.log()
        assert wait_for(lambda n=n: runs(agent, f"1.{n}.0"), 30), agent.log()
    assert agent.stop() == 0


def test_central_params_for_a_group_of_hosts_reach_the_fix_and_the_hosts_own_win(
    tmp_path, receiver
):
    team = Team(tmp_path, receiver)
    team.publish("1.0.0")
    central = tmp_path / "central"
    central.mkdir()

    def set_out(path: Path) -> None:
        answer = httpx.put(
            f"{receiver.url}/v1/packs/redis/params",
            json={"hosts": "cache-*", "params": {"out": str(path / "fix")}},
            headers={"Authorization": f"Bearer {team.token}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text

    set_out(central)
    agent, log = host_agent(tmp_path, "cache-0", receiver, team.public, local_params=False)
    agent.start()
    assert wait_for(lambda: runs(agent, "1.0.0"), 30), agent.log()
    append(log, "queue stuck c1")
    assert wait_for(lambda: (central / "fix.0.argv").exists()), agent.log()
    status = logmend("status", "-c", str(agent.config))
    assert f"redis params: out='{central / 'fix'}'" in status.stdout
    moved = tmp_path / "moved"
    moved.mkdir()
    reloads = agent.saw("reloaded")
    set_out(moved)  # the team moves it: the host follows at its next sync
    assert wait_for(lambda: agent.saw("new central values of params") > 0, 15), agent.log()
    assert wait_for(lambda: agent.saw("reloaded") > reloads, 15), agent.log()
    append(log, "queue stuck c2")
    assert wait_for(lambda: (moved / "fix.0.argv").exists()), agent.log()
    # the host's own [params.redis] wins over the group's
    own = tmp_path / "own"
    own.mkdir()
    agent.config.write_text(agent.config.read_text() + f'[params.redis]\nout = "{own / "fix"}"\n')
    reloads = agent.saw("reloaded")  # the syncs' reloads so far: wait for the SIGHUP's own
    agent.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    assert wait_for(lambda: agent.saw("reloaded") > reloads, 15), agent.log()
    append(log, "queue stuck c3")
    assert wait_for(lambda: (own / "fix.0.argv").exists()), agent.log()
    assert agent.stop() == 0
