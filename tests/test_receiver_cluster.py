"""Several receivers on one PostgreSQL: exactly once under concurrency, tokens, sessions
and rate limits shared, a receiver killed mid-batch, the server restarted while agents
post; the schema's upgrades on both engines; a SQLite receiver moved to PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import StateError
from agent.receiver import schema
from agent.receiver.engine import open_engine
from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore
from tests.helpers import (
    ENGINE,
    PYTHON,
    AgentProc,
    Receiver,
    make_receiver,
    peek,
    poke,
    receiver_with_tokens,
    wait_for,
    write_config,
    write_pack,
)
from tests.helpers import wire_event as event
from tests.pg import PASSWORD_ROLE
from tests.test_many_agents import PACK
from tests.test_receiver_schema import release_1_database

pytestmark = pytest.mark.usefixtures("engine")

on_postgresql = pytest.mark.engines("postgresql")


def post(url: str, token: str, events: list[dict[str, Any]], timeout: float = 30) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/escalations",
        content=msgpack.packb({"agent": {"host": "h"}, "events": events}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"},
        timeout=timeout,
    )


def twins(tmp: Path, *args: str) -> tuple[Receiver, Receiver]:
    """Two receiver processes on one database (as behind a load balancer)."""
    first = make_receiver(tmp)
    first.args = args
    second = Receiver(db=first.db, token=first.token, admin=first.admin, args=args)
    return first.start(), second.start()


def rows(db: Path | str) -> list[dict[str, Any]]:
    return peek(db, "SELECT id, host, count FROM escalations ORDER BY id, host")


# several receivers, exactly once ----------------------------------------------------------


@on_postgresql
def test_two_receivers_taking_the_same_batches_at_the_same_moment_store_each_once(tmp_path):
    a, b = twins(tmp_path)
    batches = [
        [event(n, id=f"b{k}-{n}", fingerprint=f"g{n % 7}") for n in range(40)] for k in range(6)
    ]
    gate = threading.Barrier(12)

    def send(job: tuple[int, Receiver]) -> httpx.Response:
        k, receiver = job
        gate.wait(timeout=10)
        answer = post(receiver.url, a.token, batches[k])
        for _ in range(5):  # as the agent does: a 503 (pool or lock wait, on a loaded
            if answer.status_code != 503:  # machine) is tried again after Retry-After
                break
            time.sleep(min(5, int(answer.headers.get("Retry-After", "1"))))
            answer = post(receiver.url, a.token, batches[k])
        return answer

    with ThreadPoolExecutor(12) as pool:  # each batch to both receivers at once
        answers = list(pool.map(send, [(k, r) for k in range(6) for r in (a, b)]))
    assert all(x.status_code == 200 for x in answers), [
        (x.status_code, x.text[:200]) for x in answers if x.status_code != 200
    ]
    accepted = [i for x in answers for i in x.json()["accepted"]]
    duplicates = [i for x in answers for i in x.json()["duplicates"]]
    assert sorted(accepted) == sorted(e["id"] for batch in batches for e in batch)  # once
    assert len(duplicates) == len(accepted)  # the other receiver's copy of each
    stored = rows(a.db)
    assert len(stored) == 240 and len({r["id"] for r in stored}) == 240
    groups = peek(a.db, "SELECT fingerprint, occurrences, lines FROM groups ORDER BY fingerprint")
    assert sum(g["occurrences"] for g in groups) == 240  # no group counted twice
    assert sum(g["lines"] for g in groups) == 240 * 3


@on_postgresql
def test_the_higher_count_wins_whichever_receiver_takes_it_and_in_whatever_order(tmp_path):
    a, b = twins(tmp_path)
    counts = list(range(1, 41))
    jobs = [(c, (a, b)[c % 2]) for c in reversed(counts)] + [(c, (a, b)[c % 2]) for c in counts]

    def send(job: tuple[int, Receiver]) -> int:
        count, receiver = job
        return post(
            receiver.url, a.token, [event(1, count=count, last_seen=float(count))]
        ).status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(send, jobs)) == {200}
    [row] = rows(a.db)
    assert row["count"] == 40  # no lost update: the highest count is the one kept
    [group] = peek(a.db, "SELECT occurrences, lines FROM groups")
    assert group == {"occurrences": 1, "lines": 40}  # grown by each rise, once


@on_postgresql
def test_a_token_revoked_through_one_receiver_is_refused_by_the_other_at_once(tmp_path):
    a, b = twins(tmp_path)
    store = ReceiverStore(a.db)
    try:
        doomed = store.create_token(Scope.INGEST, "doomed", ("team-a",), ("*",))
        assert post(b.url, doomed, [event(1)]).status_code == 200
        [row] = [t for t in store.tokens() if t["name"] == "doomed"]
    finally:
        store.close()
    revoke = subprocess.run(
        [PYTHON, "-m", "agent", "receiver", "token", "revoke", row["id"], "--db", str(a.db)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert revoke.returncode == 0, revoke.stderr
    assert post(b.url, doomed, [event(2)]).status_code == 401
    assert post(a.url, doomed, [event(3)]).status_code == 401


@on_postgresql
def test_a_console_session_opened_on_one_receiver_works_on_the_other(tmp_path):
    a, b = twins(tmp_path)
    with httpx.Client(base_url=a.url, timeout=10) as browser:
        login = browser.get("/login")
        csrf = login.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        done = browser.post("/login", data={"token": a.admin, "csrf": csrf})
        assert done.status_code == 303, done.text
        cookies = browser.cookies
    with httpx.Client(base_url=b.url, timeout=10, cookies=cookies) as other:
        inbox = other.get("/")
        assert inbox.status_code == 200 and "Log out" in inbox.text  # not the login page


@on_postgresql
def test_the_rate_limit_holds_per_token_across_receivers(tmp_path):
    a, b = twins(tmp_path, "--rate", "0.5", "--burst", "4")
    codes = [post((a, b)[n % 2].url, a.token, [event(n)]).status_code for n in range(10)]
    assert codes.count(200) in (4, 5), codes  # the burst, and at most one refill meanwhile
    assert codes.count(429) == 10 - codes.count(200)
    assert codes[:4] == [200] * 4


@on_postgresql
def test_a_receiver_killed_mid_batch_loses_nothing_and_the_other_keeps_serving(tmp_path):
    """Batches of 2,000 go to one receiver, which is killed with SIGKILL while it stores
    them; the agent's retry (here: the same batches) goes to the other. Each batch is
    one transaction: it is wholly stored or not at all, and at the end every event is
    stored once."""
    a, b = twins(tmp_path)
    batches = [
        [event(n, id=f"k{k}-{n}", fingerprint=f"g{n % 50}", lines=["x" * 200]) for n in range(2000)]
        for k in range(8)
    ]
    results: list[int] = []

    def flood() -> None:
        for batch in batches:
            try:
                results.append(post(a.url, a.token, batch).status_code)
            except httpx.HTTPError:
                results.append(0)

    sender = threading.Thread(target=flood)
    sender.start()
    assert wait_for(lambda: results, 60)  # at least one batch in: it is busy with the next
    assert a.proc is not None
    a.proc.send_signal(signal.SIGKILL)
    sender.join(timeout=120)
    assert 0 in results  # a batch was cut off
    per_batch = {
        k: peek(a.db, "SELECT count(*) AS n FROM escalations WHERE id LIKE ?", f"k{k}-%")[0]["n"]
        for k in range(8)
    }
    assert set(per_batch.values()) <= {0, 2000}, per_batch  # never half a batch
    assert httpx.get(f"{b.url}/healthz", timeout=5).status_code == 200
    for batch in batches:
        assert post(b.url, a.token, batch).status_code == 200
    stored = peek(a.db, "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM escalations")[0]
    assert stored == {"n": 16000, "ids": 16000}


@on_postgresql
def test_a_postgresql_restart_while_agents_post_loses_nothing(tmp_path, pg_cluster):
    """Four agents write 300 escalations each; PostgreSQL is restarted (fast shutdown:
    connections cut) while they post. The receiver answers 503 meanwhile, the agents
    keep what they could not send and retry: every event is stored once."""
    receiver = make_receiver(tmp_path).start()
    packs = tmp_path / "packs"
    write_pack(packs, "ops", PACK)
    agents: list[tuple[AgentProc, Path]] = []
    for number in range(4):
        home = tmp_path / f"host{number}"
        home.mkdir()
        log = home / "app.log"
        log.touch()
        config = write_config(
            home, [(str(log), None)], packs, receiver, escalation="batch_size = 10\n"
        )
        config.write_text(config.read_text().replace('"test-host"', f'"host-{number}"'))
        agents.append((AgentProc(config).start(), log))
    for number, (_, log) in enumerate(agents):
        with log.open("a") as out:
            out.write("".join(f"boom {number * 300 + n}\n" for n in range(300)))

    def count() -> int:
        try:
            return int(peek(receiver.db, "SELECT count(*) AS n FROM escalations")[0]["n"])
        except Exception:
            return -1

    assert wait_for(lambda: count() > 0, 60)
    pg_cluster.restart()
    assert wait_for(lambda: count() >= 1200, 120, every=0.2), count()
    for agent, _ in agents:
        assert agent.stop() == 0
    stored = peek(
        receiver.db, "SELECT count(*) AS n, count(DISTINCT host || id) AS ids FROM escalations"
    )
    assert stored == [{"n": 1200, "ids": 1200}]
    receiver.stop()


@on_postgresql
def test_with_postgresql_down_the_receiver_says_so_and_recovers_when_it_is_back(
    tmp_path, pg_cluster
):
    receiver = make_receiver(tmp_path).start()
    assert post(receiver.url, receiver.token, [event(1)]).status_code == 200
    pg_cluster.stop()
    try:
        down = post(receiver.url, receiver.token, [event(2)], timeout=30)
        assert down.status_code == 503 and down.headers["Retry-After"], down.text
        health = wait_for(
            lambda: (
                (h := httpx.get(f"{receiver.url}/healthz", timeout=30)).status_code == 503 and h
            ),
            20,
        )
        assert health and health.json()["ok"] is False
    finally:
        pg_cluster.start()
    assert wait_for(lambda: post(receiver.url, receiver.token, [event(2)]).status_code == 200, 30)
    assert wait_for(lambda: httpx.get(f"{receiver.url}/healthz", timeout=10).status_code == 200, 10)
    assert [r["id"] for r in rows(receiver.db)] == ["ev-1", "ev-2"]


# the schema on both engines --------------------------------------------------------------


def test_both_engines_have_the_same_tables_and_columns(tmp_path, pg_cluster):
    lite = tmp_path / "r.db"
    ReceiverStore(lite).close()
    url = pg_cluster.new_database()
    ReceiverStore(url).close()
    with sqlite3.connect(lite) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        want = {
            t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")]
            for t in tables
            if t != "sqlite_sequence"
        }
    got: dict[str, list[str]] = {}
    for r in peek(
        url,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position",
    ):
        got.setdefault(r["table_name"], []).append(r["column_name"])
    assert got == want


def test_a_database_newer_than_the_code_is_refused_unchanged(tmp_path):
    db = ENGINE.new_db(tmp_path)
    ReceiverStore(db).close()
    poke(db, "UPDATE schema_version SET version = ?", schema.LATEST + 1)
    with pytest.raises(StateError, match="newer receiver"):
        ReceiverStore(db)
    assert peek(db, "SELECT version FROM schema_version") == [{"version": schema.LATEST + 1}]


def test_an_upgrade_step_runs_once_on_both_engines_in_place(tmp_path, monkeypatch):
    """The next schema's step, as a release would add it: the database of this one is
    upgraded in place, its rows kept, by the first of several receivers opening it."""
    db = ENGINE.new_db(tmp_path)
    store = ReceiverStore(db)
    token = store.create_token(Scope.INGEST, "web", ("team-a",), ("*",))
    store.close()
    ran: list[int] = []

    def to_next(conn: Any) -> list[str]:
        ran.append(1)
        conn.execute("ALTER TABLE hosts ADD COLUMN region TEXT NOT NULL DEFAULT ''")
        return ["hosts have a region now"]

    monkeypatch.setattr(schema, "LATEST", schema.LATEST + 1)
    monkeypatch.setitem(schema.UPGRADES, schema.LATEST - 1, to_next)
    with ThreadPoolExecutor(3) as pool:
        opened = list(pool.map(lambda _: ReceiverStore(db), range(3)))
    try:
        assert ran == [1]
        assert sorted(s.notes for s in opened) == [[], [], ["hosts have a region now"]]
        assert opened[0].authenticate(token) is not None
    finally:
        for s in opened:
            s.close()
    assert peek(db, "SELECT version FROM schema_version") == [{"version": schema.LATEST}]


# the move from SQLite to PostgreSQL ------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "agent", "receiver", *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@on_postgresql
def test_a_sqlite_receiver_moves_to_postgresql_whole(tmp_path, pg_cluster):
    """A database as the first release left it, upgraded and worked in (a group acted
    on, a silence), then moved: every row is there, tokens and sessions work, and new
    actions and silences number on after the copied ones."""
    lite = tmp_path / "receiver.db"
    old_token = release_1_database(lite)
    store = ReceiverStore(lite)  # upgraded here: the receiver's first line is its address
    admin = store.create_token(Scope.ADMIN, "central")
    store.close()
    receiver = Receiver(db=lite, token="", admin="").start()
    assert post(receiver.url, old_token, [event(7, owner="team-a", count=5)]).status_code == 200
    listing = httpx.get(
        f"{receiver.url}/v1/escalations", headers={"Authorization": f"Bearer {admin}"}, timeout=5
    ).json()["escalations"]
    ref = next(e["ref"] for e in listing if e["id"] == "ev-7")
    patched = httpx.patch(
        f"{receiver.url}/v1/escalations/{ref}",
        json={"action": "resolve", "note": "fixed in 2.1"},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=5,
    )
    assert patched.status_code == 200, patched.text
    receiver.stop()
    before = {
        t: peek(lite, f"SELECT count(*) AS n FROM {t}")[0]["n"]
        for t in ("escalations", "groups", "actions", "tokens")
    }

    url = pg_cluster.new_database()
    moved = _cli("migrate", "--from", str(lite), "--to", url)
    assert moved.returncode == 0, moved.stderr
    assert "escalations: 3 row(s)" in moved.stdout
    after = {t: peek(url, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in before}
    assert after == before
    again = _cli("migrate", "--from", str(lite), "--to", url)  # never into data
    assert again.returncode == 1 and "already holds receiver data" in again.stderr
    assert peek(url, "SELECT count(*) AS n FROM escalations")[0]["n"] == before["escalations"]

    served = Receiver(db=url, token=old_token, admin=admin).start()
    assert {e["id"] for e in served.escalations()} == {"ev-1", "ev-2", "ev-7"}
    again_seen = event(7, owner="team-a", count=6, last_seen=time.time())  # after the fix
    assert post(served.url, old_token, [again_seen]).status_code == 200
    actions = peek(url, "SELECT seq, verb FROM actions ORDER BY seq")
    assert actions[-1]["verb"] == "regressed" and actions[-1]["seq"] > actions[-2]["seq"]
    served.stop()


@on_postgresql
def test_a_password_comes_from_a_private_file_never_the_url(tmp_path, pg_cluster):
    pg_cluster.psql(
        f"DO $$ BEGIN CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD 's3cret-pw';"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    name = pg_cluster.new_database().rsplit("/", 1)[1].split("?")[0]
    pg_cluster.psql(f"ALTER DATABASE {name} OWNER TO {PASSWORD_ROLE}")
    url = pg_cluster.url(name, user=PASSWORD_ROLE)
    secret = tmp_path / "db-password"
    secret.write_text("s3cret-pw\n")
    secret.chmod(0o640)
    shown = _cli(
        "token", "create", "--scope", "admin", "--db", url, "--db-password-file", str(secret)
    )
    assert shown.returncode == 1 and "readable by others" in shown.stderr
    secret.chmod(0o600)
    made = _cli(
        "token", "create", "--scope", "admin", "--db", url, "--db-password-file", str(secret)
    )
    assert made.returncode == 0, made.stderr
    by_env = _cli(
        "token", "list",
        env={"LOGMEND_RECEIVER_DB": url, "LOGMEND_RECEIVER_DB_PASSWORD_FILE": str(secret)},
    )  # fmt: skip
    assert by_env.returncode == 0 and "admin" in by_env.stdout, by_env.stderr
    inline = url.replace(f"{PASSWORD_ROLE}@", f"{PASSWORD_ROLE}:s3cret-pw@")
    refused = _cli("token", "list", "--db", inline)
    assert refused.returncode == 1 and "password in the database URL" in refused.stderr
    assert "s3cret-pw" not in refused.stderr + refused.stdout
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    wrong.chmod(0o600)
    failed = _cli("token", "list", "--db", url, "--db-password-file", str(wrong))
    assert failed.returncode == 1
    [said] = [line for line in failed.stderr.splitlines() if "cannot connect to PostgreSQL" in line]
    assert "password authentication failed" in said, said
    assert "Traceback" not in failed.stderr


@on_postgresql
def test_an_unreachable_server_is_a_clear_error_before_anything_listens(tmp_path, pg_cluster):
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/nothing?connect_timeout=2"
    started = subprocess.run(
        [PYTHON, "-m", "agent", "receiver", "--listen", "127.0.0.1:0", "--db", url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode == 1
    assert "cannot connect to PostgreSQL" in started.stderr and "listening" not in started.stdout
    assert "Traceback" not in started.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_engine_urls_are_shown_without_a_password():
    from agent.receiver.engine import safe_url

    assert safe_url("postgresql://u:pw@db.example:5433/x?sslmode=verify-full") == (
        "postgresql://u@db.example:5433/x?sslmode=verify-full"
    )
    with pytest.raises(StateError, match="password in the database URL"):
        open_engine("postgresql://u:pw@127.0.0.1:1/x")


# what a client can send that PostgreSQL's text cannot hold -------------------------------


def test_a_nul_or_a_lone_surrogate_anywhere_is_a_4xx_on_either_engine(tmp_path):
    """PostgreSQL's text holds no NUL (SQLite's does) and UTF-8 no lone surrogate: a value
    with one, in a filter, a path, a note or an event, must be refused or find nothing
    on both engines, never a 500 that a client could repeat at will."""
    receiver, tokens = receiver_with_tokens(
        tmp_path, {"write": (Scope.WRITE, "wendy", ("team-a",))}
    )
    receiver.start()
    admin = {"Authorization": f"Bearer {receiver.admin}"}
    assert post(receiver.url, receiver.token, [event(1, key="k\x00ey")]).status_code == 200
    [row] = receiver.escalations()
    for bad in ("%00", "a%00b", "%ED%A0%80", "%FF"):  # NUL; a surrogate, a byte, not UTF-8
        got = httpx.get(f"{receiver.url}/v1/escalations?host={bad}", headers=admin, timeout=5)
        assert got.status_code in (200, 400), got.text
        assert got.status_code == 400 or got.json()["escalations"] == []
    for path in ("/v1/escalations/%00", "/v1/escalations/" + "0" * 19 + "%00", "/g/%00abc"):
        got = httpx.get(f"{receiver.url}{path}", headers=admin, timeout=5)
        assert got.status_code in (303, 404), (path, got.status_code, got.text)
    for doc in (
        '{"action": "note", "note": "a\\u0000b"}',
        '{"action": "note", "note": "\\ud800"}',
        '{"action": "assign", "assignee": "\\u0000"}',
        '{"action": "silence", "until": 9e9, "host": "\\ud800"}',
    ):
        got = httpx.patch(
            f"{receiver.url}/v1/escalations/{row['ref']}",
            content=doc,
            headers={
                "Authorization": f"Bearer {tokens['write']}",
                "Content-Type": "application/json",
            },
            timeout=5,
        )
        assert got.status_code == 422, (doc, got.status_code, got.text)
    for bad_event in (event(2, id="a\x00b"), event(3, host="\ud800"), event(4, severity="e\x00")):
        got = httpx.post(  # JSON: its \\ud800 escape is how a client sends a lone surrogate
            f"{receiver.url}/v1/escalations",
            content=json.dumps({"events": [bad_event]}),
            headers={
                "Authorization": f"Bearer {receiver.token}",
                "Content-Type": "application/json",
            },
            timeout=5,
        )
        assert got.status_code == 422, got.text
    got = httpx.get(f"{receiver.url}/?pattern=%00", headers=admin, timeout=5)
    assert got.status_code in (400, 303), got.status_code
    assert httpx.get(f"{receiver.url}/healthz", timeout=5).status_code == 200


# a model of exactly once ------------------------------------------------------------------


@on_postgresql
@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    posts=st.lists(
        st.tuples(
            st.integers(0, 1), st.sampled_from(["h1", "h2"]), st.integers(0, 5), st.integers(1, 9)
        ),
        min_size=1,
        max_size=40,
    )
)
def test_two_stores_on_one_database_agree_with_the_model_of_exactly_once(pg_cluster, posts):
    """Any sequence of posts (which receiver, host, id, count) through two stores (two
    pools, as two receivers have) ends as the model says: each (host, id) once, with the
    highest count posted; its group grown by each rise, once."""
    url = pg_cluster.new_database()
    stores = [ReceiverStore(url), ReceiverStore(url)]
    try:
        token = stores[0].create_token(Scope.INGEST, "fleet", ("*",), ("*",))
        who = stores[1].authenticate(token)
        assert who is not None
        model: dict[tuple[str, str], int] = {}
        for which, host, n, count in posts:
            e = event(n, host=host, count=count, fingerprint="one")
            accepted, duplicates = stores[which].store([e], who)
            rises = model.get((host, e["id"]), 0) < count
            assert (accepted, duplicates) == (([e["id"]], []) if rises else ([], [e["id"]]))
            if rises:
                model[(host, e["id"])] = count
        stored = {(r["host"], r["id"]): r["count"] for r in rows(url)}
        assert stored == model
        [group] = peek(url, "SELECT occurrences, lines FROM groups")
        assert group == {"occurrences": len(model), "lines": sum(model.values())}
    finally:
        for s in stores:
            s.close()


@on_postgresql
def test_tls_to_postgresql_is_checked_against_the_ca_given(tmp_path, pg_cluster):
    """libpq's TLS options in the URL: verify-full with the server's CA connects over
    TLS; with another CA it is refused, saying why, before anything listens."""
    import trustme

    name = pg_cluster.new_database().rsplit("/", 1)[1].split("?")[0]
    base = f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/{name}?sslmode=verify-full"
    good = f"{base}&sslrootcert={pg_cluster.ca}"
    receiver = Receiver(db=good, token="", admin="")
    store = ReceiverStore(good)
    receiver.admin = store.create_token(Scope.ADMIN, "central")
    store.close()
    assert peek(good, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [{"ssl": True}]
    receiver.start()
    assert receiver.escalations() == []
    receiver.stop()
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    refused = subprocess.run(
        [PYTHON, "-m", "agent", "receiver", "--listen", "127.0.0.1:0", "--db", f"{base}&sslrootcert={stranger}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "listening" not in refused.stdout
    [said] = [
        line for line in refused.stderr.splitlines() if "cannot connect to PostgreSQL" in line
    ]
    assert "certificate verify failed" in said, said  # why, not only that it timed out
    assert "Traceback" not in refused.stderr


@on_postgresql
def test_no_statement_of_the_receiver_runs_past_its_timeout(tmp_path):
    """Every pooled connection bounds its statements (and transactions left idle), so no
    query a client causes can hold a connection or its locks for long."""
    store = ReceiverStore(ENGINE.new_db(tmp_path))
    try:
        with store._engine.read() as db:
            assert db.execute("SHOW statement_timeout").fetchone() == {"statement_timeout": "30s"}
            idle = db.execute("SHOW idle_in_transaction_session_timeout").fetchone()
            assert idle == {"idle_in_transaction_session_timeout": "30s"}
    finally:
        store.close()
