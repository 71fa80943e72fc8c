"""Shared helpers for tests that run the real agent, the real receiver and real files."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore

PYTHON = sys.executable


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, every: float = 0.05) -> Any:
    """Poll `condition` until it is truthy or the deadline passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def wait_len(fetch: Callable[[], list[Any]], count: int, timeout: float = 15.0) -> list[Any]:
    """Poll `fetch` until it returns at least `count` items; returns the last result."""
    last: list[Any] = []

    def enough() -> bool:
        nonlocal last
        last = fetch()
        return len(last) >= count

    wait_for(enough, timeout)
    return last


STARTED_RECEIVERS: list[Receiver] = []
"""Every receiver a test started; conftest stops those still running when the test
ends, so a test that fails before its own stop leaves no receiver behind."""


@dataclass
class Receiver:
    db: Path | str  # a SQLite file, or a postgresql:// URL (the engine under test)
    token: str  # ingest, for any owner and host: what the agents use
    admin: str  # reads every team's rows
    url: str = ""
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    args: tuple[str, ...] = ()

    def start(self) -> Receiver:
        STARTED_RECEIVERS.append(self)
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "agent",
                "receiver",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--db",
                str(self.db),
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on" in line, line
        self.url = line.strip().rsplit(" ", 1)[1]
        self.port = int(self.url.rsplit(":", 1)[1])
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def escalations(self, **filters: str) -> list[dict[str, Any]]:
        """Every stored escalation (the admin's view), page by page as the API gives them.

        Newest first: rows arriving while paging shift the offsets, so a row can
        show on two pages; it is the same row (same `ref`), kept once.
        """
        found: dict[str, dict[str, Any]] = {}
        offset: int | None = 0
        while offset is not None:
            answer = httpx.get(
                f"{self.url}/v1/escalations",
                params={"limit": "1000", "offset": str(offset), **filters},
                headers={"Authorization": f"Bearer {self.admin}"},
                timeout=5,
            )
            answer.raise_for_status()
            found.update((e["ref"], e) for e in answer.json()["escalations"])
            offset = answer.json().get("next_offset")
        return list(found.values())


def wire_event(n: int, **over: Any) -> dict[str, Any]:
    """An escalation as the receiver gets it on the wire, numbered; `over` changes fields."""
    return {
        "id": f"ev-{n}",
        "fingerprint": f"fp{n}",
        "host": "h1",
        "owner": "team-a",
        "pack": "nginx",
        "pattern": "upstream-timeout",
        "severity": "error",
        "status": "no-remedy",
        "count": 3,
        "first_seen": 1.0,
        "last_seen": 2.0,
        "lines": ["x"],
        **over,
    }


STATS_ROW: dict[str, Any] = {
    "pack": "nginx",
    "owner": "web",
    "pattern": "p",
    "matches": 10,
    "incidents": 2,
    "resolved": 2,
    "failed": 0,
    "escalated": 0,
}
"""One pattern's totals as an agent posts them to /v1/stats."""


class Engines:
    """The database engine the receiver tests run on (conftest's `engine` parameter):
    SQLite unless a test asked for another; the PostgreSQL cluster once one started."""

    kind: str = "sqlite"
    cluster: Any = None  # tests.pg.Cluster

    def new_db(self, tmp: Path) -> Path | str:
        """A new, empty receiver database of the engine under test."""
        if self.kind == "sqlite":
            return tmp / "receiver.db"
        return str(self.cluster.new_database())


ENGINE = Engines()


