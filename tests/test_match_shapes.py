"""Patterns with no literal, prefiltered by their shape (issue 16): the answers stay
exactly those of the plain loop, and the prefilter really keeps lines from `regex`.

Lines are built to break a byte-level translation: information separators that
`re` calls spaces and `regex` does not, a vertical tab, a CR before the newline,
characters that fold onto ASCII letters (the long s, the Kelvin sign), digits
that are not ASCII, lines cut at max_line in the middle of a match.
"""

from __future__ import annotations

import pytest
import regex
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.literals import requirement
from agent.match import Matcher, available_engines
from agent.records import decode_line, split_block
from agent.shapes import anchored_prefix, prefilter_expression
from tests.test_match import assert_same, compiles, pattern, plain

needs_hyperscan = pytest.mark.skipif(
    "hyperscan" not in available_engines(), reason="the shape prefilter is Hyperscan's"
)

SHAPES = st.sampled_from(
    [
        r"\d+", r"\d{2,4}", r"\w+", r"\W", r"\s", r"\S+", r"[a-f0-9]{4}", r"[A-Z]{2}", r"[^ ]+",
        r"\.", " ", "-", ":", "=", r"\b", r"\B", "^", "$", r"\A", r"\Z", ".", ".*", ".+?",
        r"[\x1c-\x1f]", r"[^\d\s]", r"(?i:[k-s])", r"(?i:s)", r"[\u017f]", r"\u212a",
    ]
)  # fmt: skip


@st.composite
def shaped_patterns(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    names = iter(["a", "b"])
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.integers(0, 9 if depth < 2 else 1))
        if kind <= 1:
            parts.append(draw(SHAPES))
        elif kind == 2:
            name = next(names, None)
            inner = draw(shaped_patterns(depth + 1))
            parts.append(f"(?P<{name}>{inner})" if name else inner)
        elif kind == 3:
            alts = draw(st.lists(shaped_patterns(depth + 1), min_size=2, max_size=3))
            parts.append("(?:" + "|".join(alts) + ")")
        elif kind == 4:  # a long count over one item (past MAX_BOUND: widened), a short
            # one over a group (nested long counts would make the plain loop backtrack for ever)
            low = draw(st.integers(0, 3))
            if draw(st.booleans()):
                high = low + draw(st.integers(0, 150))
                parts.append(f"(?:{draw(SHAPES.filter(lambda a: '.' not in a))}){{{low},{high}}}")
            else:
                high = low + draw(st.integers(0, 2))
                parts.append(f"(?:{draw(shaped_patterns(depth + 1))}){{{low},{high}}}")
        elif kind == 5:
            parts.append("(?=\\d)" if draw(st.booleans()) else r"(?<!\s)")
        elif kind == 6:
            parts.append(r"(?P<r>\d)(?P=r)")
        elif kind == 7:
            parts.append(f"(?i:{draw(shaped_patterns(depth + 1))})")
        elif kind == 8:
            parts.append(f"(?>{draw(shaped_patterns(depth + 1))})")
        else:
            parts.append(r"\d++")
    source = "".join(parts)
    if depth == 0 and draw(st.booleans()):
        source = "^" + source  # anchored: the pure-Python engine gates it by its prefix
    if depth == 0 and draw(st.booleans()):
        source = "(?i)" + source
    return source


PIECES = [
    "1", "23", "2026-11-29", "a", "ab", "K", "s", "S", "ſ", "\u212a", "\u0663", "é", " ", "\t",
    "\x0b", "\x1c", "\x1f", "-", ":", "=", ".", "x=y", "0f3a", "GET", "\r",
]  # fmt: skip
LINES = st.lists(st.sampled_from(PIECES), max_size=16).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sources=st.lists(shaped_patterns(), min_size=1, max_size=6),
    lines=st.lists(LINES, min_size=1, max_size=12),
)
def test_patterns_with_no_literal_match_exactly_like_the_plain_loop(sources, lines):
    sources = [s for s in sources if compiles(s)]
    assume(sources)
    patterns = [pattern(s, i) for i, s in enumerate(sources)]
    lines = [*lines, "1234567890 GET 200 512", "ab\x1c12", "ſK\u212a 0f3a-x=y"]
    assume(quick(patterns, lines))
    assert_same(patterns, lines)


