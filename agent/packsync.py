"""Packs from the receiver: asked for, fetched, verified, proven on this host, and
swapped in whole; or refused, with the last good version left running.

Under the state directory:

    packs/NAME -> ../pack-versions/DIGEST/pack   one link per synced pack (a pack root)
    pack-versions/DIGEST/manifest.json           what the bundle said (name, version...)
    pack-versions/DIGEST/pack/                   the pack, complete before a link names it
    pack-versions/.incoming-*                    an unpack under way (removed at start)

A swap is the rename of a new link over the old one: killed at any moment, the
agent restarts on the old link or the new one, each naming a whole folder. The
agent then reloads as on SIGHUP (agent/daemon.py), which proves every pack again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent import bundle
from agent.atomic import write_atomically
from agent.config import Config, Sync
from agent.errors import ConfigError, ConfigErrors, LogmendError
from agent.packset import BrokenPack
from agent.params import HostParams, param_value, valid_name, valid_pack_name
from agent.signing import PublicKey

log = logging.getLogger("logmend")

MAX_ANSWER = 1024 * 1024  # a sync's JSON answer
KEEP_VERSIONS = 2  # per pack: the running one and the one before (a quick way back)
PARAMS_FILE = "pack-params.json"  # the central values of params, as last synced
GARBLED = 3  # fetches in a row that are not the named bundle before it is refused
RETRY = 5.0  # seconds before asking a receiver that could not be asked again (doubling)


class SyncFailed(LogmendError):
    """The receiver could not be asked (down, refused, garbled): nothing changes here."""


class Transport(Protocol):
    """The receiver, as the sync sees it (agent.packsync.HttpTransport, or a fake)."""

    def wanted(
        self, host: str, packs: list[str], running: dict[str, str]
    ) -> list[dict[str, Any]]: ...

    def fetch(self, name: str, version: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    name: str
    owner: str
    version: str
    reasons: tuple[str, ...]


@dataclass
class SyncResult:
    installed: list[str] = field(default_factory=list)  # "NAME VERSION"
    refused: list[Refusal] = field(default_factory=list)  # newly: to report
    standing: list[Refusal] = field(default_factory=list)  # every version refused still wanted
    failed: str = ""  # the receiver could not be asked; nothing changed
    params_changed: bool = False  # the central values of some pack's params
    removed: list[str] = field(default_factory=list)  # packs no longer taken here

    @property
    def reload(self) -> bool:
        return bool(self.installed or self.params_changed or self.removed)

    def to_json(self) -> dict[str, Any]:
        return {
            "installed": self.installed,
            "refused": [
                {"pack": r.name, "version": r.version, "reason": r.reasons[0] if r.reasons else ""}
                for r in self.standing
            ],
            "failed": self.failed,
        }


# a pack folder (and central values of params to try, else the stored ones) -> why it
# may not run here
Prove = Callable[[Path, "dict[str, dict[str, Any]] | None"], list[str]]


class PackSync:
    """One host's synced packs: `run_once` brings them to what the receiver says."""

    def __init__(
        self,
        config: Config,
        transport: Transport,
        trusted: dict[str, PublicKey],
        prove: Prove,
        in_use: Callable[[], set[Path]] | None = None,
    ) -> None:
        assert config.sync is not None
        self.sync: Sync = config.sync
        self.host = config.host
        self.links = config.synced_packs
        self.store = config.state_dir / "pack-versions"
        self.local_roots = config.packs
        self.transport = transport
        self.trusted = trusted
        self.prove = prove
        self.in_use: Callable[[], set[Path]] = in_use or set  # folders the agent runs
        self.refused: dict[str, Refusal] = {}  # by digest (or pinned name@version)
        self.garbled: dict[str, int] = {}  # fetches in a row that were not the bundle

    def running(self) -> dict[str, dict[str, str]]:
        """Each synced pack's manifest facts (name -> version, owner, digest)."""
        out = {}
        for link in sorted(self.links.iterdir()):
            if link.name.startswith(".") or not link.is_symlink():
                continue
            try:
                facts = json.loads((link.resolve().parent / "manifest.json").read_text())
            except (OSError, ValueError):
                continue
            out[link.name] = facts
        return out

    def run_once(self) -> SyncResult:
        result = SyncResult()
        running = self.running()
        pins = dict(self.sync.pin)
        try:
            wanted = self.transport.wanted(
                self.host,
                sorted(set(self.sync.packs) | set(pins)),
                {name: facts["version"] for name, facts in running.items()},
            )
        except SyncFailed as exc:
            result.failed = str(exc)
            return result
        odd = [item for item in wanted if not _plain(item)]
        if odd:  # a name that could be a path, a digest that is not one: not a receiver's
            result.failed = f"the receiver's answer names {str(odd[0])[:200]!r}: not a pack"
            return result
        plan: dict[str, tuple[str, str, str]] = {}  # name -> (owner, version, digest or "")
        for item in wanted:
            plan[item["name"]] = (item["owner"], item["version"], item["digest"])
        result.params_changed = self._keep_params(
            {item["name"]: (item["owner"], item.get("params") or {}) for item in wanted},
            result.refused,
            result.standing,
        )
        for name, version in pins.items():  # a pin wins over the channel
            owner = plan.get(name, ("", "", ""))[0]
            plan[name] = (owner, version, "")
        for name, (owner, version, digest) in sorted(plan.items()):
            now = running.get(name)
            if now is not None and (
                now["digest"] == digest or (not digest and now["version"] == version)
            ):
                continue
            mark = digest or f"{name}@{version}"
            if mark in self.refused:
                result.standing.append(self.refused[mark])
                continue  # refused before: reported once, not fetched again
            try:
                self._install(name, owner, version, digest)
            except SyncFailed as exc:  # the receiver: try again next time
                result.failed = str(exc)
                continue
            except _Refused as exc:
                refusal = Refusal(name, exc.owner or owner, version, exc.reasons)
                self.refused[mark] = refusal
                result.refused.append(refusal)
                result.standing.append(refusal)
                continue
            result.installed.append(f"{name} {version}")
        result.removed = self._unlink_untaken(running)
        self._prune()
        return result

    def _unlink_untaken(self, running: dict[str, dict[str, str]]) -> list[str]:
        """Packs this host no longer takes ([sync] changed): unlinked, so the reload that
        follows stops them (their folders go with the next prune)."""
        gone = []
        for name, facts in sorted(running.items()):
            if not self._takes(name, facts.get("owner", "")):
                (self.links / name).unlink(missing_ok=True)
                gone.append(name)
                log.info("pack sync: %s is no longer taken by this host; removed", name)
        return gone

    def _install(self, name: str, owner: str, version: str, digest: str) -> None:
        where = f"{name} {version} from {self.sync.url}"
        data = self.transport.fetch(name, version)
        mark = digest or f"{name}@{version}"
        try:
            found = bundle.read(data, where)
            if digest and found.digest() != digest:
                raise bundle.BundleError(f"{where}: not the bundle the receiver named")
        except bundle.BundleError as exc:
            # a proxy's page, a cut download: fetched again; the same answer GARBLED times
            # over is what the receiver serves, and is refused
            self.garbled[mark] = self.garbled.get(mark, 0) + 1
            if self.garbled[mark] < GARBLED:
                raise SyncFailed(f"{exc} (fetched again later)") from None
            raise _Refused(owner, [f"{exc} ({GARBLED} fetches in a row)"]) from None
        self.garbled.pop(mark, None)
        try:
            manifest = found.manifest
            if (manifest.name, manifest.version) != (name, version):
                raise bundle.BundleError(f"{where}: the bundle is {manifest.label}")
            if owner and manifest.owner != owner:
                raise bundle.BundleError(
                    f"{where}: the bundle is {manifest.owner}'s, not {owner}'s"
                )
            if not self._takes(manifest.name, manifest.owner):
                raise bundle.BundleError(f"{where}: this host does not take {manifest.label}")
            bundle.verify(found, self.trusted, where)
        except bundle.BundleError as exc:
            raise _Refused(owner, [str(exc)]) from None
        final = self.store / found.digest()[:32]
        if not final.exists():
            incoming = self.store / f".incoming-{os.getpid()}-{found.digest()[:16]}"
            shutil.rmtree(incoming, ignore_errors=True)
            incoming.mkdir(mode=0o755)
            try:
                bundle.unpack(found, incoming / "pack")
            except OSError as exc:  # a name this file system refuses, a full disk
                shutil.rmtree(incoming, ignore_errors=True)
                raise _Refused(
                    manifest.owner, [f"{where}: cannot be unpacked here: {exc}"]
                ) from None
            (incoming / "manifest.json").write_text(
                json.dumps({"name": name, "version": version, "owner": manifest.owner,
                            "digest": found.digest()})
            )  # fmt: skip
            problems = self.prove(incoming / "pack", None)
            if problems:
                shutil.rmtree(incoming, ignore_errors=True)
                raise _Refused(manifest.owner, problems)
            os.rename(incoming, final)
        else:
            problems = self.prove(final / "pack", None)
            if problems:
                raise _Refused(manifest.owner, problems)
        self._link(name, final / "pack")
        log.info("pack %s installed from %s (%s)", found.manifest.label, self.sync.url, final.name)

    def _keep_params(
        self,
        central: dict[str, tuple[str, dict[str, Any]]],
        refused: list[Refusal],
        standing: list[Refusal],
    ) -> bool:
        """Store the central values of the packs' params, each with the owner the receiver
        named (they apply only to that team's pack of the name); whether they changed.
        Before they are taken, every pack they change (synced or local) is proven with
        them: values that would break one are refused, and the previous ones stay."""
        kept: dict[str, dict[str, Any]] = {}
        for pack, (owner, values) in sorted(central.items()):
            good = {}
            for key, value in sorted(values.items()) if isinstance(values, dict) else ():
                _, problem = param_value(value)
                if valid_name(key) and problem is None:
                    good[key] = value
                else:
                    log.warning("pack sync: %s: central param %r left out", pack, key[:64])
            if good:
                kept[pack] = {"owner": owner, "values": good}
        path = self.links.parent / PARAMS_FILE
        text = json.dumps(kept, sort_keys=True)
        old = path.read_text() if path.is_file() else "{}"
        if old == text:
            return False
        try:
            before = json.loads(old)
        except ValueError:
            before = {}
        for name in sorted(set(kept) | set(before)):
            if kept.get(name) == before.get(name):
                continue
            owner = (kept.get(name) or before.get(name) or {}).get("owner", "")
            for folder in self._folders_of(name, owner):
                problems = self.prove(folder, kept)
                if not problems:
                    continue
                mark = "params:" + text
                if mark not in self.refused:
                    version = self.running().get(name, {}).get("version", "local")
                    self.refused[mark] = Refusal(name, owner, version, tuple(
                        f"central params refused, the previous ones stay: {p}" for p in problems
                    ))  # fmt: skip
                    refused.append(self.refused[mark])
                standing.append(self.refused[mark])
                return False
        write_atomically(path, text.encode(), 0o600)
        return True

    def _folders_of(self, name: str, owner: str) -> list[Path]:
        """The folders of `owner`'s pack `name` here: the synced one and any local one."""
        from agent.packset import find_pack_dirs

        found = []
        link = self.links / name
        if link.is_symlink():
            found.append(link.resolve())
        try:
            local = find_pack_dirs(self.local_roots)
        except ConfigErrors:
            local = []
        for folder in local:
            try:
                name_, _, owner_ = bundle.pack_head((folder / "pack.toml").read_bytes())
            except OSError:
                continue
            if (name_, owner_) == (name, owner):
                found.append(folder)
        return found

    def _takes(self, name: str, owner: str) -> bool:
        return (
            name in self.sync.names
            or name in dict(self.sync.pin)
            or (f"owner:{owner}" in self.sync.packs)
        )

    def _link(self, name: str, target: Path) -> None:
        """Point packs/NAME at `target` in one rename (synced to disk first)."""
        temporary = self.links / f".{name}.{os.getpid()}.new"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        os.symlink(os.path.relpath(target, self.links), temporary)
        os.replace(temporary, self.links / name)
        fd = os.open(self.links, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _prune(self) -> None:
        """Versions no link names, but the newest KEEP_VERSIONS - 1 of each pack's and
        those the agent still runs (a reload may not have happened yet)."""
        linked = {link.resolve().parent for link in self.links.iterdir() if link.is_symlink()}
        linked |= {folder.resolve().parent for folder in self.in_use()}
        by_pack: dict[str, list[tuple[float, Path]]] = {}
        for folder in self.store.iterdir():
            if folder.name.startswith(".") or folder in linked:
                continue
            try:
                facts = json.loads((folder / "manifest.json").read_text())
                by_pack.setdefault(facts["name"], []).append((folder.stat().st_mtime, folder))
            except (OSError, ValueError, KeyError):
                shutil.rmtree(folder, ignore_errors=True)
        for kept in by_pack.values():
            for _, folder in sorted(kept, reverse=True)[KEEP_VERSIONS - 1 :]:
                shutil.rmtree(folder, ignore_errors=True)


class _Refused(Exception):
    def __init__(self, owner: str, reasons: list[str]) -> None:
        super().__init__(reasons[0] if reasons else "refused")
        self.owner = owner
        self.reasons = tuple(reasons)


def _plain(item: dict[str, Any]) -> bool:
    """A sync answer's item names a pack plainly: names as packs have them (no `/`, no
    `..`: they become paths here), an owner that is one or none, a SHA-256 digest."""
    name, owner, version, digest = (item.get(k) for k in ("name", "owner", "version", "digest"))
    return (
        isinstance(name, str)
        and valid_pack_name(name)
        and isinstance(version, str)
        and valid_pack_name(version)
        and isinstance(owner, str)
        and (owner == "" or valid_pack_name(owner))
        and isinstance(digest, str)
        and len(digest) == 64
        and all(c in "0123456789abcdef" for c in digest)
    )


def prepare(config: Config) -> None:
    """Before the packs are loaded: the folders, and nothing half-done left by a kill."""
    assert config.sync is not None
    links, store = config.synced_packs, config.state_dir / "pack-versions"
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder in (links, store):
        folder.mkdir(mode=0o755, exist_ok=True)
    for leftover in store.glob(".incoming-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for link in links.iterdir():
        if link.name.startswith(".") and link.is_symlink():  # a swap cut short
            link.unlink()


def read_token(sync: Sync) -> str:
    from agent.escalate import read_token_file

    assert sync.token_file is not None
    return read_token_file(sync.token_file, "sync.token_file")


class SyncLoop:
    """Runs a PackSync at start and every interval on a thread of its own; sooner again
    (5 s, doubling) while the receiver cannot be asked."""

    def __init__(
        self,
        sync: PackSync,
        interval: float,
        on_result: Callable[[SyncResult], None],
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        import threading

        self.sync, self.interval, self.on_result = sync, interval, on_result
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._thread = threading.Thread(target=self._run, name="pack-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop asking; a request under way is cut (its transport closed) and waited for,
        so no two syncs ever work in the state directory at once."""
        self._stop.set()
        close = getattr(self.sync.transport, "close", None)
        if close is not None:
            close()
        self._thread.join(timeout=self.sync.sync.timeout + 10)

    def _run(self) -> None:
        delay, retry = 0.0, RETRY
        while not self._wait(delay):
            try:
                result = self.sync.run_once()
            except Exception as exc:  # a bug or a full disk: logged, tried again later
                log.error("pack sync failed", exc_info=exc)
                result = SyncResult(failed=f"{type(exc).__name__}: {exc}")
            try:
                self.on_result(result)
            except Exception as exc:
                log.error("pack sync: cannot act on the result", exc_info=exc)
            if result.failed:
                delay, retry = min(self.interval, retry), min(self.interval, retry * 2)
            else:
                delay, retry = self.interval, RETRY


def effective_params(
    config: Config, central: dict[str, dict[str, Any]] | None = None
) -> HostParams:
    """The host's params: the central values for its groups (`central`, else those of
    the last sync), each for the named team's pack only, and over them the agent
    config's own `[params.PACK]`, which wins."""
    if central is None:
        try:
            central = json.loads((config.state_dir / PARAMS_FILE).read_text())
        except FileNotFoundError:
            return config.params
        except (OSError, ValueError) as exc:
            log.warning("central params unreadable (%s); the config's alone apply", exc)
            return config.params
    assert central is not None
    mine = config.params.values
    values: dict[str, dict[str, Any]] = {pack: dict(given) for pack, given in mine.items()}
    owners: dict[str, str] = {}
    keys: set[tuple[str, str]] = set()
    for pack, entry in central.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("values"), dict)):
            continue
        owners[pack] = str(entry.get("owner", ""))
        for key, value in entry["values"].items():
            if key not in mine.get(pack, {}):
                values.setdefault(pack, {})[key] = value
                keys.add((pack, key))
    return dataclasses.replace(
        config.params, values=values, central=frozenset(keys), central_owner=owners
    )


def as_broken(refusal: Refusal, config: Config) -> BrokenPack:
    """A refused version as a broken pack, for its owner's `pack-error` report."""
    errors = tuple(
        ConfigError(f"{refusal.name} {refusal.version} (synced)", "", None, reason)
        for reason in refusal.reasons
    )
    return BrokenPack(
        config.synced_packs / refusal.name, refusal.name, refusal.owner, refusal.version, errors
    )


def prove_here(config: Config) -> Prove:
    """The agent's own rules for a pack folder: it loads (ownership, lint, params), its
    examples hold, and its fix user exists here."""

    def prove(folder: Path, central: dict[str, dict[str, Any]] | None) -> list[str]:
        from agent.examples import check_examples
        from agent.packs import load_pack
        from agent.preflight import unrunnable

        try:
            pack = load_pack(folder, trust=True, host=effective_params(config, central))
        except ConfigErrors as exc:
            return [str(e) for e in exc.errors]
        except Exception as exc:  # a hostile file: refused, never fatal
            return [str(ConfigError(folder / "pack.toml", "", None, f"cannot be loaded: {exc}"))]
        _, failures = check_examples(pack)
        if failures:
            return [str(f.as_error(pack)) for f in failures]
        _, homeless = unrunnable(config, [pack])
        return [str(e) for b in homeless for e in b.errors]

    return prove


class HttpTransport:
    """The receiver over HTTP(S) with the host's ingest token; bounded answers."""

    def __init__(self, sync: Sync, token: str) -> None:
        import httpx

        verify: Any = True
        if sync.ca_file is not None:
            import ssl

            verify = ssl.create_default_context(cafile=str(sync.ca_file))
        self._client = httpx.Client(
            base_url=sync.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=sync.timeout,
            verify=verify,
        )

    def wanted(self, host: str, packs: list[str], running: dict[str, str]) -> list[dict[str, Any]]:
        body = {"host": host, "packs": packs, "running": running}
        raw = self._request("POST", "/v1/packs/sync", MAX_ANSWER, json=body)
        try:
            answer = json.loads(raw)["packs"]
            return [
                {
                    **{k: str(item[k]) for k in ("name", "owner", "version", "digest")},
                    "params": item.get("params") or {},
                }
                for item in answer
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise SyncFailed(f"the receiver's answer is not a sync ({exc})") from None

    def fetch(self, name: str, version: str) -> bytes:
        return self._request("GET", f"/v1/packs/{name}/{version}", bundle.MAX_BUNDLE)

    def _request(self, method: str, path: str, limit: int, **kwargs: Any) -> bytes:
        import httpx

        try:
            with self._client.stream(method, path, **kwargs) as answer:
                if answer.status_code != 200:
                    answer.read()
                    raise SyncFailed(
                        f"{method} {path}: the receiver answered {answer.status_code}"
                        f" ({answer.text[:200]})"
                    )
                data = bytearray()
                for chunk in answer.iter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise SyncFailed(f"{method} {path}: the answer is over {limit} bytes")
                return bytes(data)
        except httpx.HTTPError as exc:
            raise SyncFailed(f"{method} {path}: cannot reach the receiver ({exc})") from None

    def close(self) -> None:
        self._client.close()
