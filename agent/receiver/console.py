"""The tier-2 console: a team's inbox of escalation groups, each group's detail, and
the workflow on it, as server-rendered pages.

People log in with their team's token once; the browser then holds a signed,
HttpOnly, SameSite=Strict session cookie with the token's hash (never the
token), checked against the database on every request, so revoking the token
ends the session at once. Every form carries a CSRF token bound to the session.
Templates are Jinja2 with autoescaping; knowledge articles are rendered from
Markdown and sanitised with nh3 (ammonia's allow-list). No script runs.
"""

from __future__ import annotations

import hmac
import math
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nh3
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markdown_it import MarkdownIt
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from agent.receiver.articles import MAX_QUERY
from agent.receiver.inbox import BadView, InboxView
from agent.receiver.scopes import Action, Forbidden, Identity, Scope
from agent.receiver.store import ReceiverStore, token_hash
from agent.receiver.storebase import is_ref
from agent.receiver.tier1 import WINDOWS as TIER1_WINDOWS
from agent.receiver.tier1 import added_up
from agent.receiver.unknown import SORTS as UNKNOWN_SORTS
from agent.receiver.workflow import Action as WorkflowAction
from agent.receiver.workflow import BadAction, Group, State, Verb, WorkflowError

SESSION = "logmend_session"
LOGIN = "logmend_login"
SESSION_AGE = 12 * 3600  # seconds a login lasts (the token's own end comes first)
LOGIN_AGE = 600
PAGE_SIZE = 50
SUMMARY_ROWS = 500
QUIET = 15 * 60  # seconds without a word from a host before it is flagged
OCCURRENCES = 20  # escalations on a detail page, the most recent
ARTICLE_CHARS = 10_000  # of an article rendered on a page
ATTEMPTS = 20  # attempts shown of each escalation, the last
LINES = 50  # sample lines shown of each escalation
REFRESH = 60  # seconds between the inbox's own reloads
SNOOZES = {"1h": 3600.0, "1d": 86400.0, "1w": 7 * 86400.0, "30d": 30 * 86400.0}
ARTICLE_TAGS = {
    "p", "h1", "h2", "h3", "h4", "ul", "ol", "li", "code", "pre", "em", "strong",
    "a", "blockquote", "table", "thead", "tbody", "tr", "th", "td", "hr", "br",
}  # fmt: skip

_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def render_article(text: str) -> str:
    """A pack's article, Markdown to HTML, with only harmless tags and http(s) links."""
    return nh3.clean(
        _markdown.render(text),
        tags=ARTICLE_TAGS,
        attributes={"a": {"href"}},
        url_schemes={"http", "https"},
        link_rel="noopener noreferrer nofollow",
    )


def _when(at: Any) -> str:
    """A time as people read it; anything that is not a plausible time reads as nothing."""
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
        return ""
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(at)) + " UTC"
    except (OverflowError, OSError, ValueError):
        return ""


def _clip(value: Any, most: int) -> str:
    """At most `most` characters of a value an agent sent, marked when cut."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    return text if len(text) <= most else text[:most] + f" … ({len(text) - most} more)"


def _argv(value: Any) -> str:
    """An attempt's argv as one line, whatever an agent put there."""
    if isinstance(value, list):
        return _clip(" ".join(str(part) for part in value[:64]), 2000)
    return _clip(value, 2000)


def _few(value: Any, most: int) -> list[Any]:
    """The last `most` items of a list an agent sent (nothing if it is not a list)."""
    return value[-most:] if isinstance(value, list) else []


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return ""
    seconds = max(0.0, now - at)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return "just now"


def _spark(counts: list[int]) -> str:
    """Bars as an inline SVG path: no script, no image request."""
    top = max(counts) or 1
    bars = [
        f"M{i * 4 + 1},16V{16 - max(1, round(14 * n / top)) if n else 16}"
        for i, n in enumerate(counts)
    ]
    return " ".join(bars)


