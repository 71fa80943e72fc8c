"""The command line as a new user meets it (issue 17, in part): `--log -`, a reader that
leaves early, an extra that is not installed."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import write_pack
from tests.test_packs import GOOD


def test_test_log_dash_reads_standard_input(tmp_path):
    pack = write_pack(tmp_path, "good", GOOD, {"fix.sh": "#!/bin/sh\n"})
    done = subprocess.run(
        [sys.executable, "-m", "agent", "test", str(pack), "--log", "-", "--json"],
        input="hello\nerror for bob\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [file] = json.loads(done.stdout)["files"]
    assert file["path"] == "-" and file["lines"] == 2
    assert file["matches"] == [
        {"line": 2, "pack": "good", "pattern": "p1", "fields": {"user": "bob"}}
    ]


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """`logmend test ... | head`: the pipe closes mid-report; logmend stops quietly, with
    the status a shell gives a command SIGPIPE ended (it printed a BrokenPipeError)."""
    pack = write_pack(tmp_path, "good", GOOD, {"fix.sh": "#!/bin/sh\n"})
    log = tmp_path / "many.log"
    log.write_text("error for bob\n" * 50_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "test", str(pack), "--log", str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()  # `head -1`
    proc.stdout.close()
    errors = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in errors and "Exception ignored" not in errors, errors


def test_a_receiver_command_without_its_extra_says_how_to_install_it(tmp_path):
    code = (
        "import sys\n"
        "for name in ('starlette', 'uvicorn', 'psycopg', 'psycopg_pool'):\n"
        "    sys.modules[name] = None  # as if `pip install logmend` without [receiver]\n"
        "from agent.cli import main\n"
        f"raise SystemExit(main(['receiver', '--db', {str(tmp_path / 'r.db')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "pip install 'logmend[receiver]'" in done.stderr, done.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60
    )


def test_check_takes_pack_folders_without_a_config(tmp_path):
    pack = write_pack(tmp_path, "good", GOOD, {"fix.sh": "#!/bin/sh\n"})
    done = run_cli("check", str(pack))
    assert done.returncode == 0, done.stderr
    assert f"{pack / 'pack.toml'}: ok: good 1.2.3 (owner team-test), 1 pattern(s)" in done.stdout
    assert "matcher:" in done.stdout
    assert run_cli("check").returncode == 1  # neither a config nor a pack: said, not guessed
    assert "give either -c CONFIG or PACK_DIR" in run_cli("check").stderr


def test_check_fails_on_an_example_that_fails(tmp_path):
    body = GOOD.replace('fields = { user = "bob" }', 'fields = { user = "alice" }')
    pack = write_pack(tmp_path, "wrong", body, {"fix.sh": "#!/bin/sh\n"})
    done = run_cli("check", str(pack))
    assert done.returncode == 1
    assert "FAILED" in done.stdout and '"user": "alice"' in done.stdout


def test_a_fix_script_without_its_execute_bit_is_refused_where_it_is_loaded(tmp_path):
    """The agent used to load it and log `-> exit None` when the fix could not start."""
    pack = write_pack(tmp_path, "good", GOOD, {"fix.sh": "#!/bin/sh\n"})
    (pack / "scripts" / "fix.sh").chmod(0o644)
    for command in (["check", str(pack)], ["test", str(pack)]):
        done = run_cli(*command)
        assert done.returncode == 1, (command, done.stdout)
        said = done.stdout if command[0] == "check" else done.stderr  # check: its BROKEN report
        assert "is not executable (chmod +x" in said, (command, done.stderr)


def test_a_running_agent_says_its_token_is_readable_by_others(tmp_path, receiver):
    """`check` refuses such a token file; a running agent (an upgrade must not turn into
    a crash loop) keeps sending and says what to do."""
    from tests.helpers import agent_with_pack

    agent, _ = agent_with_pack(tmp_path, GOOD, {"fix.sh": "#!/bin/sh\n"}, receiver)
    (tmp_path / "token").chmod(0o644)
    agent.start()
    assert agent.saw("the token is readable by others (mode 644): chmod 600"), agent.log()
    assert agent.stop() == 0


def test_an_unknown_key_suggests_the_key_it_was_likely_meant_to_be(tmp_path):
    from tests.test_packs import errors_of

    body = GOOD.replace(
        'key = "{user}"', 'key = "{user}"\nseverty = "warning"\nflibbertigibbet = 1'
    )
    errors = errors_of(tmp_path, body)
    assert ("pattern[0].severty", 10, "unknown key (did you mean 'severity'?)") in errors, errors
    assert ("pattern[0].flibbertigibbet", 11, "unknown key") in errors, errors


def test_a_fix_that_cannot_start_is_logged_with_why_not_exit_none(tmp_path):
    from tests.helpers import agent_with_pack, append, wait_for

    body = GOOD.replace(
        'run = ["scripts/fix.sh", "{user}"]', 'run = ["scripts/fix.sh", "{user}"]\nattempts = 1'
    )
    agent, log = agent_with_pack(tmp_path, body, {"fix.sh": "#!/nonexistent/interpreter\n"})
    agent.start()
    append(log, "error for bob")
    assert wait_for(lambda: agent.saw("fix ops/p1: bob -> cannot start: ")), agent.log()
    assert not agent.saw("exit None"), agent.log()
    assert agent.stop() == 0


def test_check_refuses_a_source_that_names_a_pack_not_loaded(tmp_path):
    """At run time a warning (the other packs run), then nothing matches that source:
    `check` says so before it ships, with the likely name."""
    packs = tmp_path / "packs"
    write_pack(packs, "nginx", GOOD, {"fix.sh": "#!/bin/sh\n"})
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\npacks = ["{packs}"]\n'
        '[[source]]\npath = "/x.log"\npacks = ["ngnix"]\n'
    )
    done = run_cli("check", "-c", str(config))
    assert done.returncode == 1
    assert (
        "source[0].packs: names pack 'ngnix', which is not loaded (did you mean 'nginx'?)"
        in done.stderr
    ), done.stderr


def test_a_failing_example_names_its_line_in_pack_toml(tmp_path):
    body = GOOD.replace('fields = { user = "bob" }', 'fields = { user = "alice" }')
    pack = write_pack(tmp_path, "wrong", body, {"fix.sh": "#!/bin/sh\n"})
    lines = (pack / "pack.toml").read_text().splitlines()
    at = next(n for n, text in enumerate(lines, 1) if text == 'line = "error for bob"')
    done = run_cli("test", str(pack))
    assert done.returncode == 1
    assert f"  p1 (line {at}): 'error for bob'" in done.stdout, done.stdout


def test_status_words_an_incident_one_way_wherever_it_lists_it(tmp_path):
    from tests.helpers import append, status, wait_for
    from tests.test_footprint import fixing_agent

    agent, log, _ = fixing_agent(tmp_path)
    agent.start()
    append(log, "queue stuck q7")
    assert wait_for(lambda: status(agent.config)["recent"]), agent.log()
    assert agent.stop() == 0
    text = run_cli("status", "-c", str(agent.config)).stdout
    fixes = text.split("recent fixes:\n")[1].splitlines()[0]
    incidents = text.split("recent incidents:\n")[1].splitlines()[0]
    assert fixes.endswith("ops/stuck key='q7' resolved, 1 try, 1 line(s)"), text
    assert incidents == fixes, text


def test_a_toml_syntax_error_names_the_key_it_is_at(tmp_path):
    pack = write_pack(tmp_path, "typo", GOOD.replace('key = "{user}"', "key = {user}"))
    done = run_cli("test", str(pack))
    assert done.returncode == 1
    assert f"{pack / 'pack.toml'}:" in done.stderr and ": pattern[0].key: " in done.stderr, (
        done.stderr
    )


def test_every_option_of_every_command_says_what_it_is_for():
    import argparse

    from agent.cli import build_parser

    silent = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif not action.help and not isinstance(
                action, argparse._HelpAction | argparse._VersionAction
            ):
                silent.append(f"{path} {action.option_strings or action.dest}")

    walk(build_parser(), "logmend")
    assert silent == []
    done = subprocess.run(
        [sys.executable, "-m", "agent", "explain", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "lines from standard input" in done.stdout.lower()


def check_online(config) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "check", "-c", str(config), "--online"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_online_tries_the_token_against_the_receiver(tmp_path, receiver):
    from agent.receiver.scopes import Scope
    from agent.receiver.store import ReceiverStore
    from tests.helpers import agent_with_pack

    agent, _ = agent_with_pack(tmp_path, GOOD, {"fix.sh": "#!/bin/sh\n"}, receiver)
    done = check_online(agent.config)
    assert done.returncode == 0, done.stderr
    assert f"receiver: {receiver.url}/v1/escalations accepts the token" in done.stdout
    assert receiver.escalations() == []  # the try stored nothing
    (tmp_path / "token").write_text("not-a-token")
    done = check_online(agent.config)
    assert done.returncode == 1
    assert "answered 401" in done.stderr and "ask the central team for a new one" in done.stderr
    store = ReceiverStore(receiver.db)
    try:
        reader = store.create_token(Scope.READ, "reader", ("team-test",))
    finally:
        store.close()
    (tmp_path / "token").write_text(reader)
    done = check_online(agent.config)
    assert done.returncode == 1 and "answered 403" in done.stderr, done.stderr
    assert "use an ingest token" in done.stderr


def test_check_online_says_when_there_is_no_receiver_to_try(tmp_path):
    from tests.helpers import agent_with_pack, free_port

    agent, _ = agent_with_pack(tmp_path, GOOD, {"fix.sh": "#!/bin/sh\n"})
    done = check_online(agent.config)
    assert done.returncode == 1 and "has no [escalation] to try" in done.stderr
    dead = f"http://127.0.0.1:{free_port()}/v1/escalations"
    token = tmp_path / "token"
    token.write_text("x")
    token.chmod(0o600)
    agent.config.write_text(
        agent.config.read_text() + f'[escalation]\nurl = "{dead}"\ntoken_file = "{token}"\n'
    )
    done = check_online(agent.config)
    assert done.returncode == 1 and "cannot reach the receiver at" in done.stderr, done.stderr


def test_a_large_log_shows_how_far_it_has_got_on_a_terminal_only(tmp_path):
    """`test --log` on a large file: a progress line on a terminal (a pty here), cleared
    before the report; nothing of it in a pipe or in the --json document."""
    import os
    import pty

    pack = write_pack(tmp_path, "good", GOOD, {"fix.sh": "#!/bin/sh\n"})
    log = tmp_path / "big.log"
    log.write_text(("nothing to see here at all\n" * 9 + "error for bob\n") * 4000)
    while log.stat().st_size < 16 << 20:  # Progress.LARGE
        log.write_bytes(log.read_bytes() * 2)
    master, slave = pty.openpty()
    report = tmp_path / "report.json"
    with report.open("wb") as stdout:  # a file: a pipe nobody reads would block the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "test", str(pack), "--log", str(log), "--json"],
            stdout=stdout,
            stderr=slave,
        )
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0
    os.close(master)
    assert b"% read, " in seen and b"\r\x1b[K" in seen, seen[-400:]
    assert json.loads(report.read_text())["files"][0]["lines"] > 0  # whole, no progress in it
    piped = subprocess.run(
        [sys.executable, "-m", "agent", "test", str(pack), "--log", str(log)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "% read" not in piped.stderr and "% read" not in piped.stdout
