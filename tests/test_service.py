"""The agent as a systemd service: notify, watchdog, reload, shutdown, metrics, units."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    PYTHON,
    RECORD_SCRIPT,
    AgentProc,
    agent_with_pack,
    append,
    cli,
    wait_for,
    write_config,
    write_pack,
)

ROOT = Path(__file__).resolve().parent.parent

# The fix runs as root: it writes into pytest's tmp_path (root's, mode 0700).
PACK = """\
user = "root"

[[pattern]]
id = "stuck"
match = '''^queue stuck (?P<q>\\w+)'''
key = "{q}"

[pattern.remedy]
run = ["scripts/record.sh", "OUT/fix"]
attempts = 1
cooldown = "1h"

[[pattern.example]]
line = "queue stuck q1"
"""

EXTRA = """
[[pattern]]
id = "late"
match = '''added later (?P<n>\\d+)'''
key = "{n}"
escalate = "never"

[[pattern.example]]
line = "added later 1"
"""


class NotifySocket:
    """A Unix datagram socket standing in for systemd's; abstract when `abstract`."""

    def __init__(self, tmp: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"logmend-test-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + name.encode())
            self.env = "@" + name
        else:
            path = tmp / "notify.sock"
            self.sock.bind(str(path))
            self.env = str(path)
        self.messages: list[tuple[float, str]] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            for line in data.decode().split("\n"):
                self.messages.append((time.monotonic(), line))

    def states(self) -> list[str]:
        """The sequence of state messages, runs of WATCHDOG=1 folded into one."""
        out: list[str] = []
        for _, line in self.messages:
            if line.startswith(("STATUS=", "MONOTONIC_USEC=")):
                continue
            if not (out and out[-1] == line == "WATCHDOG=1"):
                out.append(line)
        return out

    def pings_since(self, moment: float) -> int:
        return sum(1 for at, line in self.messages if line == "WATCHDOG=1" and at > moment)

    def close(self) -> None:
        self.sock.close()


ROOT_OPS = 'allow_root = ["ops"]\n'  # pack "ops" asks for root (PACK); the host allows it


def make_agent(tmp: Path, extra: str = "") -> tuple[AgentProc, Path, Path]:
    out = tmp / "out"
    out.mkdir()
    scripts = {"record.sh": RECORD_SCRIPT.format(exit_code=0)}
    agent, log = agent_with_pack(
        tmp, PACK.replace("OUT", str(out)), scripts, extra=extra, agent_extra=ROOT_OPS
    )
    return agent, log, out


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_order_and_watchdog_pings_stop_while_the_matcher_is_wedged(
    tmp_path, monkeypatch, abstract
):
    notify = NotifySocket(tmp_path, abstract)
    stall = tmp_path / "stall"
    monkeypatch.setenv("NOTIFY_SOCKET", notify.env)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 200 ms
    monkeypatch.setenv("LOGMEND_TEST_STALL", str(stall))
    agent, log, _ = make_agent(tmp_path)
    try:
        agent.start()
        assert wait_for(lambda: notify.states()[:2] == ["READY=1", "WATCHDOG=1"])
        assert any(line.startswith("STATUS=1 files,") for _, line in notify.messages)
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        assert wait_for(
            lambda: (
                notify.states()[:5]
                == ["READY=1", "WATCHDOG=1", "RELOADING=1", "READY=1", "WATCHDOG=1"]
            )
        ), notify.states()
        stall.touch()
        append(log, "queue stuck q1")  # the reader takes it and wedges in matching
        assert wait_for(lambda: Path(f"{stall}.held").exists())  # the reader is wedged now
        quiet = time.monotonic()
        time.sleep(1.5)  # a negative: no ping in over seven watchdog intervals
        assert notify.pings_since(quiet) == 0
        assert agent.proc.poll() is None  # alive, but wedged: systemd would restart it
        stall.unlink()
        freed = time.monotonic()
        assert wait_for(lambda: notify.pings_since(freed) >= 2)
        assert agent.stop() == 0
        assert notify.states()[-1] == "STOPPING=1"
    finally:
        notify.close()


def test_without_notify_socket_nothing_is_sent_and_it_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    agent, log, out = make_agent(tmp_path)
    agent.start()
    append(log, "queue stuck q1")
    assert wait_for(lambda: (out / "fix.0.argv").exists())
    assert agent.stop() == 0


def tee_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_reload_swaps_packs_keeps_positions_and_cooldowns_and_sets_a_broken_pack_aside(
    tmp_path, monkeypatch
):
    tee = tmp_path / "tee"
    monkeypatch.setenv("LOGMEND_TEST_TEE", str(tee))
    agent, log, out = make_agent(tmp_path)
    agent.start()
    assert agent.proc is not None
    written = [f"line {n}" for n in range(100)] + ["queue stuck q1"]
    append(log, *written)
    assert wait_for(lambda: (out / "fix.0.argv").exists())
    pack = tmp_path / "packs" / "ops" / "pack.toml"
    pack.write_text(pack.read_text() + EXTRA)
    agent.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: agent.saw("reloaded: 1 source(s), 1 pack(s), 2 pattern(s)"))
    more = [f"line {n}" for n in range(100, 200)] + ["queue stuck q1", "added later 7"]
    append(log, *more)
    assert wait_for(lambda: agent.saw("matched ops/late key='7'")), agent.log()
    good = pack.read_text()
    pack.write_text(good + "\n[[pattern]]\nid = 'broken'\nmatch = '''(unclosed'''\n")
    agent.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: agent.saw("reloaded: ") == 2), agent.log()
    # issue 17: the broken pack is set aside alone (here the only one) and named
    assert re.search(
        r"pack ops in .* does not run .*pack\.toml:\d+: pattern\[2\]\.match", agent.log()
    )
    status = cli("status", "-c", str(agent.config))
    assert "broken packs: 1" in status and "pattern[2].match" in status
    last = [f"line {n}" for n in range(200, 300)] + ["added later 8"]
    append(log, *last)
    assert wait_for(lambda: len(tee_lines(tee)) == len(written + more + last))
    pack.write_text(good)  # mended: it runs again
    agent.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: agent.saw("reloaded: ") == 3), agent.log()
    final = ["added later 9"]
    append(log, *final)
    assert wait_for(lambda: agent.saw("matched ops/late key='9'")), agent.log()
    last += final
    assert wait_for(lambda: len(tee_lines(tee)) == len(written + more + last))
    assert agent.stop() == 0
    assert tee_lines(tee) == written + more + last  # each line once, in order, across reloads
    assert not (out / "fix.1.argv").exists()  # the cooldown of q1 survived both reloads
    assert agent.saw("matched ops/stuck") == 1
    assert not agent.saw("matched ops/late key='8'")  # the pack was set aside then


