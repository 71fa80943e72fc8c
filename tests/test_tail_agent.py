"""The real agent on real files: multiline events, quiet partial lines, rotations, garbage."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.helpers import (
    AgentProc,
    Receiver,
    append,
    wait_for,
    wait_len,
    write_config,
    write_pack,
)

PACK = """\
[[pattern]]
id = "event"
match = '''(?s)^(?P<head>[^\\n]*(?:Traceback|Exception in thread|panic:)[^\\n]*)\\n.*?(?P<last>[^\\n]+)$'''  # noqa: E501
key = "{head}"
article = "articles/a.md"

[[pattern.example]]
line = "Traceback (most recent call last):\\n  x\\nValueError: y"

[[pattern]]
id = "line"
match = '''LINE (?P<n>\\d+)(?P<rest>.*)'''
key = "{n}"
article = "articles/a.md"

[[pattern.example]]
line = "LINE 1"
"""

PYTHON_TRACEBACK = """Traceback (most recent call last):
  File "/srv/app/handlers.py", line 42, in post
    order = self.store.load(order_id)
  File "/srv/app/store.py", line 17, in load
    raise KeyError(order_id)
KeyError: 'A-1009'"""

JAVA_TRACE = """Exception in thread "main" java.lang.IllegalStateException: pool exhausted
\tat com.example.Pool.take(Pool.java:88)
\tat com.example.Server.handle(Server.java:120)
Caused by: java.util.concurrent.TimeoutException
\t... 12 more"""

GO_PANIC = """panic: runtime error: index out of range [3] with length 3

goroutine 1 [running]:
main.main()
\t/srv/cmd/main.go:9 +0x1d
exit status 2"""


@pytest.fixture
def packs(tmp_path: Path) -> Path:
    root = tmp_path / "packs"
    write_pack(root, "tailpack", PACK)
    return root


def start_agent(
    tmp_path: Path,
    packs: Path,
    receiver: Receiver,
    source_extra: str = "",
    extra: str = "",
    agent_extra: str = "",
) -> tuple[AgentProc, Path]:
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    config = write_config(
        tmp_path,
        [(f"{logs}/app.log", None)],
        packs,
        receiver,
        extra=extra,
        agent_extra=agent_extra,
    )
    if source_extra:
        text = config.read_text()
        source = f'path = "{logs}/app.log"\npacks = "*"\n'
        assert source in text, text
        config.write_text(text.replace(source, source + source_extra, 1))
    return AgentProc(config), logs / "app.log"


@pytest.mark.parametrize(
    "rule",
    [
        "start = '''^(?:Traceback|Exception in thread|panic:|LINE |---)'''",
        "continuation = '''^(?:$|\\s|Caused by|KeyError|goroutine|main\\.|exit status)'''",
    ],
)
def test_multiline_events_match_as_one_record(tmp_path, packs, receiver, rule):
    agent, log = start_agent(
        tmp_path, packs, receiver, f'flush_after = "300ms"\n[source.multiline]\n{rule}\n'
    )
    log.touch()
    agent.start()
    append(log, PYTHON_TRACEBACK, "--- next", JAVA_TRACE, "--- next", GO_PANIC)
    got = wait_len(lambda: receiver.escalations(pattern="event"), 3)
    by_head = {e["fields"]["head"]: e for e in got}
    assert by_head["Traceback (most recent call last):"]["fields"]["last"] == "KeyError: 'A-1009'"
    assert by_head["Traceback (most recent call last):"]["lines"] == [PYTHON_TRACEBACK]
    java = by_head['Exception in thread "main" java.lang.IllegalStateException: pool exhausted']
    assert java["fields"]["last"] == "\t... 12 more"
    go = by_head["panic: runtime error: index out of range [3] with length 3"]
    assert go["fields"]["last"] == "exit status 2"  # the last event, flushed once the file is quiet
    assert agent.stop() == 0


def test_multiline_event_held_across_a_crash_is_read_again_not_lost(tmp_path, packs, receiver):
    agent, log = start_agent(
        tmp_path,
        packs,
        receiver,
        "flush_after = \"1h\"\n[source.multiline]\nstart = '''^(?:Traceback|LINE )'''\n",
    )
    log.touch()
    agent.start()
    append(log, "LINE 1", *PYTHON_TRACEBACK.splitlines()[:3])  # the event is still open
    wait_len(lambda: receiver.escalations(pattern="line"), 1)
    agent.stop(signal.SIGKILL)
    append(log, *PYTHON_TRACEBACK.splitlines()[3:], "LINE 2")
    agent.start()
    got = wait_len(lambda: receiver.escalations(pattern="event"), 1)
    assert got[0]["lines"] == [PYTHON_TRACEBACK]
    assert agent.stop() == 0


def test_partial_last_line_is_flushed_after_the_quiet_time(tmp_path, packs, receiver):
    agent, log = start_agent(tmp_path, packs, receiver, 'flush_after = "300ms"\n')
    log.touch()
    agent.start()
    with log.open("a") as handle:
        handle.write("LINE 7 without a newline")
    got = wait_len(lambda: receiver.escalations(pattern="line"), 1)
    assert got[0]["lines"] == ["LINE 7 without a newline"]
    append(log, "", "LINE 8")  # the writer finishes its line later: no duplicate of LINE 7
    wait_len(lambda: receiver.escalations(pattern="line"), 2)
    assert agent.stop() == 0
    assert sorted(e["key"] for e in receiver.escalations(pattern="line")) == ["7", "8"]


def test_copytruncate_loses_nothing_written_before_it(tmp_path, packs, receiver):
    agent, log = start_agent(tmp_path, packs, receiver)
    log.touch()
    agent.start()
    append(log, "LINE 1")
    wait_len(lambda: receiver.escalations(pattern="line"), 1)
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGSTOP)  # the agent is busy elsewhere while logrotate runs
    append(log, "LINE 2", "LINE 3")
    shutil.copyfile(log, str(log) + ".1")
    with log.open("r+") as handle:
        handle.truncate(0)
    append(log, "LINE 4")
    agent.proc.send_signal(signal.SIGCONT)
    got = wait_len(lambda: receiver.escalations(pattern="line"), 4)
    assert sorted(e["key"] for e in got) == ["1", "2", "3", "4"]
    assert agent.stop() == 0


def test_rotated_and_compressed_while_the_agent_was_down(tmp_path, packs, receiver):
    agent, log = start_agent(tmp_path, packs, receiver)
    log.touch()
    agent.start()
    append(log, "LINE 1")
    wait_len(lambda: receiver.escalations(pattern="line"), 1)
    assert agent.stop() == 0
    append(log, "LINE 2")
    os.rename(log, str(log) + ".1")
    with open(str(log) + ".1", "rb") as src, gzip.open(str(log) + ".1.gz", "wb") as dst:
        dst.write(src.read())
    os.unlink(str(log) + ".1")
    append(log, "LINE 3")
    agent.start()
    got = wait_len(lambda: receiver.escalations(pattern="line"), 3)
    assert sorted(e["key"] for e in got) == ["1", "2", "3"]
    assert agent.stop() == 0


def test_backpressure_pauses_reading_and_drops_nothing(tmp_path, receiver):
    packs = tmp_path / "packs"
    write_pack(
        packs,
        "slowfix",
        """\
