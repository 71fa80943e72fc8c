"""The pattern memo (issue 16): a warm start derives nothing twice and answers the same,
and a memo that is stale, corrupt, tampered with or not the agent's own costs only
warmth, never an answer or the start."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from pathlib import Path

import hyperscan
import msgpack
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import derived, hscompile, match
from agent.derived import Memo
from agent.match import Matcher, available_engines
from agent.packset import load_packs
from tests.helpers import agent_with_pack, append, wait_for
from tests.test_match import pattern, plain

needs_hyperscan = pytest.mark.skipif(
    "hyperscan" not in available_engines(), reason="the database memo is Hyperscan's"
)

SOURCES = [
    r"ERROR \[(?P<component>[\w.-]+)\] disk (?P<disk>sd[a-z]) failed",  # literals
    r"(?i)connection (?:refused|reset) by (?P<peer>\S+)",  # caseless literals
    r"^(?P<epoch>\d{10}) (?P<path>\S+) (?P<status>5\d\d) \d+$",  # shape only
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12} (?P<level>[A-Z]+)",
    r"(?:(?:(?:\w{0,99}\d){0,99}\s){0,99}\S){2,99}",  # Hyperscan refuses it
]
LINES = [
    "2026 ERROR [db.pool] disk sdb failed",
    "Connection RESET by 10.0.0.1",
    "1767225600 /api 503 512",
    "1767225600 /api 200 512",
    "0b5f2c1e-9a3d-4c7e-8f00-123456789abc ERROR disk",
    "nothing to see",
    "١٧٦٧٢٢٥٦٠٠ /api 503 512",
]


def header() -> bytes:
    return Memo()._header()


def read_facts(file: Path) -> dict:
    raw = file.read_bytes()
    assert raw.startswith(header())
    return msgpack.unpackb(raw[len(header()) :], raw=False, strict_map_key=False)


def write_facts(file: Path, facts: object) -> None:
    file.write_bytes(header() + msgpack.packb(facts, use_bin_type=True))
    file.chmod(0o600)


def scan(matcher: Matcher, lines: list[str]) -> list[tuple[int, str, list[tuple[str, dict]]]]:
    block = "".join(line + "\n" for line in lines).encode()
    return [(s, t, [(p.id, f) for p, f in hits]) for s, t, hits in matcher.scan(block)]


def refuse_to_derive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything a warm start should not need to do fails the test."""

    def no(*_: object, **__: object) -> None:
        raise AssertionError("derived again on a warm start")

    monkeypatch.setattr(hscompile, "compile_here", no)
    monkeypatch.setattr(match, "requirement", no)
    monkeypatch.setattr(match, "prefilter_expression", no)
    monkeypatch.setattr(match, "anchored_prefix", no)
    monkeypatch.setattr(regex, "compile", no)


@pytest.mark.parametrize("kind", available_engines())
def test_a_warm_start_derives_nothing_and_answers_the_same(tmp_path, monkeypatch, kind):
    file = tmp_path / "patterns.memo"
    patterns = [pattern(s, i) for i, s in enumerate(SOURCES)]
    cold = Memo(file)
    expected = scan(Matcher(patterns, 5.0, kind, memo=cold), LINES)
    assert expected  # the lines do match: equal answers are not equal emptiness
    assert cold.misses  # (a fact asked for twice in one load is a hit the second time)
    cold.save()
    assert file.stat().st_mode & 0o777 == 0o600

    warm = Memo(file)
    with monkeypatch.context() as patched:
        refuse_to_derive(patched)
        matcher = Matcher(patterns, 5.0, kind, memo=warm)
    assert warm.hits and not warm.misses
    assert scan(matcher, LINES) == expected
    if kind == "hyperscan":
        assert matcher.shaped == (2, 3)  # the refusal was remembered too


def test_a_reload_in_the_same_process_derives_nothing(tmp_path):
    """The agent keeps one memo: after a save, the same set again is all remembered (what
    was put is kept in the form it is read back in; a list is not taken for a tuple)."""
    memo = Memo(tmp_path / "patterns.memo")
    patterns = [pattern(s, i) for i, s in enumerate(SOURCES)]
    for round_ in range(3):
        Matcher(patterns, 5.0, memo=memo)
        Matcher(patterns, 5.0, memo=memo)  # a second source with the same packs
        tally = memo.tally()
        memo.save()
        if round_:
            assert tally.startswith("0 derived, "), tally


