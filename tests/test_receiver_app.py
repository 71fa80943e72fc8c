"""The receiver's Starlette app in process, through TestClient: no server, no port, no sleep.

Auth, idempotent ingest (JSON and msgpack), count updates, size bounds, malformed
bodies with messages naming the field, listing filters and paging, statistics, and
the per-token rate limit (a burst through the app; the bucket itself on a fake clock).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from agent.receiver.app import create_app
from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore
from agent.receiver.web import RateLimit
from tests.helpers import ENGINE, STATS_ROW, peek
from tests.helpers import wire_event as event

with warnings.catch_warnings():  # starlette asks for httpx2; httpx is what the project has
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
    pytest.mark.usefixtures("engine"),  # each test on SQLite and on PostgreSQL
]

ESCALATIONS = "/v1/escalations"
STATS = "/v1/stats"


class Api:
    def __init__(self, tmp: Path, **options: Any) -> None:
        self.store = ReceiverStore(ENGINE.new_db(tmp))
        self.token = self.store.create_token(Scope.INGEST, "test-hosts", ("*",), ("*",))
        self.admin = self.store.create_token(Scope.ADMIN, "central")
        self.client = TestClient(create_app(self.store, **options), raise_server_exceptions=False)

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def post(
        self, doc: Any, *, token: str | None = None, as_json: bool = False, path: str = ESCALATIONS
    ) -> Any:
        if as_json:
            body, kind = json.dumps(doc).encode(), "application/json"
        else:
            body, kind = msgpack.packb(doc), "application/msgpack"
        return self.client.post(
            path, content=body, headers={**self.auth(token), "Content-Type": kind}
        )

    def raw(self, body: Any, kind: str = "application/msgpack") -> Any:
        return self.client.post(
            ESCALATIONS, content=body, headers={**self.auth(), "Content-Type": kind}
        )

    def listed(self, **params: str) -> list[dict[str, Any]]:
        answer = self.client.get(ESCALATIONS, params=params, headers=self.auth(self.admin))
        assert answer.status_code == 200, answer.text
        return list(answer.json()["escalations"])

    def ids(self, **params: str) -> list[str]:
        return [e["id"] for e in self.listed(**params)]

    def close(self) -> None:
        self.client.close()
        self.store.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    made = Api(tmp_path)
    yield made
    made.close()


def column(api: Api, name: str) -> list[Any]:
    """A column of the stored escalations, read from the database file itself."""
    return [
        row[name] for row in peek(api.store.where, f"SELECT {name} FROM escalations ORDER BY id")
    ]


NEED_TOKEN = {"error": "a valid bearer token is required"}


# auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer lm_not-a-token"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dGVzdDp0ZXN0"},
        {"Authorization": "TOKEN"},
    ],
    ids=["none", "wrong", "empty", "basic", "no-scheme"],
)
def test_every_api_route_refuses_a_missing_or_wrong_token_with_401(api, headers):
    body = msgpack.packb({"events": [event(1)]})
    for method, path in [("POST", ESCALATIONS), ("GET", ESCALATIONS), ("POST", STATS)]:
        answer = api.client.request(method, path, content=body, headers=headers)
        assert (answer.status_code, answer.json()) == (401, NEED_TOKEN), (method, path)
    answer = api.client.get(STATS, headers=headers)
    assert (answer.status_code, answer.json()) == (401, NEED_TOKEN)
    assert api.store.query({}, None) == ([], False)


def test_the_bearer_scheme_is_case_insensitive_and_the_token_names_the_submitter(api):
    answer = api.client.post(
        ESCALATIONS,
        content=msgpack.packb({"events": [event(1)]}),
        headers={"Authorization": f"bearer  {api.token} "},
    )
    assert answer.status_code == 200 and answer.json() == {"accepted": ["ev-1"], "duplicates": []}
    assert column(api, "submitted_by") == ["test-hosts"]  # who sent it is kept beside it


def test_health_needs_no_token_and_the_page_does(api):
    assert api.client.get("/healthz").json() == {"ok": True}
    page = api.client.get("/", follow_redirects=False)
    assert (page.status_code, page.headers["location"]) == (303, "/login")
    tier1 = api.client.get("/tier1", headers=api.auth(api.admin)).text
    assert "No host reported anything in this window." in tier1


# ingest ---------------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["msgpack", "json"])
def test_an_escalation_is_stored_once_by_id_and_sent_again_is_a_duplicate(api, as_json):
    doc = {"agent": {"host": "h1"}, "events": [event(1), event(2)]}
    first = api.post(doc, as_json=as_json)
    assert (first.status_code, first.json()) == (
        200,
        {"accepted": ["ev-1", "ev-2"], "duplicates": []},
    )
    again = api.post({"events": [event(2), event(3)]}, as_json=as_json)
    assert again.json() == {"accepted": ["ev-3"], "duplicates": ["ev-2"]}
    stored = {e["id"]: e for e in api.listed()}
    assert sorted(stored) == ["ev-1", "ev-2", "ev-3"]
    received = stored["ev-1"].pop("received")
    assert isinstance(received, float) and received > 0
    assert stored["ev-1"].pop("submitted_by") == "test-hosts"  # the token's name
    assert len(stored["ev-1"].pop("ref")) == 20  # the receiver's own id of it
    assert stored["ev-1"] == event(1)


def test_a_higher_count_updates_the_stored_event_and_a_lower_or_equal_one_does_not(api):
    def send(count: int, last_seen: float) -> dict[str, Any]:
        answer = api.post(
            {"events": [event(9, count=count, last_seen=last_seen, lines=[str(count)])]}
        )
        assert answer.status_code == 200
        return dict(answer.json())

    assert send(3, 2.0) == {"accepted": ["ev-9"], "duplicates": []}
    assert send(40, 9.0) == {"accepted": ["ev-9"], "duplicates": []}
    assert send(40, 12.0) == {"accepted": [], "duplicates": ["ev-9"]}
    assert send(7, 20.0) == {"accepted": [], "duplicates": ["ev-9"]}
    [stored] = api.listed()
    assert (stored["count"], stored["last_seen"], stored["lines"]) == (40, 9.0, ["40"])
    # an update never moves last_seen back
    assert send(41, 1.0)["accepted"] == ["ev-9"]
    assert api.store.query({}, None)[0][0]["count"] == 41
    assert column(api, "last_seen") == [9.0]


# bounds and malformed bodies --------------------------------------------------------------


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(tmp_path):
    api = Api(tmp_path, max_body=2048)
    try:
        fits = json.dumps({"events": [event(1, lines=[""])]})
        fits = fits.replace('"lines": [""]', '"lines": ["' + "x" * (2048 - len(fits)) + '"]')
        assert len(fits) == 2048
        assert api.raw(fits.encode(), "application/json").status_code == 200
        over = fits.replace('"lines": ["', '"lines": ["y').encode()
        declared = api.raw(over, "application/json")
        assert (declared.status_code, declared.json()) == (
            413,
            {"error": "body larger than 2048 bytes"},
        )
        streamed = api.raw(iter([over[:1000], over[1000:2000], over[2000:]]), "application/json")
        assert streamed.status_code == 413
        assert api.ids() == ["ev-1"]
    finally:
        api.close()


def test_more_events_than_one_request_may_carry_is_413(api):
    answer = api.post({"events": [{"id": str(n)} for n in range(5001)]})
    assert (answer.status_code, answer.json()) == (
        413,
        {"error": "at most 5000 events per request"},
    )


@pytest.mark.parametrize(
    ("body", "kind", "code", "error"),
    [
        (
            b"\xc1\xc1 not msgpack",
            "application/msgpack",
            400,
            "body is not valid msgpack or JSON: ",
        ),
        (
            b"{not json",
            "application/json",
            400,
            "body is not valid msgpack or JSON: JSONDecodeError",
        ),
        (
            msgpack.packb([1, 2]),
            "application/msgpack",
            400,
            'body must be an object with an "events" list',
        ),
        (msgpack.packb({"events": "x"}), "", 400, 'body must be an object with an "events" list'),
        (msgpack.packb({"events": [event(1), 5]}), "", 422, "events[1] must be an object"),
        (
            msgpack.packb({"events": [event(1), {"id": 5}]}),
            "",
            422,
            "events[1].id must be a non-empty string",
        ),
        (
            msgpack.packb({"events": [event(1, host="")]}),
            "",
            422,
            "events[0].host must be a non-empty string",
        ),
        (
            msgpack.packb({"events": [event(1, owner=None)]}),
            "",
            422,
            "events[0].owner must be a string",
        ),
        (
            msgpack.packb({"events": [event(1, id="x" * 201)]}),
            "",
            422,
            "events[0].id is too long (at most 200 characters)",
        ),
        (
            msgpack.packb({"events": [event(1, count="3")]}),
            "",
            422,
            "events[0].count must be an integer",
        ),
        (
            msgpack.packb({"events": [event(1, last_seen="now")]}),
            "",
            422,
            "events[0].last_seen must be a number (Unix time)",
        ),
    ],
    ids=[
        "not-msgpack",
        "not-json",
        "not-an-object",
        "events-not-a-list",
        "event-not-an-object",
        "id-not-a-string",
        "empty-host",
        "null-owner",
        "id-too-long",
        "count-not-int",
        "last-seen-not-number",
    ],
)
def test_a_malformed_body_is_refused_naming_what_is_wrong_and_stores_nothing(
    api, body, kind, code, error
):
    answer = api.raw(body, kind)
    assert answer.status_code == code, answer.text
    message = answer.json()["error"]
    assert message == error or (error.endswith(": ") and message.startswith(error)), message
    assert api.store.query({}, None) == ([], False)


def test_a_nan_timestamp_is_refused_not_answered_as_a_duplicate(api):
    answer = api.post({"events": [event(1, first_seen=math.nan)]})
    assert answer.json() != {"accepted": [], "duplicates": ["ev-1"]}
    assert answer.status_code == 422


def test_an_infinite_timestamp_does_not_break_the_listing(api):
    assert api.post({"events": [event(1, last_seen=math.inf), event(2)]}).status_code in (200, 422)
    answer = api.client.get(ESCALATIONS, headers=api.auth(api.admin))
    assert answer.status_code == 200


@pytest.mark.parametrize("path", [ESCALATIONS, STATS])
def test_a_count_past_64_bits_is_a_422_not_a_500(api, path):
    if path == ESCALATIONS:
        doc: dict[str, Any] = {"events": [event(1, count=2**70)]}
    else:
        doc = {"host": "h", "stats": [{"pack": "p", "pattern": "q", "matches": 2**70}]}
    assert api.post(doc, as_json=True, path=path).status_code == 422


# listing ---------------------------------------------------------------------------------


def test_the_listing_filters_by_field_and_pages_in_a_stable_order(api):
    events = [
        event(0),
        event(1, owner="team-b", host="h2"),
        event(2, owner="team-b", pattern="other"),
        event(3, status="remedy-failed"),
        event(4, owner="team-b", host="h2", pack="pg"),
    ]
    assert api.post({"events": events}).status_code == 200  # one request: one received time
    assert api.ids(owner="team-b") == ["ev-1", "ev-2", "ev-4"]
    assert api.ids(owner="team-b", host="h2") == ["ev-1", "ev-4"]
    assert api.ids(pattern="other") == ["ev-2"]
    assert api.ids(pack="pg") == ["ev-4"]
    assert api.ids(status="remedy-failed") == ["ev-3"]
    assert api.ids(fingerprint="fp3") == ["ev-3"]
    assert api.ids(owner="nobody") == []
    assert api.ids(severity="critical") == [f"ev-{n}" for n in range(5)]  # not a filter: ignored
    pages = [api.ids(limit="2", offset=str(offset)) for offset in (0, 2, 4, 6)]
    assert pages == [["ev-0", "ev-1"], ["ev-2", "ev-3"], ["ev-4"], []]
    assert api.ids(limit="0") == ["ev-0"]  # at least one
    negative = api.client.get(ESCALATIONS, params={"offset": "-5"}, headers=api.auth(api.admin))
    assert negative.status_code == 400 and "offset must be between 0 and" in negative.text
    assert api.ids(owner="team-b", limit="1", offset="1") == ["ev-2"]


def test_the_newest_received_comes_first(api):
    api.post({"events": [event(0)]})
    api.post({"events": [event(1)]})
    assert api.ids() == ["ev-1", "ev-0"]  # a tie would list ev-0 first


@pytest.mark.parametrize("params", [{"limit": "ten"}, {"offset": "1.5"}])
def test_paging_that_is_not_an_integer_is_400(api, params):
    answer = api.client.get(ESCALATIONS, params=params, headers=api.auth(api.admin))
    assert (answer.status_code, answer.json()) == (
        400,
        {"error": "limit and offset must be integers"},
    )


# statistics -------------------------------------------------------------------------------


ROW = STATS_ROW


def test_stats_keep_the_latest_total_per_host_and_sum_over_hosts(api):
    def send(host: str, **over: Any) -> Any:
        return api.post({"host": host, "stats": [{**ROW, **over}]}, path=STATS)

    assert send("a").json() == {"stored": 1, "skipped": 0}
    # the latest totals replace the earlier ones: an agent whose state was reset reports less
    assert send("a", matches=4, failed=1, resolved=1).status_code == 200
    assert send("b", resolved=1, matches=5).status_code == 200
    assert api.post(
        {"host": "c", "stats": [{"pack": "nginx", "pattern": "p", "owner": "web"}]}, path=STATS
    ).json() == {"stored": 1, "skipped": 0}  # missing totals count as 0
    # a row of no owner that a '*' token cannot decide is left out, the rest kept
    assert api.post(
        {"host": "c", "stats": [{"pack": "gone", "pattern": "p"}]}, path=STATS
    ).json() == {"stored": 0, "skipped": 1}
    answer = api.client.get(STATS, headers=api.auth(api.admin))
    rows = answer.json()["stats"]
    by_owner = {r["owner"]: r for r in rows}
    web = by_owner["web"]
    assert {k: web[k] for k in ("pack", "pattern", "hosts", "matches", "resolved", "failed")} == {
        "pack": "nginx",
        "pattern": "p",
        "hosts": 3,
        "matches": 9,
        "resolved": 2,
        "failed": 1,
    }
    assert "" not in by_owner and web["hosts"] == 3
    tier1 = api.client.get("/tier1?window=24h", headers=api.auth(api.admin)).text
    assert "fixed on the host" in tier1 and "<td>9</td>" in tier1  # matches, over the hour


@pytest.mark.parametrize(
    ("doc", "code", "error"),
    [
        (["nope"], 400, 'body must be an object with a "host" string'),
        ({"host": "", "stats": []}, 422, "host must be a non-empty string"),
        ({"host": "a"}, 422, 'body must have a "stats" list'),
        ({"host": "a", "stats": [1]}, 422, "stats[0] must be an object"),
        (
            {"host": "a", "stats": [{**ROW, "pack": ""}]},
            422,
            "stats[0].pack must be a non-empty string",
        ),
        (
            {"host": "a", "stats": [ROW, {**ROW, "owner": 5}]},
            422,
            "stats[1].owner must be a string",
        ),
        (
            {"host": "a", "stats": [{**ROW, "matches": -1}]},
            422,
            "stats[0].matches must be between 0 and 2**53",
        ),
        (
            {"host": "a", "stats": [{**ROW, "resolved": True}]},
            422,
            "stats[0].resolved must be an integer",
        ),
    ],
    ids=[
        "not-object",
        "empty-host",
        "no-stats",
        "row-not-object",
        "empty-pack",
        "owner",
        "negative",
        "bool",
    ],
)
def test_bad_stats_are_refused_naming_the_field(api, doc, code, error):
    answer = api.post(doc, path=STATS)
    assert (answer.status_code, answer.json()) == (code, {"error": error})
    assert api.store.stats(None) == ([], False)


# rate limit -------------------------------------------------------------------------------


def test_a_token_past_its_burst_gets_429_with_retry_after_and_others_do_not(tmp_path):
    api = Api(tmp_path, rate=0.001, burst=2)  # a token a thousand seconds: no refill in a test
    try:
        other = api.store.create_token(Scope.INGEST, "other-hosts", ("*",), ("*",))
        assert api.client.post(ESCALATIONS, content=b"x").status_code == 401  # takes no token
        codes = [api.post({"events": [event(n)]}).status_code for n in range(2)]
        assert codes == [200, 200]
        refused = api.post({"events": [event(2)]})
        assert refused.status_code == 429
        assert refused.json() == {"error": "too many requests for this token"}
        assert refused.headers["retry-after"] == "1000"
        assert api.post({"host": "a", "stats": [ROW]}, path=STATS).status_code == 429  # same bucket
        assert api.post({"events": [event(3)]}, token=other).status_code == 200
        # the admin token reading has a bucket of its own, and the refused one was not stored
        assert sorted(api.ids()) == ["ev-0", "ev-1", "ev-3"]
    finally:
        api.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_token_bucket_refills_at_its_rate_up_to_its_burst():
    clock = Clock()
    limit = RateLimit(rate=2.0, burst=3, clock=clock)
    assert [limit.wait("t") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.wait("t") == 0.5
    assert limit.wait("u") == 0.0  # each token has its own bucket
    clock.now += 0.25
    assert limit.wait("t") == 0.25  # half a token back: half the wait left
    clock.now += 0.25
    assert limit.wait("t") == 0.0
    assert limit.wait("t") == 0.5
    clock.now += 100.0  # a long quiet time refills to the burst, no further
    assert [limit.wait("t") for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]


def test_a_rate_of_zero_turns_the_limit_off():
    limit = RateLimit(rate=0.0, burst=0, clock=Clock())
    assert {limit.wait("t") for _ in range(1000)} == {0.0}


def test_a_lane_turns_away_what_waits_past_its_patience_and_frees_its_slots():
    import asyncio

    from agent.receiver.guard import Busy, Lane

    async def scenario() -> list[str]:
        lane = Lane(2, patience=0.05)
        seen = []
        async with lane.slot(), lane.slot():
            try:
                async with lane.slot():
                    seen.append("third got in")
            except Busy:
                seen.append("third turned away")
        async with lane.slot(), lane.slot():  # both freed, even after the refusal
            seen.append("two again")
        return seen

    assert asyncio.run(scenario()) == ["third turned away", "two again"]


# the workflow of a group, through the API ------------------------------------------------


def test_a_team_works_an_escalation_and_a_resolved_one_that_recurs_is_a_regression(api):
    write = api.store.create_token(Scope.WRITE, "wendy", ("team-a",))
    other = api.store.create_token(Scope.WRITE, "bob", ("team-b",))
    reader = api.store.create_token(Scope.READ, "rita", ("team-a",))
    assert api.post({"events": [event(1, key="k")]}).status_code == 200
    [row] = api.listed()

    def patch(token: str, doc: Any) -> Any:
        return api.client.patch(f"{ESCALATIONS}/{row['ref']}", json=doc, headers=api.auth(token))

    def group() -> dict[str, Any]:
        answer = api.client.get(f"{ESCALATIONS}/{row['ref']}", headers=api.auth(reader))
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["group"])

    assert (group()["state"], group()["timeline"], group()["key"]) == ("open", [], "k")
    assert patch(write, {"action": "acknowledge"}).json()["state"] == "acknowledged"
    again = patch(write, {"action": "acknowledge"})
    assert again.status_code == 409 and "only an open group" in again.json()["error"]
    assert patch(write, {"action": "assign", "assignee": "dana"}).json()["assignee"] == "dana"
    assert patch(write, {"action": "note", "note": "disk on db-1 replaced"}).status_code == 200
    assert patch(write, {"action": "resolve"}).json()["state"] == "resolved"
    assert patch(reader, {"action": "reopen"}).status_code == 403  # read may not write
    assert patch(other, {"action": "reopen"}).status_code == 404  # another team's: absent
    assert patch(write, {"action": "dance"}).status_code == 422
    assert patch(write, {"action": "snooze", "until": "soon"}).status_code == 422
    assert patch(write, {"action": "note", "note": ""}).status_code == 422
    bad = api.client.patch(f"{ESCALATIONS}/{row['ref']}", content=b"{", headers=api.auth(write))
    assert bad.status_code == 400
    assert group()["state"] == "resolved"  # none of the refused changed anything
    # the agent reports the same incident again, with more matches: a regression
    again = event(1, key="k", count=9, last_seen=time.time())
    assert api.post({"events": [again]}).status_code == 200
    back = group()
    assert (back["state"], back["regression"]) == ("open", True)
    timeline = [(a["who"], a["verb"], a["detail"]) for a in back["timeline"]]
    assert timeline == [
        ("wendy", "acknowledge", ""),
        ("wendy", "assign", "to dana"),
        ("wendy", "note", "disk on db-1 replaced"),
        ("wendy", "resolve", ""),
        ("receiver", "regressed", "reported by h1"),
    ]
    # a duplicate changes nothing: no second regression
    assert api.post({"events": [again]}).json()["duplicates"] == ["ev-1"]
    assert len(group()["timeline"]) == 5


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        (ESCALATIONS, '{"events": [{"id": "a", "host": "h", "pack": "p", "pattern": "q",'
         ' "status": "s", "fingerprint": "f", "first_seen": 1' + "0" * 400 + "}]}", 422),
        ("PATCH", '{"action": "snooze", "until": 1' + "0" * 400 + "}", 422),
        ("PATCH", "[" * 15_000, 400),
    ],
    ids=["huge-integer-time", "huge-integer-until", "deep-patch"],
)  # fmt: skip
def test_numbers_and_nesting_past_what_python_converts_are_4xx(api, path, body, code):
    """Found by review: a 400-digit integer overflowed math.isfinite (500), and a PATCH
    body nested 15,000 deep overflowed json.loads' recursion (500)."""
    write = api.store.create_token(Scope.WRITE, "w", ("team-a",))
    assert api.post({"events": [event(1)]}).status_code == 200
    [row] = api.listed()
    if path == "PATCH":
        answer = api.client.patch(
            f"{ESCALATIONS}/{row['ref']}", content=body.encode(), headers=api.auth(write)
        )
    else:
        answer = api.raw(body.encode(), "application/json")
    assert answer.status_code == code, answer.text
