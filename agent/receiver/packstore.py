"""Pack bundles at the receiver: the teams' signing keys, the versions they publish
(immutable once published), which version each host should run, and which it does.

A pack name belongs to the team that first publishes it. A version is stored
only if its bundle is whole (agent.bundle.read), signed by a key registered here
for the manifest's owner, and that owner is the publishing token's team. A
publication names a share of hosts: 100 makes the version current; less makes it
the candidate that share takes, chosen stably per host (`takes_candidate`), while
the rest keep the current one. A rollback is publishing an earlier version again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import time
from typing import Any

from agent import bundle
from agent.packs import NAME
from agent.params import param_value, valid_name
from agent.receiver.engine import Conn
from agent.receiver.fleet import FleetStore
from agent.receiver.limits import InvalidEvent, name
from agent.receiver.scopes import ANY, Forbidden, Identity, Scope
from agent.receiver.storebase import owned
from agent.signing import PublicKey

MAX_VERSIONS = 200  # per pack: versions are never replaced, so they are bounded
MAX_TEAM_BYTES = 256 * 1024 * 1024  # of bundles, per team
MAX_PACKS = 500  # per team
MAX_KEYS = 20  # per team
MAX_SYNC = 200  # packs named in one sync
MAX_GROUPS = 100  # groups of hosts with params, per pack
MAX_PARAMS = 64  # params per group


class Conflict(Exception):
    """A version published before with other bytes: versions are immutable (409)."""


def takes_candidate(pack: str, host: str, percent: int) -> bool:
    """Whether `host` is in the first `percent` of hosts for `pack`'s candidate: stable
    (the same host, the same answer) and growing (a host in at 10% is in at 50%)."""
    bucket = int.from_bytes(hashlib.sha256(f"{pack}\0{host}".encode()).digest()[:4], "big")
    return bucket % 100 < percent


def publisher_owner(who: Identity, claimed: str) -> str:
    """A team's write token publishes its own team's packs; an admin any team's."""
    if who.scope is Scope.ADMIN or claimed in who.owners:
        return claimed
    raise Forbidden(
        f"the pack's owner is {claimed!r}: token {who.name!r} publishes for"
        f" {', '.join(who.owners) or 'no team'}"
    )