def test_a_warm_pack_load_compiles_no_regex_until_a_line_needs_it(tmp_path, monkeypatch):
    pack = tmp_path / "pack"
    pack.mkdir()
    body = ['[pack]\nname = "p"\nowner = "team"\n']
    for i in range(20):
        body.append(
            f"[[pattern]]\nid = \"p{i}\"\nmatch = '''code=E{i:03d} (?P<user>\\w+)'''\n"
            f'key = "{{user}}"\n[[pattern.example]]\nline = "code=E{i:03d} bob"\n'
        )
    (pack / "pack.toml").write_text("".join(body))
    file = tmp_path / "patterns.memo"
    memo = Memo(file)
    load_packs((pack,), trust=False, memo=memo)
    memo.save()

    compiled: list[str] = []
    real = regex.compile
    monkeypatch.setattr(
        regex, "compile", lambda source, *a, **k: compiled.append(source) or real(source, *a, **k)
    )
    warm = Memo(file)
    (loaded,) = load_packs((pack,), trust=False, memo=warm)
    assert compiled == []  # the memo knew they compile, and their groups
    matcher = Matcher(loaded.patterns, 5.0, memo=warm)
    hits = matcher.match("code=E007 alice")
    assert [(p.id, f) for p, f in hits] == [("p7", {"user": "alice"})]
    assert compiled == [r"code=E007 (?P<user>\w+)"]  # only the one a line needed


def test_a_changed_set_derives_only_what_changed_and_forgets_the_rest(tmp_path):
    file = tmp_path / "patterns.memo"
    first = Memo(file)
    Matcher([pattern(s, i) for i, s in enumerate(SOURCES[:3])], 5.0, memo=first)
    first.save()
    second = Memo(file)
    Matcher([pattern(s, i) for i, s in enumerate([SOURCES[0], r"disk (?P<d>\w+) full"])], 5.0,
            memo=second)  # fmt: skip
    assert second.hits >= 1 and second.misses >= 1
    second.save()
    kept = read_facts(file)
    assert set(kept["requirement"]) == {SOURCES[0], r"disk (?P<d>\w+) full"}  # pruned


def test_another_library_or_cpu_is_a_cold_start(tmp_path, monkeypatch):
    file = tmp_path / "patterns.memo"
    memo = Memo(file)
    Matcher([pattern(s, i) for i, s in enumerate(SOURCES)], 5.0, memo=memo)
    memo.save()
    monkeypatch.setattr(derived, "salt", lambda: "hyperscan 9.9 on another CPU")
    other = Memo(file)
    Matcher([pattern(s, i) for i, s in enumerate(SOURCES)], 5.0, memo=other)
    assert other.hits == 0 and other.misses


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "empty", "not a map", "lists for maps", "oversized"],
)
def test_a_damaged_memo_is_a_cold_start(tmp_path, monkeypatch, damage):
    file = tmp_path / "patterns.memo"
    patterns = [pattern(s, i) for i, s in enumerate(SOURCES)]
    memo = Memo(file)
    expected = scan(Matcher(patterns, 5.0, memo=memo), LINES)
    memo.save()
    raw = file.read_bytes()
    if damage == "truncated":
        file.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        file.write_bytes(os.urandom(4096))
    elif damage == "empty":
        file.write_bytes(b"")
    elif damage == "not a map":
        write_facts(file, [1, 2, 3])
    elif damage == "lists for maps":
        write_facts(file, {"shape": [1, 2]})
    else:
        monkeypatch.setattr(derived, "MAX_BYTES", len(raw) - 1)
    again = Memo(file)
    assert again.hits == 0
    assert scan(Matcher(patterns, 5.0, memo=again), LINES) == expected


def test_a_memo_fact_of_the_wrong_type_is_derived_again(tmp_path):
    """Well-formed msgpack with a hostile value where a requirement belongs: a miss."""
    file = tmp_path / "patterns.memo"
    facts = {"requirement": {SOURCES[0]: "not clauses"}, "shape": {SOURCES[2]: 12}}
    write_facts(file, facts)
    file.chmod(0o600)
    patterns = [pattern(s, i) for i, s in enumerate(SOURCES)]
    got = scan(Matcher(patterns, 5.0, memo=Memo(file)), LINES)
    assert got == scan(Matcher(patterns, 5.0), LINES)


