"""Issue 19, item 3 at the receiver: hosts post their templates of errors no pack knows
yet; each team reads its own, ranked, with trend, and drafts a pattern from one. The
real receiver on loopback, on SQLite and PostgreSQL; other teams' tokens, replays and
hostile values as the attacker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
import msgpack
import pytest

from agent.receiver import unknown as central
from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore
from tests.helpers import Receiver, write_pack

pytestmark = pytest.mark.usefixtures("engine")  # on SQLite and on PostgreSQL

WORKER = "ERROR worker <NUM> crashed: exit <NUM>"
FIRST = time.time() - 3600  # a template's first sighting on its host: its identity there


def tokens(receiver: Receiver) -> dict[str, str]:
    store = ReceiverStore(receiver.db)
    try:
        return {
            "agent": store.create_token(Scope.INGEST, "hosts", ("*",), ("*",)),
            "agent-web": store.create_token(Scope.INGEST, "web-hosts", ("team-web",), ("web-*",)),
            "read-web": store.create_token(Scope.READ, "web", ("team-web",)),
            "read-cache": store.create_token(Scope.READ, "cache", ("team-cache",)),
        }
    finally:
        store.close()


def template(n: int = 1, text: str = WORKER, count: int = 5, **over: Any) -> dict[str, Any]:
    now = time.time()
    row = {
        "owner": "team-web", "id": n, "template": text, "count": count,
        "first_seen": FIRST, "last_seen": now,
        "samples": [f"ERROR worker {n} crashed: exit 1"],
    }  # fmt: skip
    row.update(over)
    return row


def post(receiver: Receiver, token: str, host: str, rows: list[Any], raw: Any = None):
    body = raw if raw is not None else {"host": host, "at": time.time(), "templates": rows}
    return httpx.post(
        f"{receiver.url}/v1/unknown",
        content=msgpack.packb(body, use_bin_type=True),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"},
        timeout=10,
    )


def listing(receiver: Receiver, token: str, **query: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{receiver.url}/v1/unknown",
        params=query,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["unknown"])


def one(receiver: Receiver, token: str, ref: str) -> httpx.Response:
    return httpx.get(
        f"{receiver.url}/v1/unknown/{ref}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def test_templates_from_many_hosts_add_up_for_their_team_only(receiver):
    t = tokens(receiver)
    assert post(receiver, t["agent"], "web-1", [template(1, count=5)]).status_code == 200
    assert post(receiver, t["agent"], "web-2", [template(7, count=3)]).status_code == 200
    other = template(2, "FATAL disk <PATH> full", count=50, samples=["FATAL disk /a/b full"])
    assert post(receiver, t["agent"], "web-1", [other]).status_code == 200
    cache = template(3, WORKER, owner="team-cache", count=1000)
    assert post(receiver, t["agent"], "cache-1", [cache]).status_code == 200

    seen = listing(receiver, t["read-web"])
    assert [(u["template"], u["count"], u["hosts"]) for u in seen] == [
        ("FATAL disk <PATH> full", 50, 1),
        (WORKER, 8, 2),  # one entry for the same template on two hosts
    ]
    by_hosts = listing(receiver, t["read-web"], sort="hosts")
    assert [u["template"] for u in by_hosts] == [WORKER, "FATAL disk <PATH> full"]
    assert by_hosts[0]["days"][-1] == 8 and len(by_hosts[0]["days"]) == 7  # today's growth
    assert [u["count"] for u in listing(receiver, t["read-cache"])] == [1000]
    assert listing(receiver, receiver.admin)[0]["owner"] == "team-cache"  # admin: all teams

    ref = by_hosts[0]["ref"]
    detail = one(receiver, t["read-web"], ref)
    assert detail.status_code == 200
    assert {w["host"] for w in detail.json()["where"]} == {"web-1", "web-2"}
    assert one(receiver, t["read-cache"], ref).status_code == 404  # as absent as never seen
    assert one(receiver, t["read-web"], "0" * 20).status_code == 404
    assert one(receiver, t["read-web"], "../../etc").status_code == 404


def test_a_post_sent_twice_or_lost_counts_nothing_twice(receiver):
    t = tokens(receiver)
    for _ in range(3):  # a retry after a lost answer: the same cumulative count
        assert post(receiver, t["agent"], "web-1", [template(1, count=5)]).status_code == 200
    assert [(u["count"], u["days"][-1]) for u in listing(receiver, t["read-web"])] == [(5, 5)]
    # a post lost on the way: the next carries the total, and the day grows by the rest
    assert post(receiver, t["agent"], "web-1", [template(1, count=12)]).status_code == 200
    assert [(u["count"], u["days"][-1]) for u in listing(receiver, t["read-web"])] == [(12, 12)]
    # the host's state was reset: it counts from zero again, and the latest word wins
    reset = template(1, count=2, first_seen=time.time() - 5)
    assert post(receiver, t["agent"], "web-1", [reset]).status_code == 200
    assert [(u["count"], u["days"][-1]) for u in listing(receiver, t["read-web"])] == [(2, 14)]
    # one template twice in one post: the last word is taken, not an error
    twice = [
        template(1, count=3, first_seen=reset["first_seen"]),
        template(1, count=4, first_seen=reset["first_seen"]),
    ]
    assert post(receiver, t["agent"], "web-1", twice).status_code == 200
    assert [u["count"] for u in listing(receiver, t["read-web"])] == [4]


def test_a_template_a_shipped_pattern_explains_leaves_the_list(receiver):
    t = tokens(receiver)
    for host in ("web-1", "web-2"):
        assert post(receiver, t["agent"], host, [template(1, count=4)]).status_code == 200
    known = {"owner": "team-web", "id": 1, "known": "web/worker-crashed"}
    assert post(receiver, t["agent"], "web-1", [known]).status_code == 200
    assert [(u["count"], u["hosts"]) for u in listing(receiver, t["read-web"])] == [(4, 1)]
    assert post(receiver, t["agent"], "web-2", [known]).status_code == 200
    assert listing(receiver, t["read-web"]) == []
    page = console(receiver, t["read-web"], "/unknown")
    assert 'id="explained"' in page and "web/worker-crashed" in page
    # an explanation of a template the receiver never heard of changes nothing
    assert post(receiver, t["agent"], "web-3", [{**known, "id": 99}]).status_code == 200
    assert listing(receiver, t["read-web"]) == []


def test_no_token_reports_for_another_team_or_host(receiver):
    t = tokens(receiver)
    answer = post(receiver, t["agent-web"], "web-1", [template(1, owner="team-cache")])
    assert answer.status_code == 403 and "templates[0]" in answer.json()["error"]
    answer = post(receiver, t["agent-web"], "cache-1", [template(1)])
    assert answer.status_code == 403 and "host" in answer.json()["error"]
    answer = post(receiver, t["agent-web"], "web-1", [template(1, owner="")])
    assert answer.status_code == 200  # ownerless: the token's one team
    assert [u["owner"] for u in listing(receiver, t["read-web"])] == ["team-web"]
    assert post(receiver, t["read-web"], "web-1", [template(1)]).status_code == 403
    assert httpx.get(f"{receiver.url}/v1/unknown", timeout=10).status_code == 401


@pytest.mark.parametrize(
    ("row", "place"),
    [
        (template(1, template="a\0b"), None),  # a NUL is shown, not stored raw
        (template(1, template=""), "templates[0].template"),
        (template(1, template="x" * 5000), "templates[0].template"),
        (template(1, count=-1), "templates[0].count"),
        (template(1, count=2**60), "templates[0].count"),
        (template(1, count=True), "templates[0].count"),
        (template(0), "templates[0].id"),
        (template(True), "templates[0].id"),
        (template(1, first_seen=1e300), "templates[0].first_seen"),
        (template(1, last_seen=float("nan")), "templates[0].last_seen"),
        (template(1, samples="one line"), "templates[0].samples"),
        (template(1, samples=["x"] * 11), "templates[0].samples"),
        (template(1, samples=[7]), "templates[0].samples[0]"),
        (template(1, owner="team\u202eweb"), "templates[0].owner"),
        ({"owner": "team-web", "id": 1, "known": "a\nb"}, "templates[0].known"),
        ("not an object", "templates[0]"),
    ],
)
def test_hostile_values_are_refused_naming_the_place(receiver, row, place):
    t = tokens(receiver)
    answer = post(receiver, t["agent"], "web-1", [row])
    if place is None:
        assert answer.status_code == 200, answer.text
        assert listing(receiver, t["read-web"])[0]["template"] == "a\ufffdb"
        return
    assert answer.status_code == 422, answer.text
    assert place in answer.json()["error"]
    assert listing(receiver, t["read-web"]) == []  # nothing of a refused post is kept


def test_a_lone_surrogate_and_a_broken_body_are_refused(receiver):
    t = tokens(receiver)
    body = json.dumps({"host": "web-1", "templates": [template(1, template="\ud800")]})
    answer = httpx.post(
        f"{receiver.url}/v1/unknown",
        content=body.encode(),
        headers={"Authorization": f"Bearer {t['agent']}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 422 and "templates[0].template" in answer.json()["error"]
    assert post(receiver, t["agent"], "", [], raw=[1, 2]).status_code == 400
    assert post(receiver, t["agent"], "", [], raw={"host": "h"}).status_code == 422
    rows = [template(n) for n in range(1, 1002)]
    answer = post(receiver, t["agent"], "web-1", rows)
    assert answer.status_code in (413, 422), answer.text  # too many in one post


def test_the_rows_a_team_keeps_are_bounded(receiver, monkeypatch):
    t = tokens(receiver)
    store = ReceiverStore(receiver.db)
    monkeypatch.setattr(central, "MAX_PER_HOST", 5)
    monkeypatch.setattr(central, "MAX_PER_OWNER", 8)
    try:
        who = store.authenticate(t["agent"])
        assert who is not None
        now = time.time()
        for host in ("web-1", "web-2"):
            rows = [template(n, f"E{n} x", last_seen=now - 100 + n) for n in range(1, 8)]
            store.store_unknown(who, host, rows)
        found, _ = store.unknown(("team-web",), limit=100)
        assert sum(u["hosts"] for u in found) == 8  # 5 a host, then 8 for the team
        assert {u["template"] for u in found} >= {"E7 x", "E6 x", "E5 x"}  # the recent kept
        assert "E1 x" not in {u["template"] for u in found}
    finally:
        store.close()


def console(receiver: Receiver, token: str, path: str) -> str:
    answer = httpx.get(
        f"{receiver.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return answer.text


def test_the_console_ranks_escapes_and_drafts_a_pattern_logmend_test_accepts(receiver, tmp_path):
    t = tokens(receiver)
    hostile = "ERROR <script>alert(1)</script> for user <*>"
    rows = [
        template(
            1,
            count=3,
            samples=["ERROR worker 3 crashed: exit 1", "ERROR worker 41 crashed: exit 0"],
        ),
        template(2, hostile, count=9, samples=["ERROR <script>alert(1)</script> for user bob"]),
    ]
    assert post(receiver, t["agent"], "web-1", rows).status_code == 200
    page = console(receiver, t["read-web"], "/unknown")
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert page.index("&lt;script&gt;") < page.index("ERROR worker &lt;NUM&gt;")  # by count
    assert 'class="draft"' in page and "Unknown errors</a>" in page
    assert 'id="empty"' in console(receiver, t["read-cache"], "/unknown")

    ref = next(u["ref"] for u in listing(receiver, t["read-web"]) if u["template"] == WORKER)
    detail = console(receiver, t["read-web"], f"/unknown/{ref}")
    assert 'id="draft"' in detail and "[[pattern.example]]" in detail
    missing = httpx.get(
        f"{receiver.url}/unknown/{ref}", headers={"Authorization": f"Bearer {t['read-cache']}"}
    )
    assert missing.status_code == 404

    draft = one(receiver, t["read-web"], ref).json()["draft"]
    pack = write_pack(tmp_path / "packs", "web", draft, owner="team-web")
    done = subprocess.run(
        [sys.executable, "-m", "agent", "test", str(pack)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 example" in done.stdout or "passed" in done.stdout, done.stdout


def test_a_bad_sort_is_a_400(receiver):
    t = tokens(receiver)
    answer = httpx.get(
        f"{receiver.url}/v1/unknown?sort=drop",
        headers={"Authorization": f"Bearer {t['read-web']}"},
        timeout=10,
    )
    assert answer.status_code == 400 and "sort" in answer.json()["error"]


def test_no_agent_files_under_the_central_teams_owner(receiver):
    """Every ingest token may report the agent's own events (owner "logmend"); none may
    fill, overwrite or explain that owner's templates."""
    t = tokens(receiver)
    answer = post(receiver, t["agent-web"], "web-1", [template(1, owner="logmend")])
    assert answer.status_code == 403 and "templates[0].owner" in answer.json()["error"]
    known = {"owner": "logmend", "id": 1, "known": "x/y"}
    assert post(receiver, t["agent"], "web-1", [known]).status_code == 403
