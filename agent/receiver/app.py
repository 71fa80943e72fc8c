"""The receiver's HTTP API and its first page (Starlette, served by uvicorn)."""

from __future__ import annotations

import html
import json
import socket
import time
from pathlib import Path
from typing import Any

import msgpack
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from agent.receiver.store import InvalidEvent, ReceiverStore, validate

MAX_BODY = 4 * 1024 * 1024
MAX_EVENTS = 5000
MAX_PAGE = 10000
FILTERS = ("owner", "pattern", "host", "pack", "status", "fingerprint")


class BodyTooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise BodyTooLarge
    return bytes(chunks)


def _decode(body: bytes, content_type: str) -> Any:
    if "json" in content_type:
        return json.loads(body)
    return msgpack.unpackb(body, raw=False, strict_map_key=True)


def _error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=code)


def create_app(store: ReceiverStore, max_body: int = MAX_BODY) -> Starlette:
    def auth(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return store.authenticate(token.strip())

    async def post_escalations(request: Request) -> Response:
        who = auth(request)
        if who is None:
            return _error(401, "a valid bearer token is required")
        try:
            body = await _body(request, max_body)
        except BodyTooLarge:
            return _error(413, f"body larger than {max_body} bytes")
        try:
            doc = _decode(body, request.headers.get("content-type", ""))
        except Exception as exc:  # any decoding failure is the client's
            return _error(400, f"body is not valid msgpack or JSON: {type(exc).__name__}")
        if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
            return _error(400, 'body must be an object with an "events" list')
        if len(doc["events"]) > MAX_EVENTS:
            return _error(413, f"at most {MAX_EVENTS} events per request")
        try:
            events = [validate(e, i) for i, e in enumerate(doc["events"])]
        except InvalidEvent as exc:
            return _error(422, str(exc))
        accepted, duplicates = store.store(events, who)
        return JSONResponse({"accepted": accepted, "duplicates": duplicates})

    async def get_escalations(request: Request) -> Response:
        if auth(request) is None:
            return _error(401, "a valid bearer token is required")
        filters = {k: v for k, v in request.query_params.items() if k in FILTERS}
        try:
            limit = min(MAX_PAGE, max(1, int(request.query_params.get("limit", "500"))))
            offset = max(0, int(request.query_params.get("offset", "0")))
        except ValueError:
            return _error(400, "limit and offset must be integers")
        return JSONResponse({"escalations": store.query(filters, limit, offset)})

    async def page(request: Request) -> Response:
        rows = store.summary()
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(row["owner"], []).append(row)
        parts = [
            "<!doctype html><meta charset=utf-8><title>logmend escalations</title>",
            "<style>body{font:14px system-ui;margin:2em}table{border-collapse:collapse}"
            "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}"
            ".resolved{color:#080}.no-remedy,.remedy-failed{color:#b00}</style>",
            "<h1>logmend: escalations by owner and pattern</h1>",
        ]
        if not groups:
            parts.append("<p>No escalations yet.</p>")
        for owner, items in groups.items():
            parts.append(
                f"<h2>{html.escape(owner)}</h2><table><tr><th>pack</th><th>pattern</th>"
                "<th>status</th><th>escalations</th><th>lines</th><th>hosts</th>"
                "<th>last seen</th></tr>"
            )
            for r in items:
                last = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["last"] or 0))
                parts.append(
                    f"<tr><td>{html.escape(r['pack'])}</td><td>{html.escape(r['pattern'])}</td>"
                    f"<td class='{html.escape(r['status'])}'>{html.escape(r['status'])}</td>"
                    f"<td>{r['n']}</td><td>{r['lines']}</td><td>{r['hosts']}</td>"
                    f"<td>{last} UTC</td></tr>"
                )
            parts.append("</table>")
        return HTMLResponse("".join(parts))

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/v1/escalations", post_escalations, methods=["POST"]),
            Route("/v1/escalations", get_escalations, methods=["GET"]),
            Route("/healthz", health),
            Route("/", page),
        ]
    )


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(listen: str, db: Path, max_body: int = MAX_BODY) -> int:
    """Serve until SIGTERM/SIGINT; prints the bound address first (port 0 picks one)."""
    import uvicorn

    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    store = ReceiverStore(db)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"logmend receiver listening on http://{shown}:{bound}", flush=True)
    config = uvicorn.Config(create_app(store, max_body), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    store.close()
    return 0
