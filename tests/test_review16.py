"""Review of issue 16 (the memo, the compile child, the pure-Python prefix gate): each
test here failed on the reviewed commit and names the bug it shows."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent import derived, hscompile
from agent.derived import Memo
from agent.match import Matcher, available_engines
from agent.records import decode_line, split_block
from tests.test_match import pattern, plain

ROOT = Path(__file__).resolve().parent.parent
needs_hyperscan = pytest.mark.skipif(
    "hyperscan" not in available_engines(), reason="the compile child is Hyperscan's"
)


def scanned(matcher: Matcher, block: bytes) -> dict[int, tuple[str, list[tuple[str, dict]]]]:
    return {s: (t, [(p.id, f) for p, f in hits]) for s, t, hits in matcher.scan(block)}


def expected(patterns: list, block: bytes) -> dict[int, tuple[str, list[tuple[str, dict]]]]:
    out = {}
    start = 0
    for raw in split_block(block):
        record = decode_line(raw, 0, len(raw), 1 << 30)
        want = plain(patterns, record)
        if want:
            out[start] = (record, want)
        start += len(raw) + 1
    return out


# -- the literal gate and U+FFFD ----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        # new in issue 16: two-character literals gate unanchored patterns (python engine)
        (r"\ufffd\ufffd", "python"),
        (r"(?P<sep>\ufffd\ufffd)", "python"),
        # the same flaw in the three-character literal prefilter, both engines
        (r"bad\ufffd", "python"),
        pytest.param(r"bad\ufffd", "hyperscan", marks=needs_hyperscan),
    ],
)
def test_a_literal_with_the_replacement_character_gates_no_undecodable_line(source, kind):
    """A record is its line decoded with errors="replace": bytes that are not UTF-8
    become U+FFFD, which the raw line does not hold as EF BF BD. A literal containing
    U+FFFD is looked for in the raw bytes, never found, and the line is never tried,
    though `regex.search` on the record matches."""
    patterns = [pattern(source)]
    block = b"bad\xff\xfe\nok\n"
    want = expected(patterns, block)
    assert want  # the plain loop matches the first record
    assert scanned(Matcher(patterns, 5.0, kind), block) == want
