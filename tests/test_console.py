"""The console's routes in process: log in with a team token (session cookie, CSRF),
see only the team's groups, filter through the URL, open one, work it through its
forms, and every hostile value rendered inert. The real browser is in
tests/test_console_browser.py."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.receiver.console import render_article
from agent.receiver.scopes import Scope
from tests.helpers import wire_event
from tests.test_receiver_app import Api

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

NOW = time.time()


def event(n: int, **over: Any) -> dict[str, Any]:
    return wire_event(n, first_seen=NOW - 600, last_seen=NOW - 60, **over)


class Console(Api):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.client.follow_redirects = False
        self.a_write = self.store.create_token(Scope.WRITE, "wendy", ("team-a",))
        self.b_read = self.store.create_token(Scope.READ, "bob", ("team-b",))

    def login(self, token: str) -> Any:
        form = self.client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text
        return self.client.post("/login", data={"csrf": csrf.group(1), "token": token})

    def csrf(self, path: str) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.client.get(path).text)
        assert found
        return found.group(1)


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    made = Console(tmp_path)
    yield made
    made.close()


def test_logging_in_gives_a_signed_httponly_strict_session_and_never_the_token(console):
    assert console.client.get("/").headers["location"] == "/login"
    answer = console.login(console.a_write)
    assert (answer.status_code, answer.headers["location"]) == (303, "/")
    cookie = answer.headers["set-cookie"]
    assert "logmend_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert console.a_write not in cookie  # the token's hash, signed; never the token
    inbox = console.client.get("/")
    assert inbox.status_code == 200 and "wendy" in inbox.text and "team-a" in inbox.text


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("lm_" + "x" * 43, "that token is not valid"),
        ("not a token at all", "that token is not valid"),
        (None, "ingest token cannot log in"),
    ],
)
def test_a_bad_or_ingest_token_does_not_log_in(console, token, why):
    answer = console.login(token or console.token)
    assert answer.status_code == 401 and why in answer.text
    assert "logmend_session" not in answer.headers.get("set-cookie", "")


def test_a_login_post_without_its_form_is_refused(console):
    """Login CSRF: a post whose csrf does not match the login cookie opens nothing."""
    answer = console.client.post("/login", data={"csrf": "forged", "token": console.a_write})
    assert answer.status_code == 401 and "the login form expired" in answer.text


def test_a_team_sees_its_own_groups_and_the_filters_live_in_the_url(console):
    events = [
        event(1, pattern="upstream-timeout", host="web-1", key="/api"),
        event(2, pattern="upstream-timeout", host="web-2", key="/api", fingerprint="fp1"),
        event(3, pattern="oom", host="web-1", severity="critical"),
        event(4, owner="team-b", pattern="secret-of-b", host="db-1"),
    ]
    assert console.post({"events": events}).status_code == 200
    console.login(console.a_write)
    page = console.client.get("/").text
    assert page.count('class="group"') == 2  # ev-1 and ev-2 are one group (fp1)
    assert "secret-of-b" not in page
    assert "upstream-timeout" in page and ">2</td>" in page  # two hosts
    only = console.client.get("/?pattern=oom").text
    assert only.count('class="group"') == 1 and "oom" in only
    assert console.client.get("/?host=web-2").text.count('class="group"') == 1
    assert console.client.get("/?severity=critical").text.count('class="group"') == 1
    assert console.client.get("/?owner=team-b").text.count('class="group"') == 0  # not B's
    assert console.client.get("/?state=resolved").text.count('class="group"') == 0
    assert console.client.get("/?window=bogus").status_code == 400
    refresh = console.client.get("/?pattern=oom&sort=lines").text
    assert '<meta http-equiv="refresh" content="60">' in refresh  # reloads this same URL


def test_an_admin_sees_every_team_and_filters_by_owner(console):
    console.post({"events": [event(1), event(2, owner="team-b", fingerprint="b")]})
    console.login(console.admin)
    assert console.client.get("/").text.count('class="group"') == 2
    assert console.client.get("/?owner=team-b").text.count('class="group"') == 1


def test_a_group_is_worked_through_its_forms_and_a_stale_form_changes_nothing(console):
    console.post({"events": [event(1, key="k")]})
    console.login(console.a_write)
    [ref] = re.findall(r'data-ref="([0-9a-f]+)"', console.client.get("/").text)
    csrf = console.csrf(f"/g/{ref}")

    def act(**form: str) -> Any:
        return console.client.post(f"/g/{ref}", data={"csrf": csrf, **form})

    assert act(action="acknowledge").status_code == 303
    assert act(action="assign", assignee="dana").status_code == 303
    assert act(action="note", note="<b>looking</b>").status_code == 303
    refused = act(action="acknowledge")
    assert refused.status_code == 409 and "only an open group" in refused.text
    forged = console.client.post(f"/g/{ref}", data={"csrf": "x", "action": "resolve"})
    assert forged.status_code == 403
    assert act(action="snooze", **{"for": "1d"}).status_code == 303
    detail = console.client.get(f"/g/{ref}").text
    assert 'id="state">snoozed<' in detail and "assigned to <strong" in detail
    assert "note: &lt;b&gt;looking&lt;/b&gt;" in detail and "<b>looking</b>" not in detail
    assert "wendy" in detail and "matched on h1" in detail
    assert act(action="resolve").status_code == 303
    console.post({"events": [event(1, key="k", count=7)]})  # it comes back
    detail = console.client.get(f"/g/{ref}").text
    assert 'id="state">open<' in detail and 'id="regression"' in detail
    assert "regressed: reported by h1" in detail


def test_a_reader_sees_no_forms_and_cannot_post_them(console):
    console.post({"events": [event(1, owner="team-b")]})
    console.login(console.b_read)
    [ref] = re.findall(r'data-ref="([0-9a-f]+)"', console.client.get("/").text)
    detail = console.client.get(f"/g/{ref}").text
    assert 'id="actions"' not in detail
    csrf = re.search(r'name="csrf" value="([^"]+)"', detail)
    assert csrf  # the logout form's
    answer = console.client.post(f"/g/{ref}", data={"csrf": csrf.group(1), "action": "resolve"})
    assert answer.status_code == 403


def test_another_teams_group_is_absent_and_revoking_the_token_ends_the_session(console):
    console.post({"events": [event(1, owner="team-b")]})
    console.login(console.admin)
    [ref] = re.findall(r'data-ref="([0-9a-f]+)"', console.client.get("/").text)
    console.client.cookies.clear()
    console.login(console.a_write)
    assert console.client.get(f"/g/{ref}").status_code == 404
    [row] = [t for t in console.store.tokens() if t["name"] == "wendy"]
    console.store.revoke(row["id"])
    assert console.client.get("/").headers["location"] == "/login"


def test_logging_out_needs_the_forms_csrf(console):
    console.login(console.a_write)
    csrf = console.csrf("/")
    assert console.client.post("/logout", data={"csrf": "forged"}).status_code == 403
    assert console.client.get("/").status_code == 200
    out = console.client.post("/logout", data={"csrf": csrf})
    assert out.headers["location"] == "/login"
    assert console.client.get("/").status_code == 303


def test_the_detail_shows_lines_fields_attempts_and_the_article_inert(console):
    hostile = '<img src=x onerror="alert(1)">'
    attempts = [
        {
            "phase": "fix",
            "argv": ["scripts/fix.sh", hostile],
            "exit_code": 3,
            "duration": 0.25,
            "started": NOW - 300,
            "stdout": "tried " + hostile,
            "stderr": "",
        },
        {"phase": "verify", "argv": ["scripts/check.sh"], "exit_code": 0, "started": NOW - 299},
    ]
    article = (
        "# Disk full\n\nRun <script>alert(1)</script> **prune**.\n\n"
        "[docs](https://example.invalid/x) [bad](javascript:alert(1))\n"
    )
    console.post(
        {
            "events": [
                event(
                    1,
                    lines=[hostile],
                    fields={"path": hostile},
                    attempts=attempts,
                    article_text=article,
                    status="remedy-failed",
                )
            ]
        }
    )
    console.login(console.a_write)
    [ref] = re.findall(r'data-ref="([0-9a-f]+)"', console.client.get("/").text)
    page = console.client.get(f"/g/{ref}").text
    for tag in ("<img", "<script", 'href="javascript:'):
        assert tag not in page, page[max(0, page.find(tag) - 300) : page.find(tag) + 100]
    assert "&lt;img src=x" in page  # shown, as text
    assert "scripts/fix.sh" in page and ">3</td>" in page and "0.25 s" in page
    assert "fix on h1: exit 3" in page and "verify on h1: exit 0" in page
    assert "<h1>Disk full</h1>" in page and "<strong>prune</strong>" in page
    assert 'href="https://example.invalid/x"' in page


def test_articles_keep_only_harmless_markup():
    html = render_article(
        '<iframe src="x"></iframe>\n\n[a](data:text/html,hi) <a href="https://x.invalid"'
        ' onclick="y">z</a>\n\n```\n<b>code</b>\n```\n'
    )
    assert "<iframe" not in html and "<a " not in html  # no frame, no link made of these
    assert "&lt;iframe" in html  # shown as text: Markdown's raw HTML is off
    assert "&lt;b&gt;code&lt;/b&gt;" in html
