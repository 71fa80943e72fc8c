"""The agent's own inputs: hostile packs and configs refused by name, a log nobody can forge."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import PYTHON, agent_with_pack, append, cli, status, wait_for
from tests.test_service import make_agent

MINIMAL = "[[pattern]]\nid = 'p'\nmatch = 'x'\n[[pattern.example]]\nline = 'x'\n"
DEEP = "\ndeep = " + "[" * 50_000 + "]" * 50_000 + "\n"


def logmend(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "agent", *args], capture_output=True, text=True, timeout=60
    )


def test_a_pack_nested_50000_deep_is_refused_on_sighup_and_the_old_set_keeps_matching(tmp_path):
    agent, log, out = make_agent(tmp_path)
    agent.start()
    assert agent.proc is not None
    append(log, "queue stuck q1")
    assert wait_for(lambda: agent.saw("matched ops/stuck key='q1'")), agent.log()
    pack = tmp_path / "packs" / "ops" / "pack.toml"
    good = pack.read_text()
    pack.write_text(good + DEEP)
    agent.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: agent.saw("reload refused")), agent.log()
    assert f"reload refused, the previous config and packs stay: {pack}: is nested too deeply" in (
        agent.log()
    )
    assert agent.proc.poll() is None
    last = status(agent.config)["last_reload"]
    assert not last["ok"] and last["errors"] == [
        f"{pack}: is nested too deeply to read (arrays or tables inside one another)"
    ]
    assert "REFUSED (the previous set still runs)" in cli("status", "-c", str(agent.config))
    pack.write_text(good + "# " + "x" * (1 << 20) + "\n")  # and a pack past the size bound
    agent.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: agent.saw("reload refused") == 2), agent.log()
    assert status(agent.config)["last_reload"]["errors"] == [
        f"{pack}: is larger than 1 MiB: refused (no real one is this big)"
    ]
    append(log, "queue stuck q2")  # the running set still matches and fixes
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

        def broken(roots: tuple[Path, ...]) -> None:
            raise RuntimeError("a bug in the pack loader")

        monkeypatch.setattr(daemon, "load_packs", broken)
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


@pytest.mark.parametrize("command", ["check", "run"])
def test_at_start_a_pack_nested_50000_deep_is_an_error_naming_it(tmp_path, command):
    agent, _ = agent_with_pack(tmp_path, MINIMAL + DEEP)
    done = logmend(command, "-c", str(agent.config))
    pack = tmp_path / "packs" / "ops" / "pack.toml"
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"error: {pack}: is nested too deeply to read (arrays or tables inside one another)\n"
    )


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


@pytest.mark.xfail(
    strict=True, reason="load_config reads through tomlsrc.read_bounded: one line in config.py"
)
def test_a_config_larger_than_1_mib_is_refused_naming_it(tmp_path):
    agent, _ = agent_with_pack(tmp_path, MINIMAL)
    agent.config.write_text(agent.config.read_text() + "# " + "x" * (1 << 20) + "\n")
    done = logmend("check", "-c", str(agent.config))
    assert (done.returncode, done.stderr) == (
        1,
        f"error: {agent.config}: is larger than 1 MiB: refused (no real one is this big)\n",
    )
