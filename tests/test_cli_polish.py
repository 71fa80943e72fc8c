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
