"""The receiver's HTTP API, and the console's routes wired in (Starlette, served by uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import resource
import socket
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.notify import Notifier
from agent.receiver.console import Console
from agent.receiver.guard import HEADER_TIMEOUT, PER_CLIENT, Busy, GuardedH11, Lane
from agent.receiver.limits import MAX_EVENTS, InvalidEvent, decode, validate, validate_stats
from agent.receiver.schema import group_ref
from agent.receiver.scopes import Action, Forbidden, Identity
from agent.receiver.store import ReceiverStore
from agent.receiver.workflow import PEOPLE_VERBS, BadAction, Verb, WorkflowError
from agent.receiver.workflow import Action as WorkflowAction

MAX_BODY = 4 * 1024 * 1024
HEALTH_EVERY = 1.0  # seconds between two write probes of /healthz
HEALTH_STALL = 5.0  # a probe waiting this long on the database is an answer: 503
UPLOADS = 8  # bodies being received or worked on at once (each up to MAX_BODY)
QUEUE_PATIENCE = 10.0  # seconds a request waits for a slot before a 503 with Retry-After
BODY_TIMEOUT = 30.0  # seconds for a whole body: 4 MiB needs only 140 KB/s
MAX_PAGE = 1000  # rows; and a page stops at 4 MiB of bodies (store.query)
MAX_OFFSET = 10_000_000  # past this, narrow the listing with filters
READS_PER_TOKEN = 2  # answers of one token being made or sent at once
SEND_TIMEOUT = 30.0  # seconds for a client to take an answer
FILTERS = ("owner", "pattern", "host", "pack", "status", "fingerprint")
SECURITY_HEADERS = {
    # the page is server-rendered with inline styles only: no script, no frames, no forms out
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Cache-Control": "no-store",  # escalations carry lines and fix output
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders:
    """Nothing the receiver answers is cached or framed, and its page runs no script."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyTooLarge(Exception):
    pass


class RateLimit:
    """A token bucket per bearer token: `rate` requests a second, bursts of `burst`."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()  # requests are authenticated on the thread pool

    def wait(self, token: str) -> float:
        """0 if a request may pass now (and take a token), else seconds until one may."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            level, then = self._buckets.get(token, (float(self.burst), now))
            level = min(float(self.burst), level + (now - then) * self.rate)
            if level >= 1.0:
                self._buckets[token] = (level - 1.0, now)
                return 0.0
            self._buckets[token] = (level, now)
            return (1.0 - level) / self.rate


class BodyTooSlow(Exception):
    pass


class InvalidBody(ValueError):
    """Not msgpack or JSON, or past the decoder's bounds: a 400."""


async def _body(request: Request, limit: int, deadline: float = BODY_TIMEOUT) -> bytes:
    """The whole body within `limit` bytes and `deadline` seconds (a trickle is cut off)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks = bytearray()
    try:
        async with asyncio.timeout(deadline):
            async for chunk in request.stream():
                chunks += chunk
                if len(chunks) > limit:
                    raise BodyTooLarge
    except TimeoutError:
        raise BodyTooSlow from None
    return bytes(chunks)


def _error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=code)


TOKEN_SHAPE = re.compile(r"lm_[A-Za-z0-9_-]{20,100}")


def _bearer(request: Request) -> str | None:
    """The bearer token, if the header holds one of the shape the receiver issues;
    anything else is refused without a look at the database."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not TOKEN_SHAPE.fullmatch(token):
        return None
    return token


class BadQuery(ValueError):
    """A query parameter out of its range: a 400 naming it."""


def _paging(request: Request) -> tuple[int, int]:
    """`limit` (1..MAX_PAGE, default 500) and `offset` (0..MAX_OFFSET) of a listing."""
    try:
        limit = int(request.query_params.get("limit", "500"))
        offset = int(request.query_params.get("offset", "0"))
    except ValueError:
        raise BadQuery("limit and offset must be integers") from None
    if not 0 <= offset <= MAX_OFFSET:
        raise BadQuery(f"offset must be between 0 and {MAX_OFFSET}; narrow with filters")
    return min(MAX_PAGE, max(1, limit)), offset


def _paged(name: str, found: list[dict[str, Any]], more: bool, offset: int) -> dict[str, Any]:
    answer: dict[str, Any] = {name: found}
    if more:  # the page ended at its limit or at its byte budget
        answer["next_offset"] = offset + len(found)
    return answer


