"""Review of 854a5a0 (issue 19, item 3) at the receiver, on both engines: counts and
trends that must be neither doubled nor lost, rows and tables that must stay bounded,
pages that must stay small."""

from __future__ import annotations

import time

import httpx
import pytest

from agent.receiver import unknown as central
from agent.receiver.store import ReceiverStore
from agent.receiver.storebase import PAGE_BYTES
from tests.test_unknown_central import WORKER, listing, one, post, template, tokens

pytestmark = pytest.mark.usefixtures("engine")  # on SQLite and on PostgreSQL


def test_a_late_older_post_counts_nothing_twice(receiver):
    """Two posts of one host's template overtake each other (a post whose answer timed
    out at the agent is still queued behind the write lock when the next one, with a
    higher cumulative count, lands). Same first_seen, a lower count: that is old news,
    not a reset (a reset starts a new template, a new first_seen). It is counted again
    as if the host had reset, and the row's count goes back."""
    t = tokens(receiver)
    now = time.time()
    assert (
        post(receiver, t["agent"], "web-1", [template(1, count=8, last_seen=now)]).status_code
        == 200
    )
    late = template(1, count=5, last_seen=now - 60)  # sent before the 8, arrives after
    assert post(receiver, t["agent"], "web-1", [late]).status_code == 200
    assert (
        post(receiver, t["agent"], "web-1", [template(1, count=10, last_seen=now + 1)]).status_code
        == 200
    )
    [u] = listing(receiver, t["read-web"])
    assert (u["count"], sum(u["days"])) == (10, 10), u  # 10 lines: not 18


def test_a_template_that_generalises_keeps_its_trend_with_it(receiver):
    """A host's template generalises between posts (Drain turns a word into <*>): its
    text, so its ref, changes. The growth it had is left on the old ref: the new entry's
    trend misses it, and the old entry (still held by another host) shows more new lines
    this week than it has lines at all."""
    t = tokens(receiver)
    exact = "ERROR disk sda failed"
    assert post(receiver, t["agent"], "web-1", [template(1, exact, count=5)]).status_code == 200
    assert post(receiver, t["agent"], "web-2", [template(1, exact, count=2)]).status_code == 200
    wider = template(1, "ERROR disk <*> failed", count=8)
    assert post(receiver, t["agent"], "web-1", [wider]).status_code == 200
    seen = {u["template"]: (u["count"], sum(u["days"])) for u in listing(receiver, t["read-web"])}
    assert seen == {"ERROR disk <*> failed": (8, 8), exact: (2, 2)}, seen


def test_a_reset_host_that_ships_the_pattern_leaves_nothing_unknown(receiver):
    """The host's state is reset (or its template was evicted and came back): the same
    text now has another id there. The host's old row for the text is never told
    `known` (the agent no longer has it), so once the pattern ships the template stays
    on the team's list for ever; meanwhile one host is shown as two."""
    t = tokens(receiver)
    old = template(7, count=5, first_seen=time.time() - 7200)
    assert post(receiver, t["agent"], "web-1", [old]).status_code == 200
    fresh = template(1, count=2, first_seen=time.time() - 10)  # after the reset: id 1
    assert post(receiver, t["agent"], "web-1", [fresh]).status_code == 200
    [u] = listing(receiver, t["read-web"])
    detail = one(receiver, t["read-web"], u["ref"]).json()
    assert (u["hosts"], detail["hosts"]) == (1, 1), detail["where"]  # one host: web-1
    known = {"owner": "team-web", "id": 1, "known": "web/worker-crashed"}
    assert post(receiver, t["agent"], "web-1", [known]).status_code == 200
    assert listing(receiver, t["read-web"]) == []  # web-1 says a pattern explains it


