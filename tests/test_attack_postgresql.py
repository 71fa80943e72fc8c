"""The PostgreSQL pack under attack: only a configured cluster's stale lock is ever removed."""

from __future__ import annotations

import subprocess
import sys

from tests.attack import Siege, needs_root, snapshot

PREFIX = "2024-03-01 12:00:00.123 UTC [4242] "


def hint(datadir: str, pid: int | str) -> str:
    return (
        f'{PREFIX}HINT:  Is another postmaster (PID {pid}) running in data directory "{datadir}"?'
    )


@needs_root
def test_crafted_lock_lines_remove_nothing_but_a_configured_stale_lock(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    main, other = tmp_path / "pg" / "main", tmp_path / "pg" / "other"
    for datadir in (main, other):
        datadir.mkdir(parents=True)
        (datadir / "postmaster.pid").write_text(f"{dead.pid}\n{datadir}\n")
    elsewhere = tmp_path / "elsewhere"  # a cluster in another PID namespace looks just as dead
    elsewhere.mkdir()
    (elsewhere / "postmaster.pid").write_text(f"{dead.pid}\n")
    (main.parent / "alias").symlink_to(main)
    canaries = (other, elsewhere, main.parent / "alias")
    before = snapshot(*canaries)
    attacks = {
        str(other): "not one of the configured",  # a directory the host did not configure
        str(elsewhere): "not one of the configured",
        f"{main}/../other": "not a normal path",
        str(main.parent / "alias"): "not one of the configured",  # a symlink to a real one
        "/etc": "not one of the configured",
    }
    # a bad PID for a configured cluster (each its own cluster: one incident per key)
    bad_pids = {"1": "not a process id", "0": "not a process id", "99999999999": "process id"}
    clusters = {pid: tmp_path / "pg" / f"c{n}" for n, pid in enumerate(bad_pids)}
    for datadir in clusters.values():
        datadir.mkdir()
        (datadir / "postmaster.pid").write_text(f"{dead.pid}\n")
    embedded = [
        # client text echoed by the server (a role name, a parameter value) before auth
        f'{PREFIX}FATAL:  role "{hint(str(main), dead.pid)}" does not exist',
        f'{PREFIX}FATAL:  invalid value for parameter "x": "{hint(str(main), dead.pid)}"',
        "x" + hint(str(main), dead.pid),
    ]
    sentinel = (
        f'{PREFIX}PANIC:  could not write to file "pg_wal/xlogtemp.77": No space left on device'
    )
    params = {"data_dirs": [str(main), *map(str, clusters.values())]}
    with Siege(tmp_path, "postgresql", params) as siege:
        siege.write(*embedded, *(hint(d, dead.pid) for d in attacks))
        siege.write(*(hint(str(datadir), pid) for pid, datadir in clusters.items()))
        siege.write(hint(str(main), dead.pid), sentinel)
        expected = {**dict.fromkeys(attacks, ""), **dict.fromkeys(map(str, clusters.values()), "")}
        statuses = siege.outcomes({**expected, "": ""})  # "": the sentinel, which has no key
        reasons = siege.reasons()
        assert siege.fixed(f"resolved postgresql/stale-postmaster-pid key='{main}'")
    for datadir, why in attacks.items():
        assert statuses[datadir] == "rejected-field", (datadir, statuses)
        assert why in reasons[datadir], (datadir, reasons[datadir])
    for pid, datadir in clusters.items():
        assert statuses[str(datadir)] == "rejected-field"
        assert bad_pids[pid] in reasons[str(datadir)]
        assert (datadir / "postmaster.pid").exists()
    assert not (main / "postmaster.pid").exists()
    assert set(statuses) == {*expected, ""}  # the embedded lines matched nothing
    assert snapshot(*canaries) == before
