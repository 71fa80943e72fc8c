"""The shipped fix scripts, pointed at temp directories: they act only on what they are named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import wait_for

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"


def run(script: str, *args: str, **params: str | list[str]) -> subprocess.CompletedProcess[str]:
    """Run a shipped script as the agent would: params as LOGMEND_PARAM_<NAME>, one per line."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    for name, value in params.items():
        env[f"LOGMEND_PARAM_{name.upper()}"] = value if isinstance(value, str) else "\n".join(value)
    return subprocess.run(
        [str(PATTERNS / script), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def test_nginx_recreates_only_a_temp_dir_directly_inside_a_configured_root(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    roots = {"temp_roots": [str(tmp_path / "other"), str(root)]}
    target = root / "client_temp"
    assert run("nginx/scripts/check-temp-dir.sh", str(target)).returncode == 1
    assert run("nginx/scripts/recreate-temp-dir.sh", str(target), **roots).returncode == 0
    assert target.is_dir() and oct(target.stat().st_mode & 0o777) == "0o700"
    assert run("nginx/scripts/check-temp-dir.sh", str(target)).returncode == 0
    assert run("nginx/scripts/recreate-temp-dir.sh", str(target), **roots).returncode == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (root / "proxy_temp").symlink_to(victim)
    (root / "sub").mkdir()
    for bad in (
        str(tmp_path / "etc"),
        "relative/client_temp",
        f"{root}/../client_temp",
        "/client_temp",
        f"{root}/sub/client_temp",  # deeper than directly inside a root
        f"{root}/proxy_temp",  # a symlink planted in the root
        f"{tmp_path}/client_temp",  # not a configured root
    ):
        result = run("nginx/scripts/recreate-temp-dir.sh", bad, **roots)
        assert result.returncode == 2, (bad, result.stderr)
    assert run("nginx/scripts/recreate-temp-dir.sh", str(target)).returncode == 2  # no roots
    assert not (tmp_path / "etc").exists() and not (root / "sub" / "client_temp").exists()
    assert run("nginx/scripts/check-temp-dir.sh", str(root / "proxy_temp")).returncode == 1


def test_postgres_removes_only_a_stale_lock(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = tmp_path / "stale", tmp_path / "live"
    for datadir, pid in ((stale, dead.pid), (live, os.getpid())):
        datadir.mkdir()
        (datadir / "postmaster.pid").write_text(f"{pid}\n{datadir}\n")
    dirs = {"data_dirs": [str(stale), str(live)]}
    remove = "postgresql/scripts/remove-stale-pid.sh"
    assert run(remove, str(live), str(os.getpid()), **dirs).returncode == 1
    assert (live / "postmaster.pid").exists()
    assert run(remove, str(stale), "999999", **dirs).returncode == 1
    assert run(remove, str(stale), str(dead.pid)).returncode == 2  # not a configured cluster
    assert run(remove, str(stale), str(dead.pid), **dirs).returncode == 0
    assert not (stale / "postmaster.pid").exists()
    assert run("postgresql/scripts/check-no-pid-file.sh", str(stale), **dirs).returncode == 0
    assert run("postgresql/scripts/check-no-pid-file.sh", str(live), **dirs).returncode == 0


def test_postgres_never_follows_a_symlinked_lock_or_leaves_its_clusters(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cluster, other = tmp_path / "main", tmp_path / "other"
    for datadir in (cluster, other):
        datadir.mkdir()
    canary = tmp_path / "canary"
    canary.write_text(f"{dead.pid}\n")
    (cluster / "postmaster.pid").symlink_to(canary)
    (other / "postmaster.pid").write_text(f"{dead.pid}\n")
    dirs = {"data_dirs": [str(cluster)]}
    remove = "postgresql/scripts/remove-stale-pid.sh"
    for datadir, pid in (
        (str(cluster), str(dead.pid)),  # the lock is a symlink to a file elsewhere
        (str(other), str(dead.pid)),  # a cluster the host did not configure
        (f"{cluster}/../other", str(dead.pid)),
        (str(cluster), "0"),
    ):
        assert run(remove, datadir, pid, **dirs).returncode == 2, datadir
    assert canary.exists() and (other / "postmaster.pid").exists()


def test_disk_prunes_only_rotated_copies_of_that_log(tmp_path):
    names = [
        "app.log",
        "app.log.1",
        "app.log.2.gz",
        "app.log.3.gz",
        "app.log-20240101.gz",
        "other.log.1",
        "app.log.bak",
        "app.logger.1",
    ]
    for age, name in enumerate(names):
        path = tmp_path / name
        path.write_text(name)
        stamp = time.time() - age * 3600
        os.utime(path, (stamp, stamp))
    prune = "disk-space/scripts/prune-rotated.sh"
    dirs = {"log_dirs": [str(tmp_path)], "min_use_percent": "0"}
    assert run(prune, str(tmp_path / "app.log"), "2").returncode == 2  # no configured folder
    # a forged line cannot prune while the disk is not full
    not_full = run(
        prune, str(tmp_path / "app.log"), "2", log_dirs=[str(tmp_path)], min_use_percent="101"
    )
    assert not_full.returncode == 1 and "nothing to prune" in not_full.stderr
    assert len(list(tmp_path.iterdir())) == len(names)
    result = run(prune, str(tmp_path / "app.log"), "2", **dirs)
    assert result.returncode == 0, result.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        ["app.log", "app.log.1", "app.log.2.gz", "other.log.1", "app.log.bak", "app.logger.1"]
    )
    assert run(prune, str(tmp_path / "app.log"), "2", **dirs).returncode == 1


@pytest.mark.parametrize(
    "name",
    ["|.log", ".*", "app.log|", "[a-z]*.log", "app.l?g", "*", "app.log/..", "-rf.log"],
)
def test_disk_prune_compares_names_as_fixed_strings(tmp_path, name):
    """A name from the line is never a pattern: metacharacters match only themselves."""
    logs = tmp_path / "logs"
    logs.mkdir()
    names = [f"app.log.{n}" for n in range(1, 6)] + ["other.log.1", "x.1", "-rf.log.1"]
    for age, file in enumerate(names):
        (logs / file).write_text(file)
        os.utime(logs / file, (time.time() - age, time.time() - age))
    run(
        "disk-space/scripts/prune-rotated.sh",
        f"{logs}/{name}",
        "0",
        log_dirs=[str(logs)],
        min_use_percent="0",
    )
    expected = set(names) - ({"-rf.log.1"} if name == "-rf.log" else set())
    assert {p.name for p in logs.iterdir()} == expected


def test_disk_prune_stays_in_its_folders_and_off_symlinks(tmp_path):
    logs, victim = tmp_path / "logs", tmp_path / "victim"
    logs.mkdir()
    victim.mkdir()
    for n in range(1, 6):
        (victim / f"app.log.{n}").write_text("keep")
    (logs / "link").symlink_to(victim)
    (logs / "app.log.1").symlink_to(victim / "app.log.1")
    (logs / "app.log.2").symlink_to(victim / "app.log.2")
    prune = "disk-space/scripts/prune-rotated.sh"
    for bad in (f"{victim}/app.log", f"{logs}/../victim/app.log", f"{logs}/link/app.log"):
        assert run(prune, bad, "0", log_dirs=[str(logs)], min_use_percent="0").returncode in (1, 2)
    assert (
        run(prune, f"{logs}/app.log", "0", log_dirs=[str(logs)], min_use_percent="0").returncode
        == 1
    )
    assert sorted(p.name for p in victim.iterdir()) == [f"app.log.{n}" for n in range(1, 6)]
    assert (logs / "app.log.1").is_symlink()


def test_disk_prune_never_counts_a_name_with_a_newline_as_copies(tmp_path):
    """`app.log.1<newline>app.log.1` must not pass for two copies and cost the newest one."""
    for age, name in enumerate(["app.log.1", "app.log.1\napp.log.1", "app.log.2", "app.log.3"]):
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (time.time() - age, time.time() - age))
    prune = "disk-space/scripts/prune-rotated.sh"
    run(prune, str(tmp_path / "app.log"), "2", log_dirs=[str(tmp_path)], min_use_percent="0")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "app.log.1",
        "app.log.1\napp.log.1",
        "app.log.2",
    ]


def test_gunicorn_reload_signals_only_a_gunicorn_master(tmp_path):
    flag = tmp_path / "hup"
    code = (
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGHUP, lambda *a: pathlib.Path({str(flag)!r}).touch())\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    master = subprocess.Popen(
        [sys.executable, "-c", code, "gunicorn: master [app]"], stdout=subprocess.PIPE, text=True
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code, "not-it"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert master.stdout and master.stdout.readline() == "ready\n"
        assert other.stdout and other.stdout.readline() == "ready\n"
        reload = "gunicorn/scripts/reload-workers.sh"
        pid_file, other_file, link = (tmp_path / n for n in ("gunicorn.pid", "o.pid", "l.pid"))
        pid_file.write_text(f"{master.pid}\n")
        other_file.write_text(f"{other.pid}\n")
        files = {"pid_files": [str(tmp_path / "missing.pid"), str(pid_file), str(other_file)]}
        assert run(reload, str(master.pid)).returncode == 2  # no configured pid file names it
        assert run(reload, str(other.pid), **files).returncode == 1  # named, but not gunicorn
        link.symlink_to(pid_file)
        assert run(reload, str(master.pid), pid_files=[str(link)]).returncode == 2
        assert not flag.exists()
        assert run(reload, str(master.pid), **files).returncode == 0
        assert wait_for(flag.exists, 5)
        assert run(reload, "12a", **files).returncode == 2
    finally:
        for proc in (master, other):
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def test_disk_prune_refuses_a_folder_swapped_for_a_symlink_below_its_root(tmp_path):
    """The agent checked the path; a middle component swapped for a symlink afterwards is
    caught by the script, which works from the folder as it resolves now."""
    logs, victim = tmp_path / "logs", tmp_path / "victim"
    logs.mkdir()
    (victim / "deep").mkdir(parents=True)
    for n in range(1, 6):
        (victim / "deep" / f"app.log.{n}").write_text("keep")
    (logs / "mid").symlink_to(victim)  # swapped in after the check, before the fix
    result = run(
        "disk-space/scripts/prune-rotated.sh",
        f"{logs}/mid/deep/app.log",
        "0",
        log_dirs=[str(logs)],
        min_use_percent="0",
    )
    assert result.returncode == 2 and "outside" in result.stderr, result.stderr
    assert sorted(p.name for p in (victim / "deep").iterdir()) == [
        f"app.log.{n}" for n in range(1, 6)
    ]
