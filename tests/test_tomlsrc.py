"""The TOML key-line scanner: linear in the text, and right on every well-formed document."""

from __future__ import annotations

import json
import time
import tomllib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.tomlsrc import KeyLines

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
