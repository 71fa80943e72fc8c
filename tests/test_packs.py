"""Pack validation for every kind of bad input, and the shipped packs prove themselves."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import ConfigErrors
from agent.examples import check_examples
from agent.match import available_engines
from agent.packs import load_pack, parse_template
from agent.packset import find_pack_dirs, load_packs
from tests.helpers import write_pack

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "patterns"

GOOD = """\
[[pattern]]
id = "p1"
match = '''^error for (?P<user>\\w+)'''
key = "{user}"
article = "articles/a.md"
fields = { user = { type = "word" } }  # on line 11, so the line numbers below hold
[pattern.remedy]
run = ["scripts/fix.sh", "{user}"]

[[pattern.example]]
line = "error for bob"
fields = { user = "bob" }
"""


def errors_of(tmp_path: Path, body: str, scripts: dict[str, str] | None = None):
    pack = write_pack(
        tmp_path, "bad", body, scripts if scripts is not None else {"fix.sh": "#!/bin/sh\n"}
    )
    with pytest.raises(ConfigErrors) as caught:
        load_pack(pack)
    for error in caught.value.errors:
        assert error.file == str(pack / "pack.toml")
    return [(e.key, e.line, e.message) for e in caught.value.errors]


def has(errors, key, line, text):
    return any(k == key and ln == line and text in m for k, ln, m in errors)


def test_good_pack_loads(tmp_path):
    pack = load_pack(write_pack(tmp_path, "good", GOOD, {"fix.sh": "#!/bin/sh\n"}))
    [pattern] = pack.patterns
    assert (pack.name, pack.version, pack.owner) == ("good", "1.2.3", "team-test")
    assert pattern.remedy is not None and pattern.remedy.attempts == 3
    assert pattern.key.expand({"user": "x"}) == "x"
    assert pattern.article_text == "# what to do\n"


@pytest.mark.parametrize(
    ("replace", "by", "key", "line", "text"),
    [
        (
            "^error for (?P<user>\\w+)",
            "^error for (?P<user>\\w+",
            "pattern[0].match",
            8,
            "not a valid regex",
        ),
        ('key = "{user}"', 'key = "{nobody}"', "pattern[0].key", 9, "does not capture"),
        ('key = "{user}"', 'key = "{user!r}"', "pattern[0].key", 9, "plain {field}"),
        ('"{user}"]', '"{who}"]', "pattern[0].remedy.run", 13, "does not capture"),
        ('"scripts/fix.sh"', '"../../etc/passwd"', "pattern[0].remedy.run", 13, "outside the pack"),
        ('"scripts/fix.sh"', '"scripts/none.sh"', "pattern[0].remedy.run", 13, "does not exist"),
        ('"scripts/fix.sh"', '"{user}"', "pattern[0].remedy.run", 13, "cannot come from a field"),
        (
            'run = ["scripts/fix.sh", "{user}"]',
            "run = []",
            "pattern[0].remedy.run",
            13,
            "must name",
        ),
        (
            'run = ["scripts/fix.sh", "{user}"]',
            "timeout = 3",
            "pattern[0].remedy.run",
            12,
            "required",
        ),
        (
            'article = "articles/a.md"',
            'article = "articles/none.md"',
            "pattern[0].article",
            10,
            "cannot read",
        ),
        ('id = "p1"', "id = 1", "pattern[0].id", 7, "must be a string"),
        ('id = "p1"', 'id = "p1"\nseverity = "huge"', "pattern[0].severity", 8, "must be one of"),
        ('id = "p1"', 'id = "p1"\nescalate = "sometimes"', "pattern[0].escalate", 8, "must be one"),
        ('id = "p1"', 'id = "p1"\nwhen = { count = 0 }', "pattern[0].when.count", 8, "at least 1"),
        (
            'id = "p1"',
            'id = "p1"\nwhen = { within = "x" }',
            "pattern[0].when.within",
            8,
            "duration",
        ),
        ('id = "p1"', 'id = "p1"\ncolour = "red"', "pattern[0].colour", 8, "unknown key"),
        (
            'fields = { user = "bob" }',
            'fields = { user = "bob" }\nmatches = false',
            "pattern[0].example[0].fields",
            17,
            "cannot expect fields",
        ),
        (
            'fields = { user = "bob" }',
            "fields = { user = 1 }",
            "pattern[0].example[0].fields",
            17,
            "table of strings",
        ),
    ],
)
def test_bad_pattern_names_key_and_line(tmp_path, replace, by, key, line, text):
    assert replace in GOOD
    errors = errors_of(tmp_path, GOOD.replace(replace, by))
    assert has(errors, key, line, text), errors


def test_pattern_without_examples_is_refused(tmp_path):
    errors = errors_of(tmp_path, GOOD[: GOOD.index("[[pattern.example]]")])
    assert has(errors, "pattern[0].example", 6, "at least one example"), errors


def test_duplicate_pattern_ids(tmp_path):
    errors = errors_of(tmp_path, GOOD + "\n" + GOOD)
    assert has(errors, "pattern[1].id", 20, "defined twice"), errors


def test_redact_entropy_is_off_unless_the_pack_sets_it(tmp_path):
    script = {"fix.sh": "#!/bin/sh\n"}
    assert load_pack(write_pack(tmp_path, "off", GOOD, script)).redact_entropy is None
    on = load_pack(write_pack(tmp_path, "on", "redact_entropy = 4\n" + GOOD, script))
    assert on.redact_entropy == 4.0
    too_high = errors_of(tmp_path, "redact_entropy = 7.5\n" + GOOD)
    assert has(too_high, "pack.redact_entropy", 6, "from 0 to 6"), too_high
    not_number = errors_of(tmp_path, "redact_entropy = true\n" + GOOD)
    assert has(not_number, "pack.redact_entropy", 6, "must be a number"), not_number


def test_pack_header_problems(tmp_path):
    pack = tmp_path / "p"
    pack.mkdir()
    (pack / "pack.toml").write_text('[pack]\nname = "p"\n\n[[pattern]]\nid = "x"\n')
    with pytest.raises(ConfigErrors) as caught:
        load_pack(pack)
    found = [(e.key, e.line) for e in caught.value.errors]
    assert ("pack.owner", 1) in found and ("pattern[0].match", 4) in found


def test_duplicate_pack_names(tmp_path):
    write_pack(tmp_path / "a", "same", GOOD, {"fix.sh": "#!/bin/sh\n"})
    write_pack(tmp_path / "b", "same", GOOD, {"fix.sh": "#!/bin/sh\n"})
    with pytest.raises(ConfigErrors, match="is also in"):
        load_packs((tmp_path / "a", tmp_path / "b"))


def test_template_parsing():
    template = parse_template("a{x}b{{c}}{y}")
    assert template.fields == ("x", "y")
    assert template.expand({"x": "1", "y": "{z}"}) == "a1b{c}{z}"
    for bad in ("{x:>4}", "{0}", "{}", "{x.y}"):
        with pytest.raises(ValueError):
            parse_template(bad)


def test_shipped_packs_load_and_prove_themselves():
    dirs = find_pack_dirs((SHIPPED,))
    assert len(dirs) >= 3
    packs = load_packs((SHIPPED,))
    for pack in packs:
        checked, failures = check_examples(pack)
        assert failures == [] and checked >= 2 * len(pack.patterns), pack.name
        for pattern in pack.patterns:
            assert pattern.article and pattern.article_text, pattern.qualified
            assert any(not e.matches for e in pattern.examples), pattern.qualified
    assert sum(p.remedy is not None for pack in packs for p in pack.patterns) >= 4


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_logmend_test_reports_expected_against_actual(tmp_path):
    body = GOOD.replace('fields = { user = "bob" }', 'fields = { user = "alice" }')
    pack = write_pack(tmp_path, "wrong", body, {"fix.sh": "#!/bin/sh\n"})
    result = run_cli("test", str(pack))
    assert result.returncode == 1
    assert '"user": "alice"' in result.stdout and '"user": "bob"' in result.stdout
    assert "expected" in result.stdout and "actual" in result.stdout


def test_logmend_test_log_json(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("hello\nerror for bob\nnothing\nerror for carol\n")
    pack = write_pack(tmp_path, "good", GOOD, {"fix.sh": "#!/bin/sh\n"})
    result = run_cli("test", str(pack), "--log", str(log), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["files"] == [
        {
            "path": str(log),
            "lines": 4,
            "matches": [
                {"line": 2, "pack": "good", "pattern": "p1", "fields": {"user": "bob"}},
                {"line": 4, "pack": "good", "pattern": "p1", "fields": {"user": "carol"}},
            ],
        }
    ]
    [summary] = doc["patterns"]
    assert summary["pack"] == "good" and summary["matches"] == 2 and summary["seconds"] >= 0


SHAPED = (
    GOOD
    + """