def quick(patterns: list, lines: list[str]) -> bool:
    """No generated pattern backtracks for long on these lines (the plain loop has no
    timeout; the matcher's confirm has, and is checked elsewhere)."""
    try:
        for p in patterns:
            for line in lines:
                p.regex.search(line, timeout=0.5)
    except TimeoutError:
        return False
    return True


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sources=st.lists(shaped_patterns(), min_size=1, max_size=4),
    lines=st.lists(LINES, min_size=1, max_size=8),
    max_line=st.integers(1, 12),
    kind=st.sampled_from(available_engines()),
)
def test_a_line_cut_at_max_line_matches_as_its_cut_record_does(sources, lines, max_line, kind):
    """A record is its line cut at max_line bytes (and without a final CR): an anchor at
    the cut, or a match that the cut ends, holds in the record and not in the block."""
    sources = [s for s in sources if compiles(s)]
    assume(sources)
    patterns = [pattern(s, i) for i, s in enumerate(sources)]
    assume(quick(patterns, lines))
    block = "".join(line + "\n" for line in lines).encode()
    matcher = Matcher(patterns, timeout=5.0, engine=kind)
    got = {
        start: (text, [(p.id, f) for p, f in hits])
        for start, text, hits in matcher.scan(block, max_line)
    }
    start = 0
    for raw in split_block(block):
        record = decode_line(raw, 0, len(raw), max_line)
        want = plain(patterns, record)
        assert got.get(start) == ((record, want) if want else None), (raw, record)
        start += len(raw) + 1


SHAPED_FORMATS = [
    r"^\d{10} \S+ \d{3} \d+$",  # a numeric access record
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12} (?P<level>[A-Z]+) ",
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z? \[(?P<unit>\w+)\] ",
    r"(?P<key>[a-z_]+)=(?P<value>\d+) (?P=key)=\d+$",
]


@needs_hyperscan
def test_shaped_formats_are_prefiltered_and_quiet_lines_reach_no_regex():
    patterns = [pattern(s, i) for i, s in enumerate(SHAPED_FORMATS)]
    assert all(requirement(p.source).always for p in patterns)  # no literal to hang on
    assert all(prefilter_expression(p.source) is not None for p in patterns)
    matcher = Matcher(patterns, timeout=5.0, engine="hyperscan")
    assert matcher.shaped == (0, 1, 2, 3)
    quiet = b"".join(b"GET /index.html HTTP/1.1 from host-%d\n" % n for n in range(5000))
    assert matcher.scan(quiet) == []
    assert sum(s.confirms for _, s in matcher.pattern_stats()) == 0  # the prefilter held
    lines = [
        "1767225600 /api 200 512",
        "1767225600 /api 200 512x",
        "0b5f2c1e-9a3d-4c7e-8f00-123456789abc ERROR disk",
        "2026-11-29T20:01:02.5Z [nginx] up",
        "2026-11-29T20:01:02 [nginx]x",
        "retries=3 retries=4",
        "retries=3 tries=4",
        "١٧٦٧٢٢٥٦٠٠ /api 200 512",  # Arabic-Indic digits: \d matches them, no byte class does
    ]
    assert assert_same(patterns, lines) >= 5
    assert plain(patterns, lines[-1])  # the line that is not ASCII matched: confirmed, not lost


def test_the_python_engine_gates_anchored_formats_by_their_prefix():
    """Without Hyperscan no cliff: an anchored pattern's fixed run of classes gates it;
    an unanchored one (key=value runs) is the one left for every line, and says so."""
    patterns = [pattern(s, i) for i, s in enumerate(SHAPED_FORMATS)]
    matcher = Matcher(patterns, timeout=5.0, engine="python")
    assert matcher.shaped == (0, 1, 2)
    assert matcher.ungated == (patterns[3],)
    quiet = b"".join(b"GET /index.html HTTP/1.1 from host-%d\n" % n for n in range(5000))
    matcher.scan(quiet)
    confirms = [s.confirms for _, s in matcher.pattern_stats()]
    assert confirms == [0, 0, 0, 5000]