def test_the_daily_growth_of_a_team_is_bounded_like_its_rows(receiver, monkeypatch):
    """unknown is bounded per host and per team; unknown_days gets a row per (ref, day)
    for every text ever posted, and nothing bounds it but the 35-day prune: one token
    whose templates' texts change (a hostile agent, or templates generalising) grows it
    by 1,000 rows a post."""
    t = tokens(receiver)
    monkeypatch.setattr(central, "MAX_PER_HOST", 5)
    monkeypatch.setattr(central, "MAX_PER_OWNER", 8)
    store = ReceiverStore(receiver.db)
    try:
        who = store.authenticate(t["agent"])
        assert who is not None
        for round_ in range(10):
            rows = [template(n, f"E{round_} n{n} x", count=round_ + 1) for n in range(1, 6)]
            store.store_unknown(who, "web-1", rows)
        with store._engine.read() as db:
            held = db.execute(
                "SELECT count(*) AS n FROM unknown_days WHERE owner = ?", ("team-web",)
            ).fetchone()["n"]
        assert held <= 8, f"{held} rows of today's growth for a team that keeps 8 rows"
    finally:
        store.close()


@pytest.mark.engines("postgresql")
def test_huge_counts_add_up_without_a_500(receiver):
    """unknown_days.count is a BIGINT on PostgreSQL: the growth of a day is added up
    without bound (each reset adds the whole count again), and past 2**63 every post of
    that template on that day is a 500 (numeric value out of range)."""
    t = tokens(receiver)
    for n, first in enumerate((time.time() - 7200, time.time() - 3600)):  # a reset between
        rows = [template(i, count=2**53, first_seen=first) for i in range(1, 1001)]
        answer = post(receiver, t["agent"], "web-1", rows)
        assert answer.status_code == 200, (n, answer.text)
    assert listing(receiver, t["read-web"])[0]["count"] >= 2**53


def test_a_listing_page_is_bounded_in_bytes(receiver):
    """Other listings stop at PAGE_BYTES; GET /v1/unknown?limit=1000 answers up to 1,000
    templates of 4,096 characters with a sample of 4,096 (and reads every row's ten
    samples to show one): tens of MB in one answer from one team's rows."""
    t = tokens(receiver)
    store = ReceiverStore(receiver.db)
    try:
        who = store.authenticate(t["agent"])
        assert who is not None
        wide = "\U0001f600" * 4000  # 16,000 bytes as UTF-8
        for start in range(1, 301, 50):
            rows = [template(n, f"{n} {wide}", samples=[wide]) for n in range(start, start + 50)]
            store.store_unknown(who, "web-1", rows)
    finally:
        store.close()
    answer = httpx.get(
        f"{receiver.url}/v1/unknown",
        params={"limit": "1000"},
        headers={"Authorization": f"Bearer {t['read-web']}"},
        timeout=60,
    )
    assert answer.status_code == 200
    assert len(answer.content) <= 2 * PAGE_BYTES, len(answer.content)


def test_the_detail_of_a_template_on_many_hosts_agrees_with_the_listing(receiver):
    """unknown_one reads at most 1,000 rows (LIMIT 1000) and adds those up: a template on
    more hosts (a big fleet's common error) shows fewer hosts and fewer lines on its
    page than in the listing it was opened from."""
    t = tokens(receiver)
    store = ReceiverStore(receiver.db)
    try:
        who = store.authenticate(t["agent"])
        assert who is not None
        now = time.time()
        args = [
            ("team-web", f"web-{n}", 1, central.unknown_ref("team-web", WORKER), WORKER, 2,
             now - 60, now, '["ERROR worker 1 crashed: exit 1"]', "ERROR worker 1 crashed: exit 1", "", "hosts", now)
            for n in range(1005)
        ]  # fmt: skip
        store._engine.write(
            lambda db: db.executemany(
                "INSERT INTO unknown VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", args
            )
        )
    finally:
        store.close()
    [u] = listing(receiver, t["read-web"])
    assert (u["hosts"], u["count"]) == (1005, 2010)
    detail = one(receiver, t["read-web"], u["ref"]).json()
    assert (detail["hosts"], detail["count"]) == (1005, 2010)
