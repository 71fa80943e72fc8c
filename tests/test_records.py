"""The line splitter against a model: any chunking of any bytes gives the same lines."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.records import LineSplitter, decode_lines


def model(data: bytes, max_line: int) -> tuple[list[str], bytes]:
    """Complete lines of `data` cut to max_line bytes, and the unfinished tail."""
    *complete, tail = data.split(b"\n")
    lines = []
    for raw in complete:
        raw = raw.removesuffix(b"\r")
        if len(raw) > max_line:
            raw = raw[:max_line].removesuffix(b"\r")  # a cut record drops a final CR too
        lines.append(raw.decode("utf-8", "replace"))
    return lines, tail


line_bytes = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"\r", b"\xff", b"\x00", "é€".encode(), b"\xe2\x82", b"x" * 90]),
    ),
    max_size=8,
).map(b"".join)
documents = st.lists(line_bytes, max_size=20).map(lambda ls: b"\n".join(ls))


@settings(max_examples=1000)
@given(
    data=documents, cuts=st.lists(st.integers(0, 2000), max_size=12), max_line=st.integers(8, 120)
)
def test_any_chunking_gives_the_model_lines(data, cuts, max_line):
    splitter = LineSplitter(max_line)
    got: list[str] = []
    points = sorted({c % (len(data) + 1) for c in cuts})
    start = 0
    for point in [*points, len(data)]:
        got.extend(decode_lines(splitter.feed(data[start:point]), max_line))
        start = point
    lines, tail = model(data, max_line)
    if len(tail) > max_line + 1:
        lines.append(tail[:max_line].removesuffix(b"\r").decode("utf-8", "replace"))
        # the cut tail was emitted already and the rest of that line is being skipped
        assert splitter.pending == b""
    else:
        assert splitter.pending == tail
    assert got == lines


def test_crlf_nul_and_invalid_utf8():
    splitter = LineSplitter(1000)
    block = splitter.feed(b"a\r\nb\x00c\r\n\xff\xfe ok\n")
    assert decode_lines(block) == ["a", "b\x00c", "\ufffd\ufffd ok"]


def test_partial_line_is_held_until_its_newline():
    splitter = LineSplitter(1000)
    assert splitter.feed(b"first\nsec") == b"first\n"
    assert splitter.feed(b"ond") == b""
    assert splitter.feed(b"\n") == b"second\n"
    assert splitter.flush() == b""


def test_a_huge_line_without_newline_costs_bounded_memory():
    splitter = LineSplitter(64 * 1024)
    chunk = b"A" * (1024 * 1024)
    tracemalloc.start()
    out = []
    for _ in range(256):  # 256 MB with no newline
        out.extend(decode_lines(splitter.feed(chunk)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert out == ["A" * 64 * 1024]
    assert splitter.truncated == 1
    assert peak < 8 * 1024 * 1024
    assert splitter.feed(b"tail of the monster\nnext line\n") == b"next line\n"
