"""The whole path with the real agent process, the real receiver, real files and scripts."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import msgpack
import pytest

from agent.remedy import SAFE_PATH
from tests.helpers import (
    RECORD_SCRIPT,
    AgentProc,
    Receiver,
    append,
    make_receiver,
    status,
    wait_for,
    wait_len,
    write_config,
    write_pack,
)

# The fixes run as root: they write into pytest's tmp_path (root's, mode 0700).
PACK = """\
user = "root"

[[pattern]]
id = "login-failed"
match = '''^login (?P<outcome>failed) for user=(?P<user>.+)$'''
key = "{{user}}"
article = "articles/a.md"

[pattern.fields]
user = {{ allow = '''[ -~]+''' }}  # any printable text, hostile or not; outcome: unconstrained

[pattern.remedy]
run = ["scripts/record.sh", "{out}/fix", "--user", "{{user}}", "literal item"]
attempts = 1
cooldown = "1h"

[[pattern.example]]
line = "login failed for user=bob"
fields = {{ outcome = "failed", user = "bob" }}

[[pattern]]
id = "disk-on-fire"
match = '''^disk on fire: (?P<disk>\\S+)'''
key = "{{disk}}"
severity = "critical"
article = "articles/a.md"

[pattern.fields]
disk = {{ type = "word" }}

[pattern.remedy]
run = ["scripts/fail.sh", "{out}/fail", "{{disk}}"]
attempts = 3
backoff = {{ initial = "10ms", max = "50ms" }}

[[pattern.example]]
line = "disk on fire: sda"

[[pattern]]
id = "unknown"
match = '''FATAL unknown: (?P<what>.*)'''
key = "{{what}}"
article = "articles/a.md"

