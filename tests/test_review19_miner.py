"""Review of 854a5a0 (issue 19, item 3) on the host: the miner retires a template when
(and only when) a loaded pattern explains the lines it stands for."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from agent.match import Matcher
from agent.redact import Redactor
from agent.state import Store
from agent.unknown import Unknowns
from tests import test_match


def pattern(source: str, pack: str, ident: str):
    return replace(test_match.pattern(source), pack=pack, id=ident)


def test_a_pattern_that_matches_the_real_lines_retires_their_template(tmp_path):
    """The samples _retire tests are the redacted lines; a pattern written for the real
    lines (a value group of \\w+, a token's prefix) matches every real line yet none of
    the samples: the template is never retired, and stays on the team's list for ever
    although no such line is unknown any more."""
    store = Store(tmp_path / "state.db")
    try:
        miner = Unknowns(store, Redactor())
        line = "ERROR login rejected password=hunter2"
        miner._drain("team-web").add(line, 1.0)
        miner._dirty.add("team-web")
        miner.save()
        matcher = Matcher(
            [pattern(r"^ERROR login rejected password=(?P<pw>\w+)$", "ops", "login")],
            timeout=1.0, engine="python",
        )  # fmt: skip
        assert matcher.explains([line])[0] is not None  # every such line is now matched
        miner._retire("team-web", [matcher])
        assert [t.text for t in miner.drains["team-web"].templates.values()] == []
    finally:
        store.close()


def test_a_pattern_only_another_source_loads_does_not_retire_the_template(tmp_path):
    """Two sources of one team, each with its own packs; the miner's templates are kept
    per owner, and a reload retires one when the matcher of *any* of the owner's sources
    explains it. The source that makes the lines does not load that pattern: its lines
    stay unmatched, the template comes back under a new id with its count from zero, and
    every reload tells the receiver it is explained again (the team's list flaps)."""
    store = Store(tmp_path / "state.db")
    try:
        miner = Unknowns(store, lambda s: s)
        sources = [
            SimpleNamespace(discover=True, error_words=None, owner="team-web", packs=("a",)),
            SimpleNamespace(discover=True, error_words=None, owner="team-web", packs=("b",)),
        ]
        config = SimpleNamespace(sources=sources)
        only_a = Matcher([pattern(r"^ERROR a thing$", "a", "thing")], timeout=1.0, engine="python")
        only_b = Matcher([pattern(r"^ERROR b \w+ (?P<n>\d+)$", "b", "b")], timeout=1.0, engine="python")  # fmt: skip
        miner.configure(config, [], [only_a, only_b])
        assert miner.mines(0) and miner.mines(1)
        block = b"ERROR b widget 1\n"  # on source 0, whose packs (a) do not match it
        miner.feed(0, block, set(), 1.0, 4096)
        miner.save()
        miner.configure(config, [], [only_a, only_b])  # a reload, nothing changed
        miner.feed(0, b"ERROR b widget 2\n", set(), 2.0, 4096)
        drain = miner.drains["team-web"]
        assert [(t.id, t.count) for t in drain.templates.values()] == [(1, 2)]
        assert [r["known"] for r in store.unknown_unsent(10) if r["known"]] == []
    finally:
        store.close()
