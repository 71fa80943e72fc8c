"""The nginx pack under attack: no logged path makes root create or chown anything else."""

from __future__ import annotations

import os
import pwd

from tests.attack import Siege, needs_root, snapshot

PREFIX = "2024/03/01 12:00:01 [crit] 2471#2471: *9 "


def missing(path: str) -> str:
    return (
        f'{PREFIX}open() "{path}/0000000001" failed (2: No such file or directory), '
        'client: 10.1.2.3, server: shop, request: "POST /upload HTTP/1.1"'
    )


@needs_root
def test_crafted_temp_dir_lines_change_nothing_outside_the_temp_roots(tmp_path):
    nobody = pwd.getpwnam("nobody")
    root = tmp_path / "cache"
    root.mkdir()
    os.chown(root, nobody.pw_uid, nobody.pw_gid)  # a fix gives new temp dirs this owner
    victim, secret = tmp_path / "victim", tmp_path / "secret"
    for folder in (victim, secret):
        folder.mkdir(mode=0o700)
        (folder / "data").write_text("root's own\n")
    (root / "link").symlink_to(victim)
    (root / "proxy_temp").symlink_to(secret)  # planted where a temp dir belongs
    canaries = (victim, secret, tmp_path / "etc", tmp_path / "pwned")
    before = snapshot(*canaries)
    attacks = {
        f"{tmp_path}/etc/client_temp": "not under",  # another directory
        f"{root}/../victim/client_temp": "not a normal path",  # ..
        f"{root}/link/client_temp": "more than 1 level",  # through a planted symlink
        f"{root}/proxy_temp": "symbolic link",  # the temp dir itself a symlink
        f"{root}/a\tb/client_temp": "control character",
        f"{root}/$(touch {tmp_path}/pwned)/client_temp": "more than 1 level",  # metacharacters
        f"{root}/x|y*/body": "more than 1 level",
    }
    embedded = [
        # the same text echoed inside another program's or another message's line
        f'2024/03/01 12:00:01 [error] 2471#2471: *9 open() "/srv/x" failed (2: No such file or '
        f'directory), request: "GET /{missing(f"{tmp_path}/etc/client_temp")}"',
        f'10.0.0.1 - - [01/Mar/2024:12:00:01 +0000] "GET /{missing(f"{tmp_path}/etc/scgi")}"',
        " " + missing(f"{tmp_path}/etc/uwsgi"),
    ]
    legit = f"{root}/client_temp"
    sentinel = "2024/03/01 12:00:09 [alert] 2472#2472: 768 worker_connections are not enough"
    with Siege(tmp_path, "nginx", {"temp_roots": [str(root)]}) as siege:
        siege.write(*embedded, *(missing(path) for path in attacks), missing(legit), sentinel)
        statuses = siege.outcomes({**dict.fromkeys(attacks, ""), "768": ""})
        reasons = siege.reasons()
        assert siege.fixed(f"resolved nginx/temp-dir-missing key='{legit}'")
    for path, why in attacks.items():
        assert statuses[path] == "rejected-field", (path, statuses)
        assert why in reasons[path], (path, reasons[path])
    assert legit not in statuses  # fixed, so not escalated
    assert set(statuses) == {*attacks, "768"}  # the embedded lines matched nothing
    assert snapshot(*canaries) == before
    made = root / "client_temp"
    assert made.is_dir() and made.stat().st_uid == nobody.pw_uid
    assert sorted(p.name for p in root.iterdir()) == ["client_temp", "link", "proxy_temp"]
