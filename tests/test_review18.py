"""Review of issue 18 (signed pack bundles, sync, central params, install-service), as an
attacker and as a careless user. Each test shows one problem found; real bundles, real
keys, real folders and links, the real receiver where the receiver matters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import bundle, packsync
from agent.config import parse_config
from agent.derived import Memo
from agent.packsync import PackSync
from agent.preflight import identities_for, runnable_packs
from agent.signing import load_public, sign
from tests.helpers import wait_for, write_pack
from tests.test_packsync_unit import PACK, FakeReceiver, Team


def host_config(tmp_path: Path, team: Team, packs: str, agent_extra: str = "") -> Any:
    token = tmp_path / "token"
    token.write_text("lm_" + "x" * 30)
    local = tmp_path / "local-packs"
    local.mkdir(exist_ok=True)
    text = (
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\npacks = ["{local}"]\n{agent_extra}'
        f'[[source]]\npath = "{tmp_path / "app.log"}"\npacks = "*"\n'
        f'[sync]\nurl = "http://127.0.0.1:9"\ntoken_file = "{token}"\npacks = {packs}\n'
        f'trust = ["{team.public}"]\n'
    )
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return parse_config(path, text)


def make_sync(config: Any, team: Team, transport: Any) -> PackSync:
    packsync.prepare(config)
    trusted = {k.key_id: k for k in load_public(team.public)}
    return PackSync(config, transport, trusted, packsync.prove_here(config))


def signed_bundle(team: Team, folder: Path, name: str, version: str, owner: str) -> bytes:
    found = bundle.read(bundle.build(folder, name, version, owner, "0.1.0"), "b")
    return bundle.signed(found, sign(team.key, found.manifest_bytes))


ROOT_PACK = """\
user = "root"

[[pattern]]
id = "stuck"
match = '''^queue stuck (?P<q>\\w+)$'''

[pattern.remedy]
run = ["scripts/fix.sh"]

