"""Grouping log lines into templates online: Drain (He et al., ICWS 2017), with masking.

A line is masked first (UUIDs, IPs, hex, paths, numbers become `<UUID>`, `<IP>` ...),
then split into tokens. Lines of the same length whose first tokens agree meet in
one leaf of a fixed-depth tree; there a line joins the most similar template (the
share of tokens equal, a `<*>` agreeing with anything) if it is similar enough,
and the tokens that differ become `<*>`; else it starts a template of its own.
Templates are bounded: past `max_templates` the least recently seen is evicted
(and counted), so memory is bounded whatever the log says.

Written here rather than taken from drain3: drain3 0.9.11 pins jsonpickle 1.5.1 and
cachetools 4.2.1 (2021), and importing its package imports jsonpickle, a
deserializer that builds arbitrary objects, into a process that may run as root.
The algorithm is 150 lines; its state here is plain data (agent.discover keeps it).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

WILDCARD = "<*>"
MAX_TOKENS = 64  # a longer line is grouped by its first tokens only
MAX_SHAPE = 512  # characters of a line whose shape is remembered
MAX_SHAPES = 2048  # shapes remembered (at most 1 MiB)
_SHAPE = bytes.maketrans(b"23456789", b"11111111")  # on bytes: ten times str's translate
_DIGIT = re.compile(r"\d")
_MASKS = [
    ("<UUID>", r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
    (
        "<TIME>",
        r"\b\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:Z|[+-]\d\d:?\d\d)?)?\b"
        r"|\b\d\d:\d\d:\d\d(?:[.,]\d+)?\b",
    ),
    ("<IP>", r"(?<![\w.:])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.])"),
    ("<IP>", r"(?<![\w:])(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{1,4}(?![\w:])"),
    (
        "<HEX>",
        r"\b0[xX][0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b",
    ),
    ("<PATH>", r"(?<![\w<])(?:[A-Za-z]:)?(?:/[\w.\-@+~%]+){2,}/?"),
    ("<NUM>", r"(?<![\w<.])[vV]?[-+]?\d+(?:[.,:]\d+)*(?:[a-zA-Z%]{1,3})?(?![\w>])"),
]
PLACEHOLDERS = frozenset(name for name, _ in _MASKS)
_MAYBE_VARIABLE = re.compile(r"[\d/:]")  # every placeholder's text holds one of these
# a cheap test per mask of whether it could match in a word at all: most regexes then
# never run (a word's masks cost a few substring tests, not seven searches)
_MAY: dict[str, Callable[[str], bool]] = {
    "<UUID>": lambda w: w.count("-") >= 4,
    "<TIME>": lambda w: ":" in w or w.count("-") >= 2,
    "<IP>": lambda w: w.count(".") >= 3 or w.count(":") >= 2,
    "<HEX>": lambda w: len(w) >= 8 or "0x" in w or "0X" in w,
    "<PATH>": lambda w: "/" in w,
    "<NUM>": lambda w: True,  # the word holds a digit or it would not be masked at all
}
_COMPILED = [(name, re.compile(regex), _MAY[name]) for name, regex in _MASKS]


_WRAPPING = "()[]{},;'\"="  # around a number: kept, the number masked


def _mask_word(word: str) -> str:
    core = word.strip(_WRAPPING)
    if core.isdigit() and core.isascii():  # the commonest variable word: a plain number
        head = word.index(core)
        return f"{word[:head]}<NUM>{word[head + len(core) :]}"
    for name, regex, may in _COMPILED:
        if may(word):
            word = regex.sub(name, word)
    return word


def mask(line: str) -> str:
    """The line's words, their variable parts replaced by placeholders (idempotent); the
    masks run only on words that could hold one, which most words cannot."""
    return " ".join(
        _mask_word(word) if _MAYBE_VARIABLE.search(word) else word for word in line.split()
    )


def tokens_of(masked: str) -> list[str]:
    return masked.split()[:MAX_TOKENS]


DATE_WORDS = frozenset({
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    "mon", "tue", "wed", "thu", "fri", "sat", "sun",
})  # fmt: skip
LEVEL_WORDS = frozenset({
    "trace", "debug", "info", "notice", "warn", "warning", "err", "error", "crit",
    "critical", "fatal", "severe", "alert", "emerg", "panic", "v", "d", "i", "w", "e", "f",
})  # fmt: skip
MAX_HEADER = 8  # tokens a header may take; the message keeps at least one
_PUNCTUATION = str.maketrans("", "", "[](){}<>|,;:.-_/=+*#")
_PROGRAM = re.compile(r"[\w$.()/@-]*(?:\[<NUM>\]|[\w$]\.[A-Za-z_$][\w$]*):")
_PLACEHOLDER_NAMES = tuple(name.strip("<>") for name in PLACEHOLDERS)


_HEADER_WORDS: dict[str, bool] = {}  # a memo: a log's header words repeat line after line
_HEADER_MEMO = 4096


def _header_word(token: str) -> bool:
    """Whether a token is what log headers are made of: placeholders and punctuation
    only (a time, a pid, "-"), a month or day name, or a level word."""
    known = _HEADER_WORDS.get(token)
    if known is None:
        known = _is_header_word(token)
        if len(_HEADER_WORDS) < _HEADER_MEMO and len(token) <= 64:
            _HEADER_WORDS[token] = known
    return known


def _is_header_word(token: str) -> bool:
    bare = token
    for name in _PLACEHOLDER_NAMES:
        bare = bare.replace(name, "")
    bare = bare.translate(_PUNCTUATION).lower()
    return not bare or bare in DATE_WORDS or bare in LEVEL_WORDS


def header_length(tokens: list[str]) -> int:
    """How many leading tokens are the line's header (time, pid, level ...): they are
    kept in the template but neither route the line nor count toward its similarity,
    so two messages are not one template because their headers agree, nor one
    message two because it was logged on two days."""
    most = min(MAX_HEADER, len(tokens) - 1)
    n = gaps = 0
    for at in range(most):  # a host may sit between a header's parts, once it has begun
        if _header_word(tokens[at]):
            n = at + 1
        elif at < 2 or gaps == 2:
            break
        else:
            gaps += 1
    # then a host or a thread before the program or logger ("host sshd[42]:", "[main]
    # a.b.C:"), which is part of the message: what logged it tells errors apart
    for at in range(n, min(n + 3, len(tokens) - 1)):
        if tokens[at][-1] == ":" and _PROGRAM.fullmatch(tokens[at]):
            return at
    return n


@dataclass
class Template:
    id: int
    tokens: list[str]
    count: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    samples: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def similarity(self, tokens: list[str], head: int = 0) -> tuple[float, int]:
        """(share of equal tokens past the line's `head` header tokens, how many of the
        template's are wildcards)."""
        same = wild = 0
        for mine, theirs in zip(self.tokens[head:], tokens[head:], strict=True):
            if mine == WILDCARD:
                wild += 1
                same += 1
            elif mine == theirs:
                same += 1
        return same / max(1, len(tokens) - head), wild

    def merge(self, tokens: list[str]) -> bool:
        """Generalise to cover `tokens`; whether the template changed."""
        changed = False
        for n, (mine, theirs) in enumerate(zip(self.tokens, tokens, strict=True)):
            if mine not in (theirs, WILDCARD):
                self.tokens[n] = WILDCARD
                changed = True
        return changed


class Drain:
    """The online grouping. `add` is called only for lines worth grouping (the caller
    chooses: unmatched error lines), so its cost is paid on those alone."""

    def __init__(
        self,
        depth: int = 4,
        similarity: float = 0.4,
        max_children: int = 100,
        max_templates: int = 1000,
        max_samples: int = 3,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        if depth < 3:
            raise ValueError("depth is at least 3 (the root, the length, one token)")
        self.prefix = depth - 2  # tokens that route a line to its leaf
        self.similarity = similarity
        self.max_children = max_children
        self.max_templates = max_templates
        self.max_samples = max_samples
        self.redact = redact  # applied to the lines kept as samples (templates: the caller)
        self.templates: OrderedDict[int, Template] = OrderedDict()  # least recent first
        self.evicted = 0
        self.lines = 0  # grouped by this process (a template's count survives restarts)
        self._tree: dict[int, dict[str, object]] = {}
        self._next_id = 1
        self._shapes: dict[bytes, int] = {}  # a line's shape -> the template it fits as is

    def add(self, line: str, now: float = 0.0) -> Template:
        """Group `line`: its template, new or generalised.

        A line whose shape (its text with each digit 1-9 read as 1) was grouped before
        into a template that keeps no digit goes there at once: it masks to the same
        tokens but where the template has `<*>`, so it fits as it is, without masking
        or a search (the masks tell digits apart only in `0x`, which the shape keeps).
        """
        shape = (
            line.encode("utf-8", "surrogatepass").translate(_SHAPE)
            if len(line) <= MAX_SHAPE
            else None
        )
        if shape is not None:
            known = self._shapes.get(shape)
            if known is not None and known in self.templates:
                return self._seen(self.templates[known], line, now)
        tokens = tokens_of(mask(line))
        head = header_length(tokens)
        leaf = self._leaf(tokens, head)
        best: Template | None = None
        best_key = (-1.0, -1)
        for template_id in leaf:
            template = self.templates.get(template_id)
            if template is None:
                continue
            share, wild = template.similarity(tokens, head)
            if (share, wild) > best_key:
                best, best_key = template, (share, wild)
        if best is None or best_key[0] < self.similarity:
            best = self._new(tokens, leaf, now)
        else:
            best.merge(tokens)
            self.templates.move_to_end(best.id)
        if shape is not None and not _DIGIT.search(best.text):
            if len(self._shapes) >= MAX_SHAPES:
                self._shapes.clear()  # bounded; the shapes in use come back at once
            self._shapes[shape] = best.id
        return self._seen(best, line, now)

    def _seen(self, template: Template, line: str, now: float) -> Template:
        self.lines += 1
        self.templates.move_to_end(template.id)
        template.count += 1
        template.last_seen = now
        if len(template.samples) < self.max_samples:
            template.samples.append(self.redact(line) if self.redact is not None else line)
        return template

    def _new(self, tokens: list[str], leaf: list[int], now: float) -> Template:
        while len(self.templates) >= self.max_templates:
            self.templates.popitem(last=False)  # the least recently seen; its leaf entry lapses
            self.evicted += 1
        template = Template(self._next_id, list(tokens), first_seen=now)
        self._next_id += 1
        self.templates[template.id] = template
        leaf[:] = [t for t in leaf if t in self.templates]  # drop the evicted
        leaf.append(template.id)
        return template

    def _leaf(self, tokens: list[str], head: int) -> list[int]:
        """The leaf for a line of this length and these first tokens past its header
        (made if new): a token with a digit, or one past `max_children` at its node,
        routes as `<*>`."""
        node: dict[str, object] = self._tree.setdefault(len(tokens), {})
        for token in tokens[head : head + self.prefix]:
            variable = "<" in token or _DIGIT.search(token) is not None  # masked or not
            key = WILDCARD if variable else token
            if key not in node and len(node) >= self.max_children:
                key = WILDCARD
            child = node.setdefault(key, {})
            assert isinstance(child, dict)
            node = child
        leaf = node.setdefault("", [])
        assert isinstance(leaf, list)
        return leaf

    def restore(self, template: Template) -> None:
        """Put back a template kept from an earlier run (agent.discover's state)."""
        self._next_id = max(self._next_id, template.id + 1)
        self.templates[template.id] = template
        leaf = self._leaf(template.tokens, header_length(template.tokens))
        if template.id not in leaf:
            leaf.append(template.id)

    def remove(self, template_id: int) -> Template | None:
        """Forget a template (a pattern now explains it); its leaf entry lapses."""
        return self.templates.pop(template_id, None)
