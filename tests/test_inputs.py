"""The agent's own inputs: hostile packs and configs refused by name, a log nobody can forge."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from tests.helpers import (
    PYTHON,
    agent_with_pack,
    append,
    cli,
    status,
    wait_for,
    write_config,
    write_pack,
)
from tests.test_service import make_agent

MINIMAL = "[[pattern]]\nid = 'p'\nmatch = 'x'\n[[pattern.example]]\nline = 'x'\n"
DEEP = "\ndeep = " + "[" * 50_000 + "]" * 50_000 + "\n"


def logmend(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "agent", *args], capture_output=True, text=True, timeout=60
    )


def test_a_pack_nested_50000_deep_is_set_aside_on_sighup_and_runs_again_once_mended(tmp_path):
    """Reload applies the rule pack by pack (issue 17): the hostile version of the pack is
    skipped and named, the agent lives on, and the mended pack runs again."""
    agent, log, out = make_agent(tmp_path)
    agent.start()
    assert agent.proc is not None
    append(log, "queue stuck q1")
    assert wait_for(lambda: agent.saw("matched ops/stuck key='q1'")), agent.log()
    pack = tmp_path / "packs" / "ops" / "pack.toml"
    good = pack.read_text()
    pack.write_text(good + DEEP)
    agent.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: agent.saw("reloaded: ")), agent.log()
    nested = f"{pack}: is nested too deeply to read (arrays or tables inside one another)"
    assert f"does not run (1 problem(s)); every other pack does: {nested}" in agent.log()
    assert agent.proc.poll() is None
    assert [p["errors"] for p in status(agent.config)["broken_packs"]] == [[nested]]
    assert "broken packs: 1" in cli("status", "-c", str(agent.config))
    pack.write_text(good + "# " + "x" * (1 << 20) + "\n")  # and a pack past the size bound
    agent.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: agent.saw("reloaded: ") == 2), agent.log()
    assert [p["errors"] for p in status(agent.config)["broken_packs"]] == [
        [f"{pack}: is larger than 1 MiB: refused (no real one is this big)"]
    ]
    pack.write_text(good)
    agent.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: agent.saw("reloaded: ") == 3), agent.log()
    assert status(agent.config)["broken_packs"] == []
    append(log, "queue stuck q2")  # the mended pack matches and fixes again
    assert wait_for(lambda: agent.saw("matched ops/stuck key='q2'")), agent.log()
    assert wait_for(lambda: (out / "fix.1.argv").exists())
    assert agent.stop() == 0
    assert "Traceback" not in agent.log()


def test_any_exception_while_reloading_is_refused_counted_and_recorded(tmp_path, monkeypatch):
    from agent import daemon
    from agent.config import load_config

    agent_proc, _ = agent_with_pack(tmp_path, MINIMAL)
    agent = daemon.Agent(load_config(agent_proc.config))
    try:

        def broken(*_: object) -> None:
            raise RuntimeError("a bug in the pack loader")

        monkeypatch.setattr(daemon, "runnable_packs", broken)
        assert agent.reload() is False
        assert agent.reloads == {"ok": 0, "failed": 1}
        assert [p.name for p in agent.packs] == ["ops"]  # the running set stays
        recorded = agent.store.meta("last_reload")
        assert recorded is not None
        assert f"a pack under {tmp_path / 'packs'}: cannot be loaded (RuntimeError: a bug" in (
            recorded
        )
    finally:
        agent.store.close()


def test_at_start_a_pack_nested_50000_deep_is_named_and_set_aside(tmp_path):
    agent, _ = agent_with_pack(tmp_path, MINIMAL + DEEP)
    pack = tmp_path / "packs" / "ops" / "pack.toml"
    nested = f"{pack}: is nested too deeply to read (arrays or tables inside one another)"
    done = logmend("check", "-c", str(agent.config))
    assert done.returncode == 1, done.stderr
    assert f"{pack}: BROKEN: ops would not run" in done.stdout and nested in done.stdout
    agent.start()  # the agent starts without it: no crash loop under Restart=on-failure
    assert nested in agent.log() and "0 pack(s) (1 broken, not running: ops)" in agent.log()
    assert agent.stop() == 0


def test_at_start_any_exception_while_loading_is_an_error_naming_what_was_read(
    tmp_path, monkeypatch, capsys
):
    from agent import cli as cli_module

    agent, _ = agent_with_pack(tmp_path, MINIMAL)

    def broken(path: Path) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(cli_module, "load_config", broken)
    assert cli_module.main(["check", "-c", str(agent.config)]) == 1
    assert capsys.readouterr().err == (
        f"error: {agent.config}: cannot be loaded "
        "(RecursionError: maximum recursion depth exceeded)\n"
    )


def test_a_config_larger_than_1_mib_is_refused_naming_it(tmp_path):
    agent, _ = agent_with_pack(tmp_path, MINIMAL)
    agent.config.write_text(agent.config.read_text() + "# " + "x" * (1 << 20) + "\n")
    done = logmend("check", "-c", str(agent.config))
    assert (done.returncode, done.stderr) == (
        1,
        f"error: {agent.config}: is larger than 1 MiB: refused (no real one is this big)\n",
    )


LOG_LINE = re.compile(rb"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def test_control_characters_of_a_log_line_reach_the_agents_log_escaped(tmp_path):
    """A field with a control character is refused before any fix; but names still reach
    the log: here a log file whose name forges a log line and clears the terminal."""
    pack = """\
        [[pattern]]
        id = "stuck"
        match = '''^queue stuck (?P<q>\\w+)'''
        key = "k"

        [[pattern.example]]
        line = "queue stuck q1"
        """
    forged = "\x1b[2J\r12:00:00 INFO resolved everything\x85\x7f"
    logs = tmp_path / "logs"
    logs.mkdir()
    write_pack(tmp_path / "packs", "ops", pack)
    config = write_config(tmp_path, [(f"{logs}/*.log", None)], tmp_path / "packs")
    stderr = tmp_path / "agent.err"
    with stderr.open("wb") as sink:
        proc = subprocess.Popen([PYTHON, "-m", "agent", "run", "-c", str(config)], stderr=sink)
    try:
        assert wait_for(lambda: b" running: " in stderr.read_bytes()), stderr.read_bytes()
        append(logs / f"{forged}.log", "queue stuck q1")
        assert wait_for(lambda: b"matched ops/stuck" in stderr.read_bytes()), stderr.read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    written = stderr.read_bytes()
    assert b"\x1b" not in written and b"\r" not in written
    assert b"\\x1b[2J\\r12:00:00 INFO resolved everything\\x85\\x7f.log" in written
    for line in written.decode().splitlines():
        assert LOG_LINE.match(line.encode()), line


def test_a_traceback_keeps_its_lines_but_not_the_control_characters_inside_them():
    import logging
    import sys

    from agent.cli import TextFormatter

    try:
        raise ValueError("bad \x1b[31mred\r\u2028line")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("logmend", logging.ERROR, "f", 1, "a\tb\n%s", ("c\x9b",), exc_info)
    text = TextFormatter("%(levelname)s %(message)s").format(record)
    head, *traceback = text.split("\n")
    assert head == "ERROR a\\tb\\nc\\x9b"
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "ValueError: bad \\x1b[31mred\\r\\u2028line"