def test_the_python_gate_sorts_a_shared_prefix_by_the_short_literals_after_it():
    """Patterns of one format share a prefix; their two-letter codes (too short for the
    literal prefilter) decide which of them a line that passes it reaches."""
    sources = [rf"^(?P<ts>\d{{10}}) (?P<path>\S+) (?P<code>{c}\d+)$" for c in ("qx", "zz", "QX")]
    patterns = [pattern(s, i) for i, s in enumerate(sources)]
    matcher = Matcher(patterns, timeout=5.0, engine="python")
    assert matcher.shaped == (0, 1, 2)
    lines = [f"1767225600 /api/{n} qx{n}" for n in range(300)] + ["1767225600 /x QX1"]
    matcher.scan("".join(line + "\n" for line in lines).encode())
    assert [s.confirms for _, s in matcher.pattern_stats()] == [300, 0, 1]
    assert assert_same(patterns, [*lines[:3], "1767225600 /x zz9", "1767225600 /x Qx9"]) == 4


@pytest.mark.parametrize(
    ("source", "prefix"),
    [
        (r"^\d{3} ", rb"[\x30-\x39][\x30-\x39][\x30-\x39][\x20]"),
        (r"\A(?:ab){2,3}c", rb"[\x61][\x62][\x61][\x62]"),  # the sure two, then it varies
        (r"^(?=x)\bx\d+y", rb"[\x78][\x30-\x39]"),  # lookarounds and boundaries widened
        (r"(?P<a>^[AB])-", rb"[\x41-\x42][\x2d]"),
        (r"(?i)^s", rb"[\x53\x73]"),
        (r"^a(?:bc|d)e", rb"[\x61]"),  # an alternation ends the run
        (r"^(\d)\1x", rb"[\x30-\x39]"),  # so does a backreference
        (r"^\d{2,}-", rb"[\x30-\x39][\x30-\x39]"),
        (r"^.{100}", rb"[\x00-\x09\x0b-\x7f]" * 64),  # at most MAX_PREFIX classes
        (r"x^a", None),  # a character before the anchor: not anchored
        (r"^\s*x", None),  # nothing sure at the start
        (r"(?:^ab|^cd)", None),  # ^ is factored out, then an alternation
        (r"[[:alpha:]]", None),  # syntax the stdlib would read differently: unsure
        (r"\d{4}-\d\d", None),  # no anchor: Hyperscan's shape, or every line
    ],
)
def test_the_anchored_prefix_is_what_every_match_starts_with(source, prefix):
    assert anchored_prefix(source) == prefix


@needs_hyperscan
def test_a_pattern_hyperscan_refuses_stays_confirmed_on_every_line():
    """An expression Hyperscan will not compile costs only itself: found by halving, left
    to the every-line path; the others stay prefiltered."""
    refused = r"(?:(?:(?:\w{0,99}\d){0,99}\s){0,99}\S){2,99}"  # too large for Hyperscan
    sources = [r"^\d{3} \d", refused, r"^[a-z]+=\d+$"]
    patterns = [pattern(s, i) for i, s in enumerate(sources)]
    assert all(requirement(s).always for s in sources)
    matcher = Matcher(patterns, timeout=5.0, engine="hyperscan")
    assert matcher.shaped == (0, 2)
    assert_same(patterns, ["123 4", "12 4", "abc=12", "abc=", "1 x y", "y", " "])


def test_the_translation_keeps_what_regex_means_by_each_class():
    """Each single-character item becomes the exact ASCII set `regex` gives it."""
    expression = prefilter_expression(r"\s")
    assert expression is not None
    compiled = regex.compile(rb"(?s)" + expression.split(b")[^")[0][3:])
    assert [chr(c) for c in range(128) if compiled.fullmatch(bytes([c]))] == [
        chr(c) for c in range(128) if c != 10 and regex.fullmatch(r"\s", chr(c))
    ]
    assert prefilter_expression("x?") is None  # matches an empty string: every line anyway
    assert prefilter_expression(r"[[:digit:]]+") is None  # a POSIX class: refused
    assert prefilter_expression(r"(?:timed out){e<=1}") is None  # fuzzy: refused
