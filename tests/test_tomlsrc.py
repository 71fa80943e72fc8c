"""The TOML reader: key lines found in linear time, hostile files refused with their name."""

from __future__ import annotations

import json
import os
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError, ConfigErrors
from agent.tomlsrc import MAX_BYTES, Doc, KeyLines, read_bounded

# ---- hostile lines: the scanner stays linear and never raises ----------------------

PIECES = ["[", "[[", "]", "]]", " ", "\t", '"', '"""', "'", "'''", ".", "=", "#", "\\", "{"]
PIECES += ["}", ",", "\n", "\r", "a", "-", "\\u00", '\\"']


def scan_seconds(text: str) -> tuple[float, KeyLines]:
    started = time.perf_counter()
    lines = KeyLines(text)
    return time.perf_counter() - started, lines


def test_the_reported_line_of_a_bracket_and_8000_spaces_is_scanned_at_once():
    seconds, lines = scan_seconds("[" + " " * 8000)  # the old regexes took 353 s
    assert seconds < 1.0
    assert lines.line_of(("a",)) is None


@given(st.lists(st.tuples(st.sampled_from(PIECES), st.integers(1, 4000)), max_size=10))
@settings(max_examples=150, deadline=None)
def test_runs_of_brackets_quotes_dots_and_spaces_scan_quickly_and_never_raise(runs):
    text = "".join(piece * count for piece, count in runs)
    seconds, lines = scan_seconds(text)
    # up to 160,000 characters; linear is well under a second, the old scanner took minutes
    assert seconds < 2.0, (seconds, [(piece, count) for piece, count in runs])
    last = text.count("\n") + 1
    for path, line in lines._lines.items():
        assert 1 <= line <= last
        assert lines.line_of(path + ("x", 3)) == line


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_text_scans_without_raising(text):
    KeyLines(text).line_of(("a", 0, "b"))


# ---- well-formed documents: every key is found on the line it was written on -------

KEY_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x7f"), max_size=6)
LITERAL_TEXT = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="'"), max_size=6
)

# values, as (lines, [(path inside the value, line offset)]); the first line follows `key = `
VALUES: list[tuple[list[str], list[tuple[tuple[str | int, ...], int]]]] = [
    (["42"], []),
    (["1979-05-27 07:32:00Z"], []),
    (["-inf  # a comment [x] = 1"], []),
    (['"a = [b] \\"q\\" # no comment"'], []),
    (["'C:\\dir [x] = y'"], []),
    (['"""one "two" ""three"" """'], []),
    (['"""ends in a quote""""'], []),
    (["'''it's [x] = 'y' '''"], []),
    (['"""', "x = 1", "[fake]", '  \\"""still inside', 'end"""'], []),
    (['"""\\', "  [[fake]]", '  k = "v" """'], []),
    (["'''", "[fake.table]", "k = 'v'", "'' two quotes", "end'''"], []),
    (["[1, [2, 3], { x = 1 }, '''[''']"], []),
    (["{ a = 1, \"b c\" = 'x', d.e = [1, 2] }"], []),
    (["[", "  1,", "  [2, 3],", "  { x = 1 },", "]"], [((0,), 1), ((1,), 2), ((2,), 3)]),
    (
        ["[ 'a',", "  [", "    1,", "    '''x", "y''',", "  ], # c", "  # [fake]", "]"],
        [((1,), 1), ((1, 0), 2), ((1, 1), 3)],
    ),
    (["[", '  { name = "x", tags = [', "    'a' ] },", "]"], [((0,), 1), ((0, "tags", 0), 2)]),
    (["[ ]"], []),
    (['[ """say "hi"""""', "  , '''it''''',", "  2 ]"], [((1,), 1), ((2,), 2)]),
]


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, dict[tuple[str | int, ...], int]]:
    """A TOML document and the line each of its keys, tables and elements starts on."""
    lines: list[str] = []
    expected: dict[tuple[str | int, ...], int] = {}
    counter = iter(range(1_000_000))

    def at(path: tuple[str | int, ...]) -> None:
        expected.setdefault(path, len(lines) + 1)

    def filler() -> None:
        for _ in range(draw(st.integers(0, 2))):
            lines.append(draw(st.sampled_from(["", "# [fake] x = 1 '''", "   ", '\t# """'])))

    def keys(table: tuple[str | int, ...]) -> None:
        for _ in range(draw(st.integers(0, 4))):
            filler()
            n = next(counter)
            kind = draw(st.sampled_from(["bare", "quoted", "literal", "dotted"]))
            if kind == "bare":
                written, names = f"k{n}", (f"k{n}",)
            elif kind == "quoted":
                name = f"q{n} " + draw(KEY_TEXT)
                written, names = json.dumps(name, ensure_ascii=False), (name,)
            elif kind == "literal":
                name = f"l{n}." + draw(LITERAL_TEXT)
                written, names = f"'{name}'", (name,)
            else:
                written, names = f'd{n} . "e.{n}".f', (f"d{n}", f"e.{n}", "f")
            for end in range(1, len(names) + 1):
                at(table + names[:end])
            value, inside = draw(st.sampled_from(VALUES))
            first = len(lines) + 1
            lines.append(f"{written} = {value[0]}")
            lines.extend(value[1:])
            for sub, offset in inside:
                expected.setdefault(table + names + sub, first + offset)

    keys(())
    for _ in range(draw(st.integers(0, 4))):
        filler()
        n = next(counter)
        kind = draw(st.sampled_from(["table", "dotted", "array"]))
        if kind == "table":
            at((f"t{n}",))
            lines.append(f"[ t{n} ]  # [not] this")
            keys((f"t{n}",))
        elif kind == "dotted":
            at((f"t{n}",))
            at((f"t{n}", "s p"))
            at((f"t{n}", "s p", "x"))
            lines.append(f'[t{n}."s p".x]')
            keys((f"t{n}", "s p", "x"))
        else:
            for index in range(draw(st.integers(1, 3))):
                at((f"a{n}",))
                at((f"a{n}", index))
                lines.append(f"[[a{n}]]")
                keys((f"a{n}", index))
                for sub in range(draw(st.integers(0, 2))):
                    at((f"a{n}", index, "b"))
                    at((f"a{n}", index, "b", sub))
                    lines.append(f"[[ a{n}.b ]]")
                    keys((f"a{n}", index, "b", sub))
                if draw(st.booleans()):
                    at((f"a{n}", index, "c"))
                    lines.append(f"[a{n}.c]")
                    keys((f"a{n}", index, "c"))
    filler()
    return "\n".join(lines) + "\n", expected


