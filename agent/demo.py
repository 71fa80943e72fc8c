"""`logmend demo`: a receiver, an agent and a log that breaks, end to end, in seconds.

Everything lives in a temp directory: the receiver on a free loopback port with
SQLite, the agent with the shipped packs, and logs that break in ways a pack
fixes (a missing nginx temp dir, a stale PostgreSQL lock file) and in ways
nothing can fix (a live lock, upstream timeouts, an OOM-killed worker).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

from agent.packset import load_packs
from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore

DEADLINE = 25.0


def shipped_packs() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "patterns", here / "_packs"):
        if (candidate / "nginx" / "pack.toml").is_file():
            return candidate
    raise FileNotFoundError("the shipped patterns/ folder was not found; pass --packs DIR")


def _relay(stream: IO[str], prefix: str, seen: Callable[[str], None]) -> None:
    for line in stream:
        line = line.rstrip("\n")
        seen(line)
        print(f"{prefix} {line}", flush=True)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _wait(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def run_demo(packs: Path | None = None, keep: bool = False) -> int:
    packs = packs or shipped_packs()
    tmp = Path(tempfile.mkdtemp(prefix="logmend-demo-"))
    procs: list[subprocess.Popen[str]] = []
    started = time.monotonic()
    try:
        code = _demo(tmp, packs, procs, started)
        if keep and code == 0:
            _serve_until_interrupted(procs[0])
        return code
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _serve_until_interrupted(receiver: subprocess.Popen[str]) -> None:
    """--keep: the receiver (and its console) stays up until Ctrl-C or SIGTERM."""
    print("== the receiver keeps running; Ctrl-C to stop it", flush=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set() and receiver.poll() is None:
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _demo(tmp: Path, packs: Path, procs: list[subprocess.Popen[str]], started: float) -> int:
    print(f"== logmend demo in {tmp} with packs from {packs}")
    receiver_db = tmp / "receiver.db"
    store = ReceiverStore(receiver_db)
    owners = tuple(sorted({pack.owner for pack in load_packs((packs,), trust=False)}))
    token = store.create_token(Scope.INGEST, "demo-hosts", owners, hosts=("*",))
    viewer = store.create_token(Scope.ADMIN, "demo-admin")
    store.close()
    token_file = tmp / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    receiver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "receiver",
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(receiver_db),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    procs.append(receiver)
    assert receiver.stdout is not None
    first = receiver.stdout.readline().strip()
    if "listening on" not in first:
        print(f"receiver did not start: {first}", file=sys.stderr)
        return 1
    url = first.rsplit(" ", 1)[1]
    print(f"== receiver up at {url}")
    threading.Thread(
        target=_relay, args=(receiver.stdout, "receiver |", lambda _: None), daemon=True
    ).start()

    logs = tmp / "logs"
    logs.mkdir()
    cache = tmp / "cache" / "nginx"
    cache.mkdir(parents=True)
    stale, live = tmp / "pg-stale", tmp / "pg-live"
    config = tmp / "agent.toml"
    config.write_text(
        f"""[agent]
host = "demo-host"
state_dir = "{tmp / "state"}"
packs = ["{packs}"]
# fixes run as nobody unless a pack asks for root and is listed here
allow_root = ["nginx", "postgresql", "gunicorn"]

# this host's facts: a log line only selects among them
[params.nginx]
temp_roots = ["{cache}"]

[params.postgresql]
data_dirs = ["{stale}", "{live}"]

[[source]]
path = "{logs}/nginx-error.log"
packs = ["nginx"]

[[source]]
path = "{logs}/postgresql.log"
packs = ["postgresql"]

[[source]]
path = "{logs}/gunicorn.log"
packs = ["gunicorn"]

[escalation]
url = "{url}/v1/escalations"
token_file = "{token_file}"
aggregate = "300ms"
stats_interval = "500ms"

