"""The receiver's HTTP API, and the console's routes wired in (Starlette, served by
uvicorn from serve.py); the plumbing of requests is in web.py."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.packs import NAME
from agent.receiver.articles import MAX_QUERY, validate_articles
from agent.receiver.console import Console
from agent.receiver.engine import Unavailable
from agent.receiver.guard import Busy, Lane
from agent.receiver.inbox import MAX_FILTER
from agent.receiver.limits import MAX_EVENTS, InvalidEvent, decode, validate, validate_stats
from agent.receiver.packstore import Conflict, params_request, sync_request
from agent.receiver.schema import group_ref
from agent.receiver.scopes import Action, Forbidden, Identity
from agent.receiver.store import ReceiverStore
from agent.receiver.storebase import is_ref
from agent.receiver.unknown import SORTS as UNKNOWN_SORTS
from agent.receiver.unknown import validate_unknown
from agent.receiver.web import (
    BODY_TIMEOUT,
    FILTERS,
    HEALTH_EVERY,
    HEALTH_STALL,
    MAX_ACTION_BODY,
    MAX_BODY,
    MAX_FORM,
    QUEUE_PATIENCE,
    READS_PER_TOKEN,
    SEND_TIMEOUT,
    UPLOADS,
    BadQuery,
    BodyTooLarge,
    BodyTooSlow,
    InFlight,
    InvalidBody,
    RateLimit,
    SecurityHeaders,
    Sent,
    SharedRateLimit,
    action_from,
    bearer,
    busy,
    error,
    paged,
    paging,
    read_body,
    why,
)
from agent.receiver.workflow import BadAction, WorkflowError

log = logging.getLogger("logmend.receiver")


def create_app(
    store: ReceiverStore, max_body: int = MAX_BODY, rate: float = 50.0, burst: int = 100
) -> Starlette:
    limiter = (
        SharedRateLimit(store.take, rate, burst, Unavailable)
        if store.shared
        else RateLimit(rate, burst)
    )
    uploads = Lane(UPLOADS, patience=QUEUE_PATIENCE)  # bodies in memory at once
    work = Lane(2, patience=BODY_TIMEOUT)  # decoding and storing: CPU and the database
    people = Lane(2, patience=QUEUE_PATIENCE)  # logins, forms, PATCH: apart from uploads
    reads = Lane(4, patience=QUEUE_PATIENCE)

    def auth(request: Request, action: Action) -> Identity | Response:
        """The caller's identity if its token is live, its scope allows `action`
        and it is within its rate; else the answer: 401, 403 (saying what the
        scope allows) or 429.
        """
        token = bearer(request)
        who = store.authenticate(token) if token is not None else None
        if who is None:
            response = error(401, "a valid bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="logmend"'
            return response
        try:
            who.require(action)
        except Forbidden as exc:
            return error(403, str(exc))
        wait = limiter.wait(who.token_id)
        if wait > 0:
            response = error(429, "too many requests for this token")
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        return who

    async def upload(
        request: Request,
        ingest: Callable[[Identity, bytes, Request], Response],
        action: Action = Action.INGEST,
    ) -> Response:
        """Authenticate and rate-limit (off the loop: the database may be busy), then,
        in one of a few upload slots, read the body within its size and time and
        hand it to `ingest` on the thread pool, one of two at a time."""
        who = await run_in_threadpool(auth, request, action)
        if isinstance(who, Response):
            return who
        try:
            async with uploads.slot():
                try:
                    body = await read_body(request, max_body)
                except BodyTooLarge:
                    return error(413, f"body larger than {max_body} bytes")
                except BodyTooSlow:
                    return error(408, f"body not received within {BODY_TIMEOUT:g} seconds")
                async with work.slot():
                    return await run_in_threadpool(still_live, who, body, request, ingest)
        except Busy:
            return busy()

    def still_live(
        who: Identity,
        body: bytes,
        request: Request,
        ingest: Callable[[Identity, bytes, Request], Response],
    ) -> Response:
        """A body takes up to BODY_TIMEOUT to arrive: a token revoked or expired
        meanwhile stores nothing."""
        token = bearer(request)
        now = store.authenticate(token) if token is not None else None
        if now is None or now.token_id != who.token_id:
            return error(401, "the token was revoked or expired while the body arrived")
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
            return error(400, str(exc))
        if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
            return error(400, 'body must be an object with an "events" list')
        if len(doc["events"]) > MAX_EVENTS:
            return error(413, f"at most {MAX_EVENTS} events per request")
        now = time.time()
        try:
            events = [validate(e, i, now) for i, e in enumerate(doc["events"])]
        except InvalidEvent as exc:
            return error(422, str(exc))
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
            return error(400, str(exc))
        try:
            host, rows = validate_stats(doc)
        except InvalidEvent as exc:
            return error(422 if isinstance(doc, dict) else 400, str(exc))
        # a row of no owner (a pack the agent no longer runs) that the token cannot
        # decide is left out; any other row the token may not report refuses the post
        kept = [row for row in rows if row["owner"] or who.single_owner()]
        try:
            who.check_host(host, "host")
            for index, row in enumerate(kept):
                row["owner"] = who.owner_for(row["owner"], f"stats[{index}]")
        except Forbidden as exc:
            return error(403, str(exc))
        store.store_stats(who, host, kept)
        return JSONResponse({"stored": len(kept), "skipped": len(rows) - len(kept)})

    def ingest_unknown(who: Identity, body: bytes, request: Request) -> Response:
        """A host's templates of errors no pack knows yet (agent/receiver/unknown.py)."""
        try:
            doc = decoded(body, request)
        except InvalidBody as exc:
            return error(400, str(exc))
        try:
            host, rows = validate_unknown(doc, time.time())
        except InvalidEvent as exc:
            return error(422 if isinstance(doc, dict) else 400, str(exc))
        try:
            stored = store.store_unknown(who, host, rows)
        except Forbidden as exc:
            return error(403, str(exc))
        return JSONResponse({"stored": stored})

    async def post_unknown(request: Request) -> Response:
        return await upload(request, ingest_unknown)

    def get_unknown(request: Request, who: Identity) -> Response:
        """`?sort=count|hosts`: the team's errors no pack knows yet, a page at a time."""
        sort = request.query_params.get("sort", "count")
        if sort not in UNKNOWN_SORTS:
            raise BadQuery(f"sort: one of {', '.join(UNKNOWN_SORTS)}")
        limit, offset = paging(request)
        found, more = store.unknown(who.visible_owners(), sort, limit, offset)
        return JSONResponse(paged("unknown", found, more, offset))

    def get_unknown_one(request: Request, who: Identity) -> Response:
        ref = request.path_params["ref"]
        found = store.unknown_one(who.visible_owners(), ref) if is_ref(ref) else None
        if found is None:  # another team's is as absent as one never seen
            return error(404, "no such unknown error")
        return JSONResponse(found)

    async def post_escalations(request: Request) -> Response:
        return await upload(request, ingest_escalations)

    async def post_stats(request: Request) -> Response:
        return await upload(request, ingest_stats)

    in_flight = InFlight(READS_PER_TOKEN)

    def reading(
        endpoint: Callable[[Request, Identity], Response], action: Action = Action.READ
    ) -> Callable[[Request], Any]:
        """A read for a read, write or admin token: on the thread pool, a few at a time,
        so a busy database or a big page never holds up the event loop nor takes every
        thread; and at most READS_PER_TOKEN answers of one token in flight until they
        are sent, so a client that never reads them cannot pile up pages in memory."""

        async def read(request: Request) -> Response:
            who = await run_in_threadpool(auth, request, action)
            if isinstance(who, Response):
                return who
            if not in_flight.enter(who.token_id):
                return error(429, f"at most {READS_PER_TOKEN} reads of one token at once")
            try:
                async with reads.slot():
                    answer = await run_in_threadpool(endpoint, request, who)
            except BadQuery as exc:
                answer = error(400, str(exc))
            except Busy:
                answer = busy()
            except BaseException:
                in_flight.leave(who.token_id)
                raise
            return Sent(answer, lambda: in_flight.leave(who.token_id), SEND_TIMEOUT)

        return read

    def ingest_articles(who: Identity, body: bytes, request: Request) -> Response:
        """A pack's articles, published by its team: they replace the pack's earlier ones."""
        try:
            doc = validate_articles(decoded(body, request))
        except InvalidBody as exc:
            return error(400, str(exc))
        except InvalidEvent as exc:
            return error(422, str(exc))
        try:
            stored = store.put_articles(who, doc)
        except Forbidden as exc:
            return error(403, str(exc))
        except InvalidEvent as exc:
            return error(422, str(exc))
        return JSONResponse({"stored": stored, "pack": doc["pack"]})

    async def put_articles(request: Request) -> Response:
        return await upload(request, ingest_articles, Action.WRITE)  # a team's, not an agent's

    def get_articles(request: Request, who: Identity) -> Response:
        """`?q=` an error line: the team's articles that answer it (articles.search)."""
        query = request.query_params.get("q", "")
        if not query.strip() or len(query) > MAX_QUERY:
            return error(400, f"q: the error line asked about, 1 to {MAX_QUERY} characters")
        return JSONResponse({"articles": store.find_articles(who.visible_owners(), query)})

    def ingest_pack(who: Identity, body: bytes, request: Request) -> Response:
        """A signed bundle, published by its team: current (?percent=100, the default)
        or the candidate of a share of hosts (agent/receiver/packstore.py)."""
        raw = request.query_params.get("percent", "100")
        if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 100):
            return error(400, "percent: the share of hosts that take it, 1 to 100")
        try:
            published = store.publish(who, body, int(raw))
        except Forbidden as exc:
            return error(403, str(exc))
        except Conflict as exc:
            return error(409, str(exc))
        except InvalidEvent as exc:
            return error(422, str(exc))
        return JSONResponse(published)

    async def post_pack(request: Request) -> Response:
        return await upload(request, ingest_pack, Action.WRITE)

    def get_packs(request: Request, who: Identity) -> Response:
        return JSONResponse({"packs": store.packs(who.visible_owners())})

    def get_bundle(request: Request, who: Identity) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        if not (NAME.fullmatch(name) and NAME.fullmatch(version)):
            return error(404, "no such pack version")
        found = store.bundle_of(who, name, version)
        if found is None:  # another team's is as absent as one never published
            return error(404, "no such pack version")
        return Response(found, media_type="application/gzip")

    def ingest_sync(who: Identity, body: bytes, request: Request) -> Response:
        """An agent: {"host": H, "packs": [NAME or "owner:TEAM"...], "running": {NAME:
        VERSION}} -> the version of each pack this host should run."""
        try:
            doc = decoded(body, request)
            host, wanted, running = sync_request(doc)
        except InvalidBody as exc:
            return error(400, str(exc))
        except InvalidEvent as exc:
            return error(422, str(exc))
        try:
            return JSONResponse({"packs": store.sync(who, host, wanted, running)})
        except Forbidden as exc:
            return error(403, str(exc))

    def ingest_params(who: Identity, body: bytes, request: Request) -> Response:
        """A group of hosts' values for the pack's params: {"hosts": "web-*", "params":
        {...}} (empty params: the group's are removed)."""
        pack = request.path_params["name"]
        if not NAME.fullmatch(pack):
            return error(404, "no such pack")
        try:
            hosts, params = params_request(decoded(body, request))
            store.set_params(who, pack, hosts, params)
        except InvalidBody as exc:
            return error(400, str(exc))
        except InvalidEvent as exc:
            return error(422, str(exc))
        except Forbidden as exc:
            return error(404 if "no pack" in str(exc) else 403, str(exc))
        return JSONResponse({"pack": pack, "hosts": hosts, "params": params})

    async def put_params(request: Request) -> Response:
        return await upload(request, ingest_params, Action.WRITE)

    async def post_sync(request: Request) -> Response:
        return await upload(request, ingest_sync)

    def get_stats(request: Request, who: Identity) -> Response:
        limit, offset = paging(request)
        found, more = store.stats(who.visible_owners(), limit, offset)
        return JSONResponse(paged("stats", found, more, offset))

    def get_escalations(request: Request, who: Identity) -> Response:
        filters = {k: v for k, v in request.query_params.items() if k in FILTERS}
        for key, value in filters.items():
            if len(value) > MAX_FILTER or not value.isprintable():
                return error(400, f"{key}: at most {MAX_FILTER} printable characters")
        limit, offset = paging(request)
        found, more = store.query(filters, who.visible_owners(), limit, offset)
        return JSONResponse(paged("escalations", found, more, offset))

    def get_escalation(request: Request, who: Identity) -> Response:
        found = store.get(request.path_params["ref"], who.visible_owners())
        if found is None:  # another team's is as absent as one that never was
            return error(404, "no such escalation")
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
            doc = json.loads(await read_body(request, MAX_ACTION_BODY))
            action = action_from(doc)
        except (BodyTooLarge, BodyTooSlow, ValueError, RecursionError) as exc:
            return error(422 if isinstance(exc, BadAction) else 400, why(exc))

        def apply() -> Response:
            found = store.get(request.path_params["ref"], who.visible_owners())
            if found is None:
                return error(404, "no such escalation")
            ref = group_ref(found["owner"], found["fingerprint"])
            try:
                group = store.act(ref, who.visible_owners(), action, who.name)
            except BadAction as exc:
                return error(422, str(exc))
            except WorkflowError as exc:
                return error(409, str(exc))
            if group is None:
                return error(404, "no such escalation")
            del group["escalations"]
            return JSONResponse(group)

        try:
            async with people.slot():
                return await run_in_threadpool(apply)
        except Busy:
            return busy()

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
                    return busy()
            if not viewing.enter(visitor):
                return error(429, f"at most {READS_PER_TOKEN} pages of one visitor at once")
            try:
                async with pages.slot():
                    answer = await run_in_threadpool(page, request)
            except Busy:
                answer = busy()
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
                return error(411, "a form's length is required (Content-Length)")
            if int(declared) > MAX_FORM:
                return error(413, f"a form is at most {MAX_FORM} bytes")
            try:
                async with asyncio.timeout(BODY_TIMEOUT):
                    fields = await request.form(max_files=0, max_fields=16, max_part_size=MAX_FORM)
            except TimeoutError:
                return error(408, f"body not received within {BODY_TIMEOUT:g} seconds")
            except Exception:  # a malformed form is the client's
                return error(400, "not a form")
            values = {k: v for k, v in fields.items() if isinstance(v, str)}
            try:
                async with people.slot():
                    return await run_in_threadpool(handler, request, values)
            except Busy:
                return busy()

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
            Route("/v1/unknown", post_unknown, methods=["POST"]),
            Route("/v1/unknown", reading(get_unknown), methods=["GET"]),
            Route("/v1/unknown/{ref}", reading(get_unknown_one), methods=["GET"]),
            Route("/v1/articles", put_articles, methods=["PUT"]),
            Route("/v1/articles", reading(get_articles), methods=["GET"]),
            Route("/v1/packs", post_pack, methods=["POST"]),
            Route("/v1/packs", reading(get_packs), methods=["GET"]),
            Route("/v1/packs/sync", post_sync, methods=["POST"]),
            Route("/v1/packs/{name}/params", put_params, methods=["PUT"]),
            Route("/v1/packs/{name}/{version}", reading(get_bundle, Action.FETCH), methods=["GET"]),
            Route("/healthz", health),
            Route("/", html(console.inbox)),
            Route("/g/{ref}", html(console.detail), methods=["GET"]),
            Route("/g/{ref}", form(console.act), methods=["POST"]),
            Route("/login", html(console.login_form), methods=["GET"]),
            Route("/login", form(console.login), methods=["POST"]),
            Route("/logout", form(console.logout), methods=["POST"]),
            Route("/tier1", html(console.tier1)),
            Route("/hosts", html(console.hosts)),
            Route("/articles", html(console.articles)),
            Route("/packs", html(console.packs)),
            Route("/unknown", html(console.unknown)),
            Route("/unknown/{ref}", html(console.unknown_one)),
            Route("/admin/tokens", html(console.tokens), methods=["GET"]),
            Route("/admin/tokens", form(console.create_token), methods=["POST"]),
            Route("/admin/tokens/revoke", form(console.revoke_token), methods=["POST"]),
        ],
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={Unavailable: unavailable},
    )
    return app


async def unavailable(request: Request, exc: Exception) -> Response:
    """The database cannot take the request now (restarting, unreachable, locked): the
    client tries again, as it does when the receiver is busy; nothing was stored."""
    log.warning("receiver: %s %s: %s", request.method, request.url.path, exc)
    response = error(503, "the receiver's database is unavailable; try again shortly")
    response.headers["Retry-After"] = "5"
    return response
