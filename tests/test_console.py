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

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
    pytest.mark.usefixtures("engine"),  # each test on SQLite and on PostgreSQL
]

NOW = time.time()


def event(n: int, **over: Any) -> dict[str, Any]:
    return wire_event(n, **{"first_seen": NOW - 600, "last_seen": NOW - 60, **over})


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
    console.post({"events": [event(1, key="k", count=7, last_seen=time.time())]})  # back
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


def test_a_silence_keeps_a_pattern_out_of_the_inbox_and_from_regressing_until_lifted(console):
    console.post({"events": [event(1, key="k", host="db-1")]})
    console.login(console.a_write)
    [ref] = re.findall(r'data-ref="([0-9a-f]+)"', console.client.get("/").text)
    csrf = console.csrf(f"/g/{ref}")

    def act(**form: str) -> Any:
        answer = console.client.post(f"/g/{ref}", data={"csrf": csrf, **form})
        assert answer.status_code == 303, answer.text
        return answer

    act(action="resolve")
    act(action="silence", host="", note="maintenance window", **{"for": "1d"})
    assert console.client.get("/").text.count('class="group"') == 0  # out of the inbox
    assert console.client.get("/?state=silenced").text.count('class="group"') == 1
    console.post({"events": [event(1, key="k", host="db-1", count=5)]})  # comes back, silenced
    detail = console.client.get(f"/g/{ref}").text
    assert 'id="state">resolved<' in detail and 'id="regression"' not in detail
    assert 'id="silenced"' in detail and "silenced everywhere until" in detail
    assert "maintenance window" in detail
    [silence] = re.findall(r'name="silence" value="(\d+)"', detail)
    act(action="unsilence", silence=silence)
    assert console.client.get("/?state=all").text.count("silenced</span>") == 0
    back = event(1, key="k", host="db-1", count=9, last_seen=time.time())
    console.post({"events": [back]})  # back, not silenced
    detail = console.client.get(f"/g/{ref}").text
    assert 'id="state">open<' in detail and 'id="regression"' in detail
    assert f"lifted silence {silence}" in detail


def test_a_silence_on_one_host_does_not_hide_another_host(console):
    console.post({"events": [event(1, key="k", host="db-1")]})
    console.login(console.a_write)
    [ref] = re.findall(r'data-ref="([0-9a-f]+)"', console.client.get("/").text)
    csrf = console.csrf(f"/g/{ref}")
    form = {"csrf": csrf, "action": "silence", "host": "db-1", "for": "1h"}
    assert console.client.post(f"/g/{ref}", data=form).status_code == 303
    assert console.client.get("/").text.count('class="group"') == 0  # its only host
    console.post({"events": [event(1, key="k", host="db-1", count=4)]})
    assert console.client.get("/").text.count('class="group"') == 0
    console.post({"events": [event(2, key="k", host="db-2")]})  # the same problem, elsewhere
    assert console.client.get("/").text.count('class="group"') == 1


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        ({"action": "silence", "until": NOW + 91 * 86400}, 422),
        ({"action": "silence"}, 422),
        ({"action": "silence", "until": NOW + 60, "host": "a\nb"}, 422),
        ({"action": "unsilence", "silence": 2**70}, 422),
        ({"action": "unsilence", "silence": 12345}, 409),
        ({"action": "unsilence"}, 422),
        ({"action": "silence", "until": NOW + 3 * 3600, "host": "db-1"}, 200),  # runs later
    ],
)
def test_silences_through_the_api_are_checked(console, doc, code):
    console.post({"events": [event(1)]})
    [row] = console.listed()
    answer = console.client.patch(
        f"/v1/escalations/{row['ref']}", json=doc, headers=console.auth(console.a_write)
    )
    assert answer.status_code == code, answer.text


def test_hosts_show_when_each_was_heard_from_its_packs_and_flag_the_quiet_ones(console):
    from tests.helpers import STATS_ROW, poke

    doc = {
        "agent": {"host": "web-1", "version": "0.9.1"},
        "events": [event(1, host="web-1", pack="nginx", pack_version="2.0.0")],
    }
    assert console.post(doc).status_code == 200
    row = {**STATS_ROW, "owner": "team-a", "pack": "gunicorn", "matches": 12, "resolved": 3}
    assert console.post({"host": "web-2", "stats": [row]}, path="/v1/stats").status_code == 200
    console.post({"events": [event(2, host="db-9", owner="team-b")]})
    # web-2 last spoke an hour ago
    poke(
        console.store.where, "UPDATE hosts SET last_heard = last_heard - 3600 WHERE host = 'web-2'"
    )
    console.login(console.a_write)
    page = console.client.get("/hosts").text
    assert "web-1" in page and "web-2" in page and "db-9" not in page  # not team-b's
    assert page.count('class="host quiet"') == 1 and page.index("web-2") < page.index("web-1")
    assert "nginx 2.0.0" in page and "0.9.1" in page and "gunicorn" in page
    assert ">12</td>" in page and ">3</td>" in page


