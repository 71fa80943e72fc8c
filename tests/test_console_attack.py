"""Attacks on the console (issue 14): each test here shows a flaw found by review, and
fails until it is fixed. In process (Starlette's TestClient) unless a real browser is
needed to show it (Debian's chromium, as tests/test_console_browser.py)."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from itsdangerous import URLSafeTimedSerializer

from agent.receiver.scopes import Scope
from agent.receiver.store import PAGE_BYTES, ReceiverStore
from tests.helpers import make_receiver, peek, wait_for
from tests.test_console import Console, event
from tests.test_console_browser import Browser

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
    pytest.mark.usefixtures("engine"),  # each test on SQLite and on PostgreSQL
]


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    made = Console(tmp_path)
    yield made
    made.close()


def only_ref(console: Console) -> str:
    [ref] = re.findall(r'data-ref="([0-9a-f]+)"', console.client.get("/?state=all").text)
    return ref


# 1. inputs that give a 500 --------------------------------------------------------------


def test_a_non_ascii_csrf_on_the_login_form_is_not_a_500(console):
    """hmac.compare_digest raises TypeError on non-ASCII str: anyone, unauthenticated."""
    console.client.get("/login")  # a valid login cookie, as any visitor gets
    answer = console.client.post("/login", data={"csrf": "é", "token": console.a_write})
    assert answer.status_code != 500
    assert answer.status_code == 401


def test_a_non_ascii_csrf_on_logout_and_workflow_forms_is_not_a_500(console):
    console.post({"events": [event(1)]})
    console.login(console.a_write)
    ref = only_ref(console)
    act = console.client.post(f"/g/{ref}", data={"csrf": "ü", "action": "resolve"})
    out = console.client.post("/logout", data={"csrf": "ü"})
    assert (act.status_code, out.status_code) == (403, 403)


@pytest.mark.parametrize("page", ["²", "³", "①"])
def test_an_inbox_page_number_of_unicode_digits_is_a_400_not_a_500(console, page):
    """str.isdigit() is true for '²' but int('²') raises: InboxView.parse lets it through."""
    console.login(console.a_write)
    assert console.client.get("/", params={"page": page}).status_code == 400


@pytest.mark.parametrize(
    "attempt",
    [
        {"phase": "fix", "started": 1e20, "exit_code": 1},  # time.gmtime overflows
        {"phase": "fix", "started": -1e20, "exit_code": 1},
        {"phase": "fix", "argv": 5, "exit_code": 1},  # join of an int
        {"phase": "fix", "argv": True, "exit_code": 1},
    ],
)
def test_one_agents_odd_attempt_does_not_break_its_groups_page(console, attempt):
    """An ingest token stores any finite number or type inside attempts[]; the detail
    page then answers 500 to everyone, for every escalation in that group, until the
    escalation is gone (another host's agent can do it to a group it shares)."""
    assert console.post({"events": [event(1, attempts=[attempt])]}).status_code == 200
    console.login(console.a_write)
    ref = only_ref(console)
    assert console.client.get(f"/g/{ref}").status_code == 200


def test_group_refs_cannot_collide_into_a_500_on_ingest(console):
    """group_ref joins owner and fingerprint with NUL, which neither may hold...
    but both may: ("team-a\\0x", "y") and ("team-a", "x\\0y") share a ref, the UNIQUE
    ref constraint fires, and the whole batch is a 500 (an ingest token for '*', such
    as every token from before scopes, can plant the first to block the second)."""
    events = [
        event(10, owner="team-a\0x", fingerprint="y"),
        event(11, owner="team-a", fingerprint="x\0y"),
    ]
    answer = console.post({"events": events})
    assert answer.status_code != 500


# 2. sessions ---------------------------------------------------------------------------


def test_logging_out_ends_the_session_not_only_the_browsers_copy(console):
    """Logout only asks the browser to drop the cookie: a copy taken before (a shared
    machine, a proxy log, a stolen cookie jar) opens the console for 12 hours more."""
    console.post({"events": [event(1)]})
    console.login(console.a_write)
    stolen = console.client.cookies.get("logmend_session")
    assert stolen
    out = console.client.post("/logout", data={"csrf": console.csrf("/")})
    assert out.status_code == 303
    console.client.cookies.clear()
    console.client.cookies.set("logmend_session", stolen)
    assert console.client.get("/").status_code == 303  # to the login page


def test_the_database_alone_does_not_open_an_admin_session(console):
    """The cookie holds the token's hash, and the database holds both every token's
    hash and the secret that signs cookies: a copy of the database (a backup) forges a
    session for any token, admin included, without knowing a single token. Before
    the console a leaked database gave hashes that opened nothing."""
    console.post({"events": [event(1, owner="team-b")]})
    [admin] = peek(console.store.where, "SELECT hash FROM tokens WHERE name='central'")
    [meta] = peek(console.store.where, "SELECT value FROM meta WHERE key='session'")
    admin_hash, secret = admin["hash"], meta["value"]
    forged = URLSafeTimedSerializer(secret, salt="logmend-console").dumps(
        {"h": admin_hash, "c": "chosen"}
    )
    console.client.cookies.set("logmend_session", forged)
    inbox = console.client.get("/")
    assert inbox.status_code == 303, "a forged admin session read every team's inbox"


# 3. bounds -----------------------------------------------------------------------------


def test_a_groups_timeline_is_bounded_in_the_api_and_the_page(console):
    """store.group() loads every action of a group (no LIMIT), on every detail view,
    every GET /v1/escalations/{ref} and every PATCH answer: notes (4000 characters
    each, as many as a write token likes) grow them without end. Seeded in SQL here,
    as 3000 PATCHes would take a minute under the rate limit."""
    console.post({"events": [event(1)]})
    ref = only_ref_admin(console)
    [row] = peek(console.store.where, "SELECT owner, fingerprint FROM groups WHERE ref=?", ref)
    key = (row["owner"], row["fingerprint"])
    console.store._engine.write(
        lambda db: db.executemany(
            "INSERT INTO actions (owner, fingerprint, at, who, verb, detail) VALUES (?,?,?,?,?,?)",
            [(*key, time.time(), "wendy", "note", "n" * 4000)] * 3000,
        )
    )
    [esc] = console.listed()
    got = console.client.get(f"/v1/escalations/{esc['ref']}", headers=console.auth(console.admin))
    patched = console.client.patch(
        f"/v1/escalations/{esc['ref']}",
        content=json.dumps({"action": "note", "note": "one more"}),
        headers=console.auth(console.a_write),
    )
    assert patched.status_code == 200
    assert len(got.content) < PAGE_BYTES, f"GET answered {len(got.content)} bytes"
    assert len(patched.content) < PAGE_BYTES, f"PATCH answered {len(patched.content)} bytes"


def only_ref_admin(console: Console) -> str:
    console.client.cookies.clear()
    console.login(console.admin)
    ref = only_ref(console)
    console.client.cookies.clear()
    return ref


def test_a_groups_page_does_not_amplify_what_an_agent_stored(console):
    """Attempts are rendered one table row each, with no cap: `{}` is 4 bytes stored
    and ~55 bytes of HTML. Two 1 MB events (of the 4 MiB a page may load) give a
    page of ~28 MB taking seconds of CPU; five give 69 MB in ~23 s, on each view."""
    for n in range(2):
        big = event(n, fingerprint="big", host=f"h{n}", attempts=[{}] * 250_000)
        assert console.post({"events": [big]}, as_json=True).status_code == 200
    console.login(console.a_write)
    ref = only_ref(console)
    page = console.client.get(f"/g/{ref}")
    assert page.status_code == 200
    assert len(page.content) < 4 * PAGE_BYTES, f"a page of {len(page.content)} bytes"


def test_the_inbox_is_bounded_in_bytes_as_the_api_is(console):
    """A group's key is kept whole (up to 1 MiB) and shown whole in every inbox row,
    escaped ('<' is 4 bytes): 50 rows a page make ~200 MB, refreshed every 60 s by
    every open inbox. Five groups already pass 16 MiB."""
    for n in range(5):
        bomb = event(n, fingerprint=f"k{n}", key="<" * 1_000_000)
        assert console.post({"events": [bomb]}, as_json=True).status_code == 200
    console.login(console.a_write)
    inbox = console.client.get("/")
    assert inbox.status_code == 200
    assert len(inbox.content) < 4 * PAGE_BYTES, f"an inbox of {len(inbox.content)} bytes"


def test_an_article_does_not_make_a_groups_page_take_seconds(console):
    """markdown-it-py is pure Python (~20 µs a character on some input): an article of
    up to 1 MiB in an event, rendered on every view, holds one of the 4 read slots
    (shared with the API, for every team) and the GIL for ~10-20 s."""
    article = "![" * 200_000  # 400 KB
    assert (
        console.post({"events": [event(1, article_text=article)]}, as_json=True).status_code == 200
    )
    console.login(console.a_write)
    ref = only_ref(console)
    started = time.monotonic()
    page = console.client.get(f"/g/{ref}")
    took = time.monotonic() - started
    assert page.status_code == 200
    assert took < 2.0, f"the page took {took:.1f} s"


# 4. workflow values --------------------------------------------------------------------


def test_a_note_given_with_another_action_is_held_to_the_notes_bounds(console):
    """MAX_NOTE (4000) and "not blank" are checked for the note verb only; any other
    verb records its note unchecked in the timeline (console form or PATCH)."""
    console.post({"events": [event(1)]})
    [esc] = console.listed()
    answer = console.client.patch(
        f"/v1/escalations/{esc['ref']}",
        content=json.dumps({"action": "acknowledge", "note": "x" * 12_000}),
        headers=console.auth(console.a_write),
    )
    notes = [len(a["detail"]) for a in answer.json().get("timeline", [])]
    assert answer.status_code == 422 or max(notes, default=0) <= 4000, notes


# 5. in a real browser ------------------------------------------------------------------


class Attacker:
    """A page on another site (127.0.0.2 is not 127.0.0.1's site) that posts a form."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.2:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TwoSiteBrowser(Browser):
    """tests/test_console_browser.py's browser, that also reaches the attacker on
    127.0.0.2 (still loopback only)."""

    def __init__(self, url: str, shots: Path) -> None:
        import selenium.webdriver.chrome.options as chrome_options

        real = chrome_options.Options.add_argument

        def add_argument(options: Any, flag: str) -> None:
            if flag.startswith("--host-resolver-rules="):
                flag += " , EXCLUDE 127.0.0.2"
            real(options, flag)

        chrome_options.Options.add_argument = add_argument  # type: ignore[method-assign]
        try:
            super().__init__(url, shots)
        finally:
            chrome_options.Options.add_argument = real  # type: ignore[method-assign]


def login(browser: Browser, token: str) -> None:
    browser.open("/login")
    browser.find("#token").send_keys(token)
    browser.find("#login").click()
    assert wait_for(lambda: "Inbox" in browser.driver.title, 10), browser.text()


def test_another_site_cannot_log_a_browser_out(tmp_path):
    """POST /logout checks the CSRF token only when the session cookie came with the
    request; a cross-site post comes without it (SameSite=Strict), so it is not
    checked, and the answer's Set-Cookie deletes the session: any site logs the
    console's users out, as often as it likes."""
    receiver = make_receiver(tmp_path)
    store = ReceiverStore(receiver.db)
    lead = store.create_token(Scope.WRITE, "dana", ("team-a",))
    store.close()
    receiver.start()
    browser = TwoSiteBrowser(receiver.url, tmp_path / "shots")
    attacker = Attacker(
        f'<form id=f method=post action="{receiver.url}/logout"></form>'
        "<script>document.getElementById('f').submit()</script>"
    )
    try:
        login(browser, lead)
        browser.driver.get(attacker.url)
        assert wait_for(lambda: "/login" in browser.driver.current_url, 10)
        browser.open("/")
        assert "Inbox" in browser.driver.title, "another site logged the user out"
    finally:
        attacker.stop()
        browser.close()
        receiver.stop()


@pytest.mark.parametrize("field", ["host", "pattern", "pack", "status", "owner", "id"])
@pytest.mark.parametrize("mark", ["\u202e", "\u2066", "\u200f", "\x00", "\x1b"])
def test_a_name_cannot_reorder_what_follows_it_on_the_page(console, field, mark):
    """Before: names were checked for UTF-8 only: a host "web-1\\u202e" (RIGHT-TO-LEFT
    OVERRIDE, never closed) reversed the rest of the line it was shown on in the
    browser (the submitter's name read backwards), and a NUL let two names join into
    one key. Now a name with a control or format character is refused at the door,
    and free text (lines, keys, output) is shown in bidi-isolated elements."""
    answer = console.post({"events": [event(1, **{field: f"web-1{mark}"})]}, as_json=True)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == f"events[0].{field} has a control or format character"


def test_one_teams_console_views_do_not_starve_another_teams_reads(tmp_path):
    """Console pages take one of the 4 read slots the API's reads share, without the
    API's cap of 2 answers in flight per token nor its rate limit. Team A's agent
    stores a slow article (above), a browser of team A opens its page 4 times at once,
    and team B's API read is refused 503 ("busy") after waiting 10 s."""
    receiver = make_receiver(tmp_path)
    store = ReceiverStore(receiver.db)
    a_read = store.create_token(Scope.READ, "alice", ("team-a",))
    b_read = store.create_token(Scope.READ, "bob", ("team-b",))
    store.close()
    receiver.start()
    try:
        stored = httpx.post(
            receiver.url + "/v1/escalations",
            json={"events": [event(1, article_text="![" * 200_000)]},
            headers={"Authorization": f"Bearer {receiver.token}"},
            timeout=20,
        )
        assert stored.status_code == 200, stored.text
        browser = httpx.Client(base_url=receiver.url, timeout=60)
        form = browser.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf
        assert (
            browser.post("/login", data={"csrf": csrf.group(1), "token": a_read}).status_code == 303
        )
        [ref] = re.findall(r'data-ref="([0-9a-f]+)"', browser.get("/?state=all").text)
        cookies = dict(browser.cookies)

        sent = threading.Semaphore(0)

        def view() -> None:
            hooks = {"request": [lambda request: sent.release()]}
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.Client(cookies=cookies, event_hooks=hooks) as client,
            ):
                client.get(f"{receiver.url}/g/{ref}", timeout=60)

        for _ in range(4):
            threading.Thread(target=view, daemon=True).start()
        for _ in range(4):  # the four views are on their way before team B reads
            assert sent.acquire(timeout=10)
        started = time.monotonic()
        answer = httpx.get(
            receiver.url + "/v1/escalations",
            headers={"Authorization": f"Bearer {b_read}"},
            timeout=25,
        )
        took = time.monotonic() - started
        assert answer.status_code == 200, f"team B refused {answer.status_code} after {took:.0f} s"
    finally:
        assert receiver.proc is not None
        receiver.proc.kill()  # not stop(): a graceful end waits for the renders
        receiver.proc.wait(timeout=10)