def peek(db: Path | str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows read from a receiver's database itself (either engine), beside its API."""
    from agent.receiver.engine import open_engine

    engine = open_engine(db)
    try:
        with engine.read() as conn:
            return [dict(r) for r in conn.execute(sql, args).fetchall()]
    finally:
        engine.close()


def poke(db: Path | str, sql: str, *args: Any) -> None:
    """A change made to a receiver's database itself (either engine), behind its back."""
    from agent.receiver.engine import open_engine

    engine = open_engine(db)
    try:
        engine.write(lambda conn: conn.execute(sql, args))
    finally:
        engine.close()


def make_receiver(tmp: Path) -> Receiver:
    db = ENGINE.new_db(tmp)
    store = ReceiverStore(db)
    token = store.create_token(Scope.INGEST, "test-hosts", ("*",), ("*",))
    admin = store.create_token(Scope.ADMIN, "central")
    store.close()
    return Receiver(db=db, token=token, admin=admin)


STARTED: list[AgentProc] = []
"""Every agent a test started; conftest kills those still running when the test ends,
so a test that fails before its own stop leaves no agent behind."""


def receiver_with_tokens(
    tmp: Path, tokens: dict[str, tuple[Any, ...]], revoked: tuple[str, ...] = ()
) -> tuple[Receiver, dict[str, str]]:
    """A receiver (not started) with its admin token and `tokens`: key -> the arguments of
    ReceiverStore.create_token (scope, name, owners, hosts[, expires]); the tokens of the
    names in `revoked` are revoked."""
    receiver = make_receiver(tmp)
    store = ReceiverStore(receiver.db)
    try:
        made = {key: store.create_token(*args) for key, args in tokens.items()}
        for row in store.tokens():
            if row["name"] in revoked:
                store.revoke(row["id"])
    finally:
        store.close()
    return receiver, {"admin": receiver.admin, **made}


@dataclass
class AgentProc:
    config: Path
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)

    def start(self, *extra: str) -> AgentProc:
        self.lines = []
        STARTED.append(self)
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "agent", "run", "-c", str(self.config), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        assert wait_for(
            lambda: (
                any(" running: " in line for line in self.lines) or self.proc.poll() is not None
            ),
            20,
        ), self.log()
        assert self.proc.poll() is None, self.log()
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines)

    def saw(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


RECORD_SCRIPT = """\
#!/bin/sh
# records its argv (NUL-separated) and environment, then exits with $EXIT_CODE or 0
out="$1"
shift
n=$(ls "$out".*.argv 2>/dev/null | wc -l)
for a in "$@"; do printf '%s\\0' "$a"; done > "$out.$n.argv"
env > "$out.$n.env"
exit {exit_code}
"""


def write_pack(
    root: Path,
    name: str,
    body: str,
    scripts: dict[str, str] | None = None,
    owner: str = "team-test",
) -> Path:
    """A pack folder with pack.toml, executable scripts and one article."""
    pack = root / name
    (pack / "scripts").mkdir(parents=True, exist_ok=True)
    (pack / "articles").mkdir(exist_ok=True)
    (pack / "articles" / "a.md").write_text("# what to do\n")
    for script, text in (scripts or {}).items():
        path = pack / "scripts" / script
        path.write_text(text)
        path.chmod(0o755)
    (pack / "pack.toml").write_text(
        f'[pack]\nname = "{name}"\nversion = "1.2.3"\nowner = "{owner}"\n\n' + textwrap.dedent(body)
    )
    return pack


def write_config(
    tmp: Path,
    sources: list[tuple[str, list[str] | None]],
    packs: Path,
    receiver: Receiver | None = None,
    extra: str = "",
    url: str | None = None,
    escalation: str = "",
    agent_extra: str = "",
) -> Path:
    """An agent config; escalations go to `url` (default: the receiver) with its token.

    `agent_extra` is appended to `[agent]` (e.g. `allow_root = ["ops"]`).
    """
    lines = [
        f'[agent]\nhost = "test-host"\nstate_dir = "{tmp / "state"}"\npacks = ["{packs}"]\n'
        + agent_extra
    ]
    for path, names in sources:
        lines.append(
            f'[[source]]\npath = "{path}"\n'
            + (f"packs = {names!r}\n".replace("'", '"') if names else 'packs = "*"\n')
        )
    if receiver is not None:
        token_file = tmp / "token"
        token_file.write_text(receiver.token)
        token_file.chmod(0o600)
        lines.append(
            f'[escalation]\nurl = "{url or receiver.url}/v1/escalations"\n'
            f'token_file = "{token_file}"\nbackoff_initial = "100ms"\n'
            'backoff_max = "500ms"\n'
            + ("" if "aggregate" in escalation else 'aggregate = "0s"\n')
            + escalation
        )
    lines.append('[limits]\nsweep_interval = "100ms"\n' + extra)
    config = tmp / "agent.toml"
    config.write_text("\n".join(lines))
    return config


def append(path: Path, *lines: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FaultServer:
    """A receiver stand-in on loopback that fails on demand, then forwards to the real one.

    `plan` is consumed one request at a time: "500", "429:SECONDS", "503:SECONDS",
    "400", "hang" (never answers), "reset" (reads half the body, then resets the
    connection), "forward-then-hang" (the real receiver stores it, the agent never
    hears back). When the plan is empty every request is forwarded. Raw request
    bodies are kept in `bodies`.
    """

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.plan: list[str] = []
        self.bodies: list[bytes] = []
        self.times: list[float] = []  # when each body arrived
        self.seen: list[str] = []
        self.release = threading.Event()
        self.forwarded_and_hanging = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                action = server.plan.pop(0) if server.plan else "forward"
                server.seen.append(action)
                if action == "reset":
                    self.rfile.read(length // 2)
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    return
                body = self.rfile.read(length)
                server.times.append(time.time())
                server.bodies.append(body)
                if action == "hang":
                    server.release.wait(60)
                    return
                code, _, wait = action.partition(":")
                if code.isdigit():
                    self.send_response(int(code))
                    if wait:
                        self.send_header("Retry-After", wait)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"no")
                    return
                answer = httpx.post(
                    server.target + self.path,
                    content=body,
                    headers={
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() in ("authorization", "content-type")
                    },
                    timeout=10,
                )
                if action == "forward-then-hang":
                    server.forwarded_and_hanging.set()
                    server.release.wait(60)
                    return
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", "text/plain"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def agent_with_pack(
    tmp: Path,
    body: str,
    scripts: dict[str, str] | None = None,
    receiver: Receiver | None = None,
    *,
    extra: str = "",
    url: str | None = None,
    escalation: str = "",
    agent_extra: str = "",
) -> tuple[AgentProc, Path]:
    """One pack ("ops"), one log file (tmp/app.log), and an agent configured for them."""
    packs = tmp / "packs"
    write_pack(packs, "ops", body, scripts)
    log = tmp / "app.log"
    log.touch()
    config = write_config(
        tmp, [(str(log), None)], packs, receiver, extra, url, escalation, agent_extra
    )
    return AgentProc(config), log


def cli(*args: str) -> str:
    """Run `logmend ARGS` and return what it printed."""
    done = subprocess.run(
        [PYTHON, "-m", "agent", *args], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout


def status(config: Path) -> dict[str, Any]:
    """`logmend status --json`, parsed."""
    return dict(json.loads(cli("status", "-c", str(config), "--json")))