class InFlight:
    """How many answers each token has being made or sent; at most `most` at once."""

    def __init__(self, most: int) -> None:
        self.most = most
        self._count: dict[str, int] = {}  # touched on the event loop only

    def enter(self, key: str) -> bool:
        if self._count.get(key, 0) >= self.most:
            return False
        self._count[key] = self._count.get(key, 0) + 1
        return True

    def leave(self, key: str) -> None:
        left = self._count.pop(key) - 1
        if left:
            self._count[key] = left


class Sent(Response):
    """An answer that calls `done` once it is sent, or once the client has taken longer
    than `deadline` seconds to take it (then the connection is dropped)."""

    def __init__(self, inner: Response, done: Callable[[], None], deadline: float) -> None:
        self.inner, self.done, self.deadline = inner, done, deadline
        self.status_code = inner.status_code
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with asyncio.timeout(self.deadline):
                await self.inner(scope, receive, send)
        finally:
            self.done()


MAX_ACTION_BODY = 16 * 1024
MAX_FORM = 16 * 1024


def _action(doc: Any) -> WorkflowAction:
    """A person's action from a PATCH body; ValueError (BadAction) naming what is wrong."""
    if not isinstance(doc, dict) or not isinstance(doc.get("action"), str):
        raise BadAction('body must be an object with an "action" string')
    try:
        verb = Verb(doc["action"])
    except ValueError:
        raise BadAction(f"action must be one of {', '.join(sorted(PEOPLE_VERBS))}") from None
    until = doc.get("until")
    if until is not None and (
        not isinstance(until, int | float)
        or isinstance(until, bool)
        or not -(2**53) <= until <= 2**53  # before isfinite: a huge integer overflows it
        or not math.isfinite(until)
    ):
        raise BadAction("until must be a Unix time")
    for name in ("assignee", "note", "host"):
        if not isinstance(doc.get(name, ""), str):
            raise BadAction(f"{name} must be a string")
    silence = doc.get("silence")
    if silence is not None and (
        not isinstance(silence, int) or isinstance(silence, bool) or not 0 < silence < 2**62
    ):
        raise BadAction("silence must be the id of a silence")
    return WorkflowAction(
        verb,
        assignee=doc.get("assignee", ""),
        note=doc.get("note", ""),
        until=until,
        host=doc.get("host", ""),
        silence=silence,
    )


def _why(exc: Exception) -> str:
    if isinstance(exc, BodyTooLarge):
        return f"body larger than {MAX_ACTION_BODY} bytes"
    if isinstance(exc, BodyTooSlow):
        return "body not received in time"
    if isinstance(exc, BadAction):
        return str(exc)
    return "body is not JSON"


def _busy() -> JSONResponse:
    response = _error(503, "the receiver is busy; try again shortly")
    response.headers["Retry-After"] = "2"
    return response


