"""The gunicorn pack under attack: no logged PID gets a signal unless a pid file names it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.attack import Siege, needs_root

STAMP = "[2024-03-01 12:00:00 +0000]"


def timeout_line(master: int | str) -> str:
    return f"{STAMP} [{master}] [CRITICAL] WORKER TIMEOUT (pid:1305)"


def fake_master(flag: Path) -> subprocess.Popen[str]:
    """A process titled like a gunicorn master that records every SIGHUP it gets."""
    code = (
        "import signal, sys, time, pathlib\n"
        f"flag = pathlib.Path({str(flag)!r})\n"
        "signal.signal(signal.SIGHUP, lambda *a: flag.write_text(flag.read_text() + 'x'"
        " if flag.exists() else 'x'))\n"
        "print('ready', flush=True)\ntime.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "gunicorn: master [app]"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


@needs_root
def test_crafted_worker_timeouts_signal_only_the_configured_master(tmp_path):
    flags = {name: tmp_path / f"{name}.hup" for name in ("real", "stranger", "linked")}
    procs = {name: fake_master(flag) for name, flag in flags.items()}
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / "app.pid").write_text(f"{procs['real'].pid}\n")
        (tmp_path / "elsewhere.pid").write_text(f"{procs['linked'].pid}\n")
        (run / "linked.pid").symlink_to(tmp_path / "elsewhere.pid")
        params = {"pid_files": [str(run / "app.pid"), str(run / "linked.pid")]}
        attacks = {
            str(procs["stranger"].pid): "not the PID in any configured pid file",
            str(procs["linked"].pid): "not the PID in any configured pid file",  # via a symlink
            "1": "not a process id",
            "0": "not a process id",
        }
        embedded = [
            f"{STAMP} [77] [INFO] GET /{timeout_line(procs['stranger'].pid)}",
            " " + timeout_line(procs["stranger"].pid),
            timeout_line(procs["stranger"].pid) + " and more",
        ]
        sentinel = (
            f"{STAMP} [1200] [ERROR] Worker (pid:1306) was sent SIGKILL! Perhaps out of memory?"
        )
        with Siege(tmp_path, "gunicorn", params) as siege:
            for _ in range(3):  # the pattern's threshold: 3 within 5 minutes
                siege.write(*embedded, *(timeout_line(pid) for pid in attacks))
                siege.write(timeout_line(procs["real"].pid))
            siege.write(sentinel)
            statuses = siege.outcomes({**dict.fromkeys(attacks, ""), "1200": ""})
            reasons = siege.reasons()
            assert siege.fixed(f"resolved gunicorn/worker-timeout key='{procs['real'].pid}'")
        for pid, why in attacks.items():
            assert statuses[pid] == "rejected-field", (pid, statuses)
            assert why in reasons[pid], (pid, reasons[pid])
        assert set(statuses) == {*attacks, "1200"}  # the embedded lines matched nothing
        assert flags["real"].read_text() == "x"
        assert not flags["stranger"].exists() and not flags["linked"].exists()
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