@needs_hyperscan
def test_a_tampered_database_is_compiled_again(tmp_path):
    file = tmp_path / "patterns.memo"
    patterns = [pattern(s, i) for i, s in enumerate(SOURCES)]
    memo = Memo(file)
    expected = scan(Matcher(patterns, 5.0, memo=memo), LINES)
    memo.save()
    data = read_facts(file)
    databases = data["hyperscan"]
    assert len(databases) == 2  # the literals' and the shapes'
    for key, body in databases.items():
        flipped = bytearray(body)
        flipped[len(flipped) // 2] ^= 0xFF  # Hyperscan's own checksum refuses it
        databases[key] = bytes(flipped)
    write_facts(file, data)
    again = Memo(file)
    assert scan(Matcher(patterns, 5.0, memo=again), LINES) == expected
    again.save()
    healed = {"facts": read_facts(file)}
    assert all(
        hyperscan.loadb(b, hyperscan.HS_MODE_BLOCK) for b in healed["facts"]["hyperscan"].values()
    )


@pytest.mark.parametrize("how", ["group-writable", "another user's", "a symlink"])
def test_a_memo_that_is_not_the_agents_own_is_not_read(tmp_path, how, caplog):
    file = tmp_path / "patterns.memo"
    memo = Memo(file)
    Matcher([pattern(s, i) for i, s in enumerate(SOURCES)], 5.0, memo=memo)
    memo.save()
    if how == "group-writable":
        file.chmod(0o664)
    elif how == "another user's":
        if os.geteuid() != 0:
            pytest.skip("needs root to give the file away")
        os.chown(file, 65534, 65534)
    else:
        real = tmp_path / "elsewhere"
        shutil.move(file, real)
        file.symlink_to(real)
    again = Memo(file)
    Matcher([pattern(s, i) for i, s in enumerate(SOURCES)], 5.0, memo=again)
    assert again.hits == 0
    if how != "a symlink":
        assert "not a private file of this user" in caplog.text


def test_a_memo_that_cannot_be_written_costs_only_the_next_start(tmp_path, caplog):
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / f".patterns.memo.{os.getpid()}.new").mkdir()  # where the write goes: a folder
    memo = Memo(folder / "patterns.memo")
    matcher = Matcher([pattern(s, i) for i, s in enumerate(SOURCES)], 5.0, memo=memo)
    memo.save()
    assert "could not save the pattern memo" in caplog.text
    assert scan(matcher, LINES)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(chosen=st.lists(st.sampled_from(SOURCES[:4] + [r"^\w+=\d+$", r"(?P<n>\d+) ms"]),
                       min_size=1, max_size=6))  # fmt: skip
def test_memo_answers_equal_the_plain_loop_for_any_set(tmp_path_factory, chosen):
    file = tmp_path_factory.mktemp("memo") / "patterns.memo"
    patterns = [pattern(s, i) for i, s in enumerate(chosen)]
    for _ in range(2):  # cold, then warm from the file
        memo = Memo(file)
        matcher = Matcher(patterns, 5.0, memo=memo)
        memo.save()
        for line in [*LINES, "a=1", "12 ms"]:
            assert [(p.id, f) for p, f in matcher.match(line)] == plain(patterns, line)


PACK = """
[[pattern]]
id = "stuck"
match = '^queue stuck (?P<queue>\\w+)$'
key = "{queue}"
escalate = "never"
[[pattern.example]]
line = "queue stuck q1"

[[pattern]]
id = "access"
match = '^(?P<epoch>\\d{10}) (?P<path>\\S+) (?P<status>5\\d\\d) \\d+$'
key = "{path}"
escalate = "never"
[[pattern.example]]
line = "1767225600 /api 503 512"
"""