class Console:
    """The console's routes over one store; `auth` is the API's bearer check, reused."""

    def __init__(
        self,
        store: ReceiverStore,
        bearer: Callable[[Request, Action], Identity | Response],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.bearer = bearer
        self.clock = clock
        secret = store.secret("session")
        self.sessions = URLSafeTimedSerializer(secret, salt="logmend-session")
        self.logins = URLSafeTimedSerializer(secret, salt="logmend-login")
        self.env = Environment(
            loader=FileSystemLoader(Path(__file__).parent / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.env.globals.update(when=_when, spark=_spark, few=_few)
        self.env.filters.update(clip=_clip, argv=_argv)

    # sessions -----------------------------------------------------------------------

    def _session_id(self, request: Request) -> str | None:
        try:
            sid = self.sessions.loads(request.cookies.get(SESSION, ""), max_age=SESSION_AGE)
        except BadSignature:
            return None
        return sid if isinstance(sid, str) else None

    def visitor(self, request: Request) -> str:
        """Whom a page is for, to bound how many one visitor has at once: the token
        behind its session or header; "" for one with neither (the login page or a
        redirect to it: cheap, and behind a proxy all such visitors share one address)."""
        header = request.headers.get("authorization")
        if header is not None:  # checked by the page itself; here only told apart
            return "bearer:" + token_hash(header)[:16]
        session = self._session(request)
        if session is not None:
            return session[0].token_id
        return ""

    def _session(self, request: Request) -> tuple[Identity, str] | None:
        """The identity of a live session and its CSRF token, or None. The cookie holds
        a signed random id; the database, only its hash (a copy opens nothing)."""
        sid = self._session_id(request)
        return self.store.session(sid) if sid else None

    def _who(self, request: Request, action: Action) -> tuple[Identity, str] | Response:
        """A page's reader: the session's (or a bearer token's, for tools), else the
        login page; 403 if the token's scope may not do `action`."""
        if "authorization" in request.headers:
            who = self.bearer(request, action)
            return who if isinstance(who, Response) else (who, "")
        session = self._session(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        try:
            session[0].require(action)
        except Forbidden as exc:
            return self._page("error.html", request, None, status=403, message=str(exc))
        return session

    def _cookie(
        self, request: Request, response: Response, name: str, value: str, age: int
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=age,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )

    def _page(
        self,
        template: str,
        request: Request,
        who: tuple[Identity, str] | None,
        status: int = 200,
        **values: Any,
    ) -> HTMLResponse:
        body = self.env.get_template(template).render(
            who=who[0] if who else None, csrf=who[1] if who else "", request=request, **values
        )
        return HTMLResponse(body, status_code=status)

    # routes (plain functions: the app runs them on its thread pool) -----------------

    def login_form(self, request: Request) -> Response:
        csrf = secrets.token_urlsafe(24)
        response = self._page("login.html", request, None, login_csrf=csrf)
        self._cookie(request, response, LOGIN, self.logins.dumps({"c": csrf}), LOGIN_AGE)
        return response

    def login(self, request: Request, form: dict[str, str]) -> Response:
        """A token typed once: a live read, write or admin token opens a session."""
        try:
            expected = self.logins.loads(request.cookies.get(LOGIN, ""), max_age=LOGIN_AGE)["c"]
        except (BadSignature, KeyError, TypeError):
            expected = None
        if not expected or not _same(str(expected), form.get("csrf", "")):
            return self._refused(request, "the login form expired; try again")
        token = form.get("token", "").strip()
        who = self.store.authenticate(token) if token.startswith("lm_") else None
        if who is None:
            return self._refused(request, "that token is not valid (or was revoked or expired)")
        try:
            who.require(Action.READ)
        except Forbidden:
            return self._refused(request, "an agent's ingest token cannot log in to the console")
        response = RedirectResponse("/", status_code=303)
        sid, _ = self.store.open_session(token, SESSION_AGE)
        self._cookie(request, response, SESSION, self.sessions.dumps(sid), SESSION_AGE)
        self._forget(request, response, LOGIN)
        return response

    def _refused(self, request: Request, message: str) -> Response:
        csrf = secrets.token_urlsafe(24)
        response = self._page("login.html", request, None, 401, login_csrf=csrf, message=message)
        self._cookie(request, response, LOGIN, self.logins.dumps({"c": csrf}), LOGIN_AGE)
        return response

    def logout(self, request: Request, form: dict[str, str]) -> Response:
        """Ends the session in the database (a copy of the cookie opens nothing after),
        and only for a post carrying the session's own CSRF token: another site's post
        arrives without the cookie and changes nothing."""
        sid, session = self._session_id(request), self._session(request)
        if sid is None or session is None:
            return RedirectResponse("/login", status_code=303)
        if not _same(session[1], form.get("csrf", "")):
            return self._page("error.html", request, None, 403, message="stale form; reload")
        self.store.close_session(sid)
        response = RedirectResponse("/login", status_code=303)
        self._forget(request, response, SESSION)
        return response

    def _forget(self, request: Request, response: Response, name: str) -> None:
        self._cookie(request, response, name, "", 0)

    def inbox(self, request: Request) -> Response:
        who = self._who(request, Action.READ)
        if isinstance(who, Response):
            return who
        try:
            view = InboxView.parse(request.query_params)
        except BadView as exc:
            return self._page("error.html", request, who, 400, message=str(exc))
        now = self.clock()
        groups, more = self.store.inbox(
            who[0].visible_owners(), view, now, PAGE_SIZE, (view.page - 1) * PAGE_SIZE
        )
        for g in groups:
            g["last_ago"] = _ago(g["last_seen"], now)
        return self._page(
            "inbox.html",
            request,
            who,
            view=view,
            groups=groups,
            more=more,
            refresh=REFRESH,
            now=now,
        )

    def detail(self, request: Request) -> Response:
        who = self._who(request, Action.READ)
        if isinstance(who, Response):
            return who
        ref = request.path_params["ref"]
        group = self.store.group(ref, who[0].visible_owners(), OCCURRENCES)
        if group is None:  # another team's is as absent as one that never was
            return self._page("error.html", request, who, 404, message="no such escalation")
        escalations = group["escalations"]
        article = next((e["article_text"] for e in escalations if e.get("article_text")), "")
        article = _clip(article, ARTICLE_CHARS)  # Markdown costs ~20 µs a character
        shown = Group(State(group["state"]), snoozed_until=group["snoozed_until"])
        group["shown_state"] = str(shown.shown_state(self.clock()))
        return self._page(
            "detail.html",
            request,
            who,
            group=group,
            hosts=group["hosts"],
            timeline=timeline(group),
            article=render_article(str(article)) if article else "",
            may_write=_may(who[0], Action.WRITE),
            now=self.clock(),
        )

    def tier1(self, request: Request) -> Response:
        """What tier 1 did over a window: per pattern, per bar of time, and where fixes
        fail most, from the hosts' hourly totals."""
        who = self._who(request, Action.READ)
        if isinstance(who, Response):
            return who
        window = request.query_params.get("window", "7d")
        owner = request.query_params.get("owner", "")
        if window not in TIER1_WINDOWS:
            return self._page("error.html", request, who, 400, message="window: 24h, 7d or 30d")
        if len(owner) > 256 or not owner.isprintable():
            message = "owner: at most 256 printable characters"
            return self._page("error.html", request, who, 400, message=message)
        hours = TIER1_WINDOWS[window][0]
        start = int(self.clock() // 3600) - hours + 1
        rows, base = self.store.history(who[0].visible_owners(), owner, start)
        done = added_up(rows, base, start, window)
        top = max((sum(bar.values()) for bar in done.bars), default=0) or 1
        return self._page(
            "tier1.html", request, who, t=done, window=window, owner=owner, chart_top=top
        )

    def articles(self, request: Request) -> Response:
        """Self-service: paste an error line, read what the team's articles say of it."""
        who = self._who(request, Action.READ)
        if isinstance(who, Response):
            return who
        query = request.query_params.get("q", "")
        if len(query) > MAX_QUERY:
            message = f"q: at most {MAX_QUERY} characters"
            return self._page("error.html", request, who, 400, message=message)
        found = self.store.find_articles(who[0].visible_owners(), query) if query.strip() else []
        for article in found:
            article["html"] = render_article(article["text"])
        return self._page("articles.html", request, who, q=query, found=found, max_query=MAX_QUERY)

    def hosts(self, request: Request) -> Response:
        """Every host heard from: when, which packs and versions, what tier 1 did there;
        a host quiet for longer than QUIET is flagged."""
        who = self._who(request, Action.READ)
        if isinstance(who, Response):
            return who
        now = self.clock()
        found, _ = self.store.hosts(who[0].visible_owners(), limit=SUMMARY_ROWS)
        for h in found:
            h["ago"], h["quiet"] = _ago(h["last_heard"], now), now - h["last_heard"] > QUIET
        return self._page("hosts.html", request, who, hosts=found, quiet_minutes=QUIET // 60)

    def packs(self, request: Request) -> Response:
        """Each pack the team ships: its versions, which is current, which rolls out to
        what share, and per version the hosts last heard running it."""
        who = self._who(request, Action.READ)
        if isinstance(who, Response):
            return who
        found = self.store.packs(who[0].visible_owners())
        return self._page("packs.html", request, who, packs=found)

    def unknown(self, request: Request) -> Response:
        """Errors no pack knows yet: the team's templates ranked by count or host spread,
        each with its last days; and what a shipped pattern now explains."""
        who = self._who(request, Action.READ)
        if isinstance(who, Response):
            return who
        sort = request.query_params.get("sort", "count")
        if sort not in UNKNOWN_SORTS:
            message = f"sort: one of {', '.join(UNKNOWN_SORTS)}"
            return self._page("error.html", request, who, 400, message=message)
        owners = who[0].visible_owners()
        found, more = self.store.unknown(owners, sort, SUMMARY_ROWS, 0, self.clock())
        explained = self.store.explained(owners)
        return self._page(
            "unknown.html", request, who, found=found, more=more, sort=sort, explained=explained
        )

    def unknown_one(self, request: Request) -> Response:
        """One template: where it is seen, its samples, its trend, and a drafted pattern
        that `logmend test` proves as it is printed."""
        who = self._who(request, Action.READ)
        if isinstance(who, Response):
            return who
        ref = request.path_params["ref"]
        found = (
            self.store.unknown_one(who[0].visible_owners(), ref, self.clock())
            if is_ref(ref)
            else None
        )
        if found is None:  # another team's is as absent as one never seen
            return self._page("error.html", request, who, 404, message="no such unknown error")
        return self._page("unknown_one.html", request, who, u=found)

    def tokens(self, request: Request, created: str = "", message: str = "") -> Response:
        """The admin's page: every token (never the token itself), create, revoke; owners."""
        who = self._who(request, Action.READ)
        if isinstance(who, Response):
            return who
        if who[0].scope is not Scope.ADMIN:
            return self._page("error.html", request, who, 403, message="the admin's page")
        now = self.clock()
        return self._page(
            "tokens.html",
            request,
            who,
            status=201 if created else 400 if message else 200,
            tokens=self.store.tokens(),
            owners=self.store.owners(now),
            created=created,
            message=message,
            now=now,
        )

    def create_token(self, request: Request, form: dict[str, str]) -> Response:
        refused = self._admin_form(request, form)
        if refused is not None:
            return refused
        try:
            scope = Scope(form.get("scope", ""))
            days = form.get("expires", "").strip()
            if days and not (_number(days) and 0 < int(days) <= 3650):
                raise ValueError("expires: a number of days from 1 to 3650, or empty")
            token = self.store.create_token(
                scope,
                form.get("name", "").strip(),
                tuple(form.get("owners", "").split()),
                tuple(form.get("hosts", "").split()),
                self.clock() + int(days) * 86400 if days else None,
            )
        except ValueError as exc:
            return self.tokens(request, message=str(exc))
        return self.tokens(request, created=token)

    def revoke_token(self, request: Request, form: dict[str, str]) -> Response:
        refused = self._admin_form(request, form)
        if refused is not None:
            return refused
        try:
            self.store.revoke(form.get("id", ""))
        except LookupError as exc:
            return self.tokens(request, message=str(exc))
        return RedirectResponse("/admin/tokens", status_code=303)

    def _admin_form(self, request: Request, form: dict[str, str]) -> Response | None:
        """None if this is an admin's session and the form is its own; else the refusal."""
        session = self._session(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        if session[0].scope is not Scope.ADMIN:
            return self._page("error.html", request, session, 403, message="the admin's page")
        if not _same(session[1], form.get("csrf", "")):
            return self._page("error.html", request, session, 403, message="stale form; reload")
        return None

    def act(self, request: Request, form: dict[str, str]) -> Response:
        """A workflow form: CSRF checked, then the action, then back to the group."""
        who = self._who(request, Action.WRITE)
        if isinstance(who, Response):
            return who
        if "authorization" not in request.headers and not _same(who[1], form.get("csrf", "")):
            return self._page("error.html", request, who, 403, message="stale form; reload")
        ref = request.path_params["ref"]
        try:
            action = _form_action(form, self.clock())
            found = self.store.act(ref, who[0].visible_owners(), action, who[0].name)
        except BadAction as exc:
            return self._page("error.html", request, who, 422, message=str(exc), back=ref)
        except WorkflowError as exc:
            return self._page("error.html", request, who, 409, message=str(exc), back=ref)
        if found is None:
            return self._page("error.html", request, who, 404, message="no such escalation")
        return RedirectResponse(f"/g/{ref}", status_code=303)


TIMELINE_ENTRIES = 300  # entries on a group's page


def timeline(group: dict[str, Any]) -> list[dict[str, Any]]:
    """The group's story in time order: each escalation matched on its host, what tier 1
    tried and how it ended, when it reached the receiver; then what people and the
    receiver did (acknowledged, resolved, regressed ...)."""
    entries: list[dict[str, Any]] = []
    for e in group["escalations"]:
        host = e.get("host", "")
        entries.append({"at": e.get("first_seen"), "what": f"matched on {host}", "who": ""})
        host = _clip(host, 200)
        for a in _few(e.get("attempts"), ATTEMPTS):
            if isinstance(a, dict) and _when(a.get("started")):
                code = "timed out" if a.get("timed_out") else f"exit {a.get('exit_code')}"
                entries.append(
                    {
                        "at": a["started"],
                        "what": f"{a.get('phase', 'fix')} on {host}: {code}",
                        "who": "",
                    }
                )
        entries.append(
            {
                "at": e.get("received"),
                "what": f"escalated from {host}: {e.get('status')}",
                "who": "",
            }
        )
    for a in group["timeline"]:
        entries.append({"at": a["at"], "what": _said(a["verb"], a["detail"]), "who": a["who"]})
    entries = [t for t in entries if _when(t["at"])]
    entries.sort(key=lambda t: t["at"])
    return entries[-TIMELINE_ENTRIES:]


DONE = {
    "acknowledge": "acknowledged",
    "resolve": "resolved",
    "reopen": "reopened",
    "snooze": "snoozed",
    "woke": "the snooze ended; reported again",
}


def _said(verb: str, detail: str) -> str:
    """A timeline entry as a sentence: "assigned to dana", "snoozed until ...", "note: ..."."""
    if verb == "assign":
        return "unassigned" if detail == "unassigned" else f"assigned {detail}"
    if verb == "snooze":
        return f"snoozed {detail}".strip()
    if verb == "silence":
        return f"silenced {detail}".strip()
    if verb == "unsilence":
        return detail or "lifted a silence"
    said = DONE.get(verb, verb)
    return f"{said}: {detail}" if detail else said


def _number(text: str) -> bool:
    """ASCII digits only ("²" is a digit to Python, and not a number to int)."""
    return text.isascii() and text.isdigit() and len(text) < 12


def _same(expected: str, given: str) -> bool:
    """A CSRF check in constant time, for any text a form may carry."""
    return bool(expected) and hmac.compare_digest(expected.encode(), given.encode())


def _may(who: Identity, action: Action) -> bool:
    try:
        who.require(action)
    except Forbidden:
        return False
    return True


def _form_action(form: dict[str, str], now: float) -> WorkflowAction:
    try:
        verb = Verb(form.get("action", ""))
    except ValueError:
        raise BadAction("unknown action") from None
    until = None
    if verb in (Verb.SNOOZE, Verb.SILENCE):
        if form.get("for") not in SNOOZES:
            raise BadAction(f"{verb} for one of {', '.join(SNOOZES)}")
        until = now + SNOOZES[form["for"]]
    silence = form.get("silence", "")
    return WorkflowAction(
        verb,
        assignee=form.get("assignee", ""),
        note=form.get("note", ""),
        until=until,
        host=form.get("host", ""),
        silence=int(silence) if _number(silence) else None,
    )