def test_sigterm_under_load_exits_0_soon_with_checkpoints_committed(tmp_path, monkeypatch):
    tee = tmp_path / "tee"
    monkeypatch.setenv("LOGMEND_TEST_TEE", str(tee))
    agent, log, _ = make_agent(tmp_path)
    agent.start()
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            append(log, *(f"busy line {n + i}" for i in range(200)))
            n += 200

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert wait_for(lambda: tee.exists() and tee.stat().st_size > 100_000)
        started = time.monotonic()
        code = agent.stop(signal.SIGTERM)
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
    assert code == 0 and took < 10, (code, took)
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        [(offset,)] = db.execute("SELECT offset FROM checkpoints").fetchall()
    assert offset == tee.stat().st_size  # everything read was committed, nothing beyond
    agent.start()
    assert wait_for(lambda: tee.stat().st_size == log.stat().st_size)
    assert agent.stop() == 0
    lines = tee_lines(tee)
    assert len(lines) == len(set(lines)) == len(log.read_text().splitlines())


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_endpoint_reports_what_the_test_drove(tmp_path):
    agent, log, _ = make_agent(tmp_path, extra='\n[metrics]\nlisten = "127.0.0.1:0"\n')
    agent.start()
    line = next(line for line in agent.lines if "metrics on http://" in line)
    url = line.split("metrics on ", 1)[1]
    assert url.startswith("http://127.0.0.1:")
    append(log, *(f"noise {n}" for n in range(50)), "queue stuck q1", "queue stuck q1",
           "ERROR cache 1 wedged", "ERROR cache 2 wedged")  # fmt: skip
    assert wait_for(lambda: agent.saw("resolved ops/stuck"))
    source = (("source", str(log)),)
    assert wait_for(lambda: scrape(url).get(("logmend_lines_read_total", source)) == 54)
    metrics = scrape(url)
    assert metrics[("logmend_bytes_read_total", source)] == log.stat().st_size
    assert metrics[("logmend_matches_total", (("pack", "ops"), ("pattern", "stuck")))] == 2
    assert metrics[("logmend_fixes_total", (("outcome", "resolved"),))] == 1
    assert metrics[("logmend_incidents", (("state", "resolved"),))] == 1
    assert metrics[("logmend_file_lag_bytes", (("path", str(log)),))] == 0
    assert metrics[("logmend_spool_depth", ())] == 0
    owner = (("owner", "team-test"),)  # the pack's owner: errors no pattern matched
    assert metrics[("logmend_unknown_templates", owner)] == 1
    assert metrics[("logmend_unknown_lines_total", owner)] == 2
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: scrape(url).get(("logmend_reloads_total", (("result", "ok"),))) == 1)
    assert agent.stop() == 0


