"""Pack folders: found under the configured roots and loaded each on its own, so one
that is broken is set aside with its errors (BrokenPack) and every other one loads.
One folder's schema and compile are agent/packs.py's."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.derived import Memo
from agent.errors import ConfigError, ConfigErrors, unexpected
from agent.hashing import blake2b
from agent.packs import NAME, Pack, PackErrors, load_pack
from agent.params import HostParams


@dataclass(frozen=True, slots=True)
class BrokenPack:
    """A pack folder that does not run, and why; every other pack runs without it.

    Its name, owner and version are what its pack.toml says where it can be read
    (else the folder's name and no owner): they route its report to its team.
    """

    dir: Path
    name: str
    owner: str
    version: str
    errors: tuple[ConfigError, ...]

    @property
    def file(self) -> Path:
        return self.dir / "pack.toml"

    def to_json(self) -> dict[str, Any]:
        return {
            "pack": self.name,
            "owner": self.owner,
            "version": self.version,
            "dir": str(self.dir),
            "errors": [str(e) for e in self.errors],
        }


def find_pack_dirs(roots: tuple[Path, ...]) -> list[Path]:
    """Each root is a pack itself (has pack.toml) or a folder of packs, one per subfolder."""
    found: list[Path] = []
    missing = [root for root in roots if not root.is_dir()]
    if missing:
        raise ConfigErrors([ConfigError(root, "", None, "no such pack folder") for root in missing])
    for root in roots:
        if (root / "pack.toml").is_file():
            found.append(root)
        elif root.is_dir():
            found.extend(sorted(p.parent for p in root.glob("*/pack.toml")))
    return found


def load_packs_apart(
    roots: tuple[Path, ...],
    trust: bool = True,
    host: HostParams | None = None,
    memo: Memo | None = None,
) -> tuple[list[Pack], list[BrokenPack]]:
    """Every pack under `roots`, each on its own: one that cannot be loaded is
    returned broken, with its errors, and the others load. Only what is no one
    pack's fault is raised: a root that is not there, params for a pack that is
    in no folder at all."""
    packs, broken, stray = _load_each(roots, trust, host, memo)
    if stray:
        raise ConfigErrors(stray)
    return packs, broken


def _load_each(
    roots: tuple[Path, ...],
    trust: bool,
    host: HostParams | None,
    memo: Memo | None,
) -> tuple[list[Pack], list[BrokenPack], list[ConfigError]]:
    """The packs, the broken ones, and the host's params that name no pack at all."""
    loaded: dict[str, list[Pack]] = {}
    broken: list[BrokenPack] = []
    unnamed = False  # a broken pack whose name could not be read: params may be for it
    for pack_dir in find_pack_dirs(roots):
        try:
            pack = load_pack(pack_dir, trust, host, memo)
        except PackErrors as exc:
            unnamed = unnamed or not exc.name
            name = exc.name or _folder_name(pack_dir)
            broken.append(BrokenPack(pack_dir, name, exc.owner, exc.version, tuple(exc.errors)))
            continue
        except ConfigErrors as exc:  # pack.toml could not be read at all
            unnamed = True
            broken.append(BrokenPack(pack_dir, _folder_name(pack_dir), "", "", tuple(exc.errors)))
            continue
        except Exception as exc:  # a hostile file or a bug in reading it: this pack only
            unnamed = True
            error = unexpected(pack_dir / "pack.toml", exc)
            broken.append(BrokenPack(pack_dir, _folder_name(pack_dir), "", "", (error,)))
            continue
        loaded.setdefault(pack.name, []).append(pack)
    packs = []
    for name, claims in loaded.items():
        if len(claims) == 1:
            packs.extend(claims)
            continue
        for pack in claims:  # no folder wins a name by sorting first: none of them runs
            others = ", ".join(str(p.file) for p in claims if p is not pack)
            clash = ConfigError(pack.file, "pack.name", None, f"{name!r} is also in {others}")
            broken.append(BrokenPack(pack.dir, pack.name, pack.owner, pack.version, (clash,)))
    present = set(loaded) | {b.name for b in broken}
    errors = []
    stray = set(host.values) - present - host.pending if host and "*" not in host.pending else ()
    for pack_name in sorted(stray if not unnamed else ()):
        assert host is not None
        line = min((n for (p, _), n in host.lines.items() if p == pack_name and n), default=None)
        errors.append(
            ConfigError(host.file or "", f"params.{pack_name}", line, "no such pack is loaded")
        )
    return packs, broken, errors


def _folder_name(pack_dir: Path) -> str:
    """A broken pack's name when its pack.toml does not say: the folder's if it is a plain
    name, else one made from its path (a folder name may hold anything)."""
    if NAME.fullmatch(pack_dir.name):
        return pack_dir.name
    digest = blake2b(os.fsencode(pack_dir), digest_size=4).hexdigest()
    return f"unnamed-{digest}"


def load_packs(
    roots: tuple[Path, ...],
    trust: bool = True,
    host: HostParams | None = None,
    memo: Memo | None = None,
) -> list[Pack]:
    """Every pack under `roots`; all problems of all packs are raised together."""
    packs, broken, stray = _load_each(roots, trust, host, memo)
    if broken or stray:
        raise ConfigErrors([error for pack in broken for error in pack.errors] + stray)
    return packs