def walk(data: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


@given(documents())
@settings(max_examples=300, deadline=None)
def test_every_key_table_and_element_of_a_document_is_found_on_its_line(document):
    text, expected = document
    data = tomllib.loads(text)  # the generator writes real TOML
    lines = KeyLines(text)
    for path, line in expected.items():
        walk(data, path)  # and each expected path is really in it
        assert lines.line_of(path) == line, (path, text)


def test_a_one_line_array_costs_one_entry_not_one_per_element():
    found = KeyLines("a = [" + "1, " * 100_000 + "]\nb = 2\n")
    assert found._lines == {("a",): 1, ("b",): 2}
    assert found.line_of(("a", 99_999)) == 1


def test_a_quoted_key_with_escapes_is_found_under_its_real_name():
    text = '[a]\nx = 1\n"say \\"hi\\"\\u00e9" = 2\n'
    assert tomllib.loads(text)["a"] == {"x": 1, 'say "hi"é': 2}
    assert KeyLines(text).line_of(("a", 'say "hi"é')) == 3


def test_a_multiline_string_closed_on_the_line_it_opens_does_not_hide_what_follows():
    text = "[a]\nx = '''one'''\ny = 2\n[b]\nz = \"\"\"\ny = 9\n[c]\n\"\"\"\nw = 1\n"
    found = KeyLines(text)
    assert (found.line_of(("a", "y")), found.line_of(("b", "w"))) == (3, 9)
    assert found.line_of(("c",)) is None  # inside a string, not a header


# ---- Doc: bounded reads, and any parser failure is the file's error -----------------


def test_arrays_nested_50000_deep_are_an_error_naming_the_file(tmp_path: Path):
    file = tmp_path / "pack.toml"
    file.write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError) as caught:
        Doc.read(file)
    assert caught.value.file == str(file) and "nested too deeply" in str(caught.value)


def test_any_exception_of_the_parser_is_an_error_naming_the_file(tmp_path, monkeypatch):
    def broken(text: str) -> dict[str, Any]:
        raise ValueError("a parser bug")

    monkeypatch.setattr(tomllib, "loads", broken)
    with pytest.raises(ConfigError, match=r"pack\.toml: cannot be read as TOML \(ValueError"):
        Doc(tmp_path / "pack.toml", "x = 1\n")


def test_a_file_larger_than_the_bound_is_refused_and_one_at_the_bound_is_read(tmp_path):
    file = tmp_path / "pack.toml"
    at_bound = "# " + "x" * (MAX_BYTES - 3) + "\n"
    file.write_text(at_bound)
    assert Doc.read(file).data == {}
    file.write_text(at_bound + "\n")
    with pytest.raises(ConfigError) as caught:
        Doc.read(file)
    assert str(caught.value) == f"{file}: is larger than 1 MiB: refused (no real one is this big)"
    with pytest.raises(ConfigErrors, match="larger than 1 MiB"):
        read_bounded(file)


def test_a_huge_file_is_read_no_further_than_the_bound(tmp_path):
    file = tmp_path / "agent.toml"
    with file.open("wb") as handle:
        handle.truncate(64 << 30)  # 64 GiB, sparse: read whole, it could not fit in memory
    with pytest.raises(ConfigErrors, match="larger than 1 MiB"):
        read_bounded(file)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "agent.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigErrors, match="not a regular file"):
        read_bounded(fifo)


def test_unreadable_and_not_utf8_files_name_the_file(tmp_path):
    with pytest.raises(ConfigErrors, match=r"missing\.toml.*cannot read"):
        read_bounded(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"x = '\xff'\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: cannot read: 'utf-8' codec"):
        Doc.read(bad)
