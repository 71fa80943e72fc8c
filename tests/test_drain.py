"""Drain (agent/drain.py): masking and template merging, by property and by example."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drain import PLACEHOLDERS, WILDCARD, Drain, header_length, mask, tokens_of

WORDS = st.sampled_from(
    ["ERROR", "failed", "cannot", "open", "user", "job", "denied", "connection", "to", "for"]
)
VARIABLE = st.one_of(
    st.integers(0, 10**9).map(str),
    st.uuids().map(str),
    st.ip_addresses(v=4).map(str),
    st.integers(0, 2**64).map(lambda n: f"0x{n:x}"),
    st.lists(st.from_regex(r"[a-z]{1,6}", fullmatch=True), min_size=2, max_size=4).map(
        lambda parts: "/" + "/".join(parts)
    ),
)
LINES = st.lists(st.one_of(WORDS, VARIABLE), min_size=1, max_size=12).map(" ".join)


@given(st.text(max_size=200))
def test_masking_is_idempotent_on_any_text(line):
    once = mask(line)
    assert mask(once) == once


@given(VARIABLE)
def test_every_kind_of_variable_is_masked_whole(value):
    masked = mask(f"x {value} y")
    middle = masked.split()[1]
    assert middle in PLACEHOLDERS, (value, masked)


@given(st.lists(LINES, min_size=1, max_size=60))
@settings(max_examples=150, deadline=None)
def test_every_line_fits_its_template_and_counts_add_up(lines):
    drain = Drain(max_templates=1000)
    seen = []
    for n, line in enumerate(lines):
        template = drain.add(line, now=float(n))
        seen.append((template.id, tokens_of(mask(line))))
    for template_id, tokens in seen:
        template = drain.templates[template_id]
        assert len(template.tokens) == len(tokens)
        assert all(t in (WILDCARD, mine) for t, mine in zip(template.tokens, tokens, strict=True))
    assert sum(t.count for t in drain.templates.values()) == len(lines)
    assert all(len(t.samples) <= drain.max_samples for t in drain.templates.values())


@given(st.lists(LINES, min_size=1, max_size=200), st.integers(1, 8))
@settings(max_examples=100, deadline=None)
def test_templates_stay_bounded_and_evictions_are_counted(lines, cap):
    drain = Drain(max_templates=cap)
    for n, line in enumerate(lines):
        drain.add(line, now=float(n))
        assert len(drain.templates) <= cap
    made = max(t.id for t in drain.templates.values())
    assert made - len(drain.templates) == drain.evicted


def test_lines_that_differ_in_their_variables_share_one_template():
    drain = Drain()
    for n in range(50):
        drain.add(f"ERROR job {n} failed for user u{n} at 10.0.0.{n} in /srv/app/job{n}.py")
    [template] = drain.templates.values()
    assert template.text == "ERROR job <NUM> failed for user <*> at <IP> in <PATH>"
    assert template.count == 50 and len(template.samples) == 3


def test_different_errors_stay_apart():
    drain = Drain()
    drain.add("ERROR cannot open /var/lib/app/db.sqlite: permission denied")
    drain.add("ERROR cannot open /var/lib/app/other.sqlite: permission denied")
    drain.add("FATAL out of memory allocating 4096 bytes")
    drain.add("ERROR connection refused by 10.0.0.1:5432")
    texts = sorted(t.text for t in drain.templates.values())
    assert texts == [
        "ERROR cannot open <PATH>: permission denied",
        "ERROR connection refused by <IP>",
        "FATAL out of memory allocating <NUM> bytes",
    ]


def test_the_least_recently_seen_template_is_the_one_evicted():
    drain = Drain(max_templates=2)
    a = drain.add("alpha one two")
    drain.add("beta three four five")
    drain.add("alpha one two")  # seen again: now the most recent
    drain.add("gamma six")
    assert a.id in drain.templates and drain.evicted == 1
    assert sorted(t.text for t in drain.templates.values()) == ["alpha one two", "gamma six"]


def test_a_restored_template_takes_the_lines_it_took_before():
    first = Drain()
    for n in range(5):
        first.add(f"ERROR worker {n} crashed: signal {n + 9}")
    [kept] = first.templates.values()
    second = Drain()
    second.restore(kept)
    again = second.add("ERROR worker 77 crashed: signal 11")
    assert again.id == kept.id and again.count == 6
    assert second.add("something else entirely").id == kept.id + 1


def test_hostile_lines_are_cheap_and_bounded():
    drain = Drain(max_templates=10)
    huge = "x " * 100_000  # a 200 KB line of tokens: grouped by its first MAX_TOKENS
    drain.add(huge)
    drain.add("\x00\x1b[2J" * 1000)
    drain.add("")
    assert len(drain.templates) <= 10
    assert all(len(t.tokens) <= 64 for t in drain.templates.values())
    assert re.fullmatch(r"[^\n]*", mask("a\x00b"))


@given(st.lists(st.one_of(WORDS, VARIABLE, st.sampled_from(["Dec", "INFO", "[main]", "-"])),
                min_size=1, max_size=20))  # fmt: skip
def test_a_header_never_takes_the_whole_line(words):
    tokens = tokens_of(mask(" ".join(words)))
    assert 0 <= header_length(tokens) < max(1, len(tokens))


def test_one_message_on_two_days_is_one_template_and_two_messages_are_two():
    """The header (time, host, pid, level) neither routes a line nor makes two messages
    alike: grouped on whole lines as they are logged (docs/performance.md: loghub)."""
    drain = Drain()
    lines = [
        "Jun 15 02:04:59 combo sshd(pam_unix)[20884]: authentication failure for user root",
        "Jul  7 08:09:10 combo sshd(pam_unix)[2421]: authentication failure for user admin",
        "Jul  7 08:09:11 combo sshd(pam_unix)[2421]: session closed for user admin now",
        "[Sun Dec 04 04:51:09 2005] [error] mod_jk child workerEnv in error state 6",
        "[Mon Dec 05 11:02:13 2005] [error] mod_jk child workerEnv in error state 7",
        "2026-11-30 07:00:00,123 ERROR [worker-3] com.app.Worker: job 7 failed",
        "2026-11-30 07:00:01,456 ERROR [worker-9] com.app.Worker: job 8 failed",
        "2026-11-30 07:00:01,456 ERROR [worker-9] com.app.Queue: job 8 failed",
    ]
    ids = [drain.add(line).id for line in lines]
    assert ids[0] == ids[1] != ids[2]
    assert ids[3] == ids[4] and ids[5] == ids[6] != ids[7]
    assert drain.templates[ids[0]].text == (
        "<*> <NUM> <TIME> combo sshd(pam_unix)[<NUM>]: authentication failure for user <*>"
    )


def test_a_level_word_alone_is_no_license_to_skip_the_words_after_it():
    drain = Drain()
    one = drain.add("ERROR worker 7 crashed: exit 1").id
    assert drain.add("ERROR job 7 crashed: exit 1").id != one


def test_a_line_of_a_known_shape_still_fits_its_template_exactly():
    """The shape shortcut (digits 1-9 read as 1) never puts a line where masking would
    not: a digit kept literal, a digit where there was none, `0x` against `1x`."""
    drain = Drain()
    first = drain.add("ERROR module m17 failed")
    assert drain.add("ERROR module m18 failed").id == first.id  # generalised by a merge
    assert first.text == "ERROR module <*> failed"
    assert drain.add("ERROR module m99 failed").text == "ERROR module <*> failed"
    plain = drain.add("WARN x ab y")
    assert drain.add("WARN x a1b y").id != plain.id and plain.count == 1  # not "ab"
    hex_id = drain.add("FATAL bad handle 0x1f")
    assert hex_id.text == "FATAL bad handle <HEX>"
    assert drain.add("FATAL bad handle 1x1f").text == "FATAL bad handle <*>"  # merged


@given(st.lists(LINES, min_size=1, max_size=80))
@settings(max_examples=100, deadline=None)
def test_the_shape_shortcut_groups_as_the_full_path_does(lines):
    """Each line fits the template it is counted in, shortcut or not (as masked whole)."""
    drain = Drain()
    for line in lines:
        template = drain.add(line)
        tokens = tokens_of(mask(line))
        assert all(t in (WILDCARD, mine) for t, mine in zip(template.tokens, tokens, strict=True))