[[pattern.example]]
line = "queue stuck q1"
"""


def test_the_installed_pack_toml_must_be_the_pack_the_signed_manifest_names(tmp_path):
    """team-cache's key is trusted for team-cache's packs only. Its signed manifest says
    `redis`, owner team-cache; the pack.toml inside says `db-fix`, owner team-web, and
    asks for root. The host expects team-web's db-fix (allow_root names it, before its
    first arrival, as docs/config.md allows). The sync installs team-cache's bundle and
    the agent loads it as team-web's db-fix, whose fixes run as root: the key's binding
    to its owner (and the host's root consent, given by pack name) is bypassed.
    `logmend pack verify` does refuse this (proven_copy); the agent's sync does not."""
    team, fake = Team(tmp_path), FakeReceiver()
    folder = write_pack(
        tmp_path / "evil", "db-fix", ROOT_PACK, {"fix.sh": "#!/bin/sh\nid\n"}, owner="team-web"
    )
    toml = folder / "pack.toml"
    toml.write_text(toml.read_text().replace('version = "1.2.3"', 'version = "1.0.0"'))
    fake.put(signed_bundle(team, folder, "redis", "1.0.0", "team-cache"))
    config = host_config(
        tmp_path, team, '["redis", "db-fix"]', agent_extra='allow_root = ["db-fix"]\n'
    )
    sync = make_sync(config, team, fake)
    result = sync.run_once()
    loaded: dict[str, Any] = {}
    escalated: dict[str, int] = {}
    if result.installed:
        packs, _ = runnable_packs(config, Memo())
        loaded = {p.name: p for p in packs}
        identities = identities_for(config, packs)
        escalated = {n: i.uid for n, i in identities.items() if i is not None}
    assert result.refused and not result.installed, (
        f"installed a bundle whose pack.toml is another pack: now running {sorted(loaded)}"
        f" owned by {[p.owner for p in loaded.values()]}, fix uids {escalated}"
    )


def hostile_bundle(team: Team, name: str, version: str, extra: dict[str, bytes]) -> bytes:
    """A validly signed bundle of `name` with extra files under pack/ that no folder could
    hold (written with bundle.write, as a hand-made or foreign tool would)."""
    folder = write_pack(team.root / f"{name}-{version}", name, PACK, owner=team.owner)
    toml = folder / "pack.toml"
    toml.write_text(toml.read_text().replace('version = "1.2.3"', f'version = "{version}"'))
    found = bundle.read(bundle.build(folder, name, version, team.owner, "0.1.0"), "b")
    files = dict(found.files) | extra
    entries = tuple(
        bundle.FileEntry(path, __import__("hashlib").sha256(data).hexdigest(), len(data), False)
        for path, data in sorted(files.items())
    )
    manifest = bundle.Manifest(name, version, team.owner, "0.1.0", entries)
    raw = manifest.to_bytes()
    return bundle.write(raw, files, entries, sign(team.key, raw))


def test_a_bundle_no_folder_could_hold_is_refused_on_read(tmp_path):
    """A path part over the 255 bytes a file name may have (130 accented letters), or `x`
    both a file and a folder: read() refuses them by name, before anything is written."""
    team = Team(tmp_path)
    long = hostile_bundle(team, "aaa", "1.0.0", {"articles/" + "é" * 130 + ".md": b"x"})
    with pytest.raises(bundle.BundleError, match="over 255 bytes"):
        bundle.read(long, "b")
    both = hostile_bundle(team, "bbb", "1.0.0", {"x": b"file", "x/y": b"and folder"})
    with pytest.raises(bundle.BundleError, match="'x' is a file and a folder"):
        bundle.read(both, "b")


def test_a_bundle_that_cannot_be_unpacked_is_refused_and_the_other_packs_still_sync(
    tmp_path, monkeypatch
):
    """unpack() failing here (a full disk, a name this file system refuses) refuses that
    version, cleans up, and every other pack still syncs; a bundle the receiver serves
    that does not read is fetched again, and refused (and reported) only when it is the
    same GARBLED times over."""
    team, fake = Team(tmp_path), FakeReceiver()
    fake.put(team.bundle("1.0.0", name="aaa"))
    fake.put(team.bundle("1.0.0"))  # redis: a good pack, synced after it
    fake.put(team.bundle("1.0.0", name="zzz"))
    fake.bundles[("zzz", "1.0.0")] = hostile_bundle(team, "zzz", "1.0.0", {"x": b"1", "x/y": b"2"})
    config = host_config(tmp_path, team, '["aaa", "redis", "zzz"]')
    sync = make_sync(config, team, fake)
    real = bundle.unpack

    def full_disk(found: Any, dest: Path) -> None:
        if found.manifest.name == "aaa":
            raise OSError(28, "No space left on device")
        real(found, dest)

    monkeypatch.setattr(bundle, "unpack", full_disk)
    result = sync.run_once()
    assert result.installed == ["redis 1.0.0"], result
    assert [r.name for r in result.refused] == ["aaa"] and "No space left" in str(result.refused)
    assert not list(sync.store.glob(".incoming-*"))
    assert "'x' is a file and a folder" in result.failed  # zzz: fetched again later
    for _ in range(packsync.GARBLED - 1):
        last = sync.run_once()
    assert [r.name for r in last.refused] == ["zzz"]
    assert sync.run_once().refused == []  # refused once, not fetched again
    assert fake.fetched.count(("zzz", "1.0.0")) == packsync.GARBLED
    assert fake.fetched.count(("aaa", "1.0.0")) == 1


def test_a_garbled_download_does_not_refuse_the_version_for_good(tmp_path):
    """The receiver names version 1.0.0 by digest; what arrives is not it (a proxy's 200
    error page, a truncated cache entry). The version itself was never looked at, yet it
    is marked refused by its digest and never fetched again (until a restart): the host
    stays behind for good, and the owner is told its (immutable) version is broken when
    the host never saw it. Bytes that are not the named bundle are a transport failure
    (SyncFailed, retried), like an HTTP 502."""
    team, fake = Team(tmp_path), FakeReceiver()
    good = team.bundle("1.0.0")
    fake.put(good)
    fake.bundles[("redis", "1.0.0")] = b"<html>502 bad gateway</html>"
    config = host_config(tmp_path, team, '["redis"]')
    sync = make_sync(config, team, fake)
    first = sync.run_once()
    assert not first.installed
    fake.bundles[("redis", "1.0.0")] = good  # the proxy recovers
    later = [sync.run_once() for _ in range(2)]
    assert any(r.installed == ["redis 1.0.0"] for r in later), (
        f"the version stays refused: {later[-1].standing}; fetched {fake.fetched}"
    )


LOCAL_NGINX = """\
[pack.params]
conf = "/etc/nginx"

[[pattern]]
id = "down"
match = '''^nginx down$'''

[pattern.remedy]
run = ["scripts/fix.sh", "{param.conf}"]

[[pattern.example]]
line = "nginx down"
"""


@pytest.mark.parametrize("value", ["/tmp/team-evil/conf", ["not", "a", "string"]])
def test_another_teams_central_params_never_reach_a_local_pack_of_the_same_name(
    tmp_path, receiver, value
):
    """The host runs its own pack `nginx` (team-web's, in [agent] packs) and also takes
    team-evil's packs (owner:team-evil, its key trusted for team-evil only). team-evil
    publishes a pack it calls `nginx` (the name is free at the receiver: local packs are
    not registered there), one that will not even load here, and sets central params
    for `nginx` on every host. The agent stores them before and regardless of any proof
    (the synced nginx is refused; the local one is never proven with them) and they apply
    to team-web's local pack: its root fix is pointed elsewhere, or with a value of the
    wrong type the local pack stops loading. Params come from the receiver for one
    owner's pack and should only reach that owner's pack (and be proven first)."""
    from agent.receiver.scopes import Scope
    from agent.receiver.store import ReceiverStore
    from tests.test_pack_publish import Team as PublishingTeam
    from tests.test_pack_publish import post

    evil = PublishingTeam(tmp_path / "teams", "team-evil", receiver)
    store = ReceiverStore(receiver.db)
    write = store.create_token(Scope.WRITE, "ci-evil", ("team-evil",))
    store.close()
    path = evil.bundle("nginx", "1.0.0", PACK.replace('line = "queue stuck q1"', 'line = "no"'))
    assert post(receiver, write, path.read_bytes()).status_code == 200
    answer = httpx.put(
        f"{receiver.url}/v1/packs/nginx/params",
        json={"hosts": "*", "params": {"conf": value}},
        headers={"Authorization": f"Bearer {write}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text

    token = tmp_path / "token"
    token.write_text(receiver.token)
    local = tmp_path / "local-packs"
    write_pack(local, "nginx", LOCAL_NGINX, {"fix.sh": "#!/bin/sh\n"}, owner="team-web")
    text = (
        f'[agent]\nhost = "web-1"\nstate_dir = "{tmp_path / "state"}"\npacks = ["{local}"]\n'
        f'[[source]]\npath = "{tmp_path / "app.log"}"\npacks = "*"\n'
        f'[sync]\nurl = "{receiver.url}"\ntoken_file = "{token}"\npacks = ["owner:team-evil"]\n'
        f'trust = ["{evil.public}"]\n'
    )
    config = parse_config(tmp_path / "agent.toml", text)
    packsync.prepare(config)
    transport = packsync.HttpTransport(config.sync, receiver.token)
    trusted = {k.key_id: k for k in load_public(evil.public)}
    sync = PackSync(config, transport, trusted, packsync.prove_here(config))
    try:
        result = sync.run_once()
    finally:
        transport.close()
    assert [r.name for r in result.refused] == ["nginx"] and not result.installed, result
    packs, broken = runnable_packs(config, Memo())  # as the reload that follows loads them
    running = {p.name: p for p in packs}
    assert "nginx" in running, f"team-web's local nginx no longer runs: {broken}"
    assert running["nginx"].owner == "team-web"
    assert running["nginx"].params["conf"] == "/etc/nginx", (
        f"team-evil set team-web's param: {dict(running['nginx'].params)}"
    )


def test_install_service_root_never_writes_through_a_linked_parent_folder(tmp_path):
    """`install-service --root IMAGE` refuses a planted link at the unit file itself, but
    not one a folder higher: IMAGE/etc/systemd/system -> elsewhere (or IMAGE/etc, or
    IMAGE/var/lib) and the units (and state folders, chmod/chown) land outside the image,
    e.g. on the building host's own /etc/systemd/system."""
    import subprocess
    import sys

    root = tmp_path / "image"
    (root / "etc/systemd").mkdir(parents=True)
    outside = tmp_path / "host-systemd"
    outside.mkdir()
    (root / "etc/systemd/system").symlink_to(outside)
    done = subprocess.run(
        [sys.executable, "-m", "agent", "install-service", "--root", str(root)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert not list(outside.iterdir()), f"written outside the image: {list(outside.iterdir())}"
    assert done.returncode == 1 and "link" in done.stderr, done.stdout + done.stderr


def test_a_key_taken_out_of_the_trust_file_is_no_longer_trusted_after_a_reload(tmp_path, receiver):
    """team-cache's signing key leaks; the host's operator replaces it in the trust file
    with the team's new key and reloads (SIGHUP), as for any config change. The reload
    says `reloaded`, but the [sync] section's text did not change (same path), so the
    running PackSync keeps the keys it read at start: whoever holds the revoked key
    publishes, and the host installs and runs it (as root: the pack says user = "root"
    and allow_root names it). The same holds for a rotated sync token_file."""
    import shutil
    import signal as signals

    from agent.signing import generate
    from tests.test_pack_sync import Team as CacheTeam
    from tests.test_pack_sync import host_agent, runs

    team = CacheTeam(tmp_path, receiver)
    team.publish("1.0.0")
    trust = tmp_path / "trusted-team-cache.pub"
    shutil.copy(team.public, trust)
    agent, _ = host_agent(tmp_path, "cache-0", receiver, trust)
    agent.start()
    try:
        assert wait_for(lambda: runs(agent, "1.0.0"), 30), agent.log()
        _, rotated = generate("team-cache", tmp_path / "rotated")  # the team's new key
        shutil.copy(rotated, trust)  # the leaked key is no longer listed
        before = agent.saw("reloaded:")
        assert agent.proc is not None
        agent.proc.send_signal(signals.SIGHUP)
        assert wait_for(lambda: agent.saw("reloaded:") > before, 15), agent.log()
        team.publish("1.1.0")  # signed by the leaked key (still registered at the receiver)
        wait_for(lambda: agent.saw("redis 1.1.0") > 0, 15)
        assert not runs(agent, "1.1.0"), "a version signed by a revoked key was installed"
        assert agent.saw("redis 1.1.0 refused") and "not trusted here" in agent.log()
    finally:
        agent.stop()


def test_a_deeply_nested_manifest_is_a_bundle_error_everywhere(tmp_path, receiver):
    """manifest.json (read before any signature is checked) may be 1 MiB: 200 000 `[`
    make json.loads raise RecursionError, which read() does not turn into a BundleError.
    Any team's write token gets a 500 from POST /v1/packs instead of a 422; a receiver
    (or anyone between) serving it to an agent kills the agent's whole sync pass (every
    pack after it) instead of refusing one version; `pack verify` prints a traceback."""
    from agent.receiver.scopes import Scope
    from agent.receiver.store import ReceiverStore
    from tests.test_pack_publish import post

    hostile = bundle.write(b"[" * 200_000, {}, (), None)
    read_fails = ""
    try:
        bundle.read(hostile, "hostile")
    except bundle.BundleError:
        pass
    except RecursionError:
        read_fails = "read() raised RecursionError, not BundleError"
    else:
        read_fails = "read() took it"
    store = ReceiverStore(receiver.db)
    write = store.create_token(Scope.WRITE, "ci-any", ("team-any",))
    store.close()
    answer = post(receiver, write, hostile)
    assert answer.status_code == 422, f"{answer.status_code} {answer.text[:200]}"
    assert not read_fails, read_fails


def test_a_new_version_is_proven_with_the_host_config_as_reloaded_not_as_started(
    tmp_path, receiver
):
    """The sync proves a new version "as the agent would load it (this host's
    [params.PACK])", but with the Config it was made with: a reload that changes
    agent.toml and not [sync] keeps the old PackSync, so proofs use the config as it was
    at start. Here the operator sets [params.redis] mode (v1 declares it) and reloads;
    v2 no longer declares `mode`. Proven with the stale config, v2 passes, is linked,
    and the reload that follows finds it broken: redis runs in no version at all, where
    the proof exists to keep v1 running and refuse v2."""
    import signal as signals

    from tests.test_pack_sync import PACK as ROOT_REDIS
    from tests.test_pack_sync import Team as CacheTeam
    from tests.test_pack_sync import host_agent, runs

    v1 = ROOT_REDIS.replace("[pack.params]\n", '[pack.params]\nmode = "slow"\n')
    team = CacheTeam(tmp_path, receiver)
    team.publish("1.0.0", v1)
    agent, _ = host_agent(tmp_path, "cache-0", receiver, team.public)
    agent.start()
    try:
        assert wait_for(lambda: runs(agent, "1.0.0"), 30), agent.log()
        text = agent.config.read_text()
        agent.config.write_text(text.replace("[params.redis]\n", '[params.redis]\nmode = "fast"\n'))
        before = agent.saw("reloaded:")
        assert agent.proc is not None
        agent.proc.send_signal(signals.SIGHUP)
        assert wait_for(lambda: agent.saw("reloaded:") > before, 15), agent.log()
        assert runs(agent, "1.0.0")
        team.publish("2.0.0")  # the same pack, without the `mode` param
        assert wait_for(lambda: agent.saw("redis 2.0.0") > 0, 20), agent.log()
        wait_for(lambda: agent.saw("reloaded:") > before + 1, 5)
        assert runs(agent, "1.0.0"), (
            "v2 was linked though it does not load with this host's params; now: "
            + "\n".join(line for line in agent.lines if "redis" in line)[-1500:]
        )
    finally:
        agent.stop()


def test_a_pack_taken_out_of_sync_packs_stops_running(tmp_path):
    """The operator takes `redis` out of [sync] packs (it should no longer run here,
    e.g. its fixes run as root and the host changed role) and reloads: the [sync] change
    makes a new PackSync, which never looks at links it was not asked about. packs/redis
    stays, is loaded at every reload and start, and its fixes go on running for good;
    the only way out is deleting STATE_DIR/packs/redis by hand."""
    team, fake = Team(tmp_path), FakeReceiver()
    fake.put(team.bundle("1.0.0"))
    first = host_config(tmp_path, team, '["redis"]')
    assert make_sync(first, team, fake).run_once().installed == ["redis 1.0.0"]
    fake.put(team.bundle("1.0.0", name="nginx"))
    later = host_config(tmp_path, team, '["nginx"]')  # redis taken out, then SIGHUP
    assert make_sync(later, team, fake).run_once().installed == ["nginx 1.0.0"]
    packs, _ = runnable_packs(later, Memo())
    assert sorted(p.name for p in packs) == ["nginx"], "redis still runs, no longer asked for"
