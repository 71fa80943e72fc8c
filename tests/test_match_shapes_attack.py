"""Inputs where the shape prefilter and the anchored-prefix gate (agent.shapes) must still
give exactly the plain loop's answers, and stay quick: each found to break it, or
written to."""

from __future__ import annotations

import time

import pytest

from agent.literals import requirement
from agent.match import Matcher, available_engines
from tests.test_match import assert_same, pattern


@pytest.mark.parametrize("space", ["\x1c", "\x85", "\xa0", "\u2028", "\u3000"])
def test_verbose_whitespace_that_only_regex_ignores(space):
    """In verbose mode `regex` skips every Unicode white space in the pattern; the
    standard library's parser skips only " \\t\\n\\r\\v\\f" and reads the others as a
    literal the line must hold, so the prefilter drops lines `regex` matches."""
    source = "(?x)\\d" + space + "\\d"
    assert requirement(source).always
    assert assert_same([pattern(source)], ["55", "12 34", "5" + space + "5"]) >= 2


def test_a_literal_of_nul_bytes_does_not_stop_the_matcher():
    """Null padding (a log file cut by a crash) is a pattern worth having; its required
    literal is all NUL bytes, which Hyperscan's literal API reads as a C string: empty."""
    assert requirement(r"\x00{4}").always  # no literal with a NUL gates: its shape does
    assert assert_same([pattern(r"\x00{4}"), pattern(r"^\d+ ")], ["\x00" * 6, "12 up", "x"]) == 2


def test_a_literal_holding_a_nul_byte_finds_its_line():
    """Hyperscan sees the literal cut at its NUL ("xy"), the matcher places it by the
    length of the whole literal: at the start of a line that lands in the line before."""
    assert requirement(r"xy\x00zw").always  # (fixed: such a clause is not used)
    assert assert_same([pattern(r"xy\x00zw")], ["xy\x00zw", "q xy\x00zw", "xy"]) == 2


ANCHORED = [r"^\d{10} \S+ \d{3} \d+$", r"^(?:\d+,){3}\d+ (?P<who>\w+)", r"(?i)^[a-z]{3}\d{2}"]
HOSTILE = [
    b"1" * 65536,  # a prefix that nearly holds, as long as a line may be
    b"1234567890 " * 6000,
    b"1," * 30000,
    b"abc12" * 13000,
    "\u0663".encode() * 20000,  # not ASCII: confirmed, still one pass
    b"\n" * 65536,  # empty lines
]


@pytest.mark.parametrize("kind", available_engines())
def test_hostile_lines_cost_the_gate_one_pass(kind):
    """The gate never backtracks: 200 lines of 64 KiB built to nearly pass it are read in
    well under a second (a quadratic gate would take minutes); the confirm keeps its
    timeout for what passes."""
    patterns = [pattern(s, i) for i, s in enumerate(ANCHORED)]
    matcher = Matcher(patterns, timeout=0.05, engine=kind)
    assert matcher.shaped == (0, 1, 2)
    block = b"".join((line.rstrip(b"\n") + b"\n") for line in HOSTILE * 33)
    started = time.perf_counter()
    matcher.scan(block, max_line=65536)
    assert time.perf_counter() - started < 5.0


@pytest.mark.parametrize("kind", available_engines())
def test_a_character_that_folds_onto_ascii_or_is_not_ascii_reaches_the_confirm(kind):
    """(?i)k matches the Kelvin sign, \\d an Arabic-Indic digit: where a byte is not a
    character, the line is confirmed, whatever its first bytes are."""
    sources = [r"(?i)^k\d", r"^\d\d x", r"^.\d\w"]
    lines = ["\u212a5", "k5", "K5", "\u06635 x", "55 x", "5\u0663 x", "é5x", "a5x", "é5", "x"]
    assert assert_same([pattern(s, i) for i, s in enumerate(sources)], lines) >= 8
