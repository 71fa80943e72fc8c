"""The matcher gives exactly the answers of trying every pattern in turn with regex.search.

Checked on patterns generated from a grammar of the constructs packs use, on
the shipped packs, and on a corpus nobody on this project wrote: fail2ban's
filters (expanded by fail2ban itself) against fail2ban's own sample logs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.literals import requirement
from agent.match import Matcher, available_engines
from agent.packs import LazyRegex, Pattern, Template
from agent.packset import load_packs

ENGINES = available_engines()
ROOT = Path(__file__).resolve().parent.parent


def pattern(source: str, index: int = 0) -> Pattern:
    return Pattern(
        pack="t",
        id=f"p{index}",
        source=source,
        lazy=LazyRegex.checked(source),
        severity="error",
        key=Template("", ()),
        count=1,
        within=0.0,
        escalate="never",
        article=None,
        article_text="",
        remedy=None,
        examples=(),
    )


def plain(patterns: list[Pattern], line: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for p in patterns:
        found = p.regex.search(line)
        if found is not None:
            out.append((p.id, {k: v for k, v in found.groupdict().items() if v is not None}))
    return out


def assert_same(patterns: list[Pattern], lines: list[str]) -> int:
    """Both engines, per record and per block, against the plain loop; returns matches seen."""
    expected = [plain(patterns, line) for line in lines]
    block = "".join(line + "\n" for line in lines).encode()
    for engine in ENGINES:
        matcher = Matcher(patterns, timeout=5.0, engine=engine)
        got = [[(p.id, f) for p, f in matcher.match(line)] for line in lines]
        assert got == expected, engine
        by_line = {}
        offset = 0
        starts = []
        for line in lines:
            starts.append(offset)
            offset += len(line.encode()) + 1
        for start, text, hits in matcher.scan(block):
            by_line[starts.index(start)] = (text, [(p.id, f) for p, f in hits])
        for index, line in enumerate(lines):
            record = line.removesuffix("\r")  # in a block, a final CR is a CRLF line ending
            want = plain(patterns, record)
            if want:
                assert by_line.get(index) == (record, want), (engine, line)
            else:
                assert index not in by_line, (engine, line)
    return sum(map(len, expected))


# -- a grammar of the constructs packs use -------------------------------------------
WORDS = ["err", "disk", "Disk", "fail", "kis", "KİS", "ſk", "timed out", "user=", "(110)", "é"]
ATOMS = st.sampled_from(
    [
        r"\d+",
        r"\w+",
        r"\s",
        r"\S+",
        r".*",
        r".*?",
        r"[a-z]+",
        r"[^ ]+",
        r"[Ee]",
        r"\b",
        "^",
        "$",
        r"[0-9]{2,3}",
        r"\(",
        r"\)",
        r"\.",
        " ",
        "=",
        "k",
        "s",
        "i",
        "İ",
        "é",
    ]
)
LITERALS = st.sampled_from(WORDS).map(regex.escape)


@st.composite
def patterns_from_grammar(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    names = iter(["a", "b", "c"])
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.integers(0, 13 if depth < 2 else 2))
        if kind <= 1:
            parts.append(draw(LITERALS))
        elif kind == 2:
            parts.append(draw(ATOMS))
        elif kind == 3:
            name = next(names, None)
            parts.append(f"(?P<{name}>{draw(patterns_from_grammar(depth + 1))})" if name else "x")
        elif kind == 4:
            alts = draw(st.lists(patterns_from_grammar(depth + 1), min_size=2, max_size=3))
            parts.append("(?:" + "|".join(alts) + ")")
        elif kind == 5:
            parts.append(f"(?:{draw(patterns_from_grammar(depth + 1))})?")
        elif kind == 6:
            low = draw(st.integers(0, 2))
            parts.append(f"(?:{draw(LITERALS)}){{{low},{low + draw(st.integers(0, 2))}}}")
        elif kind == 7:
            parts.append(f"(?<={draw(LITERALS)})")
        elif kind == 8:
            parts.append(
                f"(?={draw(LITERALS)})" if draw(st.booleans()) else f"(?!{draw(LITERALS)})"
            )
        elif kind == 9:
            parts.append(f"(?i:{draw(patterns_from_grammar(depth + 1))})")
        elif kind == 10:
            parts.append(f"(?P<r>{draw(LITERALS)}) (?P=r)")
        elif kind == 11:
            parts.append(f"(?P<c>{draw(LITERALS)})?(?(c){draw(LITERALS)}|{draw(LITERALS)})")
        elif kind == 12:
            parts.append(f"(?>{draw(patterns_from_grammar(depth + 1))})")
        else:
            parts.append(f"(?:{draw(LITERALS)})++")
    source = "".join(parts)
    if depth == 0 and draw(st.booleans()):
        source = "(?i)" + source
    return source


def compiles(source: str) -> bool:
    try:
        regex.compile(source, regex.VERSION0)
        return True
    except (regex.error, RecursionError):
        return False


LINES = st.lists(
    st.sampled_from([*WORDS, " ", "x", "1", "23", "=", "\r", "K", "ı", "S", "I", "ss"]), max_size=14
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sources=st.lists(patterns_from_grammar(), min_size=1, max_size=6),
    lines=st.lists(LINES, min_size=1, max_size=12),
)
def test_generated_patterns_match_exactly_like_the_plain_loop(sources, lines):
    sources = [s for s in sources if compiles(s)]
    assume(sources)
    patterns = [pattern(s, i) for i, s in enumerate(sources)]
    # lines built from pattern literals, so matches are common, plus the random ones
    assert_same(patterns, lines + [" ".join(WORDS), "kis KİS ſk Disk err", "(110) timed out"])


@pytest.mark.parametrize(
    ("source", "line"),
    [
        (r"(?i)kiss", "KİSS"),  # U+0130 matches i caselessly
        (r"(?i)disk", "diſk"),  # U+017F matches s
        (r"(?i)kelvin", "\u212aelvin"),  # KELVIN SIGN matches k
        (r"(?i)Straße", "STRASSE"),  # simple folding: no match either way
        (r"[[:digit:]]+ fail", "12 fail"),  # a POSIX class the stdlib parser misreads
        (r"(?:timed out){e<=1}", "timed ou"),  # fuzzy matching
        (r"upstream\n", "upstream"),  # a newline no single line holds
        (r"a{2}b", "aab"),
        (r"(?x) disk \s full  # comment", "disk full"),
    ],
)
def test_tricky_cases(source, line):
    assert_same([pattern(source)], [line, line.upper(), line.lower(), "noise"])


def test_shipped_packs_on_their_own_examples():
    patterns = [p for pack in load_packs((ROOT / "patterns",)) for p in pack.patterns]
    lines = [e.line for p in patterns for e in p.examples]
    assert assert_same(patterns, lines) >= len([p for p in patterns])
    assert all(not requirement(p.source).always for p in patterns)  # every shipped one filters


FAIL2BAN = Path("/usr/lib/python3/dist-packages/fail2ban")
EXTRACT = """
import json, os
from fail2ban.client.filterreader import FilterReader
from fail2ban.server.failregex import Regex
out = []
for fn in sorted(os.listdir("/etc/fail2ban/filter.d")):
    if not fn.endswith(".conf"):
        continue
    name = fn[:-5]
    try:
        reader = FilterReader(name, name, {}, basedir="/etc/fail2ban")
        reader.read(); reader.getOptions({})
        commands = reader.convert()
    except Exception:
        continue
    for cmd in commands:
        if len(cmd) >= 4 and cmd[2] in ("addfailregex", "addignoreregex"):
            for reg in (cmd[3] if isinstance(cmd[3], list) else [cmd[3]]):
                try:
                    out.append(Regex(reg, multiline=False).getRegex())
                except Exception:
                    pass
print(json.dumps(out))
"""


@pytest.mark.skipif(
    not FAIL2BAN.is_dir() or not shutil.which("fail2ban-regex"),
    reason="Debian's fail2ban is not installed (the README's test command installs it)",
)
def test_fail2ban_filters_on_fail2ban_sample_logs():
    result = subprocess.run(
        ["/usr/bin/python3", "-c", EXTRACT], capture_output=True, text=True, timeout=120, check=True
    )
    sources = []
    for source in json.loads(result.stdout):
        # fail2ban anchors on the line after its date; unanchored copies match the raw lines too
        for variant in (source, source.lstrip("^")):
            if compiles(variant) and variant not in sources:
                sources.append(variant)
    assert len(sources) > 300
    lines = []
    for log in sorted((FAIL2BAN / "tests/files/logs").rglob("*")):
        if log.is_file():
            for line in log.read_bytes().decode("utf-8", "replace").splitlines():
                if line and not line.startswith("#"):
                    lines.append(line)
    assert len(lines) > 1000
    patterns = [pattern(s, i) for i, s in enumerate(sources)]
    filtered = sum(not requirement(s).always for s in sources)
    assert filtered > len(sources) // 2  # most real-world patterns get a prefilter
    assert assert_same(patterns, lines) > 500
