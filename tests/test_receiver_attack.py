"""Attacks on the multi-tenant receiver, from the review of issue 13: each test was a
flaw the review found in the first cut of scopes, and is kept as its regression.

They run against the real receiver on 127.0.0.1 (tests/helpers.py), or the real
store and CLI where the flaw was. Each docstring says what happened before.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore, token_hash
from tests.helpers import ENGINE, PYTHON, Receiver, make_receiver, receiver_with_tokens, wait_for
from tests.helpers import wire_event as event
from tests.test_receiver_schema import RELEASE_1

pytestmark = pytest.mark.usefixtures("engine")  # each test on SQLite and on PostgreSQL


@dataclass
class Rig:
    receiver: Receiver
    tokens: dict[str, str]

    def call(
        self, who: str | None, method: str, path: str, body: Any = None, **kw: Any
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(who, who)}"
        content = json.dumps(body) if body is not None else None
        return httpx.request(
            method, self.receiver.url + path, content=content, headers=headers, timeout=10, **kw
        )

    def post(self, who: str, *events: dict[str, Any]) -> httpx.Response:
        return self.call(who, "POST", "/v1/escalations", {"events": list(events)})

    def listed(self, who: str, **params: str) -> list[dict[str, Any]]:
        answer = self.call(who, "GET", "/v1/escalations", params=params)
        assert answer.status_code == 200, answer.text
        return list(answer.json()["escalations"])

    def add_token(self, key: str, scope: Scope, name: str, owners=(), hosts=()) -> None:
        store = ReceiverStore(self.receiver.db)
        try:
            self.tokens[key] = store.create_token(scope, name, tuple(owners), tuple(hosts))
        finally:
            store.close()


TEAM_A = {
    "a-ingest": (Scope.INGEST, "a-fleet", ("team-a",), ("web-*",)),
    "a-read": (Scope.READ, "alice", ("team-a",)),
}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, engine: str) -> Iterator[Rig]:
    receiver, tokens = receiver_with_tokens(
        tmp_path_factory.mktemp("attack"),
        {
            **TEAM_A,
            "b-ingest": (Scope.INGEST, "b-fleet", ("team-b",), ("db-*",)),
            "b-read": (Scope.READ, "bob", ("team-b",)),
        },
    )
    receiver.start()
    try:
        yield Rig(receiver, tokens)
    finally:
        receiver.stop()


# 1. a stored value that breaks every reader's listing -----------------------------------


@pytest.fixture
def lone(tmp_path: Path) -> Iterator[Rig]:
    """A receiver of its own: the row this test stores breaks every listing after it."""
    receiver, tokens = receiver_with_tokens(tmp_path, TEAM_A)
    receiver.start()
    try:
        yield Rig(receiver, tokens)
    finally:
        receiver.stop()


def test_a_lone_surrogate_in_an_unchecked_field_does_not_break_reads_for_others(lone):
    """Before: validate() checked the UTF-8 of id, names, lines and fields, not `attempts`,
    `article_text`, or any extra key. JSON's "\\ud800" escape decodes to a lone
    surrogate; validate's json.dumps (ensure_ascii) stores it as an escape; and on the
    way out Starlette's JSONResponse encodes UTF-8 strictly: 500 for every page that
    holds the row, the admin's whole listing included, until it scrolls away."""
    raw = (
        '{"events": [{"id": "sur-1", "fingerprint": "f", "host": "web-1", "owner": "team-a",'
        ' "pack": "nginx", "pattern": "p", "status": "no-remedy", "count": 1,'
        ' "attempts": [{"stdout": "\\ud800"}], "article_text": "\\udfff"}]}'
    )
    answer = httpx.post(
        lone.receiver.url + "/v1/escalations",
        content=raw,
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {lone.tokens['a-ingest']}",
        },
        timeout=10,
    )
    if answer.status_code == 422:
        return  # refused at the door: the fix
    assert answer.status_code == 200, answer.text
    for who in ("admin", "a-read"):
        listing = lone.call(who, "GET", "/v1/escalations")
        assert listing.status_code == 200, f"{who}: GET /v1/escalations -> {listing.status_code}"


# 2. a query value that is a 500 ----------------------------------------------------------


