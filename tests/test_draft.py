"""Issue 19, "draft a pattern": a template's drafted pattern matches every line that
made the template, and `logmend test` proves it as printed."""

from __future__ import annotations

import subprocess
import sys

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.draft import draft_regex, pattern_id
from agent.drain import Drain, mask
from agent.redact import Redactor
from tests.test_drain import LINES


@given(st.lists(LINES, min_size=1, max_size=40))
@settings(max_examples=150, deadline=None)
def test_a_draft_matches_every_line_its_template_grew_from(lines):
    drain = Drain()
    members: dict[int, list[str]] = {}
    for line in lines:
        members.setdefault(drain.add(line).id, []).append(line)
    for template_id, grown_from in members.items():
        template = drain.templates[template_id]
        compiled = regex.compile(draft_regex(template.tokens))
        for line in grown_from:
            assert compiled.search(line), (template.text, line, compiled.pattern)


def test_a_redacted_secret_is_a_group_so_the_real_lines_match():
    redact = Redactor()
    line = "ERROR login failed for alice password=hunter2"
    shown = redact(mask(line)).split()
    assert "password=[REDACTED]" in shown
    compiled = regex.compile(draft_regex(shown))
    found = compiled.search(line)
    assert found and found["secret1"] == "hunter2"
    assert compiled.search(redact(line))  # and the redacted sample, the draft's example


def test_ids_are_plain_and_unique():
    taken: set[str] = set()
    tokens = ["ERROR", "job", "<NUM>", "failed:", "<*>"]
    assert pattern_id(tokens, taken) == "job-failed"  # the level word is header
    assert pattern_id(tokens, taken) == "job-failed-2"
    assert pattern_id(["<NUM>", "<*>"], taken) == "unknown-error"


def test_discover_drafts_patterns_that_logmend_test_proves_as_printed(tmp_path):
    log = tmp_path / "app.log"
    lines = []
    for n in range(600):
        lines.append(f"INFO request {n} served")
        if n % 3 == 0:
            lines.append(
                f"ERROR worker-{n % 7}: job {n} failed after {n % 50}.{n % 10}s (user u{n})"
            )
        if n % 5 == 0:
            lines.append(f"2026-11-30T04:{n % 60:02d}:00Z FATAL cannot open /srv/db/{n}.sqlite")
    log.write_text("\n".join(lines) + "\n")
    drafted = subprocess.run(
        [sys.executable, "-m", "agent", "discover", "--log", str(log), "--draft"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert drafted.returncode == 0, drafted.stderr
    assert drafted.stdout.count("[[pattern]]") == 2
    pack = tmp_path / "drafted"
    pack.mkdir()
    (pack / "pack.toml").write_text('[pack]\nname = "drafted"\nowner = "t"\n\n' + drafted.stdout)
    proven = subprocess.run(
        [sys.executable, "-m", "agent", "test", str(pack), "--log", str(log)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proven.returncode == 0, proven.stdout + proven.stderr
    assert f"{len(lines)} line(s), {200 + 120} match(es)" in proven.stdout
    assert "nothing gates it" not in proven.stdout  # each draft is gated by its words


def test_a_month_or_a_day_in_the_header_is_any_month_or_day():
    template = "[Sun Dec <NUM> <TIME> <NUM>] [error] child <*> in error state <NUM>"
    source = draft_regex(template.split())
    assert regex.match(source, "[Mon Jan 05 04:47:44 2006] [error] child w in error state 6")
    assert not regex.match(source, "[Mon Jan 05 04:47:44 2006] [notice] child w in error state 6")
