"""A pattern drafted from a template: so a team goes from "seen N times" to a tested
pattern in minutes (issue 19).

The template's literal words stay literal (escaped); each `<*>` becomes a named
group for a word, each placeholder a named group of its shape; words are joined by
`\\s+` and the whole is anchored. The template's samples become its examples, so
`logmend test` proves the draft as it is written. A secret the redaction masked
(`[REDACTED]`) is a word group: the real lines hold the real value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import regex

from agent.drain import (
    DATE_WORDS,
    MAX_TOKENS,
    PLACEHOLDERS,
    WILDCARD,
    header_length,
    mask,
    tokens_of,
)
from agent.redact import MASK

CLIPPED = "…"  # the end of a text clipped for the wire (agent.unknown)

SHAPES = {
    "<UUID>": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "<TIME>": r"[\d:.,TZ+-]+",
    "<IP>": r"[0-9a-fA-F.:]+",
    "<HEX>": r"(?:0[xX])?[0-9a-fA-F]+",
    "<PATH>": r"(?:[A-Za-z]:)?/[^\s]*",
    # (no repeated group: the literal prefilter then still gates the draft by its words)
    "<NUM>": r"[vV]?[-+]?[\d.,:]*\d[a-zA-Z%]{0,3}",
}
_PIECES = re.compile("|".join(re.escape(p) for p in sorted(PLACEHOLDERS | {MASK}, key=len)))


def draft_regex(tokens: Sequence[str]) -> str:
    """The anchored regex of a template's tokens, a named group per variable part."""
    counts: dict[str, int] = {}

    def group(kind: str, shape: str) -> str:
        counts[kind] = counts.get(kind, 0) + 1
        return f"(?P<{kind}{counts[kind]}>{shape})"

    tokens = list(tokens)
    # a template of MAX_TOKENS tokens may have had more; one clipped for the wire ends
    # with a partial word: either way the draft takes whatever follows
    cut = len(tokens) >= MAX_TOKENS or bool(tokens and tokens[-1].endswith(CLIPPED))
    if tokens and tokens[-1].endswith(CLIPPED):
        tokens.pop()
    words = []
    for token in tokens:
        if token == WILDCARD:
            words.append(group("field", r"\S+"))
            continue
        core = token.strip("[](),")
        if core.lower() in DATE_WORDS:  # a month or a day: any other day is the same error
            head = token.index(core)
            words.append(
                re.escape(token[:head]) + r"[A-Za-z]{3,9}" + re.escape(token[head + len(core) :])
            )
            continue
        out, at = [], 0
        for piece in _PIECES.finditer(token):
            out.append(re.escape(token[at : piece.start()]))
            if piece.group() == MASK:
                out.append(group("secret", r"\S+?"))
            else:
                kind = piece.group().strip("<>").lower()
                out.append(group(kind, SHAPES[piece.group()]))
            at = piece.end()
        out.append(re.escape(token[at:]))
        words.append("".join(out))
    return "^\\s*" + r"\s+".join(words) + (r"(?:\s.*)?$" if cut else r"\s*$")


def draft_toml(tokens: Sequence[str], samples: Sequence[str], pattern_id: str) -> str:
    """A `[[pattern]]` block with its examples: paste it into a pack.toml.

    Its examples are the samples it matches; when it matches none (a template and
    samples redacted or clipped apart), it is drafted from the first sample alone, which
    its own draft matches, so `logmend test` accepts the block as printed."""
    source = draft_regex(tokens)
    examples = [s for s in samples if _matches(source, s)]
    if samples and not examples:
        tokens = tokens_of(mask(samples[0]))
        source = draft_regex(tokens)
        examples = [s for s in samples if _matches(source, s)] or list(samples[:1])
    literal = "'''" not in source and not _CONTROL.search(source)
    lines = [
        "[[pattern]]",
        f"id = {toml_string(pattern_id)}",
        f"match = '''{source}'''" if literal else f"match = {toml_string(source)}",
        'severity = "error"',
        "# drafted from the template: " + _CONTROL.sub("?", " ".join(tokens)),
        "",
    ]
    for sample in examples:
        lines += ["[[pattern.example]]", f"line = {toml_string(sample)}", ""]
    return "\n".join(lines)


def _matches(source: str, line: str) -> bool:
    try:
        return regex.search(source, line, timeout=1.0) is not None
    except (regex.error, TimeoutError):
        return False


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")


def toml_string(value: str) -> str:
    """A TOML basic string: quotes and backslashes escaped, control characters as
    \\uXXXX (TOML allows none raw), a lone surrogate (no Unicode scalar) as U+FFFD."""
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    out = _CONTROL.sub(
        lambda m: "\ufffd" if 0xD800 <= ord(m.group()) <= 0xDFFF else f"\\u{ord(m.group()):04X}",
        out,
    )
    return f'"{out}"'


_NAMED = re.compile(r"<[A-Z*]+>|\[REDACTED\]")  # placeholders: no part of a name


def pattern_id(tokens: Sequence[str], taken: set[str]) -> str:
    """A plain id from the template's first literal words past its header (a date or a
    host names no error), unique among `taken`."""
    tokens = list(tokens)
    message = tokens[header_length(tokens) :]
    words = [re.sub(r"[^a-z0-9]+", "-", _NAMED.sub(" ", t).lower()).strip("-") for t in message]
    base = "-".join(w for w in words if w and not w.isdigit())[:40]
    base = base.strip("-") or "unknown-error"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name
