"""Attacks on the receiver on PostgreSQL (review of the PostgreSQL engine): each test
shows a flaw where PostgreSQL behaves otherwise than SQLite did, and fails until it
is fixed. In process (Starlette's TestClient, as tests/test_receiver_app.py) unless a
real process or a second connection to the server is needed to show it."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.receiver import engine as engine_module
from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore
from tests.helpers import ENGINE, PYTHON, peek
from tests.helpers import wire_event as event
from tests.test_console import Console
from tests.test_receiver_app import ESCALATIONS, STATS, Api

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
    pytest.mark.usefixtures("engine"),  # each test on SQLite and on PostgreSQL
]

on_postgresql = pytest.mark.engines("postgresql")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    made = Api(tmp_path)
    yield made
    made.close()


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    made = Console(tmp_path)
    yield made
    made.close()


def wide(chars: int, seed: int) -> str:
    """A name of `chars` characters of four bytes each in UTF-8 (CJK extension B), none
    repeated in a way a compressor could use: within every limit the receiver checks."""
    rnd = random.Random(seed)
    return "".join(chr(rnd.randrange(0x20000, 0x2A000)) for _ in range(chars))


# 1. a query string that is a 500 ---------------------------------------------------------


def test_a_nul_in_the_tier1_owner_filter_is_a_400_not_a_500(console):
    """/tier1 checks its `owner` only for length; every other filter of a page or the API
    must be printable. SQLite compares a NUL like any character and finds nothing;
    psycopg refuses to send it (PostgreSQL's text holds no NUL): DataError, a 500 for
    any logged-in reader, from one `?owner=%00`."""
    console.login(console.a_write)
    answer = console.client.get("/tier1", params={"owner": "team-a\0"})
    assert answer.status_code != 500
    assert answer.status_code in (200, 400)


# 2. paging that loses rows ---------------------------------------------------------------


def test_paging_through_escalations_received_in_one_batch_lists_each_once(api):
    """The listing's order (received DESC, submitted_by, id) is not a total order: every
    event of one batch has the same `received`, and one id from several hosts (or for
    several owners) ties. SQLite happened to give ties one order on every page;
    PostgreSQL's top-N sort gives each LIMIT/OFFSET page its own, so paging through
    shows some rows twice and never shows others."""
    events = [event(n, id="disk-full", host=f"web-{n:03d}") for n in range(60)]
    assert api.post({"events": events}).status_code == 200
    seen: list[str] = []
    for offset in range(0, 60, 7):
        seen += [e["ref"] for e in api.listed(limit="7", offset=str(offset))]
    assert len(seen) == 60
    assert len(set(seen)) == 60, f"{60 - len(set(seen))} row(s) never listed, as many twice"


# 3. a value every check allows, that PostgreSQL can never store: 503 for ever ------------


@pytest.mark.parametrize("path", [ESCALATIONS, STATS])
def test_long_names_of_wide_characters_are_stored_or_refused_for_good_not_503(api, path):
    """Names are bounded in characters (256; an id 200), not in bytes: 256 four-byte
    characters are 1 KiB. A B-tree entry of PostgreSQL holds at most 2704 bytes, and
    the keys (escalations: submitted_by, owner, host, id; stats: owner, host, pack,
    pattern) go past it: 'index row size exceeds btree maximum', an OperationalError
    that the engine answers 503 "try again shortly". The agent does, for ever: the
    batch (with every other event in it) is never stored nor parked. SQLite stores
    it (200)."""
    if path == ESCALATIONS:
        doc: dict[str, Any] = {
            "events": [event(1, owner=wide(256, 1), host=wide(256, 2), id=wide(200, 3))]
        }
    else:
        row = {"owner": wide(256, 1), "pack": wide(256, 2), "pattern": wide(256, 3)}
        doc = {"host": wide(256, 4), "stats": [{**row, "matches": 1}]}
    answer = api.post(doc, path=path)
    assert answer.status_code < 500, answer.text
    assert answer.status_code in (200, 413, 422)
    again = api.post(doc, path=path)  # the same batch sent again: the same answer
    assert again.status_code == answer.status_code


# 4. the move from SQLite ---------------------------------------------------------------


def _migrate(lite: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "agent", "receiver", "migrate", "--from", str(lite), "--to", url],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@on_postgresql
def test_migrate_moves_a_file_whose_group_key_and_note_hold_a_nul(tmp_path, pg_cluster):
    """The release before this one stored an event's `key` in its group as sent (text:
    a NUL allowed) and a note as typed (a NUL allowed; only this release refuses it).
    Such a file is valid SQLite; COPY into PostgreSQL raises DataError ("text fields
    cannot contain NUL") and `receiver migrate` dies with a traceback: the file can
    never be moved, and the message does not say which row."""
    lite = tmp_path / "receiver.db"
    ReceiverStore(lite).close()
    with sqlite3.connect(lite) as db:  # rows as release 3's _recur and act() wrote them
        db.execute(
            "INSERT INTO groups VALUES ('team-a', 'fp1', '0123456789abcdef0123', 'nginx', 'p',"
            " ?, 'error', 'open', '', NULL, 0, 1.0, 2.0, 3.0, 1, 1, NULL)",
            ("GET /\0index.html",),
        )
        db.execute(
            "INSERT INTO actions (owner, fingerprint, at, who, verb, detail)"
            " VALUES ('team-a', 'fp1', 3.0, 'wendy', 'note', ?)",
            ("see\0above",),
        )
    url = pg_cluster.new_database()
    moved = _migrate(lite, url)
    assert "Traceback" not in moved.stderr, moved.stderr[-800:]
    assert moved.returncode == 0, moved.stderr[-800:]
    assert peek(url, "SELECT count(*) AS n FROM groups")[0]["n"] == 1
    assert peek(url, "SELECT count(*) AS n FROM actions")[0]["n"] == 1


# 5. the password ---------------------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@on_postgresql
def test_a_password_in_the_url_query_is_refused_and_never_shown(tmp_path):
    """A password in the URL is refused (it would show in `ps` and in logs), but only
    in the user:password@ form: libpq takes `?password=` as well, urlsplit sees no
    password there, safe_url() shows the URL as it is, and the receiver connects with
    it (on `ps` for as long as it runs) or prints it in its error."""
    url = (
        f"postgresql://postgres@127.0.0.1:{_closed_port()}/nothing"
        "?password=s3cret-pw&connect_timeout=2"
    )
    done = subprocess.run(
        [PYTHON, "-m", "agent", "receiver", "token", "list", "--db", url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "s3cret-pw" not in done.stderr + done.stdout, done.stderr
    assert "password in the database URL" in done.stderr


# 6. a peer that stalls mid-transaction -----------------------------------------------------


@on_postgresql
def test_a_row_lock_held_by_a_stalled_peer_is_a_503_in_seconds_not_a_hang(api):
    """Several receivers share the database; one that stops mid-transaction (SIGSTOP, a
    paused VM, a long GC) keeps its connection and its row locks. Nothing bounds how
    long a statement waits for a lock (no lock_timeout nor statement_timeout): every
    request of that token, on every other receiver, waits on its rate-limit bucket
    for as long as the peer is stalled, holding a thread and a pooled connection. On
    SQLite the busy timeout makes the same wait a 503 after 10 s."""
    import psycopg

    first = api.client.get(ESCALATIONS, headers=api.auth(api.admin))
    assert first.status_code == 200  # the admin token's bucket row exists now
    peer = psycopg.connect(str(api.store.where))
    answers: list[int] = []
    try:
        peer.execute("SELECT 1 FROM buckets FOR UPDATE")  # as a stalled take() holds it
        asking = threading.Thread(
            target=lambda: answers.append(
                api.client.get(ESCALATIONS, headers=api.auth(api.admin)).status_code
            ),
            daemon=True,
        )
        started = time.monotonic()
        asking.start()
        asking.join(20)
        waited = time.monotonic() - started
    finally:
        peer.rollback()
        peer.close()
    asking.join(10)
    assert waited < 20, "the request was still waiting on the lock after 20 s"
    # after lock_timeout (10 s) the shared bucket gives way to this receiver's own: the
    # read is served (200), still limited; a write on a locked row would be a 503
    assert answers in ([200], [503])


# 7. two receivers hear of a new host at once -----------------------------------------------


@on_postgresql
def test_a_new_host_heard_by_two_receivers_at_once_keeps_every_pack(tmp_path, monkeypatch):
    """_heard reads the host's row FOR UPDATE, merges the packs in Python and upserts. A
    row that does not exist yet locks nothing: two receivers hearing of a new host at
    once (its stats on one, its escalations on the other, as a load balancer spreads
    them) both read nothing, and the second upsert overwrites the first's packs and
    agent version. The barrier holds each transaction just after that read, as a
    busy server would; SQLite has one writer at a time and cannot lose it."""
    db = ENGINE.new_db(tmp_path)
    one, two = ReceiverStore(db), ReceiverStore(db)
    token = one.create_token(Scope.INGEST, "web", ("*",), ("*",))
    who = one.authenticate(token)
    assert who is not None
    meet = threading.Barrier(2, timeout=5)
    execute = engine_module.PgConn.execute

    def held(self: Any, sql: str, args: Any = ()) -> Any:
        cursor = execute(self, sql, args)
        if sql.startswith("SELECT owner, host, agent_version, packs FROM hosts"):
            with contextlib.suppress(threading.BrokenBarrierError):
                meet.wait()
        return cursor

    monkeypatch.setattr(engine_module.PgConn, "execute", held)
    stats = {"owner": "team-a", "pack": "nginx", "pattern": "p", "matches": 1}
    stats.update(incidents=0, resolved=0, failed=0, escalated=0)
    escalation = event(1, owner="team-a", host="web-1", pack="postgresql", pack_version="1.4")
    threads = [
        threading.Thread(target=one.store_stats, args=(who, "web-1", [stats])),
        threading.Thread(target=two.store, args=([escalation], who, "0.9.1")),
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        monkeypatch.undo()
        one.close()
        two.close()
    [host] = peek(db, "SELECT packs, agent_version FROM hosts")
    assert "nginx" in host["packs"] and "postgresql" in host["packs"], host
    assert host["agent_version"] == "0.9.1", host


# 8. a server that takes no writes ----------------------------------------------------------


@on_postgresql
def test_a_read_only_server_is_a_503_as_a_read_only_sqlite_file_is(api, pg_cluster):
    """A PostgreSQL that takes no writes for a while (a standby during a failover, a
    primary in recovery, default_transaction_read_only set by a DBA during
    maintenance) answers every write with ReadOnlySqlTransaction: an InternalError,
    not an OperationalError, so every POST is a 500 with a traceback in the log and
    no Retry-After, while /healthz says the database refuses writes. SQLite's
    'attempt to write a readonly database' is an OperationalError: a 503. Reads are
    500s as well: every request writes its token's rate-limit bucket first."""
    name = str(api.store.where).rsplit("/", 1)[1].split("?")[0]
    pg_cluster.psql(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    pg_cluster.psql(  # the pool reconnects: its new connections are read-only
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )
    try:
        answer = api.post({"events": [event(1)]})
        listing = api.client.get(ESCALATIONS, headers=api.auth(api.admin))
        health = api.client.get("/healthz")
    finally:
        pg_cluster.psql(f"ALTER DATABASE {name} RESET default_transaction_read_only")
    assert health.status_code == 503
    assert answer.status_code == 503, answer.text
    assert "Retry-After" in answer.headers
    # a read writes too (take(): the shared rate limit), so it fails the same way
    assert listing.status_code in (200, 503), listing.text


# 9. a URL mistyped ------------------------------------------------------------------------


@pytest.mark.engines("sqlite")  # no server needed: once is enough
@pytest.mark.parametrize(
    "typo",
    [
        "postgresql:/postgres@127.0.0.1:5432/logmend",  # one slash
        "PostgreSQL://postgres@127.0.0.1:5432/logmend",  # a scheme is case-insensitive
        "postgresql+psycopg://postgres@127.0.0.1:5432/logmend",  # SQLAlchemy's spelling
    ],
    ids=["one-slash", "upper-case", "driver-suffix"],
)
def test_a_mistyped_database_url_is_refused_not_made_a_sqlite_file(tmp_path, monkeypatch, typo):
    """Anything not starting with exactly postgresql:// or postgres:// is taken for a
    SQLite path: a receiver given a mistyped URL (in --db or LOGMEND_RECEIVER_DB, on
    one of several receivers behind a load balancer) silently creates a directory
    'postgresql:' and a new database in it, and serves, healthy, from a private file
    the other receivers never see: a split brain. (This change's own first commit
    carries such a file, 'postgresql:/postgres@127.0.0.1:33929/t7441_0'.)"""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match=r"(?i)url|postgres"):
        ReceiverStore(typo).close()
    assert list(tmp_path.iterdir()) == []