[limits]
sweep_interval = "200ms"
"""
    )
    seen: list[str] = []
    ready = threading.Event()

    def watch(line: str) -> None:
        seen.append(line)
        if " running: " in line:
            ready.set()

    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    procs.append(agent)
    assert agent.stderr is not None
    threading.Thread(target=_relay, args=(agent.stderr, "agent    |", watch), daemon=True).start()
    if not ready.wait(15):
        print("agent did not start", file=sys.stderr)
        return 1

    cache = cache / "client_temp"
    for datadir, pid in ((stale, _dead_pid()), (live, os.getpid())):
        datadir.mkdir()
        (datadir / "postmaster.pid").write_text(f"{pid}\n{datadir}\n")
    print("== writing a log that breaks")
    with (logs / "nginx-error.log").open("a") as nginx:
        nginx.write(
            f'2026/11/27 12:00:01 [crit] 2471#2471: *9 open() "{cache}/0000000001" failed '
            "(2: No such file or directory), client: 10.1.2.3, server: shop, "
            'request: "POST /upload HTTP/1.1"\n'
        )
        for n in range(5):
            nginx.write(
                f"2026/11/27 12:00:0{n + 2} [error] 2471#2471: *1{n} upstream timed out "
                "(110: Connection timed out) while reading response header from upstream, "
                'client: 10.1.2.3, server: shop, request: "GET /api/cart HTTP/1.1", '
                'upstream: "http://127.0.0.1:8080/api/cart", host: "shop"\n'
            )
    with (logs / "postgresql.log").open("a") as pg:
        for datadir in (stale, live):
            holder = (datadir / "postmaster.pid").read_text().split()[0]
            pg.write(
                '2026-11-27 12:00:05.000 UTC [4242] FATAL:  lock file "postmaster.pid" '
                "already exists\n"
            )
            pg.write(
                f"2026-11-27 12:00:05.000 UTC [4242] HINT:  Is another postmaster "
                f'(PID {holder}) running in data directory "{datadir}"?\n'
            )
    with (logs / "gunicorn.log").open("a") as gunicorn:
        gunicorn.write(
            "[2026-11-27 12:00:06 +0000] [1200] [ERROR] Worker (pid:1306) was sent "
            "SIGKILL! Perhaps out of memory?\n"
        )

    headers = {"Authorization": f"Bearer {viewer}"}
    expected = 3  # a live lock (fix refused), upstream timeouts, OOM kill

    def stored() -> list[dict[str, object]]:
        try:
            answer = httpx.get(f"{url}/v1/escalations", headers=headers, timeout=5)
            return list(answer.json()["escalations"])
        except (httpx.HTTPError, ValueError, KeyError):
            return []

    def healed() -> list[dict[str, object]]:
        try:
            answer = httpx.get(f"{url}/v1/stats", headers=headers, timeout=5)
            return [s for s in answer.json()["stats"] if s["resolved"]]
        except (httpx.HTTPError, ValueError, KeyError):
            return []

    remaining = DEADLINE - (time.monotonic() - started)
    done = _wait(
        lambda: (
            len(stored()) >= expected
            and sum(" resolved " in line for line in seen) >= 2
            and sum(int(str(s["resolved"])) for s in healed()) >= 2
        ),
        remaining,
    )
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=10)
    escalations = stored()
    fixed = [line.split(" resolved ", 1)[1] for line in seen if " resolved " in line]
    print("\n== summary")
    print(f"fixed on the host (tier 1): {len(fixed)}")
    for line in fixed:
        print(f"  {line}")
    print(f"escalated to the owning team (tier 2), as the receiver holds them: {len(escalations)}")
    for e in sorted(escalations, key=lambda e: (str(e["owner"]), str(e["pattern"]))):
        attempts = [a for a in e.get("attempts") or [] if a.get("phase") == "fix"]  # type: ignore[attr-defined]
        print(
            f"  {e['owner']}: {e['pack']}/{e['pattern']} {e['status']} count={e['count']} "
            f"fix attempts={len(attempts)}"
            + (f" key={json.dumps(e['key'])}" if e.get("key") else "")
        )
    print("what tier 1 fixed, as the central view shows it (POST /v1/stats):")
    for s in healed():
        print(
            f"  {s['owner']}: {s['pack']}/{s['pattern']} fixed on the host {s['resolved']}"
            f" time(s) on {s['hosts']} host(s)"
        )
    print(f"== done in {time.monotonic() - started:.1f}s")
    print(f"the console: {url}/login  (log in with this admin token: {viewer})")
    if not done:
        print("demo incomplete: not everything arrived in time", file=sys.stderr)
        return 1
    return 0
