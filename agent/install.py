"""`logmend install-service`: the agent (and, with --receiver, the receiver) laid out as
a systemd service, the way a package would: its config folder, state folder, user
and unit, pointing at this installation's `logmend`. Idempotent: a second run
changes nothing and says so; a config that is there is never touched.

`--root DIR` lays it all out under DIR (an image being built, or a test); the
user is then made in DIR's own /etc/passwd (`useradd --root`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.errors import LogmendError

UNIT_BIN = "/opt/logmend/bin/logmend"  # what the shipped units say; replaced by ours
RECEIVER_USER = "logmend-receiver"

STARTER = """\
# The logmend agent's config: docs/config.md. Check it: logmend check -c {config}
[agent]
state_dir = "/var/lib/logmend"
packs = ["/etc/logmend/packs.d"]      # one folder per pack, owned by root, not group-writable
fix_user = "nobody"                   # fixes run as this unless a pack may run as root:
allow_root = []                       # the packs whose fixes may run as root

[[source]]
path = "/var/log/app/*.log"           # the logs to read (a file or a glob)
packs = "*"                           # which packs read them ("*": every pack)

# [escalation]                        # what tier 1 cannot fix, to the receiver
# url = "https://logmend.example/v1/escalations"
# token_file = "/etc/logmend/token"   # mode 0600

# [sync]                              # packs from the receiver, signed (docs/config.md#sync)
# url = "https://logmend.example"
# packs = ["owner:web-platform"]
# trust = ["/etc/logmend/keys/web-platform.pub"]
"""


@dataclass(frozen=True, slots=True)
class Step:
    what: str
    done: str  # "created", "updated", "unchanged", "skipped: why"


def units_folder() -> Path:
    """The unit files: shipped in the wheel (agent/_systemd), or this checkout's systemd/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_systemd", here.parent / "systemd"):
        if (candidate / "logmend.service").is_file():
            return candidate
    raise LogmendError("install-service: the unit files are not installed with logmend")


def this_logmend() -> str:
    """The `logmend` of this installation (the venv's bin, beside its Python)."""
    beside = Path(sys.executable).parent / "logmend"
    return str(beside) if beside.is_file() else shutil.which("logmend") or UNIT_BIN


def install(root: Path, receiver: bool, binary: str | None = None) -> list[Step]:
    """Lay out the service(s) under `root`; each step and what it did."""
    binary = binary or this_logmend()
    steps = [
        _folder(root, root / "etc/logmend", 0o755),
        _folder(root, root / "etc/logmend/packs.d", 0o755),
        _folder(root, root / "etc/logmend/keys", 0o755),
        _folder(root, root / "var/lib/logmend", 0o700),
        _file(root, root / "etc/logmend/agent.toml",
              STARTER.format(config="/etc/logmend/agent.toml"), 0o644, keep=True),
        _unit(root, "logmend.service", binary),
    ]  # fmt: skip
    if receiver:
        steps.append(_user(root, RECEIVER_USER))
        steps.append(_folder(root, root / "etc/logmend-receiver", 0o750, RECEIVER_USER))
        steps.append(_folder(root, root / "var/lib/logmend-receiver", 0o700, RECEIVER_USER))
        steps.append(_unit(root, "logmend-receiver.service", binary))
    if any(s.what.endswith(".service") and s.done in ("created", "updated") for s in steps):
        steps.append(_daemon_reload(root))
    return steps


def _no_links(root: Path, path: Path) -> None:
    """Refuse a path that goes through a symbolic link below the root: writing through
    one would put the unit or change the modes of folders somewhere else entirely."""
    for part in [*reversed(path.relative_to(root).parents[:-1]), path.relative_to(root)]:
        if (root / part).is_symlink():
            raise LogmendError(f"install-service: {root / part} is a symbolic link; refused")


def _folder(root: Path, path: Path, mode: int, owner: str = "") -> Step:
    _no_links(root, path)
    existed = path.is_dir()
    if path.is_symlink() or (path.exists() and not existed):
        raise LogmendError(f"install-service: {path} is there and is not a folder")
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    changed = not existed
    if (path.stat().st_mode & 0o7777) != mode:
        os.chmod(path, mode)
        changed = True
    if owner:
        uid, gid = _ids(root, owner)
        info = path.stat()
        if (info.st_uid, info.st_gid) != (uid, gid):
            os.chown(path, uid, gid)
            changed = True
    return Step(str(path), "created" if not existed else "updated" if changed else "unchanged")


def _file(root: Path, path: Path, text: str, mode: int, keep: bool = False) -> Step:
    _no_links(root, path.parent)
    if path.is_symlink():
        raise LogmendError(f"install-service: {path} is a symbolic link; not written through")
    if path.exists():
        if keep:
            return Step(str(path), "unchanged (yours: never overwritten)")
        if path.read_text() == text and (path.stat().st_mode & 0o777) == mode:
            return Step(str(path), "unchanged")
        done = "updated"
    else:
        done = "created"
    from agent.atomic import write_atomically

    write_atomically(path, text.encode(), mode)
    return Step(str(path), done)


def _unit(root: Path, name: str, binary: str) -> Step:
    text = (units_folder() / name).read_text().replace(UNIT_BIN, binary)
    folder = root / "etc/systemd/system"
    _no_links(root, folder)
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    return _file(root, folder / name, text, 0o644)


def _user(root: Path, name: str) -> Step:
    """A system user with no home and no shell, in `root`'s own user database."""
    if _passwd_entry(root, name) is not None:
        return Step(f"user {name}", "unchanged")
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    command = [
        useradd,
        "--system",
        "--user-group",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
    ]
    if root != Path("/"):
        command += ["--root", str(root.resolve())]
    done = subprocess.run([*command, name], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LogmendError(f"install-service: useradd {name}: {done.stderr.strip()}")
    return Step(f"user {name}", "created")


def _passwd_entry(root: Path, name: str) -> list[str] | None:
    try:
        lines = (root / "etc/passwd").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if fields[0] == name and len(fields) >= 4:
            return fields
    return None


def _ids(root: Path, name: str) -> tuple[int, int]:
    entry = _passwd_entry(root, name)
    if entry is None:
        raise LogmendError(f"install-service: no user {name} in {root / 'etc/passwd'}")
    return int(entry[2]), int(entry[3])


def _daemon_reload(root: Path) -> Step:
    if root != Path("/"):
        return Step("systemctl daemon-reload", "skipped: not the running system (--root)")
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():
        return Step("systemctl daemon-reload", "skipped: systemd is not running here")
    done = subprocess.run([systemctl, "daemon-reload"], check=False, capture_output=True, text=True)
    return Step("systemctl daemon-reload", "done" if done.returncode == 0 else done.stderr.strip())
