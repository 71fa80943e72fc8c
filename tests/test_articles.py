"""Issue 17, item 1 (the receiver's half): articles served to teams, found by error text.

A team publishes its packs' articles (`logmend pack publish`, the real CLI) to the
real receiver; anyone with that team's token asks `GET /v1/articles?q=LINE` and
gets the article whose pattern matches the line, with its fields (or whose words
hold the line's). No token sees another team's articles; no query or
publication wears the receiver down.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore
from tests.helpers import Receiver, write_pack

pytestmark = pytest.mark.usefixtures("engine")  # on SQLite and on PostgreSQL

PACK = """\
[[pattern]]
id = "stuck"
match = '''^queue stuck (?P<q>\\w+)$'''
article = "articles/a.md"

[[pattern.example]]
line = "queue stuck q1"

[[pattern]]
id = "slow"
match = '''^(a|aa)+$'''

[[pattern.example]]
line = "aaaa"
"""


def tokens(receiver: Receiver) -> dict[str, str]:
    store = ReceiverStore(receiver.db)
    try:
        return {
            "write-cache": store.create_token(Scope.WRITE, "ci-cache", ("team-cache",)),
            "read-cache": store.create_token(Scope.READ, "cache", ("team-cache",)),
            "read-web": store.create_token(Scope.READ, "web", ("team-web",)),
            "write-web": store.create_token(Scope.WRITE, "ci-web", ("team-web",)),
            "agent-cache": store.create_token(Scope.INGEST, "host-1", ("team-cache",), ("*",)),
        }
    finally:
        store.close()


def publish(receiver: Receiver, pack, token: str, tmp_path) -> subprocess.CompletedProcess[str]:
    token_file = tmp_path / "publish-token"
    token_file.write_text(token)
    return subprocess.run(
        [sys.executable, "-m", "agent", "pack", "publish", str(pack), "--url", receiver.url,
         "--token-file", str(token_file)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def ask(receiver: Receiver, token: str, q: str) -> httpx.Response:
    return httpx.get(
        f"{receiver.url}/v1/articles",
        params={"q": q},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_a_team_publishes_and_finds_its_article_by_the_error_line(tmp_path, receiver):
    t = tokens(receiver)
    pack = write_pack(tmp_path / "packs", "cache", PACK, owner="team-cache")
    done = publish(receiver, pack, t["write-cache"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "cache 1.2.3: 2 article(s) published" in done.stdout
    answer = ask(receiver, t["read-cache"], "queue stuck q9")
    assert answer.status_code == 200, answer.text
    [found] = answer.json()["articles"]
    assert (found["pack"], found["pattern"], found["found_by"]) == ("cache", "stuck", "pattern")
    assert found["fields"] == {"q": "q9"} and found["text"] == "# what to do\n"
    by_words = ask(receiver, t["read-cache"], "WHAT to")
    assert [a["found_by"] for a in by_words.json()["articles"]] == ["words"]
    assert ask(receiver, t["read-cache"], "nothing like it").json() == {"articles": []}


def test_no_team_sees_another_teams_articles_or_publishes_as_it(tmp_path, receiver):
    t = tokens(receiver)
    pack = write_pack(tmp_path / "packs", "cache", PACK, owner="team-cache")
    assert publish(receiver, pack, t["write-cache"], tmp_path).returncode == 0
    assert ask(receiver, t["read-web"], "queue stuck q9").json() == {"articles": []}
    posing = publish(receiver, pack, t["write-web"], tmp_path)  # owner team-cache
    assert posing.returncode == 1 and "answered 403" in posing.stderr
    agent = publish(receiver, pack, t["agent-cache"], tmp_path)  # a host's token: no
    assert agent.returncode == 1 and "answered 403" in agent.stderr
    assert ask(receiver, t["read-cache"], "x").status_code == 200
    assert ask(receiver, "not-a-token", "x").status_code == 401
    assert httpx.put(f"{receiver.url}/v1/articles", json={}, timeout=5).status_code == 401


def test_hostile_questions_and_publications_are_bounded(tmp_path, receiver):
    t = tokens(receiver)
    pack = write_pack(tmp_path / "packs", "cache", PACK, owner="team-cache")
    assert publish(receiver, pack, t["write-cache"], tmp_path).returncode == 0
    started = time.monotonic()
    answer = ask(receiver, t["read-cache"], "a" * 4000 + "!")  # the catastrophic regex
    assert answer.status_code == 200 and time.monotonic() - started < 5
    assert ask(receiver, t["read-cache"], "x" * 5000).status_code == 400
    assert ask(receiver, t["read-cache"], " ").status_code == 400
    headers = {"Authorization": f"Bearer {t['write-cache']}"}
    for body, status in (
        ({"pack": "p", "patterns": "no"}, 422),
        ({"pack": "p", "patterns": [{"pattern": "x", "match": "y" * 5000}]}, 422),
        ({"pack": "p\x1b", "patterns": []}, 422),
        ({"pack": "p", "patterns": [{"pattern": "x", "match": "(unclosed"}] * 2001}, 422),
        ({"pack": "p", "patterns": [{"pattern": "x", "match": "x(?:\\w{1000}){1000}"}]}, 422),
        ({"pack": "p", "patterns": [{"pattern": "x", "match": "^a$", "text": "t\x00"}]}, 422),
    ):
        put = httpx.put(f"{receiver.url}/v1/articles", json=body, headers=headers, timeout=10)
        assert put.status_code == status, (body if len(str(body)) < 200 else "...", put.text)
    # a regex that does not compile is stored, and only never found by pattern
    bad = {"pack": "p", "owner": "team-cache", "patterns": [{"pattern": "x", "match": "(unclosed",
           "text": "unclosed words"}]}  # fmt: skip
    assert (
        httpx.put(f"{receiver.url}/v1/articles", json=bad, headers=headers, timeout=10).status_code
        == 200
    )
    assert [
        a["pattern"] for a in ask(receiver, t["read-cache"], "unclosed").json()["articles"]
    ] == ["x"]


def test_the_console_page_finds_the_article_and_renders_it_safely(tmp_path, receiver):
    t = tokens(receiver)
    pack = write_pack(tmp_path / "packs", "cache", PACK, owner="team-cache")
    (pack / "articles" / "a.md").write_text(
        "# what to do\n\nRestart the **consumer**.\n\n<script>alert(1)</script>\n"
        "[evil](javascript:alert(1))\n"
    )
    assert publish(receiver, pack, t["write-cache"], tmp_path).returncode == 0

    def page(token: str, q: str) -> httpx.Response:
        return httpx.get(
            f"{receiver.url}/articles",
            params={"q": q},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    shown = page(t["read-cache"], "queue stuck q9")
    assert shown.status_code == 200, shown.text
    html = shown.text
    assert "cache/stuck" in html and "its pattern matches this line" in html
    assert "q = q9" in html and "<strong>consumer</strong>" in html
    assert "<script>" not in html.split("</head>", 1)[1] and 'href="javascript:' not in html
    assert "No article of team-web knows this line." in page(t["read-web"], "queue stuck q9").text
    assert page(t["read-cache"], "x" * 5000).status_code == 400
    assert httpx.get(
        f"{receiver.url}/articles", timeout=10, follow_redirects=False
    ).status_code in (
        303,
        401,
    )


def test_the_repeat_bound_reads_nesting_not_length():
    from agent.receiver.articles import repeats

    assert repeats(r"^\d{10} \S+ \d{3}$") == 10
    assert repeats(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12} [0-9a-f]{8}") == 12
    assert repeats(r"(\d{1,3}\.){3}\d{1,3}") == 9
    assert repeats(r"(?:\w{1000}){1000}") == 1_000_000
    assert repeats(r"((a{10}){10}){10}") == 1000
    assert repeats(r"\{1000\}[{]{5}x{") == 5
    assert repeats("((((") == 1 and repeats("))}{") == 1
