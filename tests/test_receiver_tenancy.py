"""Tenancy on the real receiver over loopback (issue 13): every scope against every
endpoint, and the hijacks that were possible before scopes, kept as regressions.

Team A and team B each have an ingest token for their own fleet and owner, and a
read token for their people; the central team has an admin token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgpack
import pytest

from agent.receiver.scopes import Scope
from tests.helpers import STATS_ROW, Receiver, receiver_with_tokens
from tests.helpers import wire_event as event

pytestmark = pytest.mark.usefixtures("engine")  # each test on SQLite and on PostgreSQL


@dataclass
class Fleet:
    receiver: Receiver
    tokens: dict[str, str]

    def call(self, who: str | None, method: str, path: str, body: Any = None) -> httpx.Response:
        headers = {"Content-Type": "application/msgpack"}
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(who, who)}"
        content = msgpack.packb(body) if body is not None else None
        return httpx.request(
            method, self.receiver.url + path, content=content, headers=headers, timeout=10
        )

    def call_json(self, who: str | None, method: str, path: str, body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens.get(who, who)}"} if who else {}
        return httpx.request(method, self.receiver.url + path, json=body, headers=headers)

    def post(self, who: str, *events: dict[str, Any]) -> httpx.Response:
        return self.call(who, "POST", "/v1/escalations", {"events": list(events)})

    def listed(self, who: str, **params: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        answer = self.call(who, "GET", f"/v1/escalations?{query}")
        assert answer.status_code == 200, answer.text
        return list(answer.json()["escalations"])


def b_event(n: int, **over: Any) -> dict[str, Any]:
    return event(n, owner="team-b", host="db-01", pack="postgresql", **over)


def a_event(n: int, **over: Any) -> dict[str, Any]:
    return event(n, owner="team-a", host="web-1", **over)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, engine: str) -> Iterator[Fleet]:
    receiver, tokens = receiver_with_tokens(
        tmp_path_factory.mktemp("tenancy"),
        {
            "a-ingest": (Scope.INGEST, "a-fleet", ("team-a",), ("web-*",)),
            "a-anyhost": (Scope.INGEST, "a-roaming", ("team-a",), ("*",)),
            "a-read": (Scope.READ, "alice", ("team-a",)),
            "a-write": (Scope.WRITE, "anna", ("team-a",)),
            "b-ingest": (Scope.INGEST, "b-fleet", ("team-b",), ("db-*",)),
            "b-read": (Scope.READ, "bob", ("team-b",)),
            "revoked": (Scope.ADMIN, "gone"),
            "expired": (Scope.ADMIN, "ended", (), (), time.time() - 1),
        },
        revoked=("gone",),
    )
    receiver.start()
    try:
        yield Fleet(receiver, tokens)
    finally:
        receiver.stop()


# every scope against every endpoint ----------------------------------------------------

ENDPOINTS = [
    ("POST", "/v1/escalations"),
    ("POST", "/v1/stats"),
    ("GET", "/v1/escalations"),
    ("GET", "/v1/escalations/{ref}"),
    ("PATCH", "/v1/escalations/{ref}"),
    ("GET", "/v1/stats"),
    ("GET", "/"),
    ("GET", "/healthz"),
]
EXPECTED: dict[str | None, list[int]] = {
    # POST esc, POST stats, GET list, GET one, PATCH one, GET stats, page, health
    None: [401, 401, 401, 401, 401, 401, 303, 200],  # a browser goes to the login page
    "lm_not-a-token": [401, 401, 401, 401, 401, 401, 401, 200],
    "revoked": [401, 401, 401, 401, 401, 401, 401, 200],
    "expired": [401, 401, 401, 401, 401, 401, 401, 200],
    "a-ingest": [200, 200, 403, 403, 403, 403, 403, 200],
    "a-read": [403, 403, 200, 200, 403, 200, 200, 200],
    "a-write": [403, 403, 200, 200, 200, 200, 200, 200],
    "admin": [403, 403, 200, 200, 200, 200, 200, 200],
}


@pytest.mark.parametrize("who", list(EXPECTED), ids=[str(k) for k in EXPECTED])
def test_every_scope_against_every_endpoint(fleet, who):
    answer = fleet.post("a-ingest", a_event(900))
    assert answer.status_code == 200, answer.text
    [mine] = fleet.listed("admin", host="web-1", pattern="upstream-timeout")[:1]
    bodies = {
        ("POST", "/v1/escalations"): {"events": [a_event(901, count=5)]},
        ("POST", "/v1/stats"): {"host": "web-1", "stats": [{**STATS_ROW, "owner": "team-a"}]},
        ("PATCH", "/v1/escalations/{ref}"): {"action": "note", "note": "seen"},
    }
    got = []
    for method, path in ENDPOINTS:
        body = bodies.get((method, path))
        path = path.format(ref=mine["ref"])
        if method == "PATCH":
            answer = fleet.call_json(who, method, path, body)
        else:
            answer = fleet.call(who, method, path, body)
        got.append(answer.status_code)
        if answer.status_code == 401:
            assert answer.json() == {"error": "a valid bearer token is required"}
            assert answer.headers["www-authenticate"] == 'Bearer realm="logmend"'
        if answer.status_code == 403:
            assert "token may not" in answer.json()["error"], answer.text  # says what it may
    assert got == EXPECTED[who]


# the hijacks of issue 13, as regressions ----------------------------------------------


def test_a_token_cannot_file_into_another_teams_inbox(fleet):
    """Before: team A's token posted owner=team-b, host=db-01 and it was stored as B's."""
    answer = fleet.post("a-ingest", b_event(1, id="forged-1"))
    assert answer.status_code == 403
    assert answer.json()["error"] == (
        "events[0]: token 'a-fleet' may not report for host 'db-01' (it may for web-*)"
    )
    answer = fleet.post("a-anyhost", b_event(1, id="forged-2"))
    assert answer.status_code == 403
    assert "may not report for owner 'team-b' (it may for team-a)" in answer.json()["error"]
    ids = {e["id"] for e in fleet.listed("b-read")} | {e["id"] for e in fleet.listed("admin")}
    assert not ids & {"forged-1", "forged-2"}


def test_a_batch_with_one_foreign_event_stores_the_rest_and_names_the_refused(fleet):
    answer = fleet.post("a-ingest", a_event(10, id="mixed-ok"), b_event(11, id="mixed-bad"))
    assert answer.status_code == 403
    doc = answer.json()
    assert doc["accepted"] == ["mixed-ok"] and list(doc["refused"]) == ["mixed-bad"]
    assert "mixed-ok" in {e["id"] for e in fleet.listed("a-read")}


def test_a_team_reads_only_its_own_escalations_and_stats(fleet):
    """Before: A's token read all of B's escalations, lines and fix output included."""
    assert fleet.post("b-ingest", b_event(20, id="b-secret", lines=["password=hunter2"])).is_success
    assert fleet.post("a-ingest", a_event(21, id="a-own")).is_success
    seen_by_a = fleet.listed("a-read")
    assert seen_by_a and {e["owner"] for e in seen_by_a} == {"team-a"}
    assert fleet.listed("a-read", owner="team-b") == []  # asking for B's gives nothing
    assert "b-secret" in {e["id"] for e in fleet.listed("b-read")}
    assert {e["owner"] for e in fleet.listed("admin")} >= {"team-a", "team-b"}
    [b_row] = [e for e in fleet.listed("admin") if e["id"] == "b-secret"]
    one = fleet.call("a-read", "GET", f"/v1/escalations/{b_row['ref']}")
    assert (one.status_code, one.json()) == (404, {"error": "no such escalation"})
    assert fleet.call("b-read", "GET", f"/v1/escalations/{b_row['ref']}").json()["id"] == "b-secret"
    page = fleet.call("a-read", "GET", "/").text
    assert "team-a" in page and "team-b" not in page and "hunter2" not in page
    stats = {"host": "db-01", "stats": [{**STATS_ROW, "owner": "team-b", "matches": 10}]}
    assert fleet.call("b-ingest", "POST", "/v1/stats", stats).is_success
    a_stats = fleet.call("a-read", "GET", "/v1/stats").json()["stats"]
    assert all(s["owner"] == "team-a" for s in a_stats)


def test_an_id_cannot_be_hijacked_by_another_token(fleet):
    """Before: A re-posted B's id with count 2**62 and new lines, B's body was overwritten,
    and B's genuine update with count 10 was answered as a duplicate, so B's agent dropped
    it from its spool: lost."""
    assert fleet.post("b-ingest", b_event(30, id="shared-id", count=3)).json()["accepted"] == [
        "shared-id"
    ]
    huge = a_event(30, id="shared-id", count=2**50, lines=["overwritten"])
    assert fleet.post("a-anyhost", {**huge, "host": "db-01"}).json()["accepted"] == ["shared-id"]
    update = fleet.post("b-ingest", b_event(30, id="shared-id", count=10, lines=["genuine"]))
    assert update.json() == {"accepted": ["shared-id"], "duplicates": []}  # not a duplicate
    [b_row] = [e for e in fleet.listed("b-read") if e["id"] == "shared-id"]
    assert (b_row["count"], b_row["lines"], b_row["submitted_by"]) == (10, ["genuine"], "b-fleet")
    [a_row] = [e for e in fleet.listed("a-read") if e["id"] == "shared-id"]
    assert a_row["submitted_by"] == "a-roaming" and a_row["ref"] != b_row["ref"]
    # and B's own lower count is still a duplicate of B's own row
    again = fleet.post("b-ingest", b_event(30, id="shared-id", count=9))
    assert again.json() == {"accepted": [], "duplicates": ["shared-id"]}


def test_a_quarantine_id_cannot_be_claimed_in_advance(fleet):
    """Before: quarantine:{pack}:{pattern}:{version}:{host} was predictable, and whoever
    posted it first owned it."""
    qid = "quarantine:postgresql:lock:2.0.0:db-07"
    claim = event(40, id=qid, host="db-07", owner="team-a", status="quarantined")
    assert fleet.post("a-ingest", claim).status_code == 403  # not A's host
    assert fleet.post("a-anyhost", claim).is_success  # A's host list allows it: A's own row
    genuine = event(40, id=qid, host="db-07", owner="team-b", status="quarantined")
    assert fleet.post("b-ingest", genuine).json()["accepted"] == [qid]
    assert [e["submitted_by"] for e in fleet.listed("b-read") if e["id"] == qid] == ["b-fleet"]


def test_stats_for_another_host_cannot_be_posted_or_overwritten(fleet):
    """Before: stats for any host could be posted, and overwrote its owner."""
    mine = {"host": "db-02", "stats": [{**STATS_ROW, "owner": "team-b", "matches": 7}]}
    assert fleet.call("b-ingest", "POST", "/v1/stats", mine).is_success
    forged = {"host": "db-02", "stats": [{**STATS_ROW, "owner": "team-a", "matches": 1}]}
    answer = fleet.call("a-ingest", "POST", "/v1/stats", forged)
    assert answer.status_code == 403 and "host 'db-02'" in answer.json()["error"]
    stolen = {"host": "db-02", "stats": [{**STATS_ROW, "owner": "team-b", "matches": 0}]}
    answer = fleet.call("a-anyhost", "POST", "/v1/stats", stolen)
    assert answer.status_code == 403 and "owner 'team-b'" in answer.json()["error"]
    [row] = [
        s for s in fleet.call("b-read", "GET", "/v1/stats").json()["stats"] if s["pack"] == "nginx"
    ]
    assert row["matches"] >= 7  # B's figures, untouched


def test_the_page_needs_a_token(fleet):
    """Before: the page at / needed no token at all. Now a browser without a session is
    sent to the login page, and a tool without a token gets nothing."""
    answer = fleet.call(None, "GET", "/")
    assert answer.status_code == 303 and answer.headers["location"] == "/login"
    assert "team-" not in answer.text
    assert fleet.call("a-ingest", "GET", "/").status_code == 403  # an agent's token reads nothing
