"""Issue 18, item 2: the receiver stores signed pack bundles, per team, immutable, and
says which version each host should run (all, or a stable share while a version
rolls out). The real receiver on loopback, on SQLite and PostgreSQL; the real CLI
for keys and publishing; another team's tokens and hostile bodies as the attacker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import bundle
from agent.receiver.packstore import takes_candidate
from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore
from agent.signing import generate, load_private, sign
from tests.helpers import Receiver, write_pack

pytestmark = pytest.mark.usefixtures("engine")  # on SQLite and on PostgreSQL

PACK = """\
[[pattern]]
id = "stuck"
match = '''^queue stuck (?P<q>\\w+)$'''

[[pattern.example]]
line = "queue stuck q1"
"""


def tokens(receiver: Receiver) -> dict[str, str]:
    store = ReceiverStore(receiver.db)
    try:
        return {
            "write-cache": store.create_token(Scope.WRITE, "ci-cache", ("team-cache",)),
            "read-cache": store.create_token(Scope.READ, "cache", ("team-cache",)),
            "write-web": store.create_token(Scope.WRITE, "ci-web", ("team-web",)),
            "read-web": store.create_token(Scope.READ, "web", ("team-web",)),
            "agent": store.create_token(Scope.INGEST, "hosts", ("*",), ("*",)),
            "agent-web": store.create_token(Scope.INGEST, "web-hosts", ("team-web",), ("web-*",)),
        }
    finally:
        store.close()


def logmend(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60
    )


class Team:
    """A team's key (registered at the receiver with the real command) and bundles."""

    def __init__(self, root: Path, owner: str, receiver: Receiver, register: bool = True):
        self.root, self.owner = root / owner, owner
        self.root.mkdir(parents=True)
        private, self.public = generate(owner, self.root / "key")
        self.key = load_private(private)
        if register:
            done = logmend("receiver", "key", "add", str(self.public), "--db", str(receiver.db))
            assert done.returncode == 0 and "added" in done.stdout, done.stderr

    def bundle(self, name: str, version: str, body: str = PACK, owner: str = "") -> Path:
        folder = write_pack(self.root / version, name, body, owner=owner or self.owner)
        toml = folder / "pack.toml"
        toml.write_text(toml.read_text().replace('version = "1.2.3"', f'version = "{version}"'))
        found = bundle.read(bundle.build(folder, name, version, owner or self.owner, "0.1.0"), "b")
        path = self.root / f"{name}-{version}.lmpack"
        path.write_bytes(bundle.signed(found, sign(self.key, found.manifest_bytes)))
        return path

    def published(self, receiver: Receiver, token: str, name: str, version: str) -> Path:
        path = self.bundle(name, version)
        answer = post(receiver, token, path.read_bytes())
        assert answer.status_code == 200, answer.text
        return path


def publish(receiver: Receiver, path: Path, token: str, tmp_path: Path, percent: int = 100):
    token_file = tmp_path / "token"
    token_file.write_text(token)
    return logmend("pack", "publish", str(path), "--url", receiver.url, "--token-file",
                   str(token_file), "--percent", str(percent))  # fmt: skip