class PackStore(FleetStore):
    """The pack_keys, pack_versions and pack_channels tables (and the hosts' packs, as
    FleetStore records them)."""

    def add_key(self, key: PublicKey) -> bool:
        """Register a team's public key (the receiver's own command, not a route); False
        if it was there already."""

        def add(db: Conn) -> bool:
            row = db.execute("SELECT owner FROM pack_keys WHERE key_id=?", (key.key_id,)).fetchone()
            if row is not None:
                if row["owner"] != key.owner:
                    raise Forbidden(f"key {key.key_id} is registered for {row['owner']}")
                return False
            held = db.execute(
                "SELECT count(*) AS n FROM pack_keys WHERE owner=?", (key.owner,)
            ).fetchone()["n"]
            if held >= MAX_KEYS:
                raise InvalidEvent(f"a team registers at most {MAX_KEYS} keys")
            db.execute(
                "INSERT INTO pack_keys VALUES (?,?,?,?)",
                (key.key_id, key.owner, key.line().strip(), time.time()),
            )
            return True

        return self._engine.write(add)

    def keys(self, owners: tuple[str, ...] | None) -> list[dict[str, Any]]:
        where, args = owned(owners)
        with self._engine.read() as db:
            rows = db.execute(
                f"SELECT key_id, owner, line, added FROM pack_keys {where} ORDER BY owner, added",  # noqa: S608
                args,
            ).fetchall()
        return [dict(r) for r in rows]

    def publish(self, who: Identity, data: bytes, percent: int) -> dict[str, Any]:
        """Store a bundle (if new) and make it current (100) or the candidate of
        `percent` of hosts. Raises InvalidEvent (not a good bundle), Forbidden (not
        this team's pack or key) or Conflict (the version exists with other bytes)."""
        try:
            found = bundle.read(data, "the bundle")
        except bundle.BundleError as exc:
            raise InvalidEvent(str(exc)) from None
        manifest = found.manifest
        owner = publisher_owner(who, manifest.owner)
        if found.signature is None:
            raise InvalidEvent(f"{manifest.label} is not signed (logmend pack sign)")
        now = time.time()

        def put(db: Conn) -> dict[str, Any]:
            assert found.signature is not None
            row = db.execute(
                "SELECT owner, line FROM pack_keys WHERE key_id=?", (found.signature.key_id,)
            ).fetchone()
            if row is None or row["owner"] != owner:
                raise Forbidden(
                    f"{manifest.label} is signed by key {found.signature.key_id}, which is not"
                    f" registered for {owner} (logmend receiver key add)"
                )
            try:
                bundle.verify(found, _keys_of([row["line"]]), "the bundle")
            except bundle.BundleError as exc:
                raise InvalidEvent(str(exc)) from None
            channel = db.execute(
                "SELECT owner FROM pack_channels WHERE pack=?", (manifest.name,)
            ).fetchone()
            if channel is not None and channel["owner"] != owner:
                raise Forbidden(f"pack {manifest.name!r} belongs to {channel['owner']}")
            same = db.execute(
                "SELECT digest FROM pack_versions WHERE pack=? AND version=?",
                (manifest.name, manifest.version),
            ).fetchone()
            if same is not None and same["digest"] != found.digest():
                raise Conflict(
                    f"{manifest.name} {manifest.version} was published with other contents;"
                    " versions are immutable: give this one a new version"
                )
            if same is None:  # a new version (and, with no channel yet, a new pack)
                _bounded(db, owner, manifest.name, channel is None, len(data))
            if channel is None:  # a first publication: the name is this team's from now
                db.execute(
                    "INSERT INTO pack_channels VALUES (?,?,NULL,NULL,0,?)"
                    " ON CONFLICT (pack) DO NOTHING",
                    (manifest.name, owner, now),
                )
                claimed = db.execute(  # another receiver may have claimed it meanwhile
                    "SELECT owner FROM pack_channels WHERE pack=?", (manifest.name,)
                ).fetchone()
                if claimed["owner"] != owner:
                    raise Forbidden(f"pack {manifest.name!r} belongs to {claimed['owner']}")
            if same is None:
                stored = db.execute(
                    "INSERT INTO pack_versions VALUES (?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (pack, version) DO NOTHING",
                    (manifest.name, manifest.version, owner, found.digest(),
                     found.signature.key_id, len(data), data, now),
                ).rowcount  # fmt: skip
                if not stored:  # published at the same moment through another receiver
                    again = db.execute(
                        "SELECT digest FROM pack_versions WHERE pack=? AND version=?",
                        (manifest.name, manifest.version),
                    ).fetchone()
                    if again["digest"] != found.digest():
                        raise Conflict(
                            f"{manifest.name} {manifest.version} was published with other"
                            " contents; versions are immutable: give this one a new version"
                        )
                    same = again
            if percent >= 100:
                db.execute(
                    "UPDATE pack_channels SET current=?, candidate=NULL, percent=0, updated=?"
                    " WHERE pack=?",
                    (manifest.version, now, manifest.name),
                )
            else:
                db.execute(
                    "UPDATE pack_channels SET candidate=?, percent=?, updated=? WHERE pack=?",
                    (manifest.version, percent, now, manifest.name),
                )
            return {
                "pack": manifest.name,
                "version": manifest.version,
                "owner": owner,
                "digest": found.digest(),
                "percent": min(percent, 100),
                "new": same is None,
            }

        return self._engine.write(put)

    def set_params(self, who: Identity, pack: str, hosts: str, params: dict[str, Any]) -> None:
        """A group of hosts' values for a pack's params (empty: the group's are removed);
        only the pack's team (or an admin). Raises Forbidden, InvalidEvent."""

        def put(db: Conn) -> None:
            row = db.execute("SELECT owner FROM pack_channels WHERE pack=?", (pack,)).fetchone()
            if row is None or not (who.scope is Scope.ADMIN or row["owner"] in who.owners):
                raise Forbidden(f"no pack {pack!r} of this team")  # another's is as absent
            if not params:
                db.execute("DELETE FROM pack_params WHERE pack=? AND hosts=?", (pack, hosts))
                return
            held = db.execute(
                "SELECT count(*) AS n FROM pack_params WHERE pack=? AND hosts<>?", (pack, hosts)
            ).fetchone()["n"]
            if held >= MAX_GROUPS:
                raise InvalidEvent(f"a pack has params for at most {MAX_GROUPS} groups of hosts")
            db.execute(
                "INSERT INTO pack_params VALUES (?,?,?,?,?) ON CONFLICT (pack, hosts) DO UPDATE"
                " SET params=excluded.params, updated=excluded.updated",
                (pack, hosts, row["owner"], json.dumps(params, sort_keys=True), time.time()),
            )

        self._engine.write(put)

    def packs(self, owners: tuple[str, ...] | None) -> list[dict[str, Any]]:
        """Each pack of `owners` (None: all): its channel, its versions, and per version
        the hosts heard running it."""
        where, args = owned(owners, column="c.owner")
        with self._engine.read() as db:
            channels = db.execute(
                f"SELECT * FROM pack_channels c {where} ORDER BY c.owner, c.pack",  # noqa: S608
                args,
            ).fetchall()
            versions = db.execute(
                "SELECT v.pack, v.version, v.digest, v.key_id, v.size, v.published"  # noqa: S608
                f" FROM pack_versions v JOIN pack_channels c ON c.pack = v.pack {where}"
                " ORDER BY v.pack, v.published",
                args,
            ).fetchall()
            hosts = db.execute(
                f"SELECT h.host, h.packs FROM hosts h {owned(owners, column='h.owner')[0]}",  # noqa: S608
                args,
            ).fetchall()
            of_owners = owned(owners, column="p.owner")[0]
            params = db.execute(
                f"SELECT p.pack, p.hosts, p.params FROM pack_params p {of_owners}"  # noqa: S608
                " ORDER BY p.pack, p.hosts",
                args,
            ).fetchall()
        running: dict[tuple[str, str], set[str]] = {}
        for h in hosts:
            for pack, version in json.loads(h["packs"]).items():
                running.setdefault((pack, version), set()).add(h["host"])
        groups: dict[str, dict[str, Any]] = {}
        for g in params:
            groups.setdefault(g["pack"], {})[g["hosts"]] = json.loads(g["params"])
        by_pack: dict[str, list[dict[str, Any]]] = {}
        for v in versions:
            item = dict(v)
            item["hosts"] = sorted(running.get((v["pack"], v["version"]), ()))
            by_pack.setdefault(v["pack"], []).append(item)
        return [
            {**dict(c), "versions": by_pack.get(c["pack"], []), "params": groups.get(c["pack"], {})}
            for c in channels
        ]

    def bundle_of(self, who: Identity, pack: str, version: str) -> bytes | None:
        """A version's bundle, if the caller may have it: its team, an admin, or an agent
        whose token reports for the pack's owner. Another team's is as absent as none."""
        with self._engine.read() as db:
            row = db.execute(
                "SELECT owner, bundle FROM pack_versions WHERE pack=? AND version=?",
                (pack, version),
            ).fetchone()
        if row is None or not _may_fetch(who, row["owner"]):
            return None
        return bytes(row["bundle"])

    def sync(
        self, who: Identity, host: str, wanted: list[str], running: dict[str, str]
    ) -> list[dict[str, Any]]:
        """For an agent: the version of each wanted pack (a name, or `owner:TEAM` for all
        of a team's) this host should run; and what it runs, recorded for the console."""
        who.check_host(host, "host")
        names = [w for w in wanted if not w.startswith("owner:")] or [""]
        teams = [w[len("owner:") :] for w in wanted if w.startswith("owner:")] or [""]
        with self._engine.read() as db:
            rows = db.execute(
                "SELECT c.pack, c.owner, c.current, c.candidate, c.percent,"  # noqa: S608
                " v.digest AS current_digest, w.digest AS candidate_digest"
                " FROM pack_channels c"
                " LEFT JOIN pack_versions v ON v.pack = c.pack AND v.version = c.current"
                " LEFT JOIN pack_versions w ON w.pack = c.pack AND w.version = c.candidate"
                f" WHERE c.pack IN ({','.join('?' * len(names))})"
                f" OR c.owner IN ({','.join('?' * len(teams))}) ORDER BY c.pack",
                [*names, *teams],
            ).fetchall()
        with self._engine.read() as db:
            marks = ",".join("?" * len(rows)) or "''"
            groups = db.execute(
                f"SELECT pack, hosts, params FROM pack_params WHERE pack IN ({marks})",  # noqa: S608
                [c["pack"] for c in rows],
            ).fetchall()
        answer = {}
        for c in rows:
            if not _may_fetch(who, c["owner"]):
                continue
            version, digest = c["current"], c["current_digest"]
            if c["candidate"] and takes_candidate(c["pack"], host, c["percent"]):
                version, digest = c["candidate"], c["candidate_digest"]
            if version:
                answer[c["pack"]] = {
                    "name": c["pack"],
                    "owner": c["owner"],
                    "version": version,
                    "digest": digest,
                    "params": params_for(host, [g for g in groups if g["pack"] == c["pack"]]),
                }
        heard: dict[tuple[str, str], dict[str, str]] = {}
        owners = {c["pack"]: c["owner"] for c in rows}
        for pack, version in running.items():
            if pack in owners and _may_fetch(who, owners[pack]):
                heard.setdefault((owners[pack], host), {})[pack] = version
        if heard:
            now = time.time()
            self._engine.write(lambda db: self._heard(db, heard, who.name, "", now))
        return [answer[name] for name in sorted(answer)]


