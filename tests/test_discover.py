"""Issue 19, item 4 (offline) and the gate the agent will use: error lines found per
block, grouped into templates, numbered and redacted; `logmend discover` as a team
runs it on a real file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.discover import ERROR_WORDS, ErrorGate, discover


def logmend(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=120
    )


LINE = st.text(alphabet=st.sampled_from(list("abcERORFAILdtxn y:é")), max_size=40).map(
    lambda t: t.replace("\n", " ")
)


@given(st.lists(st.one_of(LINE, st.sampled_from(["ERROR x", "job Failed", "errOR", "ok"])),
                max_size=40), st.booleans())  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_the_gate_finds_exactly_the_lines_holding_an_error_word(lines, trailing):
    block = ("\n".join(lines) + ("\n" if trailing and lines else "")).encode()
    expected = []
    start = 0
    for line in block.split(b"\n")[: len(lines)]:
        if any(word.encode() in line.lower() for word in ERROR_WORDS):
            expected.append(start)
        start += len(line) + 1
    assert ErrorGate().lines(block) == expected  # Hyperscan's caseless scan, where installed
    python = ErrorGate()
    python._database = None  # the pure-Python search, as where the wheel is missing
    assert python.lines(block) == expected


def test_discover_numbers_groups_and_redacts(tmp_path):
    log = tmp_path / "app.log"
    lines = []
    for n in range(1, 3001):
        if n % 100 == 0:
            lines.append(f"ERROR job {n} failed for user u{n} token=sk_live_{'a' * 24}")
        elif n % 250 == 0:
            lines.append(f"2026-11-30T04:00:{n % 60:02d}Z FATAL cannot open /srv/app/{n}.db")
        else:
            lines.append(f"INFO request {n} served in {n % 7} ms")
    log.write_text("\n".join(lines) + "\n")
    mined, read, grouped = discover([log])
    assert read == 3000 and grouped == 30 + 6  # 250, 750, ... 2750
    [job, fatal] = mined
    assert job.template.count == 30 and job.lines == list(range(100, 3001, 100))
    assert fatal.lines == [n for n in range(250, 3001, 250) if n % 100]
    assert "sk_live" not in json.dumps([m.to_json() for m in mined])  # templates too
    assert fatal.template.text == "<TIME> FATAL cannot open <PATH>"


def test_the_command_prints_templates_and_json_with_line_numbers(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(
        b"ok\nERROR disk full on /dev/sda1\n\xff\xfe ERROR bad bytes\nERROR disk full on /dev/sdb2"
    )  # no newline at the end, and a line that is not UTF-8
    done = logmend("discover", "--log", str(log), "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)["templates"]
    assert [(t["template"], t["count"], t["lines"]) for t in found] == [
        ("ERROR disk full on <PATH>", 2, [2, 4]),
        ("\ufffd\ufffd ERROR bad bytes", 1, [3]),
    ]
    text = logmend("discover", "--log", str(log))
    assert text.returncode == 0 and "4 line(s) read, 3 that look like errors, 2" in text.stdout
    every = logmend("discover", "--log", str(log), "--all", "--json")
    assert sum(t["count"] for t in json.loads(every.stdout)["templates"]) == 4
    words = logmend("discover", "--log", str(log), "--word", "disk", "--json")
    assert [t["count"] for t in json.loads(words.stdout)["templates"]] == [2]
    missing = logmend("discover", "--log", str(tmp_path / "nope.log"))
    assert missing.returncode == 1 and "is not a file" in missing.stderr


def test_a_huge_hostile_log_keeps_memory_bounded(tmp_path):
    """Every line a new kind of error: templates stop at the cap, line lists at theirs."""
    log = tmp_path / "hostile.log"
    with log.open("w") as out:
        for n in range(20_000):
            words = " ".join(f"w{(n * 7 + k) % 9973}x" for k in range(n % 5 + 1))
            out.write(f"ERROR {words.replace('0', 'o')}\n")
    mined, read, grouped = discover([log], max_templates=50)
    assert read == grouped == 20_000
    assert len(mined) <= 50
    assert all(len(m.lines) <= 1000 for m in mined)


def test_an_error_word_inside_a_long_line_is_found_once(tmp_path):
    block = b"x" * 100_000 + b" error error ERROR\nfine\n"
    assert ErrorGate().lines(block) == [0]
    assert ErrorGate(["timeout"]).lines(b"a timed out\nb TIMEOUT\n") == [12]
    assert ErrorGate().lines(b"") == []
    assert Path  # the module's imports in use
