"""Serving the receiver: the socket, TLS, uvicorn with the guarded protocol and its
bounds, the descriptor limit, and systemd's READY, WATCHDOG and STOPPING."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from agent.notify import Notifier
from agent.receiver.app import create_app
from agent.receiver.guard import HEADER_TIMEOUT, PER_CLIENT, GuardedH11
from agent.receiver.store import ReceiverStore
from agent.receiver.web import MAX_BODY


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
    db: Path | str,
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
    password_file: Path | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; prints the bound address first (port 0 picks one).

    With `tls_cert` it serves HTTPS; with `client_ca` as well, only clients with
    a certificate that CA signed get through (mutual TLS).
    """
    import uvicorn

    # a damaged or unreachable database is an error before anything listens
    store = ReceiverStore(db, password_file)
    for note in store.notes:  # what an upgrade of its schema did
        print(f"logmend receiver: {store.where}: {note}", file=sys.stderr, flush=True)
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