def params_for(host: str, groups: list[Any]) -> dict[str, Any]:
    """The values of every group whose host pattern matches `host`; a longer (more
    specific) pattern's win over a shorter one's, `*` weakest."""
    merged: dict[str, Any] = {}
    for g in sorted(groups, key=lambda g: (len(g["hosts"]), g["hosts"])):
        if fnmatch.fnmatchcase(host, g["hosts"]):
            merged.update(json.loads(g["params"]))
    return merged


def params_request(doc: Any) -> tuple[str, dict[str, Any]]:
    """{"hosts": PATTERN, "params": {NAME: "text" | ["text", ...]}}, checked."""
    if not isinstance(doc, dict):
        raise InvalidEvent("params: an object with hosts and params")
    hosts = name(doc.get("hosts"), "hosts", 128)
    params = doc.get("params")
    if not isinstance(params, dict) or len(params) > MAX_PARAMS:
        raise InvalidEvent(f"params: an object of at most {MAX_PARAMS} names")
    for key, value in params.items():
        _, problem = param_value(value)
        if not valid_name(key):
            raise InvalidEvent(f"params.{key[:64]!r}: lower case letters, digits and _")
        if problem:
            raise InvalidEvent(f"params.{key}: {problem}")
        items = [value] if isinstance(value, str) else value
        if len(items) > 64 or any(len(i) > 4096 for i in items):
            raise InvalidEvent(f"params.{key}: at most 64 items of 4 KiB")
    return hosts, params