[[pattern]]
id = "access"
match = '''^(?P<ts>\\d{10}) (?P<code>\\d{3}) \\d+$'''

[[pattern.example]]
line = "1767225600 503 12"

[[pattern]]
id = "kv"
match = '''(?P<key>[a-z]+)=(?P<value>\\d{2,})$'''

[[pattern.example]]
line = "size=12"
"""
)


def test_logmend_test_log_json_is_one_valid_document_for_any_number_of_files(tmp_path):
    pack = write_pack(tmp_path, "good", GOOD, {"fix.sh": "#!/bin/sh\n"})
    empty, quiet, busy = (tmp_path / n for n in ("empty.log", "quiet.log", "busy.log"))
    empty.write_text("")
    quiet.write_text("nothing\n" * 3)
    busy.write_text("error for bob\nerror for carol")  # no newline at the end
    result = run_cli("test", str(pack), "--log", str(empty), str(quiet), str(busy), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [(f["path"], f["lines"], len(f["matches"])) for f in doc["files"]] == [
        (str(empty), 0, 0),
        (str(quiet), 3, 0),
        (str(busy), 2, 2),
    ]
    assert doc["engine"] and doc["ungated"] == [] and doc["patterns"][0]["matches"] == 2


def peak_rss_kib(*args: str) -> int:
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stderr.strip().splitlines()[-1])


def test_logmend_test_log_streams_its_matches_instead_of_holding_them(tmp_path):
    """Three times the matches, the same memory: each match is written when found (they
    were held to the end: 176 MB for 300,000 here, now 41 MB, most of it one block's)."""
    pack = write_pack(tmp_path, "good", GOOD, {"fix.sh": "#!/bin/sh\n"})
    some, more = tmp_path / "some.log", tmp_path / "more.log"
    some.write_text("error for bob\n" * 100_000)
    more.write_text("error for bob\n" * 300_000)
    for mode in ([], ["--json"]):
        small = peak_rss_kib("test", str(pack), "--log", str(some), *mode)
        large = peak_rss_kib("test", str(pack), "--log", str(more), *mode)
        assert large - small < 4 * 1024, (mode, small, large)


def test_logmend_test_log_ranks_patterns_by_cost_and_flags_the_ungated(tmp_path):
    """Patterns with no required literal: an anchored one is gated by its prefix on both
    engines, an unanchored one by its shape with Hyperscan only; without, it is tried on
    every line, mostly in vain, and `test --log` ranks it first, says what share of
    lines it was tried on and flags it; a literal-gated one is not flagged either way."""
    log = tmp_path / "app.log"
    lines = [f"{1767225600 + n} {200 + n % 300} {n}" for n in range(500)]
    lines += ["error for bob", "plain text", "GET /index.html 200 from web-1"] * 500
    lines += [f"size={10 + n}" for n in range(500)]
    log.write_text("\n".join(lines) + "\n")
    pack = write_pack(tmp_path, "good", SHAPED, {"fix.sh": "#!/bin/sh\n"})
    for engine in available_engines():
        result = run_cli("test", str(pack), "--log", str(log), "--json", "--engine", engine)
        assert result.returncode == 0, result.stderr
        rows = {p["pattern"]: p for p in json.loads(result.stdout)["patterns"]}
        access, kv, p1 = rows["access"], rows["kv"], rows["p1"]
        assert access["matches"] == kv["matches"] == p1["matches"] == 500, engine
        assert p1["tried_share"] < 0.3 and "nothing gates it" not in p1["costly"], engine
        assert access["tried_share"] == 0.2 and "nothing gates it" not in access["costly"]
        assert json.loads(result.stdout)["ungated"] == (
            [] if engine == "hyperscan" else ["good/kv"]
        )
        if engine == "hyperscan":  # its shape gates it: tried on its 500 lines only
            assert kv["tried_share"] == 0.2 and "nothing gates it" not in kv["costly"]
        else:
            assert kv["tried_share"] == 1.0, kv
            assert (
                "tried on 100% of lines, matching 20% of them: nothing gates it" in (kv["costly"])
            )
    human = run_cli("test", str(pack), "--log", str(log), "--engine", "python")
    assert "matcher: pure-Python prefilter" in human.stdout  # which engine, before any log
    assert "warning: good/kv has no required literal and is not anchored" in human.stdout
    assert "COSTLY good/kv: " in human.stdout and "COSTLY good/access" not in human.stdout
    first = human.stdout.split("costliest first")[1].splitlines()[1]
    assert first.strip().startswith("good/kv: 500  100.0%")


def test_logmend_test_on_shipped_packs_and_a_real_looking_log(tmp_path):
    log = tmp_path / "mixed.log"
    lines = [
        e.line
        for pack in load_packs((SHIPPED,))
        for p in pack.patterns
        for e in p.examples
        if e.matches
    ]
    log.write_text("\n".join(lines) + "\n")
    result = run_cli("test", str(SHIPPED), "--log", str(log), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["files"][0]["matches"]) >= len(lines)


def _trust_errors(pack: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_pack(pack)
    return [f"{e.key}: {e.message}" for e in caught.value.errors]


def test_a_world_writable_script_is_refused_at_load_but_proven_by_test(tmp_path):
    pack = write_pack(tmp_path, "lax", GOOD, {"fix.sh": "#!/bin/sh\n"})
    (pack / "scripts" / "fix.sh").chmod(0o757)
    [error] = _trust_errors(pack)
    assert error.startswith("pattern[0].remedy.run: refused:")
    assert "fix.sh is writable by group or others (mode 0757)" in error
    assert load_pack(pack, trust=False).patterns  # `logmend test` runs no script


def test_a_group_writable_folder_above_the_script_is_refused(tmp_path):
    pack = write_pack(tmp_path, "lax", GOOD, {"fix.sh": "#!/bin/sh\n"})
    (pack / "scripts").chmod(0o775)
    problem = f"{pack / 'scripts'} is writable by group or others (mode 0775)"
    # refused twice: as a folder the pack is loaded from, and as one above the fix's script
    assert set(_trust_errors(pack)) == {
        f": refused: {problem}",
        f"pattern[0].remedy.run: refused: {problem}",
    }


def test_a_script_outside_the_pack_is_refused_even_through_a_symlink(tmp_path):
    outside = tmp_path / "elsewhere.sh"
    outside.write_text("#!/bin/sh\n")
    outside.chmod(0o755)
    pack = write_pack(tmp_path, "sneaky", GOOD, {})
    (pack / "scripts" / "fix.sh").symlink_to(outside)
    [error] = _trust_errors(pack)
    assert "'scripts/fix.sh' is outside the pack's folder" in error
    inside = write_pack(tmp_path, "linked", GOOD, {"real.sh": "#!/bin/sh\n"})
    (inside / "scripts" / "fix.sh").symlink_to(inside / "scripts" / "real.sh")
    assert load_pack(inside).patterns  # a link that stays inside is fine


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_script_owned_by_another_user_is_refused(tmp_path):
    pack = write_pack(tmp_path, "theirs", GOOD, {"fix.sh": "#!/bin/sh\n"})
    nobody = pwd.getpwnam("nobody")
    os.chown(pack / "scripts" / "fix.sh", nobody.pw_uid, nobody.pw_gid)
    [error] = _trust_errors(pack)
    assert f"is owned by uid {nobody.pw_uid}, not root or the agent's user" in error


def test_check_warns_of_each_pattern_no_literal_can_gate(tmp_path):
    packs = tmp_path / "packs"
    write_pack(packs, "good", SHAPED, {"fix.sh": "#!/bin/sh\n"})
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\npacks = ["{packs}"]\n'
        '[[source]]\npath = "/x.log"\npacks = "*"\n'
    )
    for engine in available_engines():
        text = config.read_text() + f'[limits]\nmatcher = "{engine}"\n'
        config.write_text(text)
        result = run_cli("check", "-c", str(config))
        assert result.returncode == 0, result.stderr
        warnings = [line for line in result.stdout.splitlines() if "warning:" in line]
        if engine == "hyperscan":  # gated by its shape: nothing to warn of
            assert warnings == [], warnings
            assert "the shape of patterns with none" in result.stdout
        else:  # the anchored one is gated by its prefix; the other is not, and is named
            assert len(warnings) == 1 and "good/kv has no required literal" in warnings[0]
            assert "is not anchored" in warnings[0]
            assert "the anchored prefix of patterns with none" in result.stdout
        config.write_text(text.replace(f'[limits]\nmatcher = "{engine}"\n', ""))
