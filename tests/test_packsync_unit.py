"""PackSync (agent/packsync.py) on a fake receiver: what it installs, refuses, keeps and
leaves after a crash. Real bundles, real keys, real folders and links; only the
transport is a fake, so a receiver can be made to lie or die on demand."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent import bundle, packsync
from agent.config import parse_config
from agent.packsync import PackSync, SyncFailed, SyncLoop, SyncResult
from agent.signing import generate, load_private, load_public, sign
from tests.helpers import write_pack

PACK = """\
[[pattern]]
id = "stuck"
match = '''^queue stuck (?P<q>\\w+)$'''

[[pattern.example]]
line = "queue stuck q1"
"""


class FakeReceiver:
    """Serves bundles by (name, version) and a channel per pack; can be down."""

    def __init__(self) -> None:
        self.bundles: dict[tuple[str, str], bytes] = {}
        self.digests: dict[tuple[str, str], str] = {}  # named in the sync's answer
        self.channel: dict[str, tuple[str, str]] = {}  # name -> (owner, version)
        self.down = False
        self.fetched: list[tuple[str, str]] = []
        self.told: list[dict[str, str]] = []

    def put(self, data: bytes, current: bool = True) -> None:
        found = bundle.read(data, "b")
        m = found.manifest
        self.bundles[(m.name, m.version)] = data
        self.digests[(m.name, m.version)] = found.digest()
        if current:
            self.channel[m.name] = (m.owner, m.version)

    def wanted(self, host: str, packs: list[str], running: dict[str, str]) -> list[dict[str, Any]]:
        if self.down:
            raise SyncFailed("cannot reach the receiver (fake)")
        self.told.append(running)
        out = []
        for name, (owner, version) in sorted(self.channel.items()):
            if name in packs or f"owner:{owner}" in packs:
                digest = self.digests[(name, version)]
                out.append({"name": name, "owner": owner, "version": version, "digest": digest})
        return out

    def fetch(self, name: str, version: str) -> bytes:
        if self.down:
            raise SyncFailed("cannot reach the receiver (fake)")
        self.fetched.append((name, version))
        if (name, version) not in self.bundles:
            raise SyncFailed(f"GET /v1/packs/{name}/{version}: the receiver answered 404")
        return self.bundles[(name, version)]


class Team:
    def __init__(self, root: Path, owner: str = "team-cache") -> None:
        self.root, self.owner = root / owner, owner
        self.root.mkdir(parents=True)
        private, self.public = generate(owner, self.root / "key")
        self.key = load_private(private)

    def bundle(self, version: str, body: str = PACK, name: str = "redis", owner: str = "") -> bytes:
        owner = owner or self.owner
        folder = write_pack(self.root / f"{name}-{version}", name, body, owner=owner)
        toml = folder / "pack.toml"
        toml.write_text(toml.read_text().replace('version = "1.2.3"', f'version = "{version}"'))
        found = bundle.read(bundle.build(folder, name, version, owner, "0.1.0"), "b")
        return bundle.signed(found, sign(self.key, found.manifest_bytes))


def config_for(tmp_path: Path, team: Team, sync_extra: str = "", packs: str = '["redis"]') -> Any:
    token = tmp_path / "token"
    token.write_text("lm_" + "x" * 30)
    text = (
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[source]]\npath = "{tmp_path / "app.log"}"\npacks = "*"\n'
        f'[sync]\nurl = "http://127.0.0.1:9"\ntoken_file = "{token}"\npacks = {packs}\n'
        f'trust = ["{team.public}"]\n' + sync_extra
    )
    return parse_config(tmp_path / "agent.toml", text)


def syncer(tmp_path: Path, team: Team, receiver: FakeReceiver, **kw: Any) -> PackSync:
    config = config_for(tmp_path, team, **kw)
    packsync.prepare(config)
    trusted = {k.key_id: k for k in load_public(team.public)}
    return PackSync(config, receiver, trusted, packsync.prove_here(config))


def running_version(sync: PackSync, name: str = "redis") -> str | None:
    facts = sync.running().get(name)
    return facts["version"] if facts else None


def test_a_new_version_is_installed_whole_and_linked(tmp_path):
    team, fake = Team(tmp_path), FakeReceiver()
    fake.put(team.bundle("1.0.0"))
    sync = syncer(tmp_path, team, fake)
    result = sync.run_once()
    assert result.installed == ["redis 1.0.0"] and not result.refused and not result.failed
    link = sync.links / "redis"
    assert link.is_symlink() and (link / "pack.toml").is_file()
    assert running_version(sync) == "1.0.0"
    assert sync.run_once().installed == []  # nothing new: nothing fetched again
    assert fake.fetched == [("redis", "1.0.0")]
    assert fake.told[-1] == {"redis": "1.0.0"}  # the receiver hears what runs here


def test_a_version_whose_examples_fail_here_is_refused_once_and_the_old_one_stays(tmp_path):
    team, fake = Team(tmp_path), FakeReceiver()
    fake.put(team.bundle("1.0.0"))
    sync = syncer(tmp_path, team, fake)
    sync.run_once()
    fake.put(team.bundle("2.0.0", PACK.replace('line = "queue stuck q1"', 'line = "no match"')))
    result = sync.run_once()
    [refusal] = result.refused
    assert (refusal.name, refusal.version, refusal.owner) == ("redis", "2.0.0", "team-cache")
    assert "expected a match, got no match" in refusal.reasons[0]
    assert running_version(sync) == "1.0.0"
    assert not list(sync.store.glob(".incoming-*"))
    again = sync.run_once()  # not fetched, not reported again
    assert again.refused == [] and fake.fetched.count(("redis", "2.0.0")) == 1
    fake.put(team.bundle("2.0.1"))  # the mended version goes in
    assert sync.run_once().installed == ["redis 2.0.1"]


@pytest.mark.parametrize(
    ("lie", "reason"),
    [
        ("untrusted key", "which is not trusted here"),
        ("other owner", "the bundle is team-cache's, not team-web's"),
        ("other name", "the bundle is nginx 1.0.0"),
        ("other digest", "not the bundle the receiver named"),
        ("not a bundle", "not a pack bundle"),
        ("not asked for", "this host does not take miner 1.0.0"),
    ],
)
def test_what_a_lying_or_compromised_receiver_serves_is_refused(tmp_path, lie, reason):
    team, fake = Team(tmp_path), FakeReceiver()
    stranger = Team(tmp_path, "team-evil")
    fake.put(team.bundle("1.0.0"))
    sync = syncer(tmp_path, team, fake, packs='["redis", "owner:team-cache"]')
    if lie == "untrusted key":  # a whole bundle, signed by a key this host does not trust
        fake.put(stranger.bundle("1.0.0", owner="team-cache"))
    elif lie == "other owner":  # the owner the receiver named is not the bundle's
        fake.channel["redis"] = ("team-web", "1.0.0")
    elif lie == "other name":
        fake.bundles[("redis", "1.0.0")] = team.bundle("1.0.0", name="nginx")
        fake.digests[("redis", "1.0.0")] = bundle.read(
            fake.bundles[("redis", "1.0.0")], "b"
        ).digest()
    elif lie == "other digest":  # the receiver named one bundle and served another
        fake.bundles[("redis", "1.0.0")] = team.bundle("1.0.0", PACK + "\n# changed\n")
    elif lie == "not a bundle":
        fake.bundles[("redis", "1.0.0")] = b"<html>proxy error</html>"
    elif lie == "not asked for":  # a receiver answering with a pack this host never asked for
        fake.channel.clear()
        miner = team.bundle("1.0.0", name="miner", owner="team-web")
        fake.put(miner, current=False)
        original = fake.wanted

        def wanted(*args: Any) -> list[dict[str, Any]]:
            digest = fake.digests[("miner", "1.0.0")]
            return [{"name": "miner", "owner": "", "version": "1.0.0", "digest": digest}]

        fake.wanted = wanted  # type: ignore[method-assign]
        del original
    # what is not the named bundle may be a proxy's hiccup: fetched again, refused when the
    # receiver serves the same GARBLED times in a row
    tries = packsync.GARBLED if lie in ("other digest", "not a bundle") else 1
    for _ in range(tries):
        result = sync.run_once()
    assert result.refused and reason in result.refused[0].reasons[0], result
    assert running_version(sync) is None and running_version(sync, "miner") is None
    assert not [p for p in sync.store.iterdir() if not p.name.startswith(".")]


def test_a_pin_holds_this_host_on_its_version(tmp_path):
    team, fake = Team(tmp_path), FakeReceiver()
    fake.put(team.bundle("1.0.0"))
    fake.put(team.bundle("2.0.0"))
    sync = syncer(tmp_path, team, fake, sync_extra='[sync.pin]\nredis = "1.0.0"\n')
    assert sync.run_once().installed == ["redis 1.0.0"]
    assert sync.run_once().installed == []
    assert running_version(sync) == "1.0.0"


def test_a_receiver_that_is_down_changes_nothing(tmp_path):
    team, fake = Team(tmp_path), FakeReceiver()
    fake.put(team.bundle("1.0.0"))
    sync = syncer(tmp_path, team, fake)
    sync.run_once()
    fake.down = True
    result = sync.run_once()
    assert result.failed and not result.installed and running_version(sync) == "1.0.0"
    fake.down = False
    fake.put(team.bundle("1.1.0"))
    assert sync.run_once().installed == ["redis 1.1.0"]  # caught up


def test_a_kill_at_any_step_leaves_a_whole_pack_linked(tmp_path, monkeypatch):
    """The swap is one rename: stop the world just before it, after it, or in the
    unpack, and the link names a complete folder; the next start cleans up."""
    team, fake = Team(tmp_path), FakeReceiver()
    fake.put(team.bundle("1.0.0"))
    sync = syncer(tmp_path, team, fake)
    sync.run_once()
    fake.put(team.bundle("2.0.0"))

    class Killed(BaseException):
        pass

    for step in ("unpack", "rename", "replace"):
        target = {
            "unpack": (bundle, "unpack"),
            "rename": (os, "rename"),
            "replace": (os, "replace"),
        }
        module, name = target[step]
        real = getattr(module, name)

        def dies(*args: Any, real: Any = real, step: str = step, **kwargs: Any) -> Any:
            if step == "unpack":
                real(*args, **kwargs)  # the files are written, then the kill
            raise Killed

        monkeypatch.setattr(module, name, dies)
        with pytest.raises(Killed):
            sync.run_once()
        monkeypatch.setattr(module, name, real)
        assert running_version(sync) == "1.0.0", step  # the old link, whole
        assert (sync.links / "redis" / "pack.toml").is_file()
        packsync.prepare(sync_config := config_for(tmp_path, team))  # the next start
        assert not list(sync.store.glob(".incoming-*"))
        assert not [p for p in sync.links.iterdir() if p.name.startswith(".")]
        assert sync_config.pack_roots[-1] == sync.links
    assert sync.run_once().installed == ["redis 2.0.0"]
    assert (
        json.loads((sync.links / "redis").resolve().parent.joinpath("manifest.json").read_text())[
            "version"
        ]
        == "2.0.0"
    )


def test_old_versions_are_pruned_but_the_previous_one_kept(tmp_path):
    team, fake = Team(tmp_path), FakeReceiver()
    sync = syncer(tmp_path, team, fake)
    for n in range(4):
        fake.put(team.bundle(f"1.{n}.0"))
        assert sync.run_once().installed == [f"redis 1.{n}.0"]
    kept = sorted(
        json.loads((p / "manifest.json").read_text())["version"]
        for p in sync.store.iterdir()
        if not p.name.startswith(".")
    )
    assert kept == ["1.2.0", "1.3.0"]


def test_the_loop_retries_sooner_while_the_receiver_is_down(tmp_path):
    """The loop on fake time: 5 s, 10 s ... up to the interval while asking fails."""
    waits: list[float] = []
    results = iter(
        [SyncResult(failed="down"), SyncResult(failed="down"), SyncResult(failed="down"),
         SyncResult(), SyncResult()]
    )  # fmt: skip

    class Scripted:
        def run_once(self) -> SyncResult:
            return next(results)

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) > 5  # stop after five runs

    seen: list[SyncResult] = []
    loop = SyncLoop(Scripted(), 300.0, seen.append, wait=wait)  # type: ignore[arg-type]
    loop._run()
    assert waits == [0.0, 5.0, 10.0, 20.0, 300.0, 300.0]
    assert [bool(r.failed) for r in seen] == [True, True, True, False, False]


def test_sync_config_errors_name_the_key(tmp_path):
    from agent.errors import ConfigErrors

    base = f'[[source]]\npath = "{tmp_path}/a.log"\npacks = "*"\n[sync]\n'
    for body, words in (
        ('url = "ftp://x"\ntoken_file = "t"\npacks = ["a"]\ntrust = ["k"]\n', "http:// or https://"),
        ('url = "http://x"\ntoken_file = "t"\npacks = ["../a"]\ntrust = ["k"]\n', "not a pack name"),
        ('url = "http://x"\ntoken_file = "t"\npacks = ["a"]\n', "trust"),
        ('url = "http://x"\npacks = ["a"]\ntrust = ["k"]\n', "token"),
        ('url = "http://x"\ntoken_file = "t"\npacks = []\ntrust = ["k"]\n', "name the packs"),
        ('url = "http://x"\ntoken_file = "t"\npacks = ["a"]\ntrust = ["k"]\npin = { a = 3 }\n',
         "version this host stays on"),
    ):  # fmt: skip
        with pytest.raises(ConfigErrors) as caught:
            parse_config(tmp_path / "agent.toml", base + body)
        assert words in str(caught.value), (body, str(caught.value))


PARAM_PACK = PACK.replace("[[pattern]]", '[pack.params]\nout = "/var/tmp/x"\n\n[[pattern]]', 1)


def test_central_params_that_would_break_the_pack_are_refused_and_the_old_ones_stay(tmp_path):
    team, fake = Team(tmp_path), FakeReceiver()
    fake.put(team.bundle("1.0.0", PARAM_PACK))
    sync = syncer(tmp_path, team, fake)
    original = fake.wanted
    central: dict[str, Any] = {"out": "/srv/a"}

    def wanted(*args: Any) -> list[dict[str, Any]]:
        return [{**item, "params": dict(central)} for item in original(*args)]

    fake.wanted = wanted  # type: ignore[method-assign]
    first = sync.run_once()
    assert first.installed == ["redis 1.0.0"] and first.params_changed
    params_file = sync.links.parent / packsync.PARAMS_FILE
    assert json.loads(params_file.read_text()) == {
        "redis": {"owner": "team-cache", "values": {"out": "/srv/a"}}
    }
    assert not sync.run_once().params_changed  # the same values: nothing to do
    central.clear()
    central["outt"] = "/srv/b"  # a typo: the pack declares no such param
    bad = sync.run_once()
    assert not bad.params_changed and bad.refused
    assert "central params refused" in bad.refused[0].reasons[0]
    assert "no param 'outt'" in bad.refused[0].reasons[0]
    assert bad.refused[0].owner == "team-cache"
    assert json.loads(params_file.read_text()) == {
        "redis": {"owner": "team-cache", "values": {"out": "/srv/a"}}
    }
    again = sync.run_once()
    assert again.refused == [] and again.standing  # reported once, still shown
    central.clear()
    central["out"] = ["not", "a", "string"]  # the wrong type
    assert sync.run_once().refused
    central.clear()
    central["out"] = "/srv/c"
    assert sync.run_once().params_changed
    assert json.loads(params_file.read_text())["redis"]["values"] == {"out": "/srv/c"}


def test_check_reads_the_sync_token_and_keys_as_the_agent_would(tmp_path):
    import subprocess
    import sys

    team = Team(tmp_path)
    config_for(tmp_path, team)  # writes the token file
    token = tmp_path / "token"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[source]]\npath = "{tmp_path / "app.log"}"\npacks = ["redis"]\n'
        f'[sync]\nurl = "http://127.0.0.1:9"\ntoken_file = "{token}"\npacks = ["redis"]\n'
        f'trust = ["{team.public}"]\n'
    )

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", "check", "-c", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    token.chmod(0o644)
    loose = check()
    assert loose.returncode == 1 and "sync.token_file" in loose.stderr
    token.chmod(0o600)
    done = check()
    assert done.returncode == 0, done.stderr  # redis, not synced yet, is no unknown pack
    assert "1 trusted key(s) of team-cache" in done.stdout
    team.public.write_text("logmend-ed25519 nonsense team-cache\n")
    bad = check()
    assert bad.returncode == 1 and f"{team.public}:1" in bad.stderr


@pytest.mark.parametrize(
    "item",
    [
        {"name": "../../etc", "owner": "team-cache", "version": "1.0.0"},
        {"name": "redis", "owner": "team/cache", "version": "1.0.0"},
        {"name": "redis", "owner": "team-cache", "version": "../1"},
        {"name": "redis", "owner": "team-cache", "version": "1.0.0", "digest": "not-hex"},
    ],
)
def test_a_sync_answer_naming_no_plain_pack_changes_nothing(tmp_path, item):
    """A name from the receiver becomes a path here: one that is not a plain pack name (or a
    digest that is not one) is a garbled answer, and nothing on disk is touched."""
    team, fake = Team(tmp_path), FakeReceiver()
    fake.put(team.bundle("1.0.0"))
    sync = syncer(tmp_path, team, fake)

    def wanted(*args: Any) -> list[dict[str, Any]]:
        return [{"digest": fake.digests[("redis", "1.0.0")], "params": {"x": "y"}, **item}]

    fake.wanted = wanted  # type: ignore[method-assign]
    before = sorted(p.name for p in (tmp_path / "state").rglob("*"))
    result = sync.run_once()
    assert "not a pack" in result.failed and not result.installed and not result.params_changed
    assert sorted(p.name for p in (tmp_path / "state").rglob("*")) == before
    assert fake.fetched == []