def sync_request(doc: Any) -> tuple[str, list[str], dict[str, str]]:
    """An agent's sync, checked: (host, wanted, running); raises InvalidEvent naming
    the field."""
    if not isinstance(doc, dict):
        raise InvalidEvent("a sync is an object: host, packs, running")
    host = name(doc.get("host"), "host")
    wanted = doc.get("packs")
    if not isinstance(wanted, list) or not 1 <= len(wanted) <= MAX_SYNC:
        raise InvalidEvent(f"packs: a list of 1 to {MAX_SYNC} pack names or owner:TEAM")
    for n, item in enumerate(wanted):
        if not isinstance(item, str) or not NAME.fullmatch(item.removeprefix("owner:")):
            raise InvalidEvent(f"packs[{n}]: a pack name or owner:TEAM")
    running = doc.get("running", {})
    if not isinstance(running, dict) or len(running) > MAX_SYNC:
        raise InvalidEvent(f"running: an object of at most {MAX_SYNC} pack: version")
    for pack, version in running.items():
        if not (isinstance(version, str) and NAME.fullmatch(pack) and NAME.fullmatch(version)):
            raise InvalidEvent(f"running.{pack[:64]!r}: a pack name and its version")
    return host, list(wanted), dict(running)


def _may_fetch(who: Identity, owner: str) -> bool:
    if who.scope is Scope.ADMIN:
        return True
    return owner in who.owners or (who.scope is Scope.INGEST and ANY in who.owners)


def _keys_of(lines: list[str]) -> dict[str, PublicKey]:
    import base64

    keys = {}
    for line in lines:
        _, raw, owner = line.split()
        key = PublicKey(base64.b64decode(raw), owner)
        keys[key.key_id] = key
    return keys


def _bounded(db: Conn, owner: str, pack: str, new_pack: bool, size: int) -> None:
    """A team's packs, a pack's versions and a team's bytes are bounded: no token wears
    the store down."""
    held_bytes = db.execute(
        "SELECT coalesce(sum(size), 0) AS n FROM pack_versions WHERE owner=?", (owner,)
    ).fetchone()["n"]
    if held_bytes + size > MAX_TEAM_BYTES:
        raise InvalidEvent(f"a team keeps at most {MAX_TEAM_BYTES} bytes of bundles")
    if new_pack:
        held = db.execute(
            "SELECT count(*) AS n FROM pack_channels WHERE owner=?", (owner,)
        ).fetchone()["n"]
        if held >= MAX_PACKS:
            raise InvalidEvent(f"a team publishes at most {MAX_PACKS} packs")
    held = db.execute("SELECT count(*) AS n FROM pack_versions WHERE pack=?", (pack,)).fetchone()[
        "n"
    ]
    if held >= MAX_VERSIONS:
        raise InvalidEvent(f"a pack keeps at most {MAX_VERSIONS} versions")
