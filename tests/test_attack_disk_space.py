"""The disk-space pack under attack: no logged path deletes a file it should not."""

from __future__ import annotations

import os
import time

from tests.attack import Siege, needs_root, snapshot


def enospc(path: str) -> str:
    return f"OSError: [Errno 28] No space left on device: '{path}'"


def rotated(folder, base: str, copies: int = 5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for age, n in enumerate(range(1, copies + 1)):
        path = folder / f"{base}.{n}"
        path.write_text(f"{base} {n}\n")
        os.utime(path, (time.time() - age * 60, time.time() - age * 60))


@needs_root
def test_crafted_enospc_lines_prune_only_the_named_logs_rotated_copies(tmp_path):
    logs, victim = tmp_path / "log", tmp_path / "victim"
    rotated(logs / "shop", "app.log")
    rotated(logs / "app", "db.log")  # neighbours the metacharacter attack aims at
    rotated(victim, "app.log")
    (logs / "link").symlink_to(victim)
    canaries = (logs / "app", victim, logs / "link")
    before = snapshot(*canaries)
    attacks = {
        f"{victim}/app.log": "not under",  # another directory
        f"{logs}/../victim/app.log": "not a normal path",
        f"{logs}/link/app.log": "symbolic link",
        f"{logs}/app/\x1b[2J.log": "control character",
    }
    # the original attack: a pattern built from the path matched every name. Names are
    # fixed strings now, so it passes the field check and then finds no copy to prune
    harmless = {f"{logs}/app/|.log", f"{logs}/app/.*.log"}
    embedded = [
        # PostgreSQL echoes client text before authentication: a role name, a parameter value
        '2024-03-01 12:00:00.123 UTC [77] FATAL:  invalid value for parameter "x": '
        f'"{enospc(f"{logs}/app/|.log")}"',
        f'2024-03-01 12:00:00.123 UTC [77] FATAL:  role "{enospc(f"{logs}/app/db.log")}" does not exist',
        "--- Logging error --- " + enospc(f"{logs}/app/db.log"),
    ]
    sentinel = (
        "Mar  1 12:00:00 db-01 kernel: [1.2] EXT4-fs error (device sda9): ext4_find_entry:1455: x"
    )
    legit = f"{logs}/shop/app.log"
    params = {"log_dirs": [str(logs)], "min_use_percent": "0"}  # as if the disk were full
    with Siege(tmp_path, "disk-space", params) as siege:
        siege.write(*embedded, *(enospc(p) for p in [*attacks, *harmless]), enospc(legit))
        siege.write(sentinel)
        statuses = siege.outcomes({**dict.fromkeys([*attacks, *harmless], ""), "sda9": ""})
        reasons = siege.reasons()
        assert siege.fixed(f"resolved disk-space/log-write-enospc key='{legit}'")
    for path, why in attacks.items():
        key = path.replace("\x1b", "\\x1b") if "\x1b" in path else path
        assert statuses.get(path, statuses.get(key)) == "rejected-field", (path, statuses)
        assert why in reasons.get(path, reasons.get(key, "")), (path, reasons)
    for path in harmless:
        assert statuses[path] == "remedy-failed"  # "only 0 rotated copies": nothing pruned
    assert set(statuses) == {*attacks, *harmless, "sda9"}  # the embedded lines matched nothing
    assert snapshot(*canaries) == before
    assert sorted(p.name for p in (logs / "shop").iterdir()) == ["app.log.1", "app.log.2"]