@pytest.mark.parametrize("offset", [str(2**63), "9" * 40])
def test_a_huge_offset_is_a_400_or_an_empty_page_not_a_500(rig, offset):
    """Before: int(offset) was unbounded; SQLite takes at most 2**63-1: a 500."""
    answer = rig.call("a-read", "GET", "/v1/escalations", params={"offset": offset})
    assert answer.status_code in (200, 400), answer.status_code


# 3. same name, different owners: cross-team write (and read) ------------------------------


def test_a_token_of_another_team_with_the_same_name_cannot_rewrite_a_teams_escalation(rig):
    """Before, the namespace was the token's *name* alone, not unique nor tied to owners:
    the docs tell operators to give a replacement 'the same --name', and a release-1
    database gives every token its old owner label as name. Team B's ingest token that
    happens to share a name with team A's updates A's escalation: the UPDATE matches on
    (name, id) only, never re-checks the stored owner, and replaces the body. A's readers
    then see B's lines (a leak of B's data to A) in a row whose body says owner team-b,
    while B's readers never see B's own event."""
    rig.add_token("a-shared", Scope.INGEST, "shared-name", ("team-a",), ("web-*",))
    try:
        rig.add_token("b-shared", Scope.INGEST, "shared-name", ("team-b",), ("db-*",))
    except ValueError:
        return  # refused at creation: a fix
    a = event(1, id="collide-1", owner="team-a", host="web-1", count=1, lines=["a's line"])
    assert rig.post("a-shared", a).json()["accepted"] == ["collide-1"]
    b = event(1, id="collide-1", owner="team-b", host="db-1", count=5, lines=["b's secret"])
    answer = rig.post("b-shared", b)
    assert answer.status_code == 200, answer.text
    seen_by_a = [e for e in rig.listed("a-read") if e["id"] == "collide-1"]
    assert [e["lines"] for e in seen_by_a] == [["a's line"]], seen_by_a  # A's row untouched
    assert [e["lines"] for e in rig.listed("b-read") if e["id"] == "collide-1"] == [
        ["b's secret"]
    ]  # B's event is B's


def test_an_update_keeps_the_body_and_the_columns_in_agreement(rig):
    """Before: with one token bound to two owners, an update naming another owner replaced
    the body but not the `owner`/`host` columns, so the row sits in team A's inbox
    while its body (what GET answers) says team-b; filtering owner=team-a returns an
    event whose owner is team-b, and team B never sees it."""
    rig.add_token("ab-ingest", Scope.INGEST, "ab-fleet", ("team-a", "team-b"), ("*",))
    first = event(2, id="move-1", owner="team-a", host="web-1", count=1)
    assert rig.post("ab-ingest", first).json()["accepted"] == ["move-1"]
    moved = event(2, id="move-1", owner="team-b", host="db-9", count=2)
    if rig.post("ab-ingest", moved).status_code != 200:
        return  # an update that changes the owner refused: a fix
    for row in rig.listed("admin"):
        if row["id"] == "move-1":
            one = rig.call("admin", "GET", f"/v1/escalations/{row['ref']}").json()
            by_owner = rig.listed("admin", owner=one["owner"], host=one["host"])
            assert "move-1" in {e["id"] for e in by_owner}, (one["owner"], one["host"])


# 4. a fleet host pre-claims another host's predictable id ---------------------------------


def test_a_host_of_a_fleet_cannot_suppress_another_hosts_quarantine_report(rig):
    """Before, ids were namespaced by token name only, not by host, and the id was not tied to the
    event's host. With the documented fleet token (--host 'web-*'), a compromised web-1
    posts the predictable quarantine id of web-2 (with its own host, count 2**53); web-2's
    genuine report is then a 'duplicate': the agent drops it and nobody hears of it."""
    qid = "quarantine:nginx:slow:1.0.0:web-2"
    claim = event(3, id=qid, host="web-1", owner="team-a", status="quarantined", count=2**53)
    rig.post("a-ingest", claim)  # accepted today; a fix may refuse it (id names web-2)
    genuine = event(3, id=qid, host="web-2", owner="team-a", status="quarantined", count=3)
    answer = rig.post("a-ingest", genuine)
    assert answer.json()["accepted"] == [qid], answer.text


# 5. 'only admins see' the agent's own events -----------------------------------------------