def test_the_agent_keeps_its_memo_and_a_restart_or_reload_of_the_same_set_is_warm(tmp_path):
    agent, log = agent_with_pack(tmp_path, PACK)
    agent.start()
    assert agent.saw("facts about them: 0 remembered") == 0, agent.log()
    memo = tmp_path / "state" / derived.FILE
    assert memo.stat().st_mode & 0o777 == 0o600
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)  # a reload right after a cold start: warm
    assert wait_for(lambda: agent.saw("reloaded: ")), agent.log()
    assert agent.saw("(facts about them: 0 derived, "), agent.log()
    assert agent.stop() == 0
    agent.start()  # a restart: everything from the memo
    assert agent.saw(" derived, 0 remembered") == 0
    assert agent.saw("facts about them: 0 derived, "), agent.log()
    append(log, "1767225600 /api 503 512", "queue stuck q9")
    assert wait_for(lambda: agent.saw("matched ops/access key='/api'")), agent.log()
    assert wait_for(lambda: agent.saw("matched ops/stuck key='q9'")), agent.log()
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)  # the same set: warm
    assert wait_for(lambda: agent.saw("reloaded: ")), agent.log()
    assert agent.saw("(facts about them: 0 derived, "), agent.log()
    pack = tmp_path / "packs" / "ops" / "pack.toml"
    pack.write_text(pack.read_text().replace("queue stuck", "queue wedged"))
    agent.proc.send_signal(signal.SIGHUP)  # one pattern changed: only it is derived again
    assert wait_for(lambda: agent.saw("reloaded: ") == 2), agent.log()
    changed = [line for line in agent.lines if "reloaded: " in line][-1]
    assert "facts about them: 0 derived" not in changed and " 0 remembered" not in changed
    append(log, "queue wedged q10")
    assert wait_for(lambda: agent.saw("matched ops/stuck key='q10'")), agent.log()
    assert agent.stop() == 0
    assert "Traceback" not in agent.log()


@needs_hyperscan
def test_compiled_apart_the_answers_are_the_same_and_refusals_are_found(tmp_path):
    """The agent builds its databases in a child (their compile's memory is not its own);
    the databases, the refusal found by halving, and so the answers, are the same."""
    patterns = [pattern(s, i) for i, s in enumerate(SOURCES)]
    here = Matcher(patterns, 5.0, memo=Memo())
    apart = Matcher(patterns, 5.0, memo=Memo(apart=True))
    assert apart.shaped == here.shaped == (2, 3)  # SOURCES[4] refused, in the child too
    assert scan(apart, LINES) == scan(here, LINES)


@needs_hyperscan
def test_a_child_that_cannot_compile_is_not_fatal(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(hscompile.sys, "executable", "/bin/false")
    patterns = [pattern(s, i) for i, s in enumerate(SOURCES)]
    matcher = Matcher(patterns, 5.0, memo=Memo(apart=True))
    assert "compiling the Hyperscan database apart failed" in caplog.text
    assert scan(matcher, LINES) == scan(Matcher(patterns, 5.0), LINES)


@needs_hyperscan
def test_the_child_answers_only_in_msgpack_and_refuses_garbage():
    """Run as the agent runs it: this one file, isolated, from / (it imports nothing of
    logmend's, so no other copy of logmend can answer for it)."""
    import subprocess
    import sys

    child = [sys.executable, "-I", str(Path(hscompile.__file__).resolve())]
    done = subprocess.run(child, input=b"\xc1 not msgpack", capture_output=True, cwd="/")
    assert done.returncode != 0 and done.stdout == b""  # the parent then compiles itself
    request = {"kind": "database", "expressions": [b"(a"], "flags": [0], "literal": False}
    done = subprocess.run(
        child, input=msgpack.packb(request, use_bin_type=True), capture_output=True, check=True
    )
    assert "refused" in msgpack.unpackb(done.stdout, raw=False)
    good = {"kind": "shapes", "expressions": [b"^(?:[\\x30-\\x39]{3})[^\\n]*$"]}
    done = subprocess.run(
        [*child[:2], "-X", "importtime", child[2]],
        input=msgpack.packb(good, use_bin_type=True),
        capture_output=True,
        check=True,
        cwd="/",
    )
    answer = msgpack.unpackb(done.stdout, raw=False)
    assert answer["taken"] == [True] and isinstance(answer["database"], bytes)
    assert b"agent" not in done.stderr  # importtime lists every module it imported


@pytest.mark.parametrize("kind", available_engines())
def test_a_regex_that_cannot_be_compiled_when_first_needed_is_quarantined_not_raised(kind):
    """Compiled lazily on the hot path, a regex the memo says compiles may not (a deeper
    stack, less memory): the line is not lost for the others, the pattern is quarantined
    with the reason."""
    from agent.packs import LazyRegex

    broken = dataclasses.replace(pattern(r"^\d+ up"), id="broken", lazy=LazyRegex("(", 0, ()))
    fine = pattern(r"^\d+ up", 1)
    matcher = Matcher([broken, fine], 5.0, kind)
    block = b"12 up\n13 up\n"
    assert [[p.id for p, _ in hits] for _, _, hits in matcher.scan(block)] == [["p1"], ["p1"]]
    assert matcher.quarantined == [broken]
    assert "error" in matcher.stats[0].error.lower()