def test_metrics_are_off_by_default(tmp_path):
    agent, _, _ = make_agent(tmp_path)
    agent.start()
    assert not agent.saw("metrics on")
    assert agent.stop() == 0


def test_a_config_that_tails_the_agents_own_log_is_refused(tmp_path):
    agent, _, _ = make_agent(tmp_path)
    config = agent.config
    own = tmp_path / "agent-own.log"
    config.write_text(
        config.read_text().replace(
            "[limits]", f'[[source]]\npath = "{tmp_path}/agent-*.log"\npacks = "*"\n\n[limits]'
        )
    )
    with own.open("w") as stderr:
        code = subprocess.run(
            [PYTHON, "-m", "agent", "run", "-c", str(config)], stderr=stderr, timeout=30
        ).returncode
    assert code == 1
    assert "source[1].path" in own.read_text() and "the agent's own log" in own.read_text()


def test_json_logs_are_one_object_a_line(tmp_path):
    agent, log, _ = make_agent(tmp_path)
    agent.start("--log-format", "json")
    append(log, "queue stuck q1")
    assert wait_for(lambda: agent.saw("resolved ops/stuck"))
    assert agent.stop() == 0
    records = [json.loads(line) for line in agent.lines]
    assert {"time", "level", "logger", "message"} <= set(records[0])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_unit_files_pass_systemd_analyze_verify(tmp_path):
    logmend = Path(sys.executable).parent / "logmend"
    assert logmend.exists()
    units = []
    for unit in ("logmend.service", "logmend-receiver.service"):
        text = (ROOT / "systemd" / unit).read_text()
        for needed in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory="):
            assert needed in text, (unit, needed)
        # the shipped unit, with ExecStart pointing at this checkout's install
        (tmp_path / unit).write_text(text.replace("/opt/logmend/bin/logmend", str(logmend)))
        units.append(str(tmp_path / unit))
    assert (
        "ExecReload=/bin/kill -HUP $MAINPID" in (ROOT / "systemd" / "logmend.service").read_text()
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_the_receiver_tells_systemd_it_is_ready_and_stopping(tmp_path):
    from tests.helpers import make_receiver

    notify = NotifySocket(tmp_path, abstract=True)
    env = {**os.environ, "NOTIFY_SOCKET": notify.env, "WATCHDOG_USEC": "400000"}
    receiver = make_receiver(tmp_path)
    try:
        os.environ.update(env)
        receiver.start()
    finally:
        os.environ.pop("NOTIFY_SOCKET")
        os.environ.pop("WATCHDOG_USEC")
    try:
        assert wait_for(lambda: notify.states()[:2] == ["READY=1", "WATCHDOG=1"])
        assert any(
            line.startswith("STATUS=listening on http://127.0.0.1:") for _, line in notify.messages
        )
    finally:
        receiver.stop()
    assert wait_for(lambda: notify.states()[-1] == "STOPPING=1")
    notify.close()


def test_a_second_sigint_forces_the_exit_while_a_fix_holds_up_shutdown(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    hang = f"#!/bin/sh\ntouch {out}/started\nexec sleep 60\n"
    agent, log = agent_with_pack(
        tmp_path, PACK.replace("OUT", str(out)), {"record.sh": hang}, agent_extra=ROOT_OPS
    )
    agent.start()
    assert agent.proc is not None
    append(log, "queue stuck q1")
    assert wait_for(lambda: (out / "started").exists())
    agent.proc.send_signal(signal.SIGINT)
    assert wait_for(lambda: agent.saw("received SIGINT, stopping"))
    started = time.monotonic()
    agent.proc.send_signal(signal.SIGINT)
    assert agent.proc.wait(timeout=10) == 130
    assert time.monotonic() - started < 2.0  # the fix would have held it for seconds


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] == "Z"


def test_sigterm_kills_a_fix_that_outlasts_the_grace_and_it_runs_again_at_start(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    script = (
        f"#!/bin/sh\necho $$ >> {out}/runs\n"
        f'[ "$(wc -l < {out}/runs)" -gt 1 ] && exit 0\nexec sleep 60\n'
    )
    agent, log = agent_with_pack(
        tmp_path, PACK.replace("OUT", str(out)), {"record.sh": script}, agent_extra=ROOT_OPS
    )
    agent.start()
    append(log, "queue stuck q1")
    assert wait_for(lambda: (out / "runs").exists())
    started = time.monotonic()
    assert agent.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    [pid] = [int(n) for n in (out / "runs").read_text().split()]
    assert wait_for(lambda: gone(pid), 5), "the fix outlived the agent"
    assert agent.saw("fixes still running at shutdown were killed")
    agent.start()
    assert wait_for(lambda: agent.saw("resolved ops/stuck")), agent.log()
    assert len((out / "runs").read_text().split()) == 2
    assert agent.stop() == 0


def test_a_stale_sender_or_fix_loop_heartbeat_withholds_the_watchdog_ping(tmp_path, receiver):
    from agent.config import load_config
    from agent.daemon import FIX_LOOP_GRACE, Agent

    packs = tmp_path / "packs"
    write_pack(packs, "ops", PACK.replace("OUT", str(tmp_path)), {"record.sh": "#!/bin/sh\n"})
    config = write_config(tmp_path, [(str(tmp_path / "*.log"), None)], packs, receiver)
    agent = Agent(load_config(config))
    assert agent.sender is not None
    assert agent.progressing()
    agent.sender.heartbeat = time.monotonic() - agent.sender.grace - 1  # wedged mid-send
    assert not agent.progressing()
    agent.sender.heartbeat = time.monotonic()
    assert agent.progressing()
    agent.remediator.start()
    agent.remediator._running_loop()  # the loop starts with the first fix; here, now
    assert agent.remediator.stop(grace=0.1)  # and ticks no more: as if blocked
    agent.remediator._heartbeat = time.monotonic() - FIX_LOOP_GRACE - 1
    assert not agent.progressing()
    agent.store.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_arriving_while_the_loop_holds_its_wake_lock_does_not_deadlock(tmp_path, signum):
    """A handler runs on the main thread, maybe inside `wake.wait()` with the wake lock held.

    Seen in CI: SIGTERM landed there, the handler's `wake.set()` waited for the lock its
    own thread held, and the agent never stopped. Here the lock is held (as the main
    thread would hold it) while the handler runs: it must return at once, and the loop
    must still be woken once the lock is let go.
    """
    from agent.config import load_config
    from agent.daemon import Agent

    packs = tmp_path / "packs"
    write_pack(packs, "ops", PACK.replace("OUT", str(tmp_path)), {"record.sh": "#!/bin/sh\n"})
    config = write_config(tmp_path, [(str(tmp_path / "*.log"), None)], packs)
    agent = Agent(load_config(config))
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        agent._install_signals()
        handler = signal.getsignal(signum)
        assert callable(handler)
        caller = threading.Thread(target=handler, args=(signum, None), daemon=True)
        with agent.wake._cond:  # what the main thread holds inside wake.wait()
            caller.start()
            caller.join(timeout=2.0)
            assert not caller.is_alive(), "the handler waited for the wake lock"
            assert not agent.wake.is_set()
        assert agent.wake.wait(timeout=5.0)  # woken once the lock is free
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
        agent.store.close()