def test_only_admins_see_the_agents_own_events(rig):
    """Before: owner `logmend` events (spool overflows, with host names of
    every team) 'only admins see'. binding_problem lets an operator create a read token
    for --owner logmend, which then reads every team's agent reports."""
    assert rig.post("a-ingest", event(4, id="spool-drop:web-1:1.0", owner="logmend",
                                      host="web-1")).is_success  # fmt: skip
    store = ReceiverStore(rig.receiver.db)
    try:
        with pytest.raises(ValueError):
            rig.tokens["lm-read"] = store.create_token(Scope.READ, "snoop", ("logmend",))
    finally:
        store.close()
    if "lm-read" in rig.tokens:  # it was created: show what it reads
        assert "spool-drop:web-1:1.0" not in {e["id"] for e in rig.listed("lm-read")}


# 6. revocation is not at once for a request in flight ----------------------------------


def test_a_token_revoked_while_its_body_uploads_stores_nothing(rig):
    """Before, the token was checked once, before the body (up to 30 s of it); the events were
    then stored under the revoked token. Shown with Expect: 100-continue, which uvicorn
    answers when the app starts reading the body, i.e. after auth."""
    rig.add_token("doomed", Scope.INGEST, "doomed", ("team-a",), ("web-*",))
    body = json.dumps({"events": [event(5, id="after-revoke", host="web-1")]}).encode()
    sock = socket.create_connection(("127.0.0.1", rig.receiver.port), timeout=10)
    try:
        sock.sendall(
            (
                "POST /v1/escalations HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {rig.tokens['doomed']}\r\n"
                "Content-Type: application/json\r\nExpect: 100-continue\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
        )
        got = b""
        deadline = time.monotonic() + 10
        while b"100 Continue" not in got and time.monotonic() < deadline:
            got += sock.recv(4096)
        assert b"100 Continue" in got, got
        store = ReceiverStore(rig.receiver.db)
        try:
            [row] = [t for t in store.tokens() if t["name"] == "doomed"]
            store.revoke(row["id"])
        finally:
            store.close()
        sock.sendall(body)
        reply = b""
        while b"\r\n\r\n" not in reply.split(b"100 Continue", 1)[-1]:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    finally:
        sock.close()
    assert "after-revoke" not in {e["id"] for e in rig.listed("admin")}, reply[:200]


# 7. the schema upgrade ----------------------------------------------------------------------

# release 1 as commit 4a5cd53 left it: before the stats table existed
EARLY_RELEASE = RELEASE_1[: RELEASE_1.index("CREATE TABLE stats")]


@pytest.mark.engines("sqlite")  # PostgreSQL databases start at schema 3
def test_a_database_from_before_stats_is_upgraded(tmp_path):
    """Before: schema._to_2 added the `expires`/`revoked` columns 'added by releases before
    versions existed', so it means to upgrade those databases; but such a database
    (commit 4a5cd53's schema) has no `stats` table, and `DROP TABLE stats` fails: the
    receiver refuses to start, and every `token` command fails too."""
    db = tmp_path / "receiver.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(EARLY_RELEASE)
        conn.execute("INSERT INTO tokens VALUES (?, 'web-hosts', 1.0)", (token_hash("lm_x"),))
    store = ReceiverStore(db)  # StateError: no such table: stats
    try:
        assert store.authenticate("lm_x") is not None
    finally:
        store.close()


# 8. operator mistakes the CLI lets through ----------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "agent", "receiver", "token", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_far_expiry_does_not_break_token_list(tmp_path):
    """Before: `--expires 99999999999999999999d` was accepted; `token list` then died with an
    OverflowError traceback on every run, so the operator cannot see any token's id
    (the id `token revoke` needs)."""
    db = str(ENGINE.new_db(tmp_path))
    created = _cli("create", "--scope", "read", "--owner", "x", "--expires",
                   "99999999999999999999d", "--db", db)  # fmt: skip
    if created.returncode != 0:
        assert "Traceback" not in created.stderr  # refused cleanly: the fix
        return
    listed = _cli("list", "--db", db)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr[-300:]


def test_a_token_name_is_checked_like_owners_and_hosts(tmp_path):
    """Before: binding_problem checked owners and hosts (printable, trimmed, 1..256), not the
    name, which is the namespace of everything a token submits and what `token list`
    prints: a control character, a newline or 10,000 characters are taken."""
    store = ReceiverStore(ENGINE.new_db(tmp_path))
    try:
        for bad in ("fleet\nforged-line", "x" * 10_000, " web-fleet", "\x1b[2J"):
            with pytest.raises(ValueError):
                store.create_token(Scope.INGEST, bad, ("team-a",), ("web-*",))
    finally:
        store.close()


@pytest.mark.engines("sqlite")  # on PostgreSQL: test_an_upgrade_step_runs_once_on_both_engines
def test_two_processes_opening_a_new_database_at_once_both_succeed(tmp_path, monkeypatch):
    """Before: migrate() read which tables exist *before* BEGIN IMMEDIATE, then acted on that stale
    view inside the transaction. Release 1 used CREATE TABLE IF NOT EXISTS, so a receiver
    starting while the operator runs `token create` on the same new file worked; now the
    loser fails with 'table tokens already exists' and is told the database may be
    damaged ('restore it from a backup'). Reproduce by hand: start 4
    `logmend receiver token create --scope admin --db new.db` at once, a few times.
    Here the other process is simulated at the exact moment: just before BEGIN IMMEDIATE."""
    import agent.receiver.schema as schema_module

    db = tmp_path / "receiver.db"
    real = schema_module._migrate_sqlite
    other_ran = []

    class Racing:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "BEGIN IMMEDIATE" and not other_ran:
                other_ran.append(True)
                ReceiverStore(db).close()  # the other process opens (and creates) it first
            return self.conn.execute(sql, *args)

        def create_function(self, *args: Any, **kw: Any) -> None:
            self.conn.create_function(*args, **kw)

    def racing(conn: sqlite3.Connection, where: str) -> list[str]:
        return real(Racing(conn) if not other_ran else conn, where)  # type: ignore[arg-type]

    monkeypatch.setattr(schema_module, "_migrate_sqlite", racing)
    ReceiverStore(db).close()  # StateError: table tokens already exists
    assert other_ran


def test_a_token_bound_to_one_owner_files_an_event_without_owner_under_it(rig):
    """Before: docs/operations.md and scopes.owner_for said 'a token bound to a single owner files an
    event without one under that owner'. limits.validate refuses an empty or missing
    event owner first (422), so that branch only ever applies to stats rows."""
    answer = rig.post("a-ingest", event(6, id="no-owner", host="web-1", owner=""))
    assert answer.status_code == 200, answer.text
    assert "no-owner" in {e["id"] for e in rig.listed("a-read")}


def test_stats_and_the_page_are_bounded_like_escalation_pages(rig):
    """Before: GET /v1/escalations stopped at 1,000 rows / 8 MiB, but GET /v1/stats and the page /
    return every group at once. One ingest token with hosts '*' posts 5,000 distinct
    patterns a request (and any number of host names); each admin or team read of the
    page then renders all of them (here 25,000 rows, ~5 MB of HTML, per request)."""
    rig.add_token("a-wide", Scope.INGEST, "a-wide", ("team-a",), ("*",))
    for n in range(5):
        rows = [
            {"pack": "flood", "pattern": f"p-{n}-{i}", "owner": "team-a", "matches": 1}
            for i in range(5000)
        ]
        answer = rig.call("a-wide", "POST", "/v1/stats", {"host": f"h-{n}", "stats": rows})
        assert answer.status_code == 200, answer.text
    stats = rig.call("a-read", "GET", "/v1/stats")
    assert stats.status_code == 200
    doc = stats.json()
    assert len(doc["stats"]) <= 1000 or "next_offset" in doc, len(doc["stats"])
    page = rig.call("a-read", "GET", "/")
    assert len(page.content) <= 8 * 1024 * 1024 and page.text.count("<tr>") <= 2000, len(
        page.content
    )


def test_one_read_token_cannot_make_the_receiver_hold_hundreds_of_megabytes(tmp_path):
    """Before: a page was bounded (1,000 rows, 8 MiB), but nothing bounded how many a token had
    in flight: a read token that opens 64 connections (the per-address cap; any number
    of addresses on IPv6) and never reads makes the receiver build and buffer 64 pages of
    ~8 MiB each. Measured: RSS 45 MB -> ~630 MB with 100 such connections; with 4,096
    connections (--max-connections) that is tens of GB."""
    receiver = make_receiver(tmp_path)
    store = ReceiverStore(receiver.db)
    read = store.create_token(Scope.READ, "alice", ("team-a",))
    store.close()
    receiver.start()
    assert receiver.proc is not None
    socks: list[socket.socket] = []

    def rss_mib() -> int:
        for line in Path(f"/proc/{receiver.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
        return 0

    try:
        big = "x" * (900 * 1024)
        for n in range(9):  # ~8 MiB of team A's own escalations: one full page
            ev = event(n, id=f"big-{n}", owner="team-a", lines=[big])
            answer = httpx.post(
                receiver.url + "/v1/escalations",
                json={"events": [ev]},
                headers={"Authorization": f"Bearer {receiver.token}"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
        before = rss_mib()
        for _ in range(60):
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.connect(("127.0.0.1", receiver.port))
            c.sendall(
                b"GET /v1/escalations?limit=1000 HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {read}\r\n\r\n".encode()
            )
            socks.append(c)
        grown = wait_for(lambda: rss_mib() - before > 256, timeout=12)
        assert not grown, f"RSS {before} MiB -> {rss_mib()} MiB for one read token"
    finally:
        for c in socks:
            c.close()
        receiver.proc.kill()  # uvicorn's graceful stop would wait on the stuck responses
        receiver.proc.wait(timeout=10)


def test_deeply_nested_attempts_are_a_4xx_and_never_break_reads(lone):
    """Before: `attempts` was only checked to be a list; msgpack decodes up to ~1,000 levels. Past
    ~988 levels validate()'s json.dumps raises RecursionError, which it does not catch
    (it catches TypeError/ValueError): a 500. A few levels less is stored, and then every
    GET /v1/escalations page holding the row is a 500 (the response nests it 2 levels
    deeper): one ingest token breaks the listing for its team and for the admins."""
    import msgpack

    headers = {
        "Authorization": f"Bearer {lone.tokens['a-ingest']}",
        "Content-Type": "application/msgpack",
    }
    posted = {}
    for depth in range(940, 1021, 2):
        nested: list[Any] = []
        for _ in range(depth):
            nested = [nested]
        ev = event(depth, id=f"deep-{depth}", host="web-1", owner="team-a", attempts=nested)
        answer = httpx.post(
            lone.receiver.url + "/v1/escalations",
            content=msgpack.packb({"events": [ev]}),
            headers=headers,
            timeout=10,
        )
        posted[depth] = answer.status_code
    broken = []
    for who in ("admin", "a-read"):
        listing = lone.call(who, "GET", "/v1/escalations")
        if listing.status_code != 200:
            broken.append(f"{who}: GET /v1/escalations -> {listing.status_code}")
    broken += [f"POST depth {d}: 500" for d, c in posted.items() if c == 500]
    assert not broken, broken


def test_a_host_moved_to_another_token_is_not_counted_twice(rig):
    """Before: stats were kept per (token name, host) and summed over names: when a host's agent
    is given another token of its team (a rotation that did not reuse the --name, or a
    host moved between fleets), its old cumulative totals stay for ever and are added
    to the new ones: the team's page shows double. Nothing ever retires the old rows."""
    rig.add_token("a-old", Scope.INGEST, "a-old-fleet", ("team-a",), ("web-*",))
    rig.add_token("a-new", Scope.INGEST, "a-new-fleet", ("team-a",), ("web-*",))
    row = {"pack": "moved", "pattern": "p", "owner": "team-a", "matches": 10}
    for who in ("a-old", "a-new"):  # the same host's cumulative totals, twice
        answer = rig.call(who, "POST", "/v1/stats", {"host": "web-5", "stats": [row]})
        assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:  # every page: another test here posted 25,000 rows
        doc = rig.call("a-read", "GET", "/v1/stats", params={"limit": 1000, "offset": offset})
        rows += doc.json()["stats"]
        offset = doc.json().get("next_offset")
    [mine] = [s for s in rows if s["pack"] == "moved"]
    assert (mine["hosts"], mine["matches"]) == (1, 10), mine