def test_an_admin_creates_lists_and_revokes_tokens_and_sees_the_owners(console):
    console.post({"events": [event(1), event(2, owner="team-b", fingerprint="b")]})
    console.login(console.admin)
    csrf = console.csrf("/admin/tokens")
    form = {"csrf": csrf, "scope": "ingest", "name": "db-fleet", "owners": "team-b",
            "hosts": "db-*", "expires": "30"}  # fmt: skip
    made = console.client.post("/admin/tokens", data=form)
    assert made.status_code == 201
    [token] = re.findall(r'<pre id="new-token">(lm_[^<]+)</pre>', made.text)
    assert console.post({"events": [event(3, owner="team-b", host="db-1")]}, token=token).json()[
        "accepted"
    ] == ["ev-3"]
    page = console.client.get("/admin/tokens").text
    assert "db-fleet" in page and token not in page  # listed by id, never shown again
    assert "owners team-b; hosts db-*" in page and "live, until" in page
    assert ">team-a</a>" in page and ">team-b</a>" in page  # the owners
    bad = console.client.post("/admin/tokens", data={**form, "owners": ""})
    assert bad.status_code == 400 and "needs --owner" in bad.text
    [token_id] = [t["id"] for t in console.store.tokens() if t["name"] == "db-fleet"]
    forged = console.client.post("/admin/tokens/revoke", data={"csrf": "x", "id": token_id})
    assert forged.status_code == 403
    revoked = console.client.post("/admin/tokens/revoke", data={"csrf": csrf, "id": token_id})
    assert revoked.status_code == 303
    assert console.post({"events": [event(4, owner="team-b")]}, token=token).status_code == 401


def test_a_team_token_gets_no_admin_page(console):
    console.login(console.a_write)
    assert console.client.get("/admin/tokens").status_code == 403
    csrf = console.csrf("/")
    answer = console.client.post(
        "/admin/tokens", data={"csrf": csrf, "scope": "admin", "name": "me-too"}
    )
    assert answer.status_code == 403
    assert "me-too" not in {t["name"] for t in console.store.tokens()}


def test_a_backlog_from_before_a_resolution_does_not_reopen_it(console):
    """An agent that was cut off delivers, after the group was resolved, updates of
    what it saw before: those are not the problem coming back."""
    console.post({"events": [event(1, key="k")]})
    [row] = console.listed()
    answer = console.client.patch(
        f"/v1/escalations/{row['ref']}",
        json={"action": "resolve"},
        headers=console.auth(console.a_write),
    )
    assert answer.json()["state"] == "resolved"
    console.post({"events": [event(1, key="k", count=8, last_seen=NOW - 30)]})  # seen before
    group = console.client.get(
        f"/v1/escalations/{row['ref']}", headers=console.auth(console.a_write)
    ).json()["group"]
    assert (group["state"], group["regression"]) == ("resolved", False)
    console.post({"events": [event(1, key="k", count=9, last_seen=time.time() + 1)]})
    group = console.client.get(
        f"/v1/escalations/{row['ref']}", headers=console.auth(console.a_write)
    ).json()["group"]
    assert (group["state"], group["regression"]) == ("open", True)


def test_silences_cover_groups_by_their_hosts_and_lifting_one_leaves_the_others(console):
    """A silence on h1 leaves a group seen on h1 and h2 in the inbox, even when h1
    reports again; an everywhere silence covers every group of the pattern at once;
    lifting the host silence leaves the everywhere one in force."""
    console.post({"events": [event(1, host="h1", fingerprint="two"), event(2, host="h2",
                  fingerprint="two"), event(3, host="h1", fingerprint="other", key="k2")]})  # fmt: skip
    console.login(console.a_write)
    refs = dict(
        zip(
            re.findall(r'class="key muted">([^<]*)<', console.client.get("/").text),
            re.findall(r'data-ref="([0-9a-f]+)"', console.client.get("/").text),
            strict=True,
        )
    )
    ref = refs["k2"]  # the group seen on h1 only
    csrf = console.csrf(f"/g/{ref}")

    def act(**form: str) -> None:
        answer = console.client.post(f"/g/{ref}", data={"csrf": csrf, **form})
        assert answer.status_code == 303, answer.text

    act(action="silence", host="h1", **{"for": "1d"})
    assert console.client.get("/").text.count('class="group"') == 1  # h1-only group hidden
    console.post({"events": [event(4, host="h1", fingerprint="two", last_seen=time.time())]})
    assert console.client.get("/").text.count('class="group"') == 1  # "two" still shows (h2)
    act(action="silence", host="", **{"for": "1h"})
    assert console.client.get("/").text.count('class="group"') == 0  # everything, at once
    detail = console.client.get(f"/g/{ref}").text
    host_silence = re.findall(r'name="silence" value="(\d+)"', detail)[0]
    act(action="unsilence", silence=host_silence)
    assert console.client.get("/").text.count('class="group"') == 0  # everywhere still holds
