"""Issue 17, item 6: `ignore` regexes (fail2ban's ignoreregex).

A pattern's `ignore` regexes take back lines it matched (a known-harmless
variant, a health-check client). They are proven by `matches = false`
examples, tried only on lines the pattern matched (so they cost nothing
elsewhere), and every engine answers exactly like the plain loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.examples import check_examples
from agent.match import Matcher, available_engines
from agent.packs import LazyRegex, load_pack
from tests.helpers import agent_with_pack, append, status, wait_for, write_pack
from tests.test_match import pattern
from tests.test_packs import errors_of

PACK = """\
[[pattern]]
id = "auth"
match = '''^auth failure for (?P<user>\\w+) from (?P<ip>[0-9.]+)$'''
key = "{user}"
escalate = "never"
ignore = ['''from 10\\.0\\.0\\.5$''', '''^auth failure for healthcheck ''']

[[pattern.example]]
line = "auth failure for bob from 192.0.2.7"
fields = { user = "bob", ip = "192.0.2.7" }

[[pattern.example]]
line = "auth failure for probe from 10.0.0.5"
matches = false

[[pattern.example]]
line = "auth failure for healthcheck from 192.0.2.9"
matches = false
"""

LOG = [
    "auth failure for bob from 192.0.2.7",
    "auth failure for probe from 10.0.0.5",  # the health-check client
    "auth failure for healthcheck from 192.0.2.9",
    "auth failure for eve from 10.0.0.50",  # near the client, not it
    "something else entirely",
]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60
    )


def test_logmend_test_proves_the_rules_and_they_take_lines_back(tmp_path):
    pack = write_pack(tmp_path, "auth", PACK)
    log = tmp_path / "auth.log"
    log.write_text("\n".join(LOG) + "\n")
    done = run_cli("test", str(pack), "--log", str(log), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [m["fields"]["user"] for m in report["files"][0]["matches"]] == ["bob", "eve"]
    (auth,) = report["patterns"]
    assert auth["ignored"] == 2 and auth["matches"] == 2
    text = run_cli("test", str(pack), "--log", str(log)).stdout
    assert "(2 taken back by its ignore rules)" in text


def test_the_agent_opens_nothing_for_a_line_taken_back(tmp_path):
    agent, log = agent_with_pack(tmp_path, PACK)
    agent.start()
    try:
        append(log, *LOG)
        recent = wait_for(lambda: len(status(agent.config)["recent"]) == 2 or None)
        assert recent
        keys = sorted(i["key"] for i in status(agent.config)["recent"])
        assert keys == ["bob", "eve"]
    finally:
        assert agent.stop() == 0


def test_a_rule_needs_its_proof_and_must_compile(tmp_path):
    no_false_example = PACK.split(
        '\n[[pattern.example]]\nline = "auth failure for probe', maxsplit=1
    )[0]
    errors = errors_of(tmp_path / "a", no_false_example)
    assert any(
        key == "pattern[0].ignore" and "needs a `matches = false` example" in message
        for key, _, message in errors
    ), errors
    broken = PACK.replace("'''^auth failure for healthcheck '''", "'''(unclosed'''")
    errors = errors_of(tmp_path / "b", broken)
    assert any(key == "pattern[0].ignore[1]" for key, _, _ in errors), errors


def test_a_rule_no_example_takes_back_fails_the_examples(tmp_path):
    body = PACK.replace("'''^auth failure for healthcheck '''", "'''^never in any line'''")
    pack = load_pack(write_pack(tmp_path, "auth", body), trust=False)
    _, failures = check_examples(pack)
    lines = [f.line for f in failures]
    assert "ignore[1] = '^never in any line'" in lines
    # and the example it was meant for now matches: said too
    assert "auth failure for healthcheck from 192.0.2.9" in lines
    done = run_cli("check", str(tmp_path / "auth"))
    assert done.returncode == 1 and "BROKEN: auth" in done.stdout


def test_an_example_that_must_match_but_is_taken_back_says_by_what(tmp_path):
    body = PACK.replace("'''from 10\\.0\\.0\\.5$'''", "'''192\\.0\\.2\\.7'''")
    pack = load_pack(write_pack(tmp_path, "auth", body), trust=False)
    _, failures = check_examples(pack)
    assert any("ignore '192\\\\.0\\\\.2\\\\.7' takes it back" in f.actual for f in failures), [
        f.actual for f in failures
    ]


ENGINES = available_engines()


def with_ignore(source: str, rules: list[str], index: int = 0):
    return replace(pattern(source, index), ignore=tuple(LazyRegex.checked(r) for r in rules))


def plain(patterns, line):
    out = []
    for p in patterns:
        found = p.regex.search(line)
        if found is None or any(r.get().search(line) for r in p.ignore):
            continue
        out.append((p.id, {k: v for k, v in found.groupdict().items() if v is not None}))
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(alphabet="ab 1.:", max_size=12), min_size=1, max_size=30),
    st.sampled_from(["a", "b", "1", ":", "a b", r"\d+$", "^b"]),
)
def test_every_engine_takes_back_exactly_what_the_plain_loop_does(lines, rule):
    patterns = [
        with_ignore(r"(?P<w>a+) (?P<n>\d*)", [rule], 0),
        with_ignore(r"^b[a1]*", [rule, "::"], 1),
        pattern(r"1\.?1", 2),
    ]
    for engine in ENGINES:
        matcher = Matcher(patterns, timeout=5.0, engine=engine)
        for line in lines:
            assert [(p.id, f) for p, f in matcher.match(line)] == plain(patterns, line), engine
        block = "".join(line + "\n" for line in lines).encode()
        scanned = {text: [(p.id, f) for p, f in hits] for _, text, hits in matcher.scan(block)}
        for line in lines:
            assert scanned.get(line, []) == plain(patterns, line), (engine, line)


def test_a_rule_is_never_tried_on_a_line_its_pattern_did_not_match():
    """A catastrophic ignore regex costs nothing on lines the pattern does not match: it
    would time out (and be counted) on each of them if it were tried there."""
    slow = r"^(a+)+$"
    p = with_ignore(r"^ERROR (?P<what>\w+)$", [slow])
    hostile = ["a" * 28 + "!"] * 20 + ["ERROR disk"]
    for engine in ENGINES:
        matcher = Matcher([p], timeout=0.05, engine=engine)
        block = "".join(line + "\n" for line in hostile).encode()
        hits = [hits for _, _, hits in matcher.scan(block)]
        assert len(hits) == 1
        (stats,) = [s for _, s in matcher.pattern_stats()]
        assert stats.timeouts == 0 and stats.ignored == 0, engine


def test_a_rule_that_runs_past_its_timeout_takes_nothing_back():
    """An ignore rule fails toward telling: the line is reported, the timeout counted."""
    p = with_ignore(r"^(?P<x>a+)!", [r"^(a|aa)+$"])
    line = "a" * 40 + "!"
    assert regex.search(p.source, line)
    matcher = Matcher([p], timeout=0.05)
    assert [h[0].id for h in matcher.match(line)] == ["p0"]
    (stats,) = [s for _, s in matcher.pattern_stats()]
    assert stats.timeouts == 1


def test_the_shipped_packs_still_load(tmp_path):
    root = Path(__file__).resolve().parent.parent / "patterns"
    for pack_dir in sorted(p.parent for p in root.glob("*/pack.toml")):
        pack = load_pack(pack_dir, trust=False)
        assert check_examples(pack)[1] == []
