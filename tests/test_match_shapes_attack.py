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

