"""The receiver's HTTP plumbing, beside the routes: bodies read within their size and
time, bearer tokens of the issued shape, rate limits, paging, answers that count
until sent, a person's action from a JSON body, and the headers on every answer."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.receiver.workflow import PEOPLE_VERBS, BadAction, Verb
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


class SharedRateLimit:
    """The same bucket per token, kept in a database several receivers share (a
    PostgreSQL one): a token's rate holds whichever receiver a request reaches. While
    the database takes no writes (a standby during a failover), this receiver's own
    bucket holds it, so reads are still served and still limited."""

    def __init__(
        self,
        take: Callable[[str, float, int], float],
        rate: float,
        burst: int,
        unavailable: type[Exception],
    ) -> None:
        self.take, self.rate, self.burst = take, rate, burst
        self.unavailable = unavailable
        self.local = RateLimit(rate, burst)

    def wait(self, token: str) -> float:
        if self.rate <= 0:
            return 0.0
        try:
            return self.take(token, self.rate, self.burst)
        except self.unavailable:
            return self.local.wait(token)


class BodyTooSlow(Exception):
    pass


class InvalidBody(ValueError):
    """Not msgpack or JSON, or past the decoder's bounds: a 400."""


async def read_body(request: Request, limit: int, deadline: float = BODY_TIMEOUT) -> bytes:
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


def error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=code)


TOKEN_SHAPE = re.compile(r"lm_[A-Za-z0-9_-]{20,100}")


def bearer(request: Request) -> str | None:
    """The bearer token, if the header holds one of the shape the receiver issues;
    anything else is refused without a look at the database."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not TOKEN_SHAPE.fullmatch(token):
        return None
    return token


class BadQuery(ValueError):
    """A query parameter out of its range: a 400 naming it."""


def paging(request: Request) -> tuple[int, int]:
    """`limit` (1..MAX_PAGE, default 500) and `offset` (0..MAX_OFFSET) of a listing."""
    try:
        limit = int(request.query_params.get("limit", "500"))
        offset = int(request.query_params.get("offset", "0"))
    except ValueError:
        raise BadQuery("limit and offset must be integers") from None
    if not 0 <= offset <= MAX_OFFSET:
        raise BadQuery(f"offset must be between 0 and {MAX_OFFSET}; narrow with filters")
    return min(MAX_PAGE, max(1, limit)), offset


def paged(name: str, found: list[dict[str, Any]], more: bool, offset: int) -> dict[str, Any]:
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


def action_from(doc: Any) -> WorkflowAction:
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


def why(exc: Exception) -> str:
    if isinstance(exc, BodyTooLarge):
        return f"body larger than {MAX_ACTION_BODY} bytes"
    if isinstance(exc, BodyTooSlow):
        return "body not received in time"
    if isinstance(exc, BadAction):
        return str(exc)
    return "body is not JSON"


def busy() -> JSONResponse:
    response = error(503, "the receiver is busy; try again shortly")
    response.headers["Retry-After"] = "2"
    return response
