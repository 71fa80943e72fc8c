"""Inputs where the shape prefilter (agent.shapes) must still give exactly the plain loop's
answers: each found to break it."""

from __future__ import annotations

import pytest

from agent.literals import requirement
from agent.match import available_engines
from tests.test_match import assert_same, pattern

needs_hyperscan = pytest.mark.skipif(
    "hyperscan" not in available_engines(), reason="the shape prefilter is Hyperscan's"
)


@needs_hyperscan
@pytest.mark.parametrize("space", ["\x1c", "\x85", "\xa0", "\u2028", "\u3000"])
def test_verbose_whitespace_that_only_regex_ignores(space):
    """In verbose mode `regex` skips every Unicode white space in the pattern; the
    standard library's parser skips only " \\t\\n\\r\\v\\f" and reads the others as a
    literal the line must hold, so the prefilter drops lines `regex` matches."""
    source = "(?x)\\d" + space + "\\d"
    assert requirement(source).always
    assert assert_same([pattern(source)], ["55", "12 34", "5" + space + "5"]) >= 2


@needs_hyperscan
def test_a_literal_of_nul_bytes_does_not_stop_the_matcher():
    """Null padding (a log file cut by a crash) is a pattern worth having; its required
    literal is all NUL bytes, which Hyperscan's literal API reads as a C string: empty."""
    assert requirement(r"\x00{4}").always  # no literal with a NUL gates: its shape does
    assert assert_same([pattern(r"\x00{4}"), pattern(r"^\d+ ")], ["\x00" * 6, "12 up", "x"]) == 2


@needs_hyperscan
def test_a_literal_holding_a_nul_byte_finds_its_line():
    """Hyperscan sees the literal cut at its NUL ("xy"), the matcher places it by the
    length of the whole literal: at the start of a line that lands in the line before."""
    assert requirement(r"xy\x00zw").always  # (fixed: such a clause is not used)
    assert assert_same([pattern(r"xy\x00zw")], ["xy\x00zw", "q xy\x00zw", "xy"]) == 2