user = "root"

[[pattern]]
id = "work"
match = '''^WORK (?P<n>\\d+)'''
key = "{n}"
article = "articles/a.md"
escalate = "always"

[pattern.remedy]
run = ["scripts/slow.sh"]
attempts = 1

[[pattern.example]]
line = "WORK 1"
""",
        scripts={"slow.sh": "#!/bin/sh\nsleep 0.2\n"},
    )
    # as root: "nobody" cannot reach the script inside pytest's tmp_path (root's, mode 0700)
    agent, log = start_agent(
        tmp_path,
        packs,
        receiver,
        extra="max_concurrent_fixes = 1\nmax_queued_fixes = 2\n",
        agent_extra='allow_root = ["slowfix"]\n',
    )
    log.touch()
    agent.start()
    append(log, *(f"WORK {n}" for n in range(12)))
    got = wait_len(lambda: receiver.escalations(pattern="work"), 12, timeout=30)
    assert sorted(int(e["key"]) for e in got) == list(range(12))
    assert all(e["outcome"] == "resolved" for e in got)
    assert agent.stop() == 0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_huge_line_without_newline_keeps_memory_bounded(tmp_path, packs, receiver):
    agent, log = start_agent(tmp_path, packs, receiver)
    log.touch()
    agent.start()
    assert agent.proc is not None
    baseline = rss_mb(agent.proc.pid)
    chunk = b"LINE 9 " + b"x" * (8 * 1024 * 1024 - 7)
    with log.open("ab") as handle:
        for _ in range(64):  # 512 MB and no newline
            handle.write(chunk)
            chunk = b"x" * len(chunk)
        handle.write(b"\nLINE 10\n")
    got = wait_len(lambda: receiver.escalations(pattern="line"), 2, timeout=60)
    assert sorted(e["key"] for e in got) == ["10", "9"]
    cut = next(e for e in got if e["key"] == "9")
    assert len(cut["lines"][0]) == 64 * 1024  # the record was cut at max_line_bytes
    grew = rss_mb(agent.proc.pid) - baseline
    assert grew < 40, f"the agent grew by {grew:.0f} MB reading a 512 MB line"
    assert agent.stop() == 0
    log.unlink()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_two_thousand_files_polling_only_and_no_leaked_descriptors(tmp_path, packs, receiver):
    logs = tmp_path / "logs"
    logs.mkdir()
    for n in range(2000):
        (logs / f"f{n:04d}.log").touch()
    config = write_config(
        tmp_path, [(f"{logs}/*.log", None)], packs, receiver, extra="file_events = false\n"
    )
    agent = AgentProc(config).start()
    assert agent.proc is not None
    assert agent.saw("2000 file(s)")
    with_files = open_fds(agent.proc.pid)
    append(logs / "f0007.log", "LINE 7")
    append(logs / "f1999.log", "LINE 1999")
    (logs / "late.log").touch()
    append(logs / "late.log", "LINE 2001")  # a file that appears later, found by the sweep
    got = wait_len(lambda: receiver.escalations(pattern="line"), 3)
    assert sorted(e["key"] for e in got) == ["1999", "2001", "7"]
    for n in range(1000):
        (logs / f"f{n:04d}.log").unlink()
    assert wait_for(lambda: open_fds(agent.proc.pid) <= with_files - 990, timeout=20), (
        f"{open_fds(agent.proc.pid)} descriptors open, {with_files} before 1000 files went"
    )
    assert agent.stop() == 0


def test_multiline_limits_cut_an_event_and_drop_the_rest():
    import regex

    from agent.records import EventJoiner

    joiner = EventJoiner(regex.compile("^START"), None, max_lines=3, max_bytes=1000)
    block = b"START a\n b\n c\n d\n e\nSTART f\n"
    events = joiner.feed(block, 0, 1000)
    assert events == ["START a\n b\n c"]
    assert joiner.dropped == 2
    assert joiner.flush() == ["START f"]
    small = EventJoiner(regex.compile("^START"), None, max_lines=100, max_bytes=10)
    assert small.feed(b"START 12345\n 678901234\nSTART x\n", 0, 1000) == ["START 1234"]