def create_app(
    store: ReceiverStore, max_body: int = MAX_BODY, rate: float = 50.0, burst: int = 100
) -> Starlette:
    limiter = RateLimit(rate, burst)
    uploads = Lane(UPLOADS, patience=QUEUE_PATIENCE)  # bodies in memory at once
    work = Lane(2, patience=BODY_TIMEOUT)  # decoding and storing: CPU and the database
    people = Lane(2, patience=QUEUE_PATIENCE)  # logins, forms, PATCH: apart from uploads
    reads = Lane(4, patience=QUEUE_PATIENCE)

    def auth(request: Request, action: Action) -> Identity | Response:
        """The caller's identity if its token is live, its scope allows `action`
        and it is within its rate; else the answer: 401, 403 (saying what the
        scope allows) or 429.
        """
        token = _bearer(request)
        who = store.authenticate(token) if token is not None else None
        if who is None:
            response = _error(401, "a valid bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="logmend"'
            return response
        try:
            who.require(action)
        except Forbidden as exc:
            return _error(403, str(exc))
        wait = limiter.wait(who.token_id)
        if wait > 0:
            response = _error(429, "too many requests for this token")
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        return who

    async def upload(
        request: Request, ingest: Callable[[Identity, bytes, Request], Response]
    ) -> Response:
        """Authenticate and rate-limit (off the loop: the database may be busy), then,
        in one of a few upload slots, read the body within its size and time and
        hand it to `ingest` on the thread pool, one of two at a time."""
        who = await run_in_threadpool(auth, request, Action.INGEST)
        if isinstance(who, Response):
            return who
        try:
            async with uploads.slot():
                try:
                    body = await _body(request, max_body)
                except BodyTooLarge:
                    return _error(413, f"body larger than {max_body} bytes")
                except BodyTooSlow:
                    return _error(408, f"body not received within {BODY_TIMEOUT:g} seconds")
                async with work.slot():
                    return await run_in_threadpool(still_live, who, body, request, ingest)
        except Busy:
            return _busy()

    def still_live(
        who: Identity,
        body: bytes,
        request: Request,
        ingest: Callable[[Identity, bytes, Request], Response],
    ) -> Response:
        """A body takes up to BODY_TIMEOUT to arrive: a token revoked or expired
        meanwhile stores nothing."""
        token = _bearer(request)
        now = store.authenticate(token) if token is not None else None
        if now is None or now.token_id != who.token_id:
            return _error(401, "the token was revoked or expired while the body arrived")
        return ingest(now, body, request)

    def decoded(body: bytes, request: Request) -> Any:
        try:
            return decode(body, request.headers.get("content-type", ""))
        except Exception as exc:  # any decoding failure is the client's
            raise InvalidBody(f"body is not valid msgpack or JSON: {type(exc).__name__}") from None

    def ingest_escalations(who: Identity, body: bytes, request: Request) -> Response:
        """Decode, check, decide owners and store: CPU and database, so off the loop."""
        try:
            doc = decoded(body, request)
        except InvalidBody as exc:
            return _error(400, str(exc))
        if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
            return _error(400, 'body must be an object with an "events" list')
        if len(doc["events"]) > MAX_EVENTS:
            return _error(413, f"at most {MAX_EVENTS} events per request")
        now = time.time()
        try:
            events = [validate(e, i, now) for i, e in enumerate(doc["events"])]
        except InvalidEvent as exc:
            return _error(422, str(exc))
        allowed, refused = [], {}
        for index, event in enumerate(events):
            try:
                who.check_host(event["host"], f"events[{index}]")
                event["owner"] = who.owner_for(event["owner"], f"events[{index}]")
            except Forbidden as exc:
                refused[event["id"]] = str(exc)
                continue
            allowed.append(event)
        agent = doc.get("agent")
        version = agent.get("version") if isinstance(agent, dict) else None
        version = version[:64] if isinstance(version, str) and version.isprintable() else ""
        accepted, duplicates = store.store(allowed, who, version) if allowed else ([], [])
        answer: dict[str, Any] = {"accepted": accepted, "duplicates": duplicates}
        if not refused:
            return JSONResponse(answer)
        # what this token may send is stored; the rest is named, and the agent keeps it
        first = next(iter(refused.values()))
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        return JSONResponse({"error": first + more, **answer, "refused": refused}, status_code=403)

    def ingest_stats(who: Identity, body: bytes, request: Request) -> Response:
        try:
            doc = decoded(body, request)
        except InvalidBody as exc:
            return _error(400, str(exc))
        try:
            host, rows = validate_stats(doc)
        except InvalidEvent as exc:
            return _error(422 if isinstance(doc, dict) else 400, str(exc))
        # a row of no owner (a pack the agent no longer runs) that the token cannot
        # decide is left out; any other row the token may not report refuses the post
        kept = [row for row in rows if row["owner"] or who.single_owner()]
        try:
            who.check_host(host, "host")
            for index, row in enumerate(kept):
                row["owner"] = who.owner_for(row["owner"], f"stats[{index}]")
        except Forbidden as exc:
            return _error(403, str(exc))
        store.store_stats(who, host, kept)
        return JSONResponse({"stored": len(kept), "skipped": len(rows) - len(kept)})

    async def post_escalations(request: Request) -> Response:
        return await upload(request, ingest_escalations)

    async def post_stats(request: Request) -> Response:
        return await upload(request, ingest_stats)

    in_flight = InFlight(READS_PER_TOKEN)

    def reading(endpoint: Callable[[Request, Identity], Response]) -> Callable[[Request], Any]:
        """A read for a read, write or admin token: on the thread pool, a few at a time,
        so a busy database or a big page never holds up the event loop nor takes every
        thread; and at most READS_PER_TOKEN answers of one token in flight until they
        are sent, so a client that never reads them cannot pile up pages in memory."""

        async def read(request: Request) -> Response:
            who = await run_in_threadpool(auth, request, Action.READ)
            if isinstance(who, Response):
                return who
            if not in_flight.enter(who.token_id):
                return _error(429, f"at most {READS_PER_TOKEN} reads of one token at once")
            try:
                async with reads.slot():
                    answer = await run_in_threadpool(endpoint, request, who)
            except BadQuery as exc:
                answer = _error(400, str(exc))
            except Busy:
                answer = _busy()
            except BaseException:
                in_flight.leave(who.token_id)
                raise
            return Sent(answer, lambda: in_flight.leave(who.token_id), SEND_TIMEOUT)

        return read

    def get_stats(request: Request, who: Identity) -> Response:
        limit, offset = _paging(request)
        found, more = store.stats(who.visible_owners(), limit, offset)
        return JSONResponse(_paged("stats", found, more, offset))

    def get_escalations(request: Request, who: Identity) -> Response:
        filters = {k: v for k, v in request.query_params.items() if k in FILTERS}
        limit, offset = _paging(request)
        found, more = store.query(filters, who.visible_owners(), limit, offset)
        return JSONResponse(_paged("escalations", found, more, offset))

    def get_escalation(request: Request, who: Identity) -> Response:
        found = store.get(request.path_params["ref"], who.visible_owners())
        if found is None:  # another team's is as absent as one that never was
            return _error(404, "no such escalation")
        group = store.group(group_ref(found["owner"], found["fingerprint"]), None, 0)
        if group is not None:  # the workflow of its group: state, assignee, timeline
            del group["escalations"]
            found["group"] = group
        return JSONResponse(found)

    async def patch_escalation(request: Request) -> Response:
        """A person's action on the escalation's group, with a write or admin token:
        {"action": "acknowledge" | "assign" | "note" | "resolve" | "reopen" | "snooze" |
        "silence" | "unsilence", "assignee": "...", "note": "...", "until": UNIX_TIME,
        "host": "..." (a silence's; empty: everywhere), "silence": ID (to lift)}."""
        who = await run_in_threadpool(auth, request, Action.WRITE)
        if isinstance(who, Response):
            return who
        try:
            doc = json.loads(await _body(request, MAX_ACTION_BODY))
            action = _action(doc)
        except (BodyTooLarge, BodyTooSlow, ValueError, RecursionError) as exc:
            return _error(422 if isinstance(exc, BadAction) else 400, _why(exc))

        def apply() -> Response:
            found = store.get(request.path_params["ref"], who.visible_owners())
            if found is None:
                return _error(404, "no such escalation")
            ref = group_ref(found["owner"], found["fingerprint"])
            try:
                group = store.act(ref, who.visible_owners(), action, who.name)
            except BadAction as exc:
                return _error(422, str(exc))
            except WorkflowError as exc:
                return _error(409, str(exc))
            if group is None:
                return _error(404, "no such escalation")
            del group["escalations"]
            return JSONResponse(group)

        try:
            async with people.slot():
                return await run_in_threadpool(apply)
        except Busy:
            return _busy()

    console = Console(store, auth)

    pages = Lane(4, patience=QUEUE_PATIENCE)  # console pages: apart from the API's reads
    viewing = InFlight(READS_PER_TOKEN)

    def html(page: Callable[[Request], Response]) -> Callable[[Request], Any]:
        """A console page on the thread pool, a few at a time, in a lane of their own
        (one team's slow pages do not hold up another's API reads), and at most
        READS_PER_TOKEN of one session or token being made or sent at once."""

        async def show(request: Request) -> Response:
            visitor = await run_in_threadpool(console.visitor, request)
            if not visitor:  # the login page and redirects to it: cheap, not counted
                try:
                    async with pages.slot():
                        return await run_in_threadpool(page, request)
                except Busy:
                    return _busy()
            if not viewing.enter(visitor):
                return _error(429, f"at most {READS_PER_TOKEN} pages of one visitor at once")
            try:
                async with pages.slot():
                    answer = await run_in_threadpool(page, request)
            except Busy:
                answer = _busy()
            except BaseException:
                viewing.leave(visitor)
                raise
            return Sent(answer, lambda: viewing.leave(visitor), SEND_TIMEOUT)

        return show

    def form(handler: Callable[[Request, dict[str, str]], Response]) -> Callable[[Request], Any]:
        """A console form post: small (16 KiB, a few fields, no files), then the handler
        on the thread pool, one of the two writers at a time."""

        async def post(request: Request) -> Response:
            declared = request.headers.get("content-length", "")
            if not (declared.isascii() and declared.isdigit()):
                return _error(411, "a form's length is required (Content-Length)")
            if int(declared) > MAX_FORM:
                return _error(413, f"a form is at most {MAX_FORM} bytes")
            try:
                async with asyncio.timeout(BODY_TIMEOUT):
                    fields = await request.form(max_files=0, max_fields=16, max_part_size=MAX_FORM)
            except TimeoutError:
                return _error(408, f"body not received within {BODY_TIMEOUT:g} seconds")
            except Exception:  # a malformed form is the client's
                return _error(400, "not a form")
            values = {k: v for k, v in fields.items() if isinstance(v, str)}
            try:
                async with people.slot():
                    return await run_in_threadpool(handler, request, values)
            except Busy:
                return _busy()

        return post

    last: list[tuple[float, str | None]] = [(-math.inf, None)]  # the last probe: when, what
    probing = asyncio.Lock()
    started: list[float] = [0.0]

    async def health(request: Request) -> Response:
        """Honest: 200 only if the database takes a write, else 503 saying why.

        The write is probed at most once a second, one probe at a time on the
        thread pool, so a flood of unauthenticated checks neither fsyncs without
        end nor stalls the loop; while a probe runs, the last answer stands,
        unless the probe has been waiting on the database for too long.
        """
        now = time.monotonic()
        if now - last[-1][0] >= HEALTH_EVERY and not probing.locked():
            async with probing:
                started[0] = now
                last[:] = [(now, await run_in_threadpool(store.writable))]
        elif probing.locked() and now - started[0] > HEALTH_STALL:
            problem: str | None = f"the database has not taken a write for {now - started[0]:.0f} s"
            return JSONResponse({"ok": False, "error": problem}, status_code=503)
        problem = last[-1][1]
        if problem is not None:
            return JSONResponse({"ok": False, "error": problem}, status_code=503)
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/v1/escalations", post_escalations, methods=["POST"]),
            Route("/v1/escalations", reading(get_escalations), methods=["GET"]),
            Route("/v1/escalations/{ref}", reading(get_escalation), methods=["GET"]),
            Route("/v1/escalations/{ref}", patch_escalation, methods=["PATCH"]),
            Route("/v1/stats", post_stats, methods=["POST"]),
            Route("/v1/stats", reading(get_stats), methods=["GET"]),
            Route("/healthz", health),
            Route("/", html(console.inbox)),
            Route("/g/{ref}", html(console.detail), methods=["GET"]),
            Route("/g/{ref}", form(console.act), methods=["POST"]),
            Route("/login", html(console.login_form), methods=["GET"]),
            Route("/login", form(console.login), methods=["POST"]),
            Route("/logout", form(console.logout), methods=["POST"]),
            Route("/tier1", html(console.tier1)),
            Route("/hosts", html(console.hosts)),
            Route("/admin/tokens", html(console.tokens), methods=["GET"]),
            Route("/admin/tokens", form(console.create_token), methods=["POST"]),
            Route("/admin/tokens/revoke", form(console.revoke_token), methods=["POST"]),
        ],
        middleware=[Middleware(SecurityHeaders)],
    )
    return app


