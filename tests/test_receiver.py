"""The receiver on loopback: idempotent ingest, bounds, malformed bodies, the page."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgpack
import pytest

from agent.cli import main
from tests.helpers import ENGINE, STATS_ROW, peek
from tests.helpers import wire_event as event

pytestmark = pytest.mark.usefixtures("engine")  # each test on SQLite and on PostgreSQL


def post(
    receiver, body: bytes, content_type: str = "application/msgpack", timeout: float = 10
) -> httpx.Response:
    return httpx.post(
        f"{receiver.url}/v1/escalations",
        content=body,
        timeout=timeout,
        headers={"Authorization": f"Bearer {receiver.token}", "Content-Type": content_type},
    )


def stored_rows(receiver) -> int:
    return int(peek(receiver.db, "SELECT count(*) AS n FROM escalations")[0]["n"])


def test_idempotent_under_concurrent_duplicate_posts(receiver):
    body = msgpack.packb({"agent": {"host": "h1"}, "events": [event(n) for n in range(20)]})
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(receiver, body), range(16)))
    assert all(a.status_code == 200 for a in answers)
    accepted = [i for a in answers for i in a.json()["accepted"]]
    assert sorted(accepted) == sorted(f"ev-{n}" for n in range(20))
    assert stored_rows(receiver) == 20


def test_json_is_accepted_too(receiver):
    answer = post(receiver, json.dumps({"events": [event(1)]}).encode(), "application/json")
    assert answer.status_code == 200 and answer.json()["accepted"] == ["ev-1"]


def test_malformed_bodies_are_400_or_422_and_store_nothing(receiver):
    cases = [
        (b"\xc1\xc1 not msgpack", "application/msgpack", 400),
        (b"{not json", "application/json", 400),
        (msgpack.packb([1, 2]), "application/msgpack", 400),
        (msgpack.packb({"events": "nope"}), "application/msgpack", 400),
        (msgpack.packb({"events": [event(1), {"id": 5}]}), "application/msgpack", 422),
        (msgpack.packb({"events": [event(2, count="many")]}), "application/msgpack", 422),
    ]
    for body, content_type, code in cases:
        answer = post(receiver, body, content_type)
        assert answer.status_code == code, (body, answer.text)
        assert "error" in answer.json()
    assert stored_rows(receiver) == 0


def test_body_size_is_bounded(receiver):
    big = msgpack.packb({"events": [event(1, lines=["x" * (5 * 1024 * 1024)])]})
    assert post(receiver, big).status_code == 413
    assert stored_rows(receiver) == 0


def test_filters_and_page(receiver):
    post(
        receiver,
        msgpack.packb(
            {
                "events": [
                    event(1),
                    event(2, owner="team-b", pattern="other", host="h2"),
                ]
            }
        ),
    )
    assert [e["id"] for e in receiver.escalations(owner="team-b")] == ["ev-2"]
    assert [e["id"] for e in receiver.escalations(pattern="upstream-timeout")] == ["ev-1"]
    assert [e["id"] for e in receiver.escalations(host="h2")] == ["ev-2"]
    admin = {"Authorization": f"Bearer {receiver.admin}"}
    page = httpx.get(f"{receiver.url}/?window=all", headers=admin).text  # the admin's inbox
    assert "team-a" in page and "team-b" in page and "upstream-timeout" in page
    assert page.count('class="group"') == 2


def test_tokens_are_stored_hashed(tmp_path, capsys):
    db = ENGINE.new_db(tmp_path)
    args = ["receiver", "token", "create", "--scope", "read", "--owner", "ops", "--db", str(db)]
    assert main(args) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("lm_") and len(token) > 30
    rows = peek(db, "SELECT * FROM tokens")
    assert [(r["scope"], r["owners"]) for r in rows] == [("read", '["ops"]')]
    assert token not in repr(rows)
    if isinstance(db, Path):
        assert token.encode() not in db.read_bytes()


def test_a_later_count_updates_the_event_and_an_older_one_is_a_duplicate(receiver):
    def send(count: int) -> dict:
        answer = post(receiver, msgpack.packb({"events": [event(9, count=count, last_seen=count)]}))
        assert answer.status_code == 200
        return dict(answer.json())

    assert send(1)["accepted"] == ["ev-9"]
    assert send(40)["accepted"] == ["ev-9"]
    assert send(7)["duplicates"] == ["ev-9"]
    [stored] = receiver.escalations()
    assert stored["count"] == 40 and stored["last_seen"] == 40


def test_each_token_is_rate_limited_with_retry_after(tmp_path):
    from tests.helpers import make_receiver

    limited = make_receiver(tmp_path)
    limited.args = ("--rate", "0.5", "--burst", "2")
    limited.start()
    try:
        codes = [post(limited, msgpack.packb({"events": [event(n)]})) for n in range(3)]
        assert [c.status_code for c in codes] == [200, 200, 429]
        assert int(codes[2].headers["retry-after"]) >= 1
        assert len(limited.escalations()) == 2  # the refused one stored nothing
    finally:
        limited.stop()


def test_stats_are_totals_per_host_and_bad_ones_are_refused(receiver):
    def send(doc: object) -> httpx.Response:
        return httpx.post(
            f"{receiver.url}/v1/stats",
            content=msgpack.packb(doc),
            headers={"Authorization": f"Bearer {receiver.token}"},
            timeout=10,
        )

    row = STATS_ROW
    assert send({"host": "a", "stats": [row]}).status_code == 200
    # the latest report wins: an agent whose state was reset is right to report less
    assert send({"host": "a", "stats": [{**row, "matches": 4}]}).status_code == 200
    assert send({"host": "b", "stats": [{**row, "resolved": 1}]}).status_code == 200
    assert send({"host": "a", "stats": [{**row, "matches": -1}]}).status_code == 422
    assert send(["nope"]).status_code == 400
    assert httpx.post(f"{receiver.url}/v1/stats", content=b"{}").status_code == 401
    admin = {"Authorization": f"Bearer {receiver.admin}"}
    [total] = httpx.get(f"{receiver.url}/v1/stats", headers=admin).json()["stats"]
    assert (total["hosts"], total["matches"], total["resolved"]) == (2, 14, 3)
    tier1 = httpx.get(receiver.url + "/tier1?window=24h", headers=admin).text
    # this hour's reports: host a last said 4 matches and 2 fixed, host b 10 and 1
    assert 'id="rate">' in tier1 and "<td>14</td>" in tier1 and 'class="resolved">3<' in tier1


@pytest.mark.engines("sqlite")  # a file too big to grow; PostgreSQL down: test_receiver_cluster
def test_healthz_is_honest_when_the_database_refuses_writes(receiver):
    """A receiver whose database cannot be written says so (503), so no one trusts it."""
    import resource

    from tests.helpers import wait_for

    assert httpx.get(f"{receiver.url}/healthz", timeout=5).json() == {"ok": True}
    assert receiver.proc is not None
    pid = receiver.proc.pid
    unlimited = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, unlimited[1]))  # every write fails: EFBIG

    def health() -> httpx.Response:
        return httpx.get(f"{receiver.url}/healthz", timeout=15)

    try:  # the write is probed at most once a second: the next probe sees it
        answer = wait_for(lambda: (a := health()).status_code == 503 and a, timeout=10)
        assert answer and answer.json()["ok"] is False
        assert "the database refuses writes" in answer.json()["error"]
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)
    assert wait_for(lambda: health().status_code == 200, timeout=10)


def test_a_damaged_receiver_database_is_a_clear_error_at_start(tmp_path, capsys):
    db = tmp_path / "receiver.db"
    db.write_bytes(b"this is not a database, but it is long enough to look like one" * 20)
    assert main(["receiver", "--listen", "127.0.0.1:0", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {db}: cannot open the receiver database")
    assert "move it aside" in err and "Traceback" not in err


def test_idle_and_trickling_connections_neither_hold_descriptors_nor_delay_healthz(tmp_path):
    """A thousand connections that send nothing or trickle their headers: /healthz answers
    within a second, a trickle is cut off at the header deadline, and one address cannot
    hold more than its share."""
    import socket
    import time

    from tests.helpers import make_receiver, wait_for

    receiver = make_receiver(tmp_path)
    receiver.args = ("--header-timeout", "2", "--per-client", "60")
    receiver.start()
    sockets: list[socket.socket] = []
    try:
        for n in range(1000):  # from 20 loopback addresses, 50 each
            sock = socket.socket()
            sock.bind((f"127.0.0.{2 + n % 20}", 0))
            sock.connect(("127.0.0.1", receiver.port))
            sockets.append(sock)
        started = time.monotonic()
        assert httpx.get(f"{receiver.url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
        trickle = socket.create_connection(("127.0.0.1", receiver.port))
        trickle.sendall(b"POST /v1/escalations HTTP/1.1\r\nHost: x\r\n")
        opened = time.monotonic()
        closed_after = None
        for _ in range(40):  # one header byte every 0.25 s, for at most 10 s
            try:
                trickle.sendall(b"X")
                if trickle.recv(1, socket.MSG_DONTWAIT) == b"":
                    closed_after = time.monotonic() - opened
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed_after = time.monotonic() - opened
                break
            time.sleep(0.25)
        assert closed_after is not None and 1.5 <= closed_after <= 4.0, closed_after
        greedy = []
        for _ in range(70):  # one more address, past its share of 60
            sock = socket.socket()
            sock.bind(("127.0.0.99", 0))
            sock.connect(("127.0.0.1", receiver.port))
            greedy.append(sock)
        for sock in greedy:
            sock.setblocking(False)
        closed: set[int] = set()

        def refused() -> int:
            for index, sock in enumerate(greedy):
                try:
                    if sock.recv(1) == b"":
                        closed.add(index)
                except BlockingIOError:
                    pass
                except OSError:
                    closed.add(index)
            return len(closed)

        wait_for(lambda: refused() >= 10, timeout=5)
        assert refused() == 10  # exactly those past the cap
        sockets.extend(greedy)
        assert httpx.get(f"{receiver.url}/healthz", timeout=5).status_code == 200
    finally:
        for sock in sockets:
            sock.close()
        receiver.stop()


def test_tokens_are_listed_revoked_at_once_and_expire(tmp_path, capsys):
    """Ops can see every token (never the token itself), revoke one with effect from the
    next request, and give one an end."""
    import time

    from agent.receiver.scopes import Scope
    from agent.receiver.store import ReceiverStore
    from tests.helpers import make_receiver

    receiver = make_receiver(tmp_path).start()
    db = str(receiver.db)
    try:
        create = ["receiver", "token", "create", "--db", db]
        assert main([*create, "--scope", "read", "--owner", "team-b", "--name", "team-b"]) == 0
        other = capsys.readouterr().out.strip()
        assert (
            main([*create, "--scope", "write", "--owner", "t", "--name", "t", "--expires", "30d"])
            == 0
        )
        capsys.readouterr()
        store = ReceiverStore(receiver.db)
        ended = store.create_token(Scope.ADMIN, "old-fleet", expires=time.time() - 1)  # past
        store.close()

        def status(token: str) -> int:
            answer = httpx.get(
                f"{receiver.url}/v1/escalations",
                headers={"Authorization": f"Bearer {token}"},
                timeout=5,
            )
            return answer.status_code

        assert status(receiver.admin) == status(other) == 200
        assert status(ended) == 401
        assert main(["receiver", "token", "list", "--db", db]) == 0
        listing = capsys.readouterr().out
        rows = {line.split()[1]: line for line in listing.splitlines()[1:]}
        assert set(rows) == {"test-hosts", "central", "team-b", "t", "old-fleet"}
        assert " live " in rows["test-hosts"] and " expires " in rows["t"]
        assert rows["test-hosts"].split()[2] == "ingest" and rows["team-b"].split()[2] == "read"
        assert rows["test-hosts"].endswith("owners *; hosts *")
        assert rows["team-b"].endswith("owners team-b")
        assert " expired " in rows["old-fleet"]
        assert receiver.token not in listing and other not in listing and ended not in listing
        token_id = rows["team-b"].split()[0]
        assert main(["receiver", "token", "revoke", token_id, "--db", db]) == 0
        assert f"revoked token {token_id} (team-b)" in capsys.readouterr().out
        assert status(other) == 401  # at once: the running receiver checks every request
        assert status(receiver.admin) == 200
        assert main(["receiver", "token", "list", "--db", db]) == 0
        assert " revoked " in next(
            line for line in capsys.readouterr().out.splitlines() if "team-b" in line
        )
        assert main(["receiver", "token", "revoke", "abc", "--db", db]) == 1  # too short
        assert main(["receiver", "token", "revoke", "ffffffffffff", "--db", db]) == 1
        assert "no token with id ffffffffffff" in capsys.readouterr().err
    finally:
        receiver.stop()


HEALTH_POLLER = """
import sys, time, httpx
url, seconds = sys.argv[1], float(sys.argv[2])
until, worst = time.monotonic() + seconds, 0.0
with httpx.Client() as client:
    assert client.get(url + "/healthz", timeout=30).status_code == 200
    print("ready", flush=True)
    while time.monotonic() < until:
        started = time.monotonic()
        assert client.get(url + "/healthz", timeout=30).status_code == 200
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.02)
print(worst)
"""


def _peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


@pytest.mark.parametrize("kind", ["empty-maps", "big-events"])
def test_forty_parallel_4mib_bodies_keep_memory_and_healthz_bounded(tmp_path, kind):
    """Before: 40 bodies of 4 MiB at once reached 434 MB and an 8.4 s /healthz. Uploads
    are taken a few at a time now: peak RSS stays within 150 MB of idle, and /healthz,
    polled from another process the whole time, answers within a second."""
    import subprocess
    import sys

    from tests.helpers import make_receiver

    receiver = make_receiver(tmp_path)
    receiver.args = ("--rate", "0")
    receiver.start()
    assert receiver.proc is not None
    idle = _peak_mb(receiver.proc.pid)
    if kind == "empty-maps":  # 4 million {} in 4 MB: refused by the decoder's own bounds
        body = b"\x81\xa6events\xdd" + (4_000_000).to_bytes(4, "big") + b"\x80" * 4_000_000
        bodies, expected = [body] * 40, {400}
    else:  # valid: 4 events of 900 kB each, 3.4 MiB a body, all stored
        bodies = [
            msgpack.packb({"events": [event(10 * i + n, lines=["x" * 900_000]) for n in range(4)]})
            for i in range(40)
        ]
        expected = {200}
    poller = subprocess.Popen(
        [sys.executable, "-c", HEALTH_POLLER, receiver.url, "6"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert poller.stdout is not None and poller.stdout.readline() == "ready\n"
        with ThreadPoolExecutor(40) as pool:
            codes = set(pool.map(lambda b: post(receiver, b, timeout=60).status_code, bodies))
        out, _ = poller.communicate(timeout=30)
        assert poller.returncode == 0
        assert codes == expected
        assert float(out) < 1.0, f"/healthz took {float(out):.2f}s at worst"
        assert _peak_mb(receiver.proc.pid) - idle < 150
        if kind == "big-events":
            assert stored_rows(receiver) == 160
            page = httpx.get(
                f"{receiver.url}/v1/escalations?limit=1000",
                headers={"Authorization": f"Bearer {receiver.admin}"},
                timeout=30,
            ).json()
            assert len(page["escalations"]) < 10 and page["next_offset"] == len(page["escalations"])
    finally:
        poller.kill()
        receiver.stop()
