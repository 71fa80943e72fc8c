"""Whether the agent may trust a file that chooses what root runs: owner and mode.

A pack is code that may run as root, so `pack.toml`, its scripts and every
folder from / down to them are held like a package's files: owned by root or
the agent's user, and writable by nobody else.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path


def untrusted(path: Path, sticky_ok: bool = False) -> str | None:
    """Why the agent must not run (or trust the folder of) `path`, or None.

    `sticky_ok` accepts a root-owned sticky folder such as /tmp above a pack:
    others may create entries there but cannot rename or replace ours.
    """
    try:
        info = path.stat()
    except OSError as exc:
        return f"cannot stat {path}: {exc.strerror}"
    if info.st_uid not in (0, os.geteuid()):
        return f"{path} is owned by uid {info.st_uid}, not root or the agent's user"
    sticky = sticky_ok and info.st_uid == 0 and info.st_mode & stat.S_ISVTX
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky:
        return f"{path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def trust_chain(pack_dir: Path) -> Iterator[str]:
    """Every folder from / down to the pack, its pack.toml and scripts/, held like a script.

    Both the path as configured and the one it resolves to are checked: whoever
    may change a folder holding a symlink to a pack may swap the pack.
    """
    root = pack_dir.resolve()
    folders = dict.fromkeys([*reversed(pack_dir.absolute().parents), *reversed(root.parents)])
    for folder in folders:
        problem = untrusted(folder, sticky_ok=True)
        if problem:
            yield problem
    if (root / "pack.toml").is_symlink():
        yield f"{root / 'pack.toml'} is a symbolic link"
    for path in (root, root / "pack.toml", root / "scripts"):
        if path.name == "scripts" and not path.exists():
            continue
        problem = untrusted(path)
        if problem:
            yield problem