def _systemd_lifespan(url: str) -> Any:
    """READY once serving, WATCHDOG from the event loop itself, STOPPING on the way out."""
    notifier = Notifier()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def ping(every: float) -> None:
            while True:
                notifier.watchdog()
                await asyncio.sleep(every)

        interval = notifier.watchdog_interval
        task = asyncio.create_task(ping(interval)) if interval else None
        notifier.ready(f"listening on {url}")
        try:
            yield
        finally:
            notifier.stopping()
            if task is not None:
                task.cancel()

    return lifespan


def _raise_descriptor_limit(connections: int) -> None:
    """Room for `connections` sockets plus the database and logs, up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256
    if soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(
    listen: str,
    db: Path,
    max_body: int = MAX_BODY,
    rate: float = 50.0,
    burst: int = 100,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    client_ca: Path | None = None,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    per_client: int = PER_CLIENT,
    max_connections: int = 4096,
) -> int:
    """Serve until SIGTERM/SIGINT; prints the bound address first (port 0 picks one).

    With `tls_cert` it serves HTTPS; with `client_ca` as well, only clients with
    a certificate that CA signed get through (mutual TLS).
    """
    import uvicorn

    store = ReceiverStore(db)  # a damaged database is an error before anything listens
    for note in store.notes:  # what an upgrade of its schema did
        print(f"logmend receiver: {db}: {note}", file=sys.stderr, flush=True)
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if tls_cert else "http"
    print(f"logmend receiver listening on {scheme}://{shown}:{bound}", flush=True)
    tls: dict[str, Any] = {}
    if tls_cert is not None:
        tls = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key) if tls_key else None}
        if client_ca is not None:
            tls.update(ssl_ca_certs=str(client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    app = create_app(store, max_body, rate, burst)
    app.router.lifespan_context = _systemd_lifespan(f"{scheme}://{shown}:{bound}")
    GuardedH11.header_timeout, GuardedH11.per_client = header_timeout, per_client
    _raise_descriptor_limit(max_connections)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        http=GuardedH11,
        limit_concurrency=max_connections,
        timeout_keep_alive=5,
        **tls,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    store.close()
    return 0
