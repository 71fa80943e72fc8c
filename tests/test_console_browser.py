"""The console in a real headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium), against the real receiver on loopback.

A team lead logs in with the team's token, sees only the team's escalations,
filters, opens one, acknowledges and resolves it, sees it come back as a
regression when its agent reports it again, and is refused another team's.
Screenshots of the inbox, the detail page and the tier-1 view are saved under
the test's folder, and copied to $LOGMEND_SCREENSHOTS when it is set (that is
how docs/screenshots/ is made).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore
from tests.helpers import Receiver, make_receiver, wait_for, wire_event

pytestmark = pytest.mark.usefixtures("engine")  # each test on SQLite and on PostgreSQL

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")

NOW = time.time()
FIX_ATTEMPTS = [
    {
        "phase": "fix",
        "argv": ["scripts/clear-stale-pid.sh", "/var/lib/postgresql/15/main"],
        "exit_code": 1,
        "duration": 0.04,
        "started": NOW - 900,
        "stdout": "",
        "stderr": "postmaster.pid names a live process (pid 4242): not removed",
    },
    {
        "phase": "verify",
        "argv": ["scripts/check-postmaster.sh"],
        "exit_code": 1,
        "duration": 0.02,
        "started": NOW - 899,
        "stdout": "",
        "stderr": "still locked",
    },
]
ARTICLE = (
    "# A stale postmaster.pid\n\nPostgreSQL refuses to start while `postmaster.pid` names "
    "a process. The pack removes it **only** when no such process runs.\n\n"
    "1. Check `ps -p PID`.\n2. If it is another program, stop that first.\n"
)


def event(n: int, **over: Any) -> dict[str, Any]:
    base = {"first_seen": NOW - 1200 + n * 60, "last_seen": NOW - 300 + n}
    return wire_event(n, **{**base, **over})


EVENTS = [
    event(
        1,
        owner="data-platform",
        pack="postgresql",
        pattern="stale-postmaster-pid",
        host="db-01",
        key="/var/lib/postgresql/15/main",
        fingerprint="pg-stale",
        status="remedy-failed",
        severity="critical",
        count=3,
        lines=['FATAL:  lock file "postmaster.pid" already exists'],
        fields={"datadir": "/var/lib/postgresql/15/main"},
        attempts=FIX_ATTEMPTS,
        article_text=ARTICLE,
    ),
    event(
        2,
        owner="data-platform",
        pack="postgresql",
        pattern="stale-postmaster-pid",
        host="db-02",
        key="/var/lib/postgresql/15/main",
        fingerprint="pg-stale",
        status="remedy-failed",
        severity="critical",
        attempts=FIX_ATTEMPTS,
        article_text=ARTICLE,
    ),
    event(
        3,
        owner="data-platform",
        pack="postgresql",
        pattern="too-many-connections",
        host="db-01",
        key="app",
        fingerprint="pg-conns",
        status="no-remedy",
        severity="error",
        count=41,
        lines=["FATAL:  sorry, too many clients already"],
    ),
    event(
        4,
        owner="web-platform",
        pack="nginx",
        pattern="upstream-timeout",
        host="web-01",
        key="/api/cart",
        fingerprint="nginx-cart",
        status="no-remedy",
    ),
]


class Browser:
    def __init__(self, url: str, shots: Path) -> None:
        # not a skip: the README's test command installs them, and a test that quietly
        # does not run is no test
        assert CHROMIUM and DRIVER, "install Debian's chromium and chromium-driver"
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        options = Options()
        options.binary_location = str(CHROMIUM)
        for flag in (
            "--headless=new",
            "--no-sandbox",  # root in CI: Chromium's sandbox needs an unprivileged user
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-domain-reliability",
            # nothing but loopback: any other name resolves to nothing
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        ):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
        self.driver.set_page_load_timeout(20)
        self.url = url
        self.shots = shots

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self) -> str:
        return str(self.find("body").text)

    def reads(self, css: str, text: str) -> bool:
        """Whether the element shows `text` now; False while a page is being replaced
        (a click that posts a form navigates, and the old element goes stale)."""
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )

        try:
            return text in str(self.find(css).text)
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    def shot(self, name: str) -> None:
        self.shots.mkdir(parents=True, exist_ok=True)
        assert self.driver.save_screenshot(str(self.shots / f"{name}.png"))

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Receiver, dict[str, str]]]:
    receiver = make_receiver(tmp_path)
    store = ReceiverStore(receiver.db)
    tokens = {
        "lead": store.create_token(Scope.WRITE, "dana", ("data-platform",)),
        "web": store.create_token(Scope.READ, "wes", ("web-platform",)),
    }
    store.close()
    receiver.start()
    answer = httpx.post(
        receiver.url + "/v1/escalations",
        json={"events": EVENTS},
        headers={"Authorization": f"Bearer {receiver.token}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    stats = {
        "host": "db-01",
        "stats": [
            {"pack": "postgresql", "owner": "data-platform", "pattern": "stale-postmaster-pid",
             "matches": 14, "incidents": 6, "resolved": 4, "failed": 2, "escalated": 2},
        ],
    }  # fmt: skip
    httpx.post(
        receiver.url + "/v1/stats",
        json=stats,
        headers={"Authorization": f"Bearer {receiver.token}"},
        timeout=10,
    ).raise_for_status()
    now = time.time()
    unknown = {
        "host": "db-01",
        "templates": [
            {"owner": "data-platform", "id": 1, "count": 31, "first_seen": now - 7200,
             "last_seen": now, "template": "FATAL could not map shared segment <HEX>: <*>",
             "samples": ["FATAL could not map shared segment 0x7f3a2c: ENOMEM"]},
            {"owner": "web-platform", "id": 2, "count": 5, "first_seen": now - 60,
             "last_seen": now, "template": "upstream cache <NUM> wedged",
             "samples": ["upstream cache 3 wedged"]},
        ],
    }  # fmt: skip
    httpx.post(
        receiver.url + "/v1/unknown",
        json=unknown,
        headers={"Authorization": f"Bearer {receiver.token}"},
        timeout=10,
    ).raise_for_status()
    try:
        yield receiver, tokens
    finally:
        receiver.stop()


def test_a_team_lead_works_an_escalation_in_a_real_browser(site, tmp_path):
    receiver, tokens = site
    browser = Browser(receiver.url, tmp_path / "screenshots")
    try:
        browser.open("/")
        assert browser.driver.current_url.endswith("/login")
        browser.find("#token").send_keys(tokens["lead"])
        browser.find("#login").click()
        assert wait_for(lambda: browser.reads("#groups", "postgresql"), timeout=10)
        inbox = browser.text()
        assert "stale-postmaster-pid" in inbox and "too-many-connections" in inbox
        assert "upstream-timeout" not in inbox  # web-platform's: not this team's
        assert len(browser.all("tr.group")) == 2
        browser.shot("inbox")

        # filter: the choice lands in the URL, and the view keeps it
        browser.find("input[name=pattern]").send_keys("stale-postmaster-pid")
        browser.find("#apply").click()
        assert wait_for(lambda: "pattern=stale-postmaster-pid" in browser.driver.current_url)
        assert wait_for(lambda: len(browser.all("tr.group")) == 1)

        browser.find("tr.group a").click()
        assert wait_for(lambda: browser.reads("#timeline", "matched on"), timeout=10)
        detail = browser.text()
        assert "db-01" in detail and "db-02" in detail and "remedy-failed" in detail
        assert "postmaster.pid names a live process" in detail  # the fix's output tail
        assert "A stale postmaster.pid" in detail  # the article, rendered
        assert browser.find("#article h1").text == "A stale postmaster.pid"
        group_url = browser.driver.current_url

        browser.find("#do-acknowledge").click()
        assert wait_for(lambda: browser.reads("#state", "acknowledged"))
        browser.find("#assignee-input").send_keys("dana")
        browser.find("#do-assign").click()
        assert wait_for(lambda: browser.reads("#assignee", "dana"))
        browser.find("#note-input").send_keys("db-01's disk was replaced; watching")
        browser.find("#do-note").click()
        assert wait_for(lambda: browser.reads("#timeline", "watching"))
        browser.shot("detail")
        browser.find("#do-resolve").click()
        assert wait_for(lambda: browser.reads("#state", "resolved"))

        # the agent on db-01 reports the same incident again: a regression
        again = {**EVENTS[0], "count": 9, "last_seen": time.time()}
        answer = httpx.post(
            receiver.url + "/v1/escalations",
            json={"events": [again]},
            headers={"Authorization": f"Bearer {receiver.token}"},
            timeout=10,
        )
        assert answer.json()["accepted"] == [again["id"]]
        browser.driver.get(group_url)
        assert wait_for(lambda: browser.reads("#state", "open"))
        assert browser.find("#regression").text == "regression"
        assert "regressed: reported by db-01" in browser.text()

        browser.open("/tier1")
        assert "4 fixed on the host" in browser.text() and browser.find("#rate").text == "67%"
        assert browser.reads("#failing", "db-01")  # where fixes fail most
        browser.shot("tier1")

        # errors no pack knows yet: this team's, and a pattern drafted from one
        browser.find("header a[href='/unknown']").click()
        assert wait_for(lambda: browser.reads("#unknown", "could not map shared segment"))
        assert "upstream cache" not in browser.text()  # web-platform's
        assert browser.find("tr.unknown .count").text == "31"
        browser.shot("unknown")
        browser.find("tr.unknown a.draft").click()
        assert wait_for(lambda: browser.reads("#draft", "[[pattern.example]]"))
        assert "0x7f3a2c: ENOMEM" in browser.find("#draft").text

        # another team's escalation, by its URL, is refused
        browser.driver.delete_all_cookies()
        browser.open("/login")
        browser.find("#token").send_keys(tokens["web"])
        browser.find("#login").click()
        assert wait_for(lambda: browser.reads("#groups", "upstream-timeout"), timeout=10)
        browser.driver.get(group_url)
        assert "no such escalation" in browser.find("#refused").text
    finally:
        browser.close()
    keep = os.environ.get("LOGMEND_SCREENSHOTS")
    if keep:
        for shot in (tmp_path / "screenshots").glob("*.png"):
            shutil.copy(shot, Path(keep) / shot.name)
    assert {p.name for p in (tmp_path / "screenshots").glob("*.png")} == {
        "inbox.png",
        "detail.png",
        "tier1.png",
        "unknown.png",
    }
