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
