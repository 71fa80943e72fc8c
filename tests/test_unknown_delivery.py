"""Issue 19, item 3 on the host, on fake time: which templates the sender posts, what it
forgets once the receiver took them, what it keeps when the receiver did not, and how a
template a new pattern explains is told and then gone. A real Store, an httpx
MockTransport as the receiver (it answers from a plan, or drops the connection)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Escalation
from agent.escalate import Sender
from agent.match import Matcher
from agent.state import Store
from agent.unknown import MAX_WIRE_TEXT, Unknowns, wire_rows
from tests import test_match

URL = "https://receiver.test/v1/escalations"


class Central:
    """Keeps what a receiver would: per (owner, id), the last count; the explained."""

    def __init__(self) -> None:
        self.plan: list[Any] = []
        self.counts: dict[tuple[str, int], int] = {}
        self.known: dict[tuple[str, int], str] = {}
        self.posts: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/unknown"
        body = msgpack.unpackb(request.content)
        self.posts.append(body)
        if self.plan:
            answer = self.plan.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return httpx.Response(answer, json={"error": "token may not"})
        for row in body["templates"]:
            key = (row["owner"], row["id"])
            if "known" in row:
                self.known[key] = row["known"]
            else:
                self.counts[key] = row["count"]
        return httpx.Response(200, json={"stored": len(body["templates"])})


def templates(store: Store, owner: str, *rows: tuple[int, str, int]) -> None:
    """(id, template, count) rows of one owner, as the miner saves them."""
    store.save_unknown_templates(
        owner,
        [
            (owner, i, json.dumps(text.split()), n, 1.0, 2.0, json.dumps([text]))
            for i, text, n in rows
        ],
    )


@pytest.fixture
def rig(tmp_path: Path):
    store = Store(tmp_path / "state.db")
    central = Central()
    sender = Sender(
        store,
        Escalation(url=URL, token_file=None),
        {"host": "h1", "version": "t"},
        transport=httpx.MockTransport(central),
    )
    yield store, sender, central
    sender.client.close()
    store.close()


def test_only_what_changed_goes_and_a_teamless_template_goes_nowhere(rig):
    store, sender, central = rig
    templates(store, "team-web", (1, "ERROR a <NUM>", 3), (2, "ERROR b", 1))
    templates(store, "", (1, "ERROR nobody's", 9))
    assert sender.send_unknown() is True
    assert central.counts == {("team-web", 1): 3, ("team-web", 2): 1}
    assert sender.send_unknown() is True and len(central.posts) == 1  # nothing new: no post
    templates(store, "team-web", (1, "ERROR a <NUM>", 5), (2, "ERROR b", 1))
    assert sender.send_unknown() is True
    assert [r["id"] for r in central.posts[-1]["templates"]] == [1]  # only the one that grew
    assert central.counts[("team-web", 1)] == 5


@pytest.mark.parametrize("answer", [httpx.ConnectError("down"), 403, 500, 422])
def test_what_the_receiver_did_not_take_goes_again(rig, answer):
    store, sender, central = rig
    templates(store, "team-web", (1, "ERROR a", 3))
    central.plan = [answer]
    assert sender.send_unknown() is False
    assert central.counts == {}
    assert sender.send_unknown() is True
    assert central.counts == {("team-web", 1): 3}


def test_many_templates_go_in_batches(rig):
    store, sender, central = rig
    templates(store, "team-web", *((n, f"ERROR e{n}", n) for n in range(1, 451)))
    assert sender.send_unknown() is True
    assert [len(p["templates"]) for p in central.posts] == [200, 200, 50]
    assert len(central.counts) == 450


def test_an_explained_template_is_told_once_and_wins_over_a_late_acknowledgement(rig):
    store, sender, central = rig
    templates(store, "team-web", (1, "ERROR a", 3), (2, "ERROR b", 4))
    rows = store.unknown_unsent(10)  # the sender read them; then the reader retires one
    store.retire_unknown("team-web", [(1, "ops/a")])
    store.unknown_acked(rows)  # the late acknowledgement must not hide the explanation
    assert sender.send_unknown() is True
    assert central.known == {("team-web", 1): "ops/a"}
    assert central.counts == {}  # 2 was taken with the acknowledged post; 1 is explained
    posts = len(central.posts)
    assert sender.send_unknown() is True and len(central.posts) == posts  # told once
    assert [r[1] for r in store.unknown_templates()] == [2]


def test_evicted_templates_are_forgotten_by_the_host_only(rig):
    store, sender, central = rig
    templates(store, "team-web", (1, "ERROR a", 3), (2, "ERROR b", 4))
    assert sender.send_unknown() is True
    templates(store, "team-web", (2, "ERROR b", 4))  # 1 evicted by the cap
    assert sender.send_unknown() is True
    assert central.counts == {("team-web", 1): 3, ("team-web", 2): 4}  # nothing unsaid
    with store._tx() as db:  # the host's bookkeeping does not grow with evictions
        assert db.execute("SELECT count(*) FROM unknown_sent").fetchone()[0] == 1


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=3000), st.lists(st.text(max_size=2500), max_size=3))
def test_any_text_goes_as_what_a_receiver_stores(text, samples):
    row = {"owner": "t", "id": 1, "tokens": json.dumps(text.split() or ["x"]), "count": 1,
           "first_seen": 1.0, "last_seen": 1.0, "samples": json.dumps(samples), "known": ""}  # fmt: skip
    wired = wire_rows([row])[0]
    for value in (wired["template"], *wired["samples"]):
        value.encode("utf-8")  # no lone surrogate
        assert "\0" not in value and len(value) <= MAX_WIRE_TEXT
    msgpack.packb(wired)


def test_a_surrogate_escaped_byte_is_shown_not_an_error():
    row = {"owner": "t", "id": 1, "tokens": json.dumps(["bad\udcff", "byte"]), "count": 1,
           "first_seen": 1.0, "last_seen": 1.0, "samples": json.dumps(["a\0b"]), "known": ""}  # fmt: skip
    wired = wire_rows([row])[0]
    assert wired["template"] == "bad\\udcff byte" and wired["samples"] == ["a\ufffdb"]


def test_a_matcher_explains_without_counting(tmp_path):
    pattern = replace(test_match.pattern(r"^ERROR a (?P<n>\d+)$"), pack="ops", id="a")
    matcher = Matcher([pattern], timeout=1.0, engine="python")
    assert [p.id if p else None for p in matcher.explains(["ERROR a 1", "ERROR b"])] == ["a", None]
    assert [s.matches + s.confirms for s in matcher.stats] == [0]


def test_retired_templates_leave_the_miner(tmp_path):
    store = Store(tmp_path / "state.db")
    try:
        miner = Unknowns(store, lambda s: s)
        drain = miner._drain("team-web")
        drain.add("ERROR a 1", 1.0)
        drain.add("ERROR something else entirely", 1.0)
        miner._dirty.add("team-web")
        miner.save()
        pattern = replace(test_match.pattern(r"^ERROR a (?P<n>\d+)$"), pack="ops", id="a")
        miner._retire("team-web", [Matcher([pattern], timeout=1.0, engine="python")])
        assert [t.text for t in drain.templates.values()] == ["ERROR something else entirely"]
        assert [r[1] for r in store.unknown_templates()] == [2]
        assert [(r["id"], r["known"]) for r in store.unknown_unsent(10) if r["known"]] == [
            (1, "ops/a")
        ]
    finally:
        store.close()


def test_a_receiver_older_than_the_agent_is_said_once(rig, caplog):
    store, sender, central = rig
    templates(store, "team-web", (1, "ERROR a", 3))
    central.plan = [404, 404, 404]
    with caplog.at_level("DEBUG", logger="logmend.escalate"):
        for _ in range(3):
            assert sender.send_unknown() is False
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "older than this agent" in warned[0].getMessage()
    assert sender.send_unknown() is True  # an upgraded receiver takes what was kept
    assert central.counts == {("team-web", 1): 3}
