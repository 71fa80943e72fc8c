"""Running fixes with real processes: argv, environment, timeouts, output, retries."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from agent.config import load_config
from agent.daemon import Agent
from agent.packs import load_pack
from agent.remedy import ProcessRunner, resolve_identity
from agent.retry import run_remedy
from tests.helpers import write_config, write_pack

BODY = """\
[[pattern]]
id = "p"
match = '''^oops (?P<what>.*)'''

[pattern.fields]
what = { allow = '''[ -~]+''' }  # any printable text: these tests send hostile values on purpose

[pattern.remedy]
run = ["scripts/fix.sh", "{what}"]
attempts = 3
backoff = { initial = "2s", max = "10s" }

[[pattern.example]]
line = "oops x"
"""


def runner() -> ProcessRunner:
    return ProcessRunner(output_tail=1024)


def test_argv_items_arrive_verbatim(tmp_path):
    out = tmp_path / "argv"
    script = f'#!/bin/sh\nfor a in "$@"; do printf \'%s\\0\' "$a"; done > {out}\n'
    pack = load_pack(write_pack(tmp_path, "t", BODY, {"fix.sh": script}))
    [pattern] = pack.patterns
    assert pattern.remedy is not None
    for value in ["$(id); rm -rf ~", "--force", "-rf", "' \" ` \\ *", "  spaced  "]:
        outcome = asyncio.run(
            run_remedy(pattern, pattern.remedy, {"what": value}, pack.dir, runner())
        )
        assert outcome.resolved
        assert out.read_bytes() == value.encode() + b"\0"
    out.unlink()
    # a control character is refused whatever the field's constraint: nothing runs
    outcome = asyncio.run(run_remedy(pattern, pattern.remedy, {"what": "a\nb"}, pack.dir, runner()))
    assert not outcome.resolved and "control character" in (outcome.rejected or "")
    assert not out.exists()


def test_timeout_kills_the_whole_group_including_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nexec sleep 300\n"
    pack = write_pack(tmp_path, "t", BODY, {"fix.sh": script})
    started = time.monotonic()
    attempt = runner()([str(pack / "scripts/fix.sh")], {"PATH": "/usr/bin:/bin"}, pack, 0.5)
    assert attempt.timed_out and attempt.signal is not None
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # a zombie reparented to us is dead for our purpose
        stat = Path(f"/proc/{child}/stat")
        if stat.exists() and stat.read_text().split()[2] == "Z":
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"child {child} survived the timeout")


def test_ten_megabytes_of_output_does_not_hang_and_keeps_the_tail(tmp_path):
    script = "#!/bin/sh\nhead -c 10485760 /dev/zero | tr '\\0' x\necho THE-END\necho err >&2\n"
    pack = write_pack(tmp_path, "t", BODY, {"fix.sh": script})
    attempt = runner()([str(pack / "scripts/fix.sh")], {"PATH": "/usr/bin:/bin"}, pack, 30)
    assert attempt.exit_code == 0 and not attempt.timed_out
    assert attempt.stdout.endswith("THE-END\n") and len(attempt.stdout) == 1024
    assert attempt.stderr == "err\n"


def test_fails_twice_then_succeeds_waits_asserted_through_injected_sleep(tmp_path):
    counter = tmp_path / "n"
    script = (
        f"#!/bin/sh\nn=$(cat {counter} 2>/dev/null || echo 0)\n"
        f"echo $((n+1)) > {counter}\n[ $n -ge 2 ]\n"
    )
    pack = load_pack(write_pack(tmp_path, "t", BODY, {"fix.sh": script}))
    [pattern] = pack.patterns
    assert pattern.remedy is not None
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    outcome = asyncio.run(
        run_remedy(pattern, pattern.remedy, {"what": "x"}, pack.dir, runner(), sleep=sleep)
    )
    assert outcome.resolved
    assert [a.exit_code for a in outcome.attempts] == [1, 1, 0]
    assert len(waits) == 2
    assert 2.0 <= waits[0] <= 4.0 and 4.0 <= waits[1] <= 6.0  # exponential, jitter <= initial


def test_missing_program_is_a_failed_attempt_not_a_crash(tmp_path):
    attempt = runner()([str(tmp_path / "nope")], {}, tmp_path, 5)
    assert not attempt.ok and "cannot start" in attempt.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_as_root_a_fix_runs_as_the_user_and_group_it_names():
    folder = Path(tempfile.mkdtemp(prefix="logmend-as-user-"))  # not under root's 0700 tmp
    try:
        folder.chmod(0o755)
        script = folder / "who.sh"
        script.write_text("#!/bin/sh\nid -u; id -g; id -G\n")
        script.chmod(0o755)
        identity = resolve_identity("nobody", "nogroup")
        assert identity is not None
        attempt = runner()([str(script)], {"PATH": "/usr/bin:/bin"}, folder, 10, identity)
        assert attempt.ok, attempt.stderr
        uid, gid, groups = attempt.stdout.split("\n")[:3]
        assert (int(uid), int(gid)) == (identity.uid, identity.gid) != (0, 0)
        assert groups.split() == [str(identity.gid)]  # root's supplementary groups dropped
    finally:
        shutil.rmtree(folder)


def test_an_unknown_fix_user_sets_the_pack_aside_naming_it(tmp_path):
    """Issue 17: a pack whose fix user this host lacks is broken alone; the agent starts."""
    pack = write_pack(tmp_path / "packs", "t", BODY, {"fix.sh": "#!/bin/sh\n"})
    text = (pack / "pack.toml").read_text()
    (pack / "pack.toml").write_text(text.replace("\n\n", '\nuser = "no-such-user-x"\n\n', 1))
    config = write_config(tmp_path, [(str(tmp_path / "*.log"), None)], tmp_path / "packs")
    agent = Agent(load_config(config))
    try:
        [broken] = agent.broken
        [error] = broken.errors
        assert error.file == str(pack / "pack.toml")
        assert "no such user 'no-such-user-x' on this host" in str(error)
        assert agent.packs == []
    finally:
        agent.store.close()