[[pattern.example]]
line = "FATAL unknown: x"
fields = {{ what = "x" }}
"""


@pytest.fixture
def setup(tmp_path: Path, receiver: Receiver) -> tuple[AgentProc, Path, Path]:
    out = tmp_path / "out"
    out.mkdir()
    packs = tmp_path / "packs"
    write_pack(
        packs,
        "testpack",
        PACK.format(out=out),
        scripts={
            "record.sh": RECORD_SCRIPT.format(exit_code=0),
            "fail.sh": RECORD_SCRIPT.format(exit_code=3),
        },
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    config = write_config(
        tmp_path,
        [(f"{logs}/*.log", None)],
        packs,
        receiver,
        agent_extra='allow_root = ["testpack"]\n',
    )
    return AgentProc(config), logs / "app.log", out


def read_argv(path: Path) -> list[str]:
    return [item.decode() for item in path.read_bytes().split(b"\0")[:-1]]


def test_fix_gets_hostile_field_verbatim_as_one_argv_item(setup, tmp_path, monkeypatch):
    agent, log, out = setup
    monkeypatch.setenv("LOGMEND_TEST_SECRET", "must-not-leak")
    agent.start()
    hostile = f"$(touch {tmp_path}/pwned); rm -rf ~"
    append(log, f"login failed for user={hostile}")
    assert wait_for(lambda: (out / "fix.0.env").exists() and agent.saw("resolved")), agent.log()
    assert read_argv(out / "fix.0.argv") == ["--user", hostile, "literal item"]
    env = dict(
        line.split("=", 1) for line in (out / "fix.0.env").read_text().splitlines() if "=" in line
    )
    assert env["LOGMEND_FIELD_USER"] == hostile
    # only constrained fields reach a fix: the regex also captures `outcome`, which has none
    assert [k for k in env if k.startswith("LOGMEND_FIELD_")] == ["LOGMEND_FIELD_USER"]
    assert env["PATH"] == SAFE_PATH
    assert env["LOGMEND_PATTERN"] == "login-failed"
    assert "LOGMEND_TEST_SECRET" not in env
    assert not (tmp_path / "pwned").exists()
    assert agent.stop() == 0


def test_failing_fix_is_retried_then_escalated_with_attempts(setup, receiver):
    agent, log, out = setup
    agent.start()
    append(log, "disk on fire: sdb")
    events = wait_for(lambda: receiver.escalations(pattern="disk-on-fire"))
    assert len(events) == 1, agent.log()
    event = events[0]
    assert event["status"] == "remedy-failed"
    assert event["owner"] == "team-test" and event["pack_version"] == "1.2.3"
    assert event["fields"] == {"disk": "sdb"}
    assert [a["exit_code"] for a in event["attempts"]] == [3, 3, 3]
    assert [read_argv(out / f"fail.{n}.argv") for n in range(3)] == [["sdb"]] * 3
    assert not (out / "fail.3.argv").exists()
    assert event["article_text"] == "# what to do\n"
    assert agent.stop() == 0


def test_line_with_no_remedy_is_escalated_with_its_line_and_fields(setup, receiver):
    agent, log, _ = setup
    agent.start()
    append(log, "noise", "FATAL unknown: the flux capacitor", "more noise")
    events = wait_for(lambda: receiver.escalations(pattern="unknown"))
    assert len(events) == 1
    assert events[0]["status"] == "no-remedy"
    assert events[0]["lines"] == ["FATAL unknown: the flux capacitor"]
    assert events[0]["fields"] == {"what": "the flux capacitor"}
    assert events[0]["host"] == "test-host" and events[0]["source"] == str(log)
    assert agent.stop() == 0


def test_receiver_refuses_requests_without_a_valid_token(receiver):
    body = msgpack.packb(
        {
            "events": [
                {
                    "id": "x1",
                    "host": "h",
                    "owner": "o",
                    "pack": "p",
                    "pattern": "q",
                    "status": "no-remedy",
                    "fingerprint": "f",
                }
            ]
        }
    )
    url = f"{receiver.url}/v1/escalations"
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Basic {receiver.token}"},
    ):
        answer = httpx.post(
            url, content=body, headers={**headers, "Content-Type": "application/msgpack"}
        )
        assert answer.status_code == 401
    assert httpx.get(url).status_code == 401
    assert receiver.escalations() == []
    good = httpx.post(
        url,
        content=body,
        headers={
            "Authorization": f"Bearer {receiver.token}",
            "Content-Type": "application/msgpack",
        },
    )
    assert good.status_code == 200 and good.json()["accepted"] == ["x1"]


def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(setup, receiver):
    agent, log, _ = setup
    agent.start()
    total = 3000
    written = threading.Event()

    def writer() -> None:
        for start in range(0, total, 50):
            append(log, *(f"FATAL unknown: problem {n}" for n in range(start, start + 50)))
            time.sleep(0.02)  # a steady stream for over a second, so the kills land mid-stream
        written.set()

    thread = threading.Thread(target=writer)
    thread.start()
    killed_mid_stream = []
    for _ in range(2):
        seen = len(receiver.escalations())
        wait_for(lambda s=seen: len(receiver.escalations()) > s or written.is_set())
        killed_mid_stream.append(not written.is_set())
        agent.stop(signal.SIGKILL)
        agent.start()
    thread.join()
    assert killed_mid_stream[0]
    got = wait_len(receiver.escalations, total, 60)
    assert len(got) >= total, f"only {len(got)} of {total} arrived\n{agent.log()}"
    keys = sorted(e["key"] for e in got)
    assert keys == sorted(f"problem {n}" for n in range(total))  # each exactly once
    assert agent.stop() == 0


def test_receiver_down_for_a_while_then_up_receives_everything(tmp_path, setup):
    agent, log, _ = setup
    down = make_receiver(tmp_path / "second")
    down.start()
    down.stop()  # keep its port, now closed
    config = agent.config
    text = config.read_text()
    start = text.index('url = "') + len('url = "')
    end = text.index('"', start)
    config.write_text(text[:start] + f"{down.url}/v1/escalations" + text[end:])
    (tmp_path / "token").write_text(down.token)
    agent.start()
    append(log, *(f"FATAL unknown: outage {n}" for n in range(20)))
    assert wait_for(lambda: agent.saw("delivery failed")), agent.log()
    down.start()
    try:
        got = wait_len(down.escalations, 20, 30)
        assert len(got) >= 20, agent.log()
        assert sorted(e["key"] for e in got) == sorted(f"outage {n}" for n in range(20))
    finally:
        down.stop()
    assert agent.stop() == 0


def test_sigterm_then_restart_resumes_exactly(setup, receiver):
    agent, log, _ = setup
    agent.start()
    append(log, "FATAL unknown: before")
    wait_for(lambda: receiver.escalations())
    assert agent.stop() == 0
    append(log, "FATAL unknown: while down")
    agent.start()
    append(log, "FATAL unknown: after")
    got = wait_len(receiver.escalations, 3)
    assert sorted(e["key"] for e in got) == ["after", "before", "while down"]
    assert agent.stop() == 0
    assert len(receiver.escalations()) == 3


def test_file_present_at_start_is_read_from_end_new_file_from_start(setup, receiver):
    agent, log, _ = setup
    append(log, "FATAL unknown: old news")
    agent.start()
    late = log.parent / "late.log"
    append(late, "FATAL unknown: in a new file")
    append(log, "FATAL unknown: fresh")
    got = wait_len(receiver.escalations, 2)
    assert sorted(e["key"] for e in got) == ["fresh", "in a new file"]
    assert agent.stop() == 0


SLOW_PACK = """\
[[pattern]]
id = "slow"
match = '''slow: (a|aa)+b'''
article = "articles/a.md"

[[pattern.example]]
line = "slow: aab"

[[pattern]]
id = "fine"
match = '''fine: (?P<n>\\d+)'''
key = "{n}"
article = "articles/a.md"

[[pattern.example]]
line = "fine: 1"
"""


def test_a_pattern_that_keeps_timing_out_is_quarantined_and_escalated_once(tmp_path, receiver):
    packs = tmp_path / "packs"
    write_pack(packs, "slowpack", SLOW_PACK)
    log = tmp_path / "app.log"
    log.touch()
    config = write_config(
        tmp_path,
        [(str(log), None)],
        packs,
        receiver,
        extra='regex_timeout = "20ms"\nmax_regex_timeouts = 3\n',
    )
    agent = AgentProc(config).start()
    append(log, *(["slow: " + "a" * 40] * 5), "fine: 1")
    got = wait_len(lambda: receiver.escalations(pattern="slow"), 1)
    assert [e["status"] for e in got] == ["quarantined"]
    assert got[0]["owner"] == "team-test" and got[0]["count"] == 3
    assert wait_len(lambda: receiver.escalations(pattern="fine"), 1)  # the others keep working
    append(log, *(["slow: " + "a" * 40] * 3))
    assert agent.stop() == 0
    assert len(receiver.escalations(pattern="slow")) == 1
    assert (
        agent.saw("quarantined testpack/slow") == 0 and agent.saw("quarantined slowpack/slow") == 1
    )
    [slow] = [p for p in status(config)["patterns"] if p["pattern"] == "slow"]
    assert slow["timeouts"] == 3 and slow["quarantined"] == 1 and slow["seconds"] >= 0.06
