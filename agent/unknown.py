"""Errors no pack knows yet, on the host: each source's unmatched error lines, grouped
per owner into templates (agent.drain), kept in the state file across restarts.

Per block, the reader hands over the block and the offsets of the lines a pattern
matched; the error-word gate (agent.discover) finds the candidate lines in one
search of the block, and only those that no pattern matched are decoded, redacted
and grouped. A block with no error word costs that search and nothing else. A
source's owner is its `owner`, else the one owner of the packs it reads; a source
whose packs have several owners and no `owner` keeps its templates under "" (shown
by `status`, reported to no team).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from agent.config import Config
from agent.derived import Memo
from agent.discover import ERROR_WORDS, ErrorGate
from agent.drain import Drain, Template
from agent.errors import StateError
from agent.match import Matcher
from agent.packs import Pack
from agent.records import decode_line
from agent.redact import MASK
from agent.state import Store

log = logging.getLogger("logmend")

MAX_TEMPLATES = 1000  # per owner


class Unknowns:
    """The host's miner: fed by the reader, saved with the pattern statistics."""

    def __init__(
        self,
        store: Store,
        redact: Callable[[str], str],
        max_templates: int = MAX_TEMPLATES,
        memo: Memo | None = None,
    ) -> None:
        self.store = store
        self.memo = memo
        self.redact = redact
        self.max_templates = max_templates
        self.drains: dict[str, Drain] = {}
        self._dirty: set[str] = set()
        self._gates: dict[int, tuple[ErrorGate, str]] = {}  # source index -> (gate, owner)
        self._restore()

    def configure(
        self, config: Config, packs: Sequence[Pack], matchers: Sequence[Matcher] = ()
    ) -> None:
        """Which sources are mined, with which words, for whom (at start and reload); and
        the templates a pattern of the new packs now explains are retired."""
        gates: dict[tuple[str, ...], ErrorGate] = {}
        self._gates = {}
        explainers: dict[str, dict[int, Matcher]] = {}
        for index, source in enumerate(config.sources):
            if not source.discover:
                continue
            words = source.error_words or ERROR_WORDS
            if tuple(words) not in gates:
                gates[tuple(words)] = ErrorGate(words, self.memo)
            gate = gates[tuple(words)]
            owner = owner_of(source.owner, source.packs, packs)
            self._gates[index] = (gate, owner)
            if index < len(matchers):
                explainers.setdefault(owner, {})[id(matchers[index])] = matchers[index]
        for owner, mine in explainers.items():
            self._retire(owner, list(mine.values()))

    def _retire(self, owner: str, matchers: list[Matcher]) -> None:
        """Drop the owner's templates whose samples a pattern now matches on every source
        mined for the owner (a pattern one source loads leaves another's lines unknown).
        A redacted secret is tried as the word `x` too: a pattern is written for the real
        lines, whose secret a `\\w+` matches and `[REDACTED]` does not."""
        drain = self.drains.get(owner)
        if drain is None or not drain.templates:
            return
        templates = list(drain.templates.values())
        texts: list[str] = []
        spans: list[tuple[int, int]] = []  # each template's texts, in one call per matcher
        for template in templates:
            start = len(texts)
            texts += template.samples
            texts += [s.replace(MASK, "x") for s in template.samples if MASK in s]
            spans.append((start, len(texts)))
        answers = [m.explains(texts) for m in matchers]
        explained: list[tuple[int, str]] = []
        for template, (start, end) in zip(templates, spans, strict=True):
            found = [next((p for p in a[start:end] if p), None) for a in answers]
            first = found[0] if found and all(found) else None
            if first is not None:
                explained.append((template.id, f"{first.pack}/{first.id}"))
        if not explained:
            return
        try:
            self.store.retire_unknown(owner, explained)
        except StateError as exc:
            log.error("cannot retire the unknown errors a pattern now explains: %s", exc)
            return
        for template_id, known in explained:
            drain.remove(template_id)
            log.info("unknown error template %d of %r is now explained by %s",
                     template_id, owner, known)  # fmt: skip

    def mines(self, source: int) -> bool:
        return source in self._gates

    def feed(self, source: int, block: bytes, matched: set[int], now: float, max_line: int) -> None:
        """The unmatched error lines of a block (`matched`: the offsets of matched lines)."""
        chosen = self._gates.get(source)
        if chosen is None:
            return
        gate, owner = chosen
        starts = gate.lines(block)
        if not starts:
            return
        drain = self._drain(owner)
        for start in starts:
            if start in matched:
                continue
            end = block.find(b"\n", start)
            drain.add(decode_line(block, start, end if end >= 0 else len(block), max_line), now)
            self._dirty.add(owner)

    def feed_record(self, source: int, record: str, now: float) -> None:
        """An unmatched record of a multiline source (a whole event)."""
        chosen = self._gates.get(source)
        if chosen is None:
            return
        gate, owner = chosen
        if gate.lines(record.encode("utf-8", "surrogatepass").replace(b"\n", b" ")):
            self._drain(owner).add(record.replace("\n", " "), now)
            self._dirty.add(owner)

    def _drain(self, owner: str) -> Drain:
        drain = self.drains.get(owner)
        if drain is None:
            drain = self.drains[owner] = Drain(max_templates=self.max_templates, redact=self.redact)
        return drain

    def save(self) -> None:
        """Each changed owner's templates into the state file (kept for the next try)."""
        for owner in sorted(self._dirty):
            rows = [  # a template is redacted as it is kept: once per save, not per line
                (owner, t.id, json.dumps(self.redact(t.text).split()), t.count, t.first_seen,
                 t.last_seen, json.dumps(t.samples))
                for t in self.drains[owner].templates.values()
            ]  # fmt: skip
            try:
                self.store.save_unknown_templates(owner, rows)
            except StateError as exc:
                log.error("cannot save the unknown errors' templates (kept): %s", exc)
                return
            self._dirty.discard(owner)

    def _restore(self) -> None:
        try:
            rows = self.store.unknown_templates()
        except StateError as exc:
            log.error("cannot read the unknown errors' templates: %s", exc)
            return
        for owner, template_id, tokens, count, first, last, samples in rows:
            try:
                template = Template(
                    int(template_id), [str(t) for t in json.loads(tokens)], int(count),
                    float(first), float(last), [str(s) for s in json.loads(samples)],
                )  # fmt: skip
            except (ValueError, TypeError):
                continue  # a row this version cannot read: its template starts again
            self._drain(str(owner)).restore(template)

    def sizes(self) -> list[tuple[str, int, int]]:
        """(owner, templates, lines grouped) of each owner: the metrics (any thread)."""
        return [
            (owner, len(drain.templates), drain.lines)
            for owner, drain in sorted(dict(self.drains).items())
        ]

    def top(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most frequent templates of every owner (for `status` and the metrics)."""
        ranked = sorted(
            ((owner, t) for owner, drain in self.drains.items() for t in drain.templates.values()),
            key=lambda pair: (-pair[1].count, pair[0], pair[1].text),
        )
        return [
            {"owner": owner, "template": self.redact(t.text), "count": t.count,
             "last_seen": t.last_seen,
             "samples": t.samples}
            for owner, t in ranked[:limit]
        ]  # fmt: skip


MAX_WIRE_TEXT = 2000  # characters of a template or sample as reported


def _wire_text(value: str) -> str:
    """Text a receiver can store: no lone surrogate, no NUL, clipped."""
    value = value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\0", "\ufffd")
    return value if len(value) <= MAX_WIRE_TEXT else value[: MAX_WIRE_TEXT - 1] + "…"


def wire_rows(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """State rows (Store.unknown_unsent) as POST /v1/unknown's templates."""
    out: list[dict[str, Any]] = []
    for r in rows:
        if r["known"]:
            out.append({"owner": r["owner"], "id": r["id"], "known": r["known"]})
            continue
        out.append({
            "owner": r["owner"], "id": r["id"],
            "template": _wire_text(" ".join(json.loads(r["tokens"]))),
            "count": r["count"], "first_seen": r["first_seen"], "last_seen": r["last_seen"],
            "samples": [_wire_text(x) for x in json.loads(r["samples"])],
        })  # fmt: skip
    return out


def owner_of(declared: str, names: tuple[str, ...] | None, packs: Sequence[Pack]) -> str:
    """A source's owner: declared, else the one owner of the packs it reads, else ""."""
    if declared:
        return declared
    owners = {p.owner for p in packs if names is None or p.name in names}
    return owners.pop() if len(owners) == 1 else ""