def post(receiver: Receiver, token: str, data: bytes, percent: str = "100") -> httpx.Response:
    return httpx.post(
        f"{receiver.url}/v1/packs",
        params={"percent": percent},
        content=data,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def sync(receiver: Receiver, token: str, host: str, packs: list[str], **running: str) -> Any:
    return httpx.post(
        f"{receiver.url}/v1/packs/sync",
        json={"host": host, "packs": packs, "running": running},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def fetch(receiver: Receiver, token: str, name: str, version: str) -> httpx.Response:
    return httpx.get(
        f"{receiver.url}/v1/packs/{name}/{version}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def listing(receiver: Receiver, token: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{receiver.url}/v1/packs", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    packs: list[dict[str, Any]] = answer.json()["packs"]
    return packs


def test_a_team_publishes_a_signed_bundle_and_its_hosts_get_it(tmp_path, receiver):
    t = tokens(receiver)
    cache = Team(tmp_path, "team-cache", receiver)
    v1 = cache.bundle("redis", "1.0.0")
    done = publish(receiver, v1, t["write-cache"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "redis 1.0.0 (owner team-cache) published; current for every host" in done.stdout
    answer = sync(receiver, t["agent"], "cache-1", ["redis"])
    assert answer.status_code == 200, answer.text
    [wanted] = answer.json()["packs"]
    assert (wanted["name"], wanted["version"], wanted["owner"]) == ("redis", "1.0.0", "team-cache")
    got = fetch(receiver, t["agent"], "redis", "1.0.0")
    assert got.status_code == 200 and got.content == v1.read_bytes()
    assert bundle.read(got.content, "b").digest() == wanted["digest"]
    assert fetch(receiver, t["read-cache"], "redis", "1.0.0").status_code == 200
    again = publish(receiver, v1, t["write-cache"], tmp_path)  # the same bytes: nothing new
    assert again.returncode == 0 and "already there" in again.stdout
    # the host says what it runs; the team sees it per version
    assert (
        sync(receiver, t["agent"], "cache-1", ["owner:team-cache"], redis="1.0.0").status_code
        == 200
    )
    [pack] = listing(receiver, t["read-cache"])
    assert pack["current"] == "1.0.0" and pack["candidate"] is None
    assert [(v["version"], v["hosts"]) for v in pack["versions"]] == [("1.0.0", ["cache-1"])]


def test_versions_are_immutable_and_names_belong_to_one_team(tmp_path, receiver):
    t = tokens(receiver)
    cache = Team(tmp_path, "team-cache", receiver)
    web = Team(tmp_path, "team-web", receiver)
    cache.published(receiver, t["write-cache"], "redis", "1.0.0")
    changed = cache.bundle("redis", "1.0.0", PACK.replace("q1", "q2"))
    answer = post(receiver, t["write-cache"], changed.read_bytes())
    assert answer.status_code == 409 and "versions are immutable" in answer.text
    squat = web.bundle("redis", "2.0.0")  # team-web's own key, its own owner, cache's name
    answer = post(receiver, t["write-web"], squat.read_bytes())
    assert answer.status_code == 403 and "belongs to team-cache" in answer.text
    assert fetch(receiver, t["agent"], "redis", "2.0.0").status_code == 404


def test_only_the_owners_token_and_a_key_registered_for_the_owner_publish(tmp_path, receiver):
    t = tokens(receiver)
    cache = Team(tmp_path, "team-cache", receiver)
    web = Team(tmp_path, "team-web", receiver)
    stray = Team(tmp_path, "team-stray", receiver, register=False)
    v1 = cache.bundle("redis", "1.0.0")
    cases = [
        (t["write-web"], v1, 403, "publishes for team-web"),  # another team's token
        (t["agent"], v1, 403, "may not write"),  # a host's token
        (t["read-cache"], v1, 403, "may not write"),
        # signed by team-web's (registered) key, but the pack is team-cache's
        (t["write-cache"], web.bundle("redis", "1.1.0", owner="team-cache"), 403,
         "not registered for team-cache"),
        # a key nobody registered
        (t["write-cache"], stray.bundle("redis", "1.2.0", owner="team-cache"), 403,
         "not registered for team-cache"),
    ]  # fmt: skip
    for token, path, status, words in cases:
        answer = post(receiver, token, path.read_bytes())
        assert (answer.status_code, words in answer.text) == (status, True), answer.text
    unsigned = bundle.build(
        write_pack(tmp_path / "u", "redis", PACK, owner="team-cache"),
        "redis", "1.3.0", "team-cache", "0.1.0",
    )  # fmt: skip
    answer = post(receiver, t["write-cache"], unsigned)
    assert answer.status_code == 422 and "is not signed" in answer.text
    tampered = bytearray(v1.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF
    assert post(receiver, t["write-cache"], bytes(tampered)).status_code == 422
    assert post(receiver, t["write-cache"], b"not a bundle").status_code == 422
    assert listing(receiver, t["read-cache"]) == []  # none of it was stored


def test_a_share_of_hosts_takes_the_candidate_stably_and_a_rollback_reaches_all(tmp_path, receiver):
    t = tokens(receiver)
    cache = Team(tmp_path, "team-cache", receiver)
    cache.published(receiver, t["write-cache"], "redis", "1.0.0")
    v2 = cache.bundle("redis", "2.0.0")
    done = publish(receiver, v2, t["write-cache"], tmp_path, percent=50)
    assert done.returncode == 0 and "50% of hosts" in done.stdout, done.stderr
    hosts = [f"host-{n}" for n in range(40)]

    def versions() -> dict[str, str]:
        return {
            h: sync(receiver, t["agent"], h, ["redis"]).json()["packs"][0]["version"] for h in hosts
        }

    first = versions()
    taking = sorted(h for h, v in first.items() if v == "2.0.0")
    assert 10 <= len(taking) <= 30  # about half
    assert taking == sorted(h for h in hosts if takes_candidate("redis", h, 50))
    assert versions() == first  # stable
    grown = post(receiver, t["write-cache"], v2.read_bytes(), percent="80")
    assert grown.status_code == 200
    assert set(taking) <= {h for h, v in versions().items() if v == "2.0.0"}  # no one leaves
    # v2 misbehaves: publish v1 as current again; every host follows
    rollback = post(receiver, t["write-cache"], cache.bundle("redis", "1.0.0").read_bytes())
    assert rollback.status_code == 200 and rollback.json()["new"] is False
    assert set(versions().values()) == {"1.0.0"}


def test_no_team_sees_or_fetches_another_teams_packs(tmp_path, receiver):
    t = tokens(receiver)
    cache = Team(tmp_path, "team-cache", receiver)
    cache.published(receiver, t["write-cache"], "redis", "1.0.0")
    assert listing(receiver, t["read-web"]) == []
    assert fetch(receiver, t["read-web"], "redis", "1.0.0").status_code == 404
    assert fetch(receiver, t["agent-web"], "redis", "1.0.0").status_code == 404
    answer = sync(receiver, t["agent-web"], "web-1", ["redis", "owner:team-cache"])
    assert answer.status_code == 200 and answer.json() == {"packs": []}
    answer = sync(receiver, t["agent-web"], "db-1", ["redis"])  # not one of its hosts
    assert answer.status_code == 403
    # a host cannot claim to run another team's pack into that team's console
    sync(receiver, t["agent-web"], "web-1", ["redis"], redis="6.6.6")
    [pack] = listing(receiver, t["read-cache"])
    assert all(v["hosts"] == [] for v in pack["versions"])
    assert fetch(receiver, "no-such-token", "redis", "1.0.0").status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"host": "h", "packs": []},
        {"host": "h", "packs": ["x"] * 201},
        {"host": "h", "packs": ["../x"]},
        {"host": "h", "packs": [3]},
        {"host": "h\x00", "packs": ["x"]},
        {"host": "h", "packs": ["x"], "running": {"x": 1}},
        {"host": "h", "packs": ["x"], "running": {f"p{n}": "1" for n in range(201)}},
    ],
)
def test_a_malformed_sync_is_refused_naming_the_field(receiver, body):
    t = tokens(receiver)
    answer = httpx.post(
        f"{receiver.url}/v1/packs/sync",
        json=body,
        headers={"Authorization": f"Bearer {t['agent']}"},
        timeout=10,
    )
    assert answer.status_code in (400, 422), answer.text


def test_absurd_shares_paths_and_sizes_are_refused(tmp_path, receiver):
    t = tokens(receiver)
    cache = Team(tmp_path, "team-cache", receiver)
    data = cache.bundle("redis", "1.0.0").read_bytes()
    for percent in ("0", "101", "-5", "50.5", "all", "١٠"):
        assert post(receiver, t["write-cache"], data, percent).status_code == 400, percent
    assert post(receiver, t["write-cache"], b"\0" * (5 * 1024 * 1024)).status_code == 413
    for name, version in (("..", "1"), ("redis", "1.0.0%00"), ("a" * 300, "1")):
        assert fetch(receiver, t["agent"], name, version).status_code == 404


@pytest.mark.engines("postgresql")
def test_published_bundles_and_keys_move_to_postgresql_byte_for_byte(tmp_path, pg_cluster):
    lite = tmp_path / "receiver.db"
    store = ReceiverStore(lite)
    write = store.create_token(Scope.WRITE, "ci-cache", ("team-cache",))
    agent = store.create_token(Scope.INGEST, "hosts", ("*",), ("*",))
    store.close()
    served = Receiver(db=lite, token=agent, admin="").start()
    cache = Team(tmp_path, "team-cache", served)
    v1 = cache.bundle("redis", "1.0.0")
    assert post(served, write, v1.read_bytes()).status_code == 200
    served.stop()
    url = pg_cluster.new_database()
    moved = logmend("receiver", "migrate", "--from", str(lite), "--to", url)
    assert moved.returncode == 0, moved.stderr
    assert "pack_versions: 1 row(s)" in moved.stdout
    moved_to = Receiver(db=url, token=agent, admin="").start()
    assert fetch(moved_to, agent, "redis", "1.0.0").content == v1.read_bytes()
    v2 = cache.bundle("redis", "2.0.0")  # the key moved too: the team goes on publishing
    assert post(moved_to, write, v2.read_bytes()).status_code == 200
    assert sync(moved_to, agent, "h", ["redis"]).json()["packs"][0]["version"] == "2.0.0"
    moved_to.stop()


def test_the_console_lists_versions_and_the_hosts_on_each_escaped_and_per_team(tmp_path, receiver):
    t = tokens(receiver)
    cache = Team(tmp_path, "team-cache", receiver)
    cache.published(receiver, t["write-cache"], "redis", "1.0.0")
    assert (
        post(
            receiver, t["write-cache"], cache.bundle("redis", "2.0.0").read_bytes(), "25"
        ).status_code
        == 200
    )
    hostile = '<img src=x onerror="alert(1)">'
    for host, version in (("cache-1", "1.0.0"), ("cache-2", "2.0.0"), (hostile, "1.0.0")):
        assert sync(receiver, t["agent"], host, ["redis"], redis=version).status_code == 200

    def page(token: str) -> str:
        answer = httpx.get(
            f"{receiver.url}/packs", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        return answer.text

    shown = page(t["read-cache"])
    assert 'id="pack-redis"' in shown and 'class="current">1.0.0<' in shown
    assert 'class="candidate">2.0.0</strong> for 25% of hosts' in shown
    one = shown[shown.index('data-version="1.0.0"') :]
    two = shown[shown.index('data-version="2.0.0"') : shown.index('data-version="1.0.0"')]
    row_one = one.split("</tr>")[0]
    assert 'class="hosts">2: ' in row_one and "cache-1" in row_one and "cache-2" not in row_one
    assert 'class="hosts">1: cache-2<' in two
    assert hostile not in shown and "&lt;img src=x onerror=" in shown
    assert 'id="pack-redis"' not in page(t["read-web"]) and 'id="empty"' in page(t["read-web"])


def put_params(receiver: Receiver, token: str, pack: str, body: Any) -> httpx.Response:
    return httpx.put(
        f"{receiver.url}/v1/packs/{pack}/params",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_a_team_sets_params_per_group_of_hosts_and_each_host_gets_its_own(tmp_path, receiver):
    t = tokens(receiver)
    cache = Team(tmp_path, "team-cache", receiver)
    cache.published(receiver, t["write-cache"], "redis", "1.0.0")
    for hosts, params in (
        ("*", {"out": "/var/tmp/all", "dirs": ["/a", "/b"]}),
        ("cache-*", {"out": "/var/tmp/cache"}),
        ("cache-eu-*", {"out": "/var/tmp/eu"}),
    ):
        answer = put_params(receiver, t["write-cache"], "redis", {"hosts": hosts, "params": params})
        assert answer.status_code == 200, answer.text

    def params(host: str) -> dict[str, Any]:
        found: dict[str, Any] = sync(receiver, t["agent"], host, ["redis"]).json()["packs"][0][
            "params"
        ]
        return found

    assert params("web-1") == {"out": "/var/tmp/all", "dirs": ["/a", "/b"]}
    assert params("cache-1") == {"out": "/var/tmp/cache", "dirs": ["/a", "/b"]}
    assert params("cache-eu-1") == {"out": "/var/tmp/eu", "dirs": ["/a", "/b"]}  # most specific
    [pack] = listing(receiver, t["read-cache"])
    assert set(pack["params"]) == {"*", "cache-*", "cache-eu-*"}
    assert (
        put_params(
            receiver, t["write-cache"], "redis", {"hosts": "cache-*", "params": {}}
        ).status_code
        == 200
    )
    assert params("cache-1")["out"] == "/var/tmp/all"  # the group's values removed


@pytest.mark.parametrize(
    ("token_key", "body", "status"),
    [
        ("write-web", {"hosts": "*", "params": {"out": "/x"}}, 404),  # another team's pack
        ("agent", {"hosts": "*", "params": {"out": "/x"}}, 403),  # a host's token
        ("read-cache", {"hosts": "*", "params": {"out": "/x"}}, 403),
        ("write-cache", {"hosts": "*", "params": {"Out": "/x"}}, 422),
        ("write-cache", {"hosts": "*", "params": {"out": "/x\n/y"}}, 422),
        ("write-cache", {"hosts": "*", "params": {"out": 3}}, 422),
        ("write-cache", {"hosts": "*", "params": {"out": ["x"] * 65}}, 422),
        ("write-cache", {"hosts": "*", "params": {f"p{n}": "x" for n in range(65)}}, 422),
        ("write-cache", {"hosts": "a\x00b", "params": {"out": "/x"}}, 422),
        ("write-cache", ["not", "an", "object"], 422),
    ],
)
def test_params_from_others_or_out_of_bounds_are_refused(
    tmp_path, receiver, token_key, body, status
):
    t = tokens(receiver)
    cache = Team(tmp_path, "team-cache", receiver)
    cache.published(receiver, t["write-cache"], "redis", "1.0.0")
    answer = put_params(receiver, t[token_key], "redis", body)
    assert answer.status_code == status, answer.text
    assert sync(receiver, t["agent"], "h", ["redis"]).json()["packs"][0]["params"] == {}


def test_a_pack_name_in_the_path_that_is_no_pack_name_finds_nothing(tmp_path, receiver):
    t = tokens(receiver)
    Team(tmp_path, "team-cache", receiver).published(receiver, t["write-cache"], "redis", "1.0.0")
    for name in ("<script>x", "redis%00", "a" * 300, "red is"):
        answer = put_params(receiver, t["write-cache"], name, {"hosts": "*", "params": {"o": "x"}})
        assert answer.status_code == 404, (name, answer.text)
        assert "<script>" not in answer.text
