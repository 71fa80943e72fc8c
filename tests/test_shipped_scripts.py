"""The shipped fix scripts, pointed at temp directories: they act only on what they are named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import wait_for

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PATTERNS / script), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_nginx_recreates_only_a_temp_dir(tmp_path):
    target = tmp_path / "cache" / "client_temp"
    assert run("nginx/scripts/check-temp-dir.sh", str(target)).returncode == 1
    assert run("nginx/scripts/recreate-temp-dir.sh", str(target)).returncode == 0
    assert target.is_dir() and oct(target.stat().st_mode & 0o777) == "0o700"
    assert run("nginx/scripts/check-temp-dir.sh", str(target)).returncode == 0
    for bad in (str(tmp_path / "etc"), "relative/client_temp", f"{tmp_path}/../client_temp"):
        assert run("nginx/scripts/recreate-temp-dir.sh", bad).returncode == 2
    assert not (tmp_path / "etc").exists()


def test_postgres_removes_only_a_stale_lock(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = tmp_path / "stale", tmp_path / "live"
    for datadir, pid in ((stale, dead.pid), (live, os.getpid())):
        datadir.mkdir()
        (datadir / "postmaster.pid").write_text(f"{pid}\n{datadir}\n")
    assert (
        run("postgresql/scripts/remove-stale-pid.sh", str(live), str(os.getpid())).returncode == 1
    )
    assert (live / "postmaster.pid").exists()
    assert run("postgresql/scripts/remove-stale-pid.sh", str(stale), "999999").returncode == 1
    assert run("postgresql/scripts/remove-stale-pid.sh", str(stale), str(dead.pid)).returncode == 0
    assert not (stale / "postmaster.pid").exists()
    assert run("postgresql/scripts/check-no-pid-file.sh", str(stale)).returncode == 0
    assert run("postgresql/scripts/check-no-pid-file.sh", str(live)).returncode == 0


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
    result = run("disk-space/scripts/prune-rotated.sh", str(tmp_path / "app.log"), "2")
    assert result.returncode == 0, result.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        ["app.log", "app.log.1", "app.log.2.gz", "other.log.1", "app.log.bak", "app.logger.1"]
    )
    assert (
        run("disk-space/scripts/prune-rotated.sh", str(tmp_path / "app.log"), "2").returncode == 1
    )


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
        assert run("gunicorn/scripts/reload-workers.sh", str(other.pid)).returncode == 1
        assert run("gunicorn/scripts/reload-workers.sh", str(master.pid)).returncode == 0
        assert wait_for(flag.exists, 5)
        assert run("gunicorn/scripts/reload-workers.sh", "12a").returncode == 2
    finally:
        for proc in (master, other):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
